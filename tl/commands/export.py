"""`tl export`: click only at top level; torch/onnx load inside the command.

Defaults and choices come from ``tl.export.options``; the parity table and the calibration
line are rendered here (the demo prints them too).
"""

from __future__ import annotations

import click

from tl.cli import PathParam, field_option
from tl.export.options import CALIB_METHODS, DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, REDUCE_RANGE, ExportOptions
from tl.export.triton_releases import first_release
from tl.runtime.metadata import DEFAULT_MAX_BATCH


def _opt(name: str, *decls: str, **kwargs):
    return field_option(ExportOptions, name, *decls, **kwargs)


@click.command("export")
@click.argument("checkpoint", type=PathParam(path_type=str))
@_opt("out", "-o", type=PathParam(file_okay=False, path_type=str), help="Output folder [default: exports/<run name>].")
@_opt("onnx", is_flag=True, help="Keep model.onnx (FP32, dynamic batch); the default when no format is named.")
@_opt("fp16", is_flag=True, help="model.fp16.onnx: float16 weights/compute, float32 I/O.")
@_opt("int8", is_flag=True, help="model.int8.onnx: QDQ, symmetric INT8, per-channel weights (+ model.int8.plan with --trt).")
@_opt("trt", is_flag=True, help="TensorRT engine model.fp16.plan (+ sidecar); implies --fp16.")
@_opt("opset", type=click.IntRange(MIN_OPSET, MAX_OPSET), show_default=False,
      help=f"ONNX opset of a checkpoint's export: 17 for TensorRT 8.6 (TorchScript exporter), 18 and up through the "
           f"dynamo exporter [default: {DEFAULT_OPSET}].")
@_opt("max_batch", type=int, help=f"Largest batch (ONNX dynamic dim bound, TensorRT profile max) "
      f"[default: {DEFAULT_MAX_BATCH}; from an ONNX file: its own bound].")
@_opt("min_batch", type=int, help="TensorRT profile min batch.")
@_opt("opt_batch", type=int, help="TensorRT profile batch to tune for.")
@_opt("calib_dir", type=PathParam(path_type=str),
      help="INT8 calibration images (default: the checkpoint's training images; needed from an ONNX file).")
@_opt("calib_count", type=int, help="Number of calibration images.")
@_opt("calib_method", type=click.Choice(CALIB_METHODS),
      help="INT8 calibration; auto tries each and keeps the best on validation images (all recorded in export.json).")
@_opt("reduce_range", type=click.Choice(REDUCE_RANGE),
      help="7-bit INT8 weights; auto: on x86 CPUs without VNNI, where ONNX Runtime's INT8 can saturate.")
@_opt("val_dir", type=PathParam(path_type=str),
      help="Images for the parity check (default: the run's validation images, else synthetic).")
@_opt("parity_count", type=int, help="At most this many parity images.")
@_opt("workspace", type=float, help="TensorRT builder workspace, GiB.")
@_opt("opt_level", type=int, help="TensorRT builder optimization level 0-5 (default: TensorRT's).")
@_opt("device", type=int, help="CUDA device for TensorRT.")
@_opt("triton", type=PathParam(file_okay=False, path_type=str), metavar="REPO",
      help="Also add the artifacts to this Triton model repository (REPO/<name>/config.pbtxt, labels.txt, 1/). "
           f"The default export (opset {DEFAULT_OPSET}) needs Triton {first_release(DEFAULT_OPSET)} or later; "
           f"--opset {MIN_OPSET} loads on {first_release(MIN_OPSET)} and later (see --triton-release).")
@_opt("triton_name", help="Triton model name of model.onnx; the others add _fp16, _int8, _fp16_trt, _int8_trt "
      "[default: the export folder's name].")
@_opt("triton_release", metavar="YY.MM",
      help="The Triton release that will serve REPO: refuse ONNX files its ONNX Runtime cannot load (opset, IR "
           "version), before any work. TensorRT plans load only on the TensorRT version that built them.")
def export(checkpoint, **kwargs):
    """Export CHECKPOINT (best.pt or a run folder) to ONNX / TensorRT and check each artifact against PyTorch.

    CHECKPOINT may also be a model.onnx tl exported: no torch needed, the artifacts are built from
    it and checked against it (an edge box builds its TensorRT engine this way).

    \b
      tl export runs/x/best.pt --onnx --trt           # model.onnx, model.fp16.onnx, model.fp16.plan
      tl export runs/x --int8 --calib-dir data/train  # model.int8.onnx only
      tl export runs/x --triton models                # + models/x/ for tl serve and Triton
      tl export x/model.onnx --trt --int8 --calib-dir images/  # on a Jetson: exports/x/, no torch
    """
    from tl.console import RichReporter, print_table
    from tl.export.pipeline import export as run_export

    options = ExportOptions(checkpoint=checkpoint, **kwargs)
    with RichReporter() as reporter:
        result = run_export(options, reporter=reporter)
    print_table(parity_table(result))
    if result.calibration:
        click.echo(calibration_line(result.calibration))
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"wrote {', '.join(a.file for a in result.artifacts)} and export.json to {result.out}")
    if result.triton:
        click.echo(f"wrote Triton models {', '.join(p.name for p in result.triton)} to {result.triton[0].parent}")


def parity_table(result):
    """The export's parity report as a rich Table (the CLI and the demo print it)."""
    from rich.table import Table

    labelled = result.reference_accuracy is not None
    title = f"parity vs {result.reference} on {result.images} images ({result.image_source})"
    whose = "eager FP32" if result.reference.startswith("eager") else "reference"
    table = Table(title=title + (f"; {whose} accuracy {result.reference_accuracy:.1%}" if labelled else ""))
    for col, justify in (("file", "left"), ("precision", "left"), ("backend", "left"), ("size MB", "right"),
                         ("time s", "right"), ("max |diff|", "right"), ("mean |diff|", "right"),
                         ("top-1 agree", "right")) + ((("accuracy", "right"),) if labelled else ()) + (("status", "left"),):
        table.add_column(col, justify=justify)
    colour = {"ok": "green", "warning": "yellow", "failed": "red", "skipped": "dim"}
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for r in result.artifacts:
        table.add_row(
            r.file, r.precision, f"{r.backend} ({r.provider.replace('ExecutionProvider', '')})", f"{r.size_mb:.1f}",
            f"{r.seconds:.1f}", fmt(r.max_abs_diff, ".2e"), fmt(r.mean_abs_diff, ".2e"),
            fmt(r.top1_agreement, ".1%"), *((fmt(r.accuracy, ".1%"),) if labelled else ()),
            f"[{colour.get(r.status, 'white')}]{r.status}[/]",
        )
    return table


def calibration_line(cal: dict) -> str:
    """One line on how model.int8.onnx was calibrated: the method (and what auto measured), the weight range."""
    line = f"INT8 calibration: {cal['method']}"
    if cal.get("candidates"):
        measured = ", ".join(f"{c['method']} {c['top1_agreement']:.1%}" for c in cal["candidates"])
        line += f" (auto, top-1 agreement on {cal['selection_images']['count']} validation images: {measured})"
    sat = cal.get("saturation") or {}
    weights = "7-bit weights (reduce_range)" if sat.get("reduce_range") else "8-bit weights"
    return f"{line}; {weights}: {sat.get('reason', '')}"
