"""One small runner per backend behind one interface, so the matrix treats them alike.

A runner turns a host NCHW float32 batch into host float32 logits (end to end, the way
a server uses it), can wait for its device (``sync``) and, where the backend allows,
time device-resident compute alone. ``load`` raising :class:`SkipCell` means "cannot run
here" (row status ``skipped``); any other exception means the cell failed.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tl.benchmarks.options import ARTIFACT_BACKENDS, TORCH_BACKENDS
from tl.runtime.artifact import precision_from_name
from tl.runtime.errors import TLError

ORT_PROVIDER_SHORT = {
    "CPUExecutionProvider": "cpu",
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "trt",
    "OpenVINOExecutionProvider": "openvino",
    "CoreMLExecutionProvider": "coreml",
    "DmlExecutionProvider": "dml",
}


class SkipCell(Exception):
    """This runner cannot run on this machine/device; the message says why."""


def short_error(e: BaseException, limit: int = 240) -> str:
    """One line for the table and bench.json (full text stays available under TL_DEBUG)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    msg = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


class Runner:
    """Base: subclasses set the row identity and implement load/infer."""

    backend: str = ""
    precision: str = "fp32"
    provider: str = ""
    device: str = "cpu"
    artifact: str | None = None
    size_mb: float | None = None
    build_s: float | None = None
    # compile: the first call at each new batch size compiles; its time is that cell's build_s.
    builds_per_batch: bool = False
    min_batch: int = 1  # an engine's --min-batch (or a fixed batch): smaller batch sizes are not timed
    max_batch: int | None = None

    @property
    def label(self) -> str:
        parts = [self.backend, self.precision]
        if self.provider and self.backend in ARTIFACT_BACKENDS:
            parts.append(ORT_PROVIDER_SHORT.get(self.provider, self.provider))
        return " ".join(parts)

    def load(self) -> None:
        """Prepare (move weights, open sessions, deserialize engines)."""

    def infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def sync(self) -> None:
        """Wait for the device; host->host runners are synchronous already."""

    def device_compute_ms(self, batch: np.ndarray, iters: int) -> list[float] | None:
        return None

    def close(self) -> None:
        """Release device memory before the next runner."""


# -- PyTorch ------------------------------------------------------------------------------


def exact_fp32(torch) -> Callable[[], None]:
    """TF32 off for CUDA matmuls and cuDNN convolutions (on by default for convolutions, on Ampere and newer);
    returns what puts the earlier settings back. The eager FP32 row is every other row's reference: it
    must compute FP32, as its name says. torch 2.9+ spells it ``fp32_precision``, older ``allow_tf32``."""
    conv, matmul = getattr(torch.backends.cudnn, "conv", None), torch.backends.cuda.matmul
    if conv is not None and hasattr(conv, "fp32_precision") and hasattr(matmul, "fp32_precision"):
        saved = (conv.fp32_precision, matmul.fp32_precision)
        conv.fp32_precision = matmul.fp32_precision = "ieee"

        def restore() -> None:
            conv.fp32_precision, matmul.fp32_precision = saved
    else:
        saved = (torch.backends.cudnn.allow_tf32, matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = matmul.allow_tf32 = False

        def restore() -> None:
            torch.backends.cudnn.allow_tf32, matmul.allow_tf32 = saved
    return restore


class SharedModel:
    """One torch model behind several runners (the eager, autocast and compile rows of one bench).

    The first runner that loads it moves it to the bench device; the last one that closes moves it
    back to ``HOST``, so closing one row never takes the weights from the rows still to be checked.
    On CUDA, TF32 is off while any row holds it (:func:`exact_fp32`).
    """

    HOST = "cpu"

    def __init__(self, model: Any):
        self.model = model
        self.holders = 0
        self._restore_tf32: Callable[[], None] | None = None

    def acquire(self, device: str) -> Any:
        import torch

        self.model.to(device).eval()
        if self.holders == 0 and device == "cuda":
            self._restore_tf32 = exact_fp32(torch)
        self.holders += 1
        return self.model

    def release(self, device: str) -> None:
        self.holders -= 1
        if self.holders == 0:
            if self._restore_tf32 is not None:
                self._restore_tf32, restore = None, self._restore_tf32
                restore()
            if device != self.HOST:
                self.model.to(self.HOST)


class TorchRunner(Runner):
    """eager / eager-fp16 / eager-bf16 (autocast) / compile on one torch device.

    ``model`` is a torch module or a :class:`SharedModel` that several runners use.
    """

    def __init__(self, *, model: Any, backend: str, device: str, size_mb: float | None = None,
                 input_shape: tuple[int, int, int] = (3, 224, 224)):
        import torch

        if backend not in TORCH_BACKENDS:
            raise ValueError(backend)
        self.shared = model if isinstance(model, SharedModel) else SharedModel(model)
        self.model = self.shared.model
        self._holding = False
        self.backend = backend
        self.device = device
        self.provider = "torch"
        self.size_mb = size_mb
        self.precision = {"eager-fp16": "fp16", "eager-bf16": "bf16"}.get(backend, "fp32")
        self.builds_per_batch = backend == "compile"
        self._torch = torch
        self._dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        self._fn: Any = None
        self.input_shape = tuple(input_shape)

    def _autocast(self):
        if self._dtype is None:
            return contextlib.nullcontext()
        return self._torch.autocast(device_type=self.device, dtype=self._dtype)

    def load(self) -> None:
        torch = self._torch
        if self.device == "cuda" and self.precision == "bf16" and not native_bf16(torch):
            raise SkipCell("this GPU has no native bfloat16 (T4/V100 only emulate it)")
        self.shared.acquire(self.device)
        self._holding = True
        if self.backend == "compile":
            if not hasattr(torch, "compile"):
                raise SkipCell(f"torch {torch.__version__} has no torch.compile")
            # Static shapes: one graph per batch size, each compiled on its first call.
            self._fn = torch.compile(self.model, dynamic=False)
        else:
            self._fn = self.model
        if self._dtype is not None:
            self._probe_autocast()

    def _probe_autocast(self) -> None:
        """Autocast on CPU is allowed only if it actually runs and gives finite logits."""
        torch = self._torch
        try:
            with torch.inference_mode(), self._autocast():
                y = self.model(torch.rand(1, *self.input_shape, device=self.device))
            ok = bool(torch.isfinite(y.float()).all())
        except Exception as e:  # noqa: BLE001 - any failure means "not supported here"
            raise SkipCell(f"autocast {self.precision} does not run on {self.device}: {short_error(e)}") from e
        if not ok:
            raise SkipCell(f"autocast {self.precision} gives non-finite logits on {self.device}")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode(), self._autocast():
            x = torch.from_numpy(batch).to(self.device)
            y = self._fn(x)
            return y.float().cpu().numpy()

    def sync(self) -> None:
        if self.device == "cuda":
            self._torch.cuda.synchronize()

    def device_compute_ms(self, batch: np.ndarray, iters: int) -> list[float] | None:
        if self.device != "cuda":
            return None
        from tl.benchmarks.timing import cuda_event_timer

        torch = self._torch
        x = torch.from_numpy(batch).to(self.device)
        with torch.inference_mode(), self._autocast():
            self._fn(x)  # same shape as the timed cell: already compiled/warm
            return cuda_event_timer(torch)(lambda: self._fn(x), iters)

    def close(self) -> None:
        self._fn = None
        if self._holding:
            self._holding = False
            self.shared.release(self.device)
        if self.device == "cuda":
            self._torch.cuda.empty_cache()


# -- tl.runtime artifacts ------------------------------------------------------------------


def openvino_variants(file_precision: str, default_precision: str | None) -> list[tuple[str, str]]:
    """(row precision, OpenVINO inference precision) rows for one ONNX file.

    FP32 files get an f32-pinned row (exact, comparable with ORT FP32) and, only where
    OpenVINO's own default is bf16 (AMX CPUs), a bf16 row. INT8 files run with the default
    (their unquantized layers in bf16 where the CPU has it): the fastest form, whose cost
    the agreement column shows.
    """
    if file_precision == "fp32":
        return [("fp32", "f32")] + ([("bf16", "default")] if default_precision == "bf16" else [])
    if file_precision == "int8":
        return [("int8", "default")]
    return [(file_precision, "f32")]


class ClassifierRunner(Runner):
    """An exported artifact through tl.runtime.Classifier: exactly what `tl predict` runs."""

    def __init__(self, *, path: str | Path, backend: str, device: str, provider: str | None = None,
                 threads: int | None = None, build_s: float | None = None, expected_spec: Any = None,
                 ov_precision: str | None = None):
        if backend not in ARTIFACT_BACKENDS:
            raise ValueError(backend)
        self.ov_precision = ov_precision  # openvino: the inference precision asked for
        self.path = Path(path)
        self.backend = backend
        self.device = device
        self.provider = provider or ("TensorRT" if backend == "trt" else "")
        self.artifact = self.path.name
        self.precision = precision_from_name(self.path)
        if ov_precision == "default" and self.precision == "fp32":
            self.precision = "bf16"  # the row that exists only where OpenVINO's default is bf16
        self.size_mb = self.path.stat().st_size / 1e6 if self.path.is_file() else None
        self.threads = threads
        self._engine_build_s = build_s
        self.expected_spec = expected_spec
        self.clf: Any = None

    def load(self) -> None:
        if self.backend == "trt" and self.device != "cuda":
            raise SkipCell("TensorRT engines run only on a CUDA GPU (use --device cuda)")
        from tl.runtime import Classifier

        t0 = time.perf_counter()
        self.clf = Classifier.load(self.path, backend=self.backend,
                                   providers=[self.provider] if self.backend == "ort" else None,
                                   intra_op_threads=self.threads, inference_precision=self.ov_precision)
        load_s = time.perf_counter() - t0
        if self.backend == "openvino" and self.clf.precision != self.precision:
            raise SkipCell(f"OpenVINO runs {self.clf.precision} here, not {self.precision}")
        # TensorRT: the engine build (from the sidecar/export.json) is the build time; ORT: session creation.
        self.build_s = self._engine_build_s if self._engine_build_s is not None else load_s
        self.precision = self.clf.precision
        self.min_batch = max(1, int(self.clf.backend.min_batch))
        used = self.clf.providers
        if self.backend == "ort" and self.provider and used[0] != self.provider:
            raise SkipCell(f"ONNX Runtime fell back to {used[0]} instead of {self.provider}")
        self.provider = used[0]
        self.max_batch = self.clf.max_batch
        if self.expected_spec is not None:
            why = spec_mismatch(self.expected_spec, self.clf.spec)
            if why:
                raise TLError(f"{self.path.name} was not exported from the benchmarked checkpoint ({why})")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.clf.predict_logits(batch), dtype=np.float32)

    def device_compute_ms(self, batch: np.ndarray, iters: int) -> list[float] | None:
        return self.clf.device_compute_ms(batch, iters) if self.device == "cuda" else None

    def close(self) -> None:
        if self.clf is not None:
            with contextlib.suppress(Exception):
                self.clf.close()
        self.clf = None


class SkippedRunner(Runner):
    """A row that cannot run here (e.g. ONNX Runtime without a CUDA provider on a GPU bench)."""

    def __init__(self, *, backend: str, precision: str, device: str, reason: str, provider: str = "",
                 artifact: str | None = None, size_mb: float | None = None):
        self.backend, self.precision, self.device, self.provider = backend, precision, device, provider
        self.artifact, self.size_mb, self.reason = artifact, size_mb, reason

    def load(self) -> None:
        raise SkipCell(self.reason)


def spec_mismatch(a: Any, b: Any) -> str | None:
    """Why two ModelSpecs cannot be compared image for image, or None."""
    if a.arch != b.arch:
        return f"arch {b.arch}, checkpoint {a.arch}"
    if tuple(a.classes) != tuple(b.classes):
        return "classes differ"
    if (a.input.height, a.input.width) != (b.input.height, b.input.width):
        return f"input {b.input.height}x{b.input.width}, checkpoint {a.input.height}x{a.input.width}"
    if a.preprocess != b.preprocess:
        return "preprocessing differs"
    return None


def native_bf16(torch) -> bool:
    """bf16 that the GPU runs natively; ``is_bf16_supported()`` alone also counts emulation."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.3 has no including_emulation and counts only native support
        return bool(torch.cuda.is_bf16_supported())


def available_ort_providers(device: str) -> list[str]:
    """The ONNX Runtime provider a bench on ``device`` uses: CPU on cpu; CUDA on cuda where
    onnxruntime-gpu is installed, else CPU (the rows say so), so a GPU box with the CPU
    package still shows how ONNX Runtime does there.

    TensorRT through ORT is left out: tl's own engines (``trt`` rows) cover TensorRT, and
    building inside ORT would add minutes to every run.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    available = ort.get_available_providers()
    for wanted in (["CUDAExecutionProvider"] if device == "cuda" else []) + ["CPUExecutionProvider"]:
        if wanted in available:
            return [wanted]
    return []


def model_size_mb(model: Any) -> float:
    """Bytes of parameters + buffers, what an FP32 checkpoint costs on disk (MB = 1e6 bytes)."""
    total = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    return total / 1e6
