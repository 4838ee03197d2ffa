"""`tl train`: a thin click layer over tl.train.fit, and the summary table it prints.

Top level imports only click and tl.train.options (torch-free), so `tl --help` never
imports torch; the defaults and choices come from TrainOptions and its constants.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from tl.cli import PathParam, field_option
from tl.runtime.errors import TLError, escaped
from tl.train.options import (ARCHS, AUGMENT_ALIASES, AUGMENTS, FREEZE, INTERPOLATIONS, OPTIMIZERS, RESIZE_MODES,
                              SCHEDULERS, TrainOptions)

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from tl.train.loop import TrainResult


def _option(name: str, help: str | None = None, **kwargs):
    return field_option(TrainOptions, name, help=help, **kwargs)


class _ChoiceWithAliases(click.Choice):
    """A choice that also takes the other names in ``aliases`` (not listed in --help); TrainOptions maps them."""

    def __init__(self, choices, aliases):
        super().__init__(choices)
        self.aliases = aliases

    def convert(self, value, param, ctx):
        return value if value in self.aliases else super().convert(value, param, ctx)


@click.command()
@click.argument("data_dir", metavar="DATA", required=False, type=PathParam())
@click.option("--out", type=PathParam(file_okay=False), help="Run folder [default: runs/<timestamp>].")
@_option("arch", type=click.Choice(ARCHS), metavar="ARCH",
         help=f"torchvision model, its head sized to DATA's classes: {', '.join(ARCHS)}.")
@_option("weights", help="imagenet (torchvision's cache/download), none, or PATH to a torchvision state_dict.")
@_option("freeze", type=click.Choice(FREEZE), help="features: train only the new head (feature extraction).")
@_option("dropout", type=float, help="Probability of every dropout layer [default: the architecture's own].")
@_option("image_size", help="Model input H = W.")
@_option("resize_mode", type=click.Choice(RESIZE_MODES),
         help="Eval/deploy resize: squash to HxW (the seed), or shorter side + center crop.")
@_option("interpolation", type=click.Choice(INTERPOLATIONS))
@_option("augment", type=_ChoiceWithAliases(AUGMENTS, AUGMENT_ALIASES),
         help="jitter: Resize+ColorJitter+RandomAffine (the seed's); standard: RandomResizedCrop+flip.")
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
@click.option("--resume", type=PathParam(dir_okay=False), help="Continue a run from its last.pt.")
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
        sys.exit(distributed.launch(_worker_argv(ctx), nproc_per_node, batch_size=options.batch_size,
                                    device=options.device))
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
    from tl.train.checkpoint import load_checkpoint  # torch: only when a run is resumed

    changed = {k: v for k, v in given.items() if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    if data_dir is not None:
        changed["data"] = data_dir
    return TrainOptions.for_resume(load_checkpoint(resume), resume=resume, progress=progress, **changed)


def render_summary(result: "TrainResult") -> "Table":
    """The best epoch's accuracy and per-class precision/recall."""
    from rich.table import Table

    from tl.console import shown

    # Wide enough for its title, which would otherwise wrap over the four narrow columns.
    table = Table(title=f"best epoch {result.best_epoch}: val accuracy {result.best_val_acc:.3f}, "
                        f"loss {result.best_val_loss:.4f}", title_justify="left", min_width=48)
    table.add_column("class")
    table.add_column("precision", justify="right")
    table.add_column("recall", justify="right")
    table.add_column("images", justify="right")
    for row in result.per_class:
        table.add_row(shown(row["class"]), f"{row['precision']:.3f}", f"{row['recall']:.3f}", str(row["support"]))
    return table


def print_summary(result: "TrainResult", *, console: "Console") -> None:
    """The table, then skipped images, an early stop, and the run folder."""
    from tl.console import print_table

    print_table(render_summary(result), console)
    if result.skipped:
        names = ", ".join(escaped(p) for p in result.skipped[:5]) + (" ..." if len(result.skipped) > 5 else "")
        console.print(f"skipped {len(result.skipped)} bad image(s): {names}", soft_wrap=True, highlight=False,
                      markup=False)
    if result.stopped_early:
        console.print(f"stopped early after epoch {result.epochs_run} (--patience)")
    console.print(f"run folder: {result.run_dir}  (best.pt, last.pt, metrics.jsonl, history.png, "
                  f"confusion.png, batch.png, spec.json)", soft_wrap=True, highlight=False, markup=False)
