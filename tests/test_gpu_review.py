"""The GPU path's review fixes, tested where no GPU exists.

ONNX Runtime sessions and bench runs are real; the CUDA runtime and TensorRT are replaced by
small stand-ins only to drive tl's logic around them (which device is current on which
thread, what a failed call becomes), as tests/test_gpu_logic.py does.
"""

from __future__ import annotations

import ctypes
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tl.runtime import Classifier, TLError
from tl.runtime.spec import ModelSpec

SPEC = ModelSpec.create(arch="resnet18", classes=["a", "b"], image_size=32)


# -- stand-ins for cuda-python's runtime API and for tensorrt ------------------------------


class FakeCudart:
    """cudart's call convention ((err, *values)) with CUDA's rule that the current device is per host thread.

    ``fail`` maps a call name to the error it returns.
    """

    class cudaError_t:
        cudaSuccess = "cudaSuccess"

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    cudaStreamNonBlocking = 1

    def __init__(self, fail: dict[str, str] | None = None):
        self.fail = fail or {}
        self.local = threading.local()
        self.calls: list[tuple[str, str, tuple]] = []  # (thread, call, args)
        self._host: list = []

    def _ret(self, call: str, *values, args: tuple = ()):
        self.calls.append((threading.current_thread().name, call, args))
        if call in self.fail:
            return (self.fail[call],) + tuple(None for _ in values)
        return ("cudaSuccess", *values)

    def current(self) -> int:
        return getattr(self.local, "device", 0)  # a thread that never set one runs on GPU 0

    def cudaGetDevice(self):
        return self._ret("cudaGetDevice", self.current())

    def cudaSetDevice(self, index):
        result = self._ret("cudaSetDevice", args=(index,))
        if result[0] == "cudaSuccess":
            self.local.device = index
        return result

    def cudaFree(self, ptr):
        return self._ret("cudaFree", args=(ptr,))

    def cudaMallocHost(self, nbytes):
        mem = ctypes.create_string_buffer(nbytes)
        self._host.append(mem)
        return self._ret("cudaMallocHost", ctypes.addressof(mem))

    def cudaFreeHost(self, ptr):
        return self._ret("cudaFreeHost", args=(ptr,))

    def cudaMalloc(self, nbytes):
        return self._ret("cudaMalloc", 4096 + nbytes)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        return self._ret("cudaMemcpyAsync")

    def cudaStreamSynchronize(self, stream):
        return self._ret("cudaStreamSynchronize")

    def cudaStreamCreateWithFlags(self, flags):
        return self._ret("cudaStreamCreateWithFlags", 77)

    def cudaStreamDestroy(self, stream):
        return self._ret("cudaStreamDestroy")

    def set_devices(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for thread, call, args in self.calls:
            if call == "cudaSetDevice":
                out.setdefault(thread, []).append(args[0])
        return out


class FakeContext:
    """An execution context that records the device current on the thread that enqueues it."""

    def __init__(self, cudart: FakeCudart):
        self.cudart, self.devices, self.shape = cudart, [], None

    def set_input_shape(self, name, shape):
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return (self.shape[0], 2)

    def execute_async_v3(self, stream):
        self.devices.append(self.cudart.current())
        return True


def fake_tensorrt(context):
    engine = SimpleNamespace(create_execution_context=lambda: context)
    runtime = SimpleNamespace(deserialize_cuda_engine=lambda plan: engine)
    return SimpleNamespace(__version__="10.3.0", Logger=SimpleNamespace(WARNING=2, __call__=None),
                           Runtime=lambda logger: runtime)


def bare_trt_backend(tmp_path: Path, cudart: FakeCudart, *, device: int, context=None):
    """A TensorRTBackend with the engine replaced by stand-ins: the state __init__ would leave."""
    from tl.runtime.backends.tensorrt import TensorRTBackend, _Buffer

    backend = object.__new__(TensorRTBackend)
    backend.path = tmp_path / "model.fp16.plan"
    backend.path.write_bytes(b"plan")
    backend.trt, backend.cudart, backend.device = fake_tensorrt(context), cudart, device
    backend.trt.Logger = lambda level: SimpleNamespace(level=level)
    backend.trt.Logger.WARNING = 2
    backend._buffers, backend.stream = [], None
    return backend, _Buffer


def runnable_trt_backend(tmp_path, cudart, device):
    backend, buffer = bare_trt_backend(tmp_path, cudart, device=device)
    backend.context = FakeContext(cudart)
    backend.min_batch, backend.max_batch, backend.item_shape = 1, 4, (3, 2, 2)
    backend.input_name, backend.output_name = "input", "logits"
    backend.in_dtype = backend.out_dtype = np.dtype(np.float32)
    backend.stream = 77
    backend.inp, backend.out = buffer(cudart, 4 * 12, np.float32), buffer(cudart, 8, np.float32)
    backend._buffers = [backend.inp, backend.out]
    return backend


# -- CUDA failures are one clear error, with the hint that fits ---------------------------------


def test_a_busy_gpu_is_named_when_its_context_is_created(tmp_path):
    """cudaSetDevice alone creates no context on older CUDA; the busy/exclusive-process hint needs one."""
    from tl.runtime.gpu import use_device

    busy = FakeCudart(fail={"cudaFree": "cudaErrorDevicesUnavailable"})
    with pytest.raises(TLError, match="GPU 1.*cudaErrorDevicesUnavailable: the GPU is busy or in exclusive-process"):
        use_device(busy, 1)
    broken = FakeCudart(fail={"cudaSetDevice": "cudaErrorInitializationError"})
    with pytest.raises(TLError, match="cudaSetDevice.*CUDA could not initialise"):
        use_device(broken, 0)
    # The engine's loader creates the context before TensorRT sees the plan.
    backend, _ = bare_trt_backend(tmp_path, FakeCudart(fail={"cudaFree": "cudaErrorDevicesUnavailable"}), device=0,
                                  context=object())
    with pytest.raises(TLError, match="busy or in exclusive-process"):
        backend._deserialize()


def test_allocation_failures_are_tl_errors_that_say_out_of_memory():
    from tl.runtime.backends.tensorrt import _Buffer

    cudart = FakeCudart(fail={"cudaMalloc": "cudaErrorMemoryAllocation"})
    with pytest.raises(TLError, match=r"allocating 4\.19 MB on the GPU \(cudaMalloc\).*out of memory"):
        _Buffer(cudart, 1 << 20, np.float32)
    assert [c for _, c, _ in cudart.calls] == ["cudaMallocHost", "cudaMalloc", "cudaFreeHost"]  # nothing leaked
    with pytest.raises(TLError, match="pinned host memory.*out of memory"):
        _Buffer(FakeCudart(fail={"cudaMallocHost": "cudaErrorMemoryAllocation"}), 8, np.float32)


def test_no_execution_context_is_an_out_of_memory_error(tmp_path):
    """create_execution_context() returns None when the activations do not fit (a Jetson with little free memory)."""
    backend, _ = bare_trt_backend(tmp_path, FakeCudart(), device=0, context=None)
    with pytest.raises(TLError, match="could not create an execution context: GPU 0 is out of memory.*--max-batch"):
        backend._deserialize()


# -- the device is set on every thread that launches work ---------------------------------------


def test_engine_runs_on_its_gpu_from_any_thread(tmp_path):
    """tl serve runs the engine on its batcher thread, where no device was ever set (CUDA's is per thread)."""
    cudart = FakeCudart()
    backend = runnable_trt_backend(tmp_path, cudart, device=1)
    x = np.zeros((2, 3, 2, 2), np.float32)
    errors: list = []

    def work():
        try:
            backend.run(x)
            backend.run(x)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, name=f"worker-{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert backend.context.devices == [1, 1, 1, 1]
    assert cudart.set_devices() == {"worker-0": [1], "worker-1": [1]}  # once per thread, not per call


def test_build_engine_builds_on_the_gpu_it_records(tmp_path, monkeypatch):
    """--device 2: the builder must run with GPU 2 current, the GPU the sidecar names."""
    import tl.export.trt as trt_mod
    from tl.runtime.gpu import GpuDevice

    class Stop(Exception):
        pass

    cudart, seen = FakeCudart(), []

    def builder(logger):
        seen.append(cudart.current())
        raise Stop

    fake = SimpleNamespace(
        __version__="10.3.0", Logger=lambda level: None,
        NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=0),
        BuilderFlag=SimpleNamespace(FP16=0, INT8=1, TF32=6), IBuilderConfig=type("C", (), {"builder_optimization_level": 3}),
        Builder=builder,
    )
    fake.Logger.WARNING = 2
    monkeypatch.setattr(trt_mod, "import_tensorrt", lambda *a: fake)
    monkeypatch.setattr(trt_mod, "import_cudart", lambda: cudart)
    monkeypatch.setattr(trt_mod, "find_gpu", lambda index: GpuDevice(index, "GPU", "8.9"))
    (tmp_path / "model.fp16.onnx").write_bytes(b"onnx")
    with pytest.raises(Stop):
        trt_mod.build_engine(out_dir=tmp_path, spec=SPEC, precision="fp16", device=2)
    assert seen == [2]
    assert ("MainThread", "cudaFree", (0,)) in cudart.calls  # its context created before the build


# -- TF32 ------------------------------------------------------------------------------------


class _Config:
    def __init__(self):
        self.set, self.cleared = [], []

    def set_memory_pool_limit(self, pool, size):
        pass

    def set_flag(self, flag):
        self.set.append(flag)

    def clear_flag(self, flag):
        self.cleared.append(flag)

    def add_optimization_profile(self, profile):
        pass


def test_tensorrt_tf32_is_cleared_only_for_an_fp32_route():
    from tl.export.trt import Route, TrtFeatures, TrtOptions, _config, choose_route, profile_shapes, tf32_allowed

    trt = SimpleNamespace(MemoryPoolType=SimpleNamespace(WORKSPACE=0), BuilderFlag=SimpleNamespace(FP16=0, INT8=1, TF32=6))
    builder = SimpleNamespace(create_builder_config=_Config,
                              create_optimization_profile=lambda: SimpleNamespace(set_shape=lambda *a, **k: None))
    network = SimpleNamespace(get_input=lambda i: SimpleNamespace(name="input"))
    features = TrtFeatures(version="10.3.0", strongly_typed=True, fp16_flag=True, int8_flag=True)
    shapes = profile_shapes(SPEC, TrtOptions())
    fp16 = _config(trt, builder, network, choose_route("fp16", features), TrtOptions(), features, shapes)
    assert fp16.cleared == []  # TensorRT's default: FP32 layers of an FP16 engine may use TF32
    fp32_route = Route("fp32", "model.onnx", False)
    fp32 = _config(trt, builder, network, fp32_route, TrtOptions(), features, shapes)
    assert fp32.cleared == [6] and not tf32_allowed(fp32_route)


def test_ort_cuda_runs_fp32_files_without_tf32(make_onnx, tmp_path):
    """The FP32 parity check (parity_providers: cuda, cpu) must measure FP32, not ORT's default TF32."""
    from tl.runtime.backends.onnxruntime import CPU_EP, CUDA_EP, TRT_EP, cuda_ep_options, resolve_providers, runs_as

    path, _ = make_onnx(image_size=32)
    clf = Classifier.load(path, providers="cpu")
    assert clf.precision == "fp32"
    on_a_gpu_box = resolve_providers(["cuda", "cpu"], [TRT_EP, CUDA_EP, CPU_EP])  # what parity_providers() asks for there
    assert clf.backend.provider_list(on_a_gpu_box) == [(CUDA_EP, {"device_id": 0, "use_tf32": 0}), CPU_EP]
    assert cuda_ep_options(precision="fp16", device=1) == {"device_id": 1, "use_tf32": 1}
    # The TensorRT EP has no TF32 switch: an FP32 file there says what runs.
    assert runs_as("fp32", TRT_EP) == "tf32" and runs_as("fp16", TRT_EP) == "fp16" and runs_as("fp32", CUDA_EP) == "fp32"


# -- ONNX Runtime providers: explicit, no fallback, stdout clean ---------------------------------


@pytest.mark.parametrize("old_onnxruntime", [False, True])
def test_a_provider_that_fails_is_an_error_not_a_fallback_banner(make_onnx, capfd, monkeypatch, old_onnxruntime):
    """ONNX Runtime's own fallback prints an 'EP Error' banner on stdout and retries without the options."""
    import onnxruntime as ort

    from tl.runtime.backends import onnxruntime as ortb

    if old_onnxruntime:  # an InferenceSession without enable_fallback: the banner is kept off stdout and refused
        monkeypatch.setattr(ortb, "_fallback_switch", lambda: {})
    path, _ = make_onnx(image_size=32)
    capfd.readouterr()
    with pytest.raises(TLError, match="ONNX Runtime cannot load it on CPUExecutionProvider"):
        ortb.open_session(path, ort.SessionOptions(), [("CPUExecutionProvider", "not a dict")])  # fails to start
    out, _ = capfd.readouterr()
    assert out == ""
    session = ortb.open_session(path, ort.SessionOptions(), ["CPUExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"] and session._enable_fallback is False


def test_tensorrt_provider_is_never_chosen_implicitly():
    from tl.runtime.backends.onnxruntime import CPU_EP, CUDA_EP, TRT_EP, resolve_providers

    everything = [TRT_EP, CUDA_EP, CPU_EP]
    assert resolve_providers(None, everything) == [CUDA_EP, CPU_EP]
    assert resolve_providers("auto", [TRT_EP, CPU_EP]) == [CPU_EP]
    assert resolve_providers("trt,cuda,cpu", everything) == [TRT_EP, CUDA_EP, CPU_EP]  # opt-in still works


# -- Classifier from several threads ------------------------------------------------------------


class OneContextBackend:
    """Like the TensorRT backend: one staging buffer, so two calls at once would mix their batches."""

    name = "tensorrt"
    providers = ["one context"]
    precision = "fp32"
    min_batch, max_batch = 1, 4

    def __init__(self, spec, concurrent: bool):
        self.spec, self.path = spec, Path("model.plan")
        self.concurrent_run = concurrent
        self.inside = self.most = 0
        self.staging = None

    def run(self, batch):
        self.inside += 1
        self.most = max(self.most, self.inside)
        self.staging = batch.copy()
        time.sleep(0.002)  # the GPU at work: another call could overwrite the staging buffer now
        out = self.staging.reshape(len(batch), -1)[:, :2].copy()
        self.inside -= 1
        return out

    def device_compute_ms(self, batch, iters):
        return None

    def close(self):
        pass


@pytest.mark.parametrize("concurrent", [False, True])
def test_classifier_serialises_a_backend_with_one_context(concurrent):
    spec = ModelSpec.create(arch="resnet18", classes=["a", "b"], image_size=8)
    backend = OneContextBackend(spec, concurrent)
    clf = Classifier(backend)
    wrong: list = []

    def work(value):
        x = np.full((3, 3, 8, 8), value, np.float32)
        for _ in range(15):
            if not np.all(clf.predict_logits(x) == value):
                wrong.append(value)

    threads = [threading.Thread(target=work, args=(v,)) for v in (1.0, 2.0, 3.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if concurrent:  # a backend that says it is safe is not serialised
        assert backend.most > 1
    else:
        assert backend.most == 1 and not wrong


def test_backends_declare_whether_calls_may_overlap():
    from tl.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from tl.runtime.backends.tensorrt import TensorRTBackend

    assert OnnxRuntimeBackend.concurrent_run is True and TensorRTBackend.concurrent_run is False


# -- tl bench ------------------------------------------------------------------------------------


def test_closing_one_torch_row_leaves_the_shared_model_to_the_others(make_checkpoint):
    """On CUDA, closing a row moved the one shared model to the CPU and the next rows lost their agreement.
    Here the host is 'meta' so that leaving the device is visible on a CPU."""
    import torch

    from tl.benchmarks.runners import SharedModel, TorchRunner
    from tl.train.checkpoint import load_model

    model, spec, _ = load_model(make_checkpoint(image_size=32))
    shared = SharedModel(model)
    shared.HOST = "meta"
    shape = (3, 32, 32)
    first, second = (TorchRunner(model=shared, backend="eager", device="cpu", input_shape=shape) for _ in range(2))
    first.load()
    second.load()
    x = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
    want = first.infer(x)
    first.close()
    assert np.array_equal(second.infer(x), want)  # the weights are still on its device
    second.close()
    assert next(model.parameters()).device == torch.device("meta")  # released by the last holder


def test_every_torch_row_of_a_bench_keeps_its_agreement(make_checkpoint, monkeypatch):
    from tl.benchmarks import BenchOptions, run
    from tl.benchmarks.runners import SharedModel

    monkeypatch.setattr(SharedModel, "HOST", "meta")  # the CUDA bench's move off the device, visible on a CPU
    res = run(BenchOptions(targets=[make_checkpoint(image_size=32)], device="cpu", backends="eager,eager-bf16",
                           batch_sizes=[2], iters=2, warmup=0, images=4))
    rows = {r.backend: r for r in res.rows}
    if rows["eager-bf16"].status == "skipped":
        pytest.skip(f"bf16 autocast does not run on this CPU: {rows['eager-bf16'].error}")
    assert [r.status for r in res.rows] == ["ok", "ok"], res.rows
    assert all(r.agreement is not None and r.error is None for r in res.rows), res.rows


def test_a_batch_below_the_models_smallest_is_skipped_not_the_cell(make_onnx, tmp_path):
    """An engine built with --min-batch 4 (here: an ONNX file fixed at batch 4) in a bench at 1,4,8."""
    import onnx

    from tl.benchmarks import BenchOptions, run

    src, _ = make_onnx(image_size=32)
    proto = onnx.load(str(src))
    for value in (proto.graph.input[0], proto.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = 4
    folder = tmp_path / "export"
    folder.mkdir()
    onnx.save(proto, str(folder / "model.onnx"))
    res = run(BenchOptions(targets=[folder], device="cpu", backends="ort", batch_sizes=[1, 4, 8], iters=2, warmup=0,
                           images=4))
    by_batch = {r.batch: r for r in res.rows}
    assert by_batch[1].status == "skipped" and "below the smallest batch this model runs (4" in by_batch[1].error
    assert by_batch[1].mean_ms is None
    for b in (4, 8):
        assert by_batch[b].status == "ok" and by_batch[b].mean_ms and by_batch[b].throughput, by_batch[b]


def test_torch_rows_compute_fp32_without_tf32_on_cuda():
    """The eager FP32 row is every row's reference: on CUDA, TF32 is off while the shared model is held
    (convolutions run TF32 by default on Ampere and newer), and the earlier settings come back after."""
    import torch

    from tl.benchmarks.runners import SharedModel, exact_fp32

    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = (conv.fp32_precision, matmul.fp32_precision)
    restore = exact_fp32(torch)
    assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
    restore()
    assert (conv.fp32_precision, matmul.fp32_precision) == before

    class Placed(torch.nn.Linear):  # where the model was sent; a CPU box cannot place it on CUDA
        def to(self, device):
            self.placed = device
            return self

    shared = SharedModel(Placed(2, 2))
    shared.acquire("cuda")
    shared.acquire("cuda")
    shared.release("cuda")
    assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")  # one row still holds it
    shared.release("cuda")
    assert (conv.fp32_precision, matmul.fp32_precision) == before and shared.model.placed == "cpu"
    shared.acquire("cpu")
    assert (conv.fp32_precision, matmul.fp32_precision) == before  # CPU rows leave CUDA's settings alone
    shared.release("cpu")
