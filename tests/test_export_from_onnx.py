"""`tl export model.onnx`: the edge box's route, torch-free.

The FP16 and INT8 files are built from an exported FP32 ONNX file in an interpreter where torch
cannot be imported, checked against that file through ONNX Runtime, and keep its checkpoint stamp.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest

from conftest import assert_user_error, run_tl_subprocess

BLOCK_TORCH = textwrap.dedent("""
    import sys

    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "onnxscript"):
                raise ImportError(f"No module named {name!r} (blocked by the no-torch test)")
            return None

    sys.meta_path.insert(0, _Block())
""")


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("block_torch")
    (d / "sitecustomize.py").write_text(BLOCK_TORCH)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(d), os.environ.get("PYTHONPATH", "")]))}


@pytest.fixture(scope="module")
def server_export(make_checkpoint, tmp_path_factory) -> Path:
    """What the GPU server hands over: a `tl export --onnx` folder (model.onnx carries spec and stamp)."""
    from tl.export import ExportOptions, export

    out = tmp_path_factory.mktemp("server") / "shapes"
    export(ExportOptions(checkpoint=make_checkpoint(image_size=32), out=out, onnx=True, parity_count=4))
    return out


def _stamp(path: Path) -> str:
    from tl.runtime.artifact import CHECKPOINT_KEY, onnx_metadata

    return onnx_metadata(path).get(CHECKPOINT_KEY, "")


def test_fp16_and_int8_from_onnx_without_torch(server_export, synth_data, no_torch, tmp_path):
    src = server_export / "model.onnx"
    stamp = _stamp(src)
    assert len(stamp) == 64
    out = tmp_path / "device"
    r = run_tl_subprocess("export", src, "--fp16", "--int8", "--calib-dir", synth_data / "train", "--calib-count", "16",
                          "--val-dir", synth_data / "val", "--parity-count", "12", "-o", out, env=no_torch)
    assert r.code == 0, r.err
    assert "parity vs model.onnx (FP32 ONNX on ONNX Runtime)" in " ".join(r.out.split())
    report = json.loads((out / "export.json").read_text())
    assert report["checkpoint"] is None and report["checkpoint_sha256"] == stamp
    assert report["source"] == str(src.resolve()) and report["reference"].startswith("model.onnx")
    rows = {a["file"]: a for a in report["artifacts"]}
    assert sorted(rows) == ["model.fp16.onnx", "model.int8.onnx", "model.onnx"]
    assert rows["model.onnx"]["max_abs_diff"] == 0.0  # the same file: the reference run twice
    for name, row in rows.items():
        assert row["status"] in ("ok", "warning"), row
        assert row["top1_agreement"] is not None and 0.0 <= row["top1_agreement"] <= 1.0
        assert _stamp(out / name) == stamp, name  # every artifact keeps its source's checkpoint stamp
    assert rows["model.fp16.onnx"]["max_abs_diff"] > 0.0  # really computed in FP16
    assert (out / "model.onnx").read_bytes() == src.read_bytes()
    assert report["calibration"]["images"] == 16

    # what was built there runs there, still without torch
    p = run_tl_subprocess("predict", out / "model.int8.onnx", synth_data / "val", "--format", "json", env=no_torch)
    assert p.code == 0, p.err
    from tl.runtime.images import list_images

    rows = [json.loads(line) for line in p.out.splitlines()]
    assert len(rows) == len(list_images(synth_data / "val")) and all(r["label"] for r in rows)


def test_onnx_source_default_folder_and_reference_in_place(server_export, tmp_path, monkeypatch):
    """Default --out: exports/<the ONNX file's folder name>; with -o its own folder, the export replaces
    itself (model.onnx is kept: it is the source) and the report says what the reference was."""
    from tl.export import ExportOptions, export

    assert ExportOptions(checkpoint="shapes/model.onnx").output_dir() == Path("exports/shapes")
    folder = tmp_path / "shapes"
    shutil.copytree(server_export, folder)
    res = export(ExportOptions(checkpoint=folder / "model.onnx", out=folder, fp16=True, parity_count=4))
    assert sorted(a.file for a in res.artifacts) == ["model.fp16.onnx", "model.onnx"]
    assert (folder / "model.onnx").is_file() and res.reference.startswith("model.onnx")
    assert json.loads((folder / "export.json").read_text())["checkpoint_sha256"] == _stamp(folder / "model.onnx")
    assert not (folder / ".tl-export-staging").exists()


def test_onnx_source_bad_inputs(server_export, tmp_path, tl_cli):
    src = server_export / "model.onnx"
    out = tmp_path / "out"

    def refused(*args, fragments):
        r = tl_cli("export", *args, "-o", out)
        assert_user_error(r, *fragments)
        assert not out.exists(), "a refused export created its folder"

    refused(src, "--int8", fragments=["--int8 from model.onnx needs --calib-dir"])
    refused(src, "--opset", "17", fragments=["--opset applies to an export from a checkpoint"])
    refused(src, "--fp16", "--max-batch", "64", fragments=["--max-batch 64 is above the 32 model.onnx was exported for"])
    refused(src, "--int8", "--calib-method", "auto", "--calib-dir", tmp_path,
            fragments=["--calib-method auto", "--val-dir"])

    half = tmp_path / "half"
    tl_cli("export", src, "--fp16", "-o", half)
    refused(half / "model.fp16.onnx", "--int8", fragments=["is a FP16 file", "FP32 model.onnx"])

    import onnx

    proto = onnx.load(str(src))
    del proto.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(proto, str(foreign))
    refused(foreign, "--fp16", fragments=["has no tl model spec", "tl export CHECKPOINT --onnx"])

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    r = tl_cli("export", junk, "--fp16", "-o", out)
    assert_user_error(r, "junk.onnx")
    refused(tmp_path / "missing.onnx", fragments=["not found"])
