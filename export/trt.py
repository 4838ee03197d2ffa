"""TensorRT engines from tl's ONNX files, for TensorRT 8.6, 10.x and 11.x.

Written after NVIDIA's TensorRT Python samples (samples/python/*/build_engine.py,
common.py's timing-cache helpers, strongly_type_autocast/sample.py):

- FP16: a strongly typed network from ``model.fp16.onnx`` where
  ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` exists (TensorRT 10/11; 11 removed
  ``BuilderFlag.FP16``), else ``model.onnx`` + ``BuilderFlag.FP16`` (8.6).
- INT8: the QDQ ``model.int8.onnx`` (explicit quantization). Where ``BuilderFlag.INT8``
  and ``FP16`` exist (8.6-10.x) the network is weakly typed so the layers left without
  Q/DQ may run in FP16; strongly typed (11) they run in FP32, and the sidecar says so.
- One optimization profile over the batch dimension; a timing cache file kept beside
  the engines and reused by the next build; the engine is a plain serialized plan.
- TF32: TensorRT allows it for FP32 layers by default (BuilderFlag.TF32). The FP16/INT8
  engines keep it for their FP32 layers and the sidecar says so; a route whose precision is
  fp32 clears it, so an FP32 engine computes what its name says.
- The build runs on GPU ``device``: it is made the current device first (as trtexec does),
  so the GPU the sidecar records is the GPU the engine was built and tuned on.

Everything that does not need TensorRT (profile shapes, route choice from a feature
probe, the build record) is a plain function, tested on any machine.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tl.export.options import ExportOptions
from tl.runtime.artifact import ARTIFACTS, CHECKPOINT_KEY, DEFAULT_MAX_BATCH, artifact_for, onnx_metadata
from tl.runtime.errors import TLError
from tl.runtime.files import atomic_write_bytes, sha256_file
from tl.runtime.gpu import NO_GPU, GpuDevice, find_gpu, import_cudart, import_tensorrt, trt_create, use_device
from tl.runtime.sidecar import BuildRecord, write_sidecar
from tl.runtime.spec import ModelSpec

TIMING_CACHE = "tensorrt.timing.cache"
ENGINE_PRECISIONS = tuple(k.precision for k in ARTIFACTS if k.format == "engine")  # the engines tl builds


@dataclass(frozen=True)
class TrtOptions:
    min_batch: int = ExportOptions.min_batch
    opt_batch: int = ExportOptions.opt_batch
    max_batch: int = DEFAULT_MAX_BATCH
    workspace_gib: float = ExportOptions.workspace
    opt_level: int | None = None  # builder_optimization_level 0..5; None: TensorRT's default (3)
    timing_cache: bool = True


@dataclass(frozen=True)
class TrtFeatures:
    """What the installed TensorRT offers, probed with hasattr (never version strings)."""

    version: str = ""
    strongly_typed: bool = False  # NetworkDefinitionCreationFlag.STRONGLY_TYPED (10.0+)
    fp16_flag: bool = False  # BuilderFlag.FP16 (gone in 11)
    int8_flag: bool = False  # BuilderFlag.INT8 (gone in 11)
    explicit_batch_flag: bool = False  # NetworkDefinitionCreationFlag.EXPLICIT_BATCH (needed by 8.x)
    optimization_level: bool = False  # IBuilderConfig.builder_optimization_level (8.6+)

    @classmethod
    def probe(cls, trt) -> "TrtFeatures":
        flags = trt.NetworkDefinitionCreationFlag
        bflags = trt.BuilderFlag
        return cls(
            version=str(getattr(trt, "__version__", "")),
            strongly_typed=hasattr(flags, "STRONGLY_TYPED"),
            fp16_flag=hasattr(bflags, "FP16"),
            int8_flag=hasattr(bflags, "INT8"),
            explicit_batch_flag=hasattr(flags, "EXPLICIT_BATCH"),
            optimization_level=hasattr(trt.IBuilderConfig, "builder_optimization_level"),
        )


@dataclass(frozen=True)
class Route:
    """How one engine is built: which ONNX file, strongly typed or not, which builder flags."""

    precision: str
    onnx_name: str  # the ONNX artifact it parses (tl.runtime.artifact.ARTIFACTS)
    strongly_typed: bool
    builder_flags: tuple[str, ...] = ()
    network_flags: tuple[str, ...] = ()
    note: str = ""  # what the route means for the layers' precision, for the sidecar


def choose_route(precision: str, features: TrtFeatures) -> Route:
    """The design's precision rules (TensorRT 8.6 -> 11) as one pure function."""
    fp32, fp16, int8 = (artifact_for("onnx", p).file for p in ("fp32", "fp16", "int8"))
    net = ("EXPLICIT_BATCH",) if features.explicit_batch_flag and not features.strongly_typed else ()
    if precision == "fp16":
        if features.strongly_typed:
            return Route("fp16", fp16, True, (), ("STRONGLY_TYPED",))
        if features.fp16_flag:
            return Route("fp16", fp32, False, ("FP16",), net)
        raise TLError(f"TensorRT {features.version} offers neither strongly typed networks nor BuilderFlag.FP16; "
                      "install TensorRT 8.6 or newer")
    if precision == "int8":
        weak = ("EXPLICIT_BATCH",) if features.explicit_batch_flag else ()
        if features.int8_flag and features.fp16_flag:
            # Weak typing lets the layers without Q/DQ pick FP16; strongly typed they stay FP32
            # and the INT8 engine can lose to the FP16 one.
            return Route("int8", int8, False, ("INT8", "FP16"), weak,
                         "Q/DQ layers in INT8, the other layers in FP16 or FP32 (weakly typed)")
        if features.strongly_typed:
            return Route("int8", int8, True, (), ("STRONGLY_TYPED",),
                         "Q/DQ layers in INT8, the other layers in FP32 (strongly typed: no FP16 flag here)")
        if features.int8_flag:
            return Route("int8", int8, False, ("INT8",), weak,
                         "Q/DQ layers in INT8, the other layers in FP32")
        raise TLError(f"TensorRT {features.version} cannot build INT8 from a QDQ model; install TensorRT 8.6 or newer")
    raise TLError(f"TensorRT precision must be one of {', '.join(ENGINE_PRECISIONS)} (got {precision!r})")


def profile_shapes(spec: ModelSpec, options: TrtOptions) -> dict[str, list[int]]:
    """min/opt/max NCHW shapes of the one optimization profile (batch varies, image size fixed)."""
    lo, opt, hi = options.min_batch, options.opt_batch, options.max_batch
    if lo < 1:
        raise TLError(f"--min-batch must be at least 1 (got {lo})")
    if not lo <= opt <= hi:
        raise TLError(f"batch sizes must satisfy --min-batch <= --opt-batch <= --max-batch (got {lo}, {opt}, {hi})")
    chw = [spec.input.channels, spec.input.height, spec.input.width]
    return {"min": [lo, *chw], "opt": [opt, *chw], "max": [hi, *chw]}


def tf32_allowed(route: Route) -> bool:
    """Whether the build may compute FP32 layers in TF32: not for an fp32 route (its precision is the promise)."""
    return route.precision != "fp32"


def build_record(*, spec: ModelSpec, route: Route, options: TrtOptions, features: TrtFeatures, gpu: GpuDevice,
                 onnx_path: str | Path, onnx_sha256: str, seconds: float, tl_version: str = "",
                 timing_cache: str | None = None, checkpoint_sha256: str = "", tf32: bool | None = None) -> BuildRecord:
    """Everything the sidecar records about a build (the runtime refuses a mismatched GPU/TensorRT)."""
    return BuildRecord(
        tensorrt_version=features.version,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        precision=route.precision,
        profile=profile_shapes(spec, options),
        onnx_file=Path(onnx_path).name,
        onnx_sha256=onnx_sha256,
        build_seconds=round(float(seconds), 3),
        built_at=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        strongly_typed=route.strongly_typed,
        builder_optimization_level=options.opt_level,
        workspace_gib=options.workspace_gib,
        tl_version=tl_version,
        checkpoint_sha256=checkpoint_sha256,
        extra={"builder_flags": list(route.builder_flags), "network_flags": list(route.network_flags),
               "route": route.note, "timing_cache": timing_cache, "tf32": tf32},
    )


def fold_int32_dequantize(model_proto) -> int:
    """Replace DequantizeLinear nodes over int32 initializers (quantized biases) by float initializers.

    ONNX Runtime's CPU kernels need the int32 bias DQ to fuse QLinearConv, but TensorRT's
    parser rejects it ("only activation types allowed as input to this layer"), so the
    engine is built from this in-memory variant of model.int8.onnx. Returns how many were folded.
    """
    import numpy as np
    from onnx import TensorProto, numpy_helper

    graph = model_proto.graph
    inits = {t.name: t for t in graph.initializer}
    folded, keep = 0, []
    for node in graph.node:
        src = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" and node.input else None
        if src is None or src.data_type != TensorProto.INT32 or node.input[1] not in inits:
            keep.append(node)
            continue
        q = numpy_helper.to_array(src).astype(np.float64)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        zp = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64) if len(node.input) > 2 and node.input[2] in inits else 0.0
        if q.ndim == 1 or scale.ndim == 0:
            value = (q - zp) * scale
        else:  # per-axis scale on a higher-rank tensor
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            shape[axis] = -1
            value = (q - np.reshape(zp, shape) if np.ndim(zp) else q - zp) * scale.reshape(shape)
        graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name=node.output[0]))
        folded += 1
    if folded:
        del graph.node[:]
        graph.node.extend(keep)
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        unused = [t for t in graph.initializer if t.name not in used]
        for t in unused:
            graph.initializer.remove(t)
    return folded


def parser_errors(parser) -> list[str]:
    """ONNX parser errors as 'node NAME (OP): description' lines (node names: TensorRT 10+)."""
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node_name = _call(err, "node_name")
        op = _call(err, "node_operator")
        node = _call(err, "node")
        where = f"node {node_name or (('#' + str(node)) if node not in (None, -1) else '?')}"
        if op:
            where += f" ({op})"
        lines.append(f"{where}: {_call(err, 'desc') or err}")
    return lines


def _call(obj, name):
    fn = getattr(obj, name, None)
    try:
        return fn() if callable(fn) else fn
    except Exception:
        return None


def use_timing_cache(config, path: Path) -> str:
    """Give the builder the timing cache at ``path``; returns what happened, for the sidecar.

    ``ignore_mismatch=False`` (as Polygraphy passes): a cache recorded on another GPU is
    refused (the call returns False) rather than trusted, and the build starts cold.
    """
    buffer = path.read_bytes() if path.is_file() else b""
    try:
        if buffer and config.set_timing_cache(config.create_timing_cache(buffer), ignore_mismatch=False):
            return f"{path.name} (reused)"
    except Exception:  # noqa: BLE001 - a cache truncated by a killed build: build cold
        pass
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return f"{path.name} ({'refused: recorded on another GPU or TensorRT; ' if buffer else ''}new)"


# -- the build ----------------------------------------------------------------------------

def _network(trt, logger, route: Route, onnx_path: Path):
    """(builder, network) with the ONNX file parsed into it; INT8 files lose their int32-bias DQ first."""
    if hasattr(trt, "init_libnvinfer_plugins"):
        trt.init_libnvinfer_plugins(logger, "")
    builder = trt_create(trt.Builder, logger, what="builder")
    flags = 0
    for name in route.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    onnx_bytes = onnx_path.read_bytes()
    if route.precision == "int8":
        import onnx

        proto = onnx.load_from_string(onnx_bytes)
        if fold_int32_dequantize(proto):
            onnx_bytes = proto.SerializeToString()
    if not parser.parse(onnx_bytes):
        errors = parser_errors(parser)
        raise TLError(f"TensorRT could not parse {onnx_path.name}:\n  " + "\n  ".join(errors or ["(no details)"]))
    return builder, network


def _config(trt, builder, network, route: Route, options: TrtOptions, features: TrtFeatures, shapes: dict):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    if options.opt_level is not None and features.optimization_level:
        config.builder_optimization_level = int(options.opt_level)
    for name in route.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if hasattr(trt.BuilderFlag, "TF32") and not tf32_allowed(route):
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, min=tuple(shapes["min"]), opt=tuple(shapes["opt"]),
                      max=tuple(shapes["max"]))
    config.add_optimization_profile(profile)
    return config


def select_build_device(device: int) -> None:
    """Make GPU ``device`` current for the builder on this thread (TensorRT builds on the current device).

    Without cuda-python only GPU 0, CUDA's default, can be chosen.
    """
    try:
        cudart = import_cudart()
    except TLError:
        if int(device) == 0:
            return
        raise
    use_device(cudart, device)


def build_engine(*, out_dir: str | Path, spec: ModelSpec, precision: str, options: TrtOptions = TrtOptions(),
                 device: int = 0, sources: Sequence[str | Path] = ()) -> tuple[Path, BuildRecord]:
    """Build the engine of ``precision`` into ``out_dir`` (model.<precision>.plan + sidecar) from the ONNX file the route needs,
    looked up in ``sources`` (default: ``out_dir``)."""
    from tl import __version__ as tl_version

    trt = import_tensorrt()
    gpu = find_gpu(device)
    if gpu is None:
        raise TLError(NO_GPU)
    features = TrtFeatures.probe(trt)
    route = choose_route(precision, features)
    shapes = profile_shapes(spec, options)
    out_dir = Path(out_dir)
    folders = [Path(f) for f in sources] or [out_dir]
    onnx_path = next((f / route.onnx_name for f in folders if (f / route.onnx_name).is_file()), out_dir / route.onnx_name)
    if not onnx_path.is_file():
        raise TLError(f"{onnx_path} is missing; export it first (tl export --onnx{' --int8' if precision == 'int8' else ''})")

    select_build_device(device)
    builder, network = _network(trt, trt.Logger(trt.Logger.WARNING), route, onnx_path)
    config = _config(trt, builder, network, route, options, features, shapes)
    cache_path = out_dir / TIMING_CACHE
    cache_state = use_timing_cache(config, cache_path) if options.timing_cache else None
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if plan is None:
        raise TLError(f"TensorRT failed to build the {precision} engine from {onnx_path.name}; "
                      "try a larger --workspace or a smaller --max-batch (TL_DEBUG=1 and the log above have details)")
    if options.timing_cache:
        atomic_write_bytes(cache_path, memoryview(config.get_timing_cache().serialize()).tobytes())
    record = build_record(spec=spec, route=route, options=options, features=features, gpu=gpu,
                          onnx_path=onnx_path, onnx_sha256=sha256_file(onnx_path), seconds=seconds,
                          tl_version=str(tl_version), timing_cache=cache_state,
                          checkpoint_sha256=onnx_metadata(onnx_path).get(CHECKPOINT_KEY, ""),
                          tf32=hasattr(trt.BuilderFlag, "TF32") and tf32_allowed(route))
    engine = out_dir / artifact_for("engine", precision).file
    atomic_write_bytes(engine, memoryview(plan).tobytes())
    write_sidecar(engine, spec, record)
    return engine, record
