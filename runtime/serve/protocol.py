"""The Open Inference Protocol v2 REST infer body, with the binary tensor data and classification extensions.

A request body is a JSON header, optionally followed by binary tensor data; the header's
length is then in ``Inference-Header-Content-Length`` and each binary input says its
``binary_data_size``. BYTES elements, in binary, are a 4-byte little-endian length and the bytes.

Numbers are strict: the header is JSON without the ``NaN`` / ``Infinity`` tokens, FP32 data (JSON or
binary) must be finite numbers (not null, booleans or strings), and ``data`` may nest no deeper than
its shape. A model input of NaN has no answer worth giving, and a NaN would pass through the model
into the logits. The other way round, a response never holds a bare ``NaN`` either: a model whose
logits are not finite is answered with an error (:class:`NonFiniteOutput`, 500), whatever the
output's encoding, since no client can tell a NaN score from a real one.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import numpy as np

from tl.runtime.serve.errors import BadRequest, NonFiniteOutput

DTYPES = {"FP32": np.float32}  # the model's tensor input; BYTES (encoded images) is handled apart
# A tensor of more dimensions is no image batch; the bound also keeps numpy's own limit out of reach.
MAX_DIMS = 8
NUMBER_TYPES = {int, float}  # JSON numbers as json.loads gives them (bool is no number here)


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
    header = _load_json(body[:size])
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
    # No outputs named (absent or an empty list): every output, as Triton answers.
    requested = [_parse_output(o, params.get("binary_data_output", False)) for o in outputs] if outputs else None
    binary = bool(params.get("binary_data_output"))
    return InferRequest(_request_id(header.get("id")), inputs, requested, binary)


def _load_json(text: bytes):
    """Strict JSON: no NaN/Infinity tokens, and nesting past the parser's depth is a BadRequest, not a crash."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"the request header is not valid JSON ({e})") from None
    except RecursionError:
        raise BadRequest("the request header is nested too deeply to parse") from None


def _no_constant(token: str):
    raise BadRequest(f"the request header holds {token}, which is not JSON; send finite numbers")


def _request_id(rid) -> str | None:
    if rid is None or isinstance(rid, str):
        return rid
    if isinstance(rid, int) and not isinstance(rid, bool):
        return str(rid)
    raise BadRequest(f"'id' must be a string (got a {type(rid).__name__})")


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
    count = tensor_count(name, datatype, shape)
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


def tensor_count(name: str, datatype, shape) -> int:
    """How many elements an input's ``shape`` holds, once its shape and datatype are checked (any transport)."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequest(f"input '{name}': 'shape' must be a list of non-negative integers (got {shape!r})")
    if len(shape) > MAX_DIMS:
        raise BadRequest(f"input '{name}': a shape of {len(shape)} dimensions; at most {MAX_DIMS} are accepted")
    if datatype != "BYTES" and datatype not in DTYPES:
        raise BadRequest(f"input '{name}': datatype {datatype!r} is not accepted; send FP32 (the model's NCHW "
                         "tensor) or BYTES (encoded images)")
    return math.prod(shape)


def tensor_from_binary(name: str, datatype: str, shape: list[int], raw: bytes) -> Tensor:
    """An input sent as raw bytes (REST binary data, gRPC raw_input_contents)."""
    return Tensor(name, datatype, shape, _from_binary(name, datatype, shape, tensor_count(name, datatype, shape), raw))


def tensor_from_values(name: str, datatype: str, shape: list[int], values: list) -> Tensor:
    """An input sent as a flat list of typed values (gRPC contents): numbers for FP32, bytes for BYTES."""
    count = tensor_count(name, datatype, shape)
    if datatype == "BYTES":
        return Tensor(name, datatype, shape, _check_count(name, shape, count, [bytes(v) for v in values]))
    return Tensor(name, datatype, shape, _from_json(name, datatype, shape, count, list(values)))


def _from_binary(name: str, datatype: str, shape: list[int], count: int, raw: bytes):
    if datatype == "BYTES":
        return _check_count(name, shape, count, split_bytes(name, raw))
    dtype = np.dtype(DTYPES[datatype])
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(f"input '{name}': shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, "
                         f"got {len(raw)}")
    return _finite(name, np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape))


def _from_json(name: str, datatype: str, shape: list[int], count: int, data):
    flat = _flatten(name, data, shape)
    if datatype == "BYTES":
        if not all(isinstance(x, str) for x in flat):
            raise BadRequest(f"input '{name}': BYTES data in JSON must be strings")
        return _check_count(name, shape, count, [x.encode("utf-8") for x in flat])
    if not set(map(type, flat)) <= NUMBER_TYPES:
        bad = next(x for x in flat if type(x) not in NUMBER_TYPES)
        raise BadRequest(f"input '{name}': {datatype} data must be numbers (got {_json_kind(bad)})")
    if len(flat) != count:
        raise BadRequest(f"input '{name}': shape {shape} holds {count} values, 'data' has {len(flat)}")
    try:
        with np.errstate(over="ignore"):  # a value past FP32's range becomes infinity, refused just below
            arr = np.asarray(flat, dtype=DTYPES[datatype])
    except OverflowError:  # an integer past even float64's range
        raise _not_finite(name) from None
    return _finite(name, arr.reshape(shape))


def _json_kind(value) -> str:
    """What a JSON value is, in JSON's words, without echoing it."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return {str: "a string", dict: "an object"}.get(type(value), type(value).__name__)


def _finite(name: str, arr: np.ndarray) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise _not_finite(name)
    return arr


def _not_finite(name: str) -> BadRequest:
    return BadRequest(f"input '{name}': the data must be finite numbers; it holds NaN, infinity or a value "
                      "beyond FP32's range")


def _flatten(name: str, data, shape: list[int]) -> list:
    """The leaves of nested lists in order, nested no deeper than ``shape``, without recursion."""
    rank, flat, stack = len(shape), [], [iter([data])]
    while stack:
        for x in stack[-1]:
            if not isinstance(x, list):
                flat.append(x)
            elif len(stack) > max(rank, 1):
                raise BadRequest(f"input '{name}': 'data' is nested more deeply than its shape {shape}")
            elif list in set(map(type, x)):
                stack.append(iter(x))
                break
            else:  # the innermost lists, most of the values: taken whole
                flat.extend(x)
        else:
            stack.pop()
    return flat


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


def check_finite(model: str, logits: np.ndarray) -> np.ndarray:
    """``logits``, or NonFiniteOutput: a NaN or infinite score is never answered as if it were one."""
    if not np.isfinite(logits).all():
        raise NonFiniteOutput(f"model '{model}' produced non-finite logits (NaN or infinity) for this input; "
                              "the model is broken (check its export parity), not the request")
    return logits


def encode_response(header: dict, outputs: list[tuple[dict, bytes | None]]) -> tuple[bytes, int | None]:
    """Response header + binary outputs -> (body, header length or None when all JSON)."""
    header = {**header, "outputs": [meta for meta, _ in outputs]}
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()  # strict JSON, as requests are
    blobs = [b for _, b in outputs if b is not None]
    if not blobs:
        return text, None
    return text + b"".join(blobs), len(text)
