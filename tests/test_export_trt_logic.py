"""TensorRT build: the pure logic everywhere; the real build only where TensorRT and a GPU exist."""

from __future__ import annotations

import hashlib
import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest

from tl.export.trt import (
    Route, TrtFeatures, TrtOptions, build_record, choose_route, parser_errors, profile_shapes, use_timing_cache,
)
from tl.runtime.artifact import artifact_for
from tl.runtime.errors import TLError
from tl.runtime.gpu import NO_GPU, NOT_INSTALLED, GpuDevice, find_gpu, import_tensorrt
from tl.runtime.spec import ModelSpec

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
SPEC = ModelSpec.create(arch="vgg16", classes=["cat", "dog"], image_size=224)

TRT86 = TrtFeatures(version="8.6.1", strongly_typed=False, fp16_flag=True, int8_flag=True, explicit_batch_flag=True, optimization_level=True)
TRT10 = TrtFeatures(version="10.7.0", strongly_typed=True, fp16_flag=True, int8_flag=True, explicit_batch_flag=True, optimization_level=True)
TRT11 = TrtFeatures(version="11.0.0", strongly_typed=True, fp16_flag=False, int8_flag=False, explicit_batch_flag=False, optimization_level=True)


def _fake_trt(network_flags, builder_flags, has_opt_level=True, version="x"):
    """A stand-in for the tensorrt module's enums: probe() only looks at attribute names."""
    config = type("IBuilderConfig", (), {"builder_optimization_level": 0} if has_opt_level else {})
    return SimpleNamespace(
        __version__=version,
        NetworkDefinitionCreationFlag=SimpleNamespace(**{f: i for i, f in enumerate(network_flags)}),
        BuilderFlag=SimpleNamespace(**{f: i for i, f in enumerate(builder_flags)}),
        IBuilderConfig=config,
    )


def test_probe_reads_features_by_attribute():
    f = TrtFeatures.probe(_fake_trt(["EXPLICIT_BATCH", "STRONGLY_TYPED"], ["FP16", "INT8", "TF32"], version="10.3.0"))
    assert f == TrtFeatures("10.3.0", True, True, True, True, True)
    f = TrtFeatures.probe(_fake_trt(["STRONGLY_TYPED"], ["TF32"], version="11.0"))
    assert f.strongly_typed and not f.fp16_flag and not f.int8_flag and not f.explicit_batch_flag
    f = TrtFeatures.probe(_fake_trt(["EXPLICIT_BATCH"], ["FP16", "INT8"], has_opt_level=False, version="8.5"))
    assert not f.strongly_typed and f.fp16_flag and not f.optimization_level


def test_fp16_route_per_version():
    assert choose_route("fp16", TRT11) == Route("fp16", "model.fp16.onnx", True, (), ("STRONGLY_TYPED",))
    assert choose_route("fp16", TRT10) == Route("fp16", "model.fp16.onnx", True, (), ("STRONGLY_TYPED",))
    assert choose_route("fp16", TRT86) == Route("fp16", "model.onnx", False, ("FP16",), ("EXPLICIT_BATCH",))


def test_int8_route_always_from_the_qdq_model():
    r11, r10, r86 = choose_route("int8", TRT11), choose_route("int8", TRT10), choose_route("int8", TRT86)
    assert r11.onnx_name == r10.onnx_name == r86.onnx_name == "model.int8.onnx"
    assert r11.strongly_typed and r11.builder_flags == () and "FP32" in r11.note
    # Where the flags exist, weak typing lets the layers without Q/DQ run in FP16.
    for r in (r10, r86):
        assert not r.strongly_typed and r.builder_flags == ("INT8", "FP16") and "FP16" in r.note
    record = build_record(spec=SPEC, route=r10, options=TrtOptions(), features=TRT10, gpu=GpuDevice(0, "x", "8.9"),
                          onnx_path="model.int8.onnx", onnx_sha256="0", seconds=1.0)
    assert record.extra["route"] == r10.note and record.extra["builder_flags"] == ["INT8", "FP16"]


def test_route_errors():
    old = TrtFeatures(version="7.0", strongly_typed=False, fp16_flag=False, int8_flag=False)
    with pytest.raises(TLError, match="8.6 or newer"):
        choose_route("fp16", old)
    with pytest.raises(TLError, match="8.6 or newer"):
        choose_route("int8", old)
    with pytest.raises(TLError, match="precision must be one of"):
        choose_route("fp8", TRT10)


def test_profile_shapes_from_options_and_spec():
    shapes = profile_shapes(SPEC, TrtOptions(min_batch=1, opt_batch=8, max_batch=32))
    assert shapes == {"min": [1, 3, 224, 224], "opt": [8, 3, 224, 224], "max": [32, 3, 224, 224]}
    small = ModelSpec.create(arch="resnet18", classes=["a", "b"], image_size=64)
    assert profile_shapes(small, TrtOptions(min_batch=4, opt_batch=4, max_batch=4))["opt"] == [4, 3, 64, 64]


@pytest.mark.parametrize("lo,opt,hi,msg", [(0, 1, 2, "--min-batch must be at least 1"), (2, 1, 4, "--min-batch <= --opt-batch"),
                                           (1, 8, 4, "--opt-batch <= --max-batch")])
def test_profile_shape_errors(lo, opt, hi, msg):
    with pytest.raises(TLError, match=msg):
        profile_shapes(SPEC, TrtOptions(min_batch=lo, opt_batch=opt, max_batch=hi))


def test_build_record_content_and_sidecar_round_trip(tmp_path):
    from tl.runtime.sidecar import check_compatible, read_sidecar, write_sidecar

    onnx_file = tmp_path / "model.fp16.onnx"
    onnx_file.write_bytes(b"not really onnx")
    from tl.export.trt import sha256_file

    options = TrtOptions(min_batch=1, opt_batch=8, max_batch=16, workspace_gib=2.0, opt_level=4)
    record = build_record(spec=SPEC, route=choose_route("fp16", TRT10), options=options, features=TRT10,
                          gpu=GpuDevice(0, "NVIDIA Jetson AGX Orin", "8.7"), onnx_path=onnx_file,
                          onnx_sha256=sha256_file(onnx_file), seconds=12.3456, tl_version="0.1.0",
                          timing_cache="tensorrt.timing.cache")
    assert record.tensorrt_version == "10.7.0" and record.compute_capability == "8.7"
    assert record.precision == "fp16" and record.strongly_typed
    assert record.profile["max"] == [16, 3, 224, 224] and record.max_batch == 16 and record.min_batch == 1
    assert record.onnx_file == "model.fp16.onnx"
    assert record.onnx_sha256 == hashlib.sha256(b"not really onnx").hexdigest()
    assert record.build_seconds == 12.346 and record.builder_optimization_level == 4 and record.workspace_gib == 2.0
    assert record.built_at.endswith("+00:00")
    assert record.extra["network_flags"] == ["STRONGLY_TYPED"] and record.extra["timing_cache"] == "tensorrt.timing.cache"

    engine = tmp_path / artifact_for("engine", "fp16").file
    engine.write_bytes(b"plan")
    write_sidecar(engine, SPEC, record)
    spec2, record2 = read_sidecar(engine)
    assert spec2 == SPEC and record2 == record
    check_compatible(record2, tensorrt_version="10.7.0", compute_capability="8.7")
    with pytest.raises(TLError, match="rebuild"):
        check_compatible(record2, tensorrt_version="10.7.0", compute_capability="9.0")


def test_parser_errors_list_node_names():
    class Err:  # shape of TensorRT 10's IParserError
        def __init__(self, desc, name, op, node):
            self._d, self._n, self._o, self._i = desc, name, op, node

        def desc(self):
            return self._d

        def node_name(self):
            return self._n

        def node_operator(self):
            return self._o

        def node(self):
            return self._i

    class OldErr:  # 8.6: no node_name()
        def desc(self):
            return "Assertion failed"

        def node(self):
            return 7

    errors = [Err("only activation types allowed", "fc.bias_DequantizeLinear", "DequantizeLinear", 3), OldErr()]
    parser = SimpleNamespace(num_errors=2, get_error=lambda i: errors[i])
    lines = parser_errors(parser)
    assert lines == ["node fc.bias_DequantizeLinear (DequantizeLinear): only activation types allowed",
                     "node #7: Assertion failed"]


def test_fold_int32_bias_dequantize_keeps_outputs(make_checkpoint, synth_data, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from tl.export.int8 import CalibOptions, calibration_images, quantize_int8
    from tl.export.onnx import export_onnx
    from tl.export.trt import fold_int32_dequantize
    from tl.train.checkpoint import load_model

    model, spec, _ = load_model(make_checkpoint(image_size=32))
    export_onnx(model, spec, tmp_path / "model.onnx")
    files = calibration_images(calib_dir=synth_data / "train", ckpt=None, count=8)
    quantize_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", files=files, options=CalibOptions(count=8))
    proto = onnx.load(str(tmp_path / "model.int8.onnx"))
    int32_dq = lambda p: [n for n in p.graph.node if n.op_type == "DequantizeLinear" and any(  # noqa: E731
        t.name == n.input[0] and t.data_type == onnx.TensorProto.INT32 for t in p.graph.initializer)]
    before = len(int32_dq(proto))
    assert before >= 1  # ORT quantizes the Linear/Conv biases to int32
    assert fold_int32_dequantize(proto) == before and not int32_dq(proto)
    onnx.checker.check_model(proto, full_check=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    a = ort.InferenceSession(str(tmp_path / "model.int8.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    b = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_no_tensorrt_is_a_user_error(tmp_path):
    from tl.export.trt import build_engine

    with pytest.raises(TLError) as e:
        import_tensorrt()
    assert str(e.value) == NOT_INSTALLED
    with pytest.raises(TLError, match="TensorRT is not installed"):
        build_engine(out_dir=tmp_path, spec=SPEC, precision="fp16")
    assert not list(tmp_path.iterdir())


def test_find_gpu_is_none_or_complete():
    info = find_gpu(0)
    assert info is None or (info.name and info.compute_capability.count(".") == 1)
    assert find_gpu(99) is None or isinstance(find_gpu(99), GpuDevice)


@pytest.mark.skipif(not HAS_TRT, reason="needs the tensorrt package")
def test_no_gpu_message_when_tensorrt_but_no_gpu(tmp_path):
    from tl.export.trt import build_engine

    if find_gpu(0) is not None:
        pytest.skip("a GPU is present")
    with pytest.raises(TLError, match=NO_GPU):
        build_engine(out_dir=tmp_path, spec=SPEC, precision="fp16")


@pytest.mark.trt
@pytest.mark.skipif(not HAS_TRT, reason="needs TensorRT and an NVIDIA GPU")
def test_real_engine_build_and_timing_cache_reuse(make_checkpoint, tmp_path):
    from tl.export.fp16 import convert_fp16
    from tl.export.onnx import export_onnx
    from tl.export.trt import TIMING_CACHE, build_engine
    from tl.runtime.sidecar import read_sidecar
    from tl.train.checkpoint import load_model

    if find_gpu(0) is None:
        pytest.skip("needs an NVIDIA GPU")
    model, spec, _ = load_model(make_checkpoint("resnet18", image_size=32))
    export_onnx(model, spec, tmp_path / "model.onnx")
    convert_fp16(tmp_path / "model.onnx", tmp_path / "model.fp16.onnx")
    options = TrtOptions(min_batch=1, opt_batch=2, max_batch=4, workspace_gib=1.0)
    engine, record = build_engine(out_dir=tmp_path, spec=spec, precision="fp16", options=options)
    assert engine.name == "model.fp16.plan" and engine.stat().st_size > 1000
    cache = tmp_path / TIMING_CACHE
    assert cache.is_file() and cache.stat().st_size > 0
    spec2, record2 = read_sidecar(engine)
    assert spec2 == spec and record2.profile["max"] == [4, 3, 32, 32]
    # The next build reuses the cache (and is not slower by much).
    _, again = build_engine(out_dir=tmp_path, spec=spec, precision="fp16", options=options)
    assert again.onnx_sha256 == record.onnx_sha256


class _Config:
    """Records what use_timing_cache hands the builder config; mimics IBuilderConfig's return values."""

    def __init__(self, accept: bool):
        self.accept, self.calls = accept, []

    def create_timing_cache(self, buffer):
        return bytes(buffer)

    def set_timing_cache(self, cache, ignore_mismatch):
        self.calls.append((cache, ignore_mismatch))
        return self.accept or cache == b""


def test_timing_cache_never_ignores_a_mismatch(tmp_path):
    path = tmp_path / "tensorrt.timing.cache"
    cfg = _Config(accept=True)
    assert use_timing_cache(cfg, path) == "tensorrt.timing.cache (new)"  # nothing saved yet
    assert cfg.calls == [(b"", False)]
    path.write_bytes(b"cache from this GPU")
    cfg = _Config(accept=True)
    assert use_timing_cache(cfg, path) == "tensorrt.timing.cache (reused)"
    assert cfg.calls == [(b"cache from this GPU", False)]
    cfg = _Config(accept=False)  # recorded on another GPU: TensorRT refuses it, the build starts cold
    assert "refused" in use_timing_cache(cfg, path)
    assert cfg.calls == [(b"cache from this GPU", False), (b"", False)]
