"""`tl serve`: thin click layer over tl.runtime.serve.serve (click only at import time)."""

from __future__ import annotations

from pathlib import Path

import click

from tl.cli import PathParam, field_option
from tl.runtime.backends import BACKEND_CHOICES
from tl.runtime.serve.options import ServeOptions


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source", metavar="MODEL_OR_REPO", type=PathParam(path_type=Path))
@field_option(ServeOptions, "host", help="Address to listen on (0.0.0.0: every interface).")
@field_option(ServeOptions, "port", type=click.IntRange(0, 65535), help="HTTP port (0: any free one).")
@field_option(ServeOptions, "grpc_port", type=click.IntRange(0, 65535), help="gRPC port (0: any free one).")
@click.option("--no-grpc", is_flag=True, help="Serve HTTP only.")
@field_option(ServeOptions, "max_batch", type=click.IntRange(min=1),
              help="The models' max_batch_size: most rows per batch and per request "
                   "(default: config.pbtxt's, else the model's own, else 32).")
@field_option(ServeOptions, "max_delay_ms", type=click.FloatRange(min=0),
              help="How long a request waits for others to join its batch (0: only those already waiting).")
@field_option(ServeOptions, "queue", type=click.IntRange(min=1), help="Requests waiting per model; more are refused (503 / UNAVAILABLE).")
@field_option(ServeOptions, "backend", type=click.Choice(BACKEND_CHOICES),
              help="auto picks by file suffix: .onnx -> ONNX Runtime, .plan -> TensorRT.")
@field_option(ServeOptions, "providers", help="ONNX Runtime providers in order, e.g. cpu or trt,cuda,cpu.")
@field_option(ServeOptions, "threads", type=click.IntRange(min=1), help="ONNX Runtime intra-op threads (default: all cores).")
@field_option(ServeOptions, "device", type=int, help="GPU index.")
@field_option(ServeOptions, "name", help="Model name for a single file (default: the file name without .onnx/.plan).")
@field_option(ServeOptions, "max_body_mb", type=click.FloatRange(min=0), help="Largest request accepted (HTTP body or gRPC message).")
def serve(source, no_grpc, **kwargs):
    """Serve a model file or a Triton-layout repository over the Open Inference Protocol
    (KServe v2 / Triton: REST and gRPC).

    \b
      tl serve exports/x/model.onnx                 # model 'model' on http://127.0.0.1:8000, gRPC on :8001
      tl serve repo/ --host 0.0.0.0 --max-batch 32  # every model in REPO/<model>/<version>/
    Stop with Ctrl-C or SIGTERM: queued requests are answered first.
    """
    from tl.runtime.serve.server import serve as run

    def ready(url: str, models: list, grpc_address: str | None) -> None:
        for m in models:
            click.echo(f"model {m.name} (version {m.version}, {m.clf.backend_name}, {m.clf.precision}, "
                       f"max batch {m.max_batch}): {url}/v2/models/{m.name}", err=True)
        grpc = f", gRPC on {grpc_address}" if grpc_address else ""
        click.echo(f"tl serve: ready on {url}{grpc} (metrics: {url}/metrics)", err=True)

    if no_grpc:
        kwargs["grpc_port"] = None
    run(source, ServeOptions(**kwargs), on_ready=ready)
    click.echo("tl serve: stopped (every queued request was answered)", err=True)
