"""The CLI shell: `tl --help` without torch, `tl data synth`, usage errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, assert_user_error

COMMANDS = ("data", "train", "export", "predict", "info", "serve", "bench", "demo")

# Runs tl.cli.main(ARGV) in a fresh interpreter where `import torch` (and torchvision) fails.
NO_TORCH = textwrap.dedent("""
    import sys
    from importlib.abc import MetaPathFinder

    class BlockTorch(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                raise ImportError(f"{name} is blocked for this test")
            return None

    sys.meta_path.insert(0, BlockTorch())
    from tl.cli import main
    try:
        main(sys.argv[1:])
    finally:
        assert "torch" not in sys.modules
""")


def _no_torch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_help_lists_commands_without_torch():
    p = _no_torch("--help")
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    section = p.stdout.split("Commands:")[1].splitlines()
    commands = [line.split()[0] for line in section if line.startswith("  ") and not line.startswith("    ")]
    for name in COMMANDS:
        assert name in commands, (name, p.stdout)
    # Listed in the registered order.
    assert [c for c in commands if c in COMMANDS] == list(COMMANDS)


def test_subcommand_help_without_torch():
    for args in (("train", "--help"), ("data", "synth", "--help")):
        p = _no_torch(*args)
        assert p.returncode == 0, (args, p.stderr)
        assert "Usage: tl" in p.stdout
    assert "--weights" in _no_torch("train", "--help").stdout


def test_synth_works_without_torch(tmp_path):
    p = _no_torch("data", "synth", str(tmp_path / "d"), "--classes", "2", "--per-class", "4", "--size", "24")
    assert p.returncode == 0, p.stderr
    assert len(list((tmp_path / "d").rglob("*.png"))) + len(list((tmp_path / "d").rglob("*.jpg"))) == 8


def test_synth_is_repeatable_and_learnable_layout(tl_cli, tmp_path):
    for name in ("a", "b"):
        r = tl_cli("data", "synth", tmp_path / name, "--classes", "3", "--per-class", "8", "--size", "32",
                   "--seed", "5", "--val-fraction", "0.25")
        assert r.code == 0, r.err
        assert "wrote 24 images" in r.out
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 24
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files_a)
    assert {f.parts[0] for f in files_a} == {"train", "val"}
    assert len([f for f in files_a if f.parts[0] == "val"]) == 3 * 2
    assert {f.suffix for f in files_a} == {".jpg", ".png"}
    r = tl_cli("data", "synth", tmp_path / "c", "--classes", "3", "--per-class", "8", "--size", "32", "--seed", "6")
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files_a)


def test_synth_errors(tl_cli, tmp_path):
    assert_user_error(tl_cli("data", "synth", tmp_path / "x", "--classes", "1"), "--classes")
    assert_user_error(tl_cli("data", "synth", tmp_path / "x", "--classes", "99"), "--classes")
    assert_user_error(tl_cli("data", "synth", tmp_path / "x", "--size", "4"), "--size")
    assert_user_error(tl_cli("data", "synth", tmp_path / "x", "--val-fraction", "1.5"), "--val-fraction")
    assert_user_error(tl_cli("data", "synth", tmp_path / "x", "--per-class", "abc"), "per-class")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f.txt").write_text("x")
    assert_user_error(tl_cli("data", "synth", tmp_path / "full"), "not empty")


def test_usage_errors(tl_cli):
    assert_user_error(tl_cli("trian"), "No such command")
    assert_user_error(tl_cli("train", "--epochs", "many"), "epochs")
    assert_user_error(tl_cli("train"), "missing DATA")


def test_version(tl_cli):
    r = tl_cli("--version")
    assert r.code == 0 and "0.1.0" in r.out


def test_a_missing_optional_package_names_its_extra_and_a_broken_one_does_not():
    """A package that is not installed names the extra that installs it; a module missing inside an
    installed package is a broken install (its traceback is the report), not a missing extra."""
    import importlib.util

    from tl.cli import EXTRAS, missing_extra

    absent = next((p for p in EXTRAS if importlib.util.find_spec(p) is None), None)
    if absent is None:
        pytest.skip("every optional package tl knows is installed here")
    line = missing_extra(ModuleNotFoundError(f"No module named '{absent}'", name=absent), ["export", "m.onnx"])
    extra = EXTRAS[absent]
    assert line.startswith(f"tl export needs {absent}, which is not installed: pip install 'tl[{extra}]' (the {extra} extra)")
    assert missing_extra(ModuleNotFoundError("No module named 'torch._C'", name="torch._C"), ["train"]) is None
    assert missing_extra(ModuleNotFoundError("No module named 'foo'", name="foo"), ["train"]) is None
