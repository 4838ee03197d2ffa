"""What a tl file is, in one place: the table of artifact kinds, and the spec and precision a file carries.

:data:`ARTIFACTS` has one row per kind of file `tl export` writes (the shape of Ultralytics'
``export_formats()``): its file name, precision, the backend that runs it, its name in tl bench,
and how a Triton repository holds it. Export, serve, bench and the backend registry look their
facts up here, so a new artifact kind is one row.

Torch-free and backend-free: describing a file must work where it cannot run (an engine
on a machine without TensorRT, an ONNX file on a box without onnxruntime).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tl.runtime.errors import TLError
from tl.runtime.metadata import CHECKPOINT_KEY, DEFAULT_MAX_BATCH, MAX_BATCH_KEY, PRECISION_KEY, PRECISIONS, SPEC_KEY
from tl.runtime.onnxmeta import read_onnx_meta
from tl.runtime.sidecar import read_sidecar
from tl.runtime.spec import ModelSpec

# The metadata names are read from here by the modules that describe files.
__all__ = [
    "ARTIFACTS", "ArtifactKind", "CHECKPOINT_KEY", "CHECKPOINT_SUFFIXES", "DEFAULT_MAX_BATCH", "ENGINE_SUFFIXES",
    "MAX_BATCH_KEY", "MODEL_SUFFIXES", "ONNX_SUFFIXES", "PRECISION_KEY", "PRECISIONS", "SPEC_KEY", "TRITON_FILES",
    "artifact_for", "artifact_kind", "bench_alias", "kind_of", "max_batch_bound", "onnx_metadata", "precision_from_name",
    "read_spec",
    "spec_from_metadata", "suffixes", "triton_platform",
]


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of file `tl export` writes, and everything the rest of tl says about it."""

    file: str  # its name in an export folder
    format: str  # "onnx" | "engine": what kind_of() calls a file of its suffix
    precision: str  # one of PRECISIONS; its file name says it (precision_from_name)
    backend: str  # the backend registry's name for what runs it (tl.runtime.backends.registry)
    bench: str  # tl bench's name for that backend
    triton_platform: str  # config.pbtxt's platform
    triton_file: str  # its name inside a Triton version folder (Triton's default_model_filename)
    triton_instance: str  # config.pbtxt's instance kind: an ONNX model runs on CPU where Triton has no GPU
    triton_suffix: str  # appended to the Triton model name, so a model's name never depends on other flags

    @property
    def suffix(self) -> str:
        return Path(self.file).suffix


ARTIFACTS: tuple[ArtifactKind, ...] = tuple(ArtifactKind(*row) for row in (
    # file              format    precision backend        bench  triton_platform     triton_file   instance     suffix
    ("model.onnx",      "onnx",   "fp32",   "onnxruntime", "ort", "onnxruntime_onnx", "model.onnx", "KIND_AUTO", ""),
    ("model.fp16.onnx", "onnx",   "fp16",   "onnxruntime", "ort", "onnxruntime_onnx", "model.onnx", "KIND_AUTO", "_fp16"),
    ("model.int8.onnx", "onnx",   "int8",   "onnxruntime", "ort", "onnxruntime_onnx", "model.onnx", "KIND_AUTO", "_int8"),
    ("model.fp16.plan", "engine", "fp16",   "tensorrt",    "trt", "tensorrt_plan",    "model.plan", "KIND_GPU",  "_fp16_trt"),
    ("model.int8.plan", "engine", "int8",   "tensorrt",    "trt", "tensorrt_plan",    "model.plan", "KIND_GPU",  "_int8_trt"),
))

# Other suffixes a file of the table's may carry (trtexec and other tools name engines so): read as that suffix.
SUFFIX_ALIASES = {".engine": ".plan", ".trt": ".plan"}


def suffixes(format: str) -> tuple[str, ...]:
    """Every suffix a file of ``format`` may have: the table's first, then their aliases."""
    own = tuple(dict.fromkeys(k.suffix for k in ARTIFACTS if k.format == format))
    return own + tuple(alias for alias, suffix in SUFFIX_ALIASES.items() if suffix in own)


ONNX_SUFFIXES = suffixes("onnx")
ENGINE_SUFFIXES = suffixes("engine")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
MODEL_SUFFIXES = ONNX_SUFFIXES + ENGINE_SUFFIXES
TRITON_FILES = {k.triton_platform: k.triton_file for k in ARTIFACTS}  # what a version folder holds, by platform


def kind_of(path: str | Path) -> str | None:
    """"onnx" | "engine" | "checkpoint" by suffix, or None for anything else."""
    suffix = Path(path).suffix.lower()
    for kind, known in (("onnx", ONNX_SUFFIXES), ("engine", ENGINE_SUFFIXES), ("checkpoint", CHECKPOINT_SUFFIXES)):
        if suffix in known:
            return kind
    return None


def precision_from_name(path: str | Path) -> str:
    """tl's file names say the precision: model.int8.onnx, model.fp16.plan, model.onnx (fp32)."""
    name = Path(path).name.lower()
    return next((p for p in reversed(PRECISIONS) if f".{p}." in name), "fp32")


def artifact_for(format: str, precision: str) -> ArtifactKind:
    """The table's row of ``format`` ("onnx" | "engine") in ``precision``."""
    row = next((k for k in ARTIFACTS if (k.format, k.precision) == (format, precision)), None)
    if row is None:
        made = ", ".join(k.precision for k in ARTIFACTS if k.format == format)
        raise TLError(f"tl writes {format} files in {made or 'no precision'}, not {precision!r}")
    return row


def artifact_kind(path: str | Path) -> ArtifactKind | None:
    """The table's row a file belongs to, by its suffix and the precision its name says; None for other files."""
    fmt, precision = kind_of(path), precision_from_name(path)
    return next((k for k in ARTIFACTS if (k.format, k.precision) == (fmt, precision)), None)


def triton_platform(backend: str) -> str:
    """The Triton platform of the files ``backend`` runs; a backend with no row of its own (OpenVINO) by its name."""
    return next((k.triton_platform for k in ARTIFACTS if k.backend == backend), backend)


def bench_alias(backend: str) -> str:
    """tl bench's short name ("ort" | "trt") for a registry backend; one with no row of its own by its name."""
    return next((k.bench for k in ARTIFACTS if k.backend == backend), backend)


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """metadata_props of an ONNX file, read without onnx or onnxruntime (the graph is skipped)."""
    return read_onnx_meta(path, graph=False).metadata


def max_batch_bound(metadata: dict[str, str]) -> int | None:
    """The batch bound an export wrote (``tl.max_batch``); None where it is absent or not a positive integer."""
    bound = metadata.get(MAX_BATCH_KEY, "")
    return int(bound) if bound.isdigit() and int(bound) > 0 else None


def spec_from_metadata(metadata: dict[str, str], path: str | Path) -> ModelSpec:
    text = metadata.get(SPEC_KEY)
    if not text:
        raise TLError(
            f"{path} has no tl model spec (metadata '{SPEC_KEY}'): it was not exported by tl; "
            "pass the labels and preprocessing as spec= / --spec spec.json"
        )
    return ModelSpec.from_json(text, source=path)


def read_spec(path: str | Path) -> ModelSpec:
    """The ModelSpec an artifact carries: ONNX metadata, the engine's sidecar, or a checkpoint's spec.json."""
    path = Path(path)
    if not path.is_file():
        raise TLError(f"model not found: {path}")
    kind = kind_of(path)
    if kind == "onnx":
        return spec_from_metadata(onnx_metadata(path), path)
    if kind == "engine":
        return read_sidecar(path)[0]
    raise TLError(f"{path}: not a model file tl can read (expected one of {', '.join(MODEL_SUFFIXES)})")
