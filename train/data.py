"""Datasets: an ImageFolder that reads every image through tl.runtime.images.

Why not torchvision's ImageFolder: it decodes with its own loader (no EXIF orientation,
no CMYK/16-bit/alpha handling), so training would see other pixels than deployment.
"""

from __future__ import annotations

import os
import random
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image, UnidentifiedImageError

from tl.runtime.errors import TLError, escaped
from tl.runtime.images import bomb_reason, is_image_file, load_image, pixel_limit


@dataclass
class RunData:
    """Which files a run trains and validates on; recorded in every checkpoint."""

    root: Path
    classes: list[str]
    train_files: list[Path]
    train_labels: list[int]
    val_files: list[Path]
    val_labels: list[int]
    train_dir: Path
    val_dir: Path | None
    val_split: float | None
    seed: int
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The checkpoint's "data" entry (plain values only, absolute paths)."""
        return {
            "root": str(self.root.resolve()),
            "train_dir": str(self.train_dir.resolve()),
            "val_dir": str(self.val_dir.resolve()) if self.val_dir is not None else None,
            "val_split": self.val_split,
            "seed": int(self.seed),
            "classes": list(self.classes),
            "train_files": [str(p.resolve()) for p in self.train_files],
            "train_labels": [int(i) for i in self.train_labels],
            "val_files": [str(p.resolve()) for p in self.val_files],
            "val_labels": [int(i) for i in self.val_labels],
            "skipped": [str(p.resolve()) for p, _ in self.skipped],
        }


def _require_readable(folder: Path, what: str) -> None:
    """A folder that cannot be listed would read as empty (pathlib's glob skips it silently): say why."""
    try:
        with os.scandir(folder):
            pass
    except PermissionError as e:
        raise TLError(f"{what} {escaped(folder)} cannot be read: permission denied; "
                      "make it readable (chmod -R u+rX) or remove it") from e


def _require_data_folder(folder: Path) -> None:
    if not folder.exists():
        raise TLError(f"data folder not found: {escaped(folder)}")
    if not folder.is_dir():
        raise TLError(f"{escaped(folder)} is not a folder; give a folder with one sub-folder of images per class")


def find_classes(folder: Path) -> list[str]:
    """Class names = sub-folder names, sorted (ImageFolder's convention)."""
    _require_data_folder(folder)
    _require_readable(folder, "data folder")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise TLError(
            f"{escaped(folder)} has no class folders; put the images of each class in their own "
            f"sub-folder ({escaped(folder)}/<class>/*.jpg), or create {escaped(folder)}/train and "
            f"{escaped(folder)}/val that way"
        )
    if len(classes) == 1:
        raise TLError(
            f"{escaped(folder)} has a single class folder ({escaped(classes[0])}); a classifier needs at least 2 classes"
        )
    for name in classes:
        _require_utf8_name(folder / name)
    return classes


def _require_utf8_name(class_dir: Path) -> None:
    """A class name travels into the spec, labels.txt, plots and JSON, which hold text: a folder name whose
    bytes are not UTF-8 (Python keeps them as surrogate escapes) would crash one of those writers later."""
    try:
        class_dir.name.encode("utf-8")
    except UnicodeEncodeError:
        raise TLError(f"class folder {escaped(class_dir)} has a name that is not valid UTF-8 text; "
                      "rename it (class names become the model's labels)") from None


def scan(folder: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """(files, labels) for ``folder/<class>/**/<image>``; non-image files are ignored."""
    files: list[Path] = []
    labels: list[int] = []
    for idx, name in enumerate(classes):
        d = folder / name
        if not d.is_dir():
            raise TLError(f"class folder missing: {escaped(d)} (every split needs the same classes: "
                          f"{escaped(', '.join(classes))})")
        _require_readable(d, "class folder")
        found = sorted(
            p for p in d.rglob("*") if p.is_file() and is_image_file(p)
            and not any(part.startswith(".") for part in p.relative_to(d).parts)
        )
        if not found:
            raise TLError(f"class folder {escaped(d)} has no images (.jpg, .png, ...); add images or remove the folder")
        files += found
        labels += [idx] * len(found)
    return files, labels


def check_image(path: Path) -> str | None:
    """None if ``path`` decodes completely, else why not. JPEGs decode at reduced scale (fast)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                if img.format == "JPEG":
                    img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
    except Image.DecompressionBombError as e:
        return bomb_reason(e)
    except UnidentifiedImageError:
        return "not a readable image (corrupt or unsupported format)"
    except PermissionError:
        return "cannot be read: permission denied"
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        return f"corrupt or truncated image ({e})"
    return None


def check_images(files: list[Path], *, threads: int | None = None) -> list[tuple[Path, str]]:
    """(path, reason) for every file that does not decode; threads because Pillow releases the GIL."""
    threads = threads or min(8, (os.cpu_count() or 1) * 2)
    with pixel_limit(), ThreadPoolExecutor(max_workers=threads) as pool:
        reasons = list(pool.map(check_image, files, chunksize=16))
    return [(p, r) for p, r in zip(files, reasons) if r is not None]


def stratified_split(labels: list[int], *, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, val indices): ``fraction`` of every class (at least one) goes to val.

    Depends only on the labels, the fraction and the seed, so it is the same on every machine.
    """
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    train, val = [], []
    for y in sorted(by_class):
        idx = by_class[y][:]
        rng.shuffle(idx)
        if len(idx) < 2:
            raise TLError(f"class #{y} has only {len(idx)} image; a validation split needs at least 2 per class")
        n_val = min(len(idx) - 1, max(1, int(round(len(idx) * fraction))))
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val)


def prepare_data(root: str | os.PathLike, *, val_split: float = 0.2, seed: int = 0, skip_bad: bool = False) -> RunData:
    """Find classes and files: ROOT/train + ROOT/val, else a stratified split of ROOT/<class>/."""
    root = Path(root).expanduser()
    _require_data_folder(root)
    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir() and val_dir.is_dir():
        classes = find_classes(train_dir)
        val_classes = find_classes(val_dir)
        if val_classes != classes:
            raise TLError(
                f"{escaped(train_dir)} and {escaped(val_dir)} have different class folders "
                f"({escaped(', '.join(classes))} vs {escaped(', '.join(val_classes))}); they must match"
            )
        train_files, train_labels = scan(train_dir, classes)
        val_files, val_labels = scan(val_dir, classes)
        split: float | None = None
        used_val_dir: Path | None = val_dir
    else:
        if train_dir.is_dir() and not val_dir.exists():
            root_for_classes = train_dir  # only train/: split it
        else:
            root_for_classes = root
        if not 0.0 < val_split < 1.0:
            raise TLError(f"--val-split must be between 0 and 1 (got {val_split}) when DATA has no val/ folder")
        classes = find_classes(root_for_classes)
        files, labels = scan(root_for_classes, classes)
        train_dir, used_val_dir, split = root_for_classes, None, float(val_split)
        train_files, train_labels, val_files, val_labels = files, labels, [], []

    bad = check_images(train_files + val_files)
    if bad and not skip_bad:
        path, reason = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise TLError(f"{escaped(path)}: {escaped(reason)}{more}; fix or remove it, or pass --skip-bad to skip bad images")
    bad_set = {p for p, _ in bad}
    train_files, train_labels = _without(bad_set, train_files, train_labels)
    val_files, val_labels = _without(bad_set, val_files, val_labels)

    if split is not None:
        train_files, train_labels, val_files, val_labels = _split(classes, train_files, train_labels,
                                                                  root_for_classes, split, seed)
    else:
        _require_every_class(classes, train_labels, train_dir, " after skipping bad images")
        _require_every_class(classes, val_labels, val_dir, " after skipping bad images")

    return RunData(
        root=root, classes=classes, train_files=train_files, train_labels=train_labels,
        val_files=val_files, val_labels=val_labels, train_dir=train_dir, val_dir=used_val_dir,
        val_split=split, seed=int(seed), skipped=bad,
    )


def _without(bad: set, files: list[Path], labels: list[int]) -> tuple[list[Path], list[int]]:
    keep = [i for i, p in enumerate(files) if p not in bad]
    return [files[i] for i in keep], [labels[i] for i in keep]


def _split(classes: list[str], files: list[Path], labels: list[int], folder: Path, fraction: float, seed: int):
    """A stratified train/val split of one folder of class folders (every class needs 2 images)."""
    _require_every_class(classes, labels, folder, "")
    for i, c in enumerate(classes):
        if labels.count(i) < 2:
            raise TLError(f"class folder {escaped(folder / c)} has only 1 usable image; "
                          "a validation split needs at least 2 per class")
    tr, va = stratified_split(labels, fraction=fraction, seed=seed)
    return [files[i] for i in tr], [labels[i] for i in tr], [files[i] for i in va], [labels[i] for i in va]


def _require_every_class(classes: list[str], labels: list[int], folder: Path, why: str) -> None:
    present = set(labels)
    empty = [c for i, c in enumerate(classes) if i not in present]
    if empty:
        raise TLError(f"class folder {escaped(folder / empty[0])} has no usable images{why}; "
                      "add images or remove the folder")


class ImageFileDataset:
    """(transform(image), label) for a list of files; a torch map-style dataset."""

    def __init__(self, files: list[Path], labels: list[int], transform: Callable | None = None):
        self.files = list(files)
        self.labels = list(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        img = load_image(self.files[i])
        if self.transform is not None:
            img = self.transform(img)
        return img, self.labels[i]
