"""Classifier: load any tl artifact by its file and classify images, with no torch.

    clf = Classifier.load("exports/x/model.int8.onnx")
    for p in clf.predict(["cat.jpg", "dog.png"]):
        print(p.label, p.score)

The backend (ONNX Runtime or TensorRT; OpenVINO on request) is chosen by file suffix through the registry in
``tl.runtime.backends``; labels and preprocessing come from the ModelSpec the artifact carries.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from tl.runtime import images
from tl.runtime.backends import Backend, entry_for, load_backend
from tl.runtime.backends.registry import DEFAULT_BATCH_SIZE
from tl.runtime.errors import TLError
from tl.runtime.spec import ModelSpec, require_regular_file

__all__ = ["DEFAULT_BATCH_SIZE", "Classifier", "Prediction", "softmax"]


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float  # softmax probability of the top class
    top_k: list[tuple[str, float]] = field(default_factory=list)
    source: str | None = None  # the file path, or None for in-memory images

    def to_dict(self) -> dict:
        return {"source": self.source, "label": self.label, "index": self.index, "score": self.score,
                "top_k": [{"label": l, "score": s} for l, s in self.top_k]}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


class Classifier:
    """One model, one backend; ``predict`` takes paths, PIL images or uint8 HWC arrays.

    Thread-safe: ``predict``, ``predict_logits`` and ``device_compute_ms`` may be called from
    several threads. A TensorRT engine (one execution context, one set of pinned buffers) and
    an OpenVINO model (one infer request) run one call at a time behind a lock; ONNX Runtime
    sessions run concurrent calls as they are. For parallel TensorRT inference, load one
    Classifier per thread (each has its own context and buffers).
    """

    def __init__(self, backend: Backend):
        self.backend = backend
        concurrent = getattr(backend, "concurrent_run", False)
        self._lock = contextlib.nullcontext() if concurrent else threading.Lock()

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str = "auto", providers=None, device: int = 0,
             spec: ModelSpec | str | os.PathLike | None = None, *, intra_op_threads: int | None = None,
             cache_dir: str | os.PathLike | None = None, inference_precision: str | None = None,
             hint: str | None = None, precision: str | None = None) -> "Classifier":
        """``path``: .onnx (ONNX Runtime, or OpenVINO with backend="openvino") or .plan/.engine
        (TensorRT + its .json sidecar).

        spec: a ModelSpec or spec.json for files that carry none (an ONNX from elsewhere).
        providers: ONNX Runtime only; None/"auto" = CUDA -> CPU, or e.g. "cpu"; the TensorRT EP only when
        named ("trt,cuda,cpu": it builds an engine inside ONNX Runtime on first use, minutes on a Jetson).
        inference_precision, hint: OpenVINO only; what it computes an FP32 model in, f32 (default) |
        bf16 | f16 | default (OpenVINO's choice: bf16 on AMX CPUs), and the latency (default) |
        throughput hint. ``precision`` is the older spelling of ``inference_precision``; the
        loaded Classifier's ``precision`` is what really runs (fp32, fp16, int8, bf16).
        """
        path = Path(path)
        if path.is_dir():
            raise TLError(f"{path} is a folder; pass a model file (e.g. {path / 'model.onnx'})")
        require_regular_file(path, "model")  # a FIFO would block the read, a device never end
        if intra_op_threads is not None and int(intra_op_threads) < 1:
            raise TLError(f"intra_op_threads must be at least 1 (got {intra_op_threads}); None uses every core")
        if isinstance(spec, (str, os.PathLike)):
            spec = ModelSpec.load(spec)
        options = {"spec": spec, "providers": providers, "device": device}
        if intra_op_threads is not None:
            options["intra_op_threads"] = intra_op_threads
        if cache_dir is not None:
            options["cache_dir"] = cache_dir
        if precision is not None and inference_precision is None:
            inference_precision = precision
        options.update(_openvino_options(path, backend, inference_precision=inference_precision, hint=hint))
        return cls(load_backend(path, backend=backend, **options))

    # -- what was loaded ---------------------------------------------------------------
    @property
    def spec(self) -> ModelSpec:
        return self.backend.spec

    @property
    def path(self) -> Path:
        return self.backend.path

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def providers(self) -> list[str]:
        return list(self.backend.providers)

    @property
    def precision(self) -> str:
        return self.backend.precision

    @property
    def max_batch(self) -> int | None:
        return self.backend.max_batch

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    def __repr__(self) -> str:
        return (f"Classifier({str(self.path)!r}, backend={self.backend_name!r}, precision={self.precision!r}, "
                f"providers={self.providers}, classes={len(self.classes)})")

    # -- the three steps -------------------------------------------------------------
    def preprocess(self, inputs) -> np.ndarray:
        """Inputs -> NCHW float32, through the one pipeline training also uses."""
        return images.preprocess(inputs, self.spec)

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> (N, num_classes) float32; split above max_batch, pad below min_batch."""
        batch = np.asarray(batch)
        expected = (self.spec.input.channels, self.spec.input.height, self.spec.input.width)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise TLError(f"expected a batch of shape (N, {', '.join(map(str, expected))}), got {tuple(batch.shape)}; "
                          "use Classifier.preprocess for images")
        n = batch.shape[0]
        if n == 0:
            return np.zeros((0, self.spec.num_classes), dtype=np.float32)
        step = self.max_batch or n
        lo = max(1, self.backend.min_batch)
        outs = []
        for start in range(0, n, step):
            chunk = batch[start:start + step]
            k = chunk.shape[0]
            if k < lo:  # e.g. a fixed-batch model: pad with copies, keep the first k rows
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], lo - k, axis=0)])
            with self._lock:
                outs.append(self.backend.run(chunk)[:k])
        logits = np.concatenate(outs).astype(np.float32, copy=False)
        if logits.shape != (n, self.spec.num_classes):
            raise TLError(f"{self.path}: the model returned shape {logits.shape}, but its spec has "
                          f"{self.spec.num_classes} classes; the spec does not belong to this model")
        return logits

    def postprocess(self, logits: np.ndarray, *, top_k: int = 5,
                    sources: Sequence[str | None] | None = None) -> list[Prediction]:
        """Logits -> one Prediction per row (softmax in numpy, top-k sorted by score)."""
        if top_k < 1:
            raise TLError(f"top_k must be at least 1 (got {top_k})")
        k = min(int(top_k), self.spec.num_classes)
        probs = softmax(logits)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        sources = list(sources) if sources is not None else [None] * len(probs)
        preds = []
        for row, idx, src in zip(probs, order, sources):
            tk = [(self.classes[i], float(row[i])) for i in idx]
            preds.append(Prediction(label=tk[0][0], index=int(idx[0]), score=tk[0][1], top_k=tk, source=src))
        return preds

    def predict(self, inputs, top_k: int = 5, batch_size: int | None = None) -> list[Prediction]:
        """Paths / PIL images / uint8 arrays -> Predictions, preprocessing ``batch_size`` at a time."""
        if images.is_one_image(inputs) or not isinstance(inputs, Iterable):
            inputs = [inputs]
        inputs = list(inputs)
        if batch_size is not None and int(batch_size) < 1:
            raise TLError(f"batch_size must be at least 1 (got {batch_size}); None uses the model's max batch")
        size = int(batch_size or self.max_batch or DEFAULT_BATCH_SIZE)
        preds: list[Prediction] = []
        for start in range(0, len(inputs), size):
            chunk = inputs[start:start + size]
            logits = self.predict_logits(self.preprocess(chunk))
            preds += self.postprocess(logits, top_k=top_k, sources=[_source_name(x) for x in chunk])
        return preds

    def stream(self, source, *, every: int = 1, max_frames: int | None = None, max_seconds: float | None = None,
               batch_size: int | None = None, live: bool | None = None, top_k: int = 5, keep_images: bool = False,
               timeout: float | None = None, fps: float | None = None):
        """Classify a video file, URL, camera (``/dev/video0`` or ``0``), image glob or folder, GStreamer
        pipeline or an iterable of images, frame by frame: a ``tl.runtime.stream.FrameStream`` of
        FrameResults (frame index, time, label, score, top-k), decoding, preprocessing and inference
        overlapped. Files are batched; live sources (cameras, rtsp) drop stale frames instead of falling
        behind (``live`` overrides which is which). Use it in a ``with`` block or call ``close()``.
        ``timeout``: seconds a network source may take to answer; ``fps``: the clock of an image sequence.
        """
        from tl.runtime.stream import FrameStream, StreamOptions
        from tl.runtime.video import OPEN_TIMEOUT, open_source

        options = StreamOptions(every=every, max_frames=max_frames, max_seconds=max_seconds, batch_size=batch_size,
                                live=live, top_k=top_k, keep_images=keep_images)
        return FrameStream(self, open_source(source, live=live, timeout=timeout or OPEN_TIMEOUT, fps=fps), options)

    def device_compute_ms(self, batch: np.ndarray, iters: int = 50) -> list[float] | None:
        """Device time per call, back to back, input on the GPU; None where the backend cannot tell."""
        with self._lock:
            return self.backend.device_compute_ms(batch, iters)

    # -- lifetime -------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:  # never while another thread's call uses the buffers
            self.backend.close()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _openvino_options(path: Path, backend: str, **given) -> dict:
    """inference_precision= and hint= for the openvino backend; an error for any other, rather than ignored."""
    given = {k: v for k, v in given.items() if v is not None}
    if given and entry_for(path, backend).name != "openvino":
        raise TLError(f"{' and '.join(f'{k}=' for k in given)} apply to the openvino backend only "
                      "(Classifier.load(path, backend='openvino', ...))")
    return given


def _source_name(x) -> str | None:
    return str(x) if isinstance(x, (str, os.PathLike)) else None
