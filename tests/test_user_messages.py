"""Mistakes that used to end in a traceback, the OOM killer or a misleading message:
each is one `error:` line that says what is wrong and what to do."""

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
    assert_user_error(r, "--image-size must be between 16 and 4096 pixels (got 100000)")
    assert not (tmp_path / "run").exists()


# -- a spec that does not fit the model ----------------------------------------------------------

def test_spec_of_another_size_or_class_count_is_named(make_onnx, synth_data, tmp_path):
    from tl.runtime.spec import ModelSpec

    model = make_onnx()[0]  # 64 px, 4 classes
    ModelSpec.create(arch="mobilenet_v3_small", classes=list("abcd"), image_size=32).save(tmp_path / "s32.json")
    r = run_tl_subprocess("predict", model, synth_data / "val", "--spec", tmp_path / "s32.json", timeout=120)
    assert_user_error(r, "the spec does not fit this model", "input is 3x64x64", "says 3x32x32")
    ModelSpec.create(arch="mobilenet_v3_small", classes=list("ab"), image_size=64).save(tmp_path / "s2.json")
    r = run_tl_subprocess("predict", model, synth_data / "val", "--spec", tmp_path / "s2.json", timeout=120)
    assert_user_error(r, "it outputs 4 classes", "has 2")
    assert "InvalidArgument" not in r.err
