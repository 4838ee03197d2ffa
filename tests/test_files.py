"""Atomic writes: complete or absent, with the mode any other new file gets."""

from __future__ import annotations

import stat

import pytest

from tl.runtime.files import atomic_path, atomic_write_text


def test_published_file_has_the_default_mode(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_text(tmp_path / "atomic.txt", "x")
    assert stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
