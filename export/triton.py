"""`tl export --triton REPO`: the export's artifacts as models of a Triton model repository.

Layout (what Triton and `tl serve` read)::

    REPO/<model>/config.pbtxt        platform, max_batch_size, I/O, batching, instances, the tl spec
    REPO/<model>/labels.txt          the spec's classes, one a line (Triton's classification extension)
    REPO/<model>/1/model.onnx        or 1/model.plan + 1/model.plan.json (tl's sidecar; Triton ignores it)

Each artifact the export keeps is its own model: model.onnx is ``<name>``, the others add what
they are (``<name>_fp16``, ``<name>_int8``, ``<name>_fp16_trt``, ``<name>_int8_trt``), so a model's
name never depends on which other flags were given (the suffixes, platforms and file names are
columns of tl.runtime.artifact.ARTIFACTS). Writing holds REPO's lock, builds every model
folder in a staging folder inside REPO and renames each in whole, replacing only the folders of
the same names, and only where tl wrote them (their config.pbtxt carries the ``tl.spec`` parameter):
any other folder of such a name is refused before the export starts. Pure file work: no torch, no
onnx, no TensorRT.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tl.export import triton_releases
from tl.runtime.artifact import ARTIFACTS, MAX_BATCH_KEY, SPEC_KEY, ArtifactKind, artifact_kind, onnx_metadata, read_spec
from tl.runtime.errors import TLError
from tl.runtime.files import atomic_write_text, ensure_output_dir, os_error_message, output_lock, signals_deferred
from tl.runtime.progress import SILENT, Reporter
from tl.runtime.serve.options import ServeOptions
from tl.runtime.sidecar import read_sidecar, sidecar_path
from tl.runtime.spec import ModelSpec

VERSION = "1"  # the one version folder tl writes; Triton serves the highest by default
LABELS = "labels.txt"
STAGING = ".tl-triton-staging"  # inside REPO: model folders being written (or left by a killed export)
# Dynamic batching waits as long as tl serve does by default (0: Triton's default too): a batch takes
# what queued while the previous one ran, so a lone request pays no delay.
QUEUE_DELAY_US = round(ServeOptions.max_delay_ms * 1000)
DATA_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}
# A Triton model name is a folder name and a URL path segment (/v2/models/<name>): keep it plain.
MAX_NAME = 128
NAME_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_NAME - 1}}}")
LONGEST_SUFFIX = max(len(k.triton_suffix) for k in ARTIFACTS)
# What marks a model folder as tl's: its config.pbtxt's parameter holding the spec (config_pbtxt writes it).
SPEC_PARAMETER = f'key: "{SPEC_KEY}"'
CONFIG_READ_LIMIT = 1 << 20  # a config.pbtxt is a few kB; read no more of a file of that name


@dataclass(frozen=True)
class TritonModel:
    """One model of the repository: what its config.pbtxt says, and the artifact it serves."""

    name: str
    artifact: ArtifactKind  # what it serves: platform, file name and instance kind
    spec: ModelSpec
    max_batch_size: int
    source: Path

    @property
    def platform(self) -> str:
        return self.artifact.triton_platform


def _artifact_kind(artifact: str | Path) -> ArtifactKind:
    kind = artifact_kind(artifact)
    if kind is None:
        raise TLError(f"{artifact}: Triton serves .onnx and .plan files, not this")
    return kind


def model_name(base: str, artifact: str | Path) -> str:
    """``base`` for model.onnx; the precision (and ``_trt`` for an engine) appended for the others."""
    return base + _artifact_kind(artifact).triton_suffix


def check_name(name: str, *, option: str = "--triton-name") -> str:
    if not NAME_RE.fullmatch(name):
        raise TLError(f"{option} {name!r}: a Triton model name is its folder and URL name; use letters, digits, "
                      f"'_', '-' and '.' (starting with a letter or digit, at most {MAX_NAME} characters)")
    return name


def check_model_names(base: str, files: list[str]) -> None:
    """Each model name ``base`` takes with the suffix of the artifact it serves fits Triton's bound."""
    for f in files:
        name = model_name(base, f)
        if len(name) > MAX_NAME:
            room = MAX_NAME - len(name) + len(base)
            raise TLError(f"--triton-name: the model of {f} would be named {name[:24]}... ({len(name)} characters, "
                          f"the name plus {_artifact_kind(f).triton_suffix!r}); Triton takes at most {MAX_NAME}: "
                          f"give a --triton-name of at most {room} characters")


def check_labels(spec: ModelSpec) -> None:
    """Every class name fits one line of labels.txt (Triton reads it a line per label, as UTF-8)."""
    for c in spec.classes:
        broken = "\n" in c or "\r" in c
        try:
            c.encode("utf-8")
        except UnicodeEncodeError:
            broken = True
        if broken:
            raise TLError(f"class name {c!r} cannot be a line of Triton's labels.txt (one label a line, UTF-8): "
                          "rename that class folder and retrain, or export without --triton")


def default_name(folder: str | Path) -> str:
    """The export folder's name, with what Triton cannot take turned into '_', short enough for every suffix."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(folder).resolve().name).lstrip("._-")
    return name[:MAX_NAME - LONGEST_SUFFIX] or "model"


def base_name(name: str | None, out: str | Path) -> str:
    """The Triton model name of model.onnx (the other artifacts add a suffix): ``name``, else the export folder's."""
    return check_name(name) if name is not None else default_name(out)


def describe(artifact: str | Path, name: str) -> TritonModel:
    """The repository entry for ``artifact``: its spec and batch bound, read from the file (metadata or sidecar)."""
    artifact = Path(artifact)
    kind = _artifact_kind(artifact)
    if kind.format == "engine":
        spec, build = read_sidecar(artifact)
        _check_min_batch(build.min_batch, str(artifact))
        max_batch = build.max_batch  # Triton refuses a max_batch_size above the engine profile's max
    else:
        spec = read_spec(artifact)
        bound = onnx_metadata(artifact).get(MAX_BATCH_KEY)
        if bound is None:
            raise TLError(f"{artifact}: no '{MAX_BATCH_KEY}' metadata (its dynamic batch bound); re-export it with tl export")
        max_batch = int(bound)
    return TritonModel(name=check_name(name), artifact=kind, spec=spec, max_batch_size=max_batch, source=artifact)


def _check_min_batch(min_batch: int, what: str) -> None:
    """Triton's batcher sends any batch from 1 up to max_batch_size, and does not pad as tl's Classifier does."""
    if min_batch > 1:
        raise TLError(f"{what}: the engine's batch profile starts at {min_batch}, but Triton sends batches "
                      "from 1 up; build it with --min-batch 1 to serve it from a Triton repository")


def _quote(text: str) -> str:
    """A protobuf text-format string literal; ASCII only, so any parser reads it the same."""
    if not text.isascii() or any(ord(c) < 32 for c in text):
        raise TLError(f"cannot write {text!r} into config.pbtxt: only printable ASCII is allowed in names")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_pbtxt(m: TritonModel) -> str:
    """config.pbtxt in Triton's ModelConfig text format (model_config.proto); dims leave out the batch axis."""
    s = m.spec
    dtype = DATA_TYPES.get(s.input.dtype)
    if dtype is None:
        raise TLError(f"{m.source}: input dtype {s.input.dtype!r} has no Triton type here ({', '.join(DATA_TYPES)})")
    return "\n".join([
        f"# written by tl export from {m.source.name}; Triton and tl serve load this folder as is",
        f"name: {_quote(m.name)}",
        f"platform: {_quote(m.platform)}",
        f"max_batch_size: {m.max_batch_size}",
        "input [",
        f"  {{ name: {_quote(s.input.name)} data_type: {dtype} format: FORMAT_NCHW "
        f"dims: [ {s.input.channels}, {s.input.height}, {s.input.width} ] }}",
        "]",
        "output [",
        f"  {{ name: {_quote(s.output.name)} data_type: TYPE_FP32 dims: [ {s.num_classes} ] "
        f"label_filename: {_quote(LABELS)} }}",
        "]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {QUEUE_DELAY_US} }}",
        f"instance_group [ {{ count: 1 kind: {m.artifact.triton_instance} }} ]",
        "parameters {",
        f"  key: {_quote(SPEC_KEY)}",
        f"  value {{ string_value: {_quote(s.to_json())} }}",
        "}",
        "",
    ])


def labels_txt(spec: ModelSpec) -> str:
    """One class a line, in the spec's order: line i is the label of logit i."""
    check_labels(spec)
    return "".join(f"{c}\n" for c in spec.classes)


# -- the repository ---------------------------------------------------------------------------


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_repo(repo: str | Path, base: str, *, out: str | Path, inputs: list[str | Path]) -> Path:
    """Refuse, before any export work, a REPO that would overwrite an input or mix with the export folder."""
    repo_r, out_r = Path(repo).resolve(), Path(out).resolve()
    inputs_r = [Path(p).resolve() for p in inputs]
    if any(repo_r == p for p in inputs_r):
        raise TLError(f"--triton {repo} is an input of this export; give another folder")
    if _within(repo_r, out_r) or _within(out_r, repo_r):
        raise TLError(f"--triton {repo} and the export folder {out} must not contain each other "
                      "(Triton would read every folder of REPO as a model)")
    for suffix in (k.triton_suffix for k in ARTIFACTS):
        folder = repo_r / (base + suffix)
        hit = next((p for p in inputs_r if _within(p, folder)), None)
        if hit is not None:
            raise TLError(f"--triton {repo}: writing model {base + suffix} would replace {folder}, "
                          f"which holds the input {hit}; give another --triton or --triton-name")
    return ensure_output_dir(repo, option="--triton")


def is_tl_model(folder: Path) -> bool:
    """A model folder tl wrote: a real folder whose config.pbtxt carries tl's spec parameter."""
    config = folder / "config.pbtxt"
    if folder.is_symlink() or not folder.is_dir() or config.is_symlink() or not config.is_file():
        return False
    try:
        with open(config, "rb") as f:
            return SPEC_PARAMETER in f.read(CONFIG_READ_LIMIT).decode("utf-8", "replace")
    except OSError:
        return False


def check_models(repo: Path, names: list[str]) -> None:
    """Refuse, before anything is written, a REPO entry of a model's name that tl did not write."""
    for name in names:
        folder = repo / name
        if (folder.exists() or folder.is_symlink()) and not is_tl_model(folder):
            raise TLError(f"--triton {repo}: {folder} is not a model folder tl wrote (no config.pbtxt with "
                          f"'{SPEC_KEY}'), and model {name} would replace it; move it away or give another "
                          "--triton or --triton-name")


def _stage(m: TritonModel, folder: Path) -> None:
    """Write one model folder: config.pbtxt, labels.txt and 1/ with the artifact (and an engine's sidecar)."""
    version = folder / VERSION
    version.mkdir(parents=True)
    target = version / m.artifact.triton_file
    shutil.copyfile(m.source, target)
    if m.artifact.format == "engine":
        shutil.copyfile(sidecar_path(m.source), sidecar_path(target))
    atomic_write_text(folder / LABELS, labels_txt(m.spec))
    atomic_write_text(folder / "config.pbtxt", config_pbtxt(m))


def _move_in(repo: Path, staging: Path, names: list[str]) -> None:
    """Each staged model folder replaces the one of its name, whole; other models stay as they are.

    The old folder steps aside into staging (removed with it) and comes back should the new one fail to move in.
    """
    old = staging / ".replaced"
    old.mkdir()
    with signals_deferred():
        for name in names:
            target, backup = repo / name, old / name
            had_one = target.exists() or target.is_symlink()
            if had_one:
                os.replace(target, backup)
            try:
                os.replace(staging / name, target)
            except OSError:
                if had_one:
                    os.replace(backup, target)
                raise


def write_repository(repo: str | Path, artifacts: list[Path], base: str, *, release: str | None = None,
                     reporter: Reporter = SILENT) -> list[Path]:
    """Add ``artifacts`` to the Triton repository ``repo`` as models ``base[_suffix]``; returns their folders.
    With ``release`` (YY.MM), each ONNX file's own opset and IR version must be what that Triton loads."""
    repo = Path(repo)
    models = [describe(a, model_name(base, a)) for a in artifacts]
    for m in models:
        check_labels(m.spec)
        if release is not None and m.artifact.format == "onnx":
            triton_releases.check_file(triton_releases.release(release), m.source)
    with output_lock(repo, "tl export --triton", reporter=reporter):
        check_models(repo, [m.name for m in models])
        staging = repo / STAGING
        if staging.exists():  # left by a killed export: we hold the lock, so nobody is writing it
            shutil.rmtree(staging, ignore_errors=True)
            reporter.info(f"removed {STAGING} in {repo}, left by an export that was killed")
        try:
            with reporter.task(f"writing Triton repository {repo}"):
                for m in models:
                    _stage(m, staging / m.name)
                _move_in(repo, staging, [m.name for m in models])
        except OSError as e:
            raise TLError(f"could not write the Triton repository: {os_error_message(e)}") from e
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return [repo / m.name for m in models]


# -- the export's step ------------------------------------------------------------------------


def check_target(repo: str | Path, name: str | None, *, out: Path, inputs: list[str | Path], files: list[str],
                 spec: ModelSpec, engine_min_batch: int | None, release: str | None = None,
                 onnx_source: Path | None = None, opset: int | None = None) -> str:
    """``tl export --triton``: the engines' batch profile (``engine_min_batch``, where the export builds engines),
    the ONNX files against ``release`` (:func:`check_release`), the model names of ``files`` (the artifacts the
    export keeps), the labels and REPO, checked before minutes of export work and before anything is written;
    returns the base model name."""
    if engine_min_batch is not None:
        _check_min_batch(engine_min_batch, f"--triton with --min-batch {engine_min_batch}")
    if release is not None:
        check_release(release, files, onnx_source=onnx_source, opset=opset)
    base = base_name(name, out)
    check_model_names(base, files)
    check_labels(spec)
    folder = check_repo(repo, base, out=out, inputs=inputs)
    check_models(folder, [model_name(base, f) for f in files])
    return base


def check_release(release: str, files: list[str], *, onnx_source: Path | None, opset: int | None) -> None:
    """``--triton-release``: the ONNX files among ``files`` are what that Triton's ONNX Runtime loads. Each derives
    from model.onnx: an ONNX source's own opset and IR version, else those the checkpoint export writes at ``opset``.
    (The files themselves are checked again when the repository is written.)"""
    onnx_files = [f for f in files if _artifact_kind(f).format == "onnx"]
    if not onnx_files:
        return
    r = triton_releases.release(release)
    if onnx_source is not None:
        triton_releases.check_file(r, onnx_source)
    elif opset is not None:
        triton_releases.check(r, f"the export ({', '.join(onnx_files)})", opset=opset,
                              ir=triton_releases.expected_ir(opset))


def write_export(repo: str | Path, base: str, out: Path, files: list[str], *, release: str | None = None,
                 reporter: Reporter = SILENT) -> list[Path]:
    """After the export is committed (its lock still held): its artifacts into REPO as models ``base[_suffix]``."""
    try:
        return write_repository(repo, [out / f for f in files], base, release=release, reporter=reporter)
    except TLError as e:
        raise TLError(f"{e} (the export in {out} is complete; run tl export again to write the repository)") from e
