"""`tl data synth`: a thin click layer over tl.train.synth (torch-free); defaults and bounds from SynthOptions."""

from __future__ import annotations

import click

from tl.cli import PathParam, field_option
from tl.runtime.errors import TLError
from tl.train.options import SHAPES, SynthOptions


@click.group()
def data():
    """Make datasets."""


@data.command()
@click.argument("out", type=PathParam(file_okay=False))
@field_option(SynthOptions, "classes", type=int, help=f"Number of shape classes (2-{len(SHAPES)}).")
@field_option(SynthOptions, "per_class", type=int, help="Images per class (train + val).")
@field_option(SynthOptions, "size", type=int, help="Image side in pixels.")
@field_option(SynthOptions, "seed", type=int, help="Same seed, same files.")
@field_option(SynthOptions, "val_fraction", type=float, help="Share of each class written to val/.")
def synth(out, **kwargs):
    """Write a learnable synthetic ImageFolder tree: OUT/train/<class>/, OUT/val/<class>/."""
    from pathlib import Path

    from tl.console import RichReporter
    from tl.runtime.files import ensure_output_dir, new_folders_removed_on_error
    from tl.train.synth import make_dataset

    options = SynthOptions(**kwargs)
    out_path = Path(out)
    if out_path.exists() and any(out_path.iterdir()):
        raise TLError(f"{out_path} exists and is not empty; pick a new folder")
    with new_folders_removed_on_error(out_path), RichReporter() as reporter:
        make_dataset(ensure_output_dir(out_path, option="OUT"), options, reporter=reporter)
    n_files = sum(1 for p in out_path.rglob("*") if p.is_file())
    click.echo(f"wrote {n_files} images ({options.classes} classes) to {out_path}/train and {out_path}/val")
