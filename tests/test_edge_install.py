"""The edge box, installed for real: Python 3.10 (JetPack 6's), only the runtime extras, no torch.

One virtual environment is made per run with ``pip install '.[cpu,serve,jetson]'`` from this
checkout (the JetPack 6 set minus NVIDIA's own onnxruntime-gpu and TensorRT, which exist only
for the Jetson), and everything the Jetson workflow runs there is run through its `tl`: predict,
info, serve (one request), the torch-free export of model.onnx, bench on what it built, and the
torch commands, which must end in one `error:` line naming the extra. Skipped where Python 3.10 or PyPI is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, CliResult, assert_user_error
from tl.benchmarks.serve_load import READY

pytestmark = pytest.mark.slow

EXTRAS = "cpu,serve,jetson"
OFFLINE = ("Could not find a version", "No matching distribution", "Failed to establish a new connection",
           "Temporary failure in name resolution", "Network is unreachable")


def _python310() -> str | None:
    found = shutil.which("python3.10")
    candidates = [found] if found else []
    candidates += sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.10*/bin/python3.10"))
    for c in candidates:
        ok = subprocess.run([c, "-c", "import sys, venv; sys.exit(sys.version_info[:2] != (3, 10))"],
                            capture_output=True).returncode == 0
        if ok:
            return c
    return None


@pytest.fixture(scope="module")
def edge(tmp_path_factory) -> Path:
    """The edge environment's bin folder."""
    python = _python310()
    if python is None:
        pytest.skip("no Python 3.10 here (JetPack 6's Python; pyenv install 3.10 to run this test)")
    venv = tmp_path_factory.mktemp("edge") / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    # A copy of the tree: building from the checkout itself would leave build/ in it.
    src = tmp_path_factory.mktemp("edge_src") / "tl"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                             "runs", "exports", "bench", "results"))
    p = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{src}[{EXTRAS}]"],
                       capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        if any(s in p.stderr for s in OFFLINE):
            pytest.skip(f"PyPI not reachable for the edge install: {p.stderr.strip().splitlines()[-1]}")
        raise AssertionError(f"pip install '.[{EXTRAS}]' on Python 3.10 failed:\n{p.stderr[-3000:]}")
    return venv / "bin"


def run_edge(edge: Path, *args, timeout: int = 600, cwd: Path | None = None) -> CliResult:
    env = {k: v for k, v in os.environ.items() if k not in ("TL_DEBUG", "PYTHONPATH", "VIRTUAL_ENV")}
    p = subprocess.run([str(edge / "tl"), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                       env=env, cwd=cwd or Path.cwd())
    return CliResult(p.returncode, p.stdout, p.stderr)


@pytest.fixture(scope="module")
def server_onnx(make_checkpoint, tmp_path_factory) -> Path:
    """model.onnx as the GPU server exports it (spec and checkpoint stamp inside)."""
    from tl.export import ExportOptions, export

    out = tmp_path_factory.mktemp("server") / "shapes"
    export(ExportOptions(checkpoint=make_checkpoint(image_size=32), out=out, onnx=True, parity_count=4))
    return out / "model.onnx"


def test_edge_env_has_no_torch_and_numpy_1(edge):
    p = subprocess.run([str(edge / "python"), "-c", "import importlib.util as u, numpy, sys;"
                        "print(u.find_spec('torch') is None, numpy.__version__, sys.version_info[:2])"],
                       capture_output=True, text=True)
    no_torch, numpy_version, _ = p.stdout.split(" ", 2)
    assert no_torch == "True" and numpy_version.startswith("1."), p.stdout  # JetPack 6's apt modules need numpy 1.x


def test_edge_predict_info_and_torch_free_export(edge, server_onnx, synth_data, tmp_path):
    r = run_edge(edge, "info", server_onnx)
    assert r.code == 0 and "onnxruntime" in r.out, r.err
    out = tmp_path / "device"
    r = run_edge(edge, "export", server_onnx, "--fp16", "--int8", "--calib-dir", synth_data / "train",
                 "--calib-count", "16", "--val-dir", synth_data / "val", "--parity-count", "12", "-o", out)
    assert r.code == 0, r.err
    report = json.loads((out / "export.json").read_text())
    assert report["reference"].startswith("model.onnx") and report["checkpoint"] is None
    assert {a["file"]: a["status"] in ("ok", "warning") for a in report["artifacts"]} == {
        "model.onnx": True, "model.fp16.onnx": True, "model.int8.onnx": True}
    for name in ("model.fp16.onnx", "model.int8.onnx"):
        p = run_edge(edge, "predict", out / name, synth_data / "val", "--format", "json")
        assert p.code == 0, p.err
        rows = [json.loads(line) for line in p.out.splitlines()]
        assert rows and all(row["label"] in ("circle", "square", "triangle", "cross") for row in rows)

    # which to ship on this box: bench without torch compares every file with the FP32 ONNX file
    b = run_edge(edge, "bench", out, "--batch-sizes", "1,2", "--iters", "3", "--warmup", "0", "--images", "8",
                 "--out", tmp_path / "bench")
    assert b.code == 0, b.err
    bench = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert bench["environment"]["reference"] == "ort fp32 (model.onnx)" and bench["environment"]["torch"] is None
    assert {r["precision"] for r in bench["rows"]} >= {"fp32", "fp16", "int8"}
    assert all(r["agreement"] is not None for r in bench["rows"] if r["status"] == "ok")
    assert not (tmp_path / "bench" / "bench.png").exists()  # matplotlib is the train extra's


def test_edge_serve_answers_one_request(edge, server_onnx):
    args = [str(edge / "tl"), "serve", str(server_onnx), "--port", "0"]
    if "--grpc-port" in run_edge(edge, "serve", "--help").out:
        args += ["--grpc-port", "0"]
    env = {k: v for k, v in os.environ.items() if k not in ("TL_DEBUG", "PYTHONPATH")}
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        url, lines, deadline = None, [], time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            found = READY.search(line)
            url = found[1] if found else None
        assert url, "".join(lines)
        body = {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.0] * 3 * 32 * 32}]}
        meta = json.loads(urllib.request.urlopen(f"{url}/v2/models/model", timeout=30).read())
        body["inputs"][0]["name"] = meta["inputs"][0]["name"]
        req = urllib.request.Request(f"{url}/v2/models/model/infer", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(req, timeout=60).read())
        assert answer["outputs"][0]["shape"] == [1, 4]
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_edge_torch_commands_name_the_extra(edge, synth_data, tmp_path):
    best = tmp_path / "best.pt"
    best.write_bytes(b"a checkpoint needs torch to be read")
    for args in (["train", synth_data, "--out", tmp_path / "run"], ["export", best], ["bench", best],
                 ["demo", "--out", tmp_path / "demo"], ["data", "synth", tmp_path / "d", "--classes", "2",
                                                        "--per-class", "2"]):
        r = run_edge(edge, *args)
        if args[0] == "data":  # torch-free: the demo data is made on the box too
            assert r.code == 0, r.err
            continue
        assert_user_error(r, f"tl {args[0]} needs torch", "pip install 'tl[train]'")
        assert len([line for line in r.err.splitlines() if line.strip()]) == 1, r.err
    assert not (tmp_path / "demo").exists() and not (tmp_path / "run").exists()


def test_gpu_check_without_torch_says_what_is_missing(edge, tmp_path):
    env = {**os.environ, "PYTHON": str(edge / "python")}
    p = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode != 0
    assert "error: missing Python packages: torch" in p.stderr, (p.stdout, p.stderr)
