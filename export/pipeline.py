"""`export(options)`: a list of steps, one per artifact kind, each timed and checked the same way.

The shape of Ultralytics' ``export_<fmt>`` methods under one ``@try_export``: a step writes
one file and returns its path; :func:`_run_step` times it, reports progress, compares the
file with the reference on the parity images and returns the report row. The reference is
eager PyTorch FP32 for a checkpoint, and ONNX Runtime running the FP32 file for an export
from model.onnx, which needs no torch (:mod:`tl.export.source`).

The output folder is always one export: the command holds its lock, the steps write into a
staging folder inside it, and only a complete export is moved in (:func:`_commit`), replacing
the artifacts of an earlier export and writing export.json last. Every artifact carries the
sha256 of the checkpoint it came from (ONNX metadata, the engine's build record, export.json).
Only files an earlier tl export wrote are replaced or removed (:func:`_ours`); anything else in
the way of this export's files refuses the export before any work.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tl.export import calib, fp16, triton, trt
from tl.export import onnx as onnx_step
from tl.export import parity as par
from tl.export.options import DEFAULT_OPSET, ExportOptions
from tl.export.parity import ArtifactReport, ParityImages, accuracy
from tl.export.source import Source, calibration_files, load_source
from tl.runtime.artifact import ARTIFACTS, SPEC_KEY, artifact_for, artifact_kind, onnx_metadata
from tl.runtime.backends.registry import entry_for
from tl.runtime.errors import TLError
from tl.runtime.files import atomic_write_text, ensure_output_dir, output_lock, signals_deferred
from tl.runtime.gpu import cuda_device, import_cudart, import_tensorrt
from tl.runtime.progress import SILENT, Reporter
from tl.runtime.sidecar import read_sidecar, sidecar_path

STAGING = ".tl-export-staging"  # inside --out: an export in progress (or one killed mid-way)
REPORT = "export.json"
# Every file name an export moves into --out besides export.json: the artifacts, engine sidecars, the timing cache.
OWN_NAMES = frozenset([k.file for k in ARTIFACTS] + [sidecar_path(k.file).name for k in ARTIFACTS
                                                    if k.format == "engine"] + [trt.TIMING_CACHE])


@dataclass
class ExportResult:
    out: Path
    artifacts: list[ArtifactReport]
    report: Path  # export.json
    images: int
    image_source: str
    warnings: list[str] = field(default_factory=list)
    triton: list[Path] = field(default_factory=list)  # model folders written with --triton
    reference_accuracy: float | None = None  # the reference's top-1 on the parity images, where labelled
    calibration: dict[str, Any] | None = None
    reference: str = "eager PyTorch FP32"  # what every artifact was compared with (tl.export.source)

    def files(self) -> list[Path]:
        return [self.out / a.file for a in self.artifacts]


@dataclass
class ExportContext:
    """What every step reads: the source, where files go, the parity images and their reference logits."""

    options: ExportOptions
    source: Source  # the checkpoint's model, or the FP32 ONNX file; its stamp goes on every artifact
    out: Path  # the export folder: touched only by _commit
    staging: Path  # where the steps write; moved into ``out`` when every step succeeded
    work: Path  # inside staging: sources that are not outputs (model.onnx without --onnx); never moved into ``out``
    images: ParityImages
    reference: np.ndarray
    reporter: Reporter
    calib_files: list[Path] | None = None
    calibration: dict[str, Any] | None = None
    reports: list[ArtifactReport] = field(default_factory=list)

    def place(self, name: str) -> Path:
        """Where ``name`` is written: the staging folder, or the work folder for a source nobody asked for."""
        source_only = name == _onnx_file("fp32") and not self.options.keep_onnx
        return self.work / name if source_only else self.staging / name

    def find(self, name: str) -> Path:
        return self.staging / name if (self.staging / name).is_file() else self.work / name


# -- the steps --------------------------------------------------------------------------------


def _onnx_file(precision: str) -> str:
    return artifact_for("onnx", precision).file


def step_onnx(ctx: ExportContext) -> Path:
    src, path = ctx.source, ctx.place(_onnx_file("fp32"))
    if src.is_onnx:  # the file itself: every other artifact derives from it, and it stays beside them
        shutil.copyfile(src.path, path)
        return path
    return onnx_step.export_onnx(src.model, src.spec, path, opset=ctx.options.opset or DEFAULT_OPSET,
                                 max_batch=src.max_batch, checkpoint_sha256=src.stamp)


def step_fp16(ctx: ExportContext) -> Path:
    return fp16.convert_fp16(ctx.find(_onnx_file("fp32")), ctx.place(_onnx_file("fp16")))


def step_int8(ctx: ExportContext) -> Path:
    path = ctx.place(_onnx_file("int8"))
    ctx.calibration = calib.quantize_for_export(ctx, ctx.find(_onnx_file("fp32")), path)
    return path


def step_engine(precision: str) -> Callable[[ExportContext], Path]:
    def step(ctx: ExportContext) -> Path:
        o = ctx.options
        cache = ctx.out / trt.TIMING_CACHE  # an earlier export's timing cache still speeds this build up
        if cache.is_file() and not (ctx.staging / trt.TIMING_CACHE).exists():
            shutil.copyfile(cache, ctx.staging / trt.TIMING_CACHE)
        engine, _ = trt.build_engine(  # the engine's build record takes the checkpoint stamp from its source ONNX
            sources=[ctx.staging, ctx.work], out_dir=ctx.staging, spec=ctx.source.spec, precision=precision,
            device=o.device,
            options=trt.TrtOptions(min_batch=o.min_batch, opt_batch=o.opt_batch, max_batch=ctx.source.max_batch,
                                   workspace_gib=o.workspace, opt_level=o.opt_level),
        )
        return engine

    return step


def plan_steps(o: ExportOptions) -> list[tuple[str, str, Callable[[ExportContext], Path]]]:
    """(precision, description, step) in order; every artifact after the first derives from model.onnx."""
    first = f"copying {Path(o.checkpoint).name}" if o.from_onnx else f"exporting {_onnx_file('fp32')} (torch.onnx)"
    steps = {"fp32": (first, step_onnx),
             "fp16": (f"converting {_onnx_file('fp16')}", step_fp16),
             "int8": (f"quantizing {_onnx_file('int8')}", step_int8)}
    plan = [(p, *steps[p]) for p in o.precisions]
    plan += [(p, f"building TensorRT {p} engine", step_engine(p)) for p in o.engine_precisions]
    return plan


def kept_files(o: ExportOptions) -> list[str]:
    """The artifacts an export of ``o`` leaves in its folder (model.onnx only where it is an output)."""
    onnx = [_onnx_file(p) for p in o.precisions if p != "fp32" or o.keep_onnx]
    return onnx + [artifact_for("engine", p).file for p in o.engine_precisions]


def _written_names(o: ExportOptions) -> list[str]:
    """Every name an export of ``o`` may move into its folder: artifacts, engine sidecars, timing cache, report."""
    files = kept_files(o)
    sidecars = [sidecar_path(f).name for f in files if artifact_kind(f).format == "engine"]
    return files + sidecars + ([trt.TIMING_CACHE] if o.engine_precisions else []) + [REPORT]


def _run_step(ctx: ExportContext, precision: str, description: str, step: Callable[[ExportContext], Path]) -> ArtifactReport:
    """Time one step, then check its file against the reference (the ``@try_export`` of this pipeline)."""
    with ctx.reporter.task(description):
        t0 = time.perf_counter()
        path = step(ctx)
        seconds = time.perf_counter() - t0
    with ctx.reporter.task(f"checking {path.name} against {ctx.source.reference}"):
        logits, provider = par.artifact_logits(path, ctx.images.batch, device=ctx.options.device)
    report = ArtifactReport(file=path.name, precision=precision, backend=entry_for(path).name, provider=provider,
                            size_mb=round(path.stat().st_size / 1e6, 3), seconds=round(seconds, 3))
    par.judge(report, par.compare(ctx.reference, logits))
    report.accuracy = par.accuracy(logits, ctx.images.labels)
    return report


# -- the whole export ---------------------------------------------------------------------------


def _require_tensorrt_gpu(o: ExportOptions) -> None:
    """Fail before minutes of ONNX work: TensorRT, cuda-python (parity runs engines through it) and a GPU."""
    if not o.trt:
        return
    import_tensorrt()
    cuda_device(import_cudart(), o.device)


def _prepare(o: ExportOptions, reporter: Reporter, source: Source, calib_files: list[Path] | None, *,
             out: Path) -> ExportContext:
    with reporter.task(f"{source.reference} reference"):
        images = par.parity_images(spec=source.spec, ckpt=source.ckpt, val_dir=o.val_dir, count=o.parity_count)
        reference = source.logits(images.batch)
    staging = out / STAGING
    _remove_leftovers(out, reporter)
    staging.mkdir()
    work = staging / "sources"  # a folder: _commit moves only staging's files
    work.mkdir()
    return ExportContext(options=o, source=source, out=out, staging=staging, work=work, images=images, reference=reference,
                         reporter=reporter, calib_files=calib_files)


def _remove_leftovers(out: Path, reporter: Reporter) -> None:
    """What an export killed mid-way (SIGKILL, power) left in ``out``: its staging folder and export.json's
    temporary file. We hold the lock, so no live export is writing them; say what was removed."""
    left = [p for p in [out / STAGING, *out.glob(f".{REPORT}.*.tmp")] if p.exists() or p.is_symlink()]
    for p in left:
        _remove(p)
    if left:
        reporter.info(f"removed {', '.join(p.name for p in left)} in {out}, left by an export that was killed")


def export(options: ExportOptions, *, reporter: Reporter = SILENT) -> ExportResult:
    """Write the requested artifacts and export.json into ``options.output_dir()``; see the module docstring."""
    _require_tensorrt_gpu(options)
    source = load_source(options)
    if options.trt:
        options.check_profile(source.max_batch)
    calib_files = calibration_files(options, source)
    triton_base = _check_triton_target(options, source)
    out = ensure_output_dir(options.output_dir(), option="--out")
    with output_lock(out, "tl export", reporter=reporter):
        _check_targets(out, _written_names(options))
        try:
            ctx = _prepare(options, reporter, source, calib_files, out=out)
            for precision, description, step in plan_steps(options):
                report = _run_step(ctx, precision, description, step)
                ctx.reports.append(report)
                if report.status == "failed":  # every later artifact derives from model.onnx, or is as broken
                    raise _failed(ctx, report)
            ctx.reports = [r for r in ctx.reports if (ctx.staging / r.file).is_file()]
            path = _commit(ctx)
            models = [] if triton_base is None else triton.write_export(
                options.triton, triton_base, out, [r.file for r in ctx.reports], release=options.triton_release,
                reporter=reporter)
        finally:
            _remove(out / STAGING)
    warnings = [f"{r.file}: {r.note}" for r in ctx.reports if r.status == "warning"]
    return ExportResult(out=out, artifacts=ctx.reports, report=path, images=len(ctx.images.batch),
                        image_source=ctx.images.source, warnings=warnings, triton=models,
                        calibration=ctx.calibration, reference_accuracy=accuracy(ctx.reference, ctx.images.labels),
                        reference=source.reference)


def _check_triton_target(o: ExportOptions, source: Source) -> str | None:
    """With --triton: its REPO, model names, labels, the engines' batch profile and the ONNX files against
    --triton-release checked now; the base model name."""
    if o.triton is None:
        return None
    inputs = [o.checkpoint] + [p for p in (o.calib_dir, o.val_dir) if p is not None]
    return triton.check_target(o.triton, o.triton_name, out=o.output_dir(), inputs=inputs, files=kept_files(o),
                               spec=source.spec, engine_min_batch=o.min_batch if o.trt else None,
                               release=o.triton_release, onnx_source=source.path if source.is_onnx else None,
                               opset=o.opset or DEFAULT_OPSET)


def _failed(ctx: ExportContext, report: ArtifactReport) -> TLError:
    """A failed check: no file of this export is kept; export.json records the failure unless an earlier
    export lives in the folder (that one stays exactly as it was)."""
    _remove(ctx.staging / report.file)
    advice = (f"{report.precision.upper()} arithmetic does not hold this model's values: export without it"
              if report.precision != "fp32" else
              "The copy differs from its source: check the disk and memory of this machine" if ctx.source.is_onnx else
              "This is a bug in the exporter for this model: try another --opset, or report it")
    cause = f"{report.file} does not match {ctx.source.short} ({report.note}); removed it. {advice}"
    if (ctx.out / REPORT).exists() or _tl_artifacts(ctx.out):
        return TLError(f"{cause}. The earlier export in {ctx.out} is unchanged")
    ctx.reports = [report]  # the artifacts checked before it stay in staging, which is removed: list none of them
    _write_report(ctx)
    return TLError(cause)


def _earlier_report(folder: Path) -> dict[str, Any] | None:
    """The earlier export's export.json, where it is one tl wrote (an object with an artifact list)."""
    path = folder / REPORT
    if path.is_symlink() or not path.is_file():
        return None
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("artifacts"), list):
            return data
    return None


def recorded_files(folder: str | Path) -> set[str] | None:
    """The file names the export.json in ``folder`` lists as its artifacts, and their engines' sidecars;
    None where there is no export.json tl wrote."""
    data = _earlier_report(Path(folder))
    if data is None:
        return None
    files = {Path(str(a["file"])).name for a in data["artifacts"] if isinstance(a, dict) and a.get("file")}
    return files | {sidecar_path(f).name for f in files}


def _listed(folder: Path) -> set[str]:
    return recorded_files(folder) or set()


def _stamped(path: Path) -> bool:
    """Whether ``path`` carries tl's metadata: an ONNX file's tl.spec, an engine's (or a sidecar's) tl sidecar."""
    engine = path.with_name(path.name.removesuffix(".json"))
    kind = artifact_kind(engine)
    with contextlib.suppress(TLError, OSError, ValueError):
        if kind is not None and kind.format == "engine":
            read_sidecar(engine)
            return True
        if kind is not None and engine == path:
            return SPEC_KEY in onnx_metadata(path)
    return False


def _ours(path: Path, listed: set[str]) -> bool:
    """A file an earlier tl export wrote: one of the names an export writes, a plain file (tl writes no links),
    and listed in the earlier export.json or carrying tl's metadata. The timing cache carries nothing to read:
    its name is TensorRT's cache, which the next build reads back and extends."""
    if path.name not in OWN_NAMES or path.is_symlink() or not path.is_file():
        return False
    return path.name == trt.TIMING_CACHE or path.name in listed or _stamped(path)


def _tl_artifacts(folder: Path) -> list[Path]:
    """The files of an earlier export in ``folder`` (never export.json itself)."""
    listed = _listed(folder)
    return sorted(p for p in folder.iterdir() if _ours(p, listed))


def _check_targets(out: Path, names: list[str]) -> None:
    """Refuse, before the first change to ``out``, any of ``names`` that is there and not an earlier tl export's
    (a folder, a link, a user's file): a refused export leaves the folder exactly as it was."""
    listed = _listed(out)
    for name in names:
        target = out / name
        if not (target.exists() or target.is_symlink()):
            continue
        if _earlier_report(out) is not None if name == REPORT else _ours(target, listed):
            continue
        what = ("is a folder" if target.is_dir() and not target.is_symlink() else
                "is a link" if target.is_symlink() else
                "is not a report tl export wrote" if name == REPORT else
                "was not written by tl export (no export.json lists it and it carries no tl metadata)")
        raise TLError(f"--out {out}: {target} {what}, and this export writes a {name} there; tl replaces only "
                      "its own files: move it away or pass another --out")


def _commit(ctx: ExportContext) -> Path:
    """Move the new artifacts in, remove the earlier export's that this one did not produce, write export.json last.

    Every target is checked before the first change, so a refused commit changes nothing. export.json goes
    first: should the process die between the renames (SIGKILL, power), the folder has no export.json rather
    than one describing a mix; every artifact still carries its checkpoint stamp.
    """
    produced = sorted(p for p in ctx.staging.iterdir() if p.is_file())
    names = {p.name for p in produced}
    _check_targets(ctx.out, sorted(names) + [REPORT])
    stale = [p for p in _tl_artifacts(ctx.out) if p.name not in names]
    with signals_deferred():  # Ctrl-C during the few renames arrives after them
        (ctx.out / REPORT).unlink(missing_ok=True)
        for p in produced:
            os.replace(p, ctx.out / p.name)
        for p in stale:
            p.unlink(missing_ok=True)
        return _write_report(ctx)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _write_report(ctx: ExportContext) -> Path:
    src = ctx.source
    data: dict[str, Any] = {
        "checkpoint": None if src.is_onnx else str(src.path.resolve()),  # bench's PyTorch rows load it
        "checkpoint_sha256": src.stamp,
        "source": str(src.path.resolve()),  # the checkpoint, or the FP32 ONNX file the export was built from
        "reference": src.reference,  # what max |diff| and top-1 agreement compare with
        "images": int(len(ctx.images.batch)),
        "image_source": ctx.images.source,
        "reference_accuracy": accuracy(ctx.reference, ctx.images.labels),  # the reference's; null: no labels
        "artifacts": [r.to_dict() for r in ctx.reports],
    }
    if ctx.calibration is not None:
        data["calibration"] = ctx.calibration
    path = ctx.out / REPORT
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path
