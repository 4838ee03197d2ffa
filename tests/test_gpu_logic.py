"""The GPU path's decisions that run without a GPU: CUDA error wording, cuda-python and TensorRT
preflight, TensorRT object creation, and the ONNX Runtime TensorRT EP options."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from tl.runtime.errors import TLError
from tl.runtime.gpu import (
    CUDA_PYTHON_MISSING, explain_cuda_error, find_gpu, import_cudart, tensorrt_usable, trt_create,
)
from tl.runtime.spec import ModelSpec

HAS_CUDA_PYTHON = importlib.util.find_spec("cuda") is not None


def test_insufficient_driver_is_named_with_its_fix():
    text = explain_cuda_error("cudaErrorInsufficientDriver", "looking for a CUDA GPU (cudaGetDeviceCount)")
    assert "cudaErrorInsufficientDriver" in text and "cudaGetDeviceCount" in text
    assert "580" in text and "525" in text and "gpu-cu12" in text
    assert "no CUDA GPU is visible" in explain_cuda_error("cudaErrorNoDevice")
    other = explain_cuda_error("cudaErrorSomethingNew")  # an error tl has no hint for still names itself
    assert "cudaErrorSomethingNew" in other and "nvidia-smi" in other


@pytest.mark.skipif(HAS_CUDA_PYTHON, reason="cuda-python is installed here")
def test_missing_cuda_python_says_what_to_install():
    with pytest.raises(TLError) as e:
        import_cudart()
    assert str(e.value) == CUDA_PYTHON_MISSING and "tl[gpu-cu12]" in str(e.value) and "tl[gpu-cu13]" in str(e.value)
    assert not tensorrt_usable(0)


@pytest.mark.skipif(not HAS_CUDA_PYTHON, reason="needs cuda-python (torch's CUDA wheels bring cuda-bindings)")
def test_no_driver_is_said_plainly_by_the_real_cuda_runtime():
    """Without a driver CUDA answers cudaErrorInsufficientDriver; tl must not tell the user to update it."""
    import shutil

    from tl.runtime.gpu import cuda_device

    if shutil.which("nvidia-smi"):
        pytest.skip("an NVIDIA driver is installed here")
    with pytest.raises(TLError) as e:
        cuda_device(import_cudart(), 0)
    assert "no NVIDIA driver here" in str(e.value) and "cudaErrorInsufficientDriver" in str(e.value)
    assert not tensorrt_usable(0) and find_gpu(0) is None


def test_find_gpu_without_a_gpu_is_none():
    if find_gpu(0) is not None:
        pytest.skip("a GPU is visible here")
    assert find_gpu(0) is None and find_gpu(5) is None


def test_trt_create_turns_a_nullptr_factory_into_a_clear_error():
    def nullptr(logger):  # what tensorrt's pybind11 factories raise when CUDA cannot start
        raise TypeError("pybind11::init(): factory function returned nullptr")

    with pytest.raises(TLError, match="could not create its builder: CUDA did not start"):
        trt_create(nullptr, object(), what="builder")
    with pytest.raises(TLError, match="could not create its runtime"):
        trt_create(lambda logger: None, object(), what="runtime")
    with pytest.raises(TypeError, match="takes 0 positional"):  # a real bug is not disguised
        trt_create(lambda: None, object(), what="runtime")
    assert trt_create(lambda logger: ("made", logger), 7, what="runtime") == ("made", 7)


SPEC = ModelSpec.create(arch="resnet18", classes=["a", "b"], image_size=32)


def test_trt_ep_cache_is_keyed_by_the_weights_and_fp16_only_for_fp16(make_onnx, tmp_path):
    """A retrained model.onnx (same names, new weights) must not load the previous model's engine."""
    import onnx
    from onnx import numpy_helper

    from tl.runtime.backends.onnxruntime import OnnxRuntimeBackend, trt_ep_options

    first, _ = make_onnx()
    proto = onnx.load(str(first))
    w = proto.graph.initializer[0]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) + np.float32(0.5), w.name))
    retrained = tmp_path / "retrained" / first.name
    retrained.parent.mkdir()
    onnx.save(proto, str(retrained))
    caches = []
    for path in (first, retrained):
        backend = OnnxRuntimeBackend(path, providers="cpu")
        caches.append(backend._trt_options(tmp_path / "cache", 16)["trt_engine_cache_path"])
    assert caches[0] != caches[1] and all((tmp_path / "cache").iterdir())
    fp32 = trt_ep_options(SPEC, precision="fp32", profile_max=16, device=0, cache=tmp_path / "c")
    fp16 = trt_ep_options(SPEC, precision="fp16", profile_max=16, device=0, cache=tmp_path / "c")
    int8 = trt_ep_options(SPEC, precision="int8", profile_max=16, device=0, cache=tmp_path / "c")
    assert not fp32["trt_fp16_enable"] and not fp32["trt_int8_enable"]  # fp32 runs in FP32, as reported
    assert fp16["trt_fp16_enable"] and not fp16["trt_int8_enable"]
    assert int8["trt_int8_enable"] and int8["trt_fp16_enable"]
    assert fp32["trt_profile_max_shapes"] == "input:16x3x32x32" and fp32["trt_profile_opt_shapes"] == "input:8x3x32x32"
