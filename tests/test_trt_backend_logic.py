"""The TensorRT backend's checks that need no TensorRT; the GPU tests skip with a reason."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import skip_where_installed
from tl.runtime import Classifier, TLError
from tl.runtime.backends import entry_for
from tl.runtime.backends.tensorrt import checked_sidecar, cuda_call
from tl.runtime.sidecar import BuildRecord, sidecar_path, write_sidecar
from tl.runtime.spec import ModelSpec

SPEC = ModelSpec.create(arch="vgg16", classes=["cat", "dog"], image_size=64)


def _engine(tmp_path, *, trt="10.3.0", cc="8.7", name="model.fp16.plan"):
    plan = tmp_path / name
    plan.write_bytes(b"plan bytes")
    write_sidecar(plan, SPEC, BuildRecord(
        tensorrt_version=trt, gpu_name="Orin", compute_capability=cc, precision="fp16",
        profile={"min": [1, 3, 64, 64], "opt": [8, 3, 64, 64], "max": [32, 3, 64, 64]}))
    return plan


def test_suffix_registry():
    for name in ("m.plan", "m.engine", "M.PLAN", "x.trt"):
        assert entry_for(name).name == "tensorrt"
    assert entry_for("m.onnx").name == "onnxruntime"
    assert entry_for("m.plan", "trt").name == "tensorrt"


def test_checked_sidecar_accepts_matching_engine(tmp_path):
    spec, build = checked_sidecar(_engine(tmp_path), spec=None, tensorrt_version="10.3.0", compute_capability="8.7")
    assert spec == SPEC and build.max_batch == 32 and build.min_batch == 1 and build.precision == "fp16"


@pytest.mark.parametrize("trt, cc, fragments", [
    ("10.7.0", "8.7", ["TensorRT 10.3.0", "this machine has 10.7.0"]),
    ("10.3.0", "9.0", ["compute capability 8.7 (Orin)", "this GPU is 9.0"]),
    ("11.0.0", "12.0", ["TensorRT 10.3.0", "compute capability 8.7"]),
])
def test_checked_sidecar_refuses_mismatch_before_deserializing(tmp_path, trt, cc, fragments):
    with pytest.raises(TLError) as e:
        checked_sidecar(_engine(tmp_path), spec=None, tensorrt_version=trt, compute_capability=cc)
    msg = str(e.value)
    assert "rebuild it on this device with 'tl export CHECKPOINT --trt'" in msg
    for f in fragments:
        assert f in msg


def test_checked_sidecar_without_sidecar(tmp_path):
    plan = tmp_path / "foreign.engine"
    plan.write_bytes(b"x")
    with pytest.raises(TLError, match="no sidecar"):
        checked_sidecar(plan, spec=None, tensorrt_version="10.3.0", compute_capability="8.7")
    # with a spec the user vouches for it; nothing to compare, TensorRT itself is the check
    SPEC.save(tmp_path / "spec.json")
    spec, build = checked_sidecar(plan, spec=tmp_path / "spec.json", tensorrt_version="10.3.0", compute_capability="8.7")
    assert spec == SPEC and build is None


def test_checked_sidecar_spec_override_still_checks_sidecar(tmp_path):
    other = SPEC.with_(classes=("a", "b"))
    with pytest.raises(TLError, match="rebuild"):
        checked_sidecar(_engine(tmp_path), spec=other, tensorrt_version="9.9", compute_capability="8.7")
    assert checked_sidecar(_engine(tmp_path), spec=other, tensorrt_version="10.3.0", compute_capability="8.7")[0] == other


def test_broken_sidecar(tmp_path):
    plan = _engine(tmp_path)
    sidecar_path(plan).write_text('{"spec": {"arch": "vgg16"}}')
    with pytest.raises(TLError, match="not a valid tl engine sidecar|invalid model spec"):
        checked_sidecar(plan, spec=None, tensorrt_version="10.3.0", compute_capability="8.7")


def test_cuda_call_unwraps_and_raises():
    class Err:  # stands in for cudart's enum: only equality and .name are used
        def __init__(self, name):
            self.name = name

        def __eq__(self, other):
            return self.name == other.name

        def __ne__(self, other):
            return not self == other

    class FakeCudart:
        class cudaError_t:
            cudaSuccess = Err("cudaSuccess")

    ok = FakeCudart.cudaError_t.cudaSuccess
    assert cuda_call(FakeCudart, (ok,)) is None
    assert cuda_call(FakeCudart, (ok, 7)) == 7
    assert cuda_call(FakeCudart, (ok, 3, 4)) == (3, 4)
    with pytest.raises(RuntimeError, match="cudaErrorMemoryAllocation"):
        cuda_call(FakeCudart, (Err("cudaErrorMemoryAllocation"), None))


def _has_trt_gpu() -> bool:
    from tl.runtime.gpu import tensorrt_usable

    return tensorrt_usable(0)


needs_trt = pytest.mark.skipif(not _has_trt_gpu(), reason="needs TensorRT, cuda-python and an NVIDIA GPU")


def test_engine_without_tensorrt_is_a_clear_error(tmp_path):
    skip_where_installed("tensorrt", "TensorRT is installed; this checks the message where it is not")
    with pytest.raises(TLError, match="TensorRT is not installed"):
        Classifier.load(_engine(tmp_path))


@pytest.mark.trt
@needs_trt
def test_engine_predicts_like_onnx(make_onnx, tmp_path):
    """Build a real FP16 engine with tl's exporter, run it, compare with ONNX Runtime FP32."""
    import shutil

    from tl.export.trt import TrtOptions, build_engine

    onnx_path, _ = make_onnx()
    ref = Classifier.load(onnx_path, providers="cpu")
    shutil.copy(onnx_path, tmp_path / "model.onnx")
    from tl.export.fp16 import convert_fp16

    convert_fp16(tmp_path / "model.onnx", tmp_path / "model.fp16.onnx")
    plan, _ = build_engine(out_dir=tmp_path, spec=ref.spec, precision="fp16", options=TrtOptions(max_batch=8))
    with Classifier.load(plan) as eng:
        assert eng.backend_name == "tensorrt" and eng.max_batch == 8 and eng.precision == "fp16"
        x = np.random.default_rng(0).standard_normal((19, 3, 64, 64)).astype(np.float32)  # 8 + 8 + 3
        got, want = eng.predict_logits(x), ref.predict_logits(x)
        assert np.abs(got - want).max() < 0.05 * max(1.0, np.abs(want).max())
        times = eng.device_compute_ms(x[:4], 5)
        assert len(times) == 5 and all(t > 0 for t in times)


@pytest.mark.trt
@needs_trt
def test_real_mismatch_is_refused(tmp_path):
    """On a real GPU: a sidecar claiming another GPU stops before TensorRT deserializes."""
    plan = _engine(tmp_path, cc="1.0")
    with pytest.raises(TLError, match="rebuild"):
        Classifier.load(plan)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8, np.int32])
def test_host_array_views_raw_memory_of_any_dtype(dtype):
    """Engines with FP16 I/O: the pinned-buffer view must work where ctypes has no such type."""
    import ctypes

    from tl.runtime.backends.tensorrt import host_array

    values = np.arange(5).astype(dtype)
    mem = ctypes.create_string_buffer(values.nbytes)
    view = host_array(ctypes.addressof(mem), 5, dtype)
    view[:] = values
    assert view.dtype == np.dtype(dtype) and view.shape == (5,)
    assert np.frombuffer(mem.raw, dtype=dtype).tolist() == values.tolist()
