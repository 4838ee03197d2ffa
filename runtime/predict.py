"""Classify files and folders with one model: what `tl predict` does, as a library call.

    from tl.runtime.predict import PredictOptions, predict_files
    result = predict_files(PredictOptions(model="exports/x/model.int8.onnx", paths=["photos/"]))

A file that cannot be read is reported through the reporter and listed in the result; the
others are still classified.
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


def load_classifier(options: PredictOptions) -> "Classifier":
    """The model as the options ask for it (backend, providers, device, spec, threads)."""
    from tl.runtime.classifier import Classifier

    o = options
    return Classifier.load(o.model, backend=o.backend, providers=o.providers, device=o.device, spec=o.spec,
                           intra_op_threads=o.threads, inference_precision=o.inference_precision)


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
    with load_classifier(options) as clf:
        return classify_inputs(clf, found, options, reporter=reporter)
