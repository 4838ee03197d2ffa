"""`tl data synth` and `tl train`: thin click layers over tl.train.synth and tl.train.fit.

Only click is imported here at top level, so `tl --help` never imports torch.
"""

from __future__ import annotations

import click

_ARCHS_HELP = "vgg11/13/16/19[_bn], resnet18/34/50, mobilenet_v3_small/large, efficientnet_b0"


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

    from tl.runtime.errors import TLError
    from tl.train.synth import SynthOptions, make_dataset

    out_path = Path(out)
    if out_path.exists() and any(out_path.iterdir()):
        raise TLError(f"{out_path} exists and is not empty; pick a new folder")
    make_dataset(out_path, SynthOptions(classes=classes, per_class=per_class, size=size, seed=seed,
                                        val_fraction=val_fraction))
    n_files = sum(1 for p in out_path.rglob("*") if p.is_file())
    click.echo(f"wrote {n_files} images ({classes} classes) to {out_path}/train and {out_path}/val")


@click.command()
@click.argument("data_dir", metavar="DATA", required=False, type=click.Path())
@click.option("--out", type=click.Path(file_okay=False), help="Run folder [default: runs/<timestamp>].")
@click.option("--arch", default="vgg16", show_default=True, help=_ARCHS_HELP)
@click.option("--weights", default="imagenet", show_default=True,
              help="imagenet (torchvision's cache/download), none, or PATH to a torchvision state_dict.")
@click.option("--freeze", type=click.Choice(["none", "features"]), default="none", show_default=True,
              help="features: train only the new head (feature extraction).")
@click.option("--image-size", default=224, show_default=True, help="Model input H = W.")
@click.option("--resize-mode", type=click.Choice(["squash", "shorter"]), default="squash", show_default=True,
              help="Eval/deploy resize: squash to HxW (the seed), or shorter side + center crop.")
@click.option("--interpolation", type=click.Choice(["bilinear", "bicubic", "nearest", "lanczos"]),
              default="bilinear", show_default=True)
@click.option("--augment", type=click.Choice(["seed", "standard", "none"]), default="seed", show_default=True,
              help="seed: Resize+ColorJitter+RandomAffine; standard: RandomResizedCrop+flip.")
@click.option("--epochs", default=25, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default="sgd", show_default=True)
@click.option("--lr", default=0.001, show_default=True, type=float)
@click.option("--momentum", default=0.9, show_default=True, type=float, help="SGD momentum.")
@click.option("--weight-decay", default=0.0, show_default=True, type=float)
@click.option("--scheduler", type=click.Choice(["step", "cosine"]), default="step", show_default=True)
@click.option("--step-size", default=7, show_default=True, help="StepLR: epochs per decay.")
@click.option("--gamma", default=0.1, show_default=True, type=float, help="StepLR: decay factor.")
@click.option("--label-smoothing", default=0.0, show_default=True, type=float)
@click.option("--patience", default=0, show_default=True, help="Early stop after N epochs without a better val accuracy (0: off).")
@click.option("--val-split", default=0.2, show_default=True, type=float,
              help="Share of each class held out when DATA has no val/ folder.")
@click.option("--seed", default=0, show_default=True, help="Fixes the split, the init and the augmentation.")
@click.option("--workers", default=2, show_default=True, help="DataLoader worker processes (0: load in the main process).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--amp/--no-amp", default=True, show_default=True, help="Mixed precision on CUDA (bf16 if supported, else fp16).")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True, help="channels_last memory format on CUDA.")
@click.option("--skip-bad", is_flag=True, help="Skip (and count) corrupt images instead of stopping.")
@click.option("--resume", type=click.Path(dir_okay=False), help="Continue a run from its last.pt.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.pass_context
def train(ctx, data_dir, resume, no_progress, **kwargs):
    """Fine-tune a torchvision classifier on DATA (DATA/train + DATA/val, or DATA/<class>/ split by --val-split).

    Writes OUT/best.pt (best val accuracy), last.pt, metrics.jsonl, history.png,
    confusion.png, batch.png and spec.json.
    """
    import sys

    from click.core import ParameterSource

    from tl.runtime.errors import TLError

    if data_dir is None and not resume:
        raise TLError("missing DATA: tl train DATA (a folder of class sub-folders), or --resume RUN/last.pt")
    from tl.train.loop import TrainOptions, fit

    if resume:
        given = {k: v for k, v in kwargs.items() if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
        if data_dir is not None:
            given["data"] = data_dir
        options = TrainOptions.for_resume(resume, progress=not no_progress, **given)
    else:
        options = TrainOptions(data=data_dir, progress=not no_progress, **kwargs)
    result = fit(options)
    if result.interrupted:
        sys.exit(130)
