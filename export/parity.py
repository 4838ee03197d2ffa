"""Parity: every artifact against eager PyTorch FP32, on the same images.

Images: --val-dir, else the run's validation images recorded in the checkpoint, else
synthetic ones (tl.train.synth.draw_shape), sampled by ``tl.runtime.images.sample_files``
(as calibration and bench are) and preprocessed by the runtime's one pipeline. Every
artifact runs through ``tl.runtime.Classifier``, so what export verifies is what
``tl predict`` runs. The comparison is on logits: max/mean absolute difference and top-1
agreement. Where the images' labels are known (the run's val_labels, or a --val-dir laid out
as one folder per class), each artifact's top-1 accuracy is reported beside its agreement.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tl.export.options import IMAGE_COUNT
from tl.runtime.artifact import kind_of
from tl.runtime.errors import TLError
from tl.runtime.spec import ModelSpec

FP32_MAX_ABS = 1e-3
MIN_AGREEMENT = {"fp16": 0.99, "int8": 0.98}
# A reference whose best two logits are this close is a tie: either class is a correct top-1.
TIE_MARGIN = 1e-5
SYNTH_COUNT = 64
CHUNK = 32  # images per inference call in the checks


@dataclass
class ArtifactReport:
    file: str
    precision: str
    backend: str
    provider: str
    size_mb: float
    seconds: float
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    top1_agreement: float | None = None
    accuracy: float | None = None  # top-1 on labelled parity images; None when their labels are unknown
    status: str = "ok"  # ok | warning | failed | skipped
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ParityImages:
    batch: np.ndarray  # NCHW float32, already preprocessed
    source: str  # "val-dir FOLDER" | "checkpoint val_files" | "synthetic"
    files: tuple[str, ...] = field(default_factory=tuple)
    labels: np.ndarray | None = None  # class index per image, where known


def parity_images(*, spec: ModelSpec, ckpt: dict[str, Any] | None, val_dir: str | Path | None,
                  count: int = IMAGE_COUNT, seed: int = 0) -> ParityImages:
    """The images every artifact is compared on (a fixed sample, so reruns compare the same)."""
    from tl.runtime.images import images_in_folder, preprocess, sample_files

    if val_dir is not None:
        files = images_in_folder(val_dir, option="--val-dir")
        source = f"val-dir {Path(val_dir)}"
        label_of = folder_labels(val_dir, files, spec.classes)
    else:
        data = (ckpt or {}).get("data") or {}
        files = [Path(f) for f in data.get("val_files") or [] if Path(f).is_file()]
        source = "checkpoint val_files"
        label_of = _recorded_labels(data, spec.classes)
    if files:
        files = sample_files(files, count, seed=seed)
        labels = np.asarray([label_of[f] for f in files]) if label_of and all(f in label_of for f in files) else None
        return ParityImages(preprocess(files, spec), source, tuple(str(f) for f in files), labels)
    return ParityImages(synthetic_batch(spec, min(count, SYNTH_COUNT), seed=seed), "synthetic")


def folder_labels(root: str | Path, files: list[Path], classes: list[str]) -> dict[Path, int] | None:
    """Labels from a ROOT/<class>/image layout, or None when any image sits outside a class folder."""
    index = {c: i for i, c in enumerate(classes)}
    labels = {}
    for f in files:
        parts = Path(f).relative_to(root).parts
        if len(parts) < 2 or parts[0] not in index:
            return None
        labels[Path(f)] = index[parts[0]]
    return labels


def _recorded_labels(data: dict[str, Any], classes: list[str]) -> dict[Path, int] | None:
    """The checkpoint's val_labels, when they index the model's classes (as `tl train` records them)."""
    files, labels = data.get("val_files") or [], data.get("val_labels") or []
    if len(files) != len(labels) or list(data.get("classes", classes)) != list(classes):  # spec: tuple, record: list
        return None
    return {Path(f): int(y) for f, y in zip(files, labels)}


def accuracy(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None or not len(labels) else float((logits.argmax(1) == labels).mean())


def synthetic_batch(spec: ModelSpec, n: int, *, seed: int = 0) -> np.ndarray:
    from tl.runtime.images import preprocess
    from tl.train.synth import SHAPES, draw_shape

    size = max(spec.input.height, spec.input.width, spec.preprocess.resize_size)
    images = [draw_shape(SHAPES[i % len(SHAPES)], size, np.random.default_rng([seed, 7, i])) for i in range(n)]
    return preprocess(images, spec)


def torch_logits(model, batch: np.ndarray, *, batch_size: int = CHUNK) -> np.ndarray:
    import torch

    outs = []
    with torch.inference_mode():
        for i in range(0, len(batch), batch_size):
            outs.append(model(torch.from_numpy(batch[i : i + batch_size])).float().numpy())
    return np.concatenate(outs).astype(np.float32)


def check_reference(reference: np.ndarray, model, checkpoint: str | Path) -> None:
    """Refuse a checkpoint whose eager logits hold NaN or infinity: nothing exported from it can be checked
    (every comparison with NaN is false), and the checkpoint itself is what is broken."""
    bad = int((~np.isfinite(reference)).any(axis=1).sum())
    if not bad:
        return
    weights = nonfinite_weights(model)
    why = (f"{weights} of its weights are NaN or infinite" if weights
           else "its weights are finite, but the forward pass overflows")
    raise TLError(f"{checkpoint}: eager PyTorch gives NaN or infinite logits on {bad} of {len(reference)} parity "
                  f"images ({why}); the checkpoint is broken: export a checkpoint of a run whose loss stayed finite")


def nonfinite_weights(model) -> int:
    """How many parameter and buffer values of ``model`` are NaN or infinite."""
    import torch

    return sum(int((~torch.isfinite(t)).sum()) for t in model.state_dict().values() if t.is_floating_point())


def parity_providers() -> list[str]:
    """CUDA where onnxruntime-gpu has it, else CPU; never the TensorRT EP, which would run the
    FP32 file in reduced precision (TF32 at least) and change what the FP32 check measures. The
    runtime's CUDA EP runs FP32 files with TF32 off (use_tf32=0), so the 1e-3 limit judges FP32."""
    import onnxruntime as ort

    return ["cuda", "cpu"] if "CUDAExecutionProvider" in ort.get_available_providers() else ["cpu"]


def artifact_logits(path: str | Path, batch: np.ndarray, *, device: int = 0) -> tuple[np.ndarray, str]:
    """(logits, the provider that ran them) from an exported file, exactly as ``tl predict`` loads it."""
    from tl.runtime import Classifier

    providers = parity_providers() if kind_of(path) == "onnx" else None
    with Classifier.load(path, providers=providers, device=device) as clf:
        step = clf.max_batch or CHUNK  # bounded memory: VGG16 activations for 256 images at once are GBs
        logits = np.concatenate([clf.predict_logits(batch[i:i + step]) for i in range(0, len(batch), step)])
        return logits, clf.providers[0]


@dataclass(frozen=True)
class Comparison:
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    disagreements: int  # top-1 differences that are not ties in the reference, and images with non-finite logits
    nonfinite: int = 0  # images whose artifact logits hold a NaN or infinity


def compare(reference: np.ndarray, logits: np.ndarray) -> Comparison:
    """Differences over the images whose artifact logits are finite; an image with a NaN or infinite logit
    counts as a disagreement (NaN compares false with every limit, so it must never reach one)."""
    if reference.shape != logits.shape:
        raise RuntimeError(f"logits shape {logits.shape} != reference {reference.shape}")
    if not np.isfinite(reference).all():
        raise TLError("the reference logits hold NaN or infinity: nothing can be compared with them")
    finite = np.isfinite(logits).all(axis=1)
    diff = np.abs(reference.astype(np.float64) - logits.astype(np.float64))[finite]
    ref_top, top = reference.argmax(1), logits.argmax(1)
    agree = (ref_top == top) & finite
    # Not a real disagreement where the reference scores both classes within TIE_MARGIN.
    gap = reference[np.arange(len(reference)), ref_top] - reference[np.arange(len(reference)), top]
    real = (~agree) & ((gap > TIE_MARGIN) | ~finite)
    return Comparison(float(diff.max(initial=0.0)), float(diff.mean()) if diff.size else 0.0,
                      float(agree.mean()) if len(agree) else 1.0, int(real.sum()), int((~finite).sum()))


def judge(report: ArtifactReport, cmp: Comparison) -> None:
    """Fill the report's numbers and status: FP32 must match and no artifact may give a NaN or infinite
    logit (or the export fails); FP16 and INT8 below their agreement floor only warn, since some loss is their price."""
    report.max_abs_diff = cmp.max_abs_diff
    report.mean_abs_diff = cmp.mean_abs_diff
    report.top1_agreement = cmp.top1_agreement
    if cmp.nonfinite:
        report.status = "failed"
        report.note = f"NaN or infinite logits on {cmp.nonfinite} image(s)"
        return
    if report.precision == "fp32":
        if cmp.max_abs_diff > FP32_MAX_ABS or cmp.disagreements:
            report.status = "failed"
            report.note = (f"max abs logit diff {cmp.max_abs_diff:.3g} (limit {FP32_MAX_ABS:g}), "
                           f"{cmp.disagreements} top-1 disagreement(s)")
        return
    need = MIN_AGREEMENT.get(report.precision)
    if need is not None and cmp.top1_agreement < need:
        report.status = "warning"
        report.note = f"top-1 agreement {cmp.top1_agreement:.1%} is below {need:.0%}"
