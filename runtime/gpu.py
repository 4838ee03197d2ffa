"""Every GPU, CUDA and TensorRT probe tl makes, torch-free: export, the runtime, bench and demo use these.

TensorRT and cuda-python are separate wheels (the tensorrt wheels do not depend on
cuda-python), their CUDA majors must match the driver, and a CUDA that cannot start
raises from odd places (``trt.Builder`` returns nullptr as a TypeError). Each failure
here ends in a TLError that names the cause and the fix.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable

from tl.runtime.errors import TLError

NOT_INSTALLED = "TensorRT is not installed (pip install 'tl[gpu]')"
NO_GPU = "building a TensorRT engine needs an NVIDIA GPU"
CUDA_PYTHON_MISSING = (
    "cuda-python is not installed, and tl runs TensorRT engines through it (the tensorrt wheels do not "
    "bring it): pip install 'tl[gpu-cu12]' for TensorRT built for CUDA 12, 'tl[gpu-cu13]' for CUDA 13"
)

# What a failed CUDA runtime call means, and what to do about it. The busy / exclusive-process and
# initialisation errors come only from a call that creates the device's context (use_device).
CUDA_ERROR_HINTS = {
    "cudaErrorNoDevice": "no CUDA GPU is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)",
    "cudaErrorInsufficientDriver": (
        "the NVIDIA driver is older than this cuda-python's CUDA needs (CUDA 13 needs driver 580 or newer, "
        "CUDA 12 needs 525 or newer): update the driver, or install the cuda-python and TensorRT of the CUDA "
        "major the driver supports (pip install 'tl[gpu-cu12]')"
    ),
    "cudaErrorSystemDriverMismatch": "the driver's kernel module and user library differ: reboot or reinstall the driver",
    "cudaErrorCompatNotSupportedOnDevice": "CUDA forward compatibility is not supported on this GPU: update the driver",
    "cudaErrorDevicesUnavailable": "the GPU is busy or in exclusive-process mode (see nvidia-smi)",
    "cudaErrorInitializationError": "CUDA could not initialise (driver not loaded, or no access to /dev/nvidia*)",
    "cudaErrorOperatingSystem": "the operating system refused CUDA (container without GPU access?)",
    "cudaErrorMemoryAllocation": (
        "out of memory (GPU memory, or pinned host memory on a Jetson, whose GPU shares it): close other programs "
        "using the GPU (nvidia-smi, or tegrastats on a Jetson) or use a smaller batch / engine --max-batch"
    ),
    "cudaErrorInvalidDevice": "no GPU with this index is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)",
}


def package_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# -- imports ----------------------------------------------------------------------------------


def import_tensorrt(purpose: str = ""):
    """The tensorrt module, or a TLError saying how to install it (``purpose`` adds the context)."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TLError(NOT_INSTALLED + (f"; {purpose}" if purpose else "")) from e
    return trt


def import_cudart():
    """cuda-python's runtime API: cuda.bindings.runtime (12.6+), else the older cuda.cudart."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]
        except ImportError as e:
            raise TLError(CUDA_PYTHON_MISSING) from e
    return cudart


def tensorrt_version() -> str | None:
    """The installed TensorRT's version without importing it (None when absent)."""
    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_lean"):
        v = package_version(dist)
        if v:
            return v
    try:
        import tensorrt as trt  # JetPack installs it as a system package, without dist metadata
    except ImportError:
        return None
    return str(trt.__version__)


def cuda_python_version() -> str | None:
    return package_version("cuda-python") or package_version("cuda-bindings")


# -- CUDA runtime calls -------------------------------------------------------------------------


def cuda_error_name(err: Any) -> str:
    return str(getattr(err, "name", err))


class CudaError(TLError, RuntimeError):
    """A CUDA runtime call failed: one line naming the call, the error and what to do (a RuntimeError too,
    for callers that catch CUDA failures as such)."""


def cuda_call(cudart, result, doing: str = "a CUDA runtime call"):
    """cudart calls return (err, *values); raise a CudaError on error, return the value(s).

    ``doing`` names the call for the message ("allocating 12 MB on the GPU (cudaMalloc)").
    """
    err, rest = result[0], result[1:]
    if err != cudart.cudaError_t.cudaSuccess:
        raise CudaError(explain_cuda_error(cuda_error_name(err), doing))
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


def explain_cuda_error(name: str, doing: str = "starting CUDA") -> str:
    """One sentence for a failed CUDA call: the error's name, what it means, what to do."""
    hint = CUDA_ERROR_HINTS.get(name, "see nvidia-smi, and check that the driver supports this cuda-python")
    return f"{doing} failed with {name}: {hint}"


def use_device(cudart, index: int) -> None:
    """Make GPU ``index`` current on the calling thread and create its context now.

    cudaFree(0) forces the context, so a GPU that is busy, in exclusive-process mode or cannot
    initialise is named here, with its hint, rather than by the first allocation or by TensorRT.
    """
    cuda_call(cudart, cudart.cudaSetDevice(int(index)), f"selecting GPU {index} (cudaSetDevice)")
    cuda_call(cudart, cudart.cudaFree(0), f"starting CUDA on GPU {index} (cudaFree(0) creates its context)")


def ensure_device(cudart, index: int) -> None:
    """GPU ``index`` current on the calling thread: CUDA keeps the current device per host thread, so every
    thread that launches work (a server's batcher, an application's workers) must set it; cudaGetDevice is a
    host-side query, so the check costs nothing on the thread that already has it."""
    if cuda_call(cudart, cudart.cudaGetDevice(), "reading the current GPU (cudaGetDevice)") != int(index):
        cuda_call(cudart, cudart.cudaSetDevice(int(index)), f"selecting GPU {index} (cudaSetDevice)")


@dataclass(frozen=True)
class GpuDevice:
    index: int
    name: str
    compute_capability: str  # "8.7"


def cuda_device(cudart, index: int = 0) -> GpuDevice:
    """Name and compute capability of GPU ``index`` through cuda-python; a TLError naming the CUDA error."""
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess:
        name = cuda_error_name(err)
        if name == "cudaErrorInsufficientDriver" and not shutil.which("nvidia-smi"):
            # CUDA reports a missing driver as an insufficient one.
            raise TLError(f"no NVIDIA driver here (cudaGetDeviceCount: {name}, no nvidia-smi): TensorRT engines "
                          "need an NVIDIA GPU and its driver; run the .onnx export on CPU instead")
        raise TLError(explain_cuda_error(name, "looking for a CUDA GPU (cudaGetDeviceCount)"))
    if count == 0:
        raise TLError("no CUDA GPU is visible (TensorRT engines need one); run the .onnx export on CPU instead")
    if not 0 <= index < count:
        raise TLError(f"GPU {index} does not exist (this machine has {count}); pass a device between 0 and {count - 1}")
    attr = cudart.cudaDeviceAttr
    doing = f"reading GPU {index}'s compute capability (cudaDeviceGetAttribute)"
    major = cuda_call(cudart, cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, index), doing)
    minor = cuda_call(cudart, cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, index), doing)
    name = ""
    try:
        raw = cuda_call(cudart, cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties").name
        name = raw.decode(errors="replace").rstrip("\x00") if isinstance(raw, bytes) else str(raw)
    except Exception:  # the name is cosmetic; never fail on it
        pass
    return GpuDevice(index, name, f"{major}.{minor}")


def nvidia_smi() -> list[dict[str, str]]:
    """One entry per GPU from nvidia-smi (name, driver, memory, compute capability); [] without it."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    fields = ["name", "driver_version", "memory.total", "compute_cap"]
    for query in (fields, fields[:3]):  # old drivers lack compute_cap
        try:
            out = subprocess.run([smi, f"--query-gpu={','.join(query)}", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return []
        if out.returncode == 0:
            return [dict(zip(query, (v.strip() for v in line.split(","))))
                    for line in out.stdout.strip().splitlines() if line.strip()]
    return []


def find_gpu(index: int = 0) -> GpuDevice | None:
    """GPU ``index`` by cuda-python, else nvidia-smi; None when neither finds one."""
    try:
        return cuda_device(import_cudart(), index)
    except (TLError, RuntimeError):
        pass
    gpus = nvidia_smi()
    if len(gpus) > index and gpus[index].get("compute_cap"):
        return GpuDevice(index, gpus[index]["name"], gpus[index]["compute_cap"])
    return None


def tensorrt_usable(index: int = 0) -> bool:
    """TensorRT engines can be built and run here: tensorrt and cuda-python import and a GPU answers."""
    try:
        import_tensorrt()
        cuda_device(import_cudart(), index)
        return True
    except (TLError, RuntimeError, OSError):
        return False


# -- TensorRT objects ---------------------------------------------------------------------------


def trt_create(factory: Callable[..., Any], *args: Any, what: str) -> Any:
    """``trt.Builder(logger)`` / ``trt.Runtime(logger)`` with CUDA failures turned into a clear error.

    When CUDA cannot start, the bindings raise TypeError ("pybind11::init(): factory
    function returned nullptr") rather than returning None.
    """
    try:
        obj = factory(*args)
    except TypeError as e:
        if "returned nullptr" not in str(e):
            raise
        obj = None
    if obj is None:
        raise TLError(f"TensorRT could not create its {what}: CUDA did not start on this machine "
                      "(check nvidia-smi, the driver version, and that TensorRT's CUDA major matches it)")
    return obj
