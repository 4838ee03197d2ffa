"""Frame sources: video files, network streams, V4L2 cameras, image sequences, GStreamer pipelines.

    src = open_source("clip.mp4")            # or "rtsp://cam/1", "/dev/video0", "0", "frames/*.png"
    for frame in src.frames():               # Frame(index, time, image: uint8 HxWx3 RGB)
        ...

Decoding runs on PyAV (the ``video`` extra): its wheels carry FFmpeg, so files, http(s)/rtsp and
V4L2 cameras work from ``pip install`` alone, and it gives each frame's presentation time. A
GStreamer pipeline string (and ``csi://N``, a Jetson's CSI camera) goes to OpenCV instead, since
that is where GStreamer is built in on a Jetson (apt's python3-opencv); pip's OpenCV wheels lack it.
No torch here.
"""

from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from tl.runtime.errors import TLError, escaped

if TYPE_CHECKING:  # numpy loads with the frames, not with the constants (`tl --help`)
    import numpy as np

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".ts", ".m2ts", ".flv",
                  ".wmv", ".3gp", ".ogv", ".mjpeg", ".h264", ".h265", ".hevc")
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
# Schemes that carry a live stream: a reader that falls behind sees ever older frames. http(s) mostly
# serves files, read at the pace of inference; ``live=True`` says otherwise (an MJPEG camera).
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "udp", "tcp", "srt")
SEQUENCE_FPS = 30.0  # the timestamps of an image sequence, which has no clock of its own
OPEN_TIMEOUT = 10.0  # seconds a network source may take to answer, to open and then per read
CAMERA_PREFIX = "/dev/video"
GSTREAMER_CSI = ("nvarguscamerasrc sensor-id={id} ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1"
                 " ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR"
                 " ! appsink drop=true max-buffers=1")
VIDEO_EXTRA = "pip install 'tl[video]' (the video extra: PyAV)"


@dataclass(frozen=True)
class Frame:
    index: int  # position in the source, from 0, counting every decoded frame
    time: float | None  # presentation time in seconds (None: the source has no clock)
    image: np.ndarray  # uint8 HxWx3 RGB


class FrameSource:
    """Where frames come from. ``live``: the source runs on its own clock (a camera, an RTSP stream), so a
    reader that falls behind must drop frames; otherwise frames wait to be read (a file)."""

    kind = "frames"
    live = False

    def __init__(self, name: str):
        self.name = name
        self.fps: float | None = None

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or connection; safe to call twice."""

    def describe(self) -> str:
        return f"{self.kind} {escaped(self.name)}"


def source_kind(text: str | os.PathLike) -> str | None:
    """What a source string names: url, camera, gstreamer, sequence (a glob or a folder), video (a file
    with a video suffix, or an existing file that is no image); None for an image file."""
    from tl.runtime.images import is_image_file

    text = os.fspath(text)
    scheme = text.split("://", 1)[0].lower() if "://" in text else None
    if scheme == "csi" or " ! " in text:
        return "gstreamer"
    if scheme in NETWORK_SCHEMES:
        return "url"
    if text.isdigit() or text.startswith(CAMERA_PREFIX):
        return "camera"
    if glob.has_magic(text) and not Path(text).exists():
        return "sequence"
    path = Path(text)
    if path.is_dir():
        return "sequence"
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return "video"
    if is_image_file(path):
        return None
    return "video" if path.is_file() and _looks_like_video(path) else None


def _looks_like_video(path: Path) -> bool:
    """A file with no known suffix: a video if FFmpeg finds a video stream in it (not read as an image)."""
    try:
        import av
    except ImportError:
        return False
    try:
        with av.open(str(path)) as c:
            return bool(c.streams.video)
    except Exception:  # anything FFmpeg cannot open is left to the image path, which names the problem
        return False


def open_source(source, *, live: bool | None = None, timeout: float = OPEN_TIMEOUT,
                fps: float | None = None) -> FrameSource:
    """A FrameSource for a path, URL, camera (``/dev/videoN`` or ``N``), glob, folder, GStreamer pipeline,
    or an iterable of images (numpy arrays or PIL images); a FrameSource is returned as it is.

    live: None decides by the kind (cameras, rtsp/rtmp/udp streams and GStreamer pipelines are live).
    fps: the clock of an image sequence or of in-memory frames (their timestamps).
    """
    if isinstance(source, FrameSource):
        return source
    if not isinstance(source, (str, os.PathLike)):
        if isinstance(source, Iterable):
            return ArraySource(source, fps=fps, live=bool(live))
        raise TLError(f"cannot stream from {type(source).__name__}; give a video file, URL, camera, "
                      "image glob or folder, or an iterable of images")
    text = os.fspath(source)
    if not text:
        raise TLError("the source is empty; give a video file, URL, camera (/dev/video0) or image glob")
    kind = source_kind(text)
    if kind == "gstreamer":
        return GStreamerSource(text, live=True if live is None else live)
    if kind == "sequence":
        return ImageSequence(text, fps=fps or SEQUENCE_FPS)
    if kind == "camera":
        device = f"{CAMERA_PREFIX}{text}" if text.isdigit() else text
        return AVSource(device, kind="camera", live=True if live is None else live, timeout=timeout)
    if kind == "url":
        scheme = text.split("://", 1)[0].lower()
        return AVSource(text, kind="url", live=(scheme in LIVE_SCHEMES) if live is None else live, timeout=timeout)
    path = Path(text)
    if not path.exists():
        raise TLError(f"not found: {escaped(text)}")
    if path.is_dir() or not path.is_file():
        raise TLError(f"{escaped(text)}: not a video file")
    return AVSource(text, kind="video", live=bool(live), timeout=timeout)


def require_av():
    try:
        import av
    except ImportError:
        raise TLError(f"video files, cameras and network streams need PyAV: {VIDEO_EXTRA}") from None
    return av


class AVSource(FrameSource):
    """A file, URL or V4L2 camera through FFmpeg (PyAV). Opened at construction, so a bad source fails
    before any work starts; decoding errors after the first frame end the iteration with a TLError
    that says how far it got."""

    def __init__(self, location: str, *, kind: str, live: bool, timeout: float = OPEN_TIMEOUT):
        super().__init__(location)
        self.kind, self.live, self.timeout = kind, live, timeout
        av = require_av()
        options = {}
        if location.lower().startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = "tcp"  # UDP loses packets on busy links: smeared frames, not errors
        if live:
            options.update(fflags="nobuffer", flags="low_delay")
        fmt = "v4l2" if kind == "camera" else None
        try:
            self.container = av.open(location, format=fmt, options=options, timeout=(timeout, timeout))
        except Exception as e:
            raise TLError(self._open_error(e)) from e
        if not self.container.streams.video:
            self.container.close()
            raise TLError(f"{self.describe()}: has no video stream (audio only?)")
        self.stream = self.container.streams.video[0]
        # Frame threads hold frames back to decode ahead: more frames/s from a file, a latency a live source avoids.
        self.stream.thread_type = "SLICE" if live else "AUTO"
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate else None
        self.duration = self.container.duration / 1e6 if self.container.duration else None
        self.declared_frames = int(self.stream.frames or 0)

    def _open_error(self, e: Exception) -> str:
        what = self.describe()
        errno = getattr(e, "errno", None)
        if self.kind == "camera":
            if isinstance(e, FileNotFoundError) or errno == 2:
                found = sorted(glob.glob(CAMERA_PREFIX + "*"))
                return (f"{what}: no such camera (cameras here: {', '.join(found)})" if found
                        else f"{what}: no such camera (no /dev/video* devices on this machine)")
            if errno == 16:
                return f"{what}: the camera is busy (another program has it open); close that program"
            if isinstance(e, PermissionError) or errno == 13:
                return f"{what}: permission denied; add your user to the video group"
            return f"{what}: cannot open the camera ({_reason(e)})"
        if self.kind == "url":
            if type(e).__name__ == "ExitError" or errno in (110, 1414092869):
                return f"{what}: no answer within {self.timeout:g} s (unreachable host or stalled server)"
            return f"{what}: cannot open the stream ({_reason(e)})"
        if isinstance(e, PermissionError):
            return f"{what}: cannot be read: permission denied"
        return (f"{what}: not a readable video ({_reason(e)}); give a video file (mp4, mkv, avi, webm, ...) "
                "or, if it was cut short, a complete copy")

    def describe(self) -> str:
        return {"video": escaped(self.name)}.get(self.kind, f"{self.kind} {escaped(self.name)}")

    def frames(self) -> Iterator[Frame]:
        count, last = 0, None
        try:
            for frame in self.container.decode(self.stream):
                last = frame.time
                yield Frame(count, last, frame.to_ndarray(format="rgb24"))
                count += 1
        except TLError:
            raise
        except Exception as e:
            raise TLError(self._stopped(count, last, _reason(e))) from e
        short = self._short(count, last)
        if short:
            raise TLError(self._stopped(count, last, short))

    def _stopped(self, count: int, last: float | None, why: str) -> str:
        at = f" ({last:.2f} s)" if last is not None else ""
        if self.kind == "video":
            return f"{self.describe()}: damaged or truncated after frame {count}{at}: {why}"
        return f"{self.describe()}: the stream stopped after frame {count}{at}: {why}"

    def _short(self, count: int, last: float | None) -> str | None:
        """Why an end of file came early (a truncated file FFmpeg reads without complaint), or None."""
        if self.live:
            return None
        if self.declared_frames and count < self.declared_frames:
            return f"the container declares {self.declared_frames} frames"
        if self.duration and last is not None and self.fps:
            step = 1.0 / self.fps
            if self.duration - (last + step) > max(2 * step, 0.25):
                return f"it ends at {last + step:.2f} s of the {self.duration:.2f} s its container declares"
        if count == 0:
            return "no frame could be decoded"
        return None

    def close(self) -> None:
        self.container.close()


def _reason(e: Exception) -> str:
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return escaped(text)


class ImageSequence(FrameSource):
    """Image files in name order, from a glob (``frames/*.png``) or a folder (its images, not walked)."""

    kind = "sequence"

    def __init__(self, pattern: str, *, fps: float = SEQUENCE_FPS):
        from tl.runtime.images import is_image_file

        super().__init__(pattern)
        self.fps = float(fps)
        path = Path(pattern)
        found = sorted(path.iterdir()) if path.is_dir() else sorted(map(Path, glob.glob(pattern)))
        self.files = [f for f in found if f.is_file() and is_image_file(f)]
        if not self.files:
            raise TLError(f"{escaped(pattern)}: no image files match (jpg, png, ...); give a glob like 'frames/*.png' "
                          "(quoted, so the shell leaves it to tl) or a folder of images")

    def frames(self) -> Iterator[Frame]:
        import numpy as np

        from tl.runtime.images import load_image

        for i, f in enumerate(self.files):
            try:
                image = np.asarray(load_image(f))
            except TLError as e:
                raise TLError(f"{self.describe()}: stopped at frame {i}: {e}") from e
            yield Frame(i, i / self.fps, image)


class ArraySource(FrameSource):
    """In-memory frames (uint8 HxWx3 arrays or PIL images), e.g. from a capture loop of your own."""

    kind = "frames"

    def __init__(self, frames: Iterable, *, fps: float | None = None, live: bool = False, name: str = "<frames>"):
        super().__init__(name)
        self._frames, self.fps, self.live = frames, fps, live

    def frames(self) -> Iterator[Frame]:
        import numpy as np

        from tl.runtime.images import load_image

        for i, x in enumerate(self._frames):
            image = x if _is_rgb(x) else np.asarray(load_image(x))
            yield Frame(i, i / self.fps if self.fps else None, image)


def _is_rgb(x) -> bool:
    import numpy as np

    return isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 3 and x.shape[2] == 3


class GStreamerSource(FrameSource):
    """A GStreamer pipeline ending in appsink, through OpenCV built with GStreamer (a Jetson's apt OpenCV);
    ``csi://N`` is the CSI camera N through nvarguscamerasrc."""

    kind = "gstreamer"

    def __init__(self, pipeline: str, *, live: bool = True):
        super().__init__(pipeline)
        self.live = live
        if pipeline.lower().startswith("csi://"):
            pipeline = GSTREAMER_CSI.format(id=int(pipeline[6:] or 0))
        self.cv2 = _require_gstreamer()
        self.capture = self.cv2.VideoCapture(pipeline, self.cv2.CAP_GSTREAMER)
        if not self.capture.isOpened():
            raise TLError(f"{self.describe()}: GStreamer could not start the pipeline; try it with gst-launch-1.0 "
                          "(it must end in appsink and give BGR frames)")
        self.fps = self.capture.get(self.cv2.CAP_PROP_FPS) or None

    def frames(self) -> Iterator[Frame]:
        import numpy as np

        count = 0
        while True:
            ok, bgr = self.capture.read()
            if not ok:
                return  # the pipeline reached its end (EOS) or its source went away
            yield Frame(count, self.capture.get(self.cv2.CAP_PROP_POS_MSEC) / 1000.0 or None,
                        np.ascontiguousarray(bgr[:, :, ::-1]))
            count += 1

    def close(self) -> None:
        self.capture.release()


def _require_gstreamer():
    try:
        import cv2
    except ImportError:
        raise TLError("GStreamer pipelines (and csi://) need OpenCV built with GStreamer, e.g. a Jetson's "
                      "apt package python3-opencv; pip's opencv wheels lack GStreamer") from None
    info = cv2.getBuildInformation()
    line = next((l for l in info.splitlines() if l.strip().startswith("GStreamer:")), "")
    if "YES" not in line:
        raise TLError(f"this OpenCV ({cv2.__version__}) was built without GStreamer; GStreamer pipelines need one "
                      "built with it (a Jetson's apt python3-opencv), or give the camera as /dev/videoN")
    return cv2


class Paced(FrameSource):
    """Another source's frames at the pace of their timestamps, as a live source: a camera made of a file,
    to see what live mode does with a clock it cannot slow down."""

    live = True

    def __init__(self, inner: FrameSource, *, fps: float | None = None):
        super().__init__(inner.name)
        self.inner, self.kind = inner, inner.kind
        self.fps = fps or inner.fps or SEQUENCE_FPS

    def frames(self) -> Iterator[Frame]:
        start = time.perf_counter()
        for frame in self.inner.frames():
            delay = start + frame.index / self.fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            yield frame

    def close(self) -> None:
        self.inner.close()
