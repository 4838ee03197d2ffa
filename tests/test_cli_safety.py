"""Safety of the command layer: special files written as streams, folders the demo did not write left
alone, empty paths refused, synth options checked, file names shown escaped, no empty or partial output
left by a refused or failed command, and the temporaries of killed commands cleaned up."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import assert_user_error
from tl.runtime.images import list_images


@pytest.fixture(scope="module")
def onnx_path(make_onnx):
    return make_onnx()[0]


@pytest.fixture
def image(tmp_path, synth_data) -> Path:
    dst = tmp_path / "in" / "a.png"
    dst.parent.mkdir()
    shutil.copy(next(p for p in list_images(synth_data / "val") if p.suffix == ".png"), dst)
    return dst


def _dead_pid() -> int:
    """The pid of a process that has ended (and, moments later, is not yet reused)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# -- 4: results to special files are streamed, never put in place of the special file ---------


def test_predict_writes_a_fifo_as_a_stream(tl_cli, onnx_path, image, tmp_path):
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    r = tl_cli("predict", onnx_path, image, "--providers", "cpu", "--format", "csv", "-o", fifo)
    if reader.is_alive():  # the command failed before opening the FIFO: let the reader go
        with open(fifo, "wb"):
            pass
    reader.join(10)
    assert r.code == 0, r.err
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert got and got[0].decode().startswith("source,label,index,score,top_k\n") and "a.png" in got[0].decode()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="making a device node needs root")
def test_predict_writes_a_character_device_as_a_stream(tl_cli, onnx_path, image, tmp_path):
    # A private node of the null device: the same kind of file as /dev/null, without risking the real one.
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.stat("/dev/null").st_rdev)
    r = tl_cli("predict", onnx_path, image, "--providers", "cpu", "-o", null)
    assert r.code == 0, r.err
    assert stat.S_ISCHR(os.stat(null).st_mode)
    r = tl_cli("predict", onnx_path, image, "--providers", "cpu", "-o", "/dev/null", "--format", "json")
    assert r.code == 0, r.err
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_predict_dash_is_stdout(tl_cli, onnx_path, image, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = tl_cli("predict", onnx_path, image, "--providers", "cpu", "--format", "csv", "-o", "-")
    assert r.code == 0, r.err
    assert r.out.startswith("source,label,index,score,top_k\n")
    assert not (tmp_path / "-").exists()


def test_predict_refuses_an_unwritable_special_file_first(onnx_path, image, tmp_path):
    """A special file this user may not write is refused before the images are classified (as root, with
    the capability to ignore file modes dropped)."""
    from test_io_errors import run_tl

    target = tmp_path / "ro.fifo"
    os.mkfifo(target, 0o444)
    r = run_tl("predict", onnx_path, image, "-o", target, no_dac=True)
    assert_user_error(r, "could not write", str(target))
    assert r.out == "" and stat.S_ISFIFO(os.stat(target).st_mode)


# -- 5: tl demo deletes only what it wrote, and reuses only its own dataset --------------------


@pytest.fixture
def small_demo(monkeypatch):
    """The demo's data and train steps at test size (the CLI reads these tables when it runs)."""
    from tl.commands import demo

    monkeypatch.setitem(demo.DEMO_DATA, "per_class", 8)
    monkeypatch.setitem(demo.DEMO_TRAIN, "epochs", 1)
    monkeypatch.setitem(demo.DEMO_TRAIN, "batch_size", 16)
    monkeypatch.setitem(demo.DEMO_TRAIN, "arch", "mobilenet_v3_small")
    monkeypatch.setitem(demo.DEMO_TRAIN, "image_size", 32)
    monkeypatch.setattr(demo, "STEPS", [s for s in demo.STEPS if s[0] in ("data", "train")])
    return demo


def test_demo_twice_then_refuses_what_it_did_not_write(tl_cli, tmp_path, small_demo):
    out = tmp_path / "demo"
    for _ in range(2):  # `make demo` twice in a row: its own data reused, its own run replaced
        r = tl_cli("demo", "--out", out)
        assert r.code == 0, r.err
    assert (out / "run" / "best.pt").is_file()

    (out / "run" / "notes.txt").write_text("mine")
    r = tl_cli("demo", "--out", out)
    assert_user_error(r, str(out / "run"), "notes.txt", "pick another --out")
    assert (out / "run" / "notes.txt").read_text() == "mine" and (out / "run" / "best.pt").is_file()
    (out / "run" / "notes.txt").unlink()

    extra = out / "data" / "train" / "circle" / "mine.png"
    shutil.copy(next((out / "data" / "train" / "circle").iterdir()), extra)
    r = tl_cli("demo", "--out", out)
    assert_user_error(r, str(out / "data"), "mine.png", "not the demo's dataset")
    assert extra.is_file()


def test_demo_refuses_a_data_folder_it_did_not_write(tl_cli, tmp_path, small_demo):
    out = tmp_path / "demo"
    user = out / "data" / "train" / "cat" / "cat.jpg"
    user.parent.mkdir(parents=True)
    user.write_bytes(b"a user's photo")
    r = tl_cli("demo", "--out", out)
    assert_user_error(r, "not the demo's dataset", "cat.jpg")
    assert user.read_bytes() == b"a user's photo" and not (out / "run").exists()


def test_demo_refuses_an_export_folder_it_did_not_write(tl_cli, tmp_path, monkeypatch):
    from tl.commands import demo

    out = tmp_path / "demo"
    (out / "export").mkdir(parents=True)
    (out / "export" / "export.json").write_text('{"artifacts": [{"file": "model.onnx"}]}')
    (out / "export" / "tool.py").write_text("print('mine')")
    monkeypatch.setattr(demo, "STEPS", [s for s in demo.STEPS if s[0] == "export"])
    assert_user_error(tl_cli("demo", "--out", out), str(out / "export"), "tool.py")
    assert (out / "export" / "tool.py").is_file()
    (out / "export" / "export.json").unlink()
    (out / "export" / "tool.py").unlink()
    (out / "export" / "model.onnx").write_bytes(b"someone's model")
    assert_user_error(tl_cli("demo", "--out", out), "no readable export.json")
    assert (out / "export" / "model.onnx").is_file()


# -- 10: an empty path (an unset shell variable) is refused by every command ------------------


@pytest.mark.parametrize("args", [
    ("train", ""), ("predict", "MODEL", ""), ("predict", "", "x.png"), ("predict", "m.onnx", "x.png", "-o", ""),
    ("export", ""), ("export", "best.pt", "--out", ""), ("bench", ""), ("bench", "x", "--out", ""),
    ("serve", ""), ("info", ""), ("data", "synth", ""), ("demo", "--out", ""), ("train", "d", "--resume", ""),
])
def test_empty_path_is_refused(tl_cli, tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    r = tl_cli(*args)
    assert_user_error(r, "the path is empty")
    assert len([l for l in r.err.splitlines() if l.strip()]) == 1, r.err
    assert list(tmp_path.iterdir()) == []


def test_every_path_parameter_refuses_empty():
    """A command added later gets the check too: every path argument and option is a PathParam."""
    import click

    from tl.cli import PathParam, cli
    from tl.commands.bench import serve_load

    ctx = click.Context(cli)
    plain = []

    def walk(cmd, name):
        plain.extend(f"{name} {p.name}" for p in cmd.params
                     if isinstance(p.type, click.Path) and not isinstance(p.type, PathParam))
        if isinstance(cmd, click.Group):
            for sub in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, sub), f"{name} {sub}")

    walk(cli, "tl")
    walk(serve_load, "tl bench serve")
    assert not plain


def test_bare_tl_prints_the_help(tl_cli):
    r = tl_cli()
    assert r.code == 2 and "Usage: tl" in r.err and "Commands:" in r.err
    assert "error:" not in r.err
    r = tl_cli("data")
    assert r.code == 2 and "synth" in r.err and "error:" not in r.err


# -- 17, 23: synth options ---------------------------------------------------------------------


@pytest.mark.parametrize("args, fragment", [
    (("--seed", "-1"), "--seed must be between 0"),
    (("--per-class", "4", "--val-fraction", "0.9"), "leaves 0 training and 4 validation"),
])
def test_synth_refuses_bad_options(tl_cli, tmp_path, args, fragment):
    r = tl_cli("data", "synth", tmp_path / "d", "--classes", "2", "--size", "16", *args)
    assert_user_error(r, fragment)
    assert not (tmp_path / "d").exists()


def test_synth_that_fails_part_way_leaves_nothing(tl_cli, tmp_path, monkeypatch):
    from tl.runtime.errors import TLError
    from tl.train import synth

    written = []
    real = synth.atomic_write_bytes

    def fail_on_third(path, data):
        if len(written) == 2:
            raise TLError(f"could not write {path}: No space left on device (the disk is full)")
        written.append(path)
        real(path, data)

    monkeypatch.setattr(synth, "atomic_write_bytes", fail_on_third)
    r = tl_cli("data", "synth", tmp_path / "d", "--classes", "2", "--per-class", "4", "--size", "16")
    assert_user_error(r, "No space left")
    assert len(written) == 2 and list(tmp_path.iterdir()) == []


def test_synth_removes_what_a_killed_synth_left(tl_cli, tmp_path):
    stale = tmp_path / f".d.tl{_dead_pid()}.abcd1234.tmp"
    (stale / "train" / "circle").mkdir(parents=True)
    (stale / "train" / "circle" / "circle_0000.jpg").write_bytes(b"half")
    other = tmp_path / ".notes.tl1.x.tmp"  # pid 1 runs: not garbage
    other.write_text("keep")
    r = tl_cli("data", "synth", tmp_path / "d", "--classes", "2", "--per-class", "4", "--size", "16")
    assert r.code == 0, r.err
    assert not stale.exists() and other.exists()
    assert "removed 1 temporary file(s)" in r.err and stale.name in r.err


# -- 24: predict's warnings and errors stay one line each --------------------------------------


def test_predict_shows_file_names_escaped(tl_cli, onnx_path, image):
    bad = image.parent / "bad\nerror: forged\x1b[31m.png"
    bad.write_bytes(b"not an image")
    r = tl_cli("predict", onnx_path, image.parent, "--providers", "cpu")
    assert_user_error(r, "1 of 2 images could not be read")
    assert "\x1b" not in r.err and "forged" in r.err
    assert not any(line.startswith("error: forged") for line in r.err.splitlines()), r.err
    warning = [l for l in r.err.splitlines() if l.startswith("warning:")]
    assert len(warning) == 1 and "bad\\nerror: forged\\x1b[31m.png" in warning[0], r.err
    error = [l for l in r.err.splitlines() if l.startswith("error:")]
    assert len(error) == 1 and "bad\\nerror: forged\\x1b[31m.png" in error[0], r.err


# -- 26 and the leftovers: no empty bench folder, stale temporaries removed ---------------------


def test_refused_bench_leaves_no_folder(tl_cli, onnx_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = tl_cli("bench", onnx_path, "--backends", "eager")
    assert_user_error(r, "needs a checkpoint")
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "given" / "deeper"
    assert_user_error(tl_cli("bench", onnx_path, "--backends", "eager", "--out", out), "needs a checkpoint")
    assert list(tmp_path.iterdir()) == []


def test_lock_holder_removes_temporaries_of_ended_commands(tl_cli, onnx_path, tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    dead = out / f".bench.json.tl{_dead_pid()}.k2j4h1x9.tmp"
    dead.write_text("{half")
    alive = out / f".bench.csv.tl{os.getpid()}.a1b2c3d4.tmp"  # a running writer's: kept
    alive.write_text("x")
    mine = out / ".notes.tmp"
    mine.write_text("not tl's")
    r = tl_cli("bench", onnx_path, "--backends", "ort", "--batch-sizes", "1", "--iters", "2",
               "--warmup", "0", "--images", "2", "--device", "cpu", "--out", out)
    assert r.code == 0, r.err
    assert not dead.exists() and alive.exists() and mine.exists()
    assert "removed 1 temporary file(s)" in r.err and dead.name in r.err


def test_atomic_temp_names_carry_the_writer(tmp_path):
    from tl.runtime.files import atomic_path, remove_stale_temps

    with atomic_path(tmp_path / "x.json") as tmp:
        assert tmp.name.startswith(f".x.json.tl{os.getpid()}.") and tmp.name.endswith(".tmp")
        tmp.write_text("{}")
        assert remove_stale_temps(tmp_path) == []  # this process runs
    assert (tmp_path / "x.json").read_text() == "{}"
