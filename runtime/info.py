"""What an artifact is: spec, format details, size, build record. Backs ``tl info``.

Describing a file must work where it cannot run (an engine on a machine without
TensorRT, an ONNX without a spec), so nothing here loads a backend.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tl.runtime.artifact import MODEL_SUFFIXES, SPEC_KEY, spec_from_metadata
from tl.runtime.backends import REGISTRY, entry_for
from tl.runtime.errors import TLError
from tl.runtime.spec import require_regular_file


def artifact_info(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise TLError(f"{path} is a folder; pass a model file ({', '.join(MODEL_SUFFIXES)})")
    require_regular_file(path, "model")  # a FIFO would block the read, a device never end
    entry = entry_for(path)
    info: dict[str, Any] = {"file": str(path), "size_mb": round(path.stat().st_size / 2**20, 3), "backend": entry.name,
                            "backends": [e.name for e in REGISTRY if path.suffix.lower() in e.suffixes]}
    if entry.name == "onnxruntime":
        info.update(_onnx_info(path))
    else:
        info.update(_engine_info(path))
    return info


def _onnx_info(path: Path) -> dict[str, Any]:
    from tl.runtime.onnxmeta import read_onnx_meta

    meta = read_onnx_meta(path)
    out: dict[str, Any] = {
        "format": "onnx",
        "opset": meta.opset,
        "opsets": meta.opsets,
        "ir_version": meta.ir_version,
        "producer": meta.producer,
        "precision": meta.precision(),
        "spec": spec_from_metadata(meta.metadata, path).to_dict() if SPEC_KEY in meta.metadata else None,
        "metadata": {k: v for k, v in meta.metadata.items() if k != SPEC_KEY},
    }
    try:
        import onnxruntime as ort
    except ImportError:
        return out
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # just reading the signature
    try:
        sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise TLError(f"{path}: ONNX Runtime cannot load it ({type(e).__name__}: {str(e).strip()[:300]})") from e
    out["inputs"] = [{"name": i.name, "shape": list(i.shape), "dtype": i.type} for i in sess.get_inputs()]
    out["outputs"] = [{"name": o.name, "shape": list(o.shape), "dtype": o.type} for o in sess.get_outputs()]
    return out


def _engine_info(path: Path) -> dict[str, Any]:
    from tl.runtime.sidecar import read_sidecar, sidecar_path

    out: dict[str, Any] = {"format": "tensorrt-plan", "sidecar": str(sidecar_path(path))}
    spec, build = read_sidecar(path)
    out["spec"] = spec.to_dict()
    out["precision"] = build.precision
    out["build"] = json.loads(json.dumps(asdict(build)))
    shape = lambda b: [b] + [spec.input.channels, spec.input.height, spec.input.width]  # noqa: E731
    out["inputs"] = [{"name": spec.input.name, "shape": ["batch", spec.input.channels, spec.input.height, spec.input.width],
                      "profile": {k: list(v) for k, v in build.profile.items()} or {"min": shape(1)}}]
    out["outputs"] = [{"name": spec.output.name, "shape": ["batch", spec.num_classes]}]
    return out
