"""What to benchmark: one checkpoint (the PyTorch rows and the FP32 reference) and the artifacts.

A TARGET is a checkpoint, a run folder, an export folder or one model file. An export
folder's export.json names its checkpoint, so ``tl bench EXPORT`` alone still compares
against eager FP32 on the images every other check uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from tl.benchmarks.options import bench_name
from tl.runtime.artifact import PRECISIONS, kind_of, precision_from_name
from tl.runtime.backends.registry import entry_for
from tl.runtime.errors import TLError


@dataclass(frozen=True)
class Artifact:
    path: Path
    backend: str  # tl bench's name for what runs it: ort | trt
    build_s: float | None = None  # TensorRT engine build time, when recorded


@dataclass
class Targets:
    checkpoint: Path | None = None
    artifacts: list[Artifact] = field(default_factory=list)
    export_checkpoint: Path | None = None  # named by an export.json


def _artifact_order(a: Artifact) -> tuple:
    return (a.backend != "ort", PRECISIONS.index(precision_from_name(a.path)), a.path.name)


def _export_folder(folder: Path, targets: Targets) -> list[Artifact]:
    recorded: dict[str, dict] = {}
    meta = folder / "export.json"
    if meta.is_file():
        try:
            data = json.loads(meta.read_text())
            for a in data.get("artifacts", []) or []:
                if isinstance(a, dict) and a.get("file"):
                    recorded[Path(str(a["file"])).name] = a
            ck = data.get("checkpoint")
            if ck and Path(ck).exists():
                targets.export_checkpoint = Path(ck)
        except (json.JSONDecodeError, AttributeError, TypeError):
            pass  # a damaged export.json: the files themselves still say what they are
    files = {p.name: p for p in folder.iterdir() if p.is_file() and kind_of(p) in ("onnx", "engine")}
    for name in recorded:
        files.setdefault(name, folder / name)  # listed but missing: its cell fails and says so
    out = []
    for name, p in files.items():
        build_s = None
        if kind_of(p) == "engine":
            rec = recorded.get(name, {})
            build_s = rec.get("seconds") if isinstance(rec.get("seconds"), (int, float)) else _sidecar_build_s(p)
        out.append(Artifact(p, bench_name(entry_for(p)), build_s))
    return out


def _sidecar_build_s(engine: Path) -> float | None:
    try:
        from tl.runtime.sidecar import read_sidecar

        return float(read_sidecar(engine)[1].build_seconds) or None
    except Exception:  # noqa: BLE001 - only a nicety; the cell itself reports real problems
        return None


def resolve_targets(paths: Sequence[str | Path]) -> Targets:
    """Sort TARGETs into one checkpoint (PyTorch rows) and artifacts (ONNX/TensorRT rows)."""
    t = Targets()
    checkpoints: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise TLError(f"{p}: no such file or folder; TARGET is a checkpoint (best.pt), a run folder or an export folder")
        if p.is_file():
            kind = kind_of(p)
            if kind == "checkpoint":
                checkpoints.append(p)
            elif kind in ("onnx", "engine"):
                build_s = _sidecar_build_s(p) if kind == "engine" else None
                t.artifacts.append(Artifact(p, bench_name(entry_for(p)), build_s))
            else:
                raise TLError(f"{p}: not a checkpoint (.pt) or a model file (.onnx, .plan); TARGET is a checkpoint, a run folder or an export folder")
            continue
        found = False
        if (p / "best.pt").is_file():
            checkpoints.append(p / "best.pt")
            found = True
        arts = _export_folder(p, t)
        if arts:
            t.artifacts.extend(arts)
            found = True
        if not found:
            raise TLError(f"{p}: folder holds no best.pt, export.json, .onnx or .plan file; "
                          "give a run folder from 'tl train' or an export folder from 'tl export'")
    unique = sorted({c.resolve() for c in checkpoints})
    if len(unique) > 1:
        raise TLError(f"give at most one checkpoint TARGET (got {', '.join(map(str, unique))}); bench one model at a time")
    t.checkpoint = unique[0] if unique else None
    seen: set[Path] = set()
    arts = []
    for a in t.artifacts:
        if a.path.resolve() not in seen:
            seen.add(a.path.resolve())
            arts.append(a)
    t.artifacts = sorted(arts, key=_artifact_order)
    return t


def artifact_stamp(path: Path) -> str | None:
    """The sha256 of the checkpoint an artifact was exported from; None when it carries none (an
    older tl) or cannot be read (its cell fails and says why)."""
    from tl.runtime.artifact import CHECKPOINT_KEY, onnx_metadata

    try:
        if kind_of(path) == "onnx":
            return onnx_metadata(path).get(CHECKPOINT_KEY) or None
        from tl.runtime.sidecar import read_sidecar

        return read_sidecar(path)[1].checkpoint_sha256 or None
    except (TLError, OSError, ValueError, EOFError):
        return None


def check_provenance(targets: Targets, checkpoint: Path) -> None:
    """Refuse artifacts stamped with another checkpoint: their rows would compare two different models.

    Unstamped artifacts are left to the runners' spec comparison (``runners.spec_mismatch``).
    """
    from tl.runtime.files import sha256_file

    digest = None
    for a in targets.artifacts:
        stamp = artifact_stamp(a.path)
        if stamp is None:
            continue
        digest = digest or sha256_file(checkpoint)
        if stamp != digest:
            raise TLError(f"{a.path} was exported from another checkpoint (sha256 {stamp[:12]}), not from {checkpoint} "
                          f"(sha256 {digest[:12]}); bench it with the checkpoint it came from, or export {checkpoint} again")


def spec_of_targets(targets: Targets):
    """The spec of the first artifact that carries one (no checkpoint given)."""
    from tl.runtime.artifact import read_spec

    reasons = []
    for a in targets.artifacts:
        try:
            return read_spec(a.path)
        except TLError as e:  # names the file and why: not ONNX at all, no tl.spec, no sidecar
            reasons.append(str(e))
        except (OSError, ValueError) as e:
            reasons.append(f"{a.path}: {e}")
    shown = "; ".join(reasons[:3]) + (f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else "")
    raise TLError(f"no model spec found in the artifacts: {shown}; give the checkpoint TARGET too")


def bench_images(spec, *, ckpt: dict | None, val_dir: str | Path | None, limit: int):
    """(NCHW float32 images, labels or None, description), preprocessed once by tl.runtime.images.

    A labelled --val-dir is used whole (it gives the accuracy column); otherwise the same
    fixed-seed sample that export's parity check draws.
    """
    from tl.runtime.images import list_images, preprocess

    if val_dir is not None:
        root = Path(val_dir)
        if not root.is_dir():
            raise TLError(f"--val-dir {root}: no such folder; give a folder with one subfolder per class")
        index = {c: i for i, c in enumerate(spec.classes)}
        files, labels = [], []
        for f in list_images(root):
            rel = f.relative_to(root).parts
            if len(rel) < 2:
                raise TLError(f"--val-dir {root}: {f.name} is not in a class folder; use {root}/<class>/image.jpg "
                              f"with classes {', '.join(spec.classes)}")
            if rel[0] not in index:
                raise TLError(f"--val-dir {root}: folder {rel[0]!r} is not one of the model's classes "
                              f"({', '.join(spec.classes)})")
            files.append(f)
            labels.append(index[rel[0]])
        if not files:
            raise TLError(f"--val-dir {root}: no images found (expected {root}/<class>/*.jpg)")
        return preprocess(files, spec), np.asarray(labels), f"--val-dir {root}"
    from tl.export.parity import parity_images

    sample = parity_images(spec=spec, ckpt=ckpt, val_dir=None, count=limit)  # the images export checked
    return sample.batch, None, f"{sample.source} ({len(sample.batch)})"
