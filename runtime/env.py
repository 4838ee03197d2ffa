"""The environment a model runs in, without torch: what a bug report or a benchmark needs.

Every probe is optional: a missing package or nvidia-smi yields None, never an error.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any


def cpu_info() -> dict[str, Any]:
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware")):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model or platform.machine(), "cores": os.cpu_count(), "usable_cores": usable}


def onnxruntime_info() -> dict[str, Any] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return {"version": ort.__version__, "device": ort.get_device(), "providers": list(ort.get_available_providers())}


def openvino_info() -> dict[str, Any] | None:
    """OpenVINO's version, devices and the CPU's optimization capabilities (BF16 / INT8 show here)."""
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") if "CPU" in core.available_devices else []
    return {"version": ov.__version__.split("-")[0], "devices": list(core.available_devices), "cpu_capabilities": list(caps)}


def environment() -> dict[str, Any]:
    """Where a model runs: Python, numpy/Pillow, ONNX Runtime, OpenVINO, TensorRT, cuda-python, CPU, GPUs."""
    import numpy
    import PIL

    from tl.runtime.gpu import cuda_python_version, nvidia_smi, package_version, tensorrt_version

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "onnxruntime": onnxruntime_info(),
        "openvino": openvino_info(),
        "tensorrt": tensorrt_version(),
        "cuda_python": cuda_python_version(),
        "tl": package_version("tl"),
        "cpu": cpu_info(),
        "gpus": nvidia_smi(),
    }
