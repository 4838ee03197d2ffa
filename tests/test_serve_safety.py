"""`tl serve` against hostile input: non-numeric and non-finite tensors, a model that answers NaN,
nesting deep enough to exhaust the parser, broken repository layouts, and a source that is neither
file nor folder. A real server in a subprocess, raw HTTP for what no client library sends."""

from __future__ import annotations

import http.client
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_user_error, run_tl_subprocess

pytest.importorskip("fastapi")

from tl.benchmarks.serve_load import ServeProcess  # noqa: E402

SHAPE = [1, 3, 64, 64]
COUNT = 3 * 64 * 64


def _nan_model(model_file: Path, out: Path) -> Path:
    """``model_file`` with its classifier bias set to NaN: every logit it answers is NaN."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(model_file))
    hit = [t for t in m.graph.initializer if t.name.endswith("fc.bias")]
    assert hit, [t.name for t in m.graph.initializer][-5:]
    for t in hit:
        t.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(t).shape, np.nan, np.float32), t.name))
    onnx.save(m, str(out))
    return out


@pytest.fixture(scope="module")
def server(make_onnx, tmp_path_factory):
    """One repository: 'm' (a sound model) and 'nan' (a model whose logits are NaN)."""
    model_file = make_onnx()[0]
    root = tmp_path_factory.mktemp("safety_repo")
    for name in ("m", "nan"):
        (root / name / "1").mkdir(parents=True)
    shutil.copy(model_file, root / "m" / "1" / "model.onnx")
    _nan_model(model_file, root / "nan" / "1" / "model.onnx")
    s = ServeProcess(root, "--providers", "cpu")
    yield s
    assert s.stop() == 0, "".join(s.lines)


def post(server, body: bytes, model: str = "m", headers: dict | None = None) -> tuple[int, dict | str]:
    conn = http.client.HTTPConnection(server.host, timeout=60)
    conn.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers or {})
    resp = conn.getresponse()
    data, status = resp.read(), resp.status
    conn.close()
    return status, data.decode("utf-8", "replace")


def fp32_json(data_text: str, shape=SHAPE, model_input: str = "input") -> bytes:
    return (f'{{"inputs": [{{"name": "{model_input}", "datatype": "FP32", "shape": {json.dumps(shape)}, '
            f'"data": {data_text}}}]}}').encode()


def values_with(bad: str) -> str:
    """A full [1, 3, 64, 64] tensor as JSON text whose element 7 is ``bad`` (a raw JSON token)."""
    items = ["0.5"] * COUNT
    items[7] = bad
    return "[" + ",".join(items) + "]"


def _not_json(token: str):
    raise AssertionError(f"the response holds a bare {token}")


def strict_json(text: str):
    return json.loads(text, parse_constant=_not_json)


def assert_refused(status: int, text: str, *fragments: str, code: int = 400) -> None:
    assert status == code, text
    message = strict_json(text)["error"]
    for f in fragments:
        assert f.lower() in message.lower(), message


def assert_healthy(server) -> None:
    client = server.client()
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("m")


# -- item: non-numeric and non-finite FP32 data is a 400 ---------------------------------------------------

BAD_VALUES = {  # element 7 of a JSON FP32 tensor -> what the 400 says
    "null": ("null", "must be numbers (got null)"), "boolean": ("true", "must be numbers (got true)"),
    "string": ('"1.5"', "must be numbers (got a string)"), "object": ("{}", "must be numbers (got an object)"),
    "NaN token": ("NaN", "NaN, which is not JSON"), "Infinity token": ("-Infinity", "-Infinity, which is not JSON"),
    "beyond FP32": ("1e39", "finite"), "integer beyond float": ("1" + "0" * 400, "finite"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_fp32_json_data_must_be_finite_numbers(server, case):
    token, fragment = BAD_VALUES[case]
    assert_refused(*post(server, fp32_json(values_with(token))), fragment)
    assert_healthy(server)


def test_fp32_binary_data_must_be_finite(server):
    x = np.zeros(SHAPE, np.float32)
    x[0, 1, 2, 3] = np.nan
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": SHAPE,
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    status, text = post(server, header + x.tobytes(), headers={"Inference-Header-Content-Length": str(len(header))})
    assert_refused(status, text, "input 'input'", "finite")


def test_nan_token_anywhere_in_the_header_is_refused(server):
    body = json.dumps({"id": "a", "inputs": [{"name": "input", "datatype": "FP32", "shape": SHAPE,
                                              "data": [0.5] * COUNT}], "parameters": {"x": float("nan")}}).encode()
    assert b"NaN" in body
    assert_refused(*post(server, body), "NaN")


def test_finite_json_data_is_still_answered(server):
    status, text = post(server, fp32_json(values_with("-2")))
    assert status == 200, text
    out = strict_json(text)["outputs"][0]
    assert out["shape"] == [1, 4] and all(np.isfinite(out["data"]))


# -- item: a model that answers NaN never puts a bare NaN into a response ----------------------------------

@pytest.mark.parametrize("outputs", [None, {"binary_data": True}, {"classification": 2}],
                         ids=["json", "binary", "classification"])
def test_non_finite_logits_are_a_500_not_a_bare_nan(server, outputs):
    header = {"inputs": [{"name": "input", "datatype": "FP32", "shape": SHAPE, "data": [0.5] * COUNT}]}
    if outputs is not None:
        header["outputs"] = [{"name": "logits", "parameters": outputs}]
    status, text = post(server, json.dumps(header).encode(), model="nan")
    assert_refused(status, text, "non-finite", "nan", code=500)
    assert_healthy(server)


# -- item: nesting deep enough to exhaust a recursive parser is a 400 --------------------------------------

@pytest.mark.parametrize("depth", [100_000, 200_000])  # the larger body is parsed off the event loop
def test_deeply_nested_json_is_a_400(server, depth):
    assert_refused(*post(server, b"[" * depth + b"]" * depth), "nested")
    assert_healthy(server)


@pytest.mark.parametrize("depth", [900, 5000])
def test_deeply_nested_bytes_data_is_a_400(server, depth):
    data = "[" * depth + '"x"' + "]" * depth
    body = f'{{"inputs": [{{"name": "input", "datatype": "BYTES", "shape": [1], "data": {data}}}]}}'.encode()
    assert_refused(*post(server, body), "nested")
    assert_healthy(server)


def test_fp32_data_nested_deeper_than_its_shape_is_a_400(server):
    status, text = post(server, fp32_json("[[[[[[0.5]]]]]]", shape=[1]))
    assert_refused(status, text, "nested")


def test_a_shape_of_too_many_dimensions_is_a_400(server):
    status, text = post(server, fp32_json("[0.5]", shape=[1] * 100))
    assert_refused(status, text, "dimensions")


def test_request_id_must_be_a_string(server):
    body = json.dumps({"id": [[["deep"]]], "inputs": [{"name": "input", "datatype": "FP32", "shape": SHAPE,
                                                         "data": [0.5] * COUNT}]}).encode()
    assert_refused(*post(server, body), "'id'")


# -- item: the repository scan refuses what it cannot read with one line naming it -------------------------

def serve_briefly(source: Path):
    """`tl serve SOURCE` in a child that should refuse at once (a server that starts instead times out)."""
    return run_tl_subprocess("serve", source, "--providers", "cpu", "--port", "0", timeout=60)


def _repo(tmp_path: Path, model_file: Path, config: str, version: str = "1") -> Path:
    root = tmp_path / "repo"
    (root / "m" / version).mkdir(parents=True)
    (root / "m" / "config.pbtxt").write_text(config)
    shutil.copy(model_file, root / "m" / version / "model.onnx")
    return root


@pytest.mark.parametrize("value", ["8.5", "-4", "eight"])
def test_repository_max_batch_size_must_be_a_whole_number(tmp_path, make_onnx, value):
    root = _repo(tmp_path, make_onnx()[0], f'platform: "onnxruntime_onnx"\nmax_batch_size: {value}\n')
    r = serve_briefly(root)
    assert_user_error(r, str(root / "m" / "config.pbtxt"), "max_batch_size", value)


def test_repository_version_folder_of_non_ascii_digits(tmp_path, make_onnx):
    root = _repo(tmp_path, make_onnx()[0], 'platform: "onnxruntime_onnx"\n', version="\u00b2")
    (root / "m" / "1").mkdir()
    shutil.copy(make_onnx()[0], root / "m" / "1" / "model.onnx")
    r = serve_briefly(root)
    assert_user_error(r, "version folder", "0-9")
    assert "\u00b2" in r.err or "\\xb2" in r.err


# -- item: a source that is neither a file nor a folder ----------------------------------------------------

def test_serve_a_character_device_or_fifo(tl_cli, tmp_path):
    assert_user_error(tl_cli("serve", os.devnull), os.devnull, "not a model file or a repository folder",
                      "character device")
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    assert_user_error(tl_cli("serve", fifo), "not a model file or a repository folder", "FIFO")
    r = tl_cli("serve", os.devnull)
    assert "a part of the path is a file" not in r.err
