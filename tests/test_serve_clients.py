"""`tl serve` for KServe's clients (the kserve SDK's InferenceRESTClient and InferenceGRPCClient, unchanged)
and the REST details Triton's and KServe's clients rely on: health bodies, 405 with Allow, scalar
metadata parameters, configuration / statistics / repository index routes, an empty outputs list,
one max_batch_size per model however it is served, default_model_filename, and a file without a
tl spec refused naming what works. A real server process; raw HTTP where no client sends the request."""

from __future__ import annotations

import http.client
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_user_error

pytest.importorskip("fastapi")

from test_serve import batch, clf, model_file  # noqa: E402,F401 (fixtures)
from test_serve_safety import _nan_model  # noqa: E402
from tl.benchmarks.serve_load import ServeProcess  # noqa: E402
from tl.runtime.images import list_images  # noqa: E402

TOL = {"rtol": 1e-4, "atol": 1e-5}
# 'm': config.pbtxt names its file (default_model_filename) and no max_batch_size, so the model's own
# bound applies; 'nan': a model whose logits are NaN.
CONFIG_M = 'name: "m"\nplatform: "onnxruntime_onnx"\ndefault_model_filename: "resnet.onnx"\n'


@pytest.fixture(scope="module")
def repo(model_file, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clients_repo")
    (root / "m" / "1").mkdir(parents=True)
    (root / "m" / "config.pbtxt").write_text(CONFIG_M)
    shutil.copy(model_file, root / "m" / "1" / "resnet.onnx")
    (root / "nan" / "1").mkdir(parents=True)
    _nan_model(model_file, root / "nan" / "1" / "model.onnx")
    return root


@pytest.fixture(scope="module")
def server(repo):
    s = ServeProcess(repo, "--providers", "cpu")
    yield s
    assert s.stop() == 0, "".join(s.lines)


def request(server, method: str, path: str, body: bytes | None = None, headers=None):
    conn = http.client.HTTPConnection(server.host, timeout=60)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), (json.loads(data) if data else None)


def fp32_body(x: np.ndarray, **extra) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.ravel().tolist()}], **extra}).encode()


# -- the KServe SDK, REST and gRPC -------------------------------------------------------------------------
# kserve and tritonclient.grpc each register the protocol's messages (inference.*) in protobuf's default
# pool, so one process cannot import both: the KServe client runs in a child interpreter of its own,
# and this process never imports kserve.

KSERVE_CLIENT = """
import asyncio, json, sys
import grpc, httpx, numpy as np, kserve
from kserve.protocol.infer_type import RequestedOutput

url, grpc_host, data, images = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
x = np.load(data)
encoded = np.array([open(f, "rb").read() for f in images], dtype=np.object_)

def tensor(a, binary):
    inp = kserve.InferInput("input", list(a.shape), "FP32" if a.dtype == np.float32 else "BYTES")
    inp.set_data_from_numpy(a, binary_data=binary)
    return inp

def request(model, a, binary=True, **kw):
    return kserve.InferRequest(model_name=model, infer_inputs=[tensor(a, binary)], **kw)

def values(answer):
    return [str(v.decode() if isinstance(v, bytes) else v) if isinstance(v, (bytes, str)) else float(v)
            for v in answer.outputs[0].as_numpy().ravel()]

async def rest(binary):
    client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", timeout=60))
    try:
        out = {"health": [await client.is_server_live(url), await client.is_server_ready(url),
                          await client.is_model_ready(url, "m")]}
        answer = await client.infer(url, request("m", x, binary, request_id="k1"), model_name="m")
        out["id"], out["logits"] = answer.id, values(answer)
        top = request("m", x, binary, request_outputs=[RequestedOutput("logits", {"classification": 2})])
        ranked = await client.infer(url, top, model_name="m")
        out["top"], out["top_shape"] = values(ranked), ranked.outputs[0].shape
        for model in ("nope", "nan"):
            try:
                await client.infer(url, request(model, x, binary), model_name=model)
            except httpx.HTTPStatusError as e:
                out[model] = [e.response.status_code, e.response.json()["error"]]
        return out
    finally:
        await client.close()

async def over_grpc():
    client = kserve.InferenceGRPCClient(grpc_host, timeout=60)
    try:
        out = {"health": [await client.is_server_live(), await client.is_server_ready(), await client.is_model_ready("m")]}
        answer = await client.infer(request("m", x, request_id="g1"))
        out["id"], out["logits"] = answer.id, values(answer)
        out["images"] = values(await client.infer(request("m", encoded)))
        for model in ("nope", "nan"):
            try:
                await client.infer(request(model, x))
            except grpc.RpcError as e:
                out[model] = [e.code().name, e.details()]
        return out
    finally:
        await client.close()

async def main():
    return {"rest_json": await rest(False), "rest_binary": await rest(True), "grpc": await over_grpc()}

print(json.dumps(asyncio.run(main())))
"""


@pytest.fixture(scope="module")
def kserve_answers(server, clf, synth_data, tmp_path_factory) -> dict:
    """What the KServe SDK's clients got from the server (REST JSON, REST binary, gRPC), and the inputs sent."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("kserve") is None:
        pytest.skip("the KServe SDK (kserve, in the dev extra) is not installed")
    x = batch(2, seed=31)
    data = tmp_path_factory.mktemp("kserve") / "x.npy"
    np.save(data, x)
    files = list_images(synth_data / "val")[:2]
    p = subprocess.run([sys.executable, "-c", KSERVE_CLIENT, server.url, server.grpc_host, str(data), *map(str, files)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return {**json.loads(p.stdout.splitlines()[-1]), "x": x, "files": files}


@pytest.mark.parametrize("transport", ["rest_json", "rest_binary", "grpc"])
def test_kserve_clients(kserve_answers, clf, transport):
    got, x = kserve_answers[transport], kserve_answers["x"]
    logits = clf.predict_logits(x)
    assert got["health"] == [True, True, True]
    assert got["id"] == ("g1" if transport == "grpc" else "k1")
    np.testing.assert_allclose(np.array(got["logits"]).reshape(logits.shape), logits, **TOL)
    if transport == "grpc":
        images = clf.predict_logits(clf.preprocess(kserve_answers["files"]))
        np.testing.assert_allclose(np.array(got["images"]).reshape(images.shape), images, **TOL)
        assert got["nope"][0] == "NOT_FOUND" and got["nan"][0] == "INTERNAL"
    else:
        top = [v.split(":") for v in got["top"]]
        assert got["top_shape"] == [2, 2] and [int(t[1]) for t in top[::2]] == list(np.argmax(logits, axis=1))
        assert [t[2] for t in top[:2]] == [clf.classes[i] for i in np.argsort(-logits[0])[:2]]
        assert got["nope"][0] == 404 and got["nan"][0] == 500  # an error body, never a NaN orjson refuses
    assert "unknown model 'nope'" in got["nope"][1] and "non-finite" in got["nan"][1]


# -- REST details ------------------------------------------------------------------------------------------

def test_health_bodies(server):
    assert request(server, "GET", "/v2/health/live")[::2] == (200, {"live": True})
    assert request(server, "GET", "/v2/health/ready")[::2] == (200, {"ready": True})
    assert request(server, "GET", "/v2/models/m/ready")[::2] == (200, {"name": "m", "ready": True})
    assert request(server, "GET", "/v2/models/nope/ready")[0] == 404


def asgi_call(app, method: str, path: str, body: bytes = b"") -> tuple[int, object]:
    """One request straight into the ASGI app (no lifespan: the server has not started)."""
    import asyncio

    sent: list[dict] = []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-length", str(len(body)).encode())], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80)}

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(data)


def test_not_ready_is_503_with_a_body(repo):
    """Before the batchers start (the app's lifespan not entered), health routes say not ready with the
    protocol's bodies and 503 (as KServe; Triton answers 400), and infer is refused."""
    from tl.runtime.serve import Endpoints, ServeOptions, create_app
    from tl.runtime.serve.app import with_fast_infer

    endpoints = Endpoints.load(repo, ServeOptions(providers="cpu"))
    try:
        app = with_fast_infer(create_app(endpoints), endpoints)
        assert asgi_call(app, "GET", "/v2/health/ready") == (503, {"ready": False})
        assert asgi_call(app, "GET", "/v2/models/m/ready") == (503, {"name": "m", "ready": False})
        assert asgi_call(app, "GET", "/v2/health/live") == (200, {"live": True})
        status, body = asgi_call(app, "POST", "/v2/models/m/infer", fp32_body(batch(1)))
        assert status == 503 and "not ready" in body["error"]
        assert asgi_call(app, "POST", "/v2/repository/index", b'{"ready": true}') == (200, [])
        assert asgi_call(app, "POST", "/v2/repository/index")[1][0]["state"] == "UNAVAILABLE"
    finally:
        endpoints.close()


@pytest.mark.parametrize("method,path,allow", [("GET", "/v2/models/m/infer", "POST"), ("POST", "/v2/health/live", "GET"),
                                               ("GET", "/v2/repository/index", "POST")])
def test_405_says_allow(server, method, path, allow):
    status, headers, body = request(server, method, path)
    assert status == 405 and headers.get("allow") == allow and body["error"]


def test_metadata_parameters_are_scalars(server, clf):
    params = server.client().get_model_metadata("m")["parameters"]
    assert all(isinstance(v, (str, int, float, bool)) for v in params.values()), params
    assert json.loads(params["labels"]) == list(clf.classes)


def test_empty_outputs_list_means_every_output(server, clf):
    x = batch(1, seed=33)
    status, _, body = request(server, "POST", "/v2/models/m/infer", fp32_body(x, outputs=[]))
    assert status == 200 and [o["name"] for o in body["outputs"]] == ["logits"]
    np.testing.assert_allclose(np.array(body["outputs"][0]["data"]).reshape(1, 4), clf.predict_logits(x), **TOL)


def test_config_stats_and_index_routes(server):
    status, _, config = request(server, "GET", "/v2/models/m/config")
    assert status == 200 and config["max_batch_size"] == 32 and config["default_model_filename"] == "resnet.onnx"
    assert "label_filename" not in config["output"][0]  # this repository has no labels.txt
    assert request(server, "GET", "/v2/models/m/versions/1/config")[2] == config
    assert request(server, "GET", "/v2/models/m/versions/2/config")[0] == 404
    request(server, "POST", "/v2/models/m/infer", fp32_body(batch(2, seed=34)))
    stats = request(server, "GET", "/v2/models/m/stats")[2]["model_stats"][0]
    assert stats["name"] == "m" and stats["inference_count"] >= 2 and stats["inference_stats"]["success"]["count"] >= 1
    assert {m["name"] for m in request(server, "GET", "/v2/models/stats")[2]["model_stats"]} == {"m", "nan"}
    index = request(server, "POST", "/v2/repository/index", b'{"ready": true}')[2]
    assert index == [{"name": "m", "version": "1", "state": "READY", "reason": ""},
                     {"name": "nan", "version": "1", "state": "READY", "reason": ""}]
    status, _, body = request(server, "POST", "/v2/repository/index", b'{"ready": "yes"}')
    assert status == 400 and "ready" in body["error"]


def test_a_batch_over_max_batch_size_is_refused(server):
    status, _, body = request(server, "POST", "/v2/models/m/infer", fp32_body(np.zeros((33, 3, 64, 64), np.float32)))
    assert status == 400 and "batch-size must be <= 32 for 'm'" in body["error"]
    assert request(server, "GET", "/v2/health/ready")[0] == 200


def test_max_batch_is_the_same_however_the_model_is_served(model_file, repo, tmp_path):
    """The file's own bound (tl.max_batch, what its export wrote into config.pbtxt too) alone, from a
    repository that does not say one, and --max-batch / config.pbtxt over it."""
    from tl.runtime.serve import ServeOptions, load_models

    def max_batches(source, **options):
        models = load_models(source, ServeOptions(providers="cpu", **options))
        try:
            return {m.name: m.max_batch for m in models}
        finally:
            for m in models:
                m.clf.close()

    assert max_batches(model_file) == {model_file.stem: 32}
    assert max_batches(repo)["m"] == 32
    assert max_batches(model_file, max_batch=8) == {model_file.stem: 8}
    (tmp_path / "r" / "m" / "1").mkdir(parents=True)
    (tmp_path / "r" / "m" / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\nmax_batch_size: 4\n')
    shutil.copy(model_file, tmp_path / "r" / "m" / "1" / "model.onnx")
    assert max_batches(tmp_path / "r") == {"m": 4}


def test_a_file_without_a_tl_spec_names_what_works(tl_cli, model_file, tmp_path):
    import onnx

    m = onnx.load(str(model_file))
    del m.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(m, str(foreign))
    r = tl_cli("serve", foreign, "--providers", "cpu", "--port", "0", "--grpc-port", "0")
    assert_user_error(r, "no tl model spec", "tl export", "tl predict")
    assert "--spec spec.json" not in r.err.split("tl predict")[0]  # not offered as a tl serve option


def test_default_model_filename_must_be_a_file_name(tl_cli, model_file, tmp_path):
    (tmp_path / "r" / "m" / "1").mkdir(parents=True)
    (tmp_path / "r" / "m" / "config.pbtxt").write_text('default_model_filename: "../../x.onnx"\n')
    shutil.copy(model_file, tmp_path / "r" / "m" / "1" / "model.onnx")
    assert_user_error(tl_cli("serve", tmp_path / "r", "--port", "0", "--grpc-port", "0"), "default_model_filename")
