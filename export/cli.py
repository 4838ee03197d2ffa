"""`tl export`: click only at top level; torch/onnx load inside the command."""

from __future__ import annotations

import click


@click.command("export")
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Output folder (default: exports/<run name>).")
@click.option("--onnx", is_flag=True, help="model.onnx: FP32, dynamic batch (always written; the others derive from it).")
@click.option("--fp16", is_flag=True, help="model.fp16.onnx: float16 weights/compute, float32 I/O.")
@click.option("--int8", is_flag=True, help="model.int8.onnx: QDQ, symmetric INT8, per-channel weights (+ model.int8.plan with --trt).")
@click.option("--trt", is_flag=True, help="TensorRT engine model.fp16.plan (+ sidecar); implies --fp16.")
@click.option("--opset", type=int, default=20, show_default=True, help="ONNX opset (at least 17).")
@click.option("--max-batch", type=int, default=32, show_default=True, help="Largest batch (ONNX dynamic dim bound, TensorRT profile max).")
@click.option("--min-batch", type=int, default=1, show_default=True, help="TensorRT profile min batch.")
@click.option("--opt-batch", type=int, default=8, show_default=True, help="TensorRT profile batch to tune for.")
@click.option("--calib-dir", type=click.Path(path_type=str), default=None,
              help="INT8 calibration images (default: the checkpoint's training images).")
@click.option("--calib-count", type=int, default=256, show_default=True, help="Number of calibration images.")
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax", show_default=True)
@click.option("--val-dir", type=click.Path(path_type=str), default=None,
              help="Images for the parity check (default: the run's validation images, else synthetic).")
@click.option("--parity-count", type=int, default=256, show_default=True, help="At most this many parity images.")
@click.option("--workspace", type=float, default=4.0, show_default=True, help="TensorRT builder workspace, GiB.")
@click.option("--opt-level", type=int, default=None, help="TensorRT builder optimization level 0-5 (default: TensorRT's).")
@click.option("--device", type=int, default=0, show_default=True, help="CUDA device for TensorRT.")
def export(checkpoint, out, onnx, fp16, int8, trt, opset, max_batch, min_batch, opt_batch, calib_dir, calib_count,
           calib_method, val_dir, parity_count, workspace, opt_level, device):
    """Export CHECKPOINT (best.pt or a run folder) to ONNX / TensorRT and check each artifact against PyTorch.

    \b
      tl export runs/x/best.pt --onnx --trt           # model.onnx, model.fp16.onnx, model.fp16.plan
      tl export runs/x --int8 --calib-dir data/train  # + model.int8.onnx
    """
    from tl.export import ExportOptions, export as run_export

    result = run_export(ExportOptions(
        checkpoint=checkpoint, out=out, onnx=True, fp16=fp16, int8=int8, trt=trt, opset=opset,
        max_batch=max_batch, min_batch=min_batch, opt_batch=opt_batch, calib_dir=calib_dir,
        calib_count=calib_count, calib_method=calib_method, val_dir=val_dir, parity_count=parity_count,
        workspace=workspace, opt_level=opt_level, device=device,
    ))
    click.echo(f"wrote {', '.join(a.file for a in result.artifacts)} and export.json to {result.out}")
