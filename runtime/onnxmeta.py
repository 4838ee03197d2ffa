"""Read what tl needs from an .onnx file (opset, metadata, precision) without onnx or torch.

The runtime installs with numpy + Pillow + onnxruntime only, and onnxruntime does not
expose opsets or initializer types. ONNX files are protobuf; this walks the few fields
needed and seeks past everything else, so a 500 MB VGG16 is never read into memory.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from tl.runtime.errors import TLError
from tl.runtime.metadata import PRECISION_KEY, PRECISIONS

QUANT_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
    "QLinearMatMul", "ConvInteger", "MatMulInteger",
})
FLOAT16, BFLOAT16 = 10, 16

# ModelProto / GraphProto / NodeProto / TensorProto field numbers (onnx.proto).
_M_IR, _M_PRODUCER, _M_PRODUCER_VERSION, _M_GRAPH, _M_OPSET, _M_METADATA = 1, 2, 3, 7, 8, 14
_G_NODE, _G_INITIALIZER = 1, 5
_N_OP_TYPE = 4
_T_DATA_TYPE = 2


@dataclass
class OnnxMeta:
    ir_version: int = 0
    producer: str = ""
    opsets: dict[str, int] = field(default_factory=dict)  # domain ("" = ai.onnx) -> version
    metadata: dict[str, str] = field(default_factory=dict)
    op_types: set[str] = field(default_factory=set)
    initializer_types: set[int] = field(default_factory=set)

    @property
    def opset(self) -> int | None:
        return self.opsets.get("") or self.opsets.get("ai.onnx")

    def precision(self) -> str:
        """metadata tl.precision, else the graph: Q/DQ ops -> int8, fp16 weights -> fp16, else fp32."""
        declared = self.metadata.get(PRECISION_KEY, "").lower()
        if declared in PRECISIONS:
            return declared
        if self.op_types & QUANT_OPS:
            return "int8"
        if self.initializer_types & {FLOAT16, BFLOAT16}:
            return "fp16"
        return "fp32"


class _Reader:
    def __init__(self, f: io.BufferedReader):
        self.f = f

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.f.read(1)
            if not b:
                raise EOFError
            result |= (b[0] & 0x7F) << shift
            if not b[0] & 0x80:
                return result
            shift += 7
            if shift > 70:
                raise ValueError("varint too long")

    def fields(self, end: int):
        """Yield (field_number, wire_type, value_or_length) until offset ``end``; callers skip or read."""
        while self.f.tell() < end:
            tag = self.varint()
            num, wire = tag >> 3, tag & 7
            if num == 0:
                raise ValueError("field number 0")
            if wire == 0:
                yield num, wire, self.varint()
            elif wire == 1:
                self.f.seek(8, io.SEEK_CUR)
            elif wire == 5:
                self.f.seek(4, io.SEEK_CUR)
            elif wire == 2:
                n = self.varint()
                start = self.f.tell()
                yield num, wire, n
                self.f.seek(start + n)  # whatever the caller read, continue after the field
            else:
                raise ValueError(f"unsupported wire type {wire}")
        if self.f.tell() != end:
            raise ValueError("field overruns its message")

    def string(self, n: int) -> str:
        data = self.f.read(n)
        if len(data) != n:
            raise EOFError
        return data.decode("utf-8", errors="replace")

    def submessage(self, n: int, wanted: dict[int, str]) -> dict[int, object]:
        """Read scalar/string fields of a small message; ``wanted`` maps field -> 'str'|'int'."""
        out: dict[int, object] = {}
        for num, wire, val in self.fields(self.f.tell() + n):
            kind = wanted.get(num)
            if kind == "int" and wire == 0:
                out[num] = val
            elif kind == "str" and wire == 2:
                out[num] = self.string(val)
        return out


def read_onnx_meta(path: str | Path, *, graph: bool = True) -> OnnxMeta:
    """Parse ``path``; graph=False stops at the top level (opset, metadata) and skips the graph."""
    path = Path(path)
    size = path.stat().st_size
    meta = OnnxMeta()
    try:
        with open(path, "rb") as f:
            r = _Reader(f)
            for num, wire, val in r.fields(size):
                if num == _M_IR and wire == 0:
                    meta.ir_version = val
                elif num == _M_PRODUCER and wire == 2:
                    meta.producer = r.string(val)
                elif num == _M_OPSET and wire == 2:
                    d = r.submessage(val, {1: "str", 2: "int"})
                    meta.opsets[str(d.get(1, ""))] = int(d.get(2, 0))
                elif num == _M_METADATA and wire == 2:
                    d = r.submessage(val, {1: "str", 2: "str"})
                    meta.metadata[str(d.get(1, ""))] = str(d.get(2, ""))
                elif num == _M_GRAPH and wire == 2 and graph:
                    _read_graph(r, f.tell() + val, meta)
    except (EOFError, ValueError) as e:
        raise TLError(f"{path}: not a valid ONNX file ({e})") from e
    if not meta.opsets:
        raise TLError(f"{path}: not a valid ONNX file (no opset_import)")
    return meta


def _read_graph(r: _Reader, end: int, meta: OnnxMeta) -> None:
    for num, wire, val in r.fields(end):
        if wire != 2:
            continue
        if num == _G_NODE:
            d = r.submessage(val, {_N_OP_TYPE: "str"})
            if _N_OP_TYPE in d:
                meta.op_types.add(str(d[_N_OP_TYPE]))
        elif num == _G_INITIALIZER:
            # data_type comes right after dims; stop reading as soon as it is seen.
            for tnum, twire, tval in r.fields(r.f.tell() + val):
                if tnum == _T_DATA_TYPE and twire == 0:
                    meta.initializer_types.add(tval)
                    break
