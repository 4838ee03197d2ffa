"""One epoch of training and one pass of evaluation, in the shape of torchvision's
references/classification (`train_one_epoch`, `evaluate`), plus the device they run on."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tl.runtime.errors import TLError
from tl.runtime.progress import Task
from tl.train.interrupts import raise_if_interrupted
from tl.train.options import parse_device


def torch_device(name: str) -> torch.device:
    """auto | cpu | cuda | cuda:N -> torch.device, with an error that says what to use instead."""
    kind, index = parse_device(name)
    if kind == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    name = str(name).strip().lower()
    if not torch.cuda.is_available():
        raise TLError(f"--device {name}: CUDA is not available here (no GPU, or a CPU-only torch); use --device cpu")
    index = torch.cuda.current_device() if index is None else index
    count = torch.cuda.device_count()
    if index >= count:
        raise TLError(f"--device {name}: there are only {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 on GPUs that do it natively (Ampere+), else fp16 (with a GradScaler); None = no AMP."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, scaler,
                    loader: DataLoader, device: torch.device, *, dtype: torch.dtype | None, memory_format,
                    task: Task, on_first_batch: Callable | None = None,
                    reduce: Callable | None = None) -> tuple[float, float]:
    """(mean loss, accuracy) over the epoch's training batches; ``on_first_batch(x, y)`` sees the CPU batch.

    ``reduce`` sums a tensor over DDP ranks in place, so every rank returns the whole epoch's figures.
    """
    model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    for step, (x, y) in enumerate(loader):
        raise_if_interrupted()
        if step == 0 and on_first_batch is not None:
            on_first_batch(x, y)
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with _autocast(device, dtype):
            logits = model(x)
            loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach().double() * y.shape[0]
        correct += (logits.detach().argmax(1) == y).sum()
        seen += y.shape[0]
        if device.type != "cuda" or step % 10 == 9 or step == len(loader) - 1:  # .item() syncs a GPU
            task.update(completed=step + 1, note=f"loss {loss_sum.item() / seen:.4f} acc {correct.item() / seen:.3f}")
    loss_total, (correct_total,), seen = _totals(reduce, loss_sum, seen, correct)
    if not seen:
        return math.nan, math.nan
    return loss_total / seen, correct_total / seen


def _totals(reduce: Callable | None, loss_sum: torch.Tensor, seen: int,
            counts: torch.Tensor) -> tuple[float, list[float], int]:
    """(loss sum, counts as a flat list, images seen), summed over the ranks when ``reduce`` is given.

    One float64 tensor and one all-reduce per epoch; counts stay exact below 2**53.
    """
    seen_t = torch.tensor([float(seen)], device=loss_sum.device, dtype=torch.float64)
    stats = torch.cat([loss_sum.view(1), counts.view(-1).double(), seen_t])
    if reduce is not None:
        reduce(stats)
    values = stats.cpu().tolist()
    return values[0], values[1:-1], int(values[-1])


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, *, dtype: torch.dtype | None,
             memory_format, num_classes: int, task: Task,
             reduce: Callable | None = None) -> tuple[float, float, np.ndarray]:
    """(mean cross-entropy, accuracy, confusion matrix: rows true, columns predicted) on ``loader``;
    with ``reduce``, on the DDP ranks' validation shards together."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.int64)
    seen = 0
    for x, y in loader:
        raise_if_interrupted()
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with _autocast(device, dtype):
            logits = model(x)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        confusion += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes * num_classes)
        seen += y.shape[0]
        task.advance()
    loss_total, counts, seen = _totals(reduce, loss_sum, seen, confusion)
    cm = np.asarray(counts, dtype=np.int64).reshape(num_classes, num_classes)
    if not seen:
        return math.nan, 0.0, cm
    return loss_total / seen, float(np.trace(cm)) / seen, cm


def per_class_metrics(confusion: np.ndarray, classes: list[str]) -> list[dict]:
    """Precision and recall per class from a confusion matrix (rows true, columns predicted)."""
    cm = np.asarray(confusion, dtype=np.int64)
    rows = []
    for i, name in enumerate(classes):
        tp = int(cm[i, i])
        predicted, support = int(cm[:, i].sum()), int(cm[i, :].sum())
        rows.append({
            "class": name,
            "precision": tp / predicted if predicted else 0.0,
            "recall": tp / support if support else 0.0,
            "support": support,
        })
    return rows
