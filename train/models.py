"""Model building and the one head-replacement function for every supported family.

The seed replaced `model.fc` on VGG16, which has no `fc`: VGG's head is `classifier[6]`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from tl.runtime.errors import TLError
from tl.train.options import ARCHS, FREEZE
from tl.train.safe_load import safe_load


def head_path(arch: str) -> tuple[str, int | None]:
    """(attribute, index) of the final layer: VGG classifier[6], ResNet fc, SqueezeNet's 1x1 conv
    classifier[1], others classifier[-1]."""
    if arch.startswith("vgg"):
        return "classifier", 6
    if arch.startswith("squeezenet"):
        return "classifier", 1
    if arch.startswith("resnet"):
        return "fc", None
    if arch.startswith(("mobilenet", "efficientnet")):
        return "classifier", -1
    raise TLError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHS)}")


def get_head(model: nn.Module, arch: str) -> nn.Linear | nn.Conv2d:
    attr, idx = head_path(arch)
    mod = getattr(model, attr)
    return mod if idx is None else mod[idx]


def replace_head(model: nn.Module, arch: str, num_classes: int) -> nn.Module:
    """Swap the final Linear (SqueezeNet: 1x1 conv) for one with ``num_classes`` outputs; the rest is untouched."""
    old = get_head(model, arch)
    if isinstance(old, nn.Conv2d):
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=1, bias=old.bias is not None)
        nn.init.normal_(new.weight, mean=0.0, std=0.01)  # torchvision's init of this layer: a ReLU follows,
        if new.bias is not None:  # and the default init can leave every class at 0 (no gradient at all)
            nn.init.zeros_(new.bias)
    else:
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    attr, idx = head_path(arch)
    if idx is None:
        setattr(model, attr, new)
    else:
        getattr(model, attr)[idx] = new
    return model


def head_parameter_names(arch: str) -> tuple[str, ...]:
    attr, idx = head_path(arch)
    prefix = attr if idx is None else f"{attr}.{idx}"
    return (f"{prefix}.weight", f"{prefix}.bias")


def _normalize_head_keys(arch: str, model: nn.Module | None, state: dict) -> set:
    """The head's keys as stored; classifier[-1] under its real index (e.g. classifier.3).

    Without a model, the index is the highest ``classifier.N`` in ``state``.
    """
    attr, idx = head_path(arch)
    if idx == -1:
        if model is not None:
            real = len(getattr(model, attr)) - 1
        else:
            real = max((int(m.group(1)) for k in state if (m := re.fullmatch(rf"{attr}\.(\d+)\.weight", k))), default=0)
        return {f"{attr}.{real}.weight", f"{attr}.{real}.bias"}
    return set(head_parameter_names(arch))


def build_model(arch: str, num_classes: int, weights: str | Path | None = "none") -> nn.Module:
    """torchvision ``arch`` with a ``num_classes`` head.

    weights: "imagenet" (torchvision's weights enum and cache), "none", or a path to a
    torchvision state_dict (or a tl checkpoint) for the same architecture.
    """
    import torchvision

    if arch not in ARCHS:
        raise TLError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHS)}")
    if num_classes < 2:
        raise TLError(f"a classifier needs at least 2 classes (got {num_classes})")
    w = "none" if weights is None else str(weights)
    if w == "imagenet":
        enum = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            model = torchvision.models.get_model(arch, weights=enum)
        except Exception as e:  # URLError, OSError, RuntimeError from the hub download
            raise TLError(
                f"could not get ImageNet weights for {arch} ({type(e).__name__}: {e}); "
                "without internet, pass --weights PATH (a torchvision state_dict file) or --weights none"
            ) from e
    elif w == "none":
        model = torchvision.models.get_model(arch, weights=None)
    else:
        model = torchvision.models.get_model(arch, weights=None)
        _load_weights_file(model, arch, Path(w))
    return replace_head(model, arch, num_classes)


def set_dropout(model: nn.Module, arch: str, p: float | None) -> None:
    """--dropout: every nn.Dropout of the model gets probability ``p``; None keeps torchvision's."""
    if p is None:
        return
    layers = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    if not layers:
        raise TLError(f"--dropout: {arch} has no dropout layers; leave --dropout out for it")
    for m in layers:
        m.p = float(p)


def guess_arch(state: dict) -> str | None:
    """The architecture in ARCHS whose tensors (names and shapes, head aside) ``state`` holds, if any.

    Models are built on the meta device: shapes only, no memory.
    """
    import torchvision

    best, best_score = None, 0.0
    for arch in ARCHS:
        with torch.device("meta"):
            ref = torchvision.models.get_model(arch, weights=None).state_dict()
        head = _normalize_head_keys(arch, None, ref)
        body = {k: tuple(v.shape) for k, v in ref.items() if k not in head}
        theirs = {k: tuple(getattr(v, "shape", ())) for k, v in state.items() if k not in head}
        same = sum(1 for k, shape in body.items() if theirs.get(k) == shape)
        score = same / max(1, len(set(body) | set(theirs)))
        if score > best_score:
            best, best_score = arch, score
    return best if best_score >= 0.9 else None


def describe_mismatch(state: dict, arch: str) -> str:
    """One short reason why ``state`` does not load into ``arch``: the architecture it looks like."""
    guess = guess_arch(state)
    if guess is not None and guess != arch:
        return f"it holds {guess} weights, not {arch}"
    return f"its tensors are not those of torchvision's {arch} or of any other architecture tl knows"


def _load_weights_file(model: nn.Module, arch: str, path: Path) -> None:
    if not path.is_file():
        raise TLError(f"--weights: file not found: {path} (use 'imagenet', 'none' or a state_dict file)")
    state = safe_load(path, refused=f"--weights: {path} is not a loadable state_dict",
                      advice="give torch.save(model.state_dict(), PATH) of a torchvision model, 'imagenet' or 'none'")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TLError(f"--weights: {path} does not hold a state_dict of tensors")
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    own = model.state_dict()
    head_keys = _normalize_head_keys(arch, model, state)
    # A head of another size (e.g. a tl checkpoint with other classes) is dropped; it is replaced anyway.
    state = {k: v for k, v in state.items() if not (k in head_keys and k in own and own[k].shape != v.shape)}
    missing = sorted(set(own) - set(state) - head_keys)
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        guess = guess_arch(state)
        if guess is not None and guess != arch:
            raise TLError(f"--weights: {path} does not match {arch}: it holds {guess} weights; "
                          f"pass --arch {guess}, or weights saved from {arch}")
        detail = "; ".join(
            f"{len(keys)} {name} (e.g. {keys[0]})"
            for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
            if keys
        )
        raise TLError(f"--weights: {path} does not match {arch} ({detail}); give weights saved from "
                      f"torchvision's {arch}")
    model.load_state_dict(state, strict=False)


def freeze(model: nn.Module, arch: str, mode: str) -> int:
    """``features``: train only the head (feature extraction); ``none``: everything. Returns #trainable."""
    if mode not in FREEZE:
        raise TLError(f"--freeze must be 'features' or 'none' (got {mode!r})")
    head = get_head(model, arch)
    head_ids = {id(p) for p in head.parameters()}
    for p in model.parameters():
        p.requires_grad = mode == "none" or id(p) in head_ids
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
