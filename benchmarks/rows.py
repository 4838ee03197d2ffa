"""What a bench run produces: one row per runner and batch size, and the result that holds them.

Its own module so that the matrix (which fills rows) and the report writers (which read
them) both import it and neither imports the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tl.benchmarks.recommend import Recommendation


@dataclass
class BenchRow:
    backend: str
    precision: str
    provider: str
    device: str
    batch: int
    mean_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    first_ms: float | None = None
    throughput: float | None = None
    speedup: float | None = None
    agreement: float | None = None
    accuracy: float | None = None
    size_mb: float | None = None
    build_s: float | None = None
    status: str = "ok"  # ok | failed | skipped
    error: str | None = None
    compute_ms: float | None = None  # device time per call (trtexec's GPU Compute Time)
    artifact: str | None = None
    rounds: int | None = None  # interleaved rounds timed (one sample each)
    spread: float | None = None  # p90 / p50
    disturbed: bool | None = None  # spread above timing.DISTURBED_SPREAD: other load hit this cell

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The columns of every bench.json row and bench.csv line, in order.
ROW_FIELDS = tuple(f for f in BenchRow.__dataclass_fields__)


@dataclass
class BenchResult:
    rows: list[BenchRow]
    environment: dict[str, Any]
    images: dict[str, Any]  # {"source", "count", "labelled"}
    out: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    min_agreement: float | None = None
    recommendations: list[Recommendation] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"environment": self.environment, "rows": [r.to_dict() for r in self.rows],
                "min_agreement": self.min_agreement, "recommendations": [asdict(r) for r in self.recommendations]}
