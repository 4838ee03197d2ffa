"""What a tl file is, in one place: suffixes, ONNX metadata keys, and the spec and precision it carries.

Torch-free and backend-free: describing a file must work where it cannot run (an engine
on a machine without TensorRT, an ONNX file on a box without onnxruntime).
"""

from __future__ import annotations

from pathlib import Path

from tl.runtime.errors import TLError
from tl.runtime.spec import ModelSpec

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".plan", ".engine", ".trt")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
MODEL_SUFFIXES = ONNX_SUFFIXES + ENGINE_SUFFIXES

# metadata_props of every ONNX file tl writes.
SPEC_KEY = "tl.spec"  # the ModelSpec as JSON
PRECISION_KEY = "tl.precision"  # fp32 | fp16 | int8
MAX_BATCH_KEY = "tl.max_batch"  # the dynamic batch bound: the runtime and TensorRT EP profiles size from it
CHECKPOINT_KEY = "tl.checkpoint_sha256"  # sha256 of the checkpoint file it was exported from (tl bench compares it)

PRECISIONS = ("fp32", "fp16", "int8")


def kind_of(path: str | Path) -> str | None:
    """"onnx" | "engine" | "checkpoint" by suffix, or None for anything else."""
    suffix = Path(path).suffix.lower()
    for kind, suffixes in (("onnx", ONNX_SUFFIXES), ("engine", ENGINE_SUFFIXES), ("checkpoint", CHECKPOINT_SUFFIXES)):
        if suffix in suffixes:
            return kind
    return None


def precision_from_name(path: str | Path) -> str:
    """tl's file names say the precision: model.int8.onnx, model.fp16.plan, model.onnx (fp32)."""
    name = Path(path).name.lower()
    return next((p for p in ("int8", "fp16") if f".{p}." in name), "fp32")


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """metadata_props of an ONNX file, read without onnx or onnxruntime (the graph is skipped)."""
    from tl.runtime.onnxmeta import read_onnx_meta

    return read_onnx_meta(path, graph=False).metadata


def spec_from_metadata(metadata: dict[str, str], path: str | Path) -> ModelSpec:
    text = metadata.get(SPEC_KEY)
    if not text:
        raise TLError(
            f"{path} has no tl model spec (metadata '{SPEC_KEY}'): it was not exported by tl; "
            "pass the labels and preprocessing as spec= / --spec spec.json"
        )
    return ModelSpec.from_json(text)


def read_spec(path: str | Path) -> ModelSpec:
    """The ModelSpec an artifact carries: ONNX metadata, the engine's sidecar, or a checkpoint's spec.json."""
    path = Path(path)
    if not path.is_file():
        raise TLError(f"model not found: {path}")
    kind = kind_of(path)
    if kind == "onnx":
        return spec_from_metadata(onnx_metadata(path), path)
    if kind == "engine":
        from tl.runtime.sidecar import read_sidecar

        return read_sidecar(path)[0]
    raise TLError(f"{path}: not a model file tl can read (expected one of {', '.join(MODEL_SUFFIXES)})")
