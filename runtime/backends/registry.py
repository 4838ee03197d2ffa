"""The backend registry: one small class per backend behind one interface, chosen by file suffix.

Ultralytics' AutoBackend shows the right experience (load any artifact, same ``predict``)
as one class with a long if-chain; here each backend is its own small class, and adding
one is one registry entry. Backend modules are imported only when chosen, so
``tl.runtime`` never pays for (or needs) onnxruntime or tensorrt until it uses them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from tl.runtime.artifact import ENGINE_SUFFIXES, MODEL_SUFFIXES, ONNX_SUFFIXES, bench_alias
from tl.runtime.errors import TLError
from tl.runtime.spec import ModelSpec

if TYPE_CHECKING:  # numpy is not needed to list the backends (tl predict --help)
    import numpy as np


@runtime_checkable
class Backend(Protocol):
    """What Classifier needs from a backend; everything else is the backend's business."""

    name: str  # "onnxruntime" | "tensorrt" | "openvino"
    path: Path
    spec: ModelSpec
    providers: list[str]  # what actually runs the model
    precision: str  # what really runs: "fp32" | "fp16" | "int8" | "bf16" (OpenVINO)
    min_batch: int  # batches below it are padded (engines whose profile starts above 1)
    max_batch: int | None  # None: unbounded
    # Optional: True where ``run`` may be called from several threads at once (ONNX Runtime); where it is
    # absent or False (one TensorRT context, one OpenVINO infer request), Classifier runs one call at a time.
    concurrent_run: bool

    def run(self, batch: np.ndarray) -> np.ndarray:
        """NCHW float32 batch within [min_batch, max_batch] -> (N, num_classes) float32 logits."""

    def device_compute_ms(self, batch: np.ndarray, iters: int) -> list[float] | None:
        """Per-iteration compute time with inputs already on the device; None on CPU."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class BackendEntry:
    name: str
    module: str
    cls: str
    suffixes: tuple[str, ...]
    aliases: tuple[str, ...]


REGISTRY: tuple[BackendEntry, ...] = (
    # Suffixes and short names (tl bench's) come from the table of artifact kinds.
    BackendEntry("onnxruntime", "tl.runtime.backends.onnxruntime", "OnnxRuntimeBackend", ONNX_SUFFIXES,
                 (bench_alias("onnxruntime"), "onnxruntime")),
    BackendEntry("tensorrt", "tl.runtime.backends.tensorrt", "TensorRTBackend", ENGINE_SUFFIXES,
                 (bench_alias("tensorrt"), "tensorrt")),
    # Also runs .onnx, but only when asked for: auto keeps ONNX Runtime for .onnx (first entry wins).
    BackendEntry("openvino", "tl.runtime.backends.openvino", "OpenVinoBackend", ONNX_SUFFIXES, ("openvino", "ov")),
)

# Rows per inference call where a backend sets no bound of its own (max_batch None).
DEFAULT_BATCH_SIZE = 16

# OpenVINO inference precisions; "default" leaves the choice to OpenVINO (bf16 on AMX CPUs).
OPENVINO_PRECISIONS = ("f32", "bf16", "f16", "default")

BACKEND_CHOICES = ("auto",) + tuple(a for e in REGISTRY for a in e.aliases)


def entry_for(path: str | Path, backend: str = "auto") -> BackendEntry:
    """The registry entry for ``path``; a requested backend must match the file kind."""
    suffix = Path(path).suffix.lower()
    by_suffix = next((e for e in REGISTRY if suffix in e.suffixes), None)
    if by_suffix is None:
        raise TLError(
            f"{path}: not a model file tl can run (expected one of {', '.join(MODEL_SUFFIXES)}); "
            "export one with 'tl export CHECKPOINT'"
        )
    wanted = (backend or "auto").lower()
    if wanted == "auto":
        return by_suffix
    requested = next((e for e in REGISTRY if wanted in e.aliases), None)
    if requested is None:
        raise TLError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKEND_CHOICES)}")
    if suffix not in requested.suffixes:
        hint = (
            "for TensorRT through ONNX Runtime use providers 'trt' (--providers trt), or build an engine with 'tl export --trt'"
            if by_suffix.name == "onnxruntime"
            else "a TensorRT engine runs only on the tensorrt backend (OpenVINO runs the .onnx export)"
        )
        kinds = {"onnxruntime": "an ONNX model", "tensorrt": "a TensorRT engine"}
        raise TLError(f"{path} is {kinds[by_suffix.name]}, which the {requested.name} backend cannot run; {hint}")
    return requested


def load_backend(path: str | Path, *, backend: str = "auto", **options) -> Backend:
    entry = entry_for(path, backend)
    cls = getattr(importlib.import_module(entry.module), entry.cls)
    return cls(Path(path), **options)
