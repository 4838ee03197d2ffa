"""`tl predict` and `tl info`: classify images with an exported model, describe a model file.

These commands must run where torch is not installed (an edge box with the runtime only);
top level imports only click and the standard library, so `tl --help` stays light.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import click

from tl.runtime.backends.registry import BACKEND_CHOICES, OPENVINO_PRECISIONS
from tl.runtime.errors import TLError

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
    run_predict(model=model, paths=paths, top_k=top_k, batch_size=batch_size, fmt=fmt, output=output,
                backend=backend, providers=providers, spec=spec_path, device=device, threads=threads,
                precision=precision)


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--no-env", is_flag=True, help="Leave out the environment section.")
def info(model, fmt, no_env):
    """Show a model's spec, the artifact (opset, precision, shapes, size, build record) and the environment."""
    run_info(model=model, fmt=fmt, env=not no_env)


@dataclass
class Inputs:
    images: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # non-image files
    shown: dict[Path, str] = field(default_factory=dict)  # image -> its path relative to the folder it was found in


def collect_inputs(paths: Sequence[str | Path]) -> Inputs:
    """Files and folders (walked, sorted) -> image files; other files are counted, not read."""
    from tl.runtime.images import is_image_file

    found = Inputs()
    seen: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise TLError(f"not found: {p}")
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            if f in seen:
                continue
            seen.add(f)
            (found.images if is_image_file(f) else found.skipped).append(f)
            found.shown[f] = str(f.relative_to(p)) if p.is_dir() else str(f)
    if not found.images:
        where = ", ".join(map(str, paths))
        raise TLError(f"no images found in {where} ({len(found.skipped)} other files skipped); "
                      "give image files (jpg, png, bmp, gif, tif, webp) or folders that hold them")
    return found


def check_output(output: Path, *, model: Path, spec: Path | None, paths: Sequence[str | Path], found: Inputs) -> None:
    """``-o`` never replaces what predict reads: the model, its sidecar, a spec or an input file."""
    from tl.runtime.artifact import ENGINE_SUFFIXES
    from tl.runtime.files import check_writable
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
    check_writable(output)  # before the images are classified, not after


def run_predict(*, model, paths, top_k=5, batch_size=16, fmt="table", output=None, backend="auto",
                providers=None, spec=None, device=0, threads=None, precision=None) -> None:
    import numpy as np

    from tl.console import RichReporter
    from tl.runtime.classifier import Classifier
    from tl.runtime.images import preprocess_one

    found = collect_inputs(paths)
    if output is not None:
        check_output(output, model=model, spec=spec if isinstance(spec, (str, Path)) else None, paths=paths, found=found)
    clf = Classifier.load(model, backend=backend, providers=providers, device=device, spec=spec,
                          intra_op_threads=threads, precision=precision)
    preds, failures = [], []
    reporter = RichReporter()
    with reporter, reporter.task("classifying", total=len(found.images)) as task:
        for start in range(0, len(found.images), batch_size):
            chunk = found.images[start:start + batch_size]
            arrays, ok = [], []
            for f in chunk:
                try:
                    arrays.append(preprocess_one(f, clf.spec))
                    ok.append(str(f))
                except TLError as e:
                    failures.append((f, str(e)))
                    reporter.warning(str(e))
            if arrays:
                logits = clf.predict_logits(np.stack(arrays))
                preds += clf.postprocess(logits, top_k=top_k, sources=ok)
            task.advance(len(chunk))
    err = reporter.console

    text = _render(preds, fmt, clf, {str(f): name for f, name in found.shown.items()})
    if output is not None:
        from tl.runtime.files import atomic_write_text

        atomic_write_text(output, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    summary = (f"{len(preds)} images classified with {clf.path.name} ({clf.backend_name}, {clf.precision}, "
               f"{', '.join(clf.providers)})")
    if found.skipped:
        summary += f"; {len(found.skipped)} non-image files skipped"
    if output is not None:
        summary += f"; results in {output}"
    err.print(summary, highlight=False, soft_wrap=True)
    clf.close()
    if failures:
        listed = "; ".join(f"{f}" for f, _ in failures[:5]) + (" ..." if len(failures) > 5 else "")
        raise TLError(f"{len(failures)} of {len(found.images)} images could not be read: {listed} "
                      "(the others were classified; fix or remove these files)")


def _render(preds, fmt: str, clf, shown: dict[str, str]) -> str:
    if fmt == "json":
        return "".join(json.dumps(p.to_dict()) + "\n" for p in preds)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["source", "label", "index", "score", "top_k"])
        for p in preds:
            w.writerow([p.source, p.label, p.index, f"{p.score:.6f}", ";".join(f"{l}:{s:.6f}" for l, s in p.top_k)])
        return buf.getvalue()
    from rich.console import Console
    from rich.table import Table

    from tl.console import shown as safe

    table = Table(title=f"{safe(clf.path.name)} ({clf.precision}, {clf.backend_name})", title_justify="left")
    table.add_column("image", overflow="fold")
    table.add_column("label")
    table.add_column("score", justify="right")
    table.add_column("top-k")
    for p in preds:
        table.add_row(safe(shown.get(p.source or "", p.source or "<array>")), safe(p.label), f"{p.score:.3f}",
                      ", ".join(f"{safe(l)} {s:.3f}" for l, s in p.top_k[1:]))
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
