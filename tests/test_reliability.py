"""Issue 9, sections 1 and 2: outputs never destroy inputs, stale or mixed artifacts never pass as fresh.

One mechanism per class, each checked through the CLI where the CLI is the boundary:
the output-folder lock (train, export, bench), predict's -o guard, export's staging folder
and checkpoint stamps, bench's provenance check, and the Classifier's boundary checks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, assert_user_error, run_tl_subprocess
from tl.runtime.artifact import CHECKPOINT_KEY, onnx_metadata
from tl.runtime.errors import TLError
from tl.runtime.files import LOCK_NAME, output_lock, sha256_file

TINY = ["--arch", "mobilenet_v3_small", "--weights", "none", "--image-size", "32", "--workers", "0", "--no-progress"]
ENV = {"OMP_NUM_THREADS": "1"}


def _popen_tl(*args) -> subprocess.Popen:
    env = {**{k: v for k, v in os.environ.items() if k != "TL_DEBUG"}, **ENV}
    return subprocess.Popen([sys.executable, "-m", "tl", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """Two tiny datasets with different classes (2 and 3), as in the issue's mixed run folder."""
    from tl.train.synth import SynthOptions, make_dataset

    root = tmp_path_factory.mktemp("small")
    return (make_dataset(root / "two", SynthOptions(classes=2, per_class=8, size=32, seed=0)),
            make_dataset(root / "three", SynthOptions(classes=3, per_class=8, size=32, seed=1)))


# -- 1. the output-folder lock -----------------------------------------------------------------


def test_lock_names_its_holder_and_leaves_no_file(tmp_path):
    folder = tmp_path / "out"
    with output_lock(folder, "tl export"):
        assert json.loads((folder / LOCK_NAME).read_text())["command"] == "tl export"
        with pytest.raises(TLError, match=r"is in use by `tl export` \(pid \d+, since \d\d:\d\d:\d\d\); wait"):
            with output_lock(folder, "tl bench"):
                pass
    assert list(folder.iterdir()) == []  # the lock file is no artifact
    (folder / LOCK_NAME).write_text('{"pid": 1, "command": "tl train", "since": 0}')  # left by a killed command
    with output_lock(folder, "tl train"):  # the kernel dropped that lock with its process: free
        pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(TLError, match="is a file"):
        with output_lock(tmp_path / "file", "tl bench"):
            pass


def test_two_trains_into_one_folder_never_mix(small_data, tmp_path):
    """The issue's race: two runs a moment apart into one --out. One wins; the other is refused."""
    out = tmp_path / "run"
    two, three = small_data
    first = _popen_tl("train", two, *TINY, "--epochs", "1", "--batch-size", "4", "--out", out)
    second = _popen_tl("train", three, *TINY, "--epochs", "1", "--batch-size", "4", "--out", out)
    outputs = [p.communicate(timeout=300) for p in (first, second)]
    results = [(p.returncode, o, e) for p, (o, e) in zip((first, second), outputs)]
    ok = [r for r in results if r[0] == 0]
    refused = [r for r in results if r[0] != 0]
    assert len(ok) == 1 and len(refused) == 1, results
    code, _, err = refused[0]
    assert "Traceback" not in err and err.count("error: ") == 1, err
    assert "is in use by `tl train` (pid" in err or "already holds a run" in err, err
    import torch

    classes = json.loads((out / "spec.json").read_text())["classes"]
    for name in ("best.pt", "last.pt"):
        assert torch.load(out / name, weights_only=True)["spec"]["classes"] == classes
    assert len(json.loads((out / "metrics.jsonl").read_text().splitlines()[0])) > 0
    assert not (out / LOCK_NAME).exists()
