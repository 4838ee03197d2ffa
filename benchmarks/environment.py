"""The machine and the settings a bench run measured on: every report carries them.

Numbers without the machine they came from are useless, so bench.json/md record the CPU,
GPU, driver and library versions beside the timing rules (versions come from package
metadata: no heavy imports).
"""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tl.benchmarks.options import BenchOptions
from tl.benchmarks.targets import Targets
from tl.benchmarks.timing import DISTURBED_SPREAD

COMPUTE_MS_MEANING = ("device time of one inference call with the input already on the GPU: CUDA events around each "
                      "call, calls enqueued back to back after warm-up (torch and TensorRT rows; empty for ONNX "
                      "Runtime, which exposes no events, and where the batch exceeds an engine's max batch)")


def _physical_cores() -> int | None:
    try:
        pairs = set()
        phys = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            if line.startswith("physical id"):
                phys = line.split(":", 1)[1].strip()
            elif line.startswith("core id"):
                core = line.split(":", 1)[1].strip()
            elif not line.strip():
                if core is not None:
                    pairs.add((phys, core))
                phys = core = None
        return len(pairs) or None
    except OSError:
        return None


def bench_environment(*, device: str, threads: int | None = None) -> dict[str, Any]:
    """Machine and library facts for bench.json (versions by package metadata: no heavy imports)."""
    from tl.runtime.env import cpu_info
    from tl.runtime.gpu import nvidia_smi, package_version, tensorrt_version

    env: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "os": platform.platform(),
        "cpu": cpu_info()["model"],
        "cpu_cores": _physical_cores(),
        "cpu_threads": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "device": device,
        "gpu": None,
        "gpu_driver": None,
        "cuda": None,
        "python": sys.version.split()[0],
        "torch": package_version("torch"),
        "torchvision": package_version("torchvision"),
        "onnx": package_version("onnx"),
        "onnxruntime": package_version("onnxruntime") or package_version("onnxruntime-gpu"),
        "tensorrt": tensorrt_version(),
        "numpy": package_version("numpy"),
        "tl": package_version("tl"),
    }
    try:
        import torch

        env["torch_threads"] = threads or torch.get_num_threads()
        env["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            i = torch.cuda.current_device()
            env["gpu"] = torch.cuda.get_device_name(i)
            cap = torch.cuda.get_device_capability(i)
            env["gpu_compute_capability"] = f"{cap[0]}.{cap[1]}"
            env["gpu_memory_gb"] = round(torch.cuda.get_device_properties(i).total_memory / 1e9, 1)
            smi = nvidia_smi()
            env["gpu_driver"] = smi[0].get("driver_version") if smi else None
    except ImportError:
        pass
    env["ort_threads"] = threads or "onnxruntime default (physical cores)"
    return env


def run_environment(o: BenchOptions, device: str, spec, ckpt_path, targets: Targets, images: dict) -> dict[str, Any]:
    """The machine plus what this run measured: model, artifacts, images and the timing rules."""
    env = bench_environment(device=device, threads=o.threads)
    env.update({
        "arch": spec.arch, "image_size": [spec.input.height, spec.input.width], "num_classes": spec.num_classes,
        "checkpoint": str(ckpt_path) if ckpt_path else None,
        "artifacts": [str(a.path) for a in targets.artifacts],
        "images": images,
        "timing": {"warmup": o.warmup, "seconds": None if o.iters else o.seconds, "iters": o.iters,
                   "rounds": "interleaved: every runner of a batch size once per round", "disturbed_spread": DISTURBED_SPREAD,
                   "percentiles": "nearest-rank", "latency": "host input -> host output",
                   "compute_ms": COMPUTE_MS_MEANING},
        "batch_sizes": list(o.batch_sizes),
    })
    return env
