"""The Open Inference Protocol v2 REST infer body, with the binary tensor data and classification extensions.

A request body is a JSON header, optionally followed by binary tensor data; the header's
length is then in ``Inference-Header-Content-Length`` and each binary input says its
``binary_data_size``. BYTES elements, in binary, are a 4-byte little-endian length and the bytes.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import numpy as np

from tl.runtime.serve.errors import BadRequest

DTYPES = {"FP32": np.float32}  # the model's tensor input; BYTES (encoded images) is handled apart


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]  # FP32 -> ndarray of ``shape``; BYTES -> one bytes object per element


@dataclass
class Requested:
    name: str
    binary: bool
    classification: int = 0


@dataclass
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: list[Requested] | None  # None: every output
    binary_output: bool = False  # request parameter binary_data_output


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """Header JSON + binary tail -> InferRequest; every mistake is a BadRequest that says which."""
    size = _header_size(header_length, len(body))
    try:
        header = json.loads(body[:size])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"the request header is not valid JSON ({e})") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list) or not header["inputs"]:
        raise BadRequest("the request must be a JSON object with a non-empty 'inputs' list")
    tail, inputs = memoryview(body)[size:], []
    for raw in header["inputs"]:
        tensor, used = _parse_input(raw, tail)
        inputs.append(tensor)
        tail = tail[used:]
    if len(tail):
        raise BadRequest(f"{len(tail)} bytes of binary data follow the inputs that no input claims")
    params = _params(header)
    outputs = header.get("outputs")
    if outputs is not None and not isinstance(outputs, list):
        raise BadRequest("'outputs' must be a list")
    requested = None if outputs is None else [_parse_output(o, params.get("binary_data_output", False)) for o in outputs]
    rid = header.get("id")
    return InferRequest(str(rid) if rid is not None else None, inputs, requested, bool(params.get("binary_data_output")))


def _header_size(value: str | None, body_size: int) -> int:
    if value is None:
        return body_size
    try:
        size = int(value)
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length must be an integer (got {value!r})") from None
    if not 0 < size <= body_size:
        raise BadRequest(f"Inference-Header-Content-Length {size} does not fit the {body_size}-byte body")
    return size


def _params(obj: dict) -> dict:
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("'parameters' must be a JSON object")
    return params


def _parse_input(raw, tail: memoryview) -> tuple[Tensor, int]:
    """One input and how many bytes of the binary tail it took."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise BadRequest("each input needs a 'name', a 'datatype' and a 'shape'")
    name, datatype, shape = raw["name"], raw.get("datatype"), raw.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequest(f"input '{name}': 'shape' must be a list of non-negative integers (got {shape!r})")
    if datatype != "BYTES" and datatype not in DTYPES:
        raise BadRequest(f"input '{name}': datatype {datatype!r} is not accepted; send FP32 (the model's NCHW "
                         "tensor) or BYTES (encoded images)")
    count = math.prod(shape)
    size = _params(raw).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or size > len(tail):
            raise BadRequest(f"input '{name}': binary_data_size {size} but only {len(tail)} bytes of binary "
                             "data are left in the body (truncated request?)")
        data = _from_binary(name, datatype, shape, count, bytes(tail[:size]))
        return Tensor(name, datatype, shape, data), size
    if "data" not in raw:
        raise BadRequest(f"input '{name}' has neither 'data' nor a binary_data_size")
    return Tensor(name, datatype, shape, _from_json(name, datatype, shape, count, raw["data"])), 0


def _from_binary(name: str, datatype: str, shape: list[int], count: int, raw: bytes):
    if datatype == "BYTES":
        return _check_count(name, shape, count, split_bytes(name, raw))
    dtype = np.dtype(DTYPES[datatype])
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(f"input '{name}': shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, "
                         f"got {len(raw)}")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)


def _from_json(name: str, datatype: str, shape: list[int], count: int, data):
    if datatype == "BYTES":
        flat = list(_flatten(data))
        if not all(isinstance(x, str) for x in flat):
            raise BadRequest(f"input '{name}': BYTES data in JSON must be strings")
        return _check_count(name, shape, count, [x.encode("utf-8") for x in flat])
    try:
        arr = np.asarray(data, dtype=DTYPES[datatype])
    except (TypeError, ValueError):
        raise BadRequest(f"input '{name}': 'data' must be numbers for {datatype}") from None
    if arr.size != count:
        raise BadRequest(f"input '{name}': shape {shape} holds {count} values, 'data' has {arr.size}")
    return arr.reshape(shape)


def _flatten(data):
    if isinstance(data, list):
        for x in data:
            yield from _flatten(x)
    else:
        yield data


def _check_count(name: str, shape: list[int], count: int, items: list[bytes]) -> list[bytes]:
    if len(items) != count:
        raise BadRequest(f"input '{name}': shape {shape} holds {count} elements, the data has {len(items)}")
    return items


def split_bytes(name: str, raw: bytes) -> list[bytes]:
    """Binary BYTES data (4-byte little-endian length + bytes, repeated) -> the elements."""
    items, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise BadRequest(f"input '{name}': BYTES data ends inside an element's 4-byte length")
        (n,) = struct.unpack_from("<I", raw, pos)
        if pos + 4 + n > len(raw):
            raise BadRequest(f"input '{name}': a BYTES element of {n} bytes runs past the data (truncated?)")
        items.append(raw[pos + 4:pos + 4 + n])
        pos += 4 + n
    return items


def join_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def _parse_output(raw, binary_default: bool) -> Requested:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise BadRequest("each requested output needs a 'name'")
    params = _params(raw)
    k = params.get("classification", 0)
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise BadRequest(f"output '{raw['name']}': classification must be a non-negative integer (got {k!r})")
    return Requested(raw["name"], bool(params.get("binary_data", binary_default)), k)


def classify(logits: np.ndarray, k: int, labels: tuple[str, ...]) -> list[bytes]:
    """Triton's classification extension: the top ``k`` of each row as b"score:index:label", highest first."""
    k = min(k, logits.shape[1])
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return [f"{row[i]:f}:{i}:{labels[i]}".encode() for row, idx in zip(logits, order) for i in idx]


def encode_response(header: dict, outputs: list[tuple[dict, bytes | None]]) -> tuple[bytes, int | None]:
    """Response header + binary outputs -> (body, header length or None when all JSON)."""
    header = {**header, "outputs": [meta for meta, _ in outputs]}
    text = json.dumps(header, separators=(",", ":")).encode()
    blobs = [b for _, b in outputs if b is not None]
    if not blobs:
        return text, None
    return text + b"".join(blobs), len(text)
