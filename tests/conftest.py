"""Shared fixtures: synthetic data, checkpoints made by real models, a CLI runner."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# The one module that runs OpenVINO inside its pytest process runs in a pytest of its own
# (tests/test_openvino_isolated.py starts it): once OpenVINO's CPU plugin has run in a process,
# waiting there on a child process (a DataLoader worker, a tl subprocess) can end it with SIGSEGV.
OPENVINO_IN_PROCESS = "test_runtime_openvino.py"


def pytest_ignore_collect(collection_path, config):
    """Not even collected here (collecting imports openvino into this process), unless the file was
    named on the command line (as test_openvino_isolated.py's own pytest names it)."""
    if collection_path.name != OPENVINO_IN_PROCESS:
        return None
    named = any(Path(arg.split("::")[0]).resolve() == collection_path.resolve() for arg in config.args)
    return None if named else True


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def tl_cli(capsys):
    """Run `tl ARGS...` in-process through the real entry point (error handling included)."""
    from tl.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


def run_tl_subprocess(*args: str, env: dict | None = None, timeout: int = 600) -> CliResult:
    """`python -m tl ARGS...` in a fresh interpreter (for tracebacks, import isolation)."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("TL_DEBUG", None)
    p = subprocess.run(
        [sys.executable, "-m", "tl", *map(str, args)],
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO,
    )
    return CliResult(p.returncode, p.stdout, p.stderr)


def sigint_default() -> None:
    """Popen preexec_fn for the Ctrl-C tests: SIGINT back to its default in the child. A pytest
    started as a background job of a non-interactive shell runs with SIGINT ignored, children
    inherit that, and Python then never raises KeyboardInterrupt: the test would time out on how
    it was launched, not on tl."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def skip_where_installed(module: str, reason: str) -> None:
    """Skip a test of the message tl gives without ``module`` where that module imports."""
    try:
        importlib.import_module(module)
    except ImportError:
        return
    pytest.skip(reason)


def assert_user_error(result: CliResult, *fragments: str) -> None:
    """A user mistake: non-zero exit, one `error:` line, no traceback."""
    assert result.code != 0, (result.out, result.err)
    assert "Traceback" not in result.err and "Traceback" not in result.out, result.err
    lines = [l for l in result.err.splitlines() if l.startswith("error: ")]
    assert lines, f"no 'error:' line in stderr: {result.err!r}"
    for f in fragments:
        assert f.lower() in result.err.lower(), f"{f!r} not in {result.err!r}"


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """4 classes x 24 images at 48 px, train/ and val/ folders."""
    from tl.train.synth import SynthOptions, make_dataset

    return make_dataset(tmp_path_factory.mktemp("synth") / "data", SynthOptions(classes=4, per_class=24, size=48, seed=0))


# The architecture of the tests that export. torch.onnx's dynamo exporter (symbolic batch size)
# takes ~5 s for resnet18 at 32 px on the 2-core CPU and ~15 s for mobilenet_v3_small, whose many
# small ops each cost symbolic-shape arithmetic; training tests keep mobilenet_v3_small (fewer weights).
EXPORT_ARCH = "resnet18"


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory):
    """Factory: an untrained torchvision model saved in tl's checkpoint format (cached per args)."""
    cache: dict = {}

    def make(arch: str = EXPORT_ARCH, classes=("circle", "square", "triangle", "cross"),
             image_size: int = 64, resize_mode: str = "squash", seed: int = 0, data: str | None = None) -> Path:
        key = (arch, tuple(classes), image_size, resize_mode, seed, data)
        if key in cache:
            return cache[key]
        import torch

        from tl.runtime.spec import ModelSpec
        from tl.train.checkpoint import clean_state_dict, save_checkpoint
        from tl.train.models import build_model

        torch.manual_seed(seed)
        model = build_model(arch, len(classes), weights="none").eval()
        # Randomly initialised BN layers have running stats 0/1; give them data-like stats.
        spec = ModelSpec.create(arch=arch, classes=list(classes), image_size=image_size, resize_mode=resize_mode)
        path = tmp_path_factory.mktemp("ckpt") / f"{arch}_{image_size}.pt"
        save_checkpoint(path, {
            "spec": spec.to_dict(), "state_dict": clean_state_dict(model), "epoch": 0,
            "best_metric": {"val_acc": 0.0, "val_loss": 0.0},
            "args": {"data": data, "arch": arch, "image_size": image_size, "seed": seed},
        })
        cache[key] = path
        return path

    return make


@pytest.fixture(scope="session")
def make_onnx(make_checkpoint, tmp_path_factory):
    """Factory (runtime tests): checkpoint -> FP32 ONNX through tl's exporter, cached; returns (onnx, checkpoint)."""
    cache: dict = {}

    def make(arch: str = EXPORT_ARCH, image_size: int = 64, resize_mode: str = "squash") -> tuple[Path, Path]:
        key = (arch, image_size, resize_mode)
        if key not in cache:
            from tl.export.onnx import export_onnx
            from tl.train.checkpoint import load_model

            ckpt = make_checkpoint(arch=arch, image_size=image_size, resize_mode=resize_mode)
            model, spec, _ = load_model(ckpt)
            path = tmp_path_factory.mktemp("onnx") / f"{arch}_{image_size}_{resize_mode}.onnx"
            cache[key] = (export_onnx(model, spec, path), ckpt)
        return cache[key]

    return make
