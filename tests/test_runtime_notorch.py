"""The runtime works where torch (and onnx) are not installed: an edge box with `pip install tl[cpu]`.

A sitecustomize on PYTHONPATH installs a meta-path finder that makes `import torch`,
`torchvision` and `onnx` fail, exactly as on a machine without them (and any module named
in TL_TEST_BLOCK, e.g. openvino for a box without the openvino extra).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import EXPORT_ARCH, REPO, run_tl_subprocess

BLOCKER = textwrap.dedent("""
    import os, sys

    BLOCKED = ("torch", "torchvision", "onnx", "onnxscript") + tuple(filter(None, os.environ.get("TL_TEST_BLOCK", "").split(",")))

    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"No module named {name!r} (blocked by the no-torch test)")
            return None

    sys.meta_path.insert(0, _Block())
""")


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory):
    d = tmp_path_factory.mktemp("notorch")
    (d / "sitecustomize.py").write_text(BLOCKER)
    return {"PYTHONPATH": os.pathsep.join([str(d), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


@pytest.fixture(scope="module")
def onnx_path(make_onnx):
    return make_onnx()[0]


def test_blocker_really_blocks(no_torch_env):
    p = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True,
                       env={**os.environ, **no_torch_env})
    assert p.returncode != 0 and "blocked by the no-torch test" in p.stderr


def test_runtime_imports_and_predicts_without_torch(no_torch_env, onnx_path, synth_data):
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from tl.runtime import Classifier
        clf = Classifier.load({str(onnx_path)!r})
        preds = clf.predict(sys.argv[1:], top_k=2)
        print(json.dumps({{"labels": [p.label for p in preds], "precision": clf.precision,
                           "mods": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "torchvision"))}}))
    """)
    from tl.runtime.images import list_images

    files = [str(f) for f in list_images(synth_data / "val")[:4]]
    p = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, **no_torch_env}, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["mods"] == [] and out["precision"] == "fp32"

    from tl.runtime import Classifier  # same answers as with torch around

    assert out["labels"] == [x.label for x in Classifier.load(onnx_path).predict(files)]


def test_tl_help_without_torch(no_torch_env):
    import importlib.util

    from tl.cli import COMMANDS

    missing = [m for m in (v.split(":")[0] for v in COMMANDS.values()) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"command modules not written yet: {', '.join(missing)}")
    r = run_tl_subprocess("--help", env=no_torch_env, timeout=120)
    assert r.code == 0, r.err
    for cmd in COMMANDS:
        assert cmd in r.out


def test_cli_predict_info_without_torch(no_torch_env, onnx_path, synth_data):
    r = run_tl_subprocess("predict", "--help", env=no_torch_env, timeout=120)
    assert r.code == 0, r.err
    assert "--top-k" in r.out and "--providers" in r.out
    r = run_tl_subprocess("predict", onnx_path, synth_data / "val", "--format", "json", env=no_torch_env, timeout=120)
    assert r.code == 0, r.err
    assert len(r.out.strip().splitlines()) == len(list((synth_data / "val").rglob("*.*")))
    r = run_tl_subprocess("info", onnx_path, env=no_torch_env, timeout=120)
    assert r.code == 0, r.err
    assert "opset" in r.out and EXPORT_ARCH in r.out
    r = run_tl_subprocess("predict", onnx_path / "nope.onnx", synth_data, env=no_torch_env, timeout=120)
    assert r.code == 1 and r.err.startswith("error: ") and "Traceback" not in r.err


def test_openvino_backend_without_torch_and_without_openvino(no_torch_env, onnx_path, synth_data):
    files = [str(f) for f in sorted((synth_data / "val").rglob("*.png"))[:3]]
    r = run_tl_subprocess("predict", onnx_path, *files, "--backend", "openvino", "--format", "json",
                          env=no_torch_env, timeout=120)
    assert r.code == 0, r.err
    assert len(r.out.strip().splitlines()) == len(files) and "(openvino, fp32, OpenVINO" in r.err
    r = run_tl_subprocess("predict", onnx_path, *files, "--backend", "openvino",
                          env={**no_torch_env, "TL_TEST_BLOCK": "openvino"}, timeout=120)
    assert r.code == 1 and "Traceback" not in r.err, r.err
    assert r.err.startswith("error: ") and "pip install 'tl[openvino]'" in r.err
