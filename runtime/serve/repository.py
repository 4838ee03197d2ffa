"""What `tl serve MODEL_OR_REPO` serves: one .onnx/.plan file, or a Triton-layout repository.

Repository layout (what `tl export --triton REPO` writes and Triton loads)::

    REPO/<model>/config.pbtxt
    REPO/<model>/labels.txt
    REPO/<model>/<version>/model.onnx | model.plan (+ model.plan.json, tl's engine sidecar)

The spec travels inside each artifact, so config.pbtxt is read only for ``platform`` and
``max_batch_size``. As Triton's default version policy, the highest version is served.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tl.runtime.artifact import MODEL_SUFFIXES, TRITON_FILES, kind_of
from tl.runtime.errors import TLError

NAME_OK = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    version: str
    path: Path
    max_batch: int | None = None  # config.pbtxt's max_batch_size, when it says one


def model_name_for(path: Path) -> str:
    """``model.int8.onnx`` -> ``model.int8``: only the model suffix goes, so sibling files stay apart."""
    return path.name[: -len(path.suffix)] if path.suffix.lower() in MODEL_SUFFIXES else path.name


def find_models(source: str | Path, name: str | None = None) -> list[ModelEntry]:
    """The models to serve from a file or a repository folder; a user error if there are none."""
    source = Path(source)
    if not source.exists():
        raise TLError(f"not found: {source}; give a model file (.onnx, .plan) or a Triton-layout repository folder")
    if source.is_file():
        if kind_of(source) not in ("onnx", "engine"):
            raise TLError(f"{source}: not a model file tl can serve (expected one of {', '.join(MODEL_SUFFIXES)})")
        entry = ModelEntry(name or model_name_for(source), "1", source)
        _check_name(entry.name)
        return [entry]
    if name is not None:
        raise TLError("--name renames a single model file; a repository's models are named by their folders")
    entries = [e for d in sorted(source.iterdir()) if d.is_dir() and (e := _repo_model(d)) is not None]
    if not entries:
        raise TLError(f"{source}: no models found; a repository holds <model>/config.pbtxt and "
                      "<model>/<version>/model.onnx (or model.plan), as `tl export --triton` writes")
    return entries


def _repo_model(folder: Path) -> ModelEntry | None:
    """The latest version of one repository model, or None for a folder that is no model."""
    config = folder / "config.pbtxt"
    versions = sorted((int(v.name), v) for v in folder.iterdir() if v.is_dir() and v.name.isdigit())
    if not config.is_file() and not versions:
        return None
    if not versions:
        raise TLError(f"{folder}: no version folder (e.g. {folder / '1' / 'model.onnx'})")
    text = config.read_text(errors="replace") if config.is_file() else ""
    platform, max_batch = _config_field(text, "platform"), _config_field(text, "max_batch_size")
    number, vdir = versions[-1]
    names = [TRITON_FILES[platform]] if platform in TRITON_FILES else list(TRITON_FILES.values())
    path = next((vdir / n for n in names if (vdir / n).is_file()), None)
    if path is None:
        raise TLError(f"{vdir}: no {' or '.join(names)} in the model's latest version folder")
    _check_name(folder.name)
    return ModelEntry(folder.name, str(number), path, int(max_batch) if max_batch and int(max_batch) > 0 else None)


def _config_field(text: str, key: str) -> str | None:
    """A top-level scalar of config.pbtxt (protobuf text format), without a protobuf dependency."""
    found = re.search(rf'^{key}\s*:\s*"?([^"\s]+)"?', text, re.M)
    return found.group(1) if found else None


def _check_name(name: str) -> None:
    if not NAME_OK.match(name):
        raise TLError(f"model name {name!r} cannot appear in a URL path; use letters, digits, '.', '_' and '-'")
