"""The server's Prometheus metrics, on a registry of its own (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


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

    def on_batch(self, model: str, version: str):
        """The batcher's callback for one model: a batch of ``size`` rows ran after these waits."""
        def record(size: int, waits: list[float]) -> None:
            self.batch_size.labels(model, version).observe(size)
            for w in waits:
                self.queue_time.labels(model, version).observe(w)
        return record

    def text(self) -> bytes:
        return generate_latest(self.registry)
