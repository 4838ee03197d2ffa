"""What `tl bench` accepts: the backend names, every default and every check, defined once.

Torch-free, so `tl bench --help` stays light; the CLI reads its defaults and choices here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tl.runtime.artifact import bench_alias
from tl.runtime.backends.registry import REGISTRY, BackendEntry
from tl.runtime.errors import TLError, require


def bench_name(entry: BackendEntry) -> str:
    """tl bench's name for a runtime backend (ort, trt, openvino): the artifact table's, also a registry alias.

    Rows and --backends show it, and Classifier.load accepts it as it is.
    """
    return bench_alias(entry.name)


TORCH_BACKENDS = ("eager", "eager-fp16", "eager-bf16", "compile")
ARTIFACT_BACKENDS = tuple(bench_name(e) for e in REGISTRY)
BACKENDS = TORCH_BACKENDS + ARTIFACT_BACKENDS
DEVICES = ("auto", "cpu", "cuda")
MAX_BATCH_SIZE = 4096


def int_list(value: str | Sequence[int], what: str) -> tuple[int, ...]:
    """Integers from "1,8,32" (as the CLI gives them) or from a sequence; ``what`` names the option in the error."""
    if not isinstance(value, str):
        return tuple(int(v) for v in value)
    try:
        return tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise TLError(f"{what} must be comma-separated positive integers like 1,8,32 (got {value!r})") from None


def default_backends(device: str) -> tuple[str, ...]:
    """Everything that runs on ``device``: fp16 autocast only on CUDA (CPU fp16 kernels are a crawl)."""
    return BACKENDS if device == "cuda" else tuple(b for b in BACKENDS if b != "eager-fp16")


def _backend_names(value: str | Sequence[str]) -> tuple[str, ...]:
    names = tuple(b.strip().lower() for b in (value.split(",") if isinstance(value, str) else value) if b.strip())
    unknown = [b for b in names if b not in BACKENDS]
    if unknown or not names:
        raise TLError(f"--backends: unknown {', '.join(unknown) or '(empty)'}; choose from {','.join(BACKENDS)}")
    return names


def _batch_sizes(value: str | Sequence[int]) -> tuple[int, ...]:
    given = int_list(value, "--batch-sizes")
    sizes = tuple(dict.fromkeys(given))
    if not sizes or any(b < 1 for b in sizes):
        raise TLError(f"--batch-sizes must be positive integers like 1,8,32 (got {','.join(map(str, given)) or 'none'})")
    if max(sizes) > MAX_BATCH_SIZE:
        raise TLError(f"--batch-sizes: {max(sizes)} is too large (at most {MAX_BATCH_SIZE})")
    return sizes


@dataclass(frozen=True, kw_only=True)
class BenchOptions:
    """What to measure. ``backends=None`` means everything that can run on ``device``.

    ``backends`` and ``batch_sizes`` also take the comma-separated text the CLI gets ("ort,trt", "1,8").
    """

    targets: Sequence[str | Path]
    device: str = "auto"
    backends: Sequence[str] | str | None = None
    batch_sizes: Sequence[int] | str = (1, 8, 32)
    warmup: int = 3
    seconds: float | None = 3.0
    iters: int | None = None
    val_dir: str | Path | None = None
    out: str | Path | None = None
    threads: int | None = None
    images: int = 64  # benchmark images for agreement (all of --val-dir when given)
    min_agreement: float = 0.99  # top-1 agreement with eager FP32 a recommended row needs

    def __post_init__(self) -> None:
        if not self.targets:
            raise TLError("give at least one TARGET: a checkpoint or run folder and/or an export folder")
        if self.device not in DEVICES:
            raise TLError(f"--device must be one of {', '.join(DEVICES)} (got {self.device!r})")
        if self.backends is not None:
            object.__setattr__(self, "backends", _backend_names(self.backends))
        object.__setattr__(self, "batch_sizes", _batch_sizes(self.batch_sizes))
        checks = (
            (self.threads is None or self.threads >= 1, f"--threads must be at least 1 (got {self.threads})"),
            (self.images >= 1, f"--images must be at least 1 (got {self.images})"),
            (0.0 <= self.min_agreement <= 1.0, f"--min-agreement must be between 0 and 1, e.g. 0.99 (got {self.min_agreement})"),
        )
        require(*checks)
        self.timing()  # warm-up, iters and seconds are checked where TimingOptions defines them

    def timing(self):
        from tl.benchmarks.timing import TimingOptions

        return TimingOptions(warmup=self.warmup, seconds=self.seconds, iters=self.iters)


TRANSPORTS = ("http", "grpc")  # what `tl bench serve` loads `tl serve` through


@dataclass(frozen=True)
class LoadOptions:
    """What `tl bench serve` measures: `tl serve` at each concurrency against the same model in-process."""

    concurrency: tuple[int, ...] = (1, 8, 32)
    transports: tuple[str, ...] = TRANSPORTS  # each loaded at every level, side by side
    seconds: float = 6.0  # per concurrency level and per in-process batch size, split over the rounds
    rounds: int = 3  # served levels and in-process batches alternate, so drifting background load hits both
    max_batch: int | None = None  # passed to `tl serve --max-batch`
    max_delay_ms: float = 0.0  # tl serve's default
    backend: str = "auto"
    providers: str | None = None
    threads: int | None = None
