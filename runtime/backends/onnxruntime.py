"""ONNX Runtime backend: CUDA EP -> CPU by default, the TensorRT EP when asked for, and it says which one really runs.

onnxruntime-gpu silently falls back to CPU when CUDA libraries are missing, so the
providers reported are ``session.get_providers()``, never the ones asked for.

The TensorRT EP is never chosen implicitly: on its first run of a file it builds a TensorRT
engine inside ONNX Runtime, which takes minutes on a Jetson with nothing to show for it.
It runs when asked for (``providers="trt,cuda,cpu"``, ``--providers trt,cuda,cpu``); tl's own
engines (``tl export --trt``) are the faster way to TensorRT.

TF32: ONNX Runtime's CUDA EP computes FP32 convolutions and GEMMs in TF32 by default on
Ampere and newer (its ``use_tf32`` option, since 1.18). tl turns it off for FP32 files, so an
fp32 file computes in FP32, as ``precision`` says, and export's FP32 parity check measures
FP32. The TensorRT EP has no such option (TensorRT allows TF32 by default): an FP32 file
there reports ``precision == "tf32"``.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
from pathlib import Path

import numpy as np

from tl.runtime.artifact import DEFAULT_MAX_BATCH, MAX_BATCH_KEY, spec_from_metadata
from tl.runtime.errors import TLError
from tl.runtime.onnxmeta import read_onnx_meta
from tl.runtime.spec import ModelSpec, require_regular_file

TRT_EP, CUDA_EP, CPU_EP = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
PROVIDER_ALIASES = {"trt": TRT_EP, "tensorrt": TRT_EP, "cuda": CUDA_EP, "gpu": CUDA_EP, "cpu": CPU_EP}
AUTO_ORDER = (CUDA_EP, CPU_EP)  # the TensorRT EP only when asked for (see the module docstring)
_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def default_cache_dir() -> Path:
    root = os.environ.get("TL_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "tl")
    return Path(root) / "ort-trt"


def resolve_providers(requested, available: list[str]) -> list[str]:
    """User names ("cpu,cuda,trt" or full EP names) -> available EP names, in order.

    auto (None) keeps what is installed of CUDA -> CPU (never the TensorRT EP); an explicit
    provider that is not installed is an error, not a silent CPU run.
    """
    if requested is None or requested == "auto" or requested == ["auto"]:
        chosen = [p for p in AUTO_ORDER if p in available]
        return chosen or list(available)
    if isinstance(requested, str):
        requested = [p for p in requested.split(",") if p.strip()]
    chosen = []
    for name in requested:
        full = PROVIDER_ALIASES.get(name.strip().lower(), name.strip())
        if full not in available:
            raise TLError(
                f"ONNX Runtime provider {name!r} is not available here (available: {', '.join(available)}); "
                + ("install onnxruntime-gpu (pip install 'tl[gpu]') and check the CUDA libraries"
                   if full in (TRT_EP, CUDA_EP) else "use one of cpu, cuda, trt")
            )
        if full not in chosen:
            chosen.append(full)
    if not chosen:
        raise TLError("no ONNX Runtime providers given; use e.g. --providers cpu")
    return chosen


def trt_ep_options(spec: ModelSpec, *, precision: str, profile_max: int, device: int, cache: Path) -> dict:
    """TensorRT EP options for one ONNX file.

    ``cache`` is keyed by the file's sha256: ORT names cached engines by file and node
    names, never by weights, so a retrained model.onnx would otherwise load the previous
    model's engine. FP16 is enabled only for fp16 files (an fp32 file then really runs in
    FP32, as ``precision`` says); a QDQ file runs its Q/DQ layers in INT8 and may put the
    others in FP16, like tl's own INT8 engines.
    """
    cache.mkdir(parents=True, exist_ok=True)
    c, h, w = spec.input.channels, spec.input.height, spec.input.width
    name = spec.input.name
    opt = min(8, profile_max)
    return {
        "device_id": device,
        "trt_fp16_enable": precision in ("fp16", "int8"),
        "trt_int8_enable": precision == "int8",  # Q/DQ graph: explicit quantization, no calibration table
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_profile_min_shapes": f"{name}:1x{c}x{h}x{w}",
        "trt_profile_opt_shapes": f"{name}:{opt}x{c}x{h}x{w}",
        "trt_profile_max_shapes": f"{name}:{profile_max}x{c}x{h}x{w}",
    }


def cuda_ep_options(*, precision: str, device: int) -> dict:
    """CUDA EP options for one file: its GPU, and TF32 only for files that are not FP32 (see the module docstring)."""
    return {"device_id": int(device), "use_tf32": int(precision != "fp32")}


def runs_as(file_precision: str, provider: str) -> str:
    """What computes a file on ``provider``: an FP32 file on the TensorRT EP runs with TF32 allowed."""
    return "tf32" if file_precision == "fp32" and provider == TRT_EP else file_precision


def _fallback_switch() -> dict:
    """``enable_fallback=0`` where InferenceSession takes it (newer ONNX Runtime), else nothing."""
    from onnxruntime.capi.onnxruntime_inference_collection import Session

    return {"enable_fallback": 0} if "enable_fallback" in inspect.signature(Session.__init__).parameters else {}


def open_session(path: Path, sess_options, providers: list) -> object:
    """An InferenceSession on exactly ``providers``, or a TLError with the reason.

    When a provider fails to start, ONNX Runtime's Python layer retries on CUDA+CPU or CPU
    without the provider options (device_id lost) and prints an "EP Error" banner to stdout,
    which would corrupt `tl predict --format json`; an EP failure during run does the same.
    Both are switched off: enable_fallback=0 where the session takes it, else the banner is
    kept off stdout and the fallback refused; disable_fallback() for run.
    """
    import onnxruntime as ort

    switch = _fallback_switch()
    banner = io.StringIO()
    quiet = contextlib.nullcontext() if switch else contextlib.redirect_stdout(banner)
    try:
        with quiet:
            session = ort.InferenceSession(str(path), sess_options=sess_options, providers=providers, **switch)
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
        raise TLError(load_failure(path, providers, f"{type(e).__name__}: {str(e).strip()}")) from e
    if "EP Error" in banner.getvalue():
        reason = next(line for line in banner.getvalue().splitlines() if line.startswith("EP Error") and len(line) > 20)
        raise TLError(load_failure(path, providers, reason))
    session.disable_fallback()
    return session


def load_failure(path: Path, providers: list, reason: str) -> str:
    names = [p[0] if isinstance(p, tuple) else p for p in providers]
    gpu = any(n in (TRT_EP, CUDA_EP) for n in names)
    return (f"{path}: ONNX Runtime cannot load it on {', '.join(names)} ({reason[:300]})"
            + ("; a GPU provider that cannot start is left out with providers cpu (--providers cpu)" if gpu else ""))


class OnnxRuntimeBackend:
    name = "onnxruntime"
    concurrent_run = True  # InferenceSession.run may be called from several threads

    def __init__(self, path: Path, *, spec: ModelSpec | None = None, providers=None, device: int = 0,
                 intra_op_threads: int | None = None, cache_dir: str | Path | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        require_regular_file(self.path, "model")
        self.meta = read_onnx_meta(self.path)  # TLError if it is not ONNX at all
        self.spec_source = ("its tl.spec metadata" if spec is None
                            else f"the spec {spec}" if not isinstance(spec, ModelSpec) else "the spec given (--spec)")
        self.spec = self._resolve_spec(spec)
        self.file_precision = self.meta.precision()
        self.device = int(device)

        names = resolve_providers(providers, ort.get_available_providers())
        profile_max = int(self.meta.metadata.get(MAX_BATCH_KEY, DEFAULT_MAX_BATCH))
        provider_list = self.provider_list(names, cache_dir=cache_dir, profile_max=profile_max)

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            so.intra_op_num_threads = int(intra_op_threads)
        so.log_severity_level = 3
        self.session = open_session(self.path, so, provider_list)
        self.providers = list(self.session.get_providers())
        self.precision = runs_as(self.file_precision, self.providers[0] if self.providers else "")

        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise TLError(f"{self.path}: expected one image input and a logits output, found "
                          f"{len(inputs)} inputs / {len(outputs)} outputs")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self._check_spec_fits(inputs[0].shape, outputs[0].shape)
        self.input_dtype = _NP_TYPES.get(inputs[0].type, np.float32)
        batch_dim = inputs[0].shape[0] if inputs[0].shape else None
        fixed = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        self.min_batch = fixed or 1
        if fixed:
            self.max_batch = fixed
        elif self.providers and self.providers[0] == TRT_EP:
            self.max_batch = profile_max  # the TensorRT EP engine is built for this profile
        else:
            self.max_batch = None
        self.on_gpu = bool(self.providers) and self.providers[0] in (TRT_EP, CUDA_EP)

    # -- setup ----------------------------------------------------------------------
    def _resolve_spec(self, spec) -> ModelSpec:
        if spec is not None:
            return spec if isinstance(spec, ModelSpec) else ModelSpec.load(spec)
        return spec_from_metadata(self.meta.metadata, self.path)

    def _check_spec_fits(self, input_shape, output_shape) -> None:
        """The spec's C x H x W and class count against the model's static dims, before a run fails in ORT."""
        def static(dims) -> list[int | None]:
            return [d if isinstance(d, int) and d > 0 else None for d in (dims or [])]

        s = self.spec
        problems = []
        dims = static(input_shape)
        want = (s.input.channels, s.input.height, s.input.width)
        if len(dims) == 4 and any(d is not None and d != w for d, w in zip(dims[1:], want)):
            got = "x".join("?" if d is None else str(d) for d in dims[1:])
            problems.append(f"its input is {got} (CxHxW) but {self.spec_source} says {'x'.join(map(str, want))}")
        out = static(output_shape)
        if out and out[-1] is not None and out[-1] != s.num_classes:
            problems.append(f"it outputs {out[-1]} classes but {self.spec_source} has {s.num_classes}")
        if problems:
            raise TLError(f"{self.path}: the spec does not belong to this model: {'; '.join(problems)}. "
                          "Use the spec.json that was exported with this model")

    def provider_list(self, names: list[str], *, cache_dir=None, profile_max: int = DEFAULT_MAX_BATCH) -> list:
        """EP names -> what InferenceSession takes: (name, options) for the GPU providers, from this file and device."""
        chosen: list = []
        for name in names:
            if name == TRT_EP:
                chosen.append((name, self._trt_options(cache_dir, profile_max)))
            elif name == CUDA_EP:
                chosen.append((name, cuda_ep_options(precision=self.file_precision, device=self.device)))
            else:
                chosen.append(name)
        return chosen

    def _trt_options(self, cache_dir, profile_max: int) -> dict:
        from tl.runtime.files import sha256_file

        root = Path(cache_dir) if cache_dir else default_cache_dir()
        return trt_ep_options(self.spec, precision=self.file_precision, profile_max=profile_max, device=self.device,
                              cache=root / sha256_file(self.path)[:16])

    # -- inference ------------------------------------------------------------------
    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        if self.on_gpu:
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input_name, batch)
            binding.bind_output(self.output_name, "cuda", self.device)
            self.session.run_with_iobinding(binding)
            out = binding.copy_outputs_to_cpu()[0]
        else:
            out = self.session.run([self.output_name], {self.input_name: batch})[0]
        return np.asarray(out, dtype=np.float32)

    def device_compute_ms(self, batch: np.ndarray, iters: int) -> list[float] | None:
        """None: ONNX Runtime exposes no CUDA events, and run_with_iobinding synchronizes its
        stream on every call, so it cannot give the back-to-back device time that the
        torch and TensorRT rows report; its end-to-end latency is still measured."""
        return None

    def close(self) -> None:
        self.session = None
