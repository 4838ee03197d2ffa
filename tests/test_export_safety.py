"""`tl export` replaces only what a tl export wrote, refuses before the first change, and never passes a NaN."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_user_error

FAST = ["--opset", "17", "--parity-count", "2"]  # the TorchScript exporter: seconds


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for a folder)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def export(tl_cli, ckpt, out, *flags):
    r = tl_cli("export", ckpt, "--out", out, *FAST, *flags)
    assert r.code == 0, r.err
    return r


@pytest.fixture
def ckpt(make_checkpoint):
    return make_checkpoint(image_size=32)


# -- 1. only files a tl export recorded as its own are removed --------------------------------------


def test_export_keeps_the_users_model_files(tl_cli, ckpt, tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    mine = {"model_keras.onnx": b"keras", "model-v1.engine": b"plan", "model-v1.engine.json": b"{}", "notes.txt": b"n"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    export(tl_cli, ckpt, out, "--onnx")  # no export.json there: nothing of the folder is tl's
    export(tl_cli, ckpt, out, "--fp16")  # the earlier export's model.onnx goes (export.json lists it)
    assert {n: (out / n).read_bytes() for n in mine} == mine
    assert sorted(set(p.name for p in out.iterdir()) - set(mine)) == ["export.json", "model.fp16.onnx"]

    # A killed commit leaves no export.json: tl's own files are still known by the metadata they carry.
    (out / "export.json").unlink()
    export(tl_cli, ckpt, out, "--onnx")
    assert sorted(set(p.name for p in out.iterdir()) - set(mine)) == ["export.json", "model.onnx"]
    assert {n: (out / n).read_bytes() for n in mine} == mine


def test_a_users_file_of_an_artifacts_name_is_refused_not_replaced(tl_cli, ckpt, tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"my own model")
    r = tl_cli("export", ckpt, "--out", out, *FAST)
    assert_user_error(r, f"{out / 'model.onnx'} was not written by tl export", "another --out")
    assert snapshot(out) == {"model.onnx": b"my own model"}


# -- 3. a refused commit changes nothing ------------------------------------------------------------


def test_a_folder_in_the_way_refuses_the_export_and_keeps_the_earlier_one(tl_cli, ckpt, tmp_path, monkeypatch):
    import tl.export.fp16 as fp16

    out = tmp_path / "exp"
    export(tl_cli, ckpt, out, "--onnx")
    (out / "model.fp16.onnx").mkdir()
    before = snapshot(out)
    r = tl_cli("export", ckpt, "--out", out, *FAST, "--onnx", "--fp16")
    assert_user_error(r, f"{out / 'model.fp16.onnx'} is a folder")
    assert snapshot(out) == before

    # The same folder appearing while the export runs: the commit checks every target before its first change.
    (out / "model.fp16.onnx").rmdir()
    before = snapshot(out)
    convert = fp16.convert_fp16

    def convert_then_block(src, dst):
        (out / "model.fp16.onnx").mkdir()
        return convert(src, dst)

    monkeypatch.setattr(fp16, "convert_fp16", convert_then_block)
    r = tl_cli("export", ckpt, "--out", out, *FAST, "--onnx", "--fp16")
    assert_user_error(r, f"{out / 'model.fp16.onnx'} is a folder")
    assert snapshot(out) == {**before, "model.fp16.onnx": None}


# -- 2. --triton replaces only model folders tl wrote -----------------------------------------------


@pytest.mark.parametrize("config", [None, 'name: "m"\nplatform: "onnxruntime_onnx"\n'])
def test_triton_refuses_a_folder_it_did_not_write(tl_cli, ckpt, tmp_path, config):
    repo, out = tmp_path / "repo", tmp_path / "exp"
    (repo / "m").mkdir(parents=True)
    (repo / "m" / "notes.txt").write_text("mine")
    if config is not None:
        (repo / "m" / "config.pbtxt").write_text(config)
    before = snapshot(repo)
    r = tl_cli("export", ckpt, "--out", out, *FAST, "--triton", repo, "--triton-name", "m")
    assert_user_error(r, f"{repo / 'm'} is not a model folder tl wrote", "--triton-name")
    assert snapshot(repo) == before and not (out / "export.json").exists()

    # A folder tl wrote is replaced whole, and so is it the next time.
    export(tl_cli, ckpt, out, "--triton", repo, "--triton-name", "m2")
    (repo / "m2" / "notes.txt").write_text("old")
    export(tl_cli, ckpt, out, "--triton", repo, "--triton-name", "m2")
    assert sorted(p.name for p in (repo / "m2").iterdir()) == ["1", "config.pbtxt", "labels.txt"]
    assert snapshot(repo / "m") == {k.removeprefix("m/"): v for k, v in before.items() if k.startswith("m/")}


# -- 25. Triton names and labels are checked before the export is written ---------------------------


def test_a_triton_name_too_long_with_its_suffix_is_refused_before_exporting(tl_cli, ckpt, tmp_path):
    repo, out = tmp_path / "repo", tmp_path / "exp"
    r = tl_cli("export", ckpt, "--out", out, *FAST, "--onnx", "--fp16", "--triton", repo, "--triton-name", "a" * 128)
    assert_user_error(r, "133 characters", "'_fp16'", "at most 123 characters")
    assert not out.exists() or not any(out.iterdir())
    export(tl_cli, ckpt, out, "--onnx", "--triton", repo, "--triton-name", "a" * 128)  # no suffix: it fits
    assert (repo / ("a" * 128) / "config.pbtxt").is_file()


def test_a_class_name_labels_txt_cannot_hold_is_refused_before_exporting(tl_cli, make_checkpoint, tmp_path):
    ckpt = make_checkpoint(image_size=32, classes=("cat\ndog", "bird"))
    repo, out = tmp_path / "repo", tmp_path / "exp"
    r = tl_cli("export", ckpt, "--out", out, *FAST, "--triton", repo)
    assert_user_error(r, "'cat\\ndog'", "labels.txt", "without --triton")
    assert len([l for l in r.err.splitlines() if l.strip()]) == 1
    assert not out.exists() or not any(out.iterdir())


# -- 6. a NaN never passes parity -------------------------------------------------------------------


@pytest.fixture
def nan_checkpoint(ckpt, tmp_path):
    import torch

    from tl.train.checkpoint import save_checkpoint

    data = torch.load(ckpt, weights_only=True)
    data["state_dict"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                          for k, v in data["state_dict"].items()}
    path = tmp_path / "nan.pt"
    save_checkpoint(path, data)
    return path


def test_a_checkpoint_with_nan_weights_is_refused_in_one_line(tl_cli, nan_checkpoint, tmp_path):
    out = tmp_path / "exp"
    r = tl_cli("export", nan_checkpoint, "--out", out, *FAST)
    assert_user_error(r, "NaN or infinite logits on 2 of 2", "of its weights are NaN", "the checkpoint is broken")
    assert len([l for l in r.err.splitlines() if l.strip()]) == 1
    assert not (out / "export.json").exists() and not (out / "model.onnx").exists()


def test_an_artifact_with_nan_logits_fails_parity(tl_cli, ckpt, tmp_path, monkeypatch):
    import tl.export.parity as parity

    real = parity.artifact_logits

    def nan_for_fp16(path, batch, **kwargs):
        logits, provider = real(path, batch, **kwargs)
        if Path(path).name == "model.fp16.onnx":
            logits[0, 0] = np.nan
        return logits, provider

    monkeypatch.setattr(parity, "artifact_logits", nan_for_fp16)
    out = tmp_path / "exp"
    r = tl_cli("export", ckpt, "--out", out, *FAST, "--onnx", "--fp16")
    assert_user_error(r, "model.fp16.onnx does not match PyTorch (NaN or infinite logits on 1 image(s))")
    assert not (out / "model.fp16.onnx").exists()
    assert not (out / "model.onnx").exists()
    report = json.loads((out / "export.json").read_text())  # a first export records what failed, and keeps nothing
    assert [(a["file"], a["status"]) for a in report["artifacts"]] == [("model.fp16.onnx", "failed")]


def test_compare_counts_a_nan_logit_as_a_disagreement():
    from tl.export.parity import compare
    from tl.runtime.errors import TLError

    reference = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    cmp = compare(reference, np.array([[1.0, 0.0], [np.nan, np.nan]], dtype=np.float32))
    assert (cmp.nonfinite, cmp.disagreements, cmp.top1_agreement, cmp.max_abs_diff) == (1, 1, 0.5, 0.0)
    with pytest.raises(TLError, match="NaN or infinity"):
        compare(np.full((2, 2), np.inf, dtype=np.float32), reference)


# -- leftovers of a killed export -------------------------------------------------------------------


def test_a_killed_exports_leftovers_are_removed_and_named(tl_cli, ckpt, tmp_path):
    out = tmp_path / "exp"
    (out / ".tl-export-staging" / "sources").mkdir(parents=True)
    (out / ".tl-export-staging" / "model.onnx").write_bytes(b"half")
    (out / ".export.json.x1y2.tmp").write_text("{")
    (out / ".tl.lock").write_text('{"pid": 1, "command": "tl export", "since": 0}')  # its holder is gone
    repo = tmp_path / "repo"
    (repo / ".tl-triton-staging" / "m").mkdir(parents=True)
    r = export(tl_cli, ckpt, out, "--triton", repo, "--triton-name", "m")
    assert "removed .tl-export-staging, .export.json.x1y2.tmp" in r.err + r.out
    assert f"removed .tl-triton-staging in {repo}" in r.err + r.out
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.onnx"]
    assert sorted(p.name for p in repo.iterdir()) == ["m"]
