"""The single image pipeline: decode -> EXIF orientation -> RGB -> resize/crop -> float -> normalize.

Training (`tl.train`) loads every image through `load_image`, and its evaluation transform
is built from the same ModelSpec; the runtime uses `preprocess`. No torch here.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tl.runtime.errors import TLError
from tl.runtime.spec import MAX_IMAGE_SIZE, ModelSpec, require_regular_file

# Transparent pixels are composited on this colour (RGBA, LA, P with transparency).
BACKGROUND = (255, 255, 255)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

# The shorter-side resize scales the long side by the aspect ratio: a 2,000,000 x 1 px image (a few kB
# as a PNG) would become 448,000,000 x 224 (300 GB). Four of the largest spec inputs is room for
# any photo or panorama at any resize size a spec allows, and at most 200 MB of RGB.
MAX_RESIZED_PIXELS = 4 * MAX_IMAGE_SIZE**2

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES and not Path(path).name.startswith(".")


def list_images(root: str | os.PathLike) -> list[Path]:
    """Image files under ``root`` (recursively), sorted; other files are ignored."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p))


def images_in_folder(root: str | os.PathLike, *, option: str) -> list[Path]:
    """Images under a folder a user named with ``option`` (e.g. --calib-dir); none is an error."""
    root = Path(root)
    if not root.is_dir():
        raise TLError(f"{option}: folder not found: {root}")
    files = list_images(root)
    if not files:
        raise TLError(f"{option}: no images under {root} (jpg, png, ...); point it at a folder of images")
    return files


def sample_files(files: Sequence[str | os.PathLike], count: int, *, seed: int = 0) -> list[Path]:
    """At most ``count`` files: a fixed-seed sample spread evenly over their folders, in sorted order.

    Folders are classes in tl's layouts, so every class shows up. Parity, INT8 calibration
    and bench all draw through this, so they judge the same kind of sample, and reruns the
    same files.
    """
    import random

    files = sorted(Path(f) for f in files)
    if len(files) <= count:
        return files
    rng = random.Random(seed)
    groups: dict[Path, list[Path]] = {}
    for f in files:
        groups.setdefault(f.parent, []).append(f)
    queues = [groups[k] for k in sorted(groups)]
    for q in queues:
        rng.shuffle(q)
    picked: list[Path] = []
    for i in range(max(len(q) for q in queues)):  # round robin over the folders
        picked += [q[i] for q in queues if i < len(q)][: count - len(picked)]
        if len(picked) == count:
            break
    return sorted(picked)


def _max_pixels() -> int | None:
    env = os.environ.get("TL_MAX_IMAGE_PIXELS")
    if env:
        if env.lower() in ("0", "none"):
            return None
        try:
            return int(env)
        except ValueError:
            raise TLError(f"TL_MAX_IMAGE_PIXELS must be a pixel count, or none for no limit (got {env!r})") from None
    return Image.MAX_IMAGE_PIXELS


@contextlib.contextmanager
def pixel_limit() -> Iterator[None]:
    """Pillow's decompression-bomb limit set from TL_MAX_IMAGE_PIXELS for the block.

    Pillow reads a module global, so threads that decode must run inside one block,
    not each set and restore it.
    """
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = _max_pixels()
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def bomb_reason(e: Exception) -> str:
    """Why an image was refused as a decompression bomb, and how to let it through."""
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+) pixels", str(e))
    size, limit = (int(found.group(1)), int(found.group(2))) if found else (None, None)
    what = f"{size:,} pixels is" if size else "it is"
    over = f" of {limit:,} pixels" if limit else ""
    raise_to = f"TL_MAX_IMAGE_PIXELS={size}" if size else "TL_MAX_IMAGE_PIXELS to a larger pixel count"
    return (f"{what} above Pillow's decompression-bomb limit{over}, which stops a small file from expanding "
            f"to gigabytes in memory; if you trust this image, set {raise_to} (or none for no limit)")


def open_image(path: str | os.PathLike) -> Image.Image:
    """Decode fully (so truncation is caught here) and apply EXIF orientation; not yet RGB."""
    path = Path(path)
    require_regular_file(path, "image")  # a FIFO would block the decode
    return decode_image(path, path)


def decode_image(source, name) -> Image.Image:
    """``open_image`` for a path or a file object (an encoded image received over HTTP); ``name`` is for messages."""
    try:
        with pixel_limit(), warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                img.load()
    except Image.DecompressionBombError as e:
        raise TLError(f"{name}: {bomb_reason(e)}") from e
    except UnidentifiedImageError as e:
        raise TLError(f"{name}: not a readable image (corrupt or unsupported format)") from e
    except PermissionError as e:
        raise TLError(f"{name}: cannot be read: permission denied") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise TLError(f"{name}: corrupt or truncated image ({e})") from e
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any Pillow mode: L/LA/P/RGBA/CMYK/YCbCr/16-bit/float."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit data (and 32-bit `I` holding 16-bit values) is scaled to 8 bits.
        scale = 255.0 / 65535.0 if (mode != "I" or arr.max(initial=0) > 255) else 1.0
        arr = np.clip(np.round(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "1":
        return img.convert("L").convert("RGB")
    return img.convert("RGB")


def is_one_image(x) -> bool:
    """One image (a path, a PIL image, an HxW or HxWxC array), not a sequence of them."""
    return isinstance(x, (str, os.PathLike, Image.Image)) or (isinstance(x, np.ndarray) and x.ndim in (2, 3))


def load_image(source: ImageInput) -> Image.Image:
    """Path, PIL image or uint8 HWC / HW array -> RGB PIL image (EXIF applied for files)."""
    if isinstance(source, Image.Image):
        if source.width == 0 or source.height == 0:  # resizing it would invent a prediction
            raise TLError(f"empty image ({source.width}x{source.height}); give an image with at least one pixel")
        return to_rgb(source)
    if isinstance(source, np.ndarray):
        return to_rgb(array_to_pil(source))
    if isinstance(source, (str, os.PathLike)):
        return to_rgb(open_image(source))
    raise TLError(f"cannot read an image from {type(source).__name__}; give a path, a PIL image or a uint8 HWC array")


def array_to_pil(arr: np.ndarray) -> Image.Image:
    if arr.size == 0:
        raise TLError(f"empty image array (shape {arr.shape}); give an image with at least one pixel")
    if arr.dtype != np.uint8:
        raise TLError(f"image arrays must be uint8 HWC (got dtype {arr.dtype})")
    if arr.ndim == 2:
        return Image.fromarray(arr, mode="L")
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        if arr.shape[2] == 1:
            return Image.fromarray(arr[:, :, 0], mode="L")
        return Image.fromarray(np.ascontiguousarray(arr), mode="RGB" if arr.shape[2] == 3 else "RGBA")
    raise TLError(f"image arrays must be HxW, HxWx1, HxWx3 or HxWx4 (got shape {arr.shape})")


def center_crop_box(width: int, height: int, crop_w: int, crop_h: int) -> tuple[int, int, int, int]:
    # Same rounding as torchvision.transforms.functional.center_crop.
    top = int(round((height - crop_h) / 2.0))
    left = int(round((width - crop_w) / 2.0))
    return left, top, left + crop_w, top + crop_h


def shorter_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    # Same arithmetic as torchvision's Resize(int) (_compute_resized_output_size).
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def check_resized_size(img: Image.Image, new_w: int, new_h: int, size: int) -> None:
    """Refuse, before allocating it, a resize result far larger than any model input needs."""
    if new_w * new_h > MAX_RESIZED_PIXELS:
        raise TLError(f"image {img.width}x{img.height} is too elongated for the model's shorter-side resize to {size} px: "
                      f"it would become {new_w}x{new_h} ({new_w * new_h:,} pixels, above tl's limit of "
                      f"{MAX_RESIZED_PIXELS:,}); crop it closer to square first")


def resize(img: Image.Image, spec: ModelSpec) -> Image.Image:
    """Geometric part of preprocessing: RGB image -> RGB image of spec's H x W."""
    p, h, w = spec.preprocess, spec.input.height, spec.input.width
    resample = _RESAMPLE[p.interpolation]
    if p.resize_mode == "squash":
        return img.resize((w, h), resample=resample)
    new_w, new_h = shorter_side_size(img.width, img.height, p.resize_size)
    check_resized_size(img, new_w, new_h, p.resize_size)
    img = img.resize((new_w, new_h), resample=resample)
    if new_w < w or new_h < h:  # torchvision pads here; ModelSpec.validate keeps resize_size >= crop
        raise TLError(f"image {img.width}x{img.height} is smaller than the crop {w}x{h}")
    return img.crop(center_crop_box(new_w, new_h, w, h))


def normalize(img: Image.Image, spec: ModelSpec) -> np.ndarray:
    """RGB uint8 image -> float32 CHW, (x/255 - mean) / std."""
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    mean = np.asarray(spec.preprocess.mean, dtype=np.float32)
    std = np.asarray(spec.preprocess.std, dtype=np.float32)
    arr = (arr - mean) / std
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocess_one(source: ImageInput, spec: ModelSpec) -> np.ndarray:
    img = load_image(source)
    try:
        return normalize(resize(img, spec), spec)
    except TLError as e:
        if isinstance(source, (str, os.PathLike)):  # decode errors name the file already; these need it too
            raise TLError(f"{source}: {e}") from e
        raise


def preprocess(sources: Iterable[ImageInput] | ImageInput, spec: ModelSpec) -> np.ndarray:
    """Inputs -> NCHW float32 batch ready for the model."""
    if is_one_image(sources):
        sources = [sources]
    arrays: Sequence[np.ndarray] = [preprocess_one(s, spec) for s in sources]
    if not arrays:
        return np.zeros((0, spec.input.channels, spec.input.height, spec.input.width), dtype=np.float32)
    return np.stack(arrays).astype(np.float32, copy=False)
