"""What a stream's results look like: frames with their label drawn on, written as a video; the label
timeline as a PNG. Pillow draws both (no matplotlib on an edge box); PyAV encodes the video."""

from __future__ import annotations

import contextlib
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tl.runtime.errors import TLError, escaped

# Encoder per container suffix, first available wins: H.264 where FFmpeg has it, MPEG-4 part 2 anywhere.
CODECS = {".mp4": ("libx264", "h264", "mpeg4"), ".mkv": ("libx264", "h264", "mpeg4"), ".mov": ("libx264", "h264", "mpeg4"),
          ".avi": ("mpeg4",), ".webm": ("libvpx-vp9", "libvpx")}
DEFAULT_FPS = 30.0  # an annotated video of a source with no clock
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # matplotlib's tab10


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw_label(image: np.ndarray, text: str) -> np.ndarray:
    """The frame with ``text`` in white on a dark box at its top-left corner."""
    img = Image.fromarray(image)
    draw = ImageDraw.Draw(img)
    font = _font(max(10, img.height // 18))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, (bottom - top) // 4)
    draw.rectangle((0, 0, right - left + 2 * pad, bottom - top + 2 * pad), fill=(0, 0, 0))
    draw.text((pad - left, pad - top), text, fill=(255, 255, 255), font=font)
    return np.asarray(img)


def frame_text(label: str, score: float) -> str:
    return f"{escaped(label)} {score:.2f}"


class VideoWriter:
    """Frames into a video file, written beside it and moved into place on ``close``, so a stream stopped
    half-way leaves a complete (shorter) video or none, never a broken one. ``abort`` leaves none."""

    def __init__(self, path: str | os.PathLike, *, fps: float | None):
        from tl.runtime.files import atomic_path
        from tl.runtime.video import require_av

        self.av = require_av()
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in CODECS:
            raise TLError(f"--save-video {escaped(self.path)}: give a file ending in {', '.join(CODECS)}")
        self.codec = next((c for c in CODECS[suffix] if c in self.av.codecs_available), None)
        if self.codec is None:
            raise TLError(f"this FFmpeg has no encoder for {suffix} ({', '.join(CODECS[suffix])}); try .mp4 or .avi")
        self.fps = Fraction(fps or DEFAULT_FPS).limit_denominator(1001)
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._container = self.av.open(str(self._tmp), "w", format=suffix[1:].replace("mkv", "matroska"))
        self._stream = None
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        if self._stream is None:
            self._open_stream(image)
        if image.shape[:2] != (self._stream.height, self._stream.width):  # even sizes for 4:2:0; a sequence may vary
            image = np.asarray(Image.fromarray(image).resize((self._stream.width, self._stream.height)))
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def _open_stream(self, image: np.ndarray) -> None:
        self._stream = self._container.add_stream(self.codec, rate=self.fps)
        self._stream.width = max(2, image.shape[1] // 2 * 2)
        self._stream.height = max(2, image.shape[0] // 2 * 2)
        self._stream.pix_fmt = "yuv420p"

    def close(self) -> None:
        """Flush the encoder and publish the file (an empty stream publishes nothing)."""
        if self._container is None:
            return
        try:
            if self._stream is not None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
            self._container.close()
            self._container = None
        except BaseException as e:
            self.abort()
            raise TLError(f"could not write {escaped(self.path)}: {e}") from e
        if self.frames:
            self._atomic.__exit__(None, None, None)
        else:
            self.abort()

    def abort(self) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
            self._container = None
        with contextlib.suppress(TLError):
            self._atomic.__exit__(TLError, TLError("aborted"), None)


def timeline_image(times: Sequence[float], labels: Sequence[str], scores: Sequence[float], classes: Sequence[str],
                   *, title: str = "", size: tuple[int, int] = (1000, 320)) -> Image.Image:
    """Score over time as a line, the label as a coloured band under it, one colour per class."""
    width, height = size
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = _font(12)
    left, right, top, band_h, axis_h = 50, width - 150, 28, 24, 30
    bottom = height - band_h - axis_h - 10
    colour = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(classes)}
    t0, t1 = (min(times), max(times)) if times else (0.0, 1.0)
    span = (t1 - t0) or 1.0

    def x(t: float) -> float:
        return left + (t - t0) / span * (right - left)

    def y(s: float) -> float:
        return bottom - s * (bottom - top)

    draw.text((left, 6), escaped(title), fill=(0, 0, 0), font=font)
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    for s in (0.0, 0.5, 1.0):
        draw.line((left - 4, y(s), left, y(s)), fill=(0, 0, 0))
        draw.text((8, y(s) - 7), f"{s:.1f}", fill=(0, 0, 0), font=font)
    band_top = bottom + 8
    for i, (t, label) in enumerate(zip(times, labels)):  # each frame's colour until the next frame
        x1 = x(times[i + 1]) if i + 1 < len(times) else right
        draw.rectangle((x(t), band_top, max(x(t) + 1, x1), band_top + band_h), fill=colour.get(label, (0, 0, 0)))
    points = [(x(t), y(s)) for t, s in zip(times, scores)]
    if len(points) > 1:
        draw.line(points, fill=(0, 0, 0), width=2)
    elif points:
        draw.ellipse((points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2), fill=(0, 0, 0))
    axis_y = band_top + band_h + 4
    for k in range(6):
        t = t0 + span * k / 5
        draw.text((x(t) - 12, axis_y), f"{t:.1f}", fill=(0, 0, 0), font=font)
    draw.text((right - 60, axis_y + 14), "time (s)", fill=(0, 0, 0), font=font)
    for i, c in enumerate(classes[:14]):
        ly = top + i * 18
        draw.rectangle((right + 14, ly, right + 28, ly + 12), fill=colour[c])
        draw.text((right + 34, ly), escaped(c)[:16], fill=(0, 0, 0), font=font)
    draw.text((right + 14, bottom - 14), "line: score", fill=(0, 0, 0), font=font)
    return img


def save_timeline(path: str | os.PathLike, results, classes: Sequence[str], *, title: str = "") -> None:
    """The timeline PNG of FrameResults (time on x; the frame index where the source has no clock)."""
    from tl.runtime.files import atomic_path

    times = [r.time if r.time is not None else float(r.frame) for r in results]
    img = timeline_image(times, [r.label for r in results], [r.score for r in results], classes, title=title)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def annotated(results) -> Iterator[np.ndarray]:
    for r in results:
        yield draw_label(r.image, frame_text(r.label, r.score))
