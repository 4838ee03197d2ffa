"""What `tl export` accepts: every default, choice and check defined once (the CLI reads them here).

Torch-free and onnx-free, so `tl export --help` stays light.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from tl.runtime.artifact import DEFAULT_MAX_BATCH, kind_of
from tl.runtime.errors import TLError, require

CALIB_METHODS = ("minmax", "entropy", "percentile", "auto")
REDUCE_RANGE = ("auto", "on", "off")  # 7-bit INT8 weights; auto: where ORT's INT8 can saturate (tl.export.cpuflags)
# 17 through torch.onnx's TorchScript exporter (TensorRT 8.6 parses up to 17); 18 and up
# through the dynamo exporter, which cannot write anything older.
MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 17, 23, 20
TORCHSCRIPT_OPSETS = (17,)
TRITON_RELEASE = re.compile(r"\d{2}\.(0[1-9]|1[0-2])")  # YY.MM, a Triton container's tag (tl.export.triton_releases)
IMAGE_COUNT = 256  # images INT8 calibration and the parity check each sample by default


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    """Which artifacts to write from ``checkpoint`` into ``out``, and how to check them.

    ``checkpoint`` is a checkpoint (best.pt) or run folder, or an FP32 ``model.onnx`` that tl
    exported: the torch-free route of an edge box, where the engine must be built on the device.
    Formats: ``onnx`` keeps model.onnx (FP32); ``fp16``, ``int8`` and ``trt`` add their
    artifacts and build model.onnx as their source without keeping it (an ONNX source is always
    kept: it is the export's reference). No format at all means ``onnx``.
    """

    checkpoint: str | Path
    out: str | Path | None = None  # default: exports/<run folder name, or the ONNX file's folder name>
    onnx: bool = False
    fp16: bool = False
    int8: bool = False
    trt: bool = False  # model.fp16.plan (+ model.int8.plan with int8); implies fp16
    opset: int | None = None  # None: DEFAULT_OPSET; only a checkpoint export writes an opset
    max_batch: int | None = None  # None: an ONNX source's own bound, else DEFAULT_MAX_BATCH
    min_batch: int = 1
    opt_batch: int = 8
    calib_dir: str | Path | None = None
    calib_count: int = IMAGE_COUNT
    calib_method: str = "minmax"
    reduce_range: str = "auto"
    val_dir: str | Path | None = None
    parity_count: int = IMAGE_COUNT
    workspace: float = 4.0  # GiB, TensorRT builder workspace
    opt_level: int | None = None  # TensorRT builder optimization level 0-5; None: TensorRT's default
    device: int = 0
    triton: str | Path | None = None  # also write a Triton model repository there (tl.export.triton)
    triton_name: str | None = None  # its model name; default: the export folder's name
    triton_release: str | None = None  # YY.MM: refuse ONNX files that release's ONNX Runtime cannot load

    def __post_init__(self) -> None:
        checks = (
            (self.opset is None or MIN_OPSET <= self.opset <= MAX_OPSET,
             f"--opset must be between {MIN_OPSET} and {MAX_OPSET} (got {self.opset}); "
             f"17 is what TensorRT 8.6 parses, {DEFAULT_OPSET} is the default"),
            (self.opset is None or not self.from_onnx,
             f"--opset applies to an export from a checkpoint: {self.checkpoint} already has its opset; "
             "export again from the checkpoint to change it"),
            (self.max_batch is None or self.max_batch >= 2, f"--max-batch must be at least 2 (got {self.max_batch})"),
            (self.calib_method in CALIB_METHODS,
             f"--calib-method must be one of {', '.join(CALIB_METHODS)} (got {self.calib_method!r})"),
            (self.reduce_range in REDUCE_RANGE,
             f"--reduce-range must be one of {', '.join(REDUCE_RANGE)} (got {self.reduce_range!r})"),
            (self.calib_count >= 1, f"--calib-count must be at least 1 (got {self.calib_count})"),
            (self.parity_count >= 1, f"--parity-count must be at least 1 (got {self.parity_count})"),
            (self.workspace > 0 and math.isfinite(self.workspace),
             f"--workspace must be a positive number of GiB (got {self.workspace})"),
            (self.opt_level is None or 0 <= self.opt_level <= 5,
             f"--opt-level must be between 0 and 5 (got {self.opt_level})"),
            (self.device >= 0, f"--device must be a GPU index, 0 or more (got {self.device})"),
            (self.calib_dir is None or Path(self.calib_dir).is_dir(), f"--calib-dir: folder not found: {self.calib_dir}"),
            (self.val_dir is None or Path(self.val_dir).is_dir(), f"--val-dir: folder not found: {self.val_dir}"),
            (self.triton_name is None or self.triton is not None, "--triton-name needs --triton REPO"),
            (self.triton_release is None or self.triton is not None, "--triton-release needs --triton REPO"),
            (self.triton_release is None or TRITON_RELEASE.fullmatch(self.triton_release) is not None,
             f"--triton-release {self.triton_release!r}: give a Triton release as YY.MM, e.g. 24.05 "
             "(the tag of nvcr.io/nvidia/tritonserver:YY.MM-py3)"),
        )
        require(*checks)
        if self.trt and self.max_batch is not None:  # an ONNX source's bound is checked once it is read
            self.check_profile(self.max_batch)

    def check_profile(self, max_batch: int) -> None:
        """The TensorRT profile's batch sizes: --min-batch <= --opt-batch <= the largest batch."""
        if self.min_batch < 1:
            raise TLError(f"--min-batch must be at least 1 (got {self.min_batch})")
        if not self.min_batch <= self.opt_batch <= max_batch:
            raise TLError("batch sizes must satisfy --min-batch <= --opt-batch <= --max-batch "
                          f"(got {self.min_batch}, {self.opt_batch}, {max_batch})")

    @property
    def from_onnx(self) -> bool:
        """The source is an exported ONNX file (no torch needed), not a checkpoint."""
        return kind_of(self.checkpoint) == "onnx"

    @property
    def keep_onnx(self) -> bool:
        """model.onnx is an output (asked for, nothing else was, or it is the source), not only a source."""
        return self.onnx or self.from_onnx or not (self.fp16 or self.int8 or self.trt)

    @property
    def precisions(self) -> tuple[str, ...]:
        """ONNX artifacts to write, in order: fp32 always (every other derives from it)."""
        return ("fp32",) + (("fp16",) if self.fp16 or self.trt else ()) + (("int8",) if self.int8 else ())

    @property
    def engine_precisions(self) -> tuple[str, ...]:
        return (("fp16",) + (("int8",) if self.int8 else ())) if self.trt else ()

    def output_dir(self) -> Path:
        if self.out is not None:
            return Path(self.out)
        p = Path(self.checkpoint)
        run = p if p.is_dir() else p.parent
        return Path("exports") / (run.name or "model")
