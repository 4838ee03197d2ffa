"""What `tl train` accepts: each choice, default and check defined once, here.

Torch-free (stdlib and tl.runtime only): `tl train --help` builds its options from this
module, and `tl --help` must work where torch is not installed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tl.runtime.errors import TLError, require
from tl.runtime.spec import INTERPOLATIONS, RESIZE_MODES

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
# Far above any real input (torchvision's models are trained at 224-600 px) and far below
# what exhausts memory: one 100000 px image is 30 GB of RGB, killed by the OOM killer silently.
MAX_IMAGE_SIZE = 4096

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
            (16 <= self.size <= MAX_IMAGE_SIZE, f"--size must be between 16 and {MAX_IMAGE_SIZE} pixels (got {self.size})"),
            (0 < self.val_fraction < 1, f"--val-fraction must be between 0 and 1 (got {self.val_fraction})"),
        )
        require(*checks)


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
        self.augment = AUGMENT_ALIASES.get(self.augment, self.augment)
        self._check_choices()
        self._check_numbers()
        parse_device(self.device)

    def _check_choices(self) -> None:
        choices = (("arch", ARCHS), ("freeze", FREEZE), ("augment", AUGMENTS), ("optimizer", OPTIMIZERS),
                   ("scheduler", SCHEDULERS), ("resize_mode", RESIZE_MODES), ("interpolation", INTERPOLATIONS))
        require(*((getattr(self, name) in allowed,
                   f"--{name.replace('_', '-')} must be one of {', '.join(allowed)} (got {getattr(self, name)!r})")
                  for name, allowed in choices))

    def _check_numbers(self) -> None:
        checks = (
            (self.epochs >= 1, f"--epochs must be at least 1 (got {self.epochs})"),
            (self.batch_size >= 1, f"--batch-size must be at least 1 (got {self.batch_size})"),
            (16 <= self.image_size <= MAX_IMAGE_SIZE,
             f"--image-size must be between 16 and {MAX_IMAGE_SIZE} pixels (got {self.image_size})"),
            (self.resize_size is None or 16 <= self.resize_size <= MAX_IMAGE_SIZE,
             f"resize_size must be between 16 and {MAX_IMAGE_SIZE} pixels (got {self.resize_size})"),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be a positive number (got {self.lr})"),
            (self.momentum >= 0, f"--momentum must be >= 0 (got {self.momentum})"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0 (got {self.weight_decay})"),
            (self.step_size >= 1, f"--step-size must be at least 1 (got {self.step_size})"),
            (self.gamma > 0, f"--gamma must be > 0 (got {self.gamma})"),
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
