"""tl predict --ray's bad inputs, with no Ray running in this process (tests/test_ray.py runs one):
options that do not fit, an address that does not answer, Ray not installed, and an import of the
runtime that must not bring Ray in."""

from __future__ import annotations

import os
import socket
import time

import pytest

from conftest import assert_user_error, run_tl_subprocess
from tl.runtime.errors import TLError


@pytest.fixture(scope="module")
def model(make_onnx):
    return make_onnx()[0]


@pytest.fixture(scope="module")
def photos(synth_data) -> object:
    return synth_data / "val"


@pytest.mark.parametrize("args, fragments", [
    (["--ray"], ["--ray writes its results to a file", "-o results.parquet"]),
    (["--ray", "-o", "{tmp}/r.json"], ["Parquet or CSV", ".parquet or .csv"]),
    (["--ray", "-o", "{tmp}/r.csv", "--format", "json"], ["--format json does not apply"]),
    (["--ray", "-o", "{tmp}/r.csv", "--every", "2"], ["--every apply to a video"]),
    (["--actors", "2"], ["--actors applies to a run on Ray"]),
    (["--ray", "-o", "{model}"], ["Parquet or CSV"]),
])
def test_cli_bad_options(tl_cli, model, photos, tmp_path, args, fragments):
    args = [a.format(tmp=tmp_path, model=model) for a in args]
    assert_user_error(tl_cli("predict", model, photos, *args), *fragments)


def test_unreachable_addresses_are_one_line(tmp_path, model, photos):
    from tl.runtime.raydata import RayOptions, connected

    with pytest.raises(TLError, match=r"cannot reach the Ray cluster within 0.5 s"):
        with connected(RayOptions(address="ray://127.0.0.1:1", connect_timeout=0.5)):
            pass
    with socket.socket() as silent:  # takes connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        start = time.monotonic()
        with pytest.raises(TLError, match=r"within 1 s \(no gRPC server answered\)"):
            with connected(RayOptions(address=f"ray://127.0.0.1:{silent.getsockname()[1]}", connect_timeout=1)):
                pass
        assert time.monotonic() - start < 10
    with pytest.raises(TLError, match="give auto, ray://HOST:PORT or HOST:PORT"):
        with connected(RayOptions(address="somewhere")):
            pass
    r = run_tl_subprocess("predict", model, photos, "-o", tmp_path / "r.parquet", "--ray=ray://127.0.0.1:1",
                          timeout=120)
    assert_user_error(r, "--ray ray://127.0.0.1:1: cannot reach the Ray cluster", "ray start --head")
    assert not (tmp_path / "r.parquet").exists()


def test_without_ray_installed(tmp_path, model, photos):
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(BLOCK_RAY)
    r = run_tl_subprocess("predict", model, photos, "--ray", "-o", tmp_path / "r.parquet", env={"PYTHONPATH": os.pathsep.join(
        [str(tmp_path), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}, timeout=120)
    assert_user_error(r, "needs Ray Data", "pip install 'tl[ray]'")
    assert len([l for l in r.err.splitlines() if l.strip()]) == 1, r.err


def test_importing_the_runtime_does_not_import_ray():
    import subprocess
    import sys

    code = ("import sys, tl.runtime, tl.runtime.raydata, tl.commands.predict; "
            "assert 'ray' not in sys.modules and 'pyarrow' not in sys.modules, 'imported'; "
            "assert tl.runtime.RayOptions is tl.runtime.raydata.RayOptions")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


BLOCK_RAY = """
import sys

class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ray":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Block())
"""
