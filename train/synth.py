"""Procedural, learnable image classes for the demo and the tests (no download needed).

Each class is a shape drawn with random colour, position, scale and rotation over a
cluttered background; files are a mix of JPEG and PNG. Same arguments, same bytes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tl.runtime.files import atomic_path
from tl.train.options import SHAPES, SynthOptions

__all__ = ["SHAPES", "SynthOptions", "draw_shape", "make_dataset"]

def _polygon(cx, cy, r, n, rot, inner=None):
    pts = []
    for k in range(n * (2 if inner else 1)):
        a = rot + math.pi * 2 * k / (n * (2 if inner else 1))
        rr = r if (inner is None or k % 2 == 0) else r * inner
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def _rotated_rect(cx, cy, w, h, rot):
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in ((-w, -h), (w, -h), (w, h), (-w, h))]


def _contrasting_colour(rng, bg):
    while True:
        fg = tuple(int(v) for v in rng.integers(0, 256, 3))
        if sum(abs(a - b) for a, b in zip(fg, bg)) > 200:
            return fg


def draw_shape(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    # Background clutter: thin lines and small dots in random colours.
    for _ in range(int(rng.integers(3, 8))):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, 4))
        d.line((x0, y0, x1, y1), fill=col, width=max(1, size // 64))
    for _ in range(int(rng.integers(5, 15))):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = (float(v) for v in rng.uniform(0, size, 2))
        rr = size / 40
        d.ellipse((x - rr, y - rr, x + rr, y + rr), fill=col)
    fg = _contrasting_colour(rng, bg)
    r = float(rng.uniform(0.22, 0.38)) * size
    cx, cy = (float(v) for v in rng.uniform(r + 1, size - r - 1, 2))
    rot = float(rng.uniform(0, 2 * math.pi))
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
    elif shape == "square":
        d.polygon(_polygon(cx, cy, r, 4, rot), fill=fg)
    elif shape == "triangle":
        d.polygon(_polygon(cx, cy, r, 3, rot), fill=fg)
    elif shape == "cross":
        d.polygon(_rotated_rect(cx, cy, r, r * 0.28, rot), fill=fg)
        d.polygon(_rotated_rect(cx, cy, r * 0.28, r, rot), fill=fg)
    elif shape == "star":
        d.polygon(_polygon(cx, cy, r, 5, rot, inner=0.45), fill=fg)
    elif shape == "ring":
        w = max(2, int(r * 0.3))
        d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fg, width=w)
    elif shape == "hexagon":
        d.polygon(_polygon(cx, cy, r, 6, rot), fill=fg)
    elif shape == "bar":
        d.polygon(_rotated_rect(cx, cy, r, r * 0.3, rot), fill=fg)
    elif shape == "crescent":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
        off = r * 0.5
        d.ellipse((cx - r + off * math.cos(rot), cy - r + off * math.sin(rot),
                   cx + r + off * math.cos(rot), cy + r + off * math.sin(rot)), fill=bg)
    elif shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r * 0.6, cy), (cx, cy + r), (cx - r * 0.6, cy)], fill=fg)
    else:  # pragma: no cover - guarded by SHAPES
        raise ValueError(shape)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.0))))
    return img


def make_dataset(out: str | Path, options: SynthOptions = SynthOptions()) -> Path:
    """Write OUT/train/<class>/ and OUT/val/<class>/ and return OUT."""
    o = options
    out = Path(out)
    n_val = max(1, int(round(o.per_class * o.val_fraction)))
    for c, shape in enumerate(SHAPES[: o.classes]):
        for i in range(o.per_class):
            rng = np.random.default_rng([o.seed, c, i])
            img = draw_shape(shape, o.size, rng)
            split = "val" if i < n_val else "train"
            folder = out / split / shape
            if i % 2 == 0:
                with atomic_path(folder / f"{shape}_{i:04d}.jpg") as tmp:
                    img.save(tmp, format="JPEG", quality=92)
            else:
                with atomic_path(folder / f"{shape}_{i:04d}.png") as tmp:
                    img.save(tmp, format="PNG", optimize=False)
    return out
