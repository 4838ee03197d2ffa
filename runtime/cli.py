"""`tl predict` and `tl info`: the runtime's CLI. Only click is imported at top level.

These commands must run where torch is not installed (an edge box with the runtime only).
"""

from __future__ import annotations

from pathlib import Path

import click

from tl.runtime.backends.registry import BACKEND_CHOICES, OPENVINO_PRECISIONS

FORMATS = ("table", "json", "csv")


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1), help="Classes listed per image.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1), help="Images per inference call.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="table for people; json (one object per line) or csv for scripts.")
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Write the results here instead of stdout.")
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True,
              help="auto picks by file suffix: .onnx -> ONNX Runtime, .plan/.engine -> TensorRT; openvino runs .onnx on OpenVINO.")
@click.option("--providers", default=None, help="ONNX Runtime providers in order, e.g. cpu or trt,cuda,cpu (default: best available).")
@click.option("--spec", "spec_path", type=click.Path(path_type=Path), help="spec.json for a model that carries none.")
@click.option("--device", default=0, show_default=True, type=int, help="GPU index.")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="ONNX Runtime intra-op / OpenVINO inference threads (default: all cores).")
@click.option("--precision", default=None, type=click.Choice(OPENVINO_PRECISIONS),
              help="OpenVINO inference precision [default: f32; default = OpenVINO's choice, bf16 on AMX CPUs].")
def predict(model, paths, top_k, batch_size, fmt, output, backend, providers, spec_path, device, threads, precision):
    """Classify images (files or folders, walked recursively) with an exported model.

    \b
      tl predict exports/x/model.int8.onnx photos/
      tl predict model.fp16.plan a.jpg b.png --format json
    """
    from tl.runtime.commands import run_predict

    run_predict(model=model, paths=paths, top_k=top_k, batch_size=batch_size, fmt=fmt, output=output,
                backend=backend, providers=providers, spec=spec_path, device=device, threads=threads,
                precision=precision)


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--no-env", is_flag=True, help="Leave out the environment section.")
def info(model, fmt, no_env):
    """Show a model's spec, the artifact (opset, precision, shapes, size, build record) and the environment."""
    from tl.runtime.commands import run_info

    run_info(model=model, fmt=fmt, env=not no_env)
