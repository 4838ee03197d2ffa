"""tl predict --ray ADDRESS against a running cluster: a one-node head started here with `ray start --head`
(token authentication on, as Ray's default), joined by its GCS address and through the Ray Client
(ray://), with the answers of a local run. The head's processes are ended by pid when the module ends."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import assert_user_error, run_tl_subprocess
from tl.runtime.predict import PredictOptions, predict_files, text_name

RAY = Path(sys.executable).with_name("ray")
AUTH = {"RAY_AUTH_MODE": "token"}  # a driver joining by address sends the token only when told to


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _head_processes(temp: Path, gcs_port: int) -> list[int]:
    """The head's processes and their descendants: those whose command line names its temp folder, and
    its Ray Client proxy and per-driver servers, which name only its GCS address (``--address=IP:PORT``)
    and outlive `ray start`, whose child the proxy is, as children of init."""
    parents, found = {}, []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            args = (d / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if any(str(temp).encode() in a or (a.startswith(b"--address=") and a.endswith(f":{gcs_port}".encode()))
               for a in args):
            found.append(int(d.name))
    changed = True
    while changed:
        extra = [p for p, pp in parents.items() if pp in found and p not in found]
        found += extra
        changed = bool(extra)
    return found


def _end(pids: list[int]) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):  # gcs_server ignores SIGTERM
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.2)


@contextlib.contextmanager
def _running_head(temp: Path, env: dict | None = None) -> Iterator[dict]:
    """`ray start --head` with its GCS and Ray Client ports; every process of it ended afterwards."""
    gcs, client = _free_port(), _free_port()
    cmd = [str(RAY), "start", "--head", f"--port={gcs}", f"--ray-client-server-port={client}", "--num-cpus=2",
           "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, **AUTH, **(env or {})})
    try:
        assert p.returncode == 0, p.stderr[-2000:]
        yield {"gcs": f"127.0.0.1:{gcs}", "client": f"ray://127.0.0.1:{client}", "gcs_port": gcs}
    finally:
        _end(_head_processes(temp, gcs))


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    with _running_head(tmp_path_factory.mktemp("rayhead")) as h:
        yield h


@pytest.fixture(scope="module")
def model(make_onnx):
    return make_onnx()[0]


@pytest.mark.parametrize("kind", ["gcs", "client"])
def test_join_a_running_cluster(head, model, synth_data, tmp_path, kind):
    import pyarrow.parquet as pq

    photos = synth_data / "val"
    out = tmp_path / "r.parquet"
    r = run_tl_subprocess("predict", model, photos, "--top-k", "2", f"--ray={head[kind]}", "-o", out, env=AUTH,
                          timeout=240)
    assert r.code == 0, r.err[-3000:]
    assert f"on the Ray cluster at {head[kind]}" in r.err
    rows = {row["path"]: row for row in pq.read_table(out).to_pylist()}
    plain = predict_files(PredictOptions(model=model, paths=[photos], top_k=2)).predictions
    assert len(rows) == len(plain)
    for p in plain:
        row = rows[text_name(p.source)]
        assert (row["label"], row["score"], row["error"]) == (p.label, p.score, None)


@pytest.mark.slow
def test_a_client_server_that_cannot_start(model, synth_data, tmp_path_factory):
    """A head whose Ray Client proxy cannot start the per-driver server (a sitecustomize ends that
    process as it starts, as a crash would; the proxy waits 2 s for it instead of 30): tl connects three
    times, warning each time, then says what the head said in one error line; the head's processes,
    the proxy and the per-driver servers too, are all ended."""
    tmp_path = tmp_path_factory.mktemp("rh")  # short: Ray's socket paths under it must fit in 107 bytes
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys\nif '--mode=specific-server' in sys.argv:\n    os._exit(3)\n")
    temp = tmp_path / "h"
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
           "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "2"}
    with _running_head(temp, env=env) as h:
        r = run_tl_subprocess("predict", model, synth_data / "val", f"--ray={h['client']}", "-o",
                              tmp_path / "r.parquet", env=AUTH, timeout=240)
        assert_user_error(r, f"cannot start or join the Ray cluster at {h['client']} (3 attempts)",
                          "the cluster's Ray Client server failed: RuntimeError: ")
        assert r.err.count("connecting again") == 2, r.err
        assert not (tmp_path / "r.parquet").exists()
        logs = (next(temp.glob("session_*/logs")) / "ray_client_server.err").read_text()
        assert logs.count("New data connection from client") == 3, logs[-3000:]
    assert _head_processes(temp, h["gcs_port"]) == []
