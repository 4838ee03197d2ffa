"""ServeOptions: every `tl serve` setting and its default, defined once (the CLI reads them from here)."""

from __future__ import annotations

from dataclasses import dataclass

from tl.runtime.errors import require


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"  # loopback: exposing a model is a decision, not a default
    port: int = 8000  # 0 picks a free port (the ready line says which)
    grpc_port: int | None = 8001  # the gRPC service, Triton's port; 0 picks a free one; None: no gRPC
    # Each model's max_batch_size (most rows per batch and per request); None: config.pbtxt's, else the
    # model's own bound (engine profile, fixed batch, tl.max_batch), else DEFAULT_MAX_BATCH.
    max_batch: int | None = None
    # How long the first request of a batch waits for company. 0 (Triton's default): a batch takes what
    # is already waiting, which under load is whatever queued while the previous batch ran.
    max_delay_ms: float = 0.0
    queue: int = 256  # requests waiting per model; one more is refused (503 / UNAVAILABLE)
    backend: str = "auto"
    providers: str | None = None  # ONNX Runtime providers, e.g. "cpu"
    threads: int | None = None  # ONNX Runtime intra-op threads (None: every core)
    device: int = 0
    name: str | None = None  # the model's name when serving one file (default: file name without suffix)
    max_body_mb: float = 64.0  # larger request bodies (413) or gRPC messages (RESOURCE_EXHAUSTED) are refused

    def __post_init__(self) -> None:
        lows = (("--max-batch", self.max_batch, 1), ("--queue", self.queue, 1), ("--max-delay-ms", self.max_delay_ms, 0),
                ("--port", self.port, 0), ("--grpc-port", self.grpc_port, 0), ("--max-body-mb", self.max_body_mb, 0))
        require(*((value is None or value >= low, f"{flag} must be at least {low} (got {value})")
                  for flag, value, low in lows),
                *((value is None or value <= 65535, f"{flag} must be at most 65535 (got {value})")
                  for flag, value in (("--port", self.port), ("--grpc-port", self.grpc_port))))

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)
