"""tl predict --ray ADDRESS against a running cluster: a one-node head started here with `ray start --head`
(token authentication on, as Ray's default), joined by its GCS address and through the Ray Client
(ray://), with the answers of a local run. The head's processes are ended by pid when the module ends."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_tl_subprocess
from tl.runtime.predict import PredictOptions, predict_files, text_name

RAY = Path(sys.executable).with_name("ray")
AUTH = {"RAY_AUTH_MODE": "token"}  # a driver joining by address sends the token only when told to


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_under(marker: str) -> list[int]:
    """The head's processes: those whose command line names its temp folder, and their descendants."""
    parents, found = {}, []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if marker.encode() in (d / "cmdline").read_bytes():
                found.append(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
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


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    temp = tmp_path_factory.mktemp("rayhead")
    gcs, client = _free_port(), _free_port()
    cmd = [str(RAY), "start", "--head", f"--port={gcs}", f"--ray-client-server-port={client}", "--num-cpus=2",
           "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, **AUTH})
    try:
        assert p.returncode == 0, p.stderr[-2000:]
        yield {"gcs": f"127.0.0.1:{gcs}", "client": f"ray://127.0.0.1:{client}"}
    finally:
        _end(_processes_under(str(temp)))


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
