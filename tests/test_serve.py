"""`tl serve`: a real server in a subprocess, talked to with Triton's own client (tritonclient.http).

Raw HTTP only for the malformed requests tritonclient will not send.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_user_error, run_tl_subprocess

pytest.importorskip("fastapi")
httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from tl.benchmarks.serve_load import ServeProcess  # noqa: E402
from tl.runtime import Classifier  # noqa: E402
from tl.runtime.classifier import softmax  # noqa: E402
from tl.runtime.images import list_images  # noqa: E402

MODEL = "shapes"  # the repository model the session server serves
CONFIG = """name: "shapes"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [ { name: "input" data_type: TYPE_FP32 dims: [ 3, 64, 64 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 4 ] label_filename: "labels.txt" } ]
dynamic_batching { }
"""


@pytest.fixture(scope="session")
def model_file(make_onnx) -> Path:
    return make_onnx()[0]


@pytest.fixture(scope="session")
def repo(model_file, tmp_path_factory) -> Path:
    """A Triton-layout repository as `tl export --triton` writes it; 'old' has versions 1 and 3."""
    root = tmp_path_factory.mktemp("repo")
    clf_classes = Classifier.load(model_file, providers="cpu").classes
    for name, versions in ((MODEL, (1,)), ("old", (1, 3))):
        (root / name).mkdir()
        (root / name / "config.pbtxt").write_text(CONFIG.replace('"shapes"', f'"{name}"'))
        (root / name / "labels.txt").write_text("\n".join(clf_classes) + "\n")
        for v in versions:
            (root / name / str(v)).mkdir()
            shutil.copy(model_file, root / name / str(v) / "model.onnx")
    (root / "notes").mkdir()  # a folder that is no model is passed over
    return root


@pytest.fixture(scope="session")
def no_torch(tmp_path_factory) -> dict:
    """PYTHONPATH with a sitecustomize that makes torch and onnx unimportable (test_runtime_notorch's)."""
    from test_runtime_notorch import BLOCKER

    d = tmp_path_factory.mktemp("serve_notorch")
    (d / "sitecustomize.py").write_text(BLOCKER)
    return {"PYTHONPATH": os.pathsep.join([str(d), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


@pytest.fixture(scope="session")
def server(repo, no_torch):
    """The session's server, run where torch cannot be imported: serving never needs it."""
    s = ServeProcess(repo, "--providers", "cpu", "--max-delay-ms", "20", "--max-body-mb", "1", env=no_torch)
    yield s
    assert s.stop() == 0, "".join(s.lines)


@pytest.fixture(scope="session")
def clf(model_file):
    return Classifier.load(model_file, providers="cpu")


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 64, 64)).astype(np.float32)


def infer(client, x: np.ndarray, *, binary=True, model=MODEL, class_count=0, **kw):
    inp = httpclient.InferInput("input", list(x.shape), "FP32" if x.dtype == np.float32 else "BYTES")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=class_count)
    return client.infer(model, [inp], outputs=[out], **kw).as_numpy("logits")


def raw(server, method: str, path: str, body: bytes | None = None, headers=None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(server.host, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, (json.loads(data) if data else {})


def assert_healthy(server) -> None:
    client = server.client()
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)


def test_health_and_metadata(server):
    client = server.client()
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "tl" and {"binary_tensor_data", "classification"} <= set(meta["extensions"])
    assert client.is_model_ready(MODEL) and client.is_model_ready("old", "3") and not client.is_model_ready("nope")
    m = client.get_model_metadata(MODEL)
    assert m["versions"] == ["1"] and m["platform"] == "onnxruntime_onnx"
    assert m["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 64, 64]}]
    assert m["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 4]}]
    assert m["parameters"]["max_batch_size"] == 16 and "BYTES" in m["parameters"]["image_input"]
    assert client.get_model_metadata("old", "3")["versions"] == ["3"]  # the latest version, as Triton's default


@pytest.mark.parametrize("binary,compression", [(True, None), (False, None), (True, "gzip"), (False, "deflate")],
                         ids=["binary", "json", "binary-gzip", "json-deflate"])
def test_infer_equals_classifier(server, clf, binary, compression):
    x = batch(3, seed=int(binary))
    got = infer(server.client(), x, binary=binary, request_compression_algorithm=compression)
    assert got.dtype == np.float32 and got.shape == (3, 4)
    np.testing.assert_allclose(got, clf.predict_logits(x), rtol=1e-4, atol=1e-5)


def test_versions(server, clf):
    x = batch(2, seed=5)
    client = server.client()
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_allclose(client.infer("old", [inp], model_version="3").as_numpy("logits"),
                               clf.predict_logits(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(InferenceServerException) as e:
        client.infer("old", [inp], model_version="1")
    assert e.value.status() == "404" and "version" in e.value.message()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_extension(server, clf, binary):
    x = batch(2, seed=7)
    got = infer(server.client(), x, binary=binary, class_count=2)
    assert got.shape == (2, 2)
    logits = clf.predict_logits(x)
    for row, answers in zip(logits, got):
        top = np.argsort(-row)[:2]
        parts = [(a.decode() if isinstance(a, bytes) else a).split(":") for a in answers]
        assert [int(p[1]) for p in parts] == list(top)
        assert [p[2] for p in parts] == [clf.classes[i] for i in top]
        np.testing.assert_allclose([float(p[0]) for p in parts], row[top], atol=1e-4)


def test_encoded_images_equal_tl_predict(server, synth_data, tl_cli, model_file, clf):
    files = list_images(synth_data / "val")
    files = [f for f in files if f.suffix == ".jpg"][:2] + [f for f in files if f.suffix == ".png"][:2]
    assert len(files) == 4
    encoded = np.array([f.read_bytes() for f in files], dtype=np.object_)
    logits = infer(server.client(), encoded)
    r = tl_cli("predict", model_file, *files, "--format", "json", "--top-k", "4", "--providers", "cpu")
    assert r.code == 0, r.err
    expected = [json.loads(line) for line in r.out.splitlines()]
    assert [Path(w["source"]) for w in expected] == files
    for row, want in zip(softmax(logits), expected):
        assert int(np.argmax(row)) == want["index"]
        for k in want["top_k"]:
            assert row[clf.classes.index(k["label"])] == pytest.approx(k["score"], abs=1e-5)


def test_32_concurrent_clients_are_batched(server, clf):
    x = batch(32, seed=11)
    expected = clf.predict_logits(x)
    results, errors = [None] * 32, []
    start = threading.Barrier(32)

    def one(i):
        client = server.client()
        start.wait()
        try:
            results[i] = infer(client, x[i:i + 1])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    np.testing.assert_allclose(np.concatenate(results), expected, rtol=1e-4, atol=1e-5)
    sizes = metric(server, "tl_batch_size")
    assert sizes["count"] < sizes["sum"], f"no batch larger than 1: {sizes}"  # some batch held more than one row
    assert metric(server, "tl_requests_total")["value"] >= 32
    assert metric(server, "tl_queue_duration_seconds")["count"] >= 32


def metric(server, name: str, model: str = MODEL) -> dict:
    """One metric family of /metrics for ``model``: a counter's value, a histogram's count and sum."""
    from prometheus_client.parser import text_string_to_metric_families

    conn = http.client.HTTPConnection(server.host, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith(name) and s.labels.get("model") == model:
                found[s.name.removeprefix(name).lstrip("_") or "value"] = s.value
    return {k if k != "total" else "value": v for k, v in found.items()}


BAD_TRITON = {  # what tritonclient can send: (input name, array, datatype) -> message fragment
    "wrong shape": ("input", np.zeros((1, 3, 32, 32), np.float32), "FP32", "expected FP32 shape"),
    "wrong datatype": ("input", np.zeros((1, 3, 64, 64), np.int32), "INT32", "datatype"),
    "missing input": ("pixels", np.zeros((1, 3, 64, 64), np.float32), "FP32", "takes one input, 'input'"),
    "non-image bytes": ("input", np.array([b"this is not a picture"], dtype=np.object_), "BYTES", "not a readable image"),
}


@pytest.mark.parametrize("case", list(BAD_TRITON))
def test_bad_requests_through_tritonclient(server, case):
    name, x, datatype, fragment = BAD_TRITON[case]
    inp = httpclient.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as e:
        server.client().infer(MODEL, [inp])
    assert e.value.status() == "400" and fragment in e.value.message()
    assert_healthy(server)


def test_unknown_model_and_output(server):
    client = server.client()
    with pytest.raises(InferenceServerException) as e:
        infer(client, batch(1), model="nope")
    assert e.value.status() == "404" and "unknown model 'nope'" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata(MODEL, "7")
    assert e.value.status() == "404"
    inp = httpclient.InferInput("input", [1, 3, 64, 64], "FP32")
    inp.set_data_from_numpy(batch(1))
    with pytest.raises(InferenceServerException) as e:
        client.infer(MODEL, [inp], outputs=[httpclient.InferRequestedOutput("probs")])
    assert e.value.status() == "400" and "one output, 'logits'" in e.value.message()
    assert_healthy(server)


def _binary_body(x: np.ndarray, cut: int = 0) -> tuple[bytes, dict]:
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    body = header + x.tobytes()
    return body[:len(body) - cut], {"Inference-Header-Content-Length": str(len(header))}


RAW = {  # the malformed requests tritonclient cannot send: (path, body, headers) -> (status, fragment)
    "malformed json": (f"/v2/models/{MODEL}/infer", b'{"inputs": [', {}, 400, "not valid JSON"),
    "truncated binary": (f"/v2/models/{MODEL}/infer", *_binary_body(batch(1), cut=100), 400, "truncated"),
    "header length past body": (f"/v2/models/{MODEL}/infer", b"{}", {"Inference-Header-Content-Length": "99"}, 400,
                                "does not fit"),
    "json data count": (f"/v2/models/{MODEL}/infer", json.dumps({"inputs": [
        {"name": "input", "datatype": "FP32", "shape": [1, 3, 64, 64], "data": [1.0, 2.0]}]}).encode(), {}, 400,
        "holds 12288 values"),
    "no inputs": (f"/v2/models/{MODEL}/infer", b'{"inputs": []}', {}, 400, "non-empty 'inputs'"),
    "unknown version": (f"/v2/models/{MODEL}/versions/2/infer", *_binary_body(batch(1)), 404, "no version '2'"),
    "unknown route": ("/v2/nothing", b"", {}, 404, "Not Found"),
}


@pytest.mark.parametrize("case", list(RAW))
def test_malformed_requests(server, case):
    path, body, headers, status, fragment = RAW[case]
    code, answer = raw(server, "POST", path, body, headers)
    assert code == status and fragment in answer["error"], answer
    assert_healthy(server)


def test_oversized_body_is_refused(server):
    """413 before the body is read: a 1 MB limit, a 2 MB body, announced and chunked."""
    big = b"x" * (2 * 1024 * 1024)
    code, answer = raw(server, "POST", f"/v2/models/{MODEL}/infer", big)
    assert code == 413 and "limit" in answer["error"]
    conn = http.client.HTTPConnection(server.host, timeout=30)
    conn.request("POST", f"/v2/models/{MODEL}/infer", body=iter([big[:600_000], big[600_000:]]), encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413 and "limit" in json.loads(resp.read())["error"]
    assert_healthy(server)


def test_sigterm_drains_queued_requests(model_file, clf):
    """Requests waiting for their batch when SIGTERM arrives are answered, then the server exits 0."""
    assert_sigterm_drains(model_file, clf, [lambda s, x: infer(s.client(), x, model="drain")] * 4)


def assert_sigterm_drains(model_file, clf, senders: list) -> None:
    """One request per ``senders[i](server, rows)`` queued for a 1.5 s batch, SIGTERM, then each answered
    with its logits and a clean exit 0."""
    s = ServeProcess(model_file, "--providers", "cpu", "--name", "drain", "--max-delay-ms", "1500", "--max-batch", "64")
    n = len(senders)
    x = batch(n, seed=3)
    results = [None] * n

    def one(i):
        results[i] = senders[i](s, x[i:i + 1])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while metric(s, "tl_queue_pending", model="drain").get("value", 0) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert metric(s, "tl_queue_pending", model="drain")["value"] == n
    s.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    assert s.stop() == 0, "".join(s.lines)
    np.testing.assert_allclose(np.concatenate(results), clf.predict_logits(x), rtol=1e-4, atol=1e-5)
    assert "stopped" in s.lines[-1] and "Traceback" not in "".join(s.lines)


def test_queue_full_is_refused():
    """The batcher's bounded queue: one request running, ``queue_limit`` waiting, the next one is refused."""
    import asyncio

    from tl.runtime.serve.batcher import Batcher
    from tl.runtime.serve.errors import QueueFull

    release = threading.Event()

    def run(rows):
        release.wait(10)
        return rows * 2

    async def main():
        b = Batcher(run, max_batch=1, max_delay_s=0, queue_limit=1)
        b.start()
        first = asyncio.ensure_future(b.submit(np.ones((1, 2), np.float32)))
        while not b.waiting or b.queued:  # the first request was submitted and the model's thread runs it
            await asyncio.sleep(0.001)
        second = asyncio.ensure_future(b.submit(np.full((1, 2), 3, np.float32)))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="queue is full"):
            await b.submit(np.zeros((1, 2), np.float32))
        release.set()
        await b.close()
        return await first, await second

    first, second = asyncio.run(main())
    assert first.tolist() == [[2, 2]] and second.tolist() == [[6, 6]]


def test_model_names_and_repository_errors(tmp_path, model_file):
    from tl.runtime.errors import TLError
    from tl.runtime.serve.repository import find_models

    f = tmp_path / "model.int8.onnx"
    shutil.copy(model_file, f)
    assert [(e.name, e.version) for e in find_models(f)] == [("model.int8", "1")]
    assert find_models(f, "cats")[0].name == "cats"
    (tmp_path / "repo" / "m" / "2").mkdir(parents=True)
    with pytest.raises(TLError, match="no model.onnx or model.plan"):
        find_models(tmp_path / "repo")
    with pytest.raises(TLError, match="--name renames a single model file"):
        find_models(tmp_path / "repo", "x")


def test_serve_cli_user_errors(tl_cli, tmp_path, model_file):
    assert_user_error(tl_cli("serve", tmp_path / "missing.onnx"), "not found")
    (tmp_path / "empty").mkdir()
    assert_user_error(tl_cli("serve", tmp_path / "empty"), "no models found")
    (tmp_path / "notes.txt").write_text("hi")
    assert_user_error(tl_cli("serve", tmp_path / "notes.txt"), "not a model file")
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert_user_error(tl_cli("serve", model_file, "--port", port, "--providers", "cpu"), "cannot listen")


def test_batcher_gathers_within_max_batch_and_drains():
    """Three requests of 2 rows, max batch 4: one batch of 4 rows, the third leads the next; close answers it."""
    import asyncio

    from tl.runtime.serve.batcher import Batcher

    sizes = []

    async def main():
        b = Batcher(lambda rows: rows + 1, max_batch=4, max_delay_s=0.05, queue_limit=8,
                    on_batch=lambda size, waits, compute_s: sizes.append((size, len(waits))))
        b.start()
        calls = [asyncio.ensure_future(b.submit(np.full((2, 1), i, np.float32))) for i in range(3)]
        await asyncio.sleep(0)
        await b.close()  # closing while the third request still waits: it is answered first
        return [await c for c in calls]

    answers = asyncio.run(main())
    assert [a.ravel().tolist() for a in answers] == [[1, 1], [2, 2], [3, 3]]
    assert sizes == [(4, 2), (2, 1)]


def test_serve_without_the_serve_extra(model_file, tmp_path):
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(BLOCKER_FASTAPI)
    r = run_tl_subprocess("serve", model_file, env={"PYTHONPATH": os.pathsep.join(
        [str(tmp_path), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}, timeout=120)
    assert_user_error(r, "needs the serve extra", "pip install 'tl[serve]'")


BLOCKER_FASTAPI = """
import sys

class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("fastapi", "uvicorn", "starlette"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Block())
"""


def test_serve_load_report(model_file, tmp_path):
    """The load generator (`tl bench serve`), run as its CLI in a child interpreter (its report
    records the environment, which starts OpenVINO where installed): a real server at two
    concurrencies over HTTP and gRPC, the same model in-process, and the report it writes (figures
    are measured, so only their form is checked)."""
    import subprocess
    import sys

    out = tmp_path / "load"
    p = subprocess.run([sys.executable, "-m", "tl", "bench", "serve", str(model_file), "--concurrency", "1,4",
                        "--seconds", "0.6", "--rounds", "2", "--providers", "cpu", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads((out / "serve_load.json").read_text())
    served = {(r["transport"], r["concurrency"]): r for r in result["served"]}
    assert sorted(served) == [("grpc", 1), ("grpc", 4), ("http", 1), ("http", 4)]
    assert result["max_batch"] == 32 and result["options"]["rounds"] == 2
    for r in served.values():
        assert r["requests"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"] and r["throughput"] > 0 and r["client_cores"] > 0
    for t in ("http", "grpc"):
        assert served[t, 1]["mean_batch"] == 1.0 and 1.0 <= served[t, 4]["mean_batch"] <= 4.0
        s = result["summary"][t]
        assert s["ratio_batch"] == 4
        assert s["throughput_ratio"] == served[t, 4]["throughput"] / result["in_process"][1]["throughput"]
    assert [r["batch"] for r in result["in_process"]] == [1, 4]
    md = (out / "serve_load.md").read_text()
    assert "gRPC: serving overhead at concurrency 1" in md and "| tl serve HTTP | c=4 |" in md
    assert "| tl serve gRPC | c=4 |" in md and md.strip() in p.stdout
    assert (out / "serve_load.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_serve_load_user_errors(tl_cli, model_file, tmp_path):
    """`tl bench serve` goes through tl's one error boundary: one `error:` line, exit 1 or 2."""
    assert_user_error(tl_cli("bench", "serve", model_file, "--concurrency", "1,many"), "--concurrency")
    assert_user_error(tl_cli("bench", "serve", tmp_path / "missing.onnx"), "model not found")
    assert_user_error(tl_cli("bench", "serve", model_file, "--rounds", "0"), "--rounds")
    assert_user_error(tl_cli("bench", "serve", model_file, "--transport", "http,carrier-pigeon"), "--transport",
                      "carrier-pigeon", "http, grpc")
