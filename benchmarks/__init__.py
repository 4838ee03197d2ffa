"""tl.benchmarks: eager PyTorch vs every exported form, measured side by side in one run.

``run(BenchOptions(targets=[...]))`` builds a matrix of runners (eager, autocast, compile,
ONNX Runtime per artifact and provider, TensorRT per engine) x batch sizes, times every
cell with the one timing core, checks each runner's top-1 agreement with eager FP32 on
the same preprocessed images, and writes bench.json/csv/md/png. A cell that fails is
recorded with its reason and the matrix goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from tl.runtime.errors import TLError

__all__ = ["BenchOptions", "BenchResult", "BenchRow", "run", "ROW_FIELDS", "BACKENDS"]

BACKENDS = ("eager", "eager-fp16", "eager-bf16", "compile", "ort", "trt")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".plan", ".engine", ".trt")
COMPUTE_MS_MEANING = ("device time of one inference call with the input already on the GPU: CUDA events around each "
                      "call, calls enqueued back to back after warm-up (torch and TensorRT rows; empty for ONNX "
                      "Runtime, which exposes no events, and where the batch exceeds an engine's max batch)")
AGREEMENT_CHUNK = 8  # images per call when checking agreement (padded, so compile sees one shape)


@dataclass(frozen=True, kw_only=True)
class BenchOptions:
    """What to measure. ``backends=None`` means everything that can run on ``device``."""

    targets: Sequence[str | Path]
    device: str = "auto"  # auto | cpu | cuda
    backends: Sequence[str] | None = None
    batch_sizes: Sequence[int] = (1, 8, 32)
    warmup: int = 3
    seconds: float | None = 3.0
    iters: int | None = None
    val_dir: str | Path | None = None
    out: str | Path | None = None
    threads: int | None = None
    images: int = 64  # benchmark images for agreement (all of --val-dir when given)
    progress: bool = True


@dataclass
class BenchRow:
    backend: str
    precision: str
    provider: str
    device: str
    batch: int
    mean_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    first_ms: float | None = None
    throughput: float | None = None
    speedup: float | None = None
    agreement: float | None = None
    accuracy: float | None = None
    size_mb: float | None = None
    build_s: float | None = None
    status: str = "ok"  # ok | failed | skipped
    error: str | None = None
    # Beyond the schema: device-resident compute time (trtexec's GPU Compute Time), and the file.
    compute_ms: float | None = None
    artifact: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ROW_FIELDS = tuple(f for f in BenchRow.__dataclass_fields__)


@dataclass
class BenchResult:
    rows: list[BenchRow]
    environment: dict[str, Any]
    images: dict[str, Any]  # {"source", "count", "labelled"}
    out: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"environment": self.environment, "rows": [r.to_dict() for r in self.rows]}

    def row(self, backend: str, batch: int, precision: str | None = None) -> BenchRow | None:
        for r in self.rows:
            if r.backend == backend and r.batch == batch and (precision is None or r.precision == precision):
                return r
        return None


# -- targets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    path: Path
    backend: str  # ort | trt
    build_s: float | None = None  # TensorRT engine build time, when recorded


@dataclass
class Targets:
    checkpoint: Path | None = None
    artifacts: list[Artifact] = field(default_factory=list)
    export_checkpoint: Path | None = None  # named by an export.json


def _artifact_order(a: Artifact) -> tuple:
    from tl.benchmarks.runners import precision_from_name

    return (a.backend != "ort", ("fp32", "fp16", "int8").index(precision_from_name(a.path)), a.path.name)


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
    files = {p.name: p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in ONNX_SUFFIXES + ENGINE_SUFFIXES}
    for name in recorded:
        files.setdefault(name, folder / name)  # listed but missing: its cell fails and says so
    out = []
    for name, p in files.items():
        backend = "trt" if p.suffix.lower() in ENGINE_SUFFIXES else "ort"
        build_s = None
        if backend == "trt":
            rec = recorded.get(name, {})
            build_s = rec.get("seconds") if isinstance(rec.get("seconds"), (int, float)) else _sidecar_build_s(p)
        out.append(Artifact(p, backend, build_s))
    return out


def _sidecar_build_s(engine: Path) -> float | None:
    try:
        from tl.runtime.sidecar import read_sidecar

        return float(read_sidecar(engine)[1].build_seconds) or None
    except Exception:  # noqa: BLE001 - only a nicety; the cell itself reports real problems
        return None


def resolve_targets(paths: Sequence[str | Path]) -> Targets:
    """Sort TARGETs into one checkpoint (PyTorch rows) and artifacts (ONNX/TensorRT rows)."""
    if not paths:
        raise TLError("give at least one TARGET: a checkpoint or run folder and/or an export folder")
    t = Targets()
    checkpoints: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise TLError(f"{p}: no such file or folder; TARGET is a checkpoint (best.pt), a run folder or an export folder")
        if p.is_file():
            suffix = p.suffix.lower()
            if suffix in CHECKPOINT_SUFFIXES:
                checkpoints.append(p)
            elif suffix in ONNX_SUFFIXES:
                t.artifacts.append(Artifact(p, "ort"))
            elif suffix in ENGINE_SUFFIXES:
                t.artifacts.append(Artifact(p, "trt", _sidecar_build_s(p)))
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


# -- options ----------------------------------------------------------------------------------


def _resolve_device(device: str) -> str:
    import torch

    d = (device or "auto").lower()
    if d not in ("auto", "cpu", "cuda"):
        raise TLError(f"--device must be auto, cpu or cuda (got {device!r})")
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if d == "cuda" and not torch.cuda.is_available():
        raise TLError(f"--device cuda: torch {torch.__version__} sees no CUDA GPU here; use --device cpu (or auto)")
    return d


def _validate(o: BenchOptions) -> tuple[list[str] | None, list[int]]:
    from tl.benchmarks.timing import TimingOptions

    backends = None
    if o.backends is not None:
        backends = [b.strip().lower() for b in o.backends if b.strip()]
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown or not backends:
            raise TLError(f"--backends: unknown {', '.join(unknown) or '(empty)'}; choose from {','.join(BACKENDS)}")
    sizes = list(dict.fromkeys(int(b) for b in o.batch_sizes))
    if not sizes or any(b < 1 for b in sizes):
        raise TLError(f"--batch-sizes must be positive integers like 1,8,32 (got {','.join(map(str, o.batch_sizes)) or 'none'})")
    if max(sizes) > 4096:
        raise TLError(f"--batch-sizes: {max(sizes)} is too large (at most 4096)")
    if o.threads is not None and o.threads < 1:
        raise TLError(f"--threads must be at least 1 (got {o.threads})")
    if o.images < 1:
        raise TLError(f"--images must be at least 1 (got {o.images})")
    TimingOptions(warmup=o.warmup, seconds=o.seconds, iters=o.iters).validate()
    return backends, sizes


# -- images -----------------------------------------------------------------------------------


def _spread(items: list, n: int) -> list:
    """n items evenly spread over the list (class folders are sorted, so every class shows up)."""
    if len(items) <= n:
        return items
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


def bench_images(spec, *, ckpt: dict | None, val_dir: str | Path | None, limit: int):
    """(NCHW float32 images, labels or None, description), preprocessed once by tl.runtime.images."""
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
    data = (ckpt or {}).get("data") or {}
    val_files = [Path(f) for f in (data.get("val_files") or []) if isinstance(f, str)]
    existing = [f for f in val_files if f.is_file()]
    if existing:
        chosen = _spread(existing, limit)
        return preprocess(chosen, spec), None, f"checkpoint validation images ({len(chosen)} of {len(val_files)})"
    from tl.export.parity import synthetic_batch

    n = min(limit, 32)
    return synthetic_batch(spec, n, seed=1234), None, f"synthetic shapes ({n})"


def _batch_of(x: np.ndarray, n: int) -> np.ndarray:
    """n images from x, cycling when there are fewer (same data for every backend)."""
    idx = np.arange(n) % len(x)
    return np.ascontiguousarray(x[idx])


def _logits_all(runner, x: np.ndarray) -> np.ndarray:
    chunk = AGREEMENT_CHUNK if runner.max_batch is None else max(1, min(AGREEMENT_CHUNK, runner.max_batch))
    outs = []
    for i in range(0, len(x), chunk):
        part = x[i: i + chunk]
        n = len(part)
        if n < chunk:  # pad: one shape for compile/engines
            part = _batch_of(part, chunk)
        outs.append(runner.infer(part)[:n])
    return np.concatenate(outs, axis=0)


# -- the matrix ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    if not n:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _spec_of_artifact(a: Artifact):
    from tl.runtime.spec import ModelSpec

    if a.backend == "trt":
        from tl.runtime.sidecar import read_sidecar

        return read_sidecar(a.path)[0]
    from tl.runtime.onnxmeta import read_onnx_meta

    text = read_onnx_meta(a.path, graph=False).metadata.get("tl.spec")
    if not text:
        raise TLError(f"{a.path}: no tl.spec metadata (not exported by tl); give its checkpoint as a TARGET too")
    return ModelSpec.from_json(text)


def _make_runners(o: BenchOptions, targets: Targets, wanted: list[str] | None, device: str, model, spec):
    from tl.benchmarks.runners import (
        ClassifierRunner, SkippedRunner, TorchRunner, available_ort_providers, model_size_mb, precision_from_name,
    )

    explicit = wanted is not None
    if wanted is None:
        wanted = ["eager", "eager-fp16", "eager-bf16", "compile", "ort", "trt"] if device == "cuda" \
            else ["eager", "eager-bf16", "compile", "ort", "trt"]
    runners = []
    shape = (spec.input.channels, spec.input.height, spec.input.width)
    # Canonical order whatever the user typed: eager FP32 first, it is everyone's reference.
    torch_wanted = [b for b in ("eager", "eager-fp16", "eager-bf16", "compile") if b in wanted]
    if model is not None:
        size = model_size_mb(model)
        for b in torch_wanted:
            runners.append(TorchRunner(model=model, backend=b, device=device, size_mb=size, input_shape=shape))
    elif torch_wanted and explicit:
        raise TLError(f"--backends {','.join(torch_wanted)} needs a checkpoint or run folder TARGET")
    arts = targets.artifacts
    if "ort" in wanted:
        onnx = [a for a in arts if a.backend == "ort"]
        providers = available_ort_providers(device)
        for a in onnx:
            if not providers:
                need = "onnxruntime-gpu (CUDAExecutionProvider)" if device == "cuda" else "onnxruntime"
                runners.append(SkippedRunner(backend="ort", precision=precision_from_name(a.path), device=device,
                                             reason=f"no ONNX Runtime provider for {device}: install {need}",
                                             artifact=a.path.name))
            for p in providers:
                runners.append(ClassifierRunner(path=a.path, backend="ort", provider=p, threads=o.threads,
                                                device="cpu" if p == "CPUExecutionProvider" else device,
                                                expected_spec=spec))
        if explicit and not onnx:
            raise TLError("--backends ort needs an export folder (or .onnx file) TARGET; make one with 'tl export'")
    if "trt" in wanted:
        engines = [a for a in arts if a.backend == "trt"]
        for a in engines:
            runners.append(ClassifierRunner(path=a.path, backend="trt", device=device, build_s=a.build_s,
                                            expected_spec=spec))
        if not engines and arts and device == "cuda":
            from tl.runtime.env import tensorrt_version

            why = ("TensorRT is not installed (pip install 'tl[gpu]')" if tensorrt_version() is None
                   else "the export holds no TensorRT engine (tl export --trt)")
            runners.append(SkippedRunner(backend="trt", precision="fp16", device=device, reason=why))
        if explicit and not engines and wanted == ["trt"]:
            raise TLError("--backends trt needs an export folder with a TensorRT engine; build one with 'tl export --trt' on a GPU")
    if not runners:
        raise TLError("nothing to benchmark: give a checkpoint/run folder and/or an export folder, "
                      "and --backends that match them")
    return runners


def _fill(row: Any, timing) -> None:
    st = timing.stats
    row.mean_ms, row.p50_ms, row.p90_ms, row.p99_ms = st.mean_ms, st.p50_ms, st.p90_ms, st.p99_ms
    row.min_ms, row.max_ms, row.first_ms = st.min_ms, st.max_ms, timing.first_ms
    row.throughput = timing.throughput
    cs = timing.compute_stats
    row.compute_ms = cs.mean_ms if cs else None


def _is_oom(e: BaseException) -> bool:
    return "out of memory" in str(e).lower() or type(e).__name__ in ("OutOfMemoryError", "MemoryError")


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]bench[/] {task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), disable=not enabled, transient=False,
    )


def run(options: BenchOptions) -> BenchResult:
    """Measure every runner at every batch size; write bench.* into ``options.out`` when given."""
    from tl.benchmarks.runners import SkipCell, short_error
    from tl.benchmarks.timing import TimingOptions, measure
    from tl.benchmarks import report

    o = options
    wanted, sizes = _validate(o)
    targets = resolve_targets(list(o.targets))
    device = _resolve_device(o.device)
    timing_opts = TimingOptions(warmup=o.warmup, seconds=o.seconds, iters=o.iters)
    debug = os.environ.get("TL_DEBUG", "") not in ("", "0")

    model = spec = ckpt = None
    ckpt_path = targets.checkpoint
    if ckpt_path is None and targets.export_checkpoint is not None:
        # The export names its checkpoint: the eager FP32 reference for agreement (and eager rows by default).
        ckpt_path = targets.export_checkpoint
    if ckpt_path is not None:
        from tl.train.checkpoint import load_model

        model, spec, ckpt = load_model(ckpt_path)
    else:
        for a in targets.artifacts:
            with contextlib.suppress(TLError, OSError, ValueError):
                spec = _spec_of_artifact(a)
                break
        if spec is None:
            raise TLError("no model spec found: the artifacts carry no tl.spec; give the checkpoint TARGET too")

    with _torch_threads(o.threads):
        runners = _make_runners(o, targets, wanted, device, model, spec)
        x, labels, source = bench_images(spec, ckpt=ckpt, val_dir=o.val_dir, limit=o.images)
        env = report.environment(device=device, threads=o.threads)
        env.update({
            "arch": spec.arch, "image_size": [spec.input.height, spec.input.width], "num_classes": spec.num_classes,
            "checkpoint": str(ckpt_path) if ckpt_path else None,
            "artifacts": [str(a.path) for a in targets.artifacts],
            "images": {"source": source, "count": int(len(x)), "labelled": labels is not None},
            "timing": {"warmup": o.warmup, "seconds": None if o.iters else o.seconds, "iters": o.iters,
                       "percentiles": "nearest-rank", "latency": "host input -> host output",
                       "compute_ms": COMPUTE_MS_MEANING},
            "batch_sizes": sizes,
        })

        reference: np.ndarray | None = None
        if model is not None and not any(r.backend == "eager" for r in runners):
            reference = _reference_top1(model, device, x, shape=(spec.input.channels, spec.input.height, spec.input.width))
        rows: list[BenchRow] = []
        with _progress(o.progress) as progress:
            task = progress.add_task("", total=len(runners) * len(sizes))
            for runner in runners:
                runner_rows = []
                progress.update(task, description=f"{runner.label} (loading)")
                status, error = "ok", None
                try:
                    runner.load()
                except SkipCell as e:
                    status, error = "skipped", str(e)
                except TLError as e:
                    status, error = "failed", str(e)
                except Exception as e:  # noqa: BLE001 - a broken cell must not stop the matrix
                    if debug:
                        raise
                    status, error = "failed", short_error(e)
                for b in sizes:
                    row = BenchRow(backend=runner.backend, precision=runner.precision, provider=runner.provider,
                                   device=runner.device, batch=b, size_mb=runner.size_mb, artifact=runner.artifact,
                                   status=status, error=error)
                    runner_rows.append(row)
                    if status != "ok":
                        progress.advance(task)
                        continue
                    progress.update(task, description=f"{runner.label} b={b}")
                    try:
                        xb = _batch_of(x, b)
                        timing = measure(lambda: runner.infer(xb), batch=b, options=timing_opts, sync=runner.sync)
                        _fill(row, timing)
                        compute = None
                        if runner.max_batch is None or b <= runner.max_batch:  # device time is per engine call
                            compute = runner.device_compute_ms(xb, iters=max(10, min(len(timing.samples_ms), 200)))
                        if compute:
                            from tl.benchmarks.timing import Stats

                            row.compute_ms = Stats.of(compute).mean_ms
                        row.build_s = timing.first_ms / 1000.0 if runner.builds_per_batch else runner.build_s
                    except Exception as e:  # noqa: BLE001
                        if debug:
                            raise
                        oom = _is_oom(e)
                        row.status, row.error = "failed", (f"out of memory at batch {b}: " if oom else "") + short_error(e)
                        _free_cuda(device)
                        if not oom and all(r.status == "failed" for r in runner_rows):
                            # Broken from its first cell (e.g. compile cannot build): do not pay for it again.
                            status, error = "failed", f"{row.error} (at batch {b})"
                    progress.advance(task)
                if any(r.status == "ok" for r in runner_rows):
                    progress.update(task, description=f"{runner.label} agreement")
                    try:
                        logits = _logits_all(runner, x)
                        top1 = logits.argmax(axis=1)
                        if runner.backend == "eager" and runner.precision == "fp32":
                            reference = top1
                        agreement = float((top1 == reference).mean()) if reference is not None else None
                        accuracy = float((top1 == labels).mean()) if labels is not None else None
                        for r in runner_rows:
                            if r.status == "ok":
                                r.agreement, r.accuracy = agreement, accuracy
                    except Exception as e:  # noqa: BLE001
                        if debug:
                            raise
                        for r in runner_rows:
                            if r.status == "ok":
                                r.error = f"agreement check failed: {short_error(e)}"
                with contextlib.suppress(Exception):
                    runner.close()
                _free_cuda(device)
                rows.extend(runner_rows)
            progress.update(task, description="done")

        _speedups(rows)
    result = BenchResult(rows=rows, environment=env, images=env["images"])
    if o.out is not None:
        result.out = Path(o.out)
        result.files = report.write_all(result, Path(o.out))
    return result


def _reference_top1(model, device: str, x: np.ndarray, *, shape) -> np.ndarray | None:
    """Eager FP32 top-1 when no eager row is benchmarked: agreement still means 'vs eager FP32'."""
    from tl.benchmarks.runners import TorchRunner

    runner = TorchRunner(model=model, backend="eager", device=device, input_shape=shape)
    try:
        runner.load()
        return _logits_all(runner, x).argmax(axis=1)
    except Exception:  # noqa: BLE001 - without a reference, agreement stays empty
        return None
    finally:
        runner.close()


def _free_cuda(device: str) -> None:
    if device != "cuda":
        return
    with contextlib.suppress(Exception):
        import torch

        torch.cuda.empty_cache()


def _speedups(rows: list[BenchRow]) -> None:
    base = {r.batch: r.throughput for r in rows
            if r.backend == "eager" and r.precision == "fp32" and r.status == "ok" and r.throughput}
    for r in rows:
        if r.status == "ok" and r.throughput and r.batch in base:
            r.speedup = r.throughput / base[r.batch]
