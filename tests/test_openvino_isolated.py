"""tests/test_runtime_openvino.py in a pytest process of its own (see OPENVINO_IN_PROCESS in conftest.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from conftest import OPENVINO_IN_PROCESS, REPO

# find_spec, not importorskip: importing openvino here would put it in this pytest process.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs openvino (the openvino extra)")


def test_openvino_module_in_its_own_interpreter():
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"tests/{OPENVINO_IN_PROCESS}"],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert " passed" in p.stdout and "failed" not in p.stdout
