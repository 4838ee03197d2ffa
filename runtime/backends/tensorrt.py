"""TensorRT backend for serialized engines (.plan/.engine), TensorRT 10.x and 11.x.

Written after NVIDIA's samples/python/common_runtime.py: the name-based tensor API
(num_io_tensors, get_tensor_name/mode/dtype), set_input_shape within optimization
profile 0, set_tensor_address + execute_async_v3 on one non-default stream, pinned host
buffers and device memory through cuda-python's runtime API (cudart).

Before TensorRT ever sees the plan, the sidecar's build record is compared with the
running TensorRT version and the GPU's compute capability: a mismatched plan otherwise
fails with an opaque log line and a None engine.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from tl.runtime.errors import TLError
from tl.runtime.sidecar import BuildRecord, check_compatible, read_sidecar, sidecar_path
from tl.runtime.spec import ModelSpec


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TLError(
            "TensorRT is not installed, so .plan/.engine files cannot run here; install it with "
            "pip install 'tl[gpu]' (or JetPack on Jetson), or run the .onnx export instead"
        ) from e
    return trt


def import_cudart():
    """cuda-python's runtime API: cuda.bindings.runtime (12.6+), else the older cuda.cudart."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]
        except ImportError as e:
            raise TLError("cuda-python is not installed (the TensorRT backend needs it): pip install 'tl[gpu]'") from e
    return cudart


def cuda_call(cudart, result):
    """cudart calls return (err, *values); raise on error, return the value(s)."""
    err, rest = result[0], result[1:]
    if err != cudart.cudaError_t.cudaSuccess:
        name = getattr(err, "name", str(err))
        raise RuntimeError(f"CUDA runtime error {name}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


def gpu_compute_capability(cudart, device: int) -> tuple[str, str]:
    """(compute capability "8.7", GPU name) of ``device``; TLError when there is no GPU."""
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count == 0:
        raise TLError("no CUDA GPU is visible (TensorRT engines need one); run the .onnx export on CPU instead")
    if not 0 <= device < count:
        raise TLError(f"GPU {device} does not exist (this machine has {count}); pass a device between 0 and {count - 1}")
    attr = cudart.cudaDeviceAttr
    major = cuda_call(cudart, cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device))
    minor = cuda_call(cudart, cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device))
    name = ""
    try:
        props = cuda_call(cudart, cudart.cudaGetDeviceProperties(device))
        raw = props.name
        name = raw.decode(errors="replace").rstrip("\x00") if isinstance(raw, bytes) else str(raw)
    except Exception:  # the name is cosmetic; never fail on it
        pass
    return f"{major}.{minor}", name


def preflight(engine: Path, *, spec: ModelSpec | str | Path | None, tensorrt_version: str,
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


class _Buffer:
    """Pinned host array + device allocation of the same size (common_runtime.HostDeviceMem)."""

    def __init__(self, cudart, count: int, dtype: np.dtype):
        self.cudart = cudart
        self.dtype = np.dtype(dtype)
        self.nbytes = max(1, int(count)) * self.dtype.itemsize
        self.host_ptr = cuda_call(cudart, cudart.cudaMallocHost(self.nbytes))
        ptr_type = ctypes.POINTER(np.ctypeslib.as_ctypes_type(self.dtype))
        self.host = np.ctypeslib.as_array(ctypes.cast(self.host_ptr, ptr_type), (max(1, int(count)),))
        self.device = cuda_call(cudart, cudart.cudaMalloc(self.nbytes))

    def free(self) -> None:
        if self.device is not None:
            self.cudart.cudaFree(self.device)
            self.cudart.cudaFreeHost(self.host_ptr)
            self.device = None


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, path: Path, *, spec: ModelSpec | None = None, providers=None, device: int = 0, **_ignored):
        self.path = Path(path)
        self._buffers: list[_Buffer] = []
        self.stream = None
        if not self.path.is_file():
            raise TLError(f"model not found: {self.path}")
        if providers not in (None, "auto", ["auto"]):
            raise TLError("providers apply to ONNX Runtime only; a TensorRT engine always runs on TensorRT")
        if not sidecar_path(self.path).is_file() and spec is None:
            read_sidecar(self.path)  # raises the "no sidecar ... pass spec=" error before any GPU work
        trt = import_tensorrt()
        cudart = import_cudart()
        self.trt, self.cudart, self.device = trt, cudart, int(device)
        cc, gpu = gpu_compute_capability(cudart, self.device)
        self.spec, self.build = preflight(self.path, spec=spec, tensorrt_version=trt.__version__, compute_capability=cc)
        self.gpu_name = gpu
        self.precision = self.build.precision if self.build else _precision_from_name(self.path)
        self.providers = [f"TensorRT {trt.__version__} on GPU {self.device} ({gpu or 'cc ' + cc})"]

        cuda_call(cudart, cudart.cudaSetDevice(self.device))
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise TLError(f"{self.path}: TensorRT could not deserialize the engine (see the log above); "
                          "rebuild it on this device with 'tl export CHECKPOINT --trt'")
        self.context = self.engine.create_execution_context()

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
        self.stream = cuda_call(cudart, cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
        self.inp = _Buffer(cudart, int(np.prod(hi)), self.in_dtype)
        self.out = _Buffer(cudart, int(np.prod(out_max)), self.out_dtype)
        self._buffers = [self.inp, self.out]
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
        cuda_call(self.cudart, self.cudart.cudaMemcpyAsync(self.inp.device, self.inp.host_ptr, flat.nbytes, kind, self.stream))

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")

    def run(self, batch: np.ndarray) -> np.ndarray:
        out_shape = self._set_batch(batch)
        self._upload(batch)
        self._execute()
        count = int(np.prod(out_shape))
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        nbytes = count * self.out_dtype.itemsize
        cuda_call(self.cudart, self.cudart.cudaMemcpyAsync(self.out.host_ptr, self.out.device, nbytes, kind, self.stream))
        cuda_call(self.cudart, self.cudart.cudaStreamSynchronize(self.stream))
        return self.out.host[:count].reshape(out_shape).astype(np.float32)  # copy: the pinned buffer is reused

    def device_compute_ms(self, batch: np.ndarray, iters: int) -> list[float] | None:
        """Device time of each execute_async_v3, enqueued back to back after a warm-up.

        The same definition as the torch rows (tl.benchmarks.timing.cuda_event_timer):
        CUDA events around each call on one stream, no host sync between calls, input
        already on the device.
        """
        cudart = self.cudart
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


def _precision_from_name(path: Path) -> str:
    name = path.name.lower()
    return "int8" if ".int8." in name else "fp16" if ".fp16." in name else "fp32"
