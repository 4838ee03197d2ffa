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
