"""The JSON sidecar beside every TensorRT engine: ModelSpec + build record.

The engine file stays a plain serialized plan (trtexec and Triton load it); everything
tl needs to use it correctly, and to refuse it on the wrong device, lives here.
Pure logic: no TensorRT import, so it is tested everywhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tl.runtime.errors import TLError
from tl.runtime.files import atomic_write_text
from tl.runtime.spec import ModelSpec, newer_format

SIDECAR_FORMAT = 1


@dataclass(frozen=True)
class BuildRecord:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"
    precision: str  # "fp16" | "int8" | "fp32"
    profile: dict[str, list[int]]  # {"min": [1,3,H,W], "opt": [...], "max": [...]}
    onnx_file: str = ""
    onnx_sha256: str = ""
    build_seconds: float = 0.0
    built_at: str = ""  # ISO 8601 UTC
    strongly_typed: bool = False
    builder_optimization_level: int | None = None
    workspace_gib: float | None = None
    tl_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    checkpoint_sha256: str = ""  # the checkpoint the source ONNX came from; "" in sidecars of older tl

    @property
    def max_batch(self) -> int:
        return int(self.profile["max"][0])

    @property
    def min_batch(self) -> int:
        return int(self.profile["min"][0])


def sidecar_path(engine: str | Path) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def write_sidecar(engine: str | Path, spec: ModelSpec, build: BuildRecord) -> Path:
    path = sidecar_path(engine)
    data = {"format": SIDECAR_FORMAT, "spec": spec.to_dict(), "build": asdict(build)}
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def read_sidecar(engine: str | Path) -> tuple[ModelSpec, BuildRecord]:
    path = sidecar_path(engine)
    if not path.is_file():
        raise TLError(
            f"{engine}: no sidecar {path.name} beside the engine; tl needs it for labels and "
            "preprocessing (rebuild with 'tl export --trt', or pass spec= / --spec)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        _check_sidecar_format(data.get("format", SIDECAR_FORMAT), path)
        spec = ModelSpec.from_dict(data["spec"], source=path)
        build = BuildRecord(**data["build"])
    except TLError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError) as e:
        raise TLError(f"{path}: not a valid tl engine sidecar ({type(e).__name__}: {e})") from e
    return spec, build


def _check_sidecar_format(fmt, path: Path) -> None:
    """Like the spec's format: a newer sidecar may hold fields this tl would misread."""
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise TLError(f"{path}: not a valid tl engine sidecar (format {fmt!r})")
    if fmt > SIDECAR_FORMAT:
        raise TLError(f"{path}: {newer_format('sidecar', fmt, SIDECAR_FORMAT, 'engine')}")


def check_compatible(build: BuildRecord, *, tensorrt_version: str, compute_capability: str, engine: str | Path = "engine") -> None:
    """Refuse an engine built for another TensorRT or GPU, with a message that says what to do.

    TensorRT plans are tied to the exact TensorRT version and the GPU's compute
    capability; loading a mismatched one otherwise fails with an opaque log and a None engine.
    """
    problems = []
    if build.tensorrt_version != tensorrt_version:
        problems.append(f"TensorRT {build.tensorrt_version}, this machine has {tensorrt_version}")
    if build.compute_capability != compute_capability:
        problems.append(
            f"GPU compute capability {build.compute_capability} ({build.gpu_name}), "
            f"this GPU is {compute_capability}"
        )
    if problems:
        raise TLError(
            f"{engine} was built for " + " and ".join(problems)
            + "; rebuild it on this device with 'tl export CHECKPOINT --trt'"
        )
