"""Classify a stream of frames: decode | preprocess | infer, each stage on its own thread.

    with clf.stream("clip.mp4") as frames:
        for r in frames:                     # FrameResult(frame, time, label, score, top_k, ...)
            print(r.frame, r.time, r.label)
        print(frames.stats)                  # read, classified, dropped, skipped; why it stopped

The stages hand frames over through small bounded queues, so decoding the next frames and
preprocessing them overlap inference (ONNX Runtime, Pillow and FFmpeg release the GIL). A file
is read at the pace of inference, nothing lost, frames batched. A live source (a camera, an RTSP
stream) keeps its own clock: each queue holds one frame and a newer frame replaces a waiting one,
so results stay within about one inference of the present instead of falling further behind; the
replaced frames are counted as dropped. Frames go through ``tl.runtime.images`` like every image.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Iterator

from tl.runtime.errors import TLError, require

if TYPE_CHECKING:  # numpy and the decoders load with the stream, not with its options (`tl --help`)
    import numpy as np

    from tl.runtime.video import Frame, FrameSource

QUEUE_BATCHES = 2  # file mode: batches of frames each queue holds ahead of the next stage
LIVE_QUEUE = 1  # live mode: frames a queue holds; a newer one replaces it
POLL_S = 0.1  # how often a waiting stage looks whether the stream was closed


@dataclass(frozen=True)
class StreamOptions:
    every: int = 1  # classify every Nth frame read
    max_frames: int | None = None  # stop after this many frames read from the source
    max_seconds: float | None = None  # stop after this much of the source's time (wall time if it has no clock)
    batch_size: int | None = None  # frames per inference call from a file (None: the model's max batch, else 16)
    live: bool | None = None  # None: as the source says (cameras and rtsp are live, files are not)
    top_k: int = 5
    keep_images: bool = False  # each FrameResult carries its frame (to draw on it)

    def __post_init__(self) -> None:
        require((self.every >= 1, f"every must be at least 1 (got {self.every})"),
                (self.max_frames is None or self.max_frames >= 1, f"max_frames must be at least 1 (got {self.max_frames})"),
                (self.max_seconds is None or self.max_seconds > 0, f"max_seconds must be above 0 (got {self.max_seconds})"),
                (self.batch_size is None or self.batch_size >= 1, f"batch_size must be at least 1 (got {self.batch_size})"),
                (self.top_k >= 1, f"top_k must be at least 1 (got {self.top_k})"))


@dataclass(frozen=True)
class FrameResult:
    frame: int  # index of the frame in the source
    time: float | None  # its presentation time in seconds
    label: str
    index: int  # class index
    score: float  # softmax probability of the top class
    top_k: list[tuple[str, float]]
    latency_ms: float  # from the frame leaving the decoder to its result
    image: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"frame": self.frame, "time": self.time, "label": self.label, "index": self.index, "score": self.score,
                "top_k": [{"label": l, "score": s} for l, s in self.top_k], "latency_ms": round(self.latency_ms, 3)}


@dataclass
class StreamStats:
    source: str
    live: bool
    batch_size: int
    frames_read: int = 0
    frames_classified: int = 0
    frames_dropped: int = 0  # live mode: replaced by a newer frame before inference reached them
    frames_skipped: int = 0  # not every Nth frame
    stopped: str = "running"  # end | max_frames | max_seconds | closed | error
    error: str | None = None
    elapsed_s: float = 0.0

    @property
    def fps(self) -> float:
        return self.frames_classified / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "fps": round(self.fps, 3)}


@dataclass(frozen=True)
class _Item:
    frame: Frame
    decoded: float  # perf_counter when the decoder handed it on
    array: np.ndarray | None = None  # preprocessed CHW float32


@dataclass(frozen=True)
class _End:
    reason: str
    error: TLError | None = None


class _Channel:
    """A bounded queue between two stages. Blocking (file mode), or replacing the oldest waiting item when
    full (live mode), counting what it replaced. End markers are never replaced. Waits wake on close."""

    def __init__(self, size: int, *, replace: bool, closed: threading.Event):
        self.items: collections.deque = collections.deque()
        self.size, self.replace, self.closed = size, replace, closed
        self.cond = threading.Condition()
        self.replaced = 0

    def put(self, item, *, force: bool = False) -> None:
        with self.cond:
            while not force and len(self.items) >= self.size and not self.closed.is_set():
                if self.replace and isinstance(self.items[0], _Item):
                    self.items.popleft()
                    self.replaced += 1
                else:
                    self.cond.wait(POLL_S)
            self.items.append(item)
            self.cond.notify_all()

    def get(self, *, wait: bool = True):
        """The next item; None when not waiting and there is none, or when closed."""
        with self.cond:
            while not self.items:
                if not wait or self.closed.is_set():
                    return None
                self.cond.wait(POLL_S)
            item = self.items.popleft()
            self.cond.notify_all()
            return item


class FrameStream:
    """Iterate for FrameResults; ``stats`` says what happened. A source error (a truncated file, a
    stream that stopped) is raised as a TLError after the results of the frames before it."""

    def __init__(self, clf, source: "FrameSource", options: StreamOptions = StreamOptions()):
        """``clf``: a tl.runtime.Classifier (its spec, predict_logits and postprocess)."""
        from tl.runtime.backends.registry import DEFAULT_BATCH_SIZE

        self.clf, self.source, self.options = clf, source, options
        self.live = source.live if options.live is None else options.live
        batch = 1 if self.live else int(options.batch_size or clf.max_batch or DEFAULT_BATCH_SIZE)
        self.stats = StreamStats(source=source.describe(), live=self.live, batch_size=batch)
        self._closed = threading.Event()
        size = LIVE_QUEUE if self.live else QUEUE_BATCHES * batch
        self._decoded = _Channel(size, replace=self.live, closed=self._closed)
        self._ready = _Channel(size, replace=self.live, closed=self._closed)
        self._results: queue.Queue = queue.Queue(maxsize=max(size, batch))
        self._start = time.perf_counter()
        self._finished = False
        self._threads = [threading.Thread(target=self._guard, args=(stage,), name=f"tl-stream-{stage.__name__[1:]}",
                                          daemon=True) for stage in (self._decode, self._preprocess, self._infer)]
        for t in self._threads:
            t.start()

    # -- the three stages ---------------------------------------------------------------
    def _guard(self, stage) -> None:
        """A stage's unexpected exception still ends the stream (as an error), never hangs the reader."""
        try:
            stage()
        except BaseException as e:  # noqa: BLE001 - handed to the reader, who raises it
            self._results.put(_End("error", e if isinstance(e, TLError) else TLError(f"stream stage failed: {e!r}")))
            self._closed.set()

    def _decode(self) -> None:
        o, stats = self.options, self.stats
        end = _End("end")
        first_time, wall0 = None, time.perf_counter()
        try:
            for frame in self.source.frames():
                if self._closed.is_set():
                    end = _End("closed")
                    break
                if first_time is None:
                    first_time = frame.time
                clock = frame.time - first_time if frame.time is not None and first_time is not None \
                    else time.perf_counter() - wall0
                if o.max_seconds is not None and clock >= o.max_seconds:
                    end = _End("max_seconds")
                    break
                stats.frames_read += 1
                if (stats.frames_read - 1) % o.every:  # keep the 1st, (N+1)th, (2N+1)th ... frame read
                    stats.frames_skipped += 1
                else:
                    self._decoded.put(_Item(frame, time.perf_counter()))
                if o.max_frames is not None and stats.frames_read >= o.max_frames:
                    end = _End("max_frames")
                    break
        except TLError as e:
            end = _End("error", e)
        finally:
            self.source.close()
            self._decoded.put(end, force=True)

    def _preprocess(self) -> None:
        from tl.runtime.images import preprocess_one

        spec = self.clf.spec
        while True:
            item = self._decoded.get()
            if item is None:
                return
            if isinstance(item, _End):
                self._ready.put(item, force=True)
                return
            array = preprocess_one(item.frame.image, spec)
            self._ready.put(_Item(item.frame, item.decoded, array))

    def _infer(self) -> None:
        while True:
            batch, end = self._next_batch()
            if batch:
                self._classify(batch)
            if end is not None or self._closed.is_set():
                self._put_result(end or _End("closed"))
                return

    def _next_batch(self) -> tuple[list[_Item], _End | None]:
        first = self._ready.get()
        if first is None or isinstance(first, _End):
            return [], first
        batch = [first]
        while len(batch) < self.stats.batch_size:  # a file waits to fill the batch; live mode runs batch 1
            item = self._ready.get()
            if item is None or isinstance(item, _End):
                return batch, item
            batch.append(item)
        return batch, None

    def _classify(self, batch: list[_Item]) -> None:
        import numpy as np

        logits = self.clf.predict_logits(np.stack([i.array for i in batch]))
        preds = self.clf.postprocess(logits, top_k=self.options.top_k)
        done = time.perf_counter()
        keep = self.options.keep_images
        for item, p in zip(batch, preds):
            self._put_result(FrameResult(item.frame.index, item.frame.time, p.label, p.index, p.score, p.top_k,
                                         (done - item.decoded) * 1000.0, item.frame.image if keep else None))

    def _put_result(self, result) -> None:
        while True:
            try:
                self._results.put(result, timeout=POLL_S)
                return
            except queue.Full:
                if self._closed.is_set() and not isinstance(result, _End):
                    return

    # -- the reader's side -----------------------------------------------------------------
    def __iter__(self) -> Iterator[FrameResult]:
        while not self._finished:
            try:
                item = self._results.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if isinstance(item, _End):
                self._finish(item)
                if item.error is not None:
                    raise item.error
                return
            self.stats.frames_classified += 1
            yield item

    def _finish(self, end: _End) -> None:
        self._finished = True
        self.stats.stopped = end.reason
        self.stats.error = str(end.error) if end.error is not None else None
        self.stats.elapsed_s = time.perf_counter() - self._start
        self.stats.frames_dropped = self._decoded.replaced + self._ready.replaced
        self._closed.set()

    def close(self) -> None:
        """Stop reading (the decoder closes the source after its current frame); safe to call twice."""
        if not self._finished:
            self._finish(_End("closed"))
        self._closed.set()
        for t in self._threads:
            t.join(timeout=2.0)  # a camera or network read returns within its frame interval or timeout

    def __enter__(self) -> "FrameStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def segments(results: list[FrameResult]) -> list[dict]:
    """The label timeline: runs of consecutive classified frames with one label."""
    out: list[dict] = []
    for r in results:
        if out and out[-1]["label"] == r.label:
            seg = out[-1]
            seg.update(end_frame=r.frame, end=r.time, frames=seg["frames"] + 1)
            seg["score_sum"] += r.score
        else:
            out.append({"label": r.label, "start_frame": r.frame, "end_frame": r.frame, "start": r.time,
                        "end": r.time, "frames": 1, "score_sum": r.score})
    for seg in out:
        seg["mean_score"] = round(seg.pop("score_sum") / seg["frames"], 6)
    return out


def summary(results: list[FrameResult], stats: StreamStats) -> dict:
    """What a stream gave: counts, labels and their timeline, latency, why it stopped."""
    import numpy as np

    counts = collections.Counter(r.label for r in results)
    latency = np.array([r.latency_ms for r in results]) if results else np.zeros(0)
    return {**stats.to_dict(), "labels": dict(counts.most_common()), "segments": segments(results),
            "latency_ms": {"p50": float(np.percentile(latency, 50)), "p95": float(np.percentile(latency, 95)),
                           "max": float(latency.max())} if results else None}
