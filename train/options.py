"""What `tl train` accepts: each choice, default and check defined once, here.

Torch-free (stdlib and tl.runtime only): `tl train --help` builds its options from this
module, and `tl --help` must work where torch is not installed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tl.runtime.errors import TLError, require
from tl.runtime.spec import INTERPOLATIONS, MAX_IMAGE_SIZE, RESIZE_MODES

__all__ = ["ARCHS", "AUGMENT_ALIASES", "AUGMENTS", "FREEZE", "INTERPOLATIONS", "OPTIMIZERS", "RESIZE_MODES",
           "SCHEDULERS", "SynthOptions", "TrainOptions", "parse_device"]

ARCHS = (
    "vgg11", "vgg13", "vgg16", "vgg19",
    "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
    "resnet18", "resnet34", "resnet50",
    "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0",
    "squeezenet1_1",
)
# jitter: the seed blog post's Resize + ColorJitter + RandomAffine. "seed" is another name for it,
# accepted but not listed: scripts pass --augment seed, and existing checkpoints hold it in their args.
AUGMENTS = ("jitter", "standard", "none")
AUGMENT_ALIASES = {"seed": "jitter"}
OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("step", "cosine")
FREEZE = ("none", "features")
# MAX_IMAGE_SIZE (tl.runtime.spec): every spec tl reads has the bound --image-size has.

# The smallest input each family's forward pass takes: below it a pooling layer's output is empty.
# Other architectures take MIN_IMAGE_SIZE.
MIN_IMAGE_SIZE = 16
ARCH_MIN_IMAGE_SIZE = {"vgg": 32, "squeezenet": 17}
# What every RNG the run seeds accepts (numpy's legacy seed is 32-bit).
MAX_SEED = 2**32 - 1

# Bounds a real dataset never reaches; beyond them a typo ends in a full disk instead of a message.
MAX_PER_CLASS = 100_000

SHAPES = ("circle", "square", "triangle", "cross", "star", "ring", "hexagon", "bar", "crescent", "diamond")


@dataclass(frozen=True)
class SynthOptions:
    """What `tl data synth` writes; each bound checked when built, before any folder is made."""

    classes: int = 4
    per_class: int = 60
    size: int = 64
    seed: int = 0
    val_fraction: float = 0.25

    def __post_init__(self) -> None:
        checks = (
            (2 <= self.classes <= len(SHAPES), f"--classes must be between 2 and {len(SHAPES)} (got {self.classes})"),
            (2 <= self.per_class <= MAX_PER_CLASS,
             f"--per-class must be between 2 and {MAX_PER_CLASS} (got {self.per_class})"),
            (MIN_IMAGE_SIZE <= self.size <= MAX_IMAGE_SIZE,
             f"--size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels (got {self.size})"),
            (0 < self.val_fraction < 1, f"--val-fraction must be between 0 and 1 (got {self.val_fraction})"),
            (0 <= self.seed <= MAX_SEED, f"--seed must be between 0 and {MAX_SEED} (got {self.seed})"),
        )
        require(*checks)
        n_val = self.val_count
        require((0 < n_val < self.per_class,
                 f"--val-fraction {self.val_fraction} of --per-class {self.per_class} leaves {self.per_class - n_val} "
                 f"training and {n_val} validation images per class; both need at least one"))

    @property
    def val_count(self) -> int:
        """Images per class written to val/ (at least one); the rest go to train/."""
        return max(1, int(round(self.per_class * self.val_fraction)))


def min_image_size(arch: str) -> int:
    """The smallest --image-size ``arch`` runs at."""
    return next((size for family, size in ARCH_MIN_IMAGE_SIZE.items() if arch.startswith(family)), MIN_IMAGE_SIZE)


def parse_device(name: str) -> tuple[str, int | None]:
    """auto | cpu | cuda | cuda:N -> (kind, index or None); whether CUDA is there is asked later."""
    name = str(name).strip().lower()
    if name in ("auto", "cpu"):
        return name, None
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not m:
        raise TLError(f"--device must be auto, cpu, cuda or cuda:N (got {name!r})")
    return "cuda", int(m.group(1)) if m.group(1) is not None else None


@dataclass(kw_only=True)
class TrainOptions:
    """Everything `tl train` accepts; defaults are the seed's recipe. Checked when built."""

    data: str | Path | None = None
    out: str | Path | None = None  # default runs/<timestamp>, or the resumed run's folder
    arch: str = "vgg16"
    weights: str = "imagenet"  # imagenet | none | PATH to a torchvision state_dict
    freeze: str = "none"  # features: train only the head
    dropout: float | None = None  # every dropout layer's probability; None: the architecture's own
    image_size: int = 224
    resize_mode: str = "squash"
    resize_size: int | None = None
    interpolation: str = "bilinear"
    augment: str = "jitter"
    epochs: int = 25
    batch_size: int = 8
    optimizer: str = "sgd"
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: str = "step"
    step_size: int = 7
    gamma: float = 0.1
    label_smoothing: float = 0.0
    patience: int = 0  # stop after this many epochs without a better val accuracy; 0 = never
    val_split: float = 0.2
    seed: int = 0
    workers: int = 2
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True
    channels_last: bool = True
    skip_bad: bool = False
    sync_bn: bool = False  # DDP on CUDA: BatchNorm statistics over the global batch (SyncBatchNorm)
    resume: str | Path | None = None
    progress: bool = True  # progress bars, for the CLI's reporter; kept in the checkpoint's args

    def __post_init__(self) -> None:
        if self.data is None:
            raise TLError("no data folder given: tl train DATA (a folder of class sub-folders)")
        self._check_types()
        self.augment = AUGMENT_ALIASES.get(self.augment, self.augment)
        self._check_choices()
        self._check_numbers()
        parse_device(self.device)

    def _check_choices(self) -> None:
        choices = (("arch", ARCHS), ("freeze", FREEZE), ("augment", AUGMENTS), ("optimizer", OPTIMIZERS),
                   ("scheduler", SCHEDULERS), ("resize_mode", RESIZE_MODES), ("interpolation", INTERPOLATIONS))
        require(*((getattr(self, name) in allowed,
                   f"{_flag(name)} must be one of {', '.join(allowed)} (got {getattr(self, name)!r})")
                  for name, allowed in choices))

    def _check_types(self) -> None:
        """A value of the wrong type (from a damaged checkpoint's args, or a library caller) is one
        message here, not a TypeError in a comparison."""
        require(*((False, problem) for f in dataclasses.fields(self)
                  if (problem := arg_type_problem(f.name, getattr(self, f.name))) is not None))

    def _check_numbers(self) -> None:
        # Every float is checked finite: inf passes ">= 0", nan fails every comparison but must
        # not depend on how a check is written. An infinite weight decay or momentum trains to NaN.
        floats = ("lr", "momentum", "weight_decay", "gamma", "label_smoothing", "val_split", "dropout")
        require(*((v is None or math.isfinite(v), f"{_flag(n)} must be a finite number (got {v})")
                  for n in floats for v in (getattr(self, n),)))
        smallest = min_image_size(self.arch)
        checks = (
            (self.epochs >= 1, f"--epochs must be at least 1 (got {self.epochs})"),
            (self.batch_size >= 1, f"--batch-size must be at least 1 (got {self.batch_size})"),
            (smallest <= self.image_size <= MAX_IMAGE_SIZE,
             f"--image-size must be between {smallest} and {MAX_IMAGE_SIZE} pixels for {self.arch} "
             f"(got {self.image_size})"),
            (self.resize_size is None or MIN_IMAGE_SIZE <= self.resize_size <= MAX_IMAGE_SIZE,
             f"resize_size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels (got {self.resize_size})"),
            (self.lr > 0, f"--lr must be a positive number (got {self.lr})"),
            (self.momentum >= 0, f"--momentum must be >= 0 (got {self.momentum})"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0 (got {self.weight_decay})"),
            (self.step_size >= 1, f"--step-size must be at least 1 (got {self.step_size})"),
            (self.gamma > 0, f"--gamma must be > 0 (got {self.gamma})"),
            (0 <= self.seed <= MAX_SEED, f"--seed must be between 0 and {MAX_SEED} (got {self.seed})"),
            (0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1) (got {self.label_smoothing})"),
            (self.patience >= 0, f"--patience must be >= 0 (got {self.patience}); 0 turns early stopping off"),
            (0 < self.val_split < 1, f"--val-split must be between 0 and 1 (got {self.val_split})"),
            (self.dropout is None or 0 <= self.dropout < 1, f"--dropout must be in [0, 1) (got {self.dropout})"),
            (self.workers >= 0, f"--workers must be >= 0 (got {self.workers})"),
        )
        require(*checks)

    def to_args(self) -> dict[str, Any]:
        """Plain values for the checkpoint's "args"."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def for_resume(cls, saved: Mapping[str, Any], **overrides: Any) -> "TrainOptions":
        """The options the run of ``saved`` was started with, with ``overrides`` applied.

        ``saved`` is its last.pt as tl.train.checkpoint.load_checkpoint returns it (with its
        "path"): loading it takes torch, and this module stays torch-free for `tl --help`.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        args = {k: v for k, v in dict(saved.get("args") or {}).items() if k in names}
        if isinstance(saved.get("data"), dict) and saved["data"].get("root"):
            args["data"] = saved["data"]["root"]  # absolute: resuming from another folder still works
        args.update(overrides)
        args["resume"] = overrides.get("resume") or saved["path"]
        if overrides.get("out") is None:
            args["out"] = str(Path(saved["path"]).parent)
        return cls(**args)


# What each annotation in TrainOptions admits, and how a message names it.
_ANNOTATION_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "an integer"), "float": ((int, float), "a number"), "bool": ((bool,), "true or false"),
    "str": ((str,), "text"), "Path": ((os.PathLike,), "a path"), "None": ((type(None),), "none"),
}
_FIELD_TYPES = {f.name: [_ANNOTATION_TYPES[a] for a in str(f.type).split(" | ")] for f in dataclasses.fields(TrainOptions)}


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def arg_type_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be TrainOptions' ``name`` (None when it can, or when ``name`` is not an option);
    True and False are not numbers here."""
    kinds = _FIELD_TYPES.get(name)
    if kinds is None:
        return None
    if any(isinstance(value, types) and (bool in types or not isinstance(value, bool)) for types, _ in kinds):
        return None
    return f"{_flag(name)} must be {' or '.join(word for _, word in kinds)} (got {value!r})"
