"""The server's metrics: Prometheus families on a registry of their own (no process-global state),
and per-model inference statistics in the shape of Triton's statistics extension."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
NS = 1_000_000_000


@dataclass
class Duration:
    """Triton's StatisticDuration: how many, and their time added up in nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * NS)

    def as_dict(self) -> dict:
        return {"count": self.count, "ns": self.ns}


REQUEST_PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
                  "cache_hit", "cache_miss")  # cache_*: no response cache, always zero
BATCH_PHASES = ("compute_input", "compute_infer", "compute_output")


@dataclass
class ModelStats:
    """One model's statistics, as Triton's ModelStatistics counts them: per request (success, fail,
    queue, compute phases, each request of a batch charged the batch's compute time) and per batch size
    (one execution each). Updated on the event loop only."""

    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0  # rows (images) inferred
    execution_count: int = 0  # batches run
    phases: dict[str, Duration] = field(default_factory=lambda: {p: Duration() for p in REQUEST_PHASES})
    batches: dict[int, dict[str, Duration]] = field(
        default_factory=lambda: defaultdict(lambda: {p: Duration() for p in BATCH_PHASES}))

    def request(self, ok: bool, seconds: float) -> None:
        self.phases["success" if ok else "fail"].add(seconds)
        if ok:
            self.last_inference_ms = int(time.time() * 1000)

    def batch(self, size: int, waits: list[float], compute_s: float) -> None:
        self.inference_count += size
        self.execution_count += 1
        for w in waits:
            self.phases["queue"].add(w)
        self.phases["compute_infer"].add(compute_s * len(waits), len(waits))
        self.batches[size]["compute_infer"].add(compute_s)

    def as_dict(self) -> dict:
        """The JSON form of Triton's ModelStatistics (what tritonclient's get_inference_statistics returns)."""
        return {
            "name": self.name, "version": self.version, "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count, "execution_count": self.execution_count,
            "inference_stats": {p: d.as_dict() for p, d in self.phases.items()},
            "batch_stats": [{"batch_size": size, **{p: d.as_dict() for p, d in phases.items()}}
                            for size, phases in sorted(self.batches.items())],
            "memory_usage": [],
        }


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        labels = ["model", "version"]
        r = self.registry
        self.requests = Counter("tl_requests", "Inference requests received", labels, registry=r)
        self.failures = Counter("tl_request_failures", "Inference requests answered with an error",
                                labels + ["status"], registry=r)
        self.latency = Histogram("tl_request_duration_seconds", "Inference request time, body read to answer",
                                 labels, buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("tl_queue_duration_seconds", "Time a request waited for its batch to start",
                                    labels, buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("tl_batch_size", "Rows per batch the model ran", labels,
                                    buckets=BATCH_BUCKETS, registry=r)
        self.pending = Gauge("tl_queue_pending", "Requests submitted to the batcher and not yet answered", labels, registry=r)
        self.stats: dict[tuple[str, str], ModelStats] = {}

    def model_stats(self, model: str, version: str) -> ModelStats:
        key = (model, version)
        if key not in self.stats:
            self.stats[key] = ModelStats(model, version)
        return self.stats[key]

    def on_batch(self, model: str, version: str):
        """The batcher's callback for one model: a batch of ``size`` rows ran ``compute_s`` after these waits."""
        stats = self.model_stats(model, version)

        def record(size: int, waits: list[float], compute_s: float) -> None:
            self.batch_size.labels(model, version).observe(size)
            for w in waits:
                self.queue_time.labels(model, version).observe(w)
            stats.batch(size, waits, compute_s)
        return record

    def text(self) -> bytes:
        return generate_latest(self.registry)
