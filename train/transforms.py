"""Transform presets, in the style of torchvision's references/classification/presets.py.

The evaluation transform is built from the ModelSpec alone, and operates on images that
tl.runtime.images.load_image decoded, so it equals tl.runtime.images.preprocess.
"""

from __future__ import annotations

from typing import Callable

import torch
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from tl.runtime.errors import TLError
from tl.runtime.spec import ModelSpec
from tl.train.options import AUGMENTS

_INTERPOLATION = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "lanczos": InterpolationMode.LANCZOS,
}


def interpolation(spec: ModelSpec) -> InterpolationMode:
    return _INTERPOLATION[spec.preprocess.interpolation]


def _to_tensor_normalize(spec: ModelSpec) -> list[Callable]:
    return [T.ToTensor(), T.Normalize(mean=list(spec.preprocess.mean), std=list(spec.preprocess.std))]


class EvalPreset:
    """squash: Resize((H, W)); shorter: Resize(resize_size) + CenterCrop((H, W)); then ToTensor, Normalize."""

    def __init__(self, *, spec: ModelSpec):
        h, w, p = spec.input.height, spec.input.width, spec.preprocess
        if p.resize_mode == "squash":
            geometry = [T.Resize((h, w), interpolation=interpolation(spec), antialias=True)]
        else:
            geometry = [
                T.Resize(p.resize_size, interpolation=interpolation(spec), antialias=True),
                T.CenterCrop((h, w)),
            ]
        self.transforms = T.Compose(geometry + _to_tensor_normalize(spec))

    def __call__(self, img) -> torch.Tensor:
        return self.transforms(img)


class JitterTrainPreset:
    """The seed blog post's augmentation made correct: ToTensor before Normalize, `fill` not `fillcolor`."""

    def __init__(self, *, spec: ModelSpec):
        h, w = spec.input.height, spec.input.width
        self.transforms = T.Compose([
            T.Resize((h, w), interpolation=interpolation(spec), antialias=True),
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1, hue=0.1),
            T.RandomAffine(degrees=40, scale=(1, 2), shear=15, fill=0),
            *_to_tensor_normalize(spec),
        ])

    def __call__(self, img) -> torch.Tensor:
        return self.transforms(img)


class StandardTrainPreset:
    """torchvision's classification recipe: RandomResizedCrop + horizontal flip."""

    def __init__(self, *, spec: ModelSpec, hflip_prob: float = 0.5):
        h, w = spec.input.height, spec.input.width
        self.transforms = T.Compose([
            T.RandomResizedCrop((h, w), interpolation=interpolation(spec), antialias=True),
            T.RandomHorizontalFlip(hflip_prob),
            *_to_tensor_normalize(spec),
        ])

    def __call__(self, img) -> torch.Tensor:
        return self.transforms(img)


def eval_transform(spec: ModelSpec) -> EvalPreset:
    return EvalPreset(spec=spec)


def train_transform(spec: ModelSpec, *, augment: str = "jitter") -> Callable:
    """``--augment``: jitter (the seed blog post's pipeline, fixed), standard, or none (= eval transform)."""
    if augment == "jitter":
        return JitterTrainPreset(spec=spec)
    if augment == "standard":
        return StandardTrainPreset(spec=spec)
    if augment == "none":
        return EvalPreset(spec=spec)
    raise TLError(f"--augment must be one of {', '.join(AUGMENTS)} (got {augment!r})")


def denormalize(batch: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Normalized NCHW (or CHW) -> [0, 1] RGB, for looking at what the model sees."""
    mean = torch.tensor(spec.preprocess.mean, dtype=batch.dtype, device=batch.device).view(-1, 1, 1)
    std = torch.tensor(spec.preprocess.std, dtype=batch.dtype, device=batch.device).view(-1, 1, 1)
    return (batch * std + mean).clamp(0, 1)
