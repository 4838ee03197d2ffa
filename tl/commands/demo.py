"""`tl demo`: the whole pipeline on a synthetic dataset, on CPU, in a few minutes.

The demo is a list of step functions over one shared DemoContext, each calling the
library (not the CLI): data -> train -> export -> predict -> bench -> summary.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click

from tl.cli import PathParam

# Recipe chosen to beat chance (0.25) clearly within ~2 minutes on 2 CPU cores with no
# pretrained weights. Measured: resnet18 from scratch at 48 px on 1800 training images
# reaches ~0.92 val accuracy in 8 epochs (105 s); at 32 px only ~0.65 (mobilenet_v3_small
# stayed at chance, and fewer, larger images overfit: from scratch, many steps on many
# small images win). No augmentation: the shapes already vary in colour, position,
# scale and rotation.
DEMO_DATA = {"classes": 4, "per_class": 600, "size": 48, "seed": 0, "val_fraction": 0.25}
DEMO_TRAIN = {
    "arch": "resnet18", "weights": "none", "image_size": 48, "augment": "none",
    "epochs": 8, "batch_size": 32, "optimizer": "adamw", "lr": 2e-3, "scheduler": "cosine",
    "workers": 0, "device": "cpu", "seed": 0,
}


# Bench: the local device at batch 1 and 8, eager PyTorch vs every exported ONNX form.
DEMO_BENCH = {"batch_sizes": (1, 8), "backends": ("eager", "ort", "trt"), "seconds": 2.0, "warmup": 3, "images": 64}
DEMO_PREDICT_IMAGES = 6
# What `tl train` writes into a run folder: OUT/run is replaced only when it holds nothing else.
RUN_FILES = ("best.pt", "last.pt", "metrics.jsonl", "history.png", "confusion.png", "batch.png", "spec.json")


@dataclass
class DemoContext:
    out: Path
    console: Any
    results: dict[str, Any] = field(default_factory=dict)  # step name -> what it produced
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    @property
    def run_dir(self) -> Path:
        return self.out / "run"

    @property
    def export_dir(self) -> Path:
        return self.out / "export"

    @property
    def bench_dir(self) -> Path:
        return self.out / "bench"


def _foreign(folder: Path, ours: set[str]) -> list[str]:
    """The entries of ``folder`` that are not in ``ours`` (nor the lock or temporaries of a tl command)."""
    from tl.runtime.files import LOCK_NAME, temp_target

    def tl_wrote(name: str) -> bool:
        return name in ours or name == LOCK_NAME or temp_target(name) in ours

    return sorted(p.name for p in folder.iterdir() if not tl_wrote(p.name))


def _run_foreign(folder: Path) -> list[str]:
    if not (folder / "spec.json").is_file():
        return ["no spec.json: not a tl run folder"]
    return _foreign(folder, set(RUN_FILES))


def _export_foreign(folder: Path) -> list[str]:
    from tl.export.pipeline import REPORT, STAGING, recorded_files
    from tl.export.trt import TIMING_CACHE

    listed = recorded_files(folder)
    if listed is None:
        return ["no readable export.json: not a tl export folder"]
    return _foreign(folder, {REPORT, STAGING, TIMING_CACHE, *listed})


def _remove_own(folder: Path, foreign: Callable[[Path], list[str]], what: str) -> None:
    """Remove ``folder`` for a new demo run, only when everything in it is what tl writes there."""
    import shutil

    from tl.runtime.errors import TLError, escaped

    if not os.path.lexists(folder):
        return
    found = foreign(folder) if folder.is_dir() and not folder.is_symlink() else ["not a folder"]
    if found:
        listed = ", ".join(map(escaped, found[:5])) + (" ..." if len(found) > 5 else "")
        raise TLError(f"{folder} is not a {what} the demo can replace ({listed}); the demo deletes only what tl "
                      "wrote: move it away or pick another --out")
    shutil.rmtree(folder)


def step_data(ctx: DemoContext) -> None:
    """Synthetic shapes into OUT/data (reused only when it is exactly that dataset: same arguments, same bytes)."""
    from tl.runtime.errors import TLError
    from tl.train.synth import SynthOptions, differences, make_dataset

    options = SynthOptions(**DEMO_DATA)
    if not os.path.lexists(ctx.data_dir):
        make_dataset(ctx.data_dir, options)
    elif problems := differences(ctx.data_dir, options) if ctx.data_dir.is_dir() else ["not a folder"]:
        raise TLError(f"{ctx.data_dir} is not the demo's dataset ({'; '.join(problems)}); the demo reuses only "
                      "the dataset it writes: move it away or pick another --out")
    ctx.results["data"] = ctx.data_dir
    ctx.console.print(f"[bold]data[/]: {ctx.data_dir} ({DEMO_DATA['classes']} classes, "
                      f"{DEMO_DATA['per_class']} images each, {DEMO_DATA['size']} px)")


def step_train(ctx: DemoContext) -> None:
    """Train from scratch on CPU; a previous demo run in OUT/run is replaced (only if it holds nothing else)."""
    from tl.console import RichReporter
    from tl.train import TrainOptions, fit
    from tl.commands.train import print_summary

    _remove_own(ctx.run_dir, _run_foreign, "run folder")
    with RichReporter(console=ctx.console) as reporter:
        result = fit(TrainOptions(data=ctx.data_dir, out=ctx.run_dir, **DEMO_TRAIN), reporter=reporter)
    if not result.interrupted:
        print_summary(result, console=ctx.console)
    ctx.results["train"] = result
    chance = 1.0 / DEMO_DATA["classes"]
    ctx.console.print(f"[bold]train[/]: val accuracy {result.best_val_acc:.3f} (chance {chance:.2f}) "
                      f"-> {result.best_path}")


def step_export(ctx: DemoContext) -> None:
    """ONNX FP32 + INT8 (calibrated on the demo's training images), TensorRT FP16 when possible."""
    from tl.console import RichReporter
    from tl.export import ExportOptions, export
    from tl.commands.export import parity_table
    from tl.runtime.gpu import tensorrt_usable

    _remove_own(ctx.export_dir, _export_foreign, "export folder")
    trt = tensorrt_usable()
    with RichReporter(console=ctx.console) as reporter:
        result = export(ExportOptions(checkpoint=ctx.results["train"].best_path, out=ctx.export_dir,
                                      onnx=True, int8=True, trt=trt, calib_count=128, parity_count=128),
                        reporter=reporter)
    ctx.console.print(parity_table(result))
    for w in result.warnings:
        ctx.console.print(f"[yellow]warning:[/] {w}")
    ctx.results["export"] = result
    ctx.results.setdefault("summary_rows", []).extend(
        [(f"{p.name}", p, None) for p in result.files()] + [("parity report", result.report, "export")]
    )
    if not trt:
        ctx.console.print("[dim]export: no TensorRT engine (TensorRT or an NVIDIA GPU is missing here)[/]")


def step_predict(ctx: DemoContext) -> None:
    """`tl predict` through the torch-free runtime on a few validation images."""
    from rich.table import Table

    from tl.runtime import Classifier
    from tl.runtime.images import list_images

    files = list_images(ctx.data_dir / "val")
    picks = files[:: max(1, len(files) // DEMO_PREDICT_IMAGES)][:DEMO_PREDICT_IMAGES]
    model = ctx.export_dir / "model.int8.onnx"
    clf = Classifier.load(model)
    preds = clf.predict(picks, top_k=2)
    table = Table(title=f"tl predict {model} ({clf.backend_name}, {', '.join(clf.providers)})")
    for col in ("image", "true", "predicted", "score", "runner-up"):
        table.add_column(col)
    for path, p in zip(picks, preds):
        runner_up = f"{p.top_k[1][0]} {p.top_k[1][1]:.2f}" if len(p.top_k) > 1 else ""
        ok = "green" if p.label == path.parent.name else "red"
        table.add_row(path.name, path.parent.name, f"[{ok}]{p.label}[/]", f"{p.score:.2f}", runner_up)
    ctx.console.print(table)
    ctx.results["predict"] = preds


def step_bench(ctx: DemoContext) -> None:
    """Eager PyTorch FP32 vs each artifact at batch 1 and 8 on this machine."""
    from tl.benchmarks import BenchOptions, run
    from tl.commands.bench import bench_table
    from tl.console import RichReporter

    with RichReporter(console=ctx.console) as reporter:
        result = run(BenchOptions(targets=[ctx.run_dir, ctx.export_dir], device="auto", out=ctx.bench_dir,
                                  batch_sizes=DEMO_BENCH["batch_sizes"], backends=DEMO_BENCH["backends"],
                                  seconds=DEMO_BENCH["seconds"], warmup=DEMO_BENCH["warmup"],
                                  images=DEMO_BENCH["images"]), reporter=reporter)
    ctx.console.print(bench_table(result))
    ctx.results["bench"] = result
    ctx.results.setdefault("summary_rows", []).extend(
        [(f"benchmark {p.suffix[1:]}", p, "bench" if p.suffix == ".md" else None) for p in result.files.values()]
    )


def step_summary(ctx: DemoContext) -> None:
    """Where everything was written (one line each, never wrapped, so paths can be copied)."""
    rows = [("synthetic dataset", ctx.data_dir, "data")]
    train = ctx.results.get("train")
    if train is not None:
        rows += [
            ("best checkpoint", train.best_path, "train"),
            ("last checkpoint (--resume)", train.last_path, None),
            ("metrics per epoch", train.run_dir / "metrics.jsonl", None),
            ("loss/accuracy curves", train.run_dir / "history.png", None),
            ("confusion matrix", train.run_dir / "confusion.png", None),
            ("a training batch", train.run_dir / "batch.png", None),
            ("model spec", train.run_dir / "spec.json", None),
        ]
    rows += ctx.results.get("summary_rows", [])
    ctx.console.print("\n[bold]tl demo: what was written[/]")
    width = max(len(what) for what, _, _ in rows)
    for what, where, step in rows:
        t = ctx.timings.get(step) if step else None
        took = f"  ({t:.0f} s)" if t is not None else ""
        ctx.console.print(f"  {what:<{width}}  {where}{took}", soft_wrap=True, highlight=False)


STEPS: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("data", step_data),
    ("train", step_train),
    ("export", step_export),
    ("predict", step_predict),
    ("bench", step_bench),
    ("summary", step_summary),
]


def run_demo(out: str | Path = "runs/demo", *, console=None,
             steps: list[tuple[str, Callable[[DemoContext], None]]] | None = None) -> DemoContext:
    """Run the demo steps in order; returns the context with every step's results."""
    from tl.console import stdout_console
    from tl.runtime.files import ensure_output_dir

    console = console or stdout_console()
    ctx = DemoContext(out=Path(out), console=console)
    ensure_output_dir(ctx.out, option="--out")
    for name, step in steps if steps is not None else STEPS:
        t0 = time.perf_counter()
        step(ctx)
        ctx.timings[name] = time.perf_counter() - t0
    return ctx


@click.command()
@click.option("--out", default="runs/demo", show_default=True, type=PathParam(file_okay=False),
              help="Folder for the data and everything the demo writes.")
def demo(out):
    """The whole path on synthetic data: data -> train -> export -> predict -> bench.

    Trains a small model from scratch on CPU, exports ONNX FP32 + INT8 (TensorRT FP16
    too where TensorRT and a GPU exist), classifies a few images through the torch-free
    runtime, benchmarks everything at batch 1 and 8, and prints where it all went.
    """
    import torch  # noqa: F401 - without the train extra, one line before anything is written

    run_demo(out)
