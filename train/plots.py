"""Run pictures: history.png, confusion.png, batch.png.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so nothing global is
touched and it works without a display.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tl.runtime.files import atomic_path


def _save(fig: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return Path(path)


def plot_history(history: Sequence[dict], path: str | Path) -> Path:
    """Loss and accuracy per epoch, train vs val."""
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, key, title in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train")
        ax.plot(epochs, [h[f"val_{key}"] for h in history], "o-", label="val")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_acc.set_ylim(0, 1.02)
    return _save(fig, path)


# The confusion matrix grows half an inch per class up to a bound (2400 px at 100 dpi, whatever the
# class count: 1000 classes unbounded asked for a 50000 px canvas); beyond MAX_LABELLED classes only
# every k-th class is named, and beyond MAX_COUNTED cells carry no counts (they would not be legible).
MAX_CONFUSION_INCHES = 24.0
MAX_LABELLED = 48
MAX_COUNTED = 30
# A label longer than this is cut: with bbox_inches="tight" a long name would widen the canvas without bound.
MAX_LABEL_CHARS = 40


def _label(name: object) -> str:
    text = str(name)
    return text if len(text) <= MAX_LABEL_CHARS else text[:MAX_LABEL_CHARS - 1] + "…"


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: str | Path, *, title: str = "") -> Path:
    """Rows = true class, columns = predicted; counts in the cells while they fit."""
    matrix = np.asarray(matrix)
    n = len(classes)
    side = min(MAX_CONFUSION_INCHES, max(4.0, 0.5 * n + 2))
    fig = Figure(figsize=(side, side))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues", interpolation="nearest")
    every = max(1, math.ceil(n / MAX_LABELLED))
    ticks = range(0, n, every)
    ax.set_xticks(ticks, labels=[_label(classes[i]) for i in ticks], rotation=45, ha="right")
    ax.set_yticks(ticks, labels=[_label(classes[i]) for i in ticks])
    ax.set_xlabel("predicted" if every == 1 else f"predicted (every {every}th class named)")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    if n <= MAX_COUNTED:
        top = matrix.max() if matrix.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center",
                        color="white" if top and matrix[i, j] > top / 2 else "black", fontsize=8)
    return _save(fig, path)


def plot_batch(images: np.ndarray, labels: Sequence[str], path: str | Path, *, max_images: int = 32) -> Path:
    """The seed's grid of a training batch: NHWC images in [0, 1] with their labels as titles."""
    images = np.asarray(images)[:max_images]
    n = len(images)
    cols = min(8, max(1, n))
    rows = max(1, math.ceil(n / cols))
    fig = Figure(figsize=(1.8 * cols, 1.9 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, img, label in zip(axes, images, labels):
        ax.imshow(np.clip(img, 0, 1))
        ax.set_title(_label(label), fontsize=9)
    return _save(fig, path)
