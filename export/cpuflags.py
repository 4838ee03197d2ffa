"""Which integer dot-product instructions this CPU has, and what that means for ONNX Runtime's INT8.

Without VNNI, ONNX Runtime's x86 INT8 kernels multiply with VPMADDUBSW, which adds pairs of
u8*s8 products into a signed 16-bit lane and saturates when both products are large: full
8-bit weights can overflow it and wreck accuracy. ORT's own guidance for such CPUs is
``reduce_range`` (7-bit weights). VNNI (AVX512_VNNI on Xeons since Cascade Lake and on AMD
Zen 4, AVX_VNNI on Alder Lake and later clients) and AMX accumulate in 32 bits and never
saturate; ARM's dot-product kernels do not saturate either.

Torch-free: only /proc/cpuinfo (Linux) or ``sysctl`` (macOS) is read.
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # /proc/cpuinfo names
X86 = ("x86_64", "amd64", "i386", "i686", "x86")


@dataclass(frozen=True)
class Int8Saturation:
    """The decision export records: does ORT's INT8 risk saturating here, and do we reduce the weight range."""

    machine: str
    vnni: bool | None  # None: the CPU's flags could not be read
    reduce_range: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags in /proc/cpuinfo spelling (lower case), or None where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return set(value.lower().split())
    except OSError:
        pass
    return _sysctl_flags()


def _sysctl_flags() -> set[str] | None:
    """macOS: sysctl names AVX512VNNI / AVX_VNNI (Intel Macs); mapped to /proc/cpuinfo spelling."""
    if platform.system() != "Darwin":
        return None
    try:
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"],
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    words = {w.lower() for w in out.split()}
    return {"avx512_vnni" if w == "avx512vnni" else w for w in words} or None


def int8_saturation(flags: set[str] | None, machine: str) -> Int8Saturation:
    """Reduce the weight range exactly where ORT's INT8 kernels can saturate: x86 without VNNI/AMX.

    Flags unknown on x86 (Windows, a locked-down /proc): reduce too, since 7-bit weights cost
    little accuracy and saturation can cost a lot.
    """
    m = machine.lower()
    if m not in X86:
        return Int8Saturation(machine, None, False, f"{machine} is not x86: its INT8 kernels do not saturate")
    if flags is None:
        return Int8Saturation(machine, None, True, "CPU flags unreadable: it may lack VNNI, where ORT's INT8 can saturate")
    have = [f for f in VNNI_FLAGS if f in flags]
    if have:
        return Int8Saturation(machine, True, False, f"CPU has {', '.join(have)}: 32-bit accumulation, no saturation")
    return Int8Saturation(machine, False, True,
                          "CPU has no VNNI/AMX: ONNX Runtime's INT8 kernels add in 16 bits and can saturate")


def this_cpu() -> Int8Saturation:
    return int8_saturation(cpu_flags(), platform.machine())
