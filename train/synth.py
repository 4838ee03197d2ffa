"""Procedural, learnable image classes for the demo and the tests (no download needed).

Each class is a shape drawn with random colour, position, scale and rotation over a
cluttered background; files are a mix of JPEG and PNG. Same arguments, same bytes: so
:func:`differences` can tell whether a folder is exactly the dataset some options make.
"""

from __future__ import annotations

import errno
import functools
import io
import math
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tl.runtime.errors import TLError, escaped
from tl.runtime.files import atomic_write_bytes, remove_stale_temps, stale_temps_note, temp_dir_beside, write_error
from tl.runtime.progress import SILENT, Reporter
from tl.train.options import SHAPES, SynthOptions

__all__ = ["SHAPES", "SynthOptions", "differences", "draw_shape", "make_dataset"]

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


def _encode(shape: str, size: int, seed: list[int], jpeg: bool) -> bytes:
    img = draw_shape(shape, size, np.random.default_rng(seed))
    buf = io.BytesIO()
    if jpeg:
        img.save(buf, format="JPEG", quality=92)
    else:
        img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _files(options: SynthOptions) -> Iterator[tuple[Path, Callable[[], bytes]]]:
    """Each file of the dataset: its path inside OUT, and how to make its bytes."""
    o = options
    for c, shape in enumerate(SHAPES[: o.classes]):
        for i in range(o.per_class):
            split = "val" if i < o.val_count else "train"
            jpeg = i % 2 == 0
            rel = Path(split, shape, f"{shape}_{i:04d}.{'jpg' if jpeg else 'png'}")
            yield rel, functools.partial(_encode, shape, o.size, [o.seed, c, i], jpeg)


def make_dataset(out: str | Path, options: SynthOptions = SynthOptions(), *, reporter: Reporter = SILENT) -> Path:
    """Write OUT/train/<class>/ and OUT/val/<class>/ and return OUT.

    The files are written into a temporary folder beside OUT that becomes OUT when every file is
    there: a synth that fails or is killed part-way leaves no partial dataset (the next one removes
    a killed one's folder). OUT must not exist or be empty.
    """
    out = Path(out)
    removed = remove_stale_temps(out.parent, name=out.name)
    if removed:
        reporter.info(stale_temps_note(removed, out.parent))
    staging = temp_dir_beside(out)
    try:
        with reporter.task("writing images", total=options.classes * options.per_class) as task:
            for rel, encode in _files(options):
                atomic_write_bytes(staging / rel, encode())
                task.advance()
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _publish(staging: Path, out: Path) -> None:
    try:
        os.rename(staging, out)  # replaces an empty folder, never a non-empty one
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise TLError(f"{out} exists and is not empty; pick a new folder") from e
        raise write_error(out, e) from e


def differences(folder: str | Path, options: SynthOptions, *, limit: int = 5) -> list[str]:
    """How ``folder`` differs from the dataset ``options`` make (files missing, changed or extra), at most
    ``limit`` of them; empty when it is exactly that dataset, byte for byte."""
    folder = Path(folder)
    expected = dict(_files(options))
    found = {p.relative_to(folder) for p in folder.rglob("*") if not p.is_dir()}
    problems = [f"{escaped(p)} is extra" for p in sorted(found - set(expected))]
    problems += [f"{p} is missing" for p in expected if p not in found]
    for rel, encode in expected.items():
        if len(problems) >= limit:
            break
        if rel in found and (folder / rel).read_bytes() != encode():
            problems.append(f"{rel} differs")
    return problems[:limit]
