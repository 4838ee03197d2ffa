"""Checkpoints: plain dicts of tensors and values, loadable with ``weights_only=True``.

Keys: spec (ModelSpec dict), state_dict, epoch, best_metric, args (training arguments),
and in last.pt the optimizer/scheduler/scaler/RNG state for --resume.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tl.runtime.errors import TLError
from tl.runtime.files import atomic_path
from tl.runtime.spec import ModelSpec
from tl.train.models import build_model, describe_mismatch
from tl.train.options import arg_type_problem
from tl.train.safe_load import safe_load


def clean_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Atomic: temp file + os.replace, so an interrupted save never leaves a broken best.pt.

    torch.save writes through a Python file so that a failed write (a full disk) keeps its
    OSError, which atomic_path turns into "could not write PATH: why".
    """
    if "spec" not in payload or "state_dict" not in payload:
        raise ValueError("a checkpoint needs 'spec' and 'state_dict'")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        if (path / "best.pt").is_file():
            path = path / "best.pt"
        else:
            raise TLError(f"{path} is a folder without best.pt; pass a checkpoint file")
    if not path.is_file():
        raise TLError(f"checkpoint not found: {path}")
    ckpt = safe_load(path, refused=f"{path} is not a tl checkpoint",
                     advice="give a best.pt or last.pt written by 'tl train'")
    if not isinstance(ckpt, dict) or "spec" not in ckpt or "state_dict" not in ckpt:
        raise TLError(f"{path} is not a tl checkpoint (no 'spec'/'state_dict'); train one with 'tl train'")
    check_checkpoint(ckpt, path)
    ckpt["path"] = str(path)
    return ckpt


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def _schema_problem(ckpt: dict[str, Any]) -> str | None:
    """What every checkpoint needs: a spec object, tensors, the epoch, the best metrics and, when
    present, training arguments of the right types."""
    if not isinstance(ckpt["spec"], dict):
        return f"its spec is {type(ckpt['spec']).__name__}, not an object"
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        return "its state_dict is not a mapping of names to tensors"
    if not _is_int(ckpt.get("epoch")) or ckpt["epoch"] < 0:
        return f"its epoch is {ckpt.get('epoch')!r}, not a count of epochs"
    best = ckpt.get("best_metric")
    if not isinstance(best, dict) or not all(_is_number(best.get(k)) for k in ("val_acc", "val_loss")):
        return f"its best_metric is {best!r}, not {{'val_acc': number, 'val_loss': number}}"
    args = ckpt.get("args", {})
    if not isinstance(args, dict):
        return f"its args are {type(args).__name__}, not an object"
    problems = [p for name, value in args.items() if (p := arg_type_problem(name, value)) is not None]
    if problems:
        return f"its saved training arguments are damaged ({problems[0]})"
    if ckpt.get("data") is not None and not isinstance(ckpt["data"], dict):
        return f"its data record is {type(ckpt['data']).__name__}, not an object"
    return None


def check_checkpoint(ckpt: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint whose fields are missing or of the wrong type, once, when it is loaded:
    every reader after this (resume, export, bench) can index it without a KeyError or TypeError."""
    problem = _schema_problem(ckpt)
    if problem is not None:
        raise TLError(f"{path} is not a checkpoint this tl can use: {problem}; "
                      "give a best.pt or last.pt written by this version of 'tl train'")
    try:  # the spec's own rules (its format version, sizes, classes), whose message says what to do
        ModelSpec.from_dict(ckpt["spec"])
    except TLError as e:
        raise TLError(f"{path}: {e}") from None


# What a last.pt adds for --resume, and the type each must have when present.
_RESUME_TYPES: dict[str, type] = {
    "optimizer": dict, "scheduler": dict, "scaler": dict, "rng": dict,
    "history": list, "best_epoch": int, "acc_epoch": int, "best_confusion": list,
}


def check_resumable(ckpt: dict[str, Any]) -> None:
    """The training state --resume restores, checked before any data is read."""
    path = ckpt["path"]
    if "optimizer" not in ckpt or "scheduler" not in ckpt:
        raise TLError(f"{path} has no optimizer state (a best.pt?); resume from the run's last.pt")
    for name, kind in _RESUME_TYPES.items():
        value = ckpt.get(name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise TLError(f"{path} cannot be resumed: its {name} is {type(value).__name__}, not {kind.__name__}; "
                          "the file is damaged, start a new run or resume from another last.pt")
    history = ckpt.get("history") or []
    if not all(isinstance(h, dict) and _is_int(h.get("epoch")) for h in history):
        raise TLError(f"{path} cannot be resumed: its history has rows without an epoch number; "
                      "the file is damaged, start a new run or resume from another last.pt")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Checkpoint -> (eval-mode model on device, its ModelSpec, the checkpoint dict)."""
    ckpt = load_checkpoint(path)
    spec = ModelSpec.from_dict(ckpt["spec"])
    model = build_model(spec.arch, spec.num_classes, weights="none")
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise TLError(f"{path}: weights do not fit {spec.arch} with {spec.num_classes} classes "
                      f"({describe_mismatch(ckpt['state_dict'], spec.arch)}); the checkpoint is inconsistent, "
                      "re-save it from 'tl train'") from e
    return model.to(device).eval(), spec, ckpt
