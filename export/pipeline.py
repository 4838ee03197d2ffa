"""`export(options)`: a list of steps, one per artifact kind, each timed and checked the same way.

The shape of Ultralytics' ``export_<fmt>`` methods under one ``@try_export``: a step writes
one file and returns its path; :func:`_run_step` times it, reports progress, compares the
file with eager PyTorch FP32 on the parity images and returns the report row.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tl.export.options import ExportOptions
from tl.export.parity import ArtifactReport, ParityImages
from tl.runtime.errors import TLError
from tl.runtime.progress import SILENT, Reporter
from tl.runtime.spec import ModelSpec

ONNX_NAMES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


@dataclass
class ExportResult:
    out: Path
    artifacts: list[ArtifactReport]
    report: Path  # export.json
    images: int
    image_source: str
    warnings: list[str] = field(default_factory=list)

    def files(self) -> list[Path]:
        return [self.out / a.file for a in self.artifacts]


@dataclass
class ExportContext:
    """What every step reads: the model, where files go, the parity images and their reference logits."""

    options: ExportOptions
    model: Any
    spec: ModelSpec
    ckpt: dict[str, Any]
    out: Path
    work: Path  # sources that are not outputs (model.onnx without --onnx) live here, then vanish
    images: ParityImages
    reference: np.ndarray
    reporter: Reporter
    calib_files: list[Path] | None = None
    calibration: dict[str, Any] | None = None
    reports: list[ArtifactReport] = field(default_factory=list)

    def place(self, name: str) -> Path:
        """Where ``name`` is written: the output folder, or the work folder for a source nobody asked for."""
        return self.work / name if name == ONNX_NAMES["fp32"] and not self.options.keep_onnx else self.out / name

    def find(self, name: str) -> Path:
        return self.out / name if (self.out / name).is_file() else self.work / name


# -- the steps --------------------------------------------------------------------------------


def step_onnx(ctx: ExportContext) -> Path:
    from tl.export.onnx import export_onnx

    o = ctx.options
    return export_onnx(ctx.model, ctx.spec, ctx.place(ONNX_NAMES["fp32"]), opset=o.opset, max_batch=o.max_batch)


def step_fp16(ctx: ExportContext) -> Path:
    from tl.export.fp16 import convert_fp16

    return convert_fp16(ctx.find(ONNX_NAMES["fp32"]), ctx.place(ONNX_NAMES["fp16"]))


def step_int8(ctx: ExportContext) -> Path:
    from tl.export.int8 import CalibOptions, quantize_int8

    o = ctx.options
    path = ctx.place(ONNX_NAMES["int8"])
    ctx.calibration = quantize_int8(ctx.find(ONNX_NAMES["fp32"]), path, files=ctx.calib_files or [],
                                    options=CalibOptions(count=o.calib_count, method=o.calib_method),
                                    reporter=ctx.reporter)
    ctx.calibration["source"] = str(o.calib_dir) if o.calib_dir is not None else "checkpoint train data"
    return path


def step_engine(precision: str) -> Callable[[ExportContext], Path]:
    def step(ctx: ExportContext) -> Path:
        from tl.export.trt import TrtOptions, build_engine

        o = ctx.options
        engine, _ = build_engine(
            sources=[ctx.out, ctx.work], out_dir=ctx.out, spec=ctx.spec, precision=precision, device=o.device,
            options=TrtOptions(min_batch=o.min_batch, opt_batch=o.opt_batch, max_batch=o.max_batch,
                               workspace_gib=o.workspace, opt_level=o.opt_level),
        )
        return engine

    return step


def plan_steps(o: ExportOptions) -> list[tuple[str, str, Callable[[ExportContext], Path]]]:
    """(precision, description, step) in order; every artifact after the first derives from model.onnx."""
    steps = {"fp32": ("exporting model.onnx (torch.onnx)", step_onnx),
             "fp16": ("converting model.fp16.onnx", step_fp16),
             "int8": ("quantizing model.int8.onnx", step_int8)}
    plan = [(p, *steps[p]) for p in o.precisions]
    plan += [(p, f"building TensorRT {p} engine", step_engine(p)) for p in o.engine_precisions]
    return plan


def _run_step(ctx: ExportContext, precision: str, description: str, step: Callable[[ExportContext], Path]) -> ArtifactReport:
    """Time one step, then check its file against eager PyTorch FP32 (the ``@try_export`` of this pipeline)."""
    from tl.export import parity as par

    with ctx.reporter.task(description):
        t0 = time.perf_counter()
        path = step(ctx)
        seconds = time.perf_counter() - t0
    with ctx.reporter.task(f"checking {path.name} against PyTorch"):
        logits, provider = par.artifact_logits(path, ctx.images.batch, device=ctx.options.device)
    backend = "tensorrt" if path.suffix != ".onnx" else "onnxruntime"
    report = ArtifactReport(file=path.name, precision=precision, backend=backend, provider=provider,
                            size_mb=round(path.stat().st_size / 1e6, 3), seconds=round(seconds, 3))
    par.judge(report, par.compare(ctx.reference, logits))
    return report


# -- the whole export ---------------------------------------------------------------------------


def _preflight(o: ExportOptions) -> None:
    """Fail before minutes of ONNX work: TensorRT, cuda-python (parity runs engines through it) and a GPU."""
    if not o.trt:
        return
    from tl.runtime.gpu import cuda_device, import_cudart, import_tensorrt

    import_tensorrt()
    cuda_device(import_cudart(), o.device)


def _prepare(o: ExportOptions, reporter: Reporter, work: Path) -> ExportContext:
    from tl.export import parity as par
    from tl.runtime.files import ensure_output_dir
    from tl.train.checkpoint import load_model

    model, spec, ckpt = load_model(o.checkpoint)
    calib_files = None
    if o.int8:  # find calibration images before spending time on the export
        from tl.export.int8 import calibration_images

        calib_files = calibration_images(calib_dir=o.calib_dir, ckpt=ckpt, count=o.calib_count)
    out = ensure_output_dir(o.output_dir(), option="--out")
    with reporter.task("eager PyTorch FP32 reference"):
        images = par.parity_images(spec=spec, ckpt=ckpt, val_dir=o.val_dir, count=o.parity_count)
        reference = par.torch_logits(model, images.batch)
    return ExportContext(options=o, model=model, spec=spec, ckpt=ckpt, out=out, work=work, images=images,
                         reference=reference, reporter=reporter, calib_files=calib_files)


def export(options: ExportOptions, *, reporter: Reporter = SILENT) -> ExportResult:
    """Write the requested artifacts and export.json into ``options.output_dir()``; see the module docstring."""
    _preflight(options)
    with tempfile.TemporaryDirectory(prefix="tl-export-") as tmp:
        ctx = _prepare(options, reporter, Path(tmp))
        for precision, description, step in plan_steps(options):
            report = _run_step(ctx, precision, description, step)
            ctx.reports.append(report)
            if report.status == "failed":  # only FP32 fails: everything else derives from it
                _remove(ctx.out / report.file)
                _write_report(ctx)
                raise TLError(f"{report.file} does not match PyTorch ({report.note}); removed it. "
                              "This is a bug in the exporter for this model: try another --opset, or report it")
    kept = [r for r in ctx.reports if (ctx.out / r.file).is_file()]
    warnings = [f"{r.file}: {r.note}" for r in kept if r.status == "warning"]
    ctx.reports = kept
    return ExportResult(out=ctx.out, artifacts=kept, report=_write_report(ctx), images=len(ctx.images.batch),
                        image_source=ctx.images.source, warnings=warnings)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _write_report(ctx: ExportContext) -> Path:
    from tl.runtime.files import atomic_write_text

    data: dict[str, Any] = {
        "checkpoint": str(Path(ctx.ckpt.get("path", ctx.options.checkpoint)).resolve()),
        "images": int(len(ctx.images.batch)),
        "image_source": ctx.images.source,
        "artifacts": [r.to_dict() for r in ctx.reports],
    }
    if ctx.calibration is not None:
        data["calibration"] = ctx.calibration
    path = ctx.out / "export.json"
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path
