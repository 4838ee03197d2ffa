"""`tl predict` and `tl info`: classify images with an exported model, describe a model file.

These commands must run where torch is not installed (an edge box with the runtime only);
top level imports only click and the standard library, so `tl --help` stays light.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import sys
from pathlib import Path
from typing import Sequence

import click

from tl.cli import PathParam, field_option
from tl.runtime.backends.registry import BACKEND_CHOICES, OPENVINO_PRECISIONS
from tl.runtime.errors import TLError
from tl.runtime.predict import PredictOptions

from tl.commands.predict_ray import predict_ray, ray_click_options, take_ray_args
from tl.commands.predict_stream import predict_command, stream_click_options, take_stream_args

FORMATS = ("table", "json", "csv")
STDOUT = "-"  # -o -: the results on stdout, as without -o


def _one_line_errors(command):
    """An error of these commands stays one line: the file names in it are shown with their newlines
    and escape sequences escaped (a name is data from anywhere)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        from tl.console import printable

        try:
            return command(*args, **kwargs)
        except TLError as e:
            raise TLError(printable(e)) from e

    return run


def _opt(name: str, *decls: str, **kwargs):
    return field_option(PredictOptions, name, *decls, **kwargs)


@click.command()
@click.argument("model", type=PathParam(path_type=Path))
@click.argument("paths", nargs=-1, required=True, type=PathParam())  # str: a URL's // must survive
@_opt("top_k", type=click.IntRange(min=1), help="Classes listed per image.")
@_opt("batch_size", type=click.IntRange(min=1), help="Images per inference call.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="table for people; json (one object per line) or csv for scripts.")
@click.option("--output", "-o", type=PathParam(path_type=Path),
              help="Write the results here instead of stdout (- is stdout; a FIFO or device is written as a stream).")
@_opt("backend", type=click.Choice(BACKEND_CHOICES),
      help="auto picks by file suffix: .onnx -> ONNX Runtime, .plan/.engine -> TensorRT; openvino runs .onnx on OpenVINO.")
@_opt("providers", help="ONNX Runtime providers in order, e.g. cpu or trt,cuda,cpu (default: cuda,cpu where CUDA is there, else cpu; the TensorRT provider only when named).")
@_opt("spec", type=PathParam(path_type=Path), help="spec.json for a model that carries none.")
@_opt("device", type=int, help="GPU index.")
@_opt("threads", type=click.IntRange(min=1), help="ONNX Runtime intra-op / OpenVINO inference threads (default: all cores).")
@_opt("inference_precision", type=click.Choice(OPENVINO_PRECISIONS), show_default=False,
      help="OpenVINO only: what an FP32 model computes in [default: f32; default = OpenVINO's choice, bf16 on AMX CPUs].")
@click.option("--precision", "old_precision", hidden=True, type=click.Choice(OPENVINO_PRECISIONS),
              help="The older spelling of --inference-precision.")
@stream_click_options
@ray_click_options
@_one_line_errors
def predict(model, paths, fmt, output, old_precision, **kwargs):
    """Classify images (files or folders, walked recursively) with an exported model.

    \b
      tl predict exports/x/model.int8.onnx photos/
      tl predict model.fp16.plan a.jpg b.png --format json
      tl predict model.onnx clip.mp4 --save-video out.mp4 -o frames.jsonl --format json
      tl predict model.onnx /dev/video0 --max-frames 300     (also rtsp://..., 'frames/*.png')
      tl predict model.onnx photos/ --ray -o results.parquet    (Ray Data: local, or --ray auto on a cluster)
    """
    from tl.console import RichReporter, printable, stderr_console
    from tl.runtime.predict import classify_inputs, collect_inputs, load_classifier

    if kwargs["inference_precision"] is None:
        kwargs["inference_precision"] = old_precision
    stream_args = take_stream_args(kwargs)
    ray_args = take_ray_args(kwargs)
    options = PredictOptions(model=model, paths=paths, **kwargs)
    if output is not None and str(output) == STDOUT:
        output = None
    if predict_ray(paths, options, fmt, output, ray_args, stream_args, check_output=check_output):
        return
    if predict_command(paths, options, fmt, output, stream_args, check_output=check_output):
        return
    found = collect_inputs(paths)
    if output is not None:
        check_output(output, model=model, spec=options.spec, paths=paths, found=found)
    reporter = RichReporter()  # entered once the model loads: an error before is one line, no progress display
    with load_classifier(options, reporter=reporter) as clf, reporter:
        result = classify_inputs(clf, found, options, reporter=reporter)
    text = _render(result, fmt)
    if output is not None:
        from tl.runtime.files import write_output

        write_output(output, text.encode("utf-8"))
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    stderr_console().print(printable(_summary(result, output)), highlight=False, soft_wrap=True, markup=False)
    if result.failures:
        listed = "; ".join(f"{f}" for f, _ in result.failures[:5]) + (" ..." if len(result.failures) > 5 else "")
        raise TLError(f"{len(result.failures)} of {len(found.images)} images could not be read: {listed} "
                      "(the others were classified; fix or remove these files)")


@click.command()
@click.argument("model", type=PathParam(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--no-env", is_flag=True, help="Leave out the environment section.")
@_one_line_errors
def info(model, fmt, no_env):
    """Show a model's spec, the artifact (opset, precision, shapes, size, build record) and the environment."""
    run_info(model=model, fmt=fmt, env=not no_env)


def check_output(output: Path, *, model: Path, spec: Path | None, paths: Sequence[str | Path], found) -> None:
    """``-o`` never replaces what predict reads: the model, its sidecar, a spec or an input file."""
    from tl.runtime.artifact import ENGINE_SUFFIXES
    from tl.runtime.files import check_output_target
    from tl.runtime.sidecar import sidecar_path

    output = Path(output)
    if output.is_dir():
        raise TLError(f"-o {output} is a folder; give a file name for the results (e.g. {output / 'predictions.csv'})")
    inputs = [(Path(model), "the model")]
    if Path(model).suffix.lower() in ENGINE_SUFFIXES:
        inputs.append((sidecar_path(model), "the model's sidecar"))
    if spec is not None:
        inputs.append((Path(spec), "the --spec file"))
    inputs += [(f, "an input image") for f in found.images]
    inputs += [(Path(p), "an input file") for p in paths if Path(p).is_file()]
    target = output.resolve()
    for path, what in inputs:
        if path.resolve() == target or (output.exists() and path.exists() and output.samefile(path)):
            raise TLError(f"-o {output} is {what} ({path}); writing the results there would destroy it: "
                          "give another file name")
    check_output_target(output)  # before the images are classified, not after


def _summary(result, output: Path | None) -> str:
    summary = (f"{len(result.predictions)} images classified with {result.model} ({result.backend}, "
               f"{result.precision}, {', '.join(result.providers)})")
    if result.inputs.skipped:
        summary += f"; {len(result.inputs.skipped)} non-image files skipped"
    if output is not None:
        summary += f"; results in {output}"
    return summary


def _render(result, fmt: str) -> str:
    from tl.runtime.predict import output_row, text_name  # names that are not UTF-8 are written escaped

    preds = result.predictions
    if fmt == "json":
        return "".join(json.dumps(output_row(p)) + "\n" for p in preds)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["source", "label", "index", "score", "top_k"])
        for r in map(output_row, preds):
            w.writerow([r["source"], r["label"], r["index"], f"{r['score']:.6f}",
                        ";".join(f"{k['label']}:{k['score']:.6f}" for k in r["top_k"])])
        return buf.getvalue()
    from rich.console import Console
    from rich.table import Table

    from tl.console import shown as safe

    shown = {str(f): name for f, name in result.inputs.shown.items()}
    table = Table(title=f"{safe(result.model)} ({result.precision}, {result.backend})", title_justify="left")
    table.add_column("image", overflow="fold")
    table.add_column("label")
    table.add_column("score", justify="right")
    table.add_column("top-k")
    for p in preds:
        name = text_name(shown.get(p.source or "", p.source or "<array>"))
        table.add_row(safe(name), safe(p.label), f"{p.score:.3f}", ", ".join(f"{safe(l)} {s:.3f}" for l, s in p.top_k[1:]))
    buf = io.StringIO()
    Console(file=buf, width=120, no_color=True, highlight=False).print(table)
    return buf.getvalue()


def run_info(*, model, fmt: str = "text", env: bool = True) -> None:
    from tl.runtime.info import artifact_info

    data = {"artifact": artifact_info(model)}
    if env:
        from tl.runtime.env import environment

        data["environment"] = environment()
    if fmt == "json":
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    from rich.table import Table

    from tl.console import shown, stdout_console

    console = stdout_console(soft_wrap=True)
    art = data["artifact"]
    spec = art.get("spec")
    t = Table(title=f"{Path(art['file']).name}", show_header=False, title_justify="left")
    t.add_column("key", style="bold")
    t.add_column("value", overflow="fold")
    t.add_row("file", art["file"])
    t.add_row("size", f"{art['size_mb']:.2f} MB")
    others = [b for b in art.get("backends", []) if b != art["backend"]]
    t.add_row("backend", art["backend"] + (f" (also: {', '.join(f'--backend {b}' for b in others)})" if others else ""))
    t.add_row("format", str(art.get("format")))
    t.add_row("precision", str(art.get("precision")))
    if "opset" in art:
        t.add_row("opset", f"{art['opset']} (ir {art['ir_version']}, producer {art['producer'] or '?'})")
    for io_kind in ("inputs", "outputs"):
        for x in art.get(io_kind, []):
            extra = f" profile {x['profile']}" if "profile" in x else ""
            t.add_row(io_kind[:-1], f"{x['name']} {x['shape']} {x.get('dtype', '')}{extra}")
    if spec:
        pre = spec["preprocess"]
        t.add_row("arch", shown(spec["arch"]))
        t.add_row("classes", f"{spec['num_classes']}: {', '.join(map(shown, spec['classes']))}")
        t.add_row("input size", f"{spec['input']['height']}x{spec['input']['width']} {spec['input']['layout']}")
        t.add_row("preprocess", f"{pre['resize_mode']} {pre['resize_size']} {pre['interpolation']}, "
                                f"mean {pre['mean']}, std {pre['std']}")
    else:
        t.add_row("spec", "none: not exported by tl; predict needs --spec spec.json")
    for k, v in (art.get("build") or {}).items():
        if v not in (None, "", {}):
            t.add_row(f"build.{k}", str(v))
    console.print(t)
    if env:
        console.print(_environment_table(data["environment"]))


def _environment_table(e: dict):
    from rich.table import Table

    ort = e["onnxruntime"]
    et = Table(title="environment", show_header=False, title_justify="left")
    et.add_column("key", style="bold")
    et.add_column("value", overflow="fold")
    et.add_row("python", f"{e['python']} on {e['platform']}")
    et.add_row("numpy / Pillow", f"{e['numpy']} / {e['pillow']}")
    et.add_row("onnxruntime", f"{ort['version']}: {', '.join(ort['providers'])}" if ort else "not installed")
    ov = e.get("openvino")
    et.add_row("openvino", f"{ov['version']}: {', '.join(ov['devices'])} ({', '.join(ov['cpu_capabilities'])})"
               if ov else "not installed")
    et.add_row("tensorrt", e["tensorrt"] or "not installed")
    et.add_row("cpu", f"{e['cpu']['model']} ({e['cpu']['usable_cores']} of {e['cpu']['cores']} cores usable)")
    for i, g in enumerate(e["gpus"]):
        et.add_row(f"gpu {i}", ", ".join(f"{k} {v}" for k, v in g.items()))
    if not e["gpus"]:
        et.add_row("gpu", "none found (no nvidia-smi)")
    return et
