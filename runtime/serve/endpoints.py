"""The server's data plane, whatever the transport: the models by name, readiness, metrics, and the
Open Inference Protocol's calls as plain methods.

A transport (the HTTP app, the gRPC service) maps its routes onto these methods and the errors they raise
(tl.runtime.serve.errors) onto its status codes; nothing here knows HTTP. ``start`` and ``stop``
run the models' batchers on the transport's event loop.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Awaitable, Callable

from starlette.concurrency import run_in_threadpool

from tl.runtime.serve.errors import NotFound, Unavailable, status_of
from tl.runtime.serve.metrics import Metrics
from tl.runtime.serve.model import ServedModel, load_models
from tl.runtime.serve.options import ServeOptions
from tl.runtime.serve.protocol import InferRequest, encode_response, parse_request

# Triton's names for the protocol extensions both transports implement (model_repository: the index;
# the models are loaded at start, so load and unload are not offered, as Triton's model-control-mode none).
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "statistics", "model_repository"]
OFFLOAD_BYTES = 256 * 1024  # a body this large (a JSON tensor of many floats) is parsed off the event loop

Decode = Callable[[], Awaitable[InferRequest]]
Encode = Callable[[dict, list], object]


class Endpoints:
    def __init__(self, models: list[ServedModel], metrics: Metrics, *, max_body: int, version: str = "0"):
        """``metrics`` is the one the models' batchers report their batches to (see ``load``)."""
        self.models = {m.name: m for m in models}
        self.metrics, self.max_body, self.version = metrics, max_body, version
        self.is_ready = False
        for m in models:
            metrics.pending.labels(m.name, m.version).set_function(lambda b=m.batcher: b.waiting)

    @classmethod
    def load(cls, source: str | Path, options: ServeOptions, version: str = "0") -> Endpoints:
        """Every model of ``source``, loaded and counted in metrics of their own."""
        metrics = Metrics()
        return cls(load_models(source, options, metrics), metrics, max_body=options.max_body_bytes, version=version)

    async def start(self) -> None:
        """Start each model's batcher on the running event loop; then the server is ready."""
        for m in self.models.values():
            m.batcher.start()
        self.is_ready = True

    async def stop(self) -> None:
        """Not ready any more; answer everything queued, then stop the batchers."""
        self.is_ready = False
        for m in self.models.values():
            await m.batcher.close()

    def close(self) -> None:
        """Release the models (their sessions, engines, GPU memory)."""
        for m in self.models.values():
            m.clf.close()

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.is_ready

    def server_metadata(self) -> dict:
        return {"name": "tl", "version": self.version, "extensions": EXTENSIONS}

    def model(self, name: str, version: str | None = None) -> ServedModel:
        """The served model ``name``; a version, when given, must be the one served."""
        m = self.models.get(name)
        if m is None:
            raise NotFound(f"unknown model '{name}'; this server has: {', '.join(sorted(self.models))}")
        if version not in (None, "", m.version):
            raise NotFound(f"model '{name}' has no version '{version}' here (serving version {m.version})")
        return m

    def model_metadata(self, name: str, version: str | None = None) -> dict:
        return self.model(name, version).metadata()

    def model_ready(self, name: str, version: str | None = None) -> bool:
        self.model(name, version)
        return self.is_ready

    def model_config(self, name: str, version: str | None = None) -> dict:
        """Triton's JSON form of the model's config.pbtxt."""
        return self.model(name, version).config()

    def statistics(self, name: str | None = None, version: str | None = None) -> dict:
        """Triton's statistics extension: every model's (no name), or one model's."""
        models = [self.model(name, version)] if name else list(self.models.values())
        return {"model_stats": [self.metrics.model_stats(m.name, m.version).as_dict() for m in models]}

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        """Triton's repository index: each model's served version and state (every model is loaded at start)."""
        if ready_only and not self.is_ready:
            return []
        state = "READY" if self.is_ready else "UNAVAILABLE"
        reason = "" if self.is_ready else "the server is not ready (starting or shutting down)"
        return [{"name": m.name, "version": m.version, "state": state, "reason": reason}
                for m in sorted(self.models.values(), key=lambda m: m.name)]

    def metrics_text(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return self.metrics.text()

    async def infer(self, name: str, version: str | None, read: Callable[[], Awaitable[bytes]],
                    header_length: str | None = None) -> tuple[bytes, int | None]:
        """One REST infer body -> (response body, its JSON header's length, or None when it is all JSON).

        ``read`` gives the request body; it runs inside the request's count and time, so a body
        the transport refuses (too large, bad encoding) is counted as a failed request.
        """
        async def decode() -> InferRequest:
            body = await read()
            if len(body) > OFFLOAD_BYTES:
                return await run_in_threadpool(parse_request, body, header_length)
            return parse_request(body, header_length)

        return await self.infer_with(name, version, decode, encode_response)

    async def infer_with(self, name: str, version: str | None, decode: Decode, encode: Encode):
        """The one infer path of every transport: ``decode`` its request, batch it, ``encode`` the
        response header and outputs; counted, timed (Prometheus and the statistics extension), and
        each failure counted by its status."""
        m = self.model(name, version)
        labels = (m.name, m.version)
        stats = self.metrics.model_stats(*labels)
        self.metrics.requests.labels(*labels).inc()
        start = time.perf_counter()
        try:
            if not self.is_ready:
                raise Unavailable("the server is not ready")
            req = await decode()
            rows = await m.prepare(req)
            prepared = time.perf_counter()
            header, outputs = await m.answer(req, rows)
            answered = time.perf_counter()
            answer = encode(header, outputs)
        except Exception as e:
            self.metrics.failures.labels(*labels, str(status_of(e).http)).inc()
            stats.request(False, time.perf_counter() - start)
            raise
        done = time.perf_counter()
        self.metrics.latency.labels(*labels).observe(done - start)
        stats.phases["compute_input"].add(prepared - start)
        stats.phases["compute_output"].add(done - answered)
        stats.request(True, done - start)
        return answer
