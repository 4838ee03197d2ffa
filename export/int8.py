"""model.onnx -> model.int8.onnx: QDQ, symmetric INT8 activations and weights, per-channel weights.

QDQ (QuantizeLinear/DequantizeLinear pairs around FP32 ops) is the one INT8 format that
both ONNX Runtime (fused into QLinearConv/MatMulInteger kernels) and TensorRT (explicit
quantization, the only INT8 route left in TensorRT 11) consume. Symmetric INT8 (zero
points all 0) is what TensorRT requires.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tl.export.options import CALIB_METHODS
from tl.runtime.errors import TLError
from tl.runtime.progress import SILENT, Reporter
from tl.runtime.spec import ModelSpec

CALIB_BATCH = 8


@dataclass(frozen=True)
class CalibOptions:
    count: int = 256
    method: str = "minmax"
    batch_size: int = CALIB_BATCH
    seed: int = 0
    percentile: float = 99.999


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
    """onnxruntime CalibrationDataReader over image files, through the runtime's one pipeline."""

    def __init__(self, files: Sequence[Path], spec: ModelSpec, *, batch_size: int = CALIB_BATCH, task=None):
        self.files = list(files)
        self.spec = spec
        self.batch_size = batch_size
        self.task = task
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        from tl.runtime.images import preprocess

        if self._pos >= len(self.files):
            return None
        chunk = self.files[self._pos : self._pos + self.batch_size]
        self._pos += len(chunk)
        batch = preprocess(chunk, self.spec)
        if self.task is not None:
            self.task.advance(len(chunk))
        return {self.spec.input.name: batch}

    def rewind(self) -> None:
        self._pos = 0

    def __len__(self) -> int:
        return len(self.files)


def quantize_int8(src: str | Path, path: str | Path, *, files: Sequence[Path], options: CalibOptions = CalibOptions(),
                  reporter: Reporter = SILENT) -> dict[str, Any]:
    """FP32 ONNX ``src`` -> QDQ INT8 ``path``; returns timings {"preprocess_s", "calibrate_s", "images"}."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from tl.export.onnx import save_model, set_metadata
    from tl.runtime.artifact import CHECKPOINT_KEY, MAX_BATCH_KEY, onnx_metadata, spec_from_metadata

    if options.method not in CALIB_METHODS:
        raise TLError(f"--calib-method must be one of {', '.join(CALIB_METHODS)} (got {options.method!r})")
    meta = onnx_metadata(src)
    spec = spec_from_metadata(meta, src)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[options.method]

    class _Reader(ImageCalibrationReader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="tl-int8-", dir=Path(path).parent) as work:
        work = Path(work)
        pre = work / "pre.onnx"
        t0 = time.perf_counter()
        # Shape inference + ORT graph optimization (BN folding etc.) before quantizing, as ORT recommends.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        t1 = time.perf_counter()
        task = reporter.task(f"calibrating INT8 ({options.method})", total=len(files))
        reader = _Reader(files, spec, batch_size=options.batch_size, task=task)
        extra = {
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "CalibTensorRangeSymmetric": True,
            # Calibration runs in a temp folder so an interrupted export leaves nothing behind.
            "CalibPercentile": options.percentile,
        }
        out = work / "int8.onnx"
        quantize_static(
            str(pre), str(out), reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=method,
            extra_options=extra,
        )
        t2 = time.perf_counter()
        task.close()
        proto = onnx.load(str(out))
        set_metadata(proto, spec, "int8", meta.get(MAX_BATCH_KEY), meta.get(CHECKPOINT_KEY))
        proto.producer_name = "tl"
        save_model(proto, path)
    return {"preprocess_s": t1 - t0, "calibrate_s": t2 - t1, "images": len(files), "method": options.method}
