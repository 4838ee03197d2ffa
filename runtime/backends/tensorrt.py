"""TensorRT backend for serialized engines (.plan/.engine), TensorRT 10.x and 11.x.

Written after NVIDIA's samples/python/common_runtime.py: the name-based tensor API
(num_io_tensors, get_tensor_name/mode/dtype), set_input_shape within optimization
profile 0, set_tensor_address + execute_async_v3 on one non-default stream, pinned host
buffers and device memory through cuda-python's runtime API (cudart).

Before TensorRT ever sees the plan, the sidecar's build record is compared with the
running TensorRT version and the GPU's compute capability: a mismatched plan otherwise
fails with an opaque log line and a None engine.

CUDA keeps the current device per host thread, so every call that launches work first makes
the backend's GPU current on the calling thread (a server's batcher thread, an application's
workers). One execution context and one set of pinned buffers serve every call: ``run`` is not
re-entrant, and ``concurrent_run = False`` tells Classifier to serialise the calls.
"""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path

import numpy as np

from tl.runtime.artifact import precision_from_name
from tl.runtime.errors import TLError
from tl.runtime.gpu import cuda_call, cuda_device, ensure_device, import_cudart, import_tensorrt, trt_create, use_device
from tl.runtime.sidecar import BuildRecord, check_compatible, read_sidecar, sidecar_path
from tl.runtime.spec import ModelSpec, require_regular_file

RUN_ONNX_INSTEAD = ("so .plan/.engine files cannot run here (on a Jetson it comes with JetPack); "
                    "run the .onnx export instead")


def checked_sidecar(engine: Path, *, spec: ModelSpec | str | Path | None, tensorrt_version: str,
              compute_capability: str) -> tuple[ModelSpec, BuildRecord | None]:
    """Sidecar -> (spec, build record) after the compatibility check; pure logic, no TensorRT.

    An engine without a sidecar runs only when the caller supplies ``spec``; then nothing
    can be checked and TensorRT's own deserialization is the last line.
    """
    if isinstance(spec, (str, Path)):
        spec = ModelSpec.load(spec)
    if not sidecar_path(engine).is_file() and spec is not None:
        return spec, None
    side_spec, build = read_sidecar(engine)
    check_compatible(build, tensorrt_version=tensorrt_version, compute_capability=compute_capability, engine=engine)
    return (spec or side_spec), build


def host_array(address: int, count: int, dtype) -> np.ndarray:
    """``count`` items of ``dtype`` over host memory at ``address``, through a byte view (any dtype)."""
    dtype = np.dtype(dtype)
    raw = (ctypes.c_byte * (count * dtype.itemsize)).from_address(address)
    return np.frombuffer(raw, dtype=np.uint8).view(dtype)


class _Buffer:
    """Pinned host array + device allocation of the same size (common_runtime.HostDeviceMem).

    The host array is a byte view cast to ``dtype``, as NVIDIA's common_runtime.py does:
    ctypes has no float16 / bfloat16 type, so ``np.ctypeslib.as_ctypes_type`` cannot be used.
    """

    def __init__(self, cudart, count: int, dtype: np.dtype):
        self.cudart = cudart
        self.dtype = np.dtype(dtype)
        count = max(1, int(count))
        self.nbytes = count * self.dtype.itemsize
        self.device = None
        mb = f"{self.nbytes / 1e6:.3g} MB"
        self.host_ptr = cuda_call(cudart, cudart.cudaMallocHost(self.nbytes),
                                  f"allocating {mb} of pinned host memory (cudaMallocHost)")
        self.host = host_array(int(self.host_ptr), count, self.dtype)
        try:
            self.device = cuda_call(cudart, cudart.cudaMalloc(self.nbytes), f"allocating {mb} on the GPU (cudaMalloc)")
        except Exception:
            cudart.cudaFreeHost(self.host_ptr)
            raise

    def free(self) -> None:
        if self.device is not None:
            self.cudart.cudaFree(self.device)
            self.cudart.cudaFreeHost(self.host_ptr)
            self.device = None


class TensorRTBackend:
    name = "tensorrt"
    concurrent_run = False  # one execution context and one set of pinned buffers

    def __init__(self, path: Path, *, spec: ModelSpec | None = None, providers=None, device: int = 0, **_ignored):
        self.path = Path(path)
        self._buffers: list[_Buffer] = []
        self.stream = None
        require_regular_file(self.path, "model")
        if providers not in (None, "auto", ["auto"]):
            raise TLError("providers apply to ONNX Runtime only; a TensorRT engine always runs on TensorRT")
        if not sidecar_path(self.path).is_file() and spec is None:
            read_sidecar(self.path)  # raises the "no sidecar ... pass spec=" error before any GPU work
        trt = import_tensorrt(RUN_ONNX_INSTEAD)
        cudart = import_cudart()
        self.trt, self.cudart, self.device = trt, cudart, int(device)
        gpu = cuda_device(cudart, self.device)
        cc = gpu.compute_capability
        self.spec, self.build = checked_sidecar(self.path, spec=spec, tensorrt_version=trt.__version__, compute_capability=cc)
        self.gpu_name = gpu.name
        self.precision = self.build.precision if self.build else precision_from_name(self.path)
        self.providers = [f"TensorRT {trt.__version__} on GPU {self.device} ({gpu.name or 'cc ' + cc})"]

        self._deserialize()
        self._bind()

    def _deserialize(self) -> None:
        trt, cudart = self.trt, self.cudart
        use_device(cudart, self.device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt_create(trt.Runtime, self.logger, what="runtime")
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise TLError(f"{self.path}: TensorRT could not deserialize the engine (see the log above); "
                          "rebuild it on this device with 'tl export CHECKPOINT --trt'")
        self.context = self.engine.create_execution_context()
        if self.context is None:  # TensorRT returns none when the activation memory cannot be allocated
            raise TLError(f"{self.path}: TensorRT could not create an execution context: GPU {self.device} is out of "
                          "memory for the engine's activations; close other programs using the GPU (nvidia-smi, or "
                          "tegrastats on a Jetson) or rebuild the engine with a smaller --max-batch")

    def _bind(self) -> None:
        """Find the I/O tensors and the batch range, allocate buffers at the profile's max, set addresses."""
        trt, cudart = self.trt, self.cudart
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or not outs:
            raise TLError(f"{self.path}: expected one image input and a logits output, found {ins} -> {outs}")
        self.input_name = ins[0]
        self.output_name = self.spec.output.name if self.spec.output.name in outs else outs[0]

        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        if any(d < 0 for d in shape):
            lo, _opt, hi = (tuple(s) for s in self.engine.get_tensor_profile_shape(self.input_name, 0))
        else:
            lo = hi = shape
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.item_shape = tuple(int(d) for d in hi[1:])

        self.in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        self.context.set_input_shape(self.input_name, hi)
        out_max = tuple(self.context.get_tensor_shape(self.output_name))
        self.stream = cuda_call(cudart, cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
                                "creating a CUDA stream (cudaStreamCreateWithFlags)")
        self.inp = _Buffer(cudart, int(np.prod(hi)), self.in_dtype)
        self._buffers = [self.inp]  # freed by close() even when the next allocation fails
        self.out = _Buffer(cudart, int(np.prod(out_max)), self.out_dtype)
        self._buffers.append(self.out)
        self.context.set_tensor_address(self.input_name, int(self.inp.device))
        self.context.set_tensor_address(self.output_name, int(self.out.device))
        # Engines with several outputs: give the others scratch memory so enqueue succeeds.
        for extra in outs:
            if extra != self.output_name:
                buf = _Buffer(cudart, int(np.prod(tuple(self.context.get_tensor_shape(extra)))),
                              np.dtype(trt.nptype(self.engine.get_tensor_dtype(extra))))
                self._buffers.append(buf)
                self.context.set_tensor_address(extra, int(buf.device))

    # -- inference ------------------------------------------------------------------
    def _set_batch(self, batch: np.ndarray) -> tuple[int, ...]:
        n = batch.shape[0]
        if not self.min_batch <= n <= self.max_batch:
            raise TLError(f"batch of {n} is outside the engine's profile [{self.min_batch}, {self.max_batch}]")
        if tuple(batch.shape[1:]) != self.item_shape:
            raise TLError(f"input shape {tuple(batch.shape)} does not fit the engine's (N, {', '.join(map(str, self.item_shape))})")
        if not self.context.set_input_shape(self.input_name, tuple(batch.shape)):
            raise TLError(f"TensorRT refused input shape {tuple(batch.shape)}")
        return tuple(self.context.get_tensor_shape(self.output_name))

    def _upload(self, batch: np.ndarray) -> None:
        flat = np.ascontiguousarray(batch, dtype=self.in_dtype).reshape(-1)
        self.inp.host[: flat.size] = flat
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        copy = self.cudart.cudaMemcpyAsync(self.inp.device, self.inp.host_ptr, flat.nbytes, kind, self.stream)
        cuda_call(self.cudart, copy, "copying the batch to the GPU (cudaMemcpyAsync)")

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")

    def run(self, batch: np.ndarray) -> np.ndarray:
        ensure_device(self.cudart, self.device)
        out_shape = self._set_batch(batch)
        self._upload(batch)
        self._execute()
        count = int(np.prod(out_shape))
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        nbytes = count * self.out_dtype.itemsize
        copy = self.cudart.cudaMemcpyAsync(self.out.host_ptr, self.out.device, nbytes, kind, self.stream)
        cuda_call(self.cudart, copy, "copying the logits from the GPU (cudaMemcpyAsync)")
        cuda_call(self.cudart, self.cudart.cudaStreamSynchronize(self.stream),
                  "running the engine (cudaStreamSynchronize)")
        return self.out.host[:count].reshape(out_shape).astype(np.float32)  # copy: the pinned buffer is reused

    def device_compute_ms(self, batch: np.ndarray, iters: int) -> list[float] | None:
        """Device time of each execute_async_v3, enqueued back to back after a warm-up.

        The same definition as the torch rows (tl.benchmarks.timing.cuda_event_timer):
        CUDA events around each call on one stream, no host sync between calls, input
        already on the device.
        """
        cudart = self.cudart
        ensure_device(cudart, self.device)
        self._set_batch(batch)
        self._upload(batch)
        self._execute()  # warm-up
        n = int(iters)
        events = [cuda_call(cudart, cudart.cudaEventCreate()) for _ in range(2 * n)]
        try:
            for i in range(n):
                cuda_call(cudart, cudart.cudaEventRecord(events[2 * i], self.stream))
                self._execute()
                cuda_call(cudart, cudart.cudaEventRecord(events[2 * i + 1], self.stream))
            cuda_call(cudart, cudart.cudaStreamSynchronize(self.stream))
            return [float(cuda_call(cudart, cudart.cudaEventElapsedTime(events[2 * i], events[2 * i + 1])))
                    for i in range(n)]
        finally:
            for e in events:
                cudart.cudaEventDestroy(e)

    def close(self) -> None:
        if self._buffers or self.stream is not None:
            with contextlib.suppress(Exception):  # free on the GPU that holds them, from any thread
                ensure_device(self.cudart, self.device)
        for buf in self._buffers:
            buf.free()
        self._buffers = []
        if self.stream is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        for attr in ("context", "engine", "runtime"):
            if hasattr(self, attr):
                setattr(self, attr, None)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
