"""`tl serve`'s gRPC service, talked to with Triton's own gRPC client (tritonclient.grpc: sync, asyncio
and streaming) against a real server process; the same answers as ONNX Runtime in-process and as
the HTTP transport, whose batcher, statistics and errors it shares."""

from __future__ import annotations

import asyncio
import queue
import shutil

import numpy as np
import pytest

from conftest import assert_user_error

pytest.importorskip("fastapi")
grpcclient = pytest.importorskip("tritonclient.grpc")
import grpc  # noqa: E402
import tritonclient.grpc.aio as grpcaio  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from test_serve import CONFIG, MODEL, assert_sigterm_drains, batch, clf, metric, model_file  # noqa: E402,F401
from test_serve import infer as http_infer  # noqa: E402
from tl.benchmarks.serve_load import ServeProcess  # noqa: E402
from tl.runtime.images import list_images  # noqa: E402

TOL = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(scope="module")
def server(model_file, clf, tmp_path_factory):
    """A repository as `tl export --triton` writes it ('shapes', max_batch_size 16, labels.txt), served
    over HTTP and gRPC by one process."""
    root = tmp_path_factory.mktemp("grpc_repo")
    (root / MODEL / "1").mkdir(parents=True)
    (root / MODEL / "config.pbtxt").write_text(CONFIG)
    (root / MODEL / "labels.txt").write_text("\n".join(clf.classes) + "\n")
    shutil.copy(model_file, root / MODEL / "1" / "model.onnx")
    s = ServeProcess(root, "--providers", "cpu", "--max-body-mb", "1")
    yield s
    assert s.stop() == 0, "".join(s.lines)


def infer(client, x: np.ndarray, *, model=MODEL, class_count=0, **kw):
    inp = grpcclient.InferInput("input", list(x.shape), "FP32" if x.dtype == np.float32 else "BYTES")
    inp.set_data_from_numpy(x)
    out = grpcclient.InferRequestedOutput("logits", class_count=class_count)
    return client.infer(model, [inp], outputs=[out], **kw).as_numpy("logits")


def refused(call, code: grpc.StatusCode, *fragments: str) -> None:
    with pytest.raises(InferenceServerException) as e:
        call()
    assert e.value.status() == str(code), (e.value.status(), e.value.message())
    for f in fragments:
        assert f in e.value.message(), e.value.message()


def test_health_and_metadata(server):
    client = server.grpc_client()
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready("nope")  # as Triton: not ready, no error
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "tl" and {"binary_tensor_data", "classification", "model_configuration", "statistics",
                                     "model_repository"} <= set(meta["extensions"])
    m = client.get_model_metadata(MODEL, as_json=True)
    assert m["versions"] == ["1"] and m["platform"] == "onnxruntime_onnx"
    assert m["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "3", "64", "64"]}]
    assert m["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": ["-1", "4"]}]
    refused(lambda: client.get_model_metadata("nope"), grpc.StatusCode.NOT_FOUND, "unknown model 'nope'")
    refused(lambda: client.get_model_metadata(MODEL, "7"), grpc.StatusCode.NOT_FOUND, "no version '7'")


def test_model_config_is_the_same_on_both_transports(server, clf):
    """What perf_analyzer and model_analyzer read first: Triton's configuration, one per model."""
    config = server.grpc_client().get_model_config(MODEL, as_json=True)["config"]
    assert config["name"] == MODEL and config["platform"] == "onnxruntime_onnx" and config["backend"] == "onnxruntime"
    assert config["max_batch_size"] == 16  # config.pbtxt's, and what the metadata says
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW",
                                "dims": ["3", "64", "64"]}]
    assert config["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": ["4"],
                                 "label_filename": "labels.txt"}]
    assert config["default_model_filename"] == "model.onnx" and config["instance_group"][0]["kind"] == "KIND_CPU"
    http = server.client().get_model_config(MODEL)
    assert http["max_batch_size"] == 16 and http["input"][0]["dims"] == [3, 64, 64]
    assert http["parameters"]["tl.labels"]["string_value"] == config["parameters"]["tl.labels"]["string_value"]
    import json

    assert json.loads(config["parameters"]["tl.labels"]["string_value"]) == list(clf.classes)
    assert server.client().get_model_metadata(MODEL)["parameters"]["max_batch_size"] == 16


def test_infer_equals_classifier_and_http(server, clf):
    x = batch(3, seed=21)
    got = infer(server.grpc_client(), x)
    assert got.dtype == np.float32 and got.shape == (3, 4)
    np.testing.assert_allclose(got, clf.predict_logits(x), **TOL)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    answer = server.grpc_client().infer(MODEL, [inp], request_id="req-7")  # no outputs named: every output
    assert answer.get_response().id == "req-7" and answer.get_response().model_version == "1"
    np.testing.assert_allclose(answer.as_numpy("logits"), got, rtol=0, atol=0)


def test_classification(server, clf):
    x = batch(2, seed=22)
    got = infer(server.grpc_client(), x, class_count=2)
    assert got.shape == (2, 2)
    for row, answers in zip(clf.predict_logits(x), got):
        top = np.argsort(-row)[:2]
        parts = [a.decode().split(":") for a in answers]
        assert [int(p[1]) for p in parts] == list(top) and [p[2] for p in parts] == [clf.classes[i] for i in top]


def test_encoded_images(server, synth_data, clf):
    files = [f for f in list_images(synth_data / "val")][:3]
    encoded = np.array([f.read_bytes() for f in files], dtype=np.object_)
    np.testing.assert_allclose(infer(server.grpc_client(), encoded), clf.predict_logits(clf.preprocess(files)), **TOL)


def test_asyncio_client_and_concurrent_requests_batch(server, clf):
    """tritonclient.grpc.aio: 16 concurrent single-image requests, each its own rows back."""
    x = batch(16, seed=23)

    async def main():
        async with grpcaio.InferenceServerClient(server.grpc_host) as client:
            assert await client.is_server_ready()

            async def one(i):
                inp = grpcaio.InferInput("input", [1, 3, 64, 64], "FP32")
                inp.set_data_from_numpy(x[i:i + 1])
                return (await client.infer(MODEL, [inp])).as_numpy("logits")

            return await asyncio.gather(*(one(i) for i in range(16)))

    before = metric(server, "tl_batch_size")
    got = asyncio.run(main())
    np.testing.assert_allclose(np.concatenate(got), clf.predict_logits(x), **TOL)
    after = metric(server, "tl_batch_size")
    assert after["count"] - before.get("count", 0) < 16, "no two of 16 concurrent requests shared a batch"


def test_streaming(server, clf):
    """ModelStreamInfer: every request of the stream answered by id, a bad one with its error, and the stream goes on."""
    answers: queue.Queue = queue.Queue()
    client = server.grpc_client()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    x = batch(3, seed=24)
    try:
        for i in range(3):
            inp = grpcclient.InferInput("input", [1, 3, 64, 64], "FP32")
            inp.set_data_from_numpy(x[i:i + 1])
            client.async_stream_infer(MODEL, [inp], request_id=str(i))
        bad = grpcclient.InferInput("input", [1, 3, 32, 32], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3, 32, 32), np.float32))
        client.async_stream_infer(MODEL, [bad], request_id="bad")
        got = [answers.get(timeout=30) for _ in range(4)]
    finally:
        client.stop_stream()
    errors = [e for _, e in got if e is not None]
    assert len(errors) == 1 and "expected FP32 shape" in errors[0].message()
    by_id = {r.get_response().id: r.as_numpy("logits") for r, e in got if e is None}
    assert sorted(by_id) == ["0", "1", "2"]
    np.testing.assert_allclose(np.concatenate([by_id[str(i)] for i in range(3)]), clf.predict_logits(x), **TOL)


def test_statistics_and_repository_index(server):
    client = server.grpc_client()
    before = client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    infer(client, batch(2, seed=25))
    refused(lambda: infer(client, np.zeros((1, 3, 32, 32), np.float32)), grpc.StatusCode.INVALID_ARGUMENT)
    after = client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    stats = after["inference_stats"]

    def count(d, key):
        return int(d["inference_stats"].get(key, {}).get("count", 0))

    assert count(after, "success") == count(before, "success") + 1 and count(after, "fail") == count(before, "fail") + 1
    assert int(after["inference_count"]) == int(before.get("inference_count", 0)) + 2
    assert int(stats["queue"]["count"]) >= 1 and int(stats["compute_infer"]["ns"]) > 0
    assert any(int(b["batch_size"]) == 2 for b in after["batch_stats"])
    http = server.client().get_inference_statistics(MODEL)["model_stats"][0]  # the same counts over HTTP
    assert http["inference_stats"]["success"]["count"] == count(after, "success")
    assert http["inference_count"] == int(after["inference_count"])
    all_models = server.client().get_inference_statistics()["model_stats"]
    assert [m["name"] for m in all_models] == [MODEL]
    index = client.get_model_repository_index(as_json=True)["models"]
    assert index == [{"name": MODEL, "version": "1", "state": "READY"}]
    assert server.client().get_model_repository_index() == [{"name": MODEL, "version": "1", "state": "READY",
                                                              "reason": ""}]


BAD = {  # (input name, array, datatype) -> (status, message fragment), as Triton's gRPC answers them
    "wrong shape": ("input", np.zeros((1, 3, 32, 32), np.float32), "FP32", "expected FP32 shape"),
    "wrong datatype": ("input", np.zeros((1, 3, 64, 64), np.int32), "INT32", "datatype"),
    "missing input": ("pixels", np.zeros((1, 3, 64, 64), np.float32), "FP32", "takes one input, 'input'"),
    "non-image bytes": ("input", np.array([b"not a picture"], dtype=np.object_), "BYTES", "not a readable image"),
    "non-finite": ("input", np.full((1, 3, 64, 64), np.nan, np.float32), "FP32", "finite"),
    "batch over max_batch_size": ("input", np.zeros((17, 3, 64, 64), np.float32), "FP32", "batch-size must be <= 16"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests(server, case):
    name, x, datatype, fragment = BAD[case]
    inp = grpcclient.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    client = server.grpc_client()
    refused(lambda: client.infer(MODEL, [inp]), grpc.StatusCode.INVALID_ARGUMENT, fragment)
    assert client.is_server_ready() and client.is_model_ready(MODEL)


def test_unknown_model_output_and_oversized_message(server):
    client = server.grpc_client()
    refused(lambda: infer(client, batch(1), model="nope"), grpc.StatusCode.NOT_FOUND, "unknown model 'nope'")
    inp = grpcclient.InferInput("input", [1, 3, 64, 64], "FP32")
    inp.set_data_from_numpy(batch(1))
    refused(lambda: client.infer(MODEL, [inp], outputs=[grpcclient.InferRequestedOutput("probs")]),
            grpc.StatusCode.INVALID_ARGUMENT, "one output, 'logits'")
    big = np.zeros((24, 3, 64, 64), np.float32)  # 1.2 MB: over the server's 1 MB message limit
    inp = grpcclient.InferInput("input", list(big.shape), "FP32")
    inp.set_data_from_numpy(big)
    refused(lambda: client.infer(MODEL, [inp]), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert client.is_server_ready()


def test_full_queue_is_unavailable(model_file, clf):
    """Queue of 1: of 8 concurrent 32-image requests, those that find the queue full get UNAVAILABLE
    (as Triton's 'Exceeds maximum queue size'), the others their logits."""
    s = ServeProcess(model_file, "--providers", "cpu", "--name", "q", "--queue", "1", "--max-batch", "32")
    x = batch(32, seed=26)
    expected = clf.predict_logits(x)
    try:
        async def main():
            async with grpcaio.InferenceServerClient(s.grpc_host) as client:
                async def one():
                    inp = grpcaio.InferInput("input", list(x.shape), "FP32")
                    inp.set_data_from_numpy(x)
                    try:
                        return (await client.infer("q", [inp])).as_numpy("logits")
                    except InferenceServerException as e:
                        return e
                return await asyncio.gather(*(one() for _ in range(8)))

        results = asyncio.run(main())
        refusals = [r for r in results if isinstance(r, InferenceServerException)]
        answers = [r for r in results if not isinstance(r, InferenceServerException)]
        assert refusals and answers, results
        for e in refusals:
            assert e.status() == str(grpc.StatusCode.UNAVAILABLE) and "queue is full" in e.message()
        for a in answers:
            np.testing.assert_allclose(a, expected, **TOL)
        assert s.grpc_client().is_server_ready()
    finally:
        assert s.stop() == 0, "".join(s.lines)


def test_sigterm_drains_queued_grpc_and_http_requests(model_file, clf):
    """gRPC and HTTP requests waiting for the same batch when SIGTERM arrives are all answered; exit 0."""
    over_grpc = lambda s, x: infer(s.grpc_client(), x, model="drain")  # noqa: E731
    over_http = lambda s, x: http_infer(s.client(), x, model="drain")  # noqa: E731
    assert_sigterm_drains(model_file, clf, [over_grpc, over_http, over_grpc, over_http])


def test_grpc_port_taken_and_no_grpc(tl_cli, model_file):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = tl_cli("serve", model_file, "--port", "0", "--grpc-port", port, "--providers", "cpu")
        assert_user_error(r, "cannot listen", "--grpc-port")
    s = ServeProcess(model_file, "--providers", "cpu", "--no-grpc")
    try:
        assert s.grpc_host is None and s.client().is_server_ready()
    finally:
        assert s.stop() == 0


def test_raw_protocol_messages(server, clf):
    """What tritonclient does not send: typed ``contents`` instead of raw bytes, raw contents that do not
    match the inputs, a classification parameter that is no integer; built from the protocol's messages."""
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    x = batch(1, seed=28)
    with grpc.insecure_channel(server.grpc_host) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name=MODEL)
        req.inputs.add(name="input", datatype="FP32", shape=list(x.shape)).contents.fp32_contents.extend(x.ravel())
        answer = stub.ModelInfer(req)
        got = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(list(answer.outputs[0].shape))
        np.testing.assert_allclose(got, clf.predict_logits(x), **TOL)

        mismatched = pb.ModelInferRequest(model_name=MODEL, raw_input_contents=[x.tobytes(), x.tobytes()])
        mismatched.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
        short = pb.ModelInferRequest(model_name=MODEL, raw_input_contents=[x.tobytes()[:100]])
        short.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
        ranked = pb.ModelInferRequest(model_name=MODEL, raw_input_contents=[x.tobytes()])
        ranked.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
        ranked.outputs.add(name="logits").parameters["classification"].string_param = "two"
        empty = pb.ModelInferRequest(model_name=MODEL)
        for bad, fragment in ((mismatched, "2 raw_input_contents for 1 inputs"), (short, "needs 49152 bytes"),
                              (ranked, "classification must be a non-negative integer"), (empty, "at least one input")):
            with pytest.raises(grpc.RpcError) as e:
                stub.ModelInfer(bad)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in e.value.details()


def test_serve_without_grpcio(model_file, tmp_path):
    """Without grpcio / tritonclient[grpc], tl serve says what to install, or to serve HTTP only."""
    import os

    from conftest import run_tl_subprocess
    from test_serve import BLOCKER_FASTAPI

    (tmp_path / "sitecustomize.py").write_text(BLOCKER_FASTAPI.replace('("fastapi", "uvicorn", "starlette")',
                                                                       '("grpc", "tritonclient")'))
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    r = run_tl_subprocess("serve", model_file, "--port", "0", "--grpc-port", "0", env=env, timeout=120)
    assert_user_error(r, "grpcio and tritonclient[grpc]", "pip install 'tl[serve]'", "--no-grpc")
