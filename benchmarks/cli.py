"""`tl bench`: thin click layer over tl.benchmarks.run (click only at import time)."""

from __future__ import annotations

import click

BACKEND_NAMES = ("eager", "eager-fp16", "eager-bf16", "compile", "ort", "trt")


def _int_list(text: str, what: str) -> list[int]:
    from tl.runtime.errors import TLError

    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise TLError(f"{what} must be comma-separated positive integers like 1,8,32 (got {text!r})") from None
    if not values or any(v < 1 for v in values):
        raise TLError(f"{what} must be comma-separated positive integers like 1,8,32 (got {text!r})")
    return values


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("targets", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="Where PyTorch and ONNX Runtime run (auto: cuda if torch sees a GPU).")
@click.option("--backends", default=None, metavar="LIST",
              help=f"Comma-separated subset of {','.join(BACKEND_NAMES)} (default: everything that runs on the device).")
@click.option("--batch-sizes", default="1,8,32", show_default=True, metavar="LIST", help="Batch sizes to time.")
@click.option("--warmup", default=3, show_default=True, type=int, help="Untimed calls per cell after the first call.")
@click.option("--seconds", default=3.0, show_default=True, type=float, help="Time budget of timed calls per cell.")
@click.option("--iters", default=None, type=int, help="Timed calls per cell (overrides --seconds).")
@click.option("--val-dir", default=None, type=click.Path(path_type=str),
              help="Labelled images (one folder per class): benchmark images and an accuracy column.")
@click.option("--images", default=64, show_default=True, type=int,
              help="Benchmark images for the agreement check (without --val-dir).")
@click.option("--threads", default=None, type=int, help="CPU threads for torch and ONNX Runtime (default: their own).")
@click.option("--out", default=None, type=click.Path(path_type=str),
              help="Folder for bench.json/csv/md/png [default: bench/<date-time>].")
def bench(targets, device, backends, batch_sizes, warmup, seconds, iters, val_dir, images, threads, out):
    """Benchmark eager PyTorch against every exported form of one model.

    TARGET is a checkpoint or run folder (PyTorch rows: eager, eager-fp16/bf16, compile)
    and/or an export folder or model file (ONNX Runtime and TensorRT rows). Each cell is
    timed host -> host after warm-up; agreement is top-1 vs eager FP32 on the same images.

    \b
      tl bench runs/x exports/x --batch-sizes 1,8
      tl bench runs/x --backends eager,compile --device cuda --iters 50
    """
    import time
    from pathlib import Path

    from tl.benchmarks import BenchOptions, run
    from tl.benchmarks.report import render_table

    sizes = _int_list(batch_sizes, "--batch-sizes")
    chosen = None if backends is None else [b.strip() for b in backends.split(",") if b.strip()]
    out_dir = Path(out) if out else Path("bench") / time.strftime("%Y%m%d-%H%M%S")
    result = run(BenchOptions(
        targets=list(targets), device=device, backends=chosen, batch_sizes=sizes, warmup=warmup,
        seconds=seconds, iters=iters, val_dir=val_dir, out=out_dir, threads=threads, images=images,
    ))
    render_table(result)
    failed = [r for r in result.rows if r.status == "failed"]
    click.echo(f"wrote {', '.join(p.name for p in result.files.values())} to {out_dir}"
               + (f" ({len(failed)} failed cell{'s' if len(failed) != 1 else ''}: see the status column)" if failed else ""))
