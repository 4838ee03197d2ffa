"""`tl data synth` and `tl train`: thin click layers over tl.train.synth and tl.train.fit.

Top level imports only click and tl.train.options (torch-free), so `tl --help` never
imports torch; `tl train`'s defaults and choices come from TrainOptions and its constants.
"""

from __future__ import annotations

import sys

import click

from tl.cli import field_option
from tl.runtime.errors import TLError

from tl.train.options import (ARCHS, AUGMENTS, FREEZE, INTERPOLATIONS, OPTIMIZERS, RESIZE_MODES, SCHEDULERS,
                              TrainOptions)


def _option(name: str, help: str | None = None, **kwargs):
    return field_option(TrainOptions, name, help=help, **kwargs)


@click.group()
def data():
    """Make datasets."""


@data.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--classes", default=4, show_default=True, help="Number of shape classes (2-10).")
@click.option("--per-class", default=60, show_default=True, help="Images per class (train + val).")
@click.option("--size", default=64, show_default=True, help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same files.")
@click.option("--val-fraction", default=0.25, show_default=True, help="Share of each class written to val/.")
def synth(out, classes, per_class, size, seed, val_fraction):
    """Write a learnable synthetic ImageFolder tree: OUT/train/<class>/, OUT/val/<class>/."""
    from pathlib import Path

    from tl.runtime.files import ensure_output_dir
    from tl.train.synth import SynthOptions, make_dataset

    options = SynthOptions(classes=classes, per_class=per_class, size=size, seed=seed, val_fraction=val_fraction)
    out_path = Path(out)
    if out_path.exists() and any(out_path.iterdir()):
        raise TLError(f"{out_path} exists and is not empty; pick a new folder")
    make_dataset(ensure_output_dir(out_path, option="OUT"), options)
    n_files = sum(1 for p in out_path.rglob("*") if p.is_file())
    click.echo(f"wrote {n_files} images ({classes} classes) to {out_path}/train and {out_path}/val")


@click.command()
@click.argument("data_dir", metavar="DATA", required=False, type=click.Path())
@click.option("--out", type=click.Path(file_okay=False), help="Run folder [default: runs/<timestamp>].")
@_option("arch", type=click.Choice(ARCHS), metavar="ARCH",
         help=f"torchvision model, its head sized to DATA's classes: {', '.join(ARCHS)}.")
@_option("weights", help="imagenet (torchvision's cache/download), none, or PATH to a torchvision state_dict.")
@_option("freeze", type=click.Choice(FREEZE), help="features: train only the new head (feature extraction).")
@_option("dropout", type=float, help="Probability of every dropout layer [default: the architecture's own].")
@_option("image_size", help="Model input H = W.")
@_option("resize_mode", type=click.Choice(RESIZE_MODES),
         help="Eval/deploy resize: squash to HxW (the seed), or shorter side + center crop.")
@_option("interpolation", type=click.Choice(INTERPOLATIONS))
@_option("augment", type=click.Choice(AUGMENTS),
         help="seed: Resize+ColorJitter+RandomAffine; standard: RandomResizedCrop+flip.")
@_option("epochs")
@_option("batch_size")
@_option("optimizer", type=click.Choice(OPTIMIZERS))
@_option("lr", type=float)
@_option("momentum", type=float, help="SGD momentum.")
@_option("weight_decay", type=float)
@_option("scheduler", type=click.Choice(SCHEDULERS))
@_option("step_size", help="StepLR: epochs per decay.")
@_option("gamma", type=float, help="StepLR: decay factor.")
@_option("label_smoothing", type=float)
@_option("patience", help="Early stop after N epochs without a better val accuracy (0: off).")
@_option("val_split", type=float, help="Share of each class held out when DATA has no val/ folder.")
@_option("seed", help="Fixes the split, the init and the augmentation.")
@_option("workers", help="DataLoader worker processes (0: load in the main process).")
@_option("device", help="auto, cpu, cuda or cuda:N.")
@_option("amp", help="Mixed precision on CUDA (bf16 if supported, else fp16).")
@_option("channels_last", help="channels_last memory format on CUDA.")
@_option("skip_bad", is_flag=True, show_default=False, help="Skip (and count) corrupt images instead of stopping.")
@click.option("--nproc-per-node", type=int, default=None,
              help="Train as N DDP processes on this machine (one per GPU, or CPU processes); see torchrun for several machines.")
@_option("sync_bn", is_flag=True, show_default=False,
         help="DDP on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm).")
@click.option("--resume", type=click.Path(dir_okay=False), help="Continue a run from its last.pt.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.pass_context
def train(ctx, data_dir, resume, no_progress, nproc_per_node, **kwargs):
    """Fine-tune a torchvision classifier on DATA (DATA/train + DATA/val, or DATA/<class>/ split by --val-split).

    Writes OUT/best.pt (best val accuracy), last.pt, metrics.jsonl, history.png,
    confusion.png, batch.png and spec.json. --batch-size is the global batch, also with
    --nproc-per-node N or under torchrun (-m tl train ...).
    """
    from tl.train import distributed

    options = _train_options(ctx, data_dir, resume, progress=not no_progress, given=kwargs)
    if nproc_per_node is not None:
        if distributed.ranks_from_env().distributed:
            raise TLError("--nproc-per-node starts the ranks; under torchrun, give the process count to torchrun")
        sys.exit(distributed.launch(_worker_argv(ctx), nproc_per_node, batch_size=options.batch_size))
    if not distributed.ranks_from_env().is_main:
        sys.exit(_run_rank(options))
    try:
        _run_main(options)
    except TLError:
        distributed.mark_reported()
        raise


def _run_main(options: TrainOptions) -> None:
    """One process, or DDP rank 0: progress, messages and the summary."""
    from tl.console import RichReporter, stdout_console
    from tl.train.loop import fit
    from tl.train.report import print_summary

    console = stdout_console()
    with RichReporter(console=console, progress=options.progress) as reporter:
        result = fit(options, reporter=reporter)
    if result.interrupted:
        from tl.train.distributed import mark_reported

        mark_reported()  # "interrupted: saved ..." said it; a launcher adds no line
        sys.exit(130)
    print_summary(result, console=console)


def _run_rank(options: TrainOptions) -> int:
    """DDP ranks > 0 train silently: rank 0 prints the progress and the one error line of a failure."""
    from tl.train.loop import fit

    try:
        return 130 if fit(options).interrupted else 0
    except TLError:
        return 1
    except KeyboardInterrupt:
        return 130


def _worker_argv(ctx: click.Context) -> list[str]:
    """This command line without --nproc-per-node: what each launched rank runs."""
    argv = list((ctx.find_root().obj or {}).get("argv") or sys.argv[1:])
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc-per-node":
            skip = True
        elif not arg.startswith("--nproc-per-node="):
            out.append(arg)
    return out


def _train_options(ctx: click.Context, data_dir, resume, *, progress: bool, given: dict) -> TrainOptions:
    """A new run's options, or a resumed run's with only what the command line gave changed."""
    from click.core import ParameterSource

    if data_dir is None and not resume:
        raise TLError("missing DATA: tl train DATA (a folder of class sub-folders), or --resume RUN/last.pt")
    if not resume:
        return TrainOptions(data=data_dir, progress=progress, **given)
    changed = {k: v for k, v in given.items() if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    if data_dir is not None:
        changed["data"] = data_dir
    return TrainOptions.for_resume(resume, progress=progress, **changed)
