"""What `tl serve MODEL_OR_REPO` serves: one .onnx/.plan file, or a Triton-layout repository.

Repository layout (what `tl export --triton REPO` writes and Triton loads)::

    REPO/<model>/config.pbtxt
    REPO/<model>/labels.txt
    REPO/<model>/<version>/model.onnx | model.plan (+ model.plan.json, tl's engine sidecar)

The spec travels inside each artifact, so config.pbtxt is read only for ``platform``,
``default_model_filename`` and ``max_batch_size``. As Triton's default version policy, the
highest version is served.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tl.runtime.artifact import MODEL_SUFFIXES, TRITON_FILES, kind_of
from tl.runtime.errors import TLError
from tl.runtime.files import special_kind

NAME_OK = re.compile(r"^[A-Za-z0-9_.\-]+$")
DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit also takes '²', which int() refuses
LABEL_FILE = "labels.txt"  # what `tl export --triton` writes and its config.pbtxt names
WHAT_TO_GIVE = "give a model file (.onnx, .plan) or a Triton-layout repository folder"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    version: str
    path: Path
    max_batch: int | None = None  # config.pbtxt's max_batch_size, when it says one
    label_file: str | None = None  # labels.txt beside config.pbtxt, as Triton's label_filename names it


def model_name_for(path: Path) -> str:
    """``model.int8.onnx`` -> ``model.int8``: only the model suffix goes, so sibling files stay apart."""
    return path.name[: -len(path.suffix)] if path.suffix.lower() in MODEL_SUFFIXES else path.name


def find_models(source: str | Path, name: str | None = None) -> list[ModelEntry]:
    """The models to serve from a file or a repository folder; a user error if there are none."""
    source = Path(source)
    if not source.exists():
        raise TLError(f"not found: {source}; {WHAT_TO_GIVE}")
    if not source.is_file() and not source.is_dir():
        raise TLError(f"{source}: not a model file or a repository folder (it is {_file_kind(source)}); {WHAT_TO_GIVE}")
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
    versions = sorted((int(v.name), v) for v in _version_folders(folder))
    if not config.is_file() and not versions:
        return None
    if not versions:
        raise TLError(f"{folder}: no version folder (e.g. {folder / '1' / 'model.onnx'})")
    text = config.read_text(errors="replace") if config.is_file() else ""
    number, vdir = versions[-1]
    names = _model_files(config, text)
    path = next((vdir / n for n in names if (vdir / n).is_file()), None)
    if path is None:
        raise TLError(f"{vdir}: no {' or '.join(names)} in the model's latest version folder")
    _check_name(folder.name)
    labels = LABEL_FILE if (folder / LABEL_FILE).is_file() else None
    return ModelEntry(folder.name, str(number), path, _max_batch(config, text), labels)


def _model_files(config: Path, config_text: str) -> list[str]:
    """The file names a version folder may hold the model as: config.pbtxt's default_model_filename
    when it says one, else the platform's file name (model.onnx, model.plan), else any of them."""
    named = _config_field(config_text, "default_model_filename")
    if named is not None:
        if "/" in named or "\\" in named or named in (".", ".."):
            raise TLError(f"{config}: default_model_filename must be a file name in the version folder (got {named!r})")
        return [named]
    platform = _config_field(config_text, "platform")
    return [TRITON_FILES[platform]] if platform in TRITON_FILES else list(TRITON_FILES.values())


def _version_folders(folder: Path) -> list[Path]:
    """The model's numbered folders; a name of digits that are not 0-9 would be a version Triton cannot read."""
    found = []
    for v in folder.iterdir():
        if not v.is_dir() or not v.name.isdigit():
            continue
        if not DIGITS.fullmatch(v.name):
            raise TLError(f"{v}: a version folder's name must be the digits 0-9 (got {v.name!r}); rename it, "
                          "e.g. to 1")
        found.append(v)
    return found


def _max_batch(config: Path, text: str) -> int | None:
    """config.pbtxt's max_batch_size when it says one above 0 (0: the model takes no batch dimension)."""
    value = _config_field(text, "max_batch_size")
    if value is None:
        return None
    if not DIGITS.fullmatch(value):
        raise TLError(f"{config}: max_batch_size must be a whole number of 0 or more (got {value!r})")
    return int(value) or None


def _file_kind(path: Path) -> str:
    return special_kind(path.stat().st_mode, "neither a file nor a folder")


def _config_field(text: str, key: str) -> str | None:
    """A top-level scalar of config.pbtxt (protobuf text format), without a protobuf dependency."""
    found = re.search(rf'^{key}\s*:\s*"?([^"\s]+)"?', text, re.M)
    return found.group(1) if found else None


def _check_name(name: str) -> None:
    if not NAME_OK.match(name):
        raise TLError(f"model name {name!r} cannot appear in a URL path; use letters, digits, '.', '_' and '-'")
