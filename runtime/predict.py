"""Classify files and folders with one model: what `tl predict` does, as a library call.

    from tl.runtime.predict import PredictOptions, predict_files
    result = predict_files(PredictOptions(model="exports/x/model.int8.onnx", paths=["photos/"]))

A file that cannot be read is reported through the reporter and listed in the result; the
others are still classified.

File names are bytes on POSIX; one that is not valid UTF-8 reaches Python with its bad bytes as
lone surrogates, which no UTF-8 writer accepts. Results written for scripts (CSV, JSON) carry such
a name with each bad byte as a backslash escape (``photo\\xff.jpg``, as ``ls -b`` shows it) through
:func:`text_name`; valid names are written unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from tl.runtime.backends.registry import DEFAULT_BATCH_SIZE
from tl.runtime.errors import TLError, require
from tl.runtime.progress import SILENT, Reporter

if TYPE_CHECKING:  # numpy and Pillow load with the classifier, not with the options (`tl --help`)
    from tl.runtime.classifier import Classifier, Prediction


@dataclass(frozen=True)
class PredictOptions:
    model: str | Path
    paths: Sequence[str | Path] = ()
    top_k: int = 5
    batch_size: int = DEFAULT_BATCH_SIZE  # images per inference call
    backend: str = "auto"
    providers: str | None = None  # ONNX Runtime providers in order, e.g. "cpu" or "trt,cuda,cpu"
    spec: str | Path | None = None  # spec.json for a model that carries none
    device: int = 0  # GPU index
    threads: int | None = None  # ONNX Runtime intra-op / OpenVINO inference threads (None: every core)
    inference_precision: str | None = None  # OpenVINO only: f32 | bf16 | f16 | default

    def __post_init__(self) -> None:
        require((self.top_k >= 1, f"--top-k must be at least 1 (got {self.top_k})"),
                (self.batch_size >= 1, f"--batch-size must be at least 1 (got {self.batch_size})"),
                (self.threads is None or self.threads >= 1, f"--threads must be at least 1 (got {self.threads})"))


@dataclass
class Inputs:
    images: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # non-image files
    shown: dict[Path, str] = field(default_factory=dict)  # image -> its path relative to the folder it was found in


@dataclass
class PredictResult:
    predictions: list[Prediction]
    failures: list[tuple[Path, str]]  # images that could not be read, and why
    inputs: Inputs
    model: str  # file name
    backend: str
    precision: str
    providers: list[str]


def collect_inputs(paths: Sequence[str | Path]) -> Inputs:
    """Files and folders (walked, sorted) -> image files; other files are counted, not read."""
    from tl.runtime.images import is_image_file

    found = Inputs()
    seen: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise TLError(f"not found: {p}")
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            if f in seen:
                continue
            seen.add(f)
            (found.images if is_image_file(f) else found.skipped).append(f)
            found.shown[f] = str(f.relative_to(p)) if p.is_dir() else str(f)
    if not found.images:
        where = ", ".join(map(str, paths))
        raise TLError(f"no images found in {where} ({len(found.skipped)} other files skipped); "
                      "give image files (jpg, png, bmp, gif, tif, webp) or folders that hold them")
    return found


def load_classifier(options: PredictOptions, *, reporter: Reporter = SILENT) -> "Classifier":
    """The model as the options ask for it (backend, providers, device, spec, threads).

    A ``spec`` given for a model that carries its own replaces it: the reporter is told, with
    how the two differ, since labels or preprocessing that do not fit give wrong answers, not errors.
    """
    from tl.runtime.classifier import Classifier

    o = options
    clf = Classifier.load(o.model, backend=o.backend, providers=o.providers, device=o.device, spec=o.spec,
                          intra_op_threads=o.threads, inference_precision=o.inference_precision)
    if o.spec is not None:
        replaced = spec_replacement(clf.path, clf.spec, given=o.spec)
        if replaced:
            reporter.warning(replaced)
    return clf


def spec_replacement(model: Path, spec, *, given: str | Path) -> str | None:
    """What a given spec does to the spec ``model`` carries; None when it carries none."""
    from tl.runtime.artifact import SPEC_KEY, kind_of, onnx_metadata, read_spec
    from tl.runtime.sidecar import sidecar_path

    carries = SPEC_KEY in onnx_metadata(model) if kind_of(model) == "onnx" else sidecar_path(model).is_file()
    if not carries:
        return None
    try:
        embedded = read_spec(model)
    except TLError as e:
        return f"--spec {given} replaces the spec in {model}, which tl cannot read ({e})"
    changes = embedded.differences(spec)
    how = f"it differs in {'; '.join(changes)}" if changes else "they are the same"
    return f"--spec {given} replaces the spec embedded in {model}: {how}"


def output_row(prediction: "Prediction") -> dict:
    """``prediction.to_dict()`` with its file name and labels as valid Unicode, for CSV and JSON writers."""
    row = prediction.to_dict()
    row["source"], row["label"] = text_name(row["source"]), text_name(row["label"])
    row["top_k"] = [{**k, "label": text_name(k["label"])} for k in row["top_k"]]
    return row


def text_name(text: str | None) -> str | None:
    """``text`` as valid Unicode: a file name's undecodable bytes (surrogate escapes) as ``\\xNN``."""
    if text is None:
        return None
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is no byte of a file name (e.g. from JSON)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def classify_inputs(clf: "Classifier", found: Inputs, options: PredictOptions, *,
                    reporter: Reporter = SILENT) -> PredictResult:
    """Classify every image, ``batch_size`` at a time; an unreadable one is a warning and a failure."""
    import numpy as np

    from tl.runtime.images import preprocess_one

    preds: list[Prediction] = []
    failures: list[tuple[Path, str]] = []
    with reporter.task("classifying", total=len(found.images)) as task:
        for start in range(0, len(found.images), options.batch_size):
            chunk = found.images[start:start + options.batch_size]
            arrays, ok = [], []
            for f in chunk:
                try:
                    arrays.append(preprocess_one(f, clf.spec))
                    ok.append(str(f))
                except TLError as e:
                    failures.append((f, str(e)))
                    reporter.warning(str(e))
            if arrays:
                preds += clf.postprocess(clf.predict_logits(np.stack(arrays)), top_k=options.top_k, sources=ok)
            task.advance(len(chunk))
    return PredictResult(preds, failures, found, clf.path.name, clf.backend_name, clf.precision, clf.providers)


def predict_files(options: PredictOptions, *, reporter: Reporter = SILENT) -> PredictResult:
    """Find the images under ``options.paths``, load the model, classify them all."""
    found = collect_inputs(options.paths)
    with load_classifier(options, reporter=reporter) as clf:
        return classify_inputs(clf, found, options, reporter=reporter)
