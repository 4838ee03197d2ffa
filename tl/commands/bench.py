"""`tl bench` and `tl bench serve`: thin click layers over tl.benchmarks.run and the serving load generator.

Defaults and choices come from ``tl.benchmarks.options``; the terminal table is rendered
here and fits 100 columns (bench.json/csv/md keep every column).
"""

from __future__ import annotations

from pathlib import Path

import click

from tl.benchmarks.options import BACKENDS, DEVICES, BenchOptions, LoadOptions, int_list
from tl.cli import PathParam, field_option
from tl.runtime.backends.registry import BACKEND_CHOICES


def _comma_default(options_cls, name: str) -> str:
    """A tuple field's default as the comma-separated text its option takes ("1,8,32")."""
    import dataclasses

    return ",".join(map(str, next(f.default for f in dataclasses.fields(options_cls) if f.name == name)))


class _BenchCommand(click.Command):
    """`tl bench TARGETS...`, and `tl bench serve MODEL` for the serving load generator.

    A plain command rather than a group, so that targets stay positional as before; a first
    argument ``serve`` hands the rest of the line to :data:`serve_load` (a folder named
    serve is given as ./serve).
    """

    def make_context(self, info_name, args, parent=None, **extra):
        if args and args[0] == "serve":
            return serve_load.make_context(f"{info_name} serve", args[1:], parent=parent, **extra)
        return super().make_context(info_name, args, parent=parent, **extra)


@click.command(cls=_BenchCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("targets", nargs=-1, required=True, type=PathParam(path_type=str))
@field_option(BenchOptions, "device", type=click.Choice(DEVICES),
              help="Where PyTorch and ONNX Runtime run (auto: cuda if torch sees a GPU).")
@field_option(BenchOptions, "backends", metavar="LIST",
              help=f"Comma-separated subset of {','.join(BACKENDS)} (default: everything that runs on the device).")
@field_option(BenchOptions, "batch_sizes", metavar="LIST", help="Batch sizes to time.",
              default=_comma_default(BenchOptions, "batch_sizes"))
@field_option(BenchOptions, "warmup", type=int, help="Untimed calls per cell after the first call.")
@field_option(BenchOptions, "seconds", type=float, help="Time budget of timed calls per cell.")
@field_option(BenchOptions, "iters", type=int, help="Timed calls per cell (overrides --seconds).")
@field_option(BenchOptions, "val_dir", type=PathParam(path_type=str),
              help="Labelled images (one folder per class): benchmark images and an accuracy column.")
@field_option(BenchOptions, "images", type=int, help="Benchmark images for the agreement check (without --val-dir).")
@field_option(BenchOptions, "threads", type=int, help="CPU threads for torch, ONNX Runtime and OpenVINO (default: their own).")
@field_option(BenchOptions, "min_agreement", type=float,
              help="Top-1 agreement with eager fp32 that the recommended row needs.")
@field_option(BenchOptions, "out", type=PathParam(path_type=str),
              help="Folder for bench.json/csv/md/png [default: bench/<date-time>].")
def bench(targets, out, **fields):
    """Benchmark eager PyTorch against every exported form of one model.

    TARGET is a checkpoint or run folder (PyTorch rows: eager, eager-fp16/bf16, compile)
    and/or an export folder or model file (ONNX Runtime, OpenVINO and TensorRT rows). Every
    runner of a batch size is timed host -> host in the same interleaved rounds; agreement is
    top-1 vs eager FP32 on the same images; the fastest row that agrees enough is recommended.

    \b
      tl bench runs/x exports/x --batch-sizes 1,8
      tl bench runs/x --backends eager,compile --device cuda --iters 50
      tl bench serve exports/x/model.onnx   # tl serve under load (see tl bench serve --help)
    """
    import time

    from tl.benchmarks.matrix import run
    from tl.console import RichReporter, print_table

    out_dir = Path(out) if out else Path("bench") / time.strftime("%Y%m%d-%H%M%S")
    options = BenchOptions(targets=list(targets), out=out_dir, **fields)
    with RichReporter() as reporter:
        result = run(options, reporter=reporter)
    print_table(bench_table(result))
    echo_recommendations(result)
    failed = [r for r in result.rows if r.status == "failed"]
    click.echo(f"wrote {', '.join(p.name for p in result.files.values())} to {out_dir}"
               + (f" ({len(failed)} failed cell{'s' if len(failed) != 1 else ''}: see the status column)" if failed else ""))


def echo_recommendations(result) -> None:
    ref = result.environment.get("reference") or "eager fp32"
    click.echo(f"recommended (fastest with top-1 agreement >= {result.min_agreement:.1%} vs {ref}):")
    for rec in result.recommendations:
        click.echo(f"  {rec.summary(result.min_agreement)}")
        for kind, line in (("Python", rec.python), ("CLI", rec.cli)):
            if line:
                click.echo(f"    {kind}: {line}")


# backend, precision, provider, batch, p50, p99, img/s, speedup, agreement, status
TABLE_WIDTH = 100
STATUS_WIDTH = 22


def bench_table(result):
    """The terminal table: the ten columns that decide what to ship, in 100 columns (the files hold the rest)."""
    from rich.markup import escape
    from rich.table import Table

    from tl.benchmarks.report import fmt, pct, provider, status, times
    from tl.console import shown

    env = result.environment
    title = (f"tl bench · {shown(env.get('arch'))} {'x'.join(map(str, env.get('image_size') or []))} · "
             f"{env.get('gpu') or env.get('cpu')} · {env.get('device')}")
    img = env.get("images", {})
    ref = env.get("reference") or "eager fp32"
    caption = (f"p50/p99: latency host->host; img/s = batch / p50; speedup: img/s vs {ref} at the same batch; "
               f"agree: top-1 vs {ref} on {img.get('count')} images ({img.get('source')}); "
               "disturbed N: ok, but p90/p50 = N says other load hit the cell; "
               "every column (mean, p90, first call, size, build, gpu ms) is in bench.md/json/csv")
    table = Table(title=title, caption=caption, header_style="bold", width=TABLE_WIDTH, pad_edge=False,
                  box=None, show_edge=False)
    for name, right in (("backend", False), ("prec", False), ("prov", False), ("batch", True), ("p50 ms", True),
                        ("p99 ms", True), ("img/s", True), ("speedup", True), ("agree", True), ("status", False)):
        table.add_column(name, justify="right" if right else "left", no_wrap=name != "status",
                         overflow="fold", max_width=STATUS_WIDTH if name == "status" else None)
    for r in result.rows:
        style = None if r.status == "ok" else ("yellow" if r.status == "skipped" else "red")
        speedup = times(r.speedup)
        if r.status == "ok" and r.speedup is not None and r.speedup >= 1.5:
            speedup = f"[green]{speedup}[/]"
        table.add_row(r.backend, r.precision, provider(r), str(r.batch), fmt(r.p50_ms), fmt(r.p99_ms),
                      fmt(r.throughput, 1), speedup, pct(r.agreement), escape(status(r, short=True)), style=style)
    return table


@click.command("serve", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=PathParam(path_type=Path))
@click.option("--out", type=PathParam(path_type=Path), default=None, help="Folder for serve_load.json, .md and .png.")
@field_option(LoadOptions, "concurrency", default=_comma_default(LoadOptions, "concurrency"),
              help="Client counts, comma-separated.")
@field_option(LoadOptions, "transports", "--transport", default=_comma_default(LoadOptions, "transports"),
              help="Transports to load, comma-separated: http, grpc.")
@field_option(LoadOptions, "seconds", type=click.FloatRange(min=0.1), help="Per level in total, split over the rounds.")
@field_option(LoadOptions, "rounds", type=click.IntRange(min=1),
              help="Served levels and in-process batches alternate this many times.")
@field_option(LoadOptions, "max_batch", type=click.IntRange(min=1), help="tl serve --max-batch.")
@field_option(LoadOptions, "max_delay_ms", type=click.FloatRange(min=0), help="tl serve --max-delay-ms.")
@field_option(LoadOptions, "backend", type=click.Choice(BACKEND_CHOICES), help="Backend of the server and in-process.")
@field_option(LoadOptions, "providers", help="ONNX Runtime providers, e.g. cpu.")
@field_option(LoadOptions, "threads", type=click.IntRange(min=1), help="ONNX Runtime intra-op threads.")
def serve_load(model, out, concurrency, transports, **kwargs):
    """Load `tl serve` with tritonclient (HTTP and gRPC) at each concurrency and compare with in-process inference.

    \b
      tl bench serve exports/x/model.onnx --out bench/serve   # serve_load.json, .md, .png
    Needs the serve and dev extras (the server, tritonclient and gevent as the client).
    """
    from tl.benchmarks.serve_load import markdown, run_serve_load

    levels = int_list(concurrency, "--concurrency")
    names = tuple(t.strip().lower() for t in transports.split(",") if t.strip())
    result = run_serve_load(model, LoadOptions(concurrency=levels, transports=names, **kwargs), out)
    click.echo(markdown(result))
