"""OpenVINO backend: the same .onnx files (FP32, FP16, INT8 QDQ) on OpenVINO's CPU plugin.

On x86 CPUs OpenVINO is often the fastest path (AMX bf16/int8 on Xeon), and it reads the
ONNX file directly: metadata_props land in the model's rt_info under ``framework``, so the
spec travels as it does for ONNX Runtime. The inference precision is set explicitly and
read back from the compiled model: OpenVINO quietly runs FP32 models in bf16 on AMX CPUs,
and quietly ignores a bf16 request on CPUs without it, so ``precision`` says what runs.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from tl.runtime.artifact import spec_from_metadata
from tl.runtime.backends.registry import OPENVINO_PRECISIONS
from tl.runtime.errors import TLError
from tl.runtime.onnxmeta import read_onnx_meta
from tl.runtime.spec import ModelSpec, require_regular_file

INSTALL_HINT = "install it with pip install 'tl[openvino]' (the openvino extra)"
HINTS = ("latency", "throughput")
RT_INFO_PATH = "framework"  # where OpenVINO's ONNX frontend keeps metadata_props
_RUNS_AS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


def import_openvino():
    """openvino, or one error line naming the extra."""
    try:
        return importlib.import_module("openvino")
    except ImportError as e:
        raise TLError(f"the openvino backend needs OpenVINO, which is not installed here ({e}); {INSTALL_HINT}") from e


def runs_as(file_precision: str, compiled_precision: str) -> str:
    """What a compiled model really computes in: an FP32 file runs in the compiled precision
    (bf16 on AMX by default); FP16 and INT8 files keep their own name (their unquantized
    layers run in the compiled precision, which ``providers`` shows)."""
    if file_precision != "fp32":
        return file_precision
    return _RUNS_AS.get(compiled_precision, compiled_precision)


def rt_metadata(model) -> dict[str, str]:
    """ONNX metadata_props as OpenVINO keeps them: rt_info['framework'][key]."""
    if not model.has_rt_info([RT_INFO_PATH]):
        return {}
    keys = model.get_rt_info()[RT_INFO_PATH].keys()
    return {str(k): model.get_rt_info([RT_INFO_PATH, str(k)]).astype(str) for k in keys}


def default_inference_precision() -> str:
    """The CPU plugin's own inference precision ("bf16" on AMX CPUs, else "f32"), without compiling anything."""
    import_openvino()
    import openvino as ov
    import openvino.properties.hint as hints

    return ov.Core().get_property("CPU", hints.inference_precision).to_string()


def compile_config(ov, *, inference_precision: str, hint: str, threads: int | None, cache_dir: str | Path | None) -> dict:
    """compile_model properties: performance hint, threads, blob cache, and the inference precision (unless 'default')."""
    import openvino.properties as props
    import openvino.properties.hint as hints

    if inference_precision not in OPENVINO_PRECISIONS:
        raise TLError(f"OpenVINO inference precision must be one of {', '.join(OPENVINO_PRECISIONS)} "
                      f"(got {inference_precision!r})")
    if hint not in HINTS:
        raise TLError(f"OpenVINO performance hint must be one of {', '.join(HINTS)} (got {hint!r})")
    mode = hints.PerformanceMode.LATENCY if hint == "latency" else hints.PerformanceMode.THROUGHPUT
    config: dict = {hints.performance_mode: mode}
    if inference_precision != "default":
        config[hints.inference_precision] = getattr(ov.Type, inference_precision)
    if threads:
        config[props.inference_num_threads] = int(threads)
    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        config[props.cache_dir] = str(cache_dir)
    return config


class OpenVinoBackend:
    name = "openvino"

    def __init__(self, path: Path, *, spec: ModelSpec | None = None, providers=None, device: int = 0,
                 intra_op_threads: int | None = None, cache_dir: str | Path | None = None,
                 inference_precision: str = "f32", hint: str = "latency"):
        self.path = Path(path)
        require_regular_file(self.path, "model")
        if providers not in (None, "auto", ["auto"], "cpu", ["cpu"]):
            raise TLError("providers apply to ONNX Runtime only; the openvino backend runs on the CPU")
        file_meta = read_onnx_meta(self.path)  # TLError if it is not ONNX at all
        ov = import_openvino()
        config = compile_config(ov, inference_precision=inference_precision, hint=hint, threads=intra_op_threads,
                                cache_dir=cache_dir)
        model = self._compile(ov.Core(), config)
        metadata = rt_metadata(model) or file_meta.metadata
        if spec is None:
            self.spec = spec_from_metadata(metadata, self.path)
        else:
            self.spec = spec if isinstance(spec, ModelSpec) else ModelSpec.load(spec)
        self._describe(ov, file_meta.precision())
        self._check_io(model)
        self.request = self.compiled.create_infer_request()

    def _compile(self, core, config: dict):
        try:
            model = core.read_model(str(self.path))
            self.compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as e:
            last = (str(e).strip().splitlines() or [type(e).__name__])[-1]
            raise TLError(f"{self.path}: OpenVINO cannot load it ({last[:300]})") from e
        return model

    def _describe(self, ov, file_precision: str) -> None:
        """precision and providers from the compiled model, never from what was asked for."""
        import openvino.properties as props
        import openvino.properties.hint as hints

        self.compiled_precision = self.compiled.get_property(hints.inference_precision).to_string()
        self.precision = runs_as(file_precision, self.compiled_precision)
        devices = "/".join(self.compiled.get_property(props.execution_devices))
        self.providers = [f"OpenVINO {ov.__version__.split('-')[0]} {devices} {self.compiled_precision}"]

    def _check_io(self, model) -> None:
        if len(model.inputs) != 1 or not model.outputs:
            raise TLError(f"{self.path}: expected one image input and a logits output, found "
                          f"{len(model.inputs)} inputs / {len(model.outputs)} outputs")
        batch_dim = model.inputs[0].get_partial_shape()[0]
        self.min_batch = batch_dim.get_length() if batch_dim.is_static else 1
        self.max_batch = batch_dim.get_length() if batch_dim.is_static else None

    def run(self, batch: np.ndarray) -> np.ndarray:
        out = self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(out[0], dtype=np.float32)

    def device_compute_ms(self, batch: np.ndarray, iters: int) -> list[float] | None:
        """None: OpenVINO runs on the CPU here; its host->host latency is the measure."""
        return None

    def close(self) -> None:
        self.request = None
        self.compiled = None
