"""Oversized, out-of-range and misplaced inputs: each is one `error:` line that says what is wrong
and what to do, before any work (not a traceback, the OOM killer or a misleading message)."""

from __future__ import annotations

import pytest

from conftest import assert_user_error, run_tl_subprocess


# -- sizes are bounded before any work ---------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["--size", "100000"], "--size must be between 16 and 4096"),
    (["--per-class", "10000000"], "--per-class must be between 2 and 100000"),
    (["--classes", "1000"], "--classes must be between 2 and 10"),
])
def test_synth_refuses_absurd_sizes_before_writing(tmp_path, args, fragment):
    r = run_tl_subprocess("data", "synth", tmp_path / "d", *args, timeout=60)
    assert_user_error(r, fragment)
    assert not (tmp_path / "d").exists()


def test_train_refuses_an_absurd_image_size_before_reading_data(tmp_path):
    r = run_tl_subprocess("train", tmp_path / "missing-data", "--image-size", "100000", "--out", tmp_path / "run",
                          timeout=60)
    assert_user_error(r, "--image-size must be between 32 and 4096 pixels for vgg16 (got 100000)")
    assert not (tmp_path / "run").exists()


# -- a spec that does not fit the model ----------------------------------------------------------

def test_spec_of_another_size_or_class_count_is_named(make_onnx, synth_data, tmp_path):
    from tl.runtime.spec import ModelSpec

    model = make_onnx()[0]  # 64 px, 4 classes
    ModelSpec.create(arch="mobilenet_v3_small", classes=list("abcd"), image_size=32).save(tmp_path / "s32.json")
    r = run_tl_subprocess("predict", model, synth_data / "val", "--spec", tmp_path / "s32.json", timeout=120)
    assert_user_error(r, "the spec does not belong to this model", "input is 3x64x64", "says 3x32x32")
    ModelSpec.create(arch="mobilenet_v3_small", classes=list("ab"), image_size=64).save(tmp_path / "s2.json")
    r = run_tl_subprocess("predict", model, synth_data / "val", "--spec", tmp_path / "s2.json", timeout=120)
    assert_user_error(r, "it outputs 4 classes", "has 2")
    assert "InvalidArgument" not in r.err


# -- messages that name the real cause --------------------------------------------------------

TINY = ["--arch", "mobilenet_v3_small", "--image-size", "32", "--epochs", "1", "--workers", "0", "--no-progress"]


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_hostile_file_is_not_a_checkpoint_and_no_weights_only_advice(synth_data, tmp_path):
    import torch

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"spec": _RunsCode(marker), "state_dict": {}}, evil)
    (tmp_path / "junk.pt").write_bytes(bytes(range(256)) * 8)
    for r in (run_tl_subprocess("export", evil, "--out", tmp_path / "x", timeout=120),
              run_tl_subprocess("train", synth_data, *TINY, "--weights", evil, "--out", tmp_path / "r", timeout=120)):
        assert_user_error(r, "Python objects (posix.system)", "weights_only=True", "never runs code")
        assert "set to `False`" not in r.err and "Re-running" not in r.err
    r = run_tl_subprocess("export", tmp_path / "junk.pt", "--out", tmp_path / "x", timeout=120)
    assert_user_error(r, "is not a tl checkpoint", "not a file that torch.save wrote")
    assert "set to `False`" not in r.err and len(r.err.splitlines()) <= 3
    assert not marker.exists()


def test_weights_of_another_architecture_are_named(synth_data, make_checkpoint, tmp_path):
    import torch
    import torchvision

    from tl.train.checkpoint import save_checkpoint

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    r = run_tl_subprocess("train", synth_data, *TINY, "--weights", tmp_path / "r18.pth", "--out", tmp_path / "r",
                          timeout=120)
    assert_user_error(r, "does not match mobilenet_v3_small: it holds resnet18 weights", "--arch resnet18")
    assert len(r.err) < 500, r.err  # no key dump
    # A checkpoint whose spec names another architecture than its weights.
    ckpt = torch.load(make_checkpoint("mobilenet_v3_small", image_size=32), weights_only=True)
    ckpt["spec"]["arch"] = "resnet18"
    save_checkpoint(tmp_path / "mixed.pt", ckpt)
    r = run_tl_subprocess("export", tmp_path / "mixed.pt", "--out", tmp_path / "x", timeout=120)
    assert_user_error(r, "do not fit resnet18", "it holds mobilenet_v3_small weights, not resnet18")
    assert len(r.err) < 500, r.err


def test_unreadable_class_folder_names_the_permission_problem(tmp_path):
    from test_io_errors import run_tl
    from tl.train.synth import SynthOptions, make_dataset

    data = make_dataset(tmp_path / "data", SynthOptions(classes=2, per_class=4, size=16))
    locked = data / "train" / "circle"
    locked.chmod(0)
    try:
        r = run_tl("train", data, *TINY, "--weights", "none", "--out", tmp_path / "run", no_dac=True)
    finally:
        locked.chmod(0o755)
    assert_user_error(r, f"class folder {locked} cannot be read: permission denied")
    assert "has no images" not in r.err


def test_rerun_after_a_failed_run_offers_resume_only_with_last_pt(synth_data, make_checkpoint, tmp_path):
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(make_checkpoint(image_size=32), run / "best.pt")  # the first run died before last.pt
    r = run_tl_subprocess("train", synth_data, *TINY, "--weights", "none", "--out", run, timeout=120)
    assert_user_error(r, f"{run} already holds best.pt", "no last.pt to resume from", "another --out")
    assert "--resume" not in r.err


def test_random_bytes_onnx_in_bench_is_not_a_valid_onnx_file(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(bytes(range(7, 256)) * 16)
    for target in (folder, folder / "model.onnx"):
        r = run_tl_subprocess("bench", target, "--backends", "ort", "--batch-sizes", "1", "--iters", "1", timeout=120)
        assert_user_error(r, "model.onnx: not a valid ONNX file")


def test_class_names_from_a_model_file_are_escaped_in_tables(make_onnx, synth_data, tmp_path):
    import json

    import onnx

    proto = onnx.load(str(make_onnx()[0]))
    for prop in proto.metadata_props:
        if prop.key == "tl.spec":
            spec = json.loads(prop.value)
            spec["classes"] = ["\x1b[31mred\x1b[0m", "[bold]b\r", "\x1b]0;title\x07", "\u202eevil"]
            prop.value = json.dumps(spec)
    model = tmp_path / "hostile.onnx"
    onnx.save(proto, str(model))
    for r in (run_tl_subprocess("predict", model, synth_data / "val", "--top-k", "4", timeout=120),
              run_tl_subprocess("info", model, "--no-env", timeout=120)):
        assert r.code == 0, r.err
        assert "\x1b" not in r.out and "\r" not in r.out and "\u202e" not in r.out and "\x07" not in r.out
        assert "\\x1b[31mred\\x1b[0m" in r.out and "[bold]b\\r" in r.out and "\\u202eevil" in r.out


def test_decompression_bomb_says_why_and_how_to_raise_the_limit(make_onnx, tmp_path, monkeypatch):
    from PIL import Image

    from tl.runtime.errors import TLError
    from tl.train.data import prepare_data

    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), (i * 50, 0, 0)).save(tmp_path / "data" / c / f"{i}.png")
    big = tmp_path / "data" / "a" / "big.png"
    Image.new("RGB", (300, 300)).save(big)
    r = run_tl_subprocess("predict", make_onnx()[0], big, env={"TL_MAX_IMAGE_PIXELS": "10000"}, timeout=120)
    assert_user_error(r, "big.png", "decompression-bomb limit", "gigabytes", "TL_MAX_IMAGE_PIXELS=90000")
    monkeypatch.setenv("TL_MAX_IMAGE_PIXELS", "10000")  # Pillow refuses above twice the limit
    with pytest.raises(TLError) as e:
        prepare_data(tmp_path / "data")
    msg = str(e.value)
    assert "90,000 pixels" in msg and "decompression-bomb" in msg and "gigabytes" in msg
    assert "TL_MAX_IMAGE_PIXELS=90000" in msg
    monkeypatch.setenv("TL_MAX_IMAGE_PIXELS", "none")  # training's check honours the variable too
    data = prepare_data(tmp_path / "data")
    assert len(data.train_files) + len(data.val_files) == 7
