"""`tl export` end to end: real checkpoints, real files, every bad input gives one error line."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from conftest import assert_user_error, run_tl_subprocess

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
SCHEMA_KEYS = {"file", "precision", "backend", "provider", "size_mb", "seconds", "max_abs_diff", "mean_abs_diff", "top1_agreement"}


@pytest.fixture(scope="module")
def run_dir(make_checkpoint, synth_data, tmp_path_factory):
    """A run folder whose best.pt records its data (as `tl train` writes it)."""
    import torch

    from tl.runtime.images import list_images
    from tl.train.checkpoint import save_checkpoint

    ckpt = torch.load(make_checkpoint(image_size=48), weights_only=True)
    val = list_images(synth_data / "val")
    ckpt["data"] = {
        "root": str(synth_data), "train_dir": str(synth_data / "train"), "val_dir": str(synth_data / "val"),
        "val_split": None, "seed": 0, "train_files": [str(p) for p in list_images(synth_data / "train")],
        "val_files": [str(p) for p in val], "val_labels": [0] * len(val),
    }
    run = tmp_path_factory.mktemp("runs") / "shapes"
    save_checkpoint(run / "best.pt", ckpt)
    return run


def test_run_folder_onnx_fp16_int8_and_report(tl_cli, run_dir, synth_data, tmp_path):
    out = tmp_path / "exp"
    r = tl_cli("export", run_dir, "--out", out, "--onnx", "--fp16", "--int8", "--calib-count", "12")
    assert r.code == 0, r.err
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.fp16.onnx", "model.int8.onnx", "model.onnx"]
    report = json.loads((out / "export.json").read_text())
    n_val = len(list((synth_data / "val").rglob("*.*")))
    assert report["checkpoint"] == str((run_dir / "best.pt").resolve())  # the file, even when given the run folder
    assert report["images"] == n_val and report["image_source"] == "checkpoint val_files"
    arts = {a["file"]: a for a in report["artifacts"]}
    assert list(arts) == ["model.onnx", "model.fp16.onnx", "model.int8.onnx"]
    for name, a in arts.items():
        assert SCHEMA_KEYS <= set(a)
        assert a["backend"] == "onnxruntime" and a["provider"] == "CPUExecutionProvider"
        assert a["size_mb"] == pytest.approx((out / name).stat().st_size / 1e6, rel=1e-3)
        assert a["seconds"] > 0
    assert [arts[f]["precision"] for f in arts] == ["fp32", "fp16", "int8"]
    assert arts["model.onnx"]["max_abs_diff"] < 1e-3 and arts["model.onnx"]["top1_agreement"] == 1.0
    assert arts["model.fp16.onnx"]["max_abs_diff"] < 0.05
    assert report["calibration"]["images"] == 12 and report["calibration"]["method"] == "minmax"
    assert "parity vs eager PyTorch FP32" in r.out and "model.int8.onnx" in r.out


def test_val_dir_and_default_is_fp32_only(tl_cli, make_checkpoint, synth_data, tmp_path):
    out = tmp_path / "exp"
    r = tl_cli("export", make_checkpoint("resnet18", image_size=32), "--out", out, "--val-dir", synth_data / "val",
               "--parity-count", "5")
    assert r.code == 0, r.err
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.onnx"]
    report = json.loads((out / "export.json").read_text())
    assert report["images"] == 5 and report["image_source"].startswith("val-dir")


def test_onnx_flag_keeps_model_onnx_only_when_asked(tl_cli, run_dir, tmp_path):
    """--int8 alone: model.onnx is built as the source, checked, and not kept."""
    out = tmp_path / "exp"
    r = tl_cli("export", run_dir, "--out", out, "--int8", "--calib-count", "8", "--parity-count", "8")
    assert r.code == 0, r.err
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.int8.onnx"]
    report = json.loads((out / "export.json").read_text())
    assert [a["file"] for a in report["artifacts"]] == ["model.int8.onnx"]


def test_synthetic_parity_images_when_checkpoint_has_no_data(make_checkpoint, tmp_path):
    from tl.export import ExportOptions, export

    res = export(ExportOptions(checkpoint=make_checkpoint(image_size=32), out=tmp_path,
                               parity_count=6))
    assert res.image_source == "synthetic" and res.images == 6
    assert [a.file for a in res.artifacts] == ["model.onnx"] and res.report.is_file()


def test_fp32_mismatch_fails_and_removes_the_artifact(tl_cli, make_checkpoint, tmp_path, monkeypatch):
    import tl.export.parity as parity

    monkeypatch.setattr(parity, "FP32_MAX_ABS", -1.0)  # every difference (even 0) now exceeds it: the failure path
    out = tmp_path / "exp"
    r = tl_cli("export", make_checkpoint(image_size=32), "--out", out, "--fp16", "--parity-count", "4")
    assert_user_error(r, "model.onnx does not match PyTorch", "removed")
    assert not (out / "model.onnx").exists() and not (out / "model.fp16.onnx").exists()
    report = json.loads((out / "export.json").read_text())
    assert report["artifacts"][0]["status"] == "failed"


def test_interrupted_export_leaves_no_complete_looking_file(tl_cli, make_checkpoint, tmp_path, monkeypatch):
    import tl.export.onnx as tl_onnx
    from tl.runtime.files import atomic_path

    def write_half_then_interrupt(path, data):
        with atomic_path(path) as tmp:
            tmp.write_bytes(data[:1000])  # half a file on disk...
            raise KeyboardInterrupt  # ...then Ctrl-C

    monkeypatch.setattr(tl_onnx, "atomic_write_bytes", write_half_then_interrupt)
    out = tmp_path / "exp"
    r = tl_cli("export", make_checkpoint(image_size=32), "--out", out, "--parity-count", "2")
    monkeypatch.undo()
    assert r.code == 130 and "error: interrupted" in r.err
    assert list(out.iterdir()) == []  # no model.onnx, no temp file, no export.json


# -- bad inputs ---------------------------------------------------------------------------------

def test_missing_checkpoint(tl_cli, tmp_path):
    assert_user_error(tl_cli("export", tmp_path / "nope.pt", "--out", tmp_path / "o"), "checkpoint not found")


def test_not_a_checkpoint(tl_cli, tmp_path):
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"this is not a torch file")
    assert_user_error(tl_cli("export", bad, "--out", tmp_path / "o"), "not a tl checkpoint")
    assert_user_error(tl_cli("export", tmp_path / "o", "--out", tmp_path / "o2"), "checkpoint not found")


def test_folder_without_best_pt(tl_cli, tmp_path):
    (tmp_path / "run").mkdir()
    assert_user_error(tl_cli("export", tmp_path / "run", "--out", tmp_path / "o"), "without best.pt")


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_trt_without_tensorrt(tl_cli, make_checkpoint, tmp_path):
    r = tl_cli("export", make_checkpoint(image_size=32), "--onnx", "--trt", "--out", tmp_path / "o")
    assert_user_error(r, "TensorRT is not installed (pip install 'tl[gpu]')")
    assert "error: TensorRT is not installed (pip install 'tl[gpu]')" in r.err.splitlines()
    assert not (tmp_path / "o").exists()  # refused before any work


def test_bad_calib_dir(tl_cli, make_checkpoint, tmp_path):
    ckpt = make_checkpoint(image_size=32)
    assert_user_error(tl_cli("export", ckpt, "--int8", "--calib-dir", tmp_path / "missing", "--out", tmp_path / "o"),
                      "--calib-dir: folder not found")
    (tmp_path / "empty").mkdir()
    r = tl_cli("export", ckpt, "--int8", "--calib-dir", tmp_path / "empty", "--out", tmp_path / "o")
    assert_user_error(r, "no images")
    assert not (tmp_path / "o" / "model.onnx").exists()  # refused before exporting


def test_int8_without_any_calibration_source(tl_cli, make_checkpoint, tmp_path):
    r = tl_cli("export", make_checkpoint(image_size=32), "--int8", "--out", tmp_path / "o")
    assert_user_error(r, "pass --calib-dir")


@pytest.mark.parametrize("args,fragment", [
    (["--opset", "13"], "Invalid value for '--opset'"),
    (["--opset", "99"], "Invalid value for '--opset'"),
    (["--max-batch", "1"], "--max-batch must be at least 2"),
    (["--calib-method", "magic"], "Invalid value for '--calib-method'"),
    (["--int8", "--calib-count", "0"], "--calib-count must be at least 1"),
    (["--workspace", "0"], "--workspace must be a positive"),
    (["--opt-level", "9"], "--opt-level must be between 0 and 5"),
    (["--val-dir", "/definitely/not/here"], "--val-dir: folder not found"),
    (["--parity-count", "0"], "--parity-count must be at least 1"),
])
def test_bad_options(tl_cli, make_checkpoint, tmp_path, args, fragment):
    r = tl_cli("export", make_checkpoint(image_size=32), "--out", tmp_path / "o", *args)
    assert_user_error(r, fragment)
    assert not (tmp_path / "o" / "model.onnx").exists()


def test_out_is_a_file(tl_cli, make_checkpoint, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert_user_error(tl_cli("export", make_checkpoint(image_size=32), "--out", f), "is a file")


def test_help_without_importing_torch():
    r = run_tl_subprocess("export", "--help")
    assert r.code == 0 and "--calib-method" in r.out and "--opt-level" in r.out
    import subprocess

    code = "import sys, tl.commands.export; sys.exit(1 if 'torch' in sys.modules or 'onnx' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.slow
def test_vgg16_fp32_fp16_int8_end_to_end(tl_cli, make_checkpoint, synth_data, tmp_path):
    """The one VGG16 test: the seed's architecture through all three ONNX forms (small images)."""
    import onnx

    out = tmp_path / "vgg"
    ckpt = make_checkpoint("vgg16", image_size=32)
    r = tl_cli("export", ckpt, "--out", out, "--onnx", "--fp16", "--int8", "--calib-dir", synth_data / "train",
               "--calib-count", "8", "--val-dir", synth_data / "val", "--parity-count", "8")
    assert r.code == 0, r.err
    report = json.loads((out / "export.json").read_text())
    arts = {a["file"]: a for a in report["artifacts"]}
    assert arts["model.onnx"]["size_mb"] > 400  # VGG16's ~134M weights, one file
    assert arts["model.fp16.onnx"]["size_mb"] < 0.55 * arts["model.onnx"]["size_mb"]
    assert arts["model.int8.onnx"]["size_mb"] < 0.3 * arts["model.onnx"]["size_mb"]
    assert arts["model.onnx"]["max_abs_diff"] < 1e-3
    int8 = onnx.load(str(out / "model.int8.onnx"), load_external_data=False)
    assert sum(n.op_type == "QuantizeLinear" for n in int8.graph.node) >= 13
