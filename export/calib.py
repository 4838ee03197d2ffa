"""`--calib-method auto`: quantize with every ORT calibration method, measure each, keep the best.

Which method wins depends on the model and its data (min-max is hurt by outlier activations,
entropy and percentile clip them), so tl measures instead of guessing: each candidate runs
through ``tl.runtime.Classifier`` on validation images that were not used to calibrate, and
is compared with eager PyTorch FP32 on them. Every candidate is recorded in export.json.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tl.export.cpuflags import this_cpu
from tl.export.int8 import ORT_METHODS, CalibOptions, Quantizer, quantize_int8
from tl.export.parity import ParityImages, accuracy, artifact_logits, compare
from tl.runtime.errors import TLError
from tl.runtime.progress import SILENT, Reporter

SELECTION_RULE = ("highest top-1 agreement with eager PyTorch FP32 on the selection images; "
                  "tie: lowest mean |logit diff|; tie: the earlier method in " + ", ".join(ORT_METHODS))


@dataclass(frozen=True)
class Candidate:
    method: str
    top1_agreement: float
    mean_abs_diff: float
    max_abs_diff: float
    accuracy: float | None = None
    calibrate_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose(candidates: Sequence[Candidate]) -> Candidate:
    """The best candidate by :data:`SELECTION_RULE` (agreement, not accuracy: the FP32 model is the reference)."""
    if not candidates:
        raise ValueError("no calibration candidates to choose from")
    order = {m: i for i, m in enumerate(ORT_METHODS)}
    return min(candidates, key=lambda c: (-c.top1_agreement, c.mean_abs_diff, order.get(c.method, len(order))))


@dataclass(frozen=True)
class Selection:
    """Validation images kept apart from calibration: their rows in the parity batch, and their labels."""

    rows: np.ndarray
    batch: np.ndarray
    labels: np.ndarray | None
    source: str


NO_VALIDATION = ("--calib-method auto measures each method on validation images and this checkpoint records "
                 "none; pass --val-dir FOLDER (images not used for calibration)")


def require_selection_images(val_dir: str | Path | None, ckpt: dict[str, Any]) -> None:
    """Before any work: auto needs real validation images (--val-dir, or the run's), never synthetic ones."""
    files = ((ckpt or {}).get("data") or {}).get("val_files") or []
    if val_dir is None and not any(Path(f).is_file() for f in files):
        raise TLError(NO_VALIDATION)


def selection_images(images: ParityImages, calib_files: Sequence[Path]) -> Selection:
    """The parity images minus any calibration image: a method is judged on images it never saw."""
    if not images.files:
        raise TLError(NO_VALIDATION)
    calib = {os.path.realpath(f) for f in calib_files}
    rows = np.asarray([i for i, f in enumerate(images.files) if os.path.realpath(f) not in calib], dtype=np.int64)
    if not len(rows):
        raise TLError(f"--calib-method auto: every validation image ({images.source}) is also a calibration image; "
                      "pass a --val-dir or --calib-dir with other images")
    labels = images.labels[rows] if images.labels is not None else None
    return Selection(rows, images.batch[rows], labels, images.source)


def calibrate_auto(src: str | Path, path: str | Path, *, files: Sequence[Path], options: CalibOptions,
                   selection: Selection, reference: np.ndarray, reporter: Reporter = SILENT) -> dict[str, Any]:
    """Quantize ``src`` with each method, keep the best as ``path``; returns the calibration record for export.json.

    ``reference``: eager FP32 logits on ``selection.batch``.
    """
    candidates, made = [], {}
    with Quantizer(src, path, files=files, options=options) as q:
        for method in ORT_METHODS:
            t0 = time.perf_counter()
            made[method] = q.quantize(method, reporter)
            seconds = time.perf_counter() - t0
            with reporter.task(f"measuring INT8 ({method}) on {len(selection.batch)} validation images"):
                logits, _ = artifact_logits(made[method], selection.batch)
            c = compare(reference, logits)
            candidates.append(Candidate(method, c.top1_agreement, c.mean_abs_diff, c.max_abs_diff,
                                        accuracy(logits, selection.labels), round(seconds, 3)))
        best = choose(candidates)
        os.replace(made[best.method], path)
    return {**q.record(best.method, sum(c.calibrate_s for c in candidates)), "requested": "auto",
            "rule": SELECTION_RULE,
            "selection_images": {"count": int(len(selection.batch)), "source": selection.source,
                                 "labelled": selection.labels is not None},
            "candidates": [c.to_dict() for c in candidates]}


def reduce_range_decision(choice: str, *, trt: bool, cpu=None) -> dict[str, Any]:
    """Whether INT8 weights are 7-bit, and why (export.json records it): --reduce-range on|off, or auto.

    auto: on where this CPU's ONNX Runtime INT8 can saturate (no VNNI), except when model.int8.onnx
    also builds a TensorRT engine, whose GPU kernels never saturate and would lose the bit for nothing.
    """
    cpu = cpu or this_cpu()
    record = {"choice": choice, "cpu": cpu.to_dict()}
    if choice != "auto":
        return {**record, "reduce_range": choice == "on", "reason": f"--reduce-range {choice}"}
    if trt and cpu.reduce_range:
        return {**record, "reduce_range": False,
                "reason": "model.int8.onnx also builds the TensorRT engine (GPU INT8 does not saturate); "
                          f"{cpu.reason.split(':')[0]}: pass --reduce-range on for ONNX Runtime on this CPU"}
    return {**record, "reduce_range": cpu.reduce_range, "reason": cpu.reason}


def quantize_for_export(ctx, src: Path, path: Path) -> dict[str, Any]:
    """The export's INT8 step: one method, or ``auto`` on the parity images the calibration did not use."""
    o = ctx.options
    saturation = reduce_range_decision(o.reduce_range, trt=o.trt)
    options = CalibOptions(count=o.calib_count, method=o.calib_method, reduce_range=saturation["reduce_range"])
    files = ctx.calib_files or []
    if o.calib_method == "auto":
        selection = selection_images(ctx.images, files)
        record = calibrate_auto(src, path, files=files, options=options, selection=selection,
                                reference=ctx.reference[selection.rows], reporter=ctx.reporter)
    else:
        record = quantize_int8(src, path, files=files, options=options, reporter=ctx.reporter)
    record["source"] = str(o.calib_dir) if o.calib_dir is not None else "checkpoint train data"
    record["saturation"] = saturation
    return record
