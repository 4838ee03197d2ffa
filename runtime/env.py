"""The environment a model runs in, without torch: what a bug report or a benchmark needs.

Every probe is optional: a missing package or nvidia-smi yields None, never an error.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Any


def package_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


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


def gpu_info() -> list[dict[str, str]]:
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


def onnxruntime_info() -> dict[str, Any] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return {"version": ort.__version__, "device": ort.get_device(), "providers": list(ort.get_available_providers())}


def tensorrt_version() -> str | None:
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return str(trt.__version__)


def environment() -> dict[str, Any]:
    import numpy
    import PIL

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "onnxruntime": onnxruntime_info(),
        "tensorrt": tensorrt_version(),
        "cuda_python": package_version("cuda-python") or package_version("cuda-bindings"),
        "tl": package_version("tl"),
        "cpu": cpu_info(),
        "gpus": gpu_info(),
    }
