"""model.onnx -> model.int8.onnx: QDQ, symmetric INT8 activations and weights, per-channel weights.

QDQ (QuantizeLinear/DequantizeLinear pairs around FP32 ops) is the one INT8 format that
both ONNX Runtime (fused into QLinearConv/MatMulInteger kernels) and TensorRT (explicit
quantization, the only INT8 route left in TensorRT 11) consume. Symmetric INT8 (zero
points all 0) is what TensorRT requires. ``reduce_range`` (7-bit weights) is for x86 CPUs
without VNNI, where ONNX Runtime's INT8 kernels can saturate (tl.export.cpuflags).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tl.export.onnx import save_model, set_metadata
from tl.export.options import CALIB_METHODS, IMAGE_COUNT
from tl.runtime.artifact import CHECKPOINT_KEY, MAX_BATCH_KEY, onnx_metadata, spec_from_metadata
from tl.runtime.errors import TLError
from tl.runtime.progress import SILENT, Reporter
from tl.runtime.spec import ModelSpec

CALIB_BATCH = 8
ORT_METHODS = tuple(m for m in CALIB_METHODS if m != "auto")  # the ones ONNX Runtime implements


@dataclass(frozen=True)
class CalibOptions:
    count: int = IMAGE_COUNT
    method: str = "minmax"
    batch_size: int = CALIB_BATCH
    seed: int = 0
    percentile: float = 99.999
    reduce_range: bool = False  # 7-bit weights: see tl.export.cpuflags


def calibration_images(*, calib_dir: str | Path | None, ckpt: dict[str, Any] | None, count: int, seed: int = 0) -> list[Path]:
    """Up to ``count`` image paths: --calib-dir, else the training images recorded in the checkpoint.

    A fixed-seed sample spread over all classes, so two exports calibrate identically.
    """
    from tl.runtime.images import images_in_folder, sample_files

    if count < 1:
        raise TLError(f"--calib-count must be at least 1 (got {count})")
    if calib_dir is not None:
        files = images_in_folder(calib_dir, option="--calib-dir")
    else:
        files, where = _checkpoint_train_images(ckpt or {})
        if not files:
            raise TLError(
                "INT8 calibration needs images and the checkpoint's training data "
                f"{'(' + where + ') ' if where else ''}is not available; pass --calib-dir FOLDER"
            )
    return sample_files(files, count, seed=seed)


def _checkpoint_train_images(ckpt: dict[str, Any]) -> tuple[list[Path], str]:
    from tl.runtime.images import list_images

    data = ckpt.get("data") or {}
    files = [Path(f) for f in data.get("train_files") or [] if Path(f).is_file()]
    if files:
        return files, str(data.get("train_dir") or "")
    candidates = [data.get("train_dir")]
    arg_root = (ckpt.get("args") or {}).get("data")
    if isinstance(arg_root, str):
        candidates += [str(Path(arg_root) / "train"), arg_root]
    for c in candidates:
        if c and Path(c).is_dir():
            found = list_images(c)
            if found:
                return found, str(c)
    where = next((str(c) for c in candidates if c), "")
    return [], where


class ImageCalibrationReader:
    """onnxruntime CalibrationDataReader over image files, through the runtime's one pipeline.

    Batches are kept once decoded, so ``rewind`` + another calibration (``--calib-method auto``
    tries three) does not decode the images again. ``len`` and ``set_range`` count batches: ORT's
    strided calibration (``CalibStridedMinMax``) hands its calibrator one batch at a time, so the
    activations it holds are one batch's, not every calibration image's (ORT's histogram
    calibrators otherwise keep every output until the reader ends: tens of GB for a large model).
    """

    def __init__(self, files: Sequence[Path], spec: ModelSpec, *, batch_size: int = CALIB_BATCH, task=None):
        self.files = list(files)
        self.spec = spec
        self.batch_size = batch_size
        self.task = task
        self._pos, self._end = 0, len(self.files)
        self._batches: list[np.ndarray] = []

    def get_next(self) -> dict[str, np.ndarray] | None:
        from tl.runtime.images import preprocess

        if self._pos >= self._end:
            return None
        index = self._pos // self.batch_size
        chunk = self.files[self._pos : min(self._pos + self.batch_size, self._end)]
        self._pos += len(chunk)
        while index >= len(self._batches):  # decoded in order, once
            at = len(self._batches) * self.batch_size
            self._batches.append(preprocess(self.files[at : at + self.batch_size], self.spec))
        if self.task is not None:
            self.task.advance(len(chunk))
        return {self.spec.input.name: self._batches[index]}

    def rewind(self, task=None) -> None:
        self._pos, self._end = 0, len(self.files)
        self.task = task

    def set_range(self, start_index: int, end_index: int) -> None:
        """Batches ``start_index`` up to ``end_index`` (ORT's strided calibration)."""
        self._pos = start_index * self.batch_size
        self._end = min(end_index * self.batch_size, len(self.files))

    @property
    def images(self) -> int:
        return len(self.files)

    def __len__(self) -> int:
        """Batches, the unit of ``set_range``."""
        return -(-len(self.files) // self.batch_size)


def quantize_int8(src: str | Path, path: str | Path, *, files: Sequence[Path], options: CalibOptions = CalibOptions(),
                  reporter: Reporter = SILENT) -> dict[str, Any]:
    """FP32 ONNX ``src`` -> QDQ INT8 ``path`` with one calibration method; returns :meth:`Quantizer.record`."""
    if options.method not in ORT_METHODS:
        raise TLError(f"--calib-method must be one of {', '.join(ORT_METHODS)} (got {options.method!r})")
    with Quantizer(src, path, files=files, options=options) as q:
        t1 = time.perf_counter()
        out = q.quantize(options.method, reporter)
        t2 = time.perf_counter()
        os.replace(out, path)
    return q.record(options.method, t2 - t1)


class Quantizer:
    """One FP32 source prepared once (ORT's quant_pre_process), quantized with one or more calibration methods.

    Works in a temp folder beside ``path``, so an interrupted export leaves nothing behind, and
    keeps one calibration reader whose decoded images every method re-reads.
    """

    def __init__(self, src: str | Path, path: str | Path, *, files: Sequence[Path], options: CalibOptions):
        self.src, self.options = Path(src), options
        self.meta = onnx_metadata(src)
        self.spec = spec_from_metadata(self.meta, src)
        self.parent = Path(path).parent
        self.reader = _reader(files, self.spec, options.batch_size)
        self.preprocess_s = 0.0

    def __enter__(self) -> "Quantizer":
        from onnxruntime.quantization.shape_inference import quant_pre_process

        self._tmp = tempfile.TemporaryDirectory(prefix="tl-int8-", dir=self.parent)
        self.work = Path(self._tmp.name)
        self.pre = self.work / "pre.onnx"
        t0 = time.perf_counter()
        try:  # Shape inference + ORT graph optimization (BN folding etc.) before quantizing, as ORT recommends.
            quant_pre_process(str(self.src), str(self.pre), skip_symbolic_shape=True)
        except BaseException:
            self._tmp.cleanup()
            raise
        self.preprocess_s = time.perf_counter() - t0
        return self

    def __exit__(self, *exc) -> None:
        self._tmp.cleanup()

    def quantize(self, method: str, reporter: Reporter = SILENT) -> Path:
        """QDQ model calibrated with ``method``, stamped with tl's metadata (so Classifier loads it); in the work folder."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        task = reporter.task(f"calibrating INT8 ({method})", total=self.reader.images)
        self.reader.rewind(task)
        out = self.work / f"{method}.int8.onnx"
        with contextlib.redirect_stdout(io.StringIO()):  # ORT's histogram calibrators print() their progress
            quantize_static(
                str(self.pre), str(out), self.reader, quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                per_channel=True, reduce_range=self.options.reduce_range,
                calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                  "percentile": CalibrationMethod.Percentile}[method],
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "CalibTensorRangeSymmetric": True,
                               "CalibPercentile": self.options.percentile,
                               "CalibStridedMinMax": 1},  # one batch per collection: memory bounded (class doc)
            )
        task.close()
        self.save(out, out)
        return out

    def record(self, method: str, calibrate_s: float) -> dict[str, Any]:
        """export.json's calibration entry: how model.int8.onnx was made."""
        return {"method": method, "preprocess_s": self.preprocess_s, "calibrate_s": calibrate_s,
                "images": self.reader.images, "per_channel": True, "reduce_range": self.options.reduce_range}

    def save(self, out: Path, path: str | Path) -> None:
        import onnx

        proto = onnx.load(str(out))
        set_metadata(proto, self.spec, "int8", self.meta.get(MAX_BATCH_KEY), self.meta.get(CHECKPOINT_KEY))
        proto.producer_name = "tl"
        save_model(proto, path)


def _reader(files: Sequence[Path], spec: ModelSpec, batch_size: int):
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(ImageCalibrationReader, CalibrationDataReader):
        pass

    return _Reader(files, spec, batch_size=batch_size)
