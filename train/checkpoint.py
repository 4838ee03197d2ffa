"""Checkpoints: plain dicts of tensors and values, loadable with ``weights_only=True``.

Keys: spec (ModelSpec dict), state_dict, epoch, best_metric, args (training arguments),
and in last.pt the optimizer/scheduler/scaler/RNG state for --resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from tl.runtime.errors import TLError
from tl.runtime.files import atomic_path
from tl.runtime.spec import ModelSpec
from tl.train.models import build_model, describe_mismatch
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
    ckpt["path"] = str(path)
    return ckpt


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
