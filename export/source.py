"""What an export starts from, and the reference every artifact is checked against.

A checkpoint (best.pt or a run folder): the model is rebuilt with torch, and eager PyTorch FP32
is the reference. An FP32 ``model.onnx`` that tl exported: no torch at all, the file is copied
into the export and ONNX Runtime running it is the reference. The second is the edge box's
route: a TensorRT engine runs only on the GPU model and TensorRT version it was built with, so
on a Jetson it is built there, from the ONNX file the server exported. Either way every artifact
carries the checkpoint stamp of its source, so bench and the Triton repository treat both alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tl.export import calib, int8
from tl.export import parity as par
from tl.export.options import ExportOptions
from tl.runtime.artifact import (
    CHECKPOINT_KEY, DEFAULT_MAX_BATCH, PRECISION_KEY, SPEC_KEY, max_batch_bound, onnx_metadata, spec_from_metadata,
)
from tl.runtime.errors import TLError
from tl.runtime.files import sha256_file
from tl.runtime.spec import ModelSpec, require_regular_file

PYTORCH_REFERENCE = "eager PyTorch FP32"


@dataclass(frozen=True)
class Source:
    """A loaded export source: its spec, the stamp every artifact carries and how to compute the reference."""

    path: Path  # the checkpoint file, or the ONNX file
    spec: ModelSpec
    stamp: str  # sha256 of the checkpoint the artifacts come from ("" where an ONNX file of an older tl has none)
    max_batch: int  # the largest batch every artifact takes
    ckpt: dict[str, Any] = field(default_factory=dict)  # the checkpoint's fields; {} for an ONNX source
    model: Any = None  # the torch module; None for an ONNX source
    device: int = 0  # the CUDA device an ONNX reference runs on, where ONNX Runtime has CUDA

    @property
    def is_onnx(self) -> bool:
        return self.model is None

    @property
    def reference(self) -> str:
        """What the artifacts are compared with, in words (the parity table's title, export.json's "reference")."""
        return f"{self.path.name} (FP32 ONNX on ONNX Runtime)" if self.is_onnx else PYTORCH_REFERENCE

    @property
    def short(self) -> str:
        """The reference in messages: "model.onnx does not match PyTorch"."""
        return self.path.name if self.is_onnx else "PyTorch"

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """The reference logits on ``batch``, refused where any is NaN or infinite (nothing could be judged)."""
        if self.is_onnx:
            logits = par.artifact_logits(self.path, batch, device=self.device)[0]
            _check_onnx_reference(logits, self.path)
            return logits
        logits = par.torch_logits(self.model, batch)
        par.check_reference(logits, self.model, self.path)
        return logits


def load_source(o: ExportOptions) -> Source:
    """The export's source, checked before the output folder is touched."""
    return _onnx_source(o) if o.from_onnx else _checkpoint_source(o)


def _checkpoint_source(o: ExportOptions) -> Source:
    from tl.train.checkpoint import load_model  # the one step of an export that needs torch

    model, spec, ckpt = load_model(o.checkpoint)
    return Source(path=Path(ckpt.get("path", o.checkpoint)), spec=spec, stamp=sha256_file(ckpt["path"]),
                  max_batch=o.max_batch or DEFAULT_MAX_BATCH, ckpt=ckpt, model=model)


def _onnx_source(o: ExportOptions) -> Source:
    path = Path(o.checkpoint)
    require_regular_file(path, "ONNX file")
    meta = onnx_metadata(path)
    if SPEC_KEY not in meta:
        raise TLError(f"{path} has no tl model spec (metadata '{SPEC_KEY}'): tl export builds only from an ONNX file "
                      "tl exported (it carries the labels, the preprocessing and the checkpoint stamp); "
                      "export the checkpoint with 'tl export CHECKPOINT --onnx' and copy that model.onnx")
    spec = spec_from_metadata(meta, path)
    precision = meta.get(PRECISION_KEY, "fp32")
    if precision != "fp32":
        raise TLError(f"{path} is a {precision.upper()} file; export from the FP32 model.onnx it was made from "
                      "(every other precision derives from FP32)")
    return Source(path=path, spec=spec, stamp=meta.get(CHECKPOINT_KEY, ""), device=o.device,
                  max_batch=_onnx_max_batch(o, max_batch_bound(meta), path))


def _onnx_max_batch(o: ExportOptions, bound: int | None, path: Path) -> int:
    """--max-batch, at most the bound the ONNX file was exported with (its batch dimension's range)."""
    if o.max_batch is None:
        return bound or DEFAULT_MAX_BATCH
    if bound is not None and o.max_batch > bound:
        raise TLError(f"--max-batch {o.max_batch} is above the {bound} {path.name} was exported for; pass at most "
                      f"{bound}, or export again from the checkpoint with --max-batch {o.max_batch}")
    return o.max_batch


def calibration_files(o: ExportOptions, source: Source) -> list[Path] | None:
    """INT8's calibration images, found (and auto's validation images required) before any work."""
    if not o.int8:
        return None
    if source.is_onnx and o.calib_dir is None:
        raise TLError(f"--int8 from {source.path.name} needs --calib-dir FOLDER: images like the training data to "
                      "calibrate on (an ONNX file does not record where its training images are)")
    if source.is_onnx and o.calib_method == "auto" and o.val_dir is None:
        raise TLError("--calib-method auto measures each method on validation images; from an ONNX file pass "
                      "--val-dir FOLDER (images not used for calibration)")
    files = int8.calibration_images(calib_dir=o.calib_dir, ckpt=source.ckpt, count=o.calib_count)
    if o.calib_method == "auto":
        calib.require_selection_images(o.val_dir, source.ckpt)
    return files


def _check_onnx_reference(logits: np.ndarray, path: Path) -> None:
    bad = int((~np.isfinite(logits)).any(axis=1).sum())
    if bad:
        raise TLError(f"{path}: ONNX Runtime gives NaN or infinite logits on {bad} of {len(logits)} parity images; "
                      "the file is broken: export it again from a checkpoint whose loss stayed finite")
