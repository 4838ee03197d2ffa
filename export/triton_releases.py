"""Which Triton release loads which ONNX file: its bundled ONNX Runtime's newest opset and IR version.

Triton's ``onnxruntime_onnx`` platform is the ONNX Runtime its container was built with, and ONNX
Runtime refuses a model whose IR version is newer than it knows ("Unsupported model IR version: 10,
max supported IR version: 9") and implements the ai.onnx opsets up to its own. ``tl export --triton
--triton-release YY.MM`` checks the files it puts in the repository against this table.

Sources (the README's table is this one):

- ONNX Runtime version of each Triton release: triton-inference-server/server,
  docs/introduction/compatibility.md, "ONNX Runtime Versions" (24.04 onwards), and ``build.py``'s
  TRITON_VERSION_MAP at tags v2.30.0 (23.01) through v2.44.0 (24.03). Where the two differ (24.08:
  build.py 1.19.0, the document 1.18.1) both have the same limits below.
- Opset and IR version of each ONNX Runtime: microsoft/onnxruntime, docs/reference/compatibility.md,
  "ONNX opset support" (rows up to 1.20). Newer ONNX Runtimes "support all models that worked with
  prior versions" (the same page), so for those the 1.20 row is a lower bound, marked ``at_least``.

TensorRT plans are not in this table: a plan loads only on the TensorRT version that built it
(recorded in its model.plan.json); NVIDIA's Frameworks Support Matrix lists each release's TensorRT.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tl.export.options import MIN_OPSET, TORCHSCRIPT_OPSETS, TRITON_RELEASE
from tl.runtime.errors import TLError
from tl.runtime.onnxmeta import read_onnx_meta

# ONNX Runtime minor version -> (newest ai.onnx opset, newest IR version) it loads.
ORT_LIMITS: dict[str, tuple[int, int]] = {
    "1.13": (17, 8), "1.14": (18, 8), "1.15": (19, 8), "1.16": (19, 9), "1.17": (20, 9),
    "1.18": (21, 10), "1.19": (21, 10), "1.20": (21, 10),
}
NEWEST_KNOWN_ORT = "1.20"

# Triton release (container YY.MM) -> the ONNX Runtime it bundles.
TRITON_ORT: dict[str, str] = {
    "23.01": "1.13.1", "23.02": "1.13.1", "23.03": "1.14.1", "23.04": "1.14.1", "23.05": "1.15.0",
    "23.06": "1.15.0", "23.07": "1.15.1", "23.08": "1.15.1", "23.09": "1.16.0", "23.10": "1.16.0",
    "23.11": "1.16.3", "23.12": "1.16.3", "24.01": "1.16.3", "24.02": "1.16.3", "24.03": "1.17.2",
    "24.04": "1.17.3", "24.05": "1.18.0", "24.06": "1.18.0", "24.07": "1.18.1", "24.08": "1.18.1",
    "24.09": "1.19.2", "24.10": "1.19.2", "24.11": "1.19.2", "24.12": "1.20.1", "25.01": "1.20.1",
    "25.02": "1.20.1", "25.03": "1.21.0", "25.04": "1.21.0", "25.05": "1.22.0", "25.06": "1.22.0",
    "25.07": "1.22.0", "25.08": "1.23.0", "25.09": "1.23.0", "25.10": "1.23.1", "25.11": "1.23.2",
    "25.12": "1.23.2", "26.01": "1.23.2", "26.02": "1.24.1", "26.03": "1.24.2", "26.04": "1.24.4",
    "26.05": "1.24.4", "26.06": "1.24.4", "26.07": "1.27.0",
}
# What tl's exporters write at each opset: the TorchScript exporter (opset 17) IR 8, the dynamo exporter IR 10.
TORCHSCRIPT_IR, DYNAMO_IR = 8, 10


@dataclass(frozen=True)
class TritonRelease:
    """A Triton release and what its ONNX Runtime loads."""

    name: str  # YY.MM
    ort: str
    max_opset: int
    max_ir: int
    at_least: bool  # an ONNX Runtime newer than ORT_LIMITS: these are lower bounds
    newer_than_table: bool = False  # a YY.MM after the table's newest: the newest row's limits


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _newer(a: str, b: str) -> bool:
    return tuple(map(int, a.split("."))) > tuple(map(int, b.split(".")))


def _row(name: str, ort: str, *, newer_than_table: bool = False) -> TritonRelease:
    minor = _minor(ort)
    known = minor in ORT_LIMITS
    opset, ir = ORT_LIMITS[minor if known else NEWEST_KNOWN_ORT]
    return TritonRelease(name=name, ort=ort, max_opset=opset, max_ir=ir, at_least=not known,
                         newer_than_table=newer_than_table)


def releases() -> list[TritonRelease]:
    """Every release of the table, oldest first."""
    return [_row(name, ort) for name, ort in TRITON_ORT.items()]


def release(name: str) -> TritonRelease:
    """``--triton-release YY.MM``: its row; a release newer than the table gets the newest row's (lower) bounds."""
    if not TRITON_RELEASE.fullmatch(name):
        raise TLError(f"--triton-release {name!r}: give a Triton release as YY.MM, e.g. 24.05 "
                      "(the tag of nvcr.io/nvidia/tritonserver:YY.MM-py3)")
    first, newest = next(iter(TRITON_ORT)), next(reversed(TRITON_ORT))
    if name in TRITON_ORT:
        return _row(name, TRITON_ORT[name])
    if name > newest:
        return _row(name, TRITON_ORT[newest], newer_than_table=True)
    raise TLError(f"--triton-release {name}: tl knows Triton {first} through {newest} (and assumes later ones load "
                  f"what {newest} does); {name} is not among them: give one of those")


def expected_ir(opset: int) -> int:
    """The IR version tl's checkpoint export writes at ``opset`` (its exporter decides, not the opset)."""
    return TORCHSCRIPT_IR if opset in TORCHSCRIPT_OPSETS else DYNAMO_IR


def first_release(opset: int, ir: int | None = None) -> str | None:
    """The oldest Triton release of the table that loads ``opset`` at ``ir`` (default: what tl writes at it)."""
    ir = expected_ir(opset) if ir is None else ir
    return next((x.name for x in releases() if x.max_opset >= opset and x.max_ir >= ir), None)


def _advice(r: TritonRelease, opset: int, ir: int) -> str:
    """What to change so that Triton ``r`` loads the file: a lower --opset, or a newer release."""
    fits = [o for o in range(MIN_OPSET, r.max_opset + 1) if expected_ir(o) <= r.max_ir]
    newer = first_release(opset, ir)
    routes = ([f"export from the checkpoint with --opset {max(fits)}"
               + (" (the TorchScript exporter, IR 8)" if max(fits) in TORCHSCRIPT_OPSETS else "")] if fits else [])
    routes += [f"serve it with Triton {newer} or later"] if newer else []
    return " or ".join(routes) or "no Triton release tl knows loads it"


def check(r: TritonRelease, what: str, *, opset: int, ir: int) -> None:
    """Refuse ``what`` (opset ``opset``, IR ``ir``) where Triton ``r``'s ONNX Runtime cannot load it."""
    if opset <= r.max_opset and ir <= r.max_ir:
        return
    bound = "at least " if r.at_least else ""
    raise TLError(f"--triton-release {r.name}: {what} is ONNX opset {opset}, IR version {ir}; Triton {r.name}'s "
                  f"ONNX Runtime {r.ort} loads {bound}opset {r.max_opset} and IR version {r.max_ir}: "
                  f"{_advice(r, opset, ir)}")


def check_file(r: TritonRelease, path: str | Path) -> None:
    """An exported ONNX file's own opset and IR version (read without onnx) against Triton ``r``."""
    meta = read_onnx_meta(path, graph=False)
    check(r, Path(path).name, opset=meta.opset or 0, ir=meta.ir_version)
