"""What to ship: per batch size, the fastest row whose top-1 agreement with eager FP32 is high enough.

The fastest form differs by machine (CPU instruction sets, GPU, library versions), so the
answer comes from the rows measured here, with the line that loads it.
A row with no agreement (no checkpoint to compare with) cannot be recommended. Rows that
qualify and run within ``LEVEL`` of the fastest are named beside it: at that distance a
rerun can swap the order, so either is a fine choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from tl.benchmarks.options import TORCH_BACKENDS

LEVEL = 0.03  # p50 within 3% of the fastest: "level with" it


@dataclass(frozen=True)
class Recommendation:
    batch: int
    backend: str | None = None  # None: nothing met the threshold (``reason`` says why)
    precision: str | None = None
    provider: str | None = None
    artifact: str | None = None
    p50_ms: float | None = None
    throughput: float | None = None
    speedup: float | None = None
    agreement: float | None = None
    python: str | None = None
    cli: str | None = None
    reason: str | None = None
    reference: str = "eager fp32"  # what speedup and agreement are measured against
    level_with: tuple[str, ...] = ()  # other qualifying rows within LEVEL of its p50, e.g. "ort int8 870 ms (+0.6%)"

    def summary(self, min_agreement: float) -> str:
        if self.backend is None:
            return f"batch {self.batch}: no row meets the {min_agreement:.1%} agreement threshold ({self.reason})"
        what = f"{self.backend} {self.precision}" + (f" ({self.artifact})" if self.artifact else "")
        speed = f", {self.speedup:.2f}x {self.reference}" if self.speedup is not None else ""
        level = f"; level with {', '.join(self.level_with)}" if self.level_with else ""
        return (f"batch {self.batch}: {what}: {self.p50_ms:.3g} ms p50, {self.throughput:.4g} img/s{speed}, "
                f"agreement {self.agreement:.1%}{level}")


def recommend(rows: Iterable[Any], *, min_agreement: float, environment: dict | None = None) -> list[Recommendation]:
    """One Recommendation per batch size, in the order the batch sizes were measured."""
    rows = list(rows)
    paths = _artifact_paths(environment or {})
    out = []
    for b in dict.fromkeys(r.batch for r in rows):
        timed = [r for r in rows if r.batch == b and r.status == "ok" and r.p50_ms]
        good = [r for r in timed if r.agreement is not None and r.agreement >= min_agreement]
        if not good:
            out.append(Recommendation(batch=b, reason=_why_none(timed, min_agreement)))
            continue
        best = min(good, key=lambda r: r.p50_ms)
        python, cli = load_lines(best, paths, (environment or {}).get("checkpoint"))
        level = tuple(f"{r.backend} {r.precision} {r.p50_ms:.3g} ms (+{r.p50_ms / best.p50_ms - 1:.1%})"
                      for r in sorted(good, key=lambda r: r.p50_ms) if r is not best and r.p50_ms <= best.p50_ms * (1 + LEVEL))
        out.append(Recommendation(batch=b, backend=best.backend, precision=best.precision, provider=best.provider,
                                  artifact=best.artifact, p50_ms=best.p50_ms, throughput=best.throughput,
                                  speedup=best.speedup, agreement=best.agreement, python=python, cli=cli,
                                  level_with=level, reference=(environment or {}).get("reference") or "eager fp32"))
    return out


def _why_none(timed: list, min_agreement: float) -> str:
    if not timed:
        return "no row ran"
    measured = [r for r in timed if r.agreement is not None]
    if not measured:
        return ("no agreement was measured: give the checkpoint (or an export.json that names it), or the FP32 "
                "model.onnx, as a TARGET")
    best = max(measured, key=lambda r: r.agreement)
    return f"the best agreement is {best.agreement:.1%} ({best.backend} {best.precision})"


def _artifact_paths(environment: dict) -> dict[str, str]:
    return {Path(p).name: str(p) for p in environment.get("artifacts") or []}


def load_lines(row: Any, paths: dict[str, str], checkpoint: str | None) -> tuple[str, str | None]:
    """(Python, CLI) that load what ``row`` measured; torch rows have no CLI (tl predict runs exports)."""
    if row.backend in TORCH_BACKENDS:
        ckpt = checkpoint or "best.pt"
        wrap = "torch.compile(model)" if row.backend == "compile" else "model"
        return (f"from tl.train.checkpoint import load_model; model = load_model({ckpt!r})[0].eval(); "
                f"fn = {wrap}", None)
    path = paths.get(row.artifact or "", row.artifact or "model.onnx")
    args, flags = "", ""
    if row.backend == "openvino":
        ov_precision = {"fp32": "f32", "fp16": "f32", "bf16": "bf16"}.get(row.precision, "default")
        args = f", backend='openvino', inference_precision={ov_precision!r}"
        flags = f" --backend openvino --inference-precision {ov_precision}"
    elif row.backend == "ort":  # the provider measured, not whatever auto picks on another box
        short = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "trt"}.get(row.provider, "cpu")
        args, flags = f", providers={short!r}", f" --providers {short}"
    return (f"from tl.runtime import Classifier; clf = Classifier.load({path!r}{args})",
            f"tl predict {path} IMAGES...{flags}")
