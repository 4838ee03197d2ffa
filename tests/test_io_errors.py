"""Every I/O failure is one `error:` line naming the file and why, and leaves no partial file.

Through the CLI in a fresh interpreter: unwritable folders with DAC override dropped (root
ignores file modes), a file where a folder is expected, a folder where a file is expected,
and a full disk simulated by a file-size limit (Python ignores SIGXFSZ, so writes get EFBIG).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, CliResult, assert_user_error

SETPRIV = shutil.which("setpriv")
TINY = ["--arch", "mobilenet_v3_small", "--weights", "none", "--image-size", "32", "--epochs", "1",
        "--workers", "0", "--no-progress"]
QUICK_BENCH = ["--backends", "ort", "--batch-sizes", "1", "--iters", "2", "--warmup", "0", "--images", "4"]


def run_tl(*args, fsize: int | None = None, no_dac: bool = False, env: dict | None = None) -> CliResult:
    """`python -m tl ARGS` with a file-size limit and/or without the capability to ignore file modes."""
    cmd = [sys.executable, "-m", "tl", *map(str, args)]
    if no_dac and os.geteuid() == 0:
        if SETPRIV is None:
            pytest.skip("running as root without setpriv: cannot make a folder unwritable")
        cmd = [SETPRIV, "--reuid=0", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all", "--", *cmd]

    def limit():
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    full_env = {**os.environ, **(env or {})}
    full_env.pop("TL_DEBUG", None)
    p = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=600, cwd=REPO, preexec_fn=limit)
    return CliResult(p.returncode, p.stdout, p.stderr)


@pytest.fixture
def read_only(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from tl.train.synth import SynthOptions, make_dataset

    return make_dataset(tmp_path_factory.mktemp("io") / "data", SynthOptions(classes=2, per_class=6, size=32))


def no_temp_files(folder: Path) -> bool:
    return not any(p.name.endswith(".tmp") for p in folder.rglob("*"))


@pytest.mark.parametrize("case", ["folder", "under_a_file", "read_only", "disk_full"])
def test_predict_output_that_cannot_be_written(case, make_onnx, tiny_data, tmp_path, read_only):
    model = make_onnx()[0]
    (tmp_path / "file").write_text("x")
    output, kwargs, why = {
        "folder": (tmp_path, {}, "is a folder"),
        "under_a_file": (tmp_path / "file" / "out.txt", {}, "file is a file, not a folder"),
        "read_only": (read_only / "out.txt", {"no_dac": True}, "permission denied"),
        "disk_full": (tmp_path / "out.txt", {"fsize": 100}, "File too large (the disk is full"),
    }[case]
    broken = tmp_path / "broken.png"  # warned about while classifying
    broken.write_bytes(b"not a png")
    r = run_tl("predict", model, tiny_data / "val", broken, "-o", output, **kwargs)
    # only a full disk cannot be seen before the images are classified
    assert (str(broken) in r.err) == (case == "disk_full"), r.err
    if case == "folder":  # refused before classifying, by predict's own -o check
        assert_user_error(r, f"-o {output} is a folder; give a file name")
    else:
        assert_user_error(r, f"could not write {output}", why)
    assert (tmp_path / "file").read_text() == "x"
    if case != "folder":
        assert not output.exists()
    assert no_temp_files(tmp_path)


def test_train_out_unwritable_is_refused_before_training(tiny_data, tmp_path, read_only):
    r = run_tl("train", tiny_data, *TINY, "--out", read_only / "run", no_dac=True)
    assert_user_error(r, f"--out {read_only / 'run'}", "permission denied")
    (tmp_path / "file").write_text("x")
    r = run_tl("train", tiny_data, *TINY, "--out", tmp_path / "file" / "run")
    assert_user_error(r, "--out", f"{tmp_path / 'file'} is a file")
    assert "epoch" not in r.out


def test_train_disk_full_names_the_checkpoint(tiny_data, tmp_path):
    run = tmp_path / "run"
    r = run_tl("train", tiny_data, *TINY, "--out", run, fsize=1_000_000)  # best.pt is ~6 MB
    assert_user_error(r, f"could not write {run / 'best.pt'}", "File too large (the disk is full")
    assert not (run / "best.pt").exists() and not (run / "last.pt").exists()
    assert no_temp_files(run)


def test_export_out_unwritable(make_checkpoint, tmp_path, read_only):
    ckpt = make_checkpoint(image_size=32)
    r = run_tl("export", ckpt, "--out", read_only / "x", no_dac=True)
    assert_user_error(r, f"--out {read_only / 'x'}", "permission denied")


def test_bench_out_unwritable_and_disk_full(make_onnx, tmp_path, read_only):
    model = make_onnx()[0]
    r = run_tl("bench", model, *QUICK_BENCH, "--out", read_only / "b", no_dac=True)
    assert_user_error(r, f"--out {read_only / 'b'}", "permission denied")
    assert "p50" not in r.out  # refused before timing
    out = tmp_path / "b"
    r = run_tl("bench", model, *QUICK_BENCH, "--out", out, fsize=30_000)  # bench.png is larger
    assert_user_error(r, f"could not write {out / 'bench.png'}", "File too large")
    assert not (out / "bench.png").exists() and no_temp_files(out)


def test_demo_out_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    r = run_tl("demo", "--out", tmp_path / "file" / "demo")
    assert_user_error(r, "--out", f"{tmp_path / 'file'} is a file")


def test_synth_out_unwritable(read_only):
    r = run_tl("data", "synth", read_only / "d", "--classes", "2", "--per-class", "2", "--size", "16", no_dac=True)
    assert_user_error(r, f"OUT {read_only / 'd'}", "permission denied")


def test_an_os_error_naming_a_file_is_one_line(make_onnx, tmp_path):
    """The last resort in tl.cli.main: an OSError that names its file and that nothing else wrapped
    (here an export folder whose export.json cannot be read)."""
    export = tmp_path / "export"
    export.mkdir()
    shutil.copy(make_onnx()[0], export / "model.onnx")
    (export / "export.json").write_text("{}")
    (export / "export.json").chmod(0)
    try:
        r = run_tl("bench", export, *QUICK_BENCH, no_dac=True)
    finally:
        (export / "export.json").chmod(0o644)
    assert_user_error(r, f"{export / 'export.json'}: permission denied")


def test_export_triton_repo_unwritable(make_checkpoint, tmp_path, read_only):
    """Refused before the export runs: no export folder content, nothing in REPO."""
    out = tmp_path / "exp"
    r = run_tl("export", make_checkpoint(image_size=32), "--out", out, "--triton", read_only / "repo", no_dac=True)
    assert_user_error(r, f"--triton {read_only / 'repo'}", "permission denied")
    assert not (out / "export.json").exists() and not (read_only / "repo").exists()
