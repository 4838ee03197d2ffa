"""tl.export: a checkpoint -> ONNX FP32/FP16/INT8 and TensorRT engines, each checked against PyTorch.

    from tl.export import ExportOptions, export
    result = export(ExportOptions(checkpoint="runs/x/best.pt", out="exports/x", int8=True))

Every artifact is written to a temp file, validated and then renamed into place, and is
compared with eager PyTorch FP32 on the same images (export.json, a printed table).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl.runtime.errors import TLError

__all__ = ["ExportOptions", "ExportResult", "export"]


@dataclass(frozen=True)
class ExportOptions:
    checkpoint: str | Path
    out: str | Path | None = None  # default: exports/<run folder name>
    onnx: bool = True
    fp16: bool = False
    int8: bool = False
    trt: bool = False  # model.fp16.plan (+ model.int8.plan with int8)
    opset: int = 20
    max_batch: int = 32
    min_batch: int = 1
    opt_batch: int = 8
    calib_dir: str | Path | None = None
    calib_count: int = 256
    calib_method: str = "minmax"
    val_dir: str | Path | None = None
    parity_count: int = 256
    workspace: float = 4.0  # GiB, TensorRT builder workspace
    opt_level: int | None = None  # TensorRT builder optimization level
    device: int = 0
    quiet: bool = False


@dataclass
class ExportResult:
    out: Path
    artifacts: list  # list[ArtifactReport]
    report: Path  # export.json
    images: int
    image_source: str
    warnings: list[str] = field(default_factory=list)

    def files(self) -> list[Path]:
        return [self.out / a.file for a in self.artifacts]


def default_out(checkpoint: str | Path) -> Path:
    p = Path(checkpoint)
    run = p if p.is_dir() else p.parent
    return Path("exports") / (run.name or "model")


def _validate(o: ExportOptions) -> None:
    from tl.export.int8 import CALIB_METHODS

    if o.opset < 17:
        raise TLError(f"--opset must be at least 17 (got {o.opset})")
    if o.max_batch < 2:
        raise TLError(f"--max-batch must be at least 2 (got {o.max_batch})")
    if o.int8 and o.calib_method not in CALIB_METHODS:
        raise TLError(f"--calib-method must be one of {', '.join(CALIB_METHODS)} (got {o.calib_method!r})")
    if o.calib_count < 1:
        raise TLError(f"--calib-count must be at least 1 (got {o.calib_count})")
    if o.workspace <= 0:
        raise TLError(f"--workspace must be a positive number of GiB (got {o.workspace})")
    if o.opt_level is not None and not 0 <= o.opt_level <= 5:
        raise TLError(f"--opt-level must be between 0 and 5 (got {o.opt_level})")
    if o.calib_dir is not None and not Path(o.calib_dir).is_dir():
        raise TLError(f"--calib-dir: folder not found: {o.calib_dir}")
    if o.val_dir is not None and not Path(o.val_dir).is_dir():
        raise TLError(f"--val-dir: folder not found: {o.val_dir}")


def export(options: ExportOptions) -> ExportResult:
    """Write the requested artifacts into ``options.out`` and ``export.json``; see the module docstring."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from tl.export import parity as par
    from tl.export.trt import TrtOptions, gpu_info, import_tensorrt, profile_shapes
    from tl.train.checkpoint import load_model

    o = options
    _validate(o)
    want_fp16 = o.fp16 or o.trt
    want_int8 = o.int8
    trt_precisions = (["fp16"] + (["int8"] if o.int8 else [])) if o.trt else []
    trt_options = TrtOptions(min_batch=o.min_batch, opt_batch=o.opt_batch, max_batch=o.max_batch,
                             workspace_gib=o.workspace, opt_level=o.opt_level)
    if o.trt:  # fail before minutes of ONNX work, not after
        import_tensorrt()
        if gpu_info(o.device) is None:
            from tl.export.trt import NO_GPU

            raise TLError(NO_GPU)

    model, spec, ckpt = load_model(o.checkpoint)
    if o.trt:
        profile_shapes(spec, trt_options)
    calib_files = None
    if want_int8:  # find calibration images before spending time on the export
        from tl.export.int8 import calibration_images

        calib_files = calibration_images(calib_dir=o.calib_dir, ckpt=ckpt, count=o.calib_count)
    out = Path(o.out) if o.out is not None else default_out(o.checkpoint)
    if out.exists() and not out.is_dir():
        raise TLError(f"--out {out} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)

    err = Console(stderr=True, quiet=o.quiet)
    # Off a terminal rich assumes 80 columns and wraps the table into unreadable cells.
    console = Console(quiet=o.quiet, width=None if sys.stdout.isatty() else 150)
    reports: list[par.ArtifactReport] = []
    warnings: list[str] = []

    def report_for(name: str, precision: str, backend: str, provider: str, seconds: float) -> par.ArtifactReport:
        size = (out / name).stat().st_size / 1e6
        r = par.ArtifactReport(file=name, precision=precision, backend=backend, provider=provider,
                               size_mb=round(size, 3), seconds=round(seconds, 3))
        reports.append(r)
        return r

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn(), console=err, transient=True, disable=o.quiet)
    with progress:
        task = progress.add_task("loading parity images", total=None)
        images = par.parity_images(spec=spec, ckpt=ckpt, val_dir=o.val_dir, count=o.parity_count)
        progress.update(task, description="eager PyTorch FP32 reference")
        reference = par.torch_logits(model, images.batch)
        progress.remove_task(task)

        def check_onnx(name: str, precision: str, seconds: float) -> par.ArtifactReport:
            logits, provider = par.ort_logits(out / name, images.batch, batch_size=o.max_batch)
            r = report_for(name, precision, "onnxruntime", provider, seconds)
            par.judge(r, par.compare(reference, logits))
            return r

        # FP32 ONNX: always made (every other artifact derives from it), checked first.
        fp32 = out / "model.onnx"
        task = progress.add_task("exporting model.onnx (torch.onnx dynamo)", total=None)
        t0 = time.perf_counter()
        from tl.export.onnx import export_onnx

        export_onnx(model, spec, fp32, opset=o.opset, max_batch=o.max_batch)
        r = check_onnx("model.onnx", "fp32", time.perf_counter() - t0)
        progress.remove_task(task)
        if r.status == "failed":
            fp32.unlink(missing_ok=True)
            _write_report(out, ckpt.get("path", o.checkpoint), images, reports)
            raise TLError(f"model.onnx does not match PyTorch ({r.note}); removed it. "
                          "This is a bug in the exporter for this model: try another --opset, or report it")

        if want_fp16:
            task = progress.add_task("converting model.fp16.onnx", total=None)
            t0 = time.perf_counter()
            from tl.export.fp16 import convert_fp16

            convert_fp16(fp32, out / "model.fp16.onnx")
            check_onnx("model.fp16.onnx", "fp16", time.perf_counter() - t0)
            progress.remove_task(task)

        calib_info: dict[str, Any] | None = None
        if want_int8:
            from tl.export.int8 import CalibOptions, quantize_int8

            t0 = time.perf_counter()
            calib_info = quantize_int8(fp32, out / "model.int8.onnx", files=calib_files,
                                       options=CalibOptions(count=o.calib_count, method=o.calib_method), progress=progress)
            calib_info["source"] = str(o.calib_dir) if o.calib_dir is not None else "checkpoint train data"
            check_onnx("model.int8.onnx", "int8", time.perf_counter() - t0)

        for precision in trt_precisions:
            from tl.export.trt import build_engine

            t0 = time.perf_counter()
            engine, _ = build_engine(out_dir=out, spec=spec, precision=precision, options=trt_options,
                                     device=o.device, progress=progress)
            seconds = time.perf_counter() - t0
            try:
                logits, provider = par.engine_logits(engine, images.batch, device=o.device)
            except (ImportError, AttributeError) as e:  # runtime without a TensorRT backend yet
                r = report_for(engine.name, precision, "tensorrt", "tensorrt", seconds)
                r.status, r.note = "skipped", f"no TensorRT runtime to check it ({e})"
                continue
            r = report_for(engine.name, precision, "tensorrt", provider, seconds)
            par.judge(r, par.compare(reference, logits))

    for r in reports:
        if r.status == "warning":
            warnings.append(f"{r.file}: {r.note}")
    path = _write_report(out, ckpt.get("path", o.checkpoint), images, reports, calib=calib_info)
    console.print(par.render_table(reports, images=len(images.batch), source=images.source))
    for w in warnings:
        err.print(f"[yellow]warning:[/] {w}")
    return ExportResult(out=out, artifacts=reports, report=path, images=len(images.batch),
                        image_source=images.source, warnings=warnings)


def _write_report(out: Path, checkpoint: str | Path, images, reports, calib=None) -> Path:
    data = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "images": int(len(images.batch)),
        "image_source": images.source,
        "artifacts": [r.to_dict() for r in reports],
    }
    if calib is not None:
        data["calibration"] = calib
    from tl.runtime.files import atomic_write_text

    path = out / "export.json"
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path
