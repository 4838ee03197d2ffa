"""The benchmark matrix: every runner x every batch size, timed by the one timing core.

``run(BenchOptions(...))`` loads the FP32 reference, builds and loads the runners, times
each batch size with every runner in interleaved rounds, checks each runner's top-1
agreement with eager FP32 on the same preprocessed images, recommends per batch size the
fastest row that agrees well enough, and writes bench.json/csv/md/png. A cell that fails
is recorded with its reason and the matrix goes on. Every runner stays loaded until the
last batch size is timed (interleaving needs them all at once).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from tl.benchmarks import report
from tl.benchmarks.environment import run_environment
from tl.benchmarks.options import TORCH_BACKENDS, BenchOptions, default_backends
from tl.benchmarks.recommend import recommend
from tl.benchmarks.rows import BenchResult, BenchRow
from tl.benchmarks.runners import (ClassifierRunner, SharedModel, SkipCell, SkippedRunner, TorchRunner,
                                   available_ort_providers, model_size_mb, openvino_variants, short_error)
from tl.benchmarks.targets import Targets, bench_images, check_provenance, resolve_targets, spec_of_targets
from tl.benchmarks.timing import DISTURBED_SPREAD, Stats, measure_rounds, spread
from tl.runtime.artifact import precision_from_name
from tl.runtime.errors import TLError, debug_enabled
from tl.runtime.files import ensure_output_dir, new_folders_removed_on_error, output_lock
from tl.runtime.progress import SILENT, Reporter

AGREEMENT_CHUNK = 8  # images per call when checking agreement (padded, so compile sees one shape)


@dataclass
class _Bench:
    """What every cell of one run shares."""

    options: BenchOptions
    device: str
    images: np.ndarray
    labels: np.ndarray | None
    reference: np.ndarray | None  # eager FP32 top-1 on ``images``
    reporter: Reporter
    debug: bool = False
    reference_runner: Any = None  # whose top-1 the others are compared with (see _reference_runner)


# -- setup ------------------------------------------------------------------------------------


def _torch():
    """torch, or None on a runtime-only install (an edge box): the artifacts are benched without it."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def bench_device(device: str) -> str:
    """--device as the bench rows name it ("cpu" | "cuda"); auto picks cuda where torch (without torch:
    cuda-python or nvidia-smi) sees a GPU."""
    torch = _torch()
    if torch is None:
        from tl.runtime.gpu import find_gpu

        found = find_gpu(0) is not None
        if device == "cuda" and not found:
            raise TLError("--device cuda: no CUDA GPU found here (cuda-python, nvidia-smi); use --device cpu (or auto)")
        return ("cuda" if found else "cpu") if device == "auto" else device
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TLError(f"--device cuda: torch {torch.__version__} sees no CUDA GPU here; use --device cpu (or auto)")
    return device


def _reference_model(targets: Targets, reporter: Reporter):
    """(model, spec, ckpt, path): the checkpoint TARGET, else the one an export.json names, else specs only.
    Without torch, a checkpoint named only by export.json is passed over (a checkpoint TARGET needs torch)."""
    path = targets.checkpoint or targets.export_checkpoint
    if path is not None and targets.checkpoint is None and _torch() is None:
        reporter.info(f"torch is not installed: no PyTorch rows; {path.name} named by export.json is not loaded")
        path = None
    if path is None:
        return None, spec_of_targets(targets), None, None
    from tl.train.checkpoint import load_model

    model, spec, ckpt = load_model(path)
    check_provenance(targets, Path(ckpt["path"]))
    return model, spec, ckpt, path


def _make_runners(o: BenchOptions, targets: Targets, device: str, model: SharedModel | None, spec) -> list:
    explicit = o.backends is not None
    wanted = o.backends if explicit else default_backends(device)
    shape = (spec.input.channels, spec.input.height, spec.input.width)
    torch_wanted = [b for b in TORCH_BACKENDS if b in wanted]  # eager FP32 first: everyone's reference
    if model is None and torch_wanted and explicit:
        raise TLError(f"--backends {','.join(torch_wanted)} needs a checkpoint or run folder TARGET")
    size = model_size_mb(model.model) if model is not None else None
    runners: list = [TorchRunner(model=model, backend=b, device=device, size_mb=size, input_shape=shape)
                     for b in (torch_wanted if model is not None else [])]
    onnx = [a for a in targets.artifacts if a.backend == "ort"]
    engines = [a for a in targets.artifacts if a.backend == "trt"]
    if "ort" in wanted:
        if explicit and not onnx:
            raise TLError("--backends ort needs an export folder (or .onnx file) TARGET; make one with 'tl export'")
        providers = available_ort_providers(device)
        for a in onnx:
            runners += [ClassifierRunner(path=a.path, backend="ort", provider=p, threads=o.threads, expected_spec=spec,
                                         device="cpu" if p == "CPUExecutionProvider" else device) for p in providers]
            if not providers:
                runners.append(SkippedRunner(backend="ort", precision=precision_from_name(a.path), device=device,
                                             reason="no ONNX Runtime here: install onnxruntime", artifact=a.path.name))
    if "openvino" in wanted:
        if explicit and not onnx and wanted == ("openvino",):
            raise TLError("--backends openvino needs an export folder (or .onnx file) TARGET; make one with 'tl export'")
        runners += _openvino_runners(o, onnx, spec)
    if "trt" in wanted:
        if explicit and not engines and wanted == ("trt",):
            raise TLError("--backends trt needs an export folder with a TensorRT engine; build one with 'tl export --trt' on a GPU")
        runners += [ClassifierRunner(path=a.path, backend="trt", device=device, build_s=a.build_s, expected_spec=spec)
                    for a in engines]
        if not engines and targets.artifacts and device == "cuda":
            runners.append(SkippedRunner(backend="trt", precision="fp16", device=device, reason=_no_engine_reason()))
    if not runners:
        raise TLError("nothing to benchmark: give a checkpoint/run folder and/or an export folder, "
                      "and --backends that match them")
    return runners


def _openvino_runners(o: BenchOptions, onnx: list, spec) -> list:
    """OpenVINO rows per ONNX file (runners.openvino_variants); one skipped row each where OpenVINO is missing."""
    try:
        from tl.runtime.backends.openvino import default_inference_precision

        default = default_inference_precision()
    except TLError as e:
        return [SkippedRunner(backend="openvino", precision=precision_from_name(a.path), device="cpu", reason=str(e),
                              artifact=a.path.name) for a in onnx]
    return [ClassifierRunner(path=a.path, backend="openvino", device="cpu", threads=o.threads, expected_spec=spec,
                             ov_precision=ov)
            for a in onnx for _, ov in openvino_variants(precision_from_name(a.path), default)]


def _no_engine_reason() -> str:
    from tl.runtime.gpu import NOT_INSTALLED, tensorrt_version

    return NOT_INSTALLED if tensorrt_version() is None else "the export holds no TensorRT engine (tl export --trt)"


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    torch = _torch() if n else None
    if torch is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# -- one runner -------------------------------------------------------------------------------


def _batch_of(x: np.ndarray, n: int) -> np.ndarray:
    """n images from x, cycling when there are fewer (same data for every backend)."""
    return np.ascontiguousarray(x[np.arange(n) % len(x)])


def _logits_all(runner, x: np.ndarray) -> np.ndarray:
    chunk = AGREEMENT_CHUNK if runner.max_batch is None else max(1, min(AGREEMENT_CHUNK, runner.max_batch))
    outs = []
    for i in range(0, len(x), chunk):
        part = x[i: i + chunk]
        outs.append(runner.infer(_batch_of(part, chunk))[: len(part)])  # padded: one shape for compile/engines
    return np.concatenate(outs, axis=0)


def _load(bench: _Bench, runner) -> tuple[str, str | None]:
    try:
        runner.load()
        return "ok", None
    except SkipCell as e:
        return "skipped", str(e)
    except TLError as e:
        return "failed", str(e)
    except Exception as e:  # noqa: BLE001 - a broken runner must not stop the matrix
        if bench.debug:
            raise
        return "failed", short_error(e)


def _fill_row(row: BenchRow, timing, runner, xb: np.ndarray) -> None:
    st = timing.stats
    row.mean_ms, row.p50_ms, row.p90_ms, row.p99_ms = st.mean_ms, st.p50_ms, st.p90_ms, st.p99_ms
    row.min_ms, row.max_ms, row.first_ms, row.throughput = st.min_ms, st.max_ms, timing.first_ms, timing.throughput
    row.rounds, row.spread = st.n, spread(st)
    row.disturbed = row.spread > DISTURBED_SPREAD
    if runner.max_batch is None or row.batch <= runner.max_batch:  # device time is per engine call
        compute = runner.device_compute_ms(xb, iters=max(10, min(len(timing.samples_ms), 200)))
        row.compute_ms = Stats.of(compute).mean_ms if compute else None
    row.build_s = timing.first_ms / 1000.0 if runner.builds_per_batch else runner.build_s


def _cell_failed(bench: _Bench, row: BenchRow, e: Exception) -> None:
    if bench.debug:
        raise e
    oom = "out of memory" in str(e).lower() or type(e).__name__ in ("OutOfMemoryError", "MemoryError")
    row.status, row.error = "failed", (f"out of memory at batch {row.batch}: " if oom else "") + short_error(e)
    _free_cuda(bench.device)


def _time_batch(bench: _Bench, runners: list, rows: dict[int, list[BenchRow]], loaded: list[int], b: int) -> None:
    """One batch size: every loaded runner in the same interleaved rounds, then its device time."""
    xb = _batch_of(bench.images, b)
    live = [i for i in loaded if not _below_min_batch(rows[i], runners[i], b) and not _broken(rows[i], b)]
    timings = measure_rounds([(lambda r=runners[i]: r.infer(xb)) for i in live], batch=b,
                             options=bench.options.timing(), syncs=[runners[i].sync for i in live])
    for i, timing in zip(live, timings):
        row = next(r for r in rows[i] if r.batch == b)
        try:
            if isinstance(timing, Exception):
                raise timing
            _fill_row(row, timing, runners[i], xb)
        except Exception as e:  # noqa: BLE001 - a broken cell must not stop the matrix
            _cell_failed(bench, row, e)


def _below_min_batch(rows: list[BenchRow], runner, b: int) -> bool:
    """A batch size below what the model runs (an engine's --min-batch, a fixed batch) is skipped, with the reason
    in its row: a padded call would time ``min_batch`` images as ``b``. The runner's other cells still run."""
    if b >= runner.min_batch:
        return False
    row = next(r for r in rows if r.batch == b)
    row.status, row.error = "skipped", (f"batch {b} is below the smallest batch this model runs ({runner.min_batch}: "
                                        "an engine's --min-batch or a fixed batch size); not timed")
    return True


def _broken(rows: list[BenchRow], b: int) -> bool:
    """A runner whose every earlier cell failed (not for memory) is not paid for again: its row says so."""
    earlier = [r for r in rows if r.batch in _before(rows, b)]
    if not earlier or not all(r.status == "failed" and "out of memory" not in (r.error or "") for r in earlier):
        return False
    row = next(r for r in rows if r.batch == b)
    row.status, row.error = "failed", f"{earlier[0].error} (at batch {earlier[0].batch})"
    return True


def _before(rows: list[BenchRow], b: int) -> list[int]:
    batches = [r.batch for r in rows]
    return batches[: batches.index(b)]


def _measure_all(bench: _Bench, runners: list, task) -> list[list[BenchRow]]:
    """Load every runner, then time each batch size in interleaved rounds (see timing.measure_rounds)."""
    rows: dict[int, list[BenchRow]] = {}
    for i, runner in enumerate(runners):
        task.update(description=f"{runner.label} (loading)")
        status, error = _load(bench, runner)
        rows[i] = [BenchRow(backend=runner.backend, precision=runner.precision, provider=runner.provider,
                            device=runner.device, batch=b, size_mb=runner.size_mb, artifact=runner.artifact,
                            status=status, error=error) for b in bench.options.batch_sizes]
    loaded = [i for i in rows if rows[i][0].status == "ok"]
    for b in bench.options.batch_sizes:
        task.update(description=f"batch {b}: {len(loaded)} runners in interleaved rounds")
        _time_batch(bench, runners, rows, loaded, b)
        task.advance(len(runners))
    return [rows[i] for i in range(len(runners))]


def _agreement(bench: _Bench, runner, rows: list[BenchRow]) -> None:
    """Top-1 agreement with eager FP32 (and accuracy on labelled images), shared by the runner's rows."""
    ok = [r for r in rows if r.status == "ok"]
    if not ok:
        return
    try:
        top1 = _logits_all(runner, bench.images).argmax(axis=1)
    except Exception as e:  # noqa: BLE001
        if bench.debug:
            raise
        for r in ok:
            r.error = f"agreement check failed: {short_error(e)}"
        return
    if runner is bench.reference_runner:
        bench.reference = top1
    for r in ok:
        r.agreement = float((top1 == bench.reference).mean()) if bench.reference is not None else None
        r.accuracy = float((top1 == bench.labels).mean()) if bench.labels is not None else None


def _reference_top1(model, device: str, x: np.ndarray, *, shape) -> np.ndarray | None:
    """Eager FP32 top-1 when no eager row is benchmarked: agreement still means 'vs eager FP32'."""
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


def _reference_runner(runners: list, model) -> tuple[Any, str]:
    """(runner, its name): eager FP32 where there is a model; without one (no checkpoint, or no torch on an
    edge box) the first FP32 ONNX file on ONNX Runtime, which export checked against eager FP32 at 1e-3."""
    if model is not None:
        return next((r for r in runners if r.backend == "eager" and r.precision == "fp32"), None), "eager fp32"
    onnx = next((r for r in runners if isinstance(r, ClassifierRunner) and r.backend == "ort" and r.precision == "fp32"),
                None)
    return onnx, (f"ort fp32 ({onnx.artifact})" if onnx is not None else "eager fp32")


def _speedups(rows: list[BenchRow], reference_rows: list[BenchRow] | None = None) -> None:
    """Throughput relative to the reference runner's at the same batch (default: the eager FP32 rows)."""
    if reference_rows is None:
        reference_rows = [r for r in rows if r.backend == "eager" and r.precision == "fp32"]
    base = {r.batch: r.throughput for r in reference_rows if r.status == "ok" and r.throughput}
    for r in rows:
        if r.status == "ok" and r.throughput and r.batch in base:
            r.speedup = r.throughput / base[r.batch]


# -- the run ------------------------------------------------------------------------------------


def run(options: BenchOptions, *, reporter: Reporter = SILENT) -> BenchResult:
    """Measure every runner at every batch size; write bench.* into ``options.out`` when given.

    ``options.out`` is locked from the moment the targets are known to be valid until its files are written;
    a run that fails removes the output folder it created, when it is still empty.
    """
    with new_folders_removed_on_error(options.out):
        return _run(options, reporter)


def _run(options: BenchOptions, reporter: Reporter) -> BenchResult:
    o = options
    targets = resolve_targets(list(o.targets))
    if o.out is not None:  # before minutes of timing
        ensure_output_dir(o.out, option="--out")
    device = bench_device(o.device)
    model, spec, ckpt, ckpt_path = _reference_model(targets, reporter)
    model = SharedModel(model) if model is not None else None  # the torch rows share it (runners.SharedModel)
    lock = output_lock(o.out, "tl bench", reporter=reporter) if o.out is not None else contextlib.nullcontext()
    with lock, _torch_threads(o.threads):
        runners = _make_runners(o, targets, device, model, spec)
        x, labels, source = bench_images(spec, ckpt=ckpt, val_dir=o.val_dir, limit=o.images)
        images = {"source": source, "count": int(len(x)), "labelled": labels is not None}
        env = run_environment(o, device, spec, ckpt_path, targets, images)
        ref_runner, env["reference"] = _reference_runner(runners, model)
        reference = None
        if model is not None and ref_runner is None:
            reference = _reference_top1(model, device, x, shape=x.shape[1:])
        bench = _Bench(options=o, device=device, images=x, labels=labels, reference=reference, reporter=reporter,
                       debug=debug_enabled(), reference_runner=ref_runner)
        with reporter.task("bench", total=len(runners) * len(o.batch_sizes)) as task:
            measured = _measure_all(bench, runners, task)
            # The reference's top-1 first: every other runner's agreement is measured against it.
            for i in sorted(range(len(runners)), key=lambda i: runners[i] is not ref_runner):
                task.update(description=f"{runners[i].label} agreement")
                _agreement(bench, runners[i], measured[i])
                with contextlib.suppress(Exception):
                    runners[i].close()
                _free_cuda(device)
        rows = [row for runner_rows in measured for row in runner_rows]
        _speedups(rows, next((rr for r, rr in zip(runners, measured) if r is ref_runner), []))
        result = BenchResult(rows=rows, environment=env, images=images, min_agreement=o.min_agreement)
        result.recommendations = recommend(rows, min_agreement=o.min_agreement, environment=env)
        if o.out is not None:
            result.out = Path(o.out)
            result.files = report.write_all(result, Path(o.out))
    return result
