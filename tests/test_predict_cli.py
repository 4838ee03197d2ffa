"""`tl predict` and `tl info` through the real entry point, on real files."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import EXPORT_ARCH, assert_user_error, run_tl_subprocess, skip_where_installed
from tl.runtime import Classifier
from tl.runtime.images import list_images
from tl.runtime.sidecar import BuildRecord, write_sidecar


@pytest.fixture(scope="module")
def onnx_path(make_onnx):
    return make_onnx()[0]


@pytest.fixture
def photos(tmp_path, synth_data):
    """A folder like a user's: images in subfolders, a text file, a hidden file."""
    root = tmp_path / "photos"
    src = list_images(synth_data / "val")[:5]
    (root / "sub").mkdir(parents=True)
    for i, f in enumerate(src):
        shutil.copy(f, (root / "sub" if i % 2 else root) / f"img{i}{f.suffix}")
    (root / "README.txt").write_text("not an image")
    (root / "sub" / "labels.csv").write_text("a,b\n")
    return root


def test_predict_folder_table(tl_cli, onnx_path, photos):
    r = tl_cli("predict", onnx_path, photos, "--providers", "cpu")
    assert r.code == 0, r.err
    for i in range(5):
        assert f"img{i}" in r.out
    assert "5 images classified" in r.err and "2 non-image files skipped" in r.err
    assert "CPUExecutionProvider" in r.err
    # Paths relative to the folder given, however deep it sits: img1 is in photos/sub/.
    table_paths = [line.split()[1] for line in r.out.splitlines() if "img" in line and line.startswith("│")]
    assert {Path(t).with_suffix("").as_posix() for t in table_paths} == {"img0", "img2", "img4", "sub/img1", "sub/img3"}
    assert all(str(photos) not in line for line in r.out.splitlines())


def test_predict_json_matches_library(tl_cli, onnx_path, photos):
    r = tl_cli("predict", onnx_path, photos, "--format", "json", "--top-k", "2", "--batch-size", "2")
    assert r.code == 0, r.err
    rows = [json.loads(line) for line in r.out.splitlines()]
    assert len(rows) == 5 and all(len(x["top_k"]) == 2 for x in rows)
    assert {p.suffix for p in list_images(photos)} == {".jpg", ".png"}
    lib = {p.source: p for p in Classifier.load(onnx_path).predict(sorted(list_images(photos)))}
    for row in rows:
        assert row["label"] == lib[row["source"]].label
        assert row["score"] == pytest.approx(lib[row["source"]].score, abs=1e-6)


def test_predict_csv_to_output_file(tl_cli, onnx_path, photos, tmp_path):
    out = tmp_path / "res" / "preds.csv"
    r = tl_cli("predict", onnx_path, photos, "--format", "csv", "--output", out)
    assert r.code == 0, r.err
    assert r.out == "" and f"results in {out}" in r.err
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 5 and set(rows[0]) == {"source", "label", "index", "score", "top_k"}
    assert all(0 < float(x["score"]) <= 1 for x in rows)


def test_corrupt_image_among_good_ones(tl_cli, onnx_path, photos):
    bad = photos / "sub" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    png = next(photos.rglob("*.png")).read_bytes()
    (photos / "cut.png").write_bytes(png[: len(png) // 2])  # truncated
    r = tl_cli("predict", onnx_path, photos, "--format", "json")
    assert_user_error(r, "2 of 7 images could not be read", "broken.jpg", "cut.png")
    rows = [json.loads(line) for line in r.out.splitlines()]
    assert len(rows) == 5  # the good ones were still classified
    assert "broken.jpg" in r.err and "warning" in r.err


def test_predict_files_is_the_library_behind_the_command(onnx_path, photos):
    """The same classification without the CLI: unreadable images are listed, the others classified, and
    bad options are refused when the options are built."""
    from tl.runtime.errors import TLError
    from tl.runtime.predict import PredictOptions, predict_files

    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    result = predict_files(PredictOptions(model=onnx_path, paths=[photos], top_k=2, batch_size=2, providers="cpu"))
    assert [f.name for f, _ in result.failures] == ["broken.jpg"]
    assert len(result.predictions) == 5 and all(len(p.top_k) == 2 for p in result.predictions)
    direct = {p.source: p.label for p in Classifier.load(onnx_path, providers="cpu").predict(
        [Path(p.source) for p in result.predictions])}
    assert {p.source: p.label for p in result.predictions} == direct
    assert result.backend == "onnxruntime" and result.providers == ["CPUExecutionProvider"]
    for bad in ({"top_k": 0}, {"batch_size": 0}, {"threads": 0}):
        with pytest.raises(TLError, match="at least 1"):
            PredictOptions(model=onnx_path, paths=[photos], **bad)


def test_spec_option_for_foreign_onnx(tl_cli, onnx_path, photos, tmp_path):
    import onnx

    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    bare = tmp_path / "foreign.onnx"
    onnx.save(proto, str(bare))
    assert_user_error(tl_cli("predict", bare, photos), "no tl model spec", "--spec")
    spec_file = tmp_path / "spec.json"
    Classifier.load(onnx_path).spec.save(spec_file)
    r = tl_cli("predict", bare, photos, "--spec", spec_file, "--format", "json")
    assert r.code == 0, r.err
    assert len(r.out.splitlines()) == 5
    assert_user_error(tl_cli("predict", bare, photos, "--spec", tmp_path / "nope.json"), "spec file not found")


@pytest.mark.parametrize("args, fragments", [
    (("MISSING.onnx", "PHOTOS"), ("model not found",)),
    (("MODEL", "PHOTOS/nothere"), ("not found", "nothere")),
    (("PHOTOS/README.txt", "PHOTOS"), ("not a model file",)),
    (("MODEL", "PHOTOS/README.txt"), ("no images found",)),
    (("MODEL", "PHOTOS", "--top-k", "0"), ("--top-k",)),
    (("MODEL", "PHOTOS", "--batch-size", "0"), ("--batch-size",)),
    (("MODEL", "PHOTOS", "--providers", "cuda"), ("not available",)),
    (("MODEL", "PHOTOS", "--backend", "trt"), ("ONNX model", "--providers trt")),
    (("MODEL", "PHOTOS", "--format", "xml"), ("--format",)),
    (("MODEL",), ("PATHS",)),
])
def test_predict_user_errors(tl_cli, onnx_path, photos, tmp_path, args, fragments):
    sub = {"MODEL": str(onnx_path), "PHOTOS": str(photos)}
    argv = [a.replace("MISSING", str(tmp_path / "m")) for a in args]
    argv = [next((a.replace(k, v) for k, v in sub.items() if a.startswith(k)), a) for a in argv]
    assert_user_error(tl_cli("predict", *argv), *fragments)


def test_empty_image_file_and_garbage_model(tl_cli, photos, tmp_path):
    (tmp_path / "zero.onnx").write_bytes(b"")
    assert_user_error(tl_cli("predict", tmp_path / "zero.onnx", photos), "not a valid ONNX")


def _engine_with_sidecar(tmp_path, spec, *, trt="10.3.0", cc="8.7"):
    plan = tmp_path / "model.fp16.plan"
    plan.write_bytes(b"not a real plan")
    write_sidecar(plan, spec, BuildRecord(
        tensorrt_version=trt, gpu_name="Orin", compute_capability=cc, precision="fp16",
        profile={"min": [1, 3, 64, 64], "opt": [8, 3, 64, 64], "max": [32, 3, 64, 64]}))
    return plan


def test_predict_engine_needs_tensorrt_or_sidecar(tl_cli, onnx_path, photos, tmp_path):
    skip_where_installed("tensorrt", "TensorRT is installed here; this checks the message where it is not")
    spec = Classifier.load(onnx_path).spec
    lone = tmp_path / "lone.engine"
    lone.write_bytes(b"x")
    assert_user_error(tl_cli("predict", lone, photos), "no sidecar", "--spec")
    plan = _engine_with_sidecar(tmp_path, spec)
    assert_user_error(tl_cli("predict", plan, photos), "TensorRT is not installed", ".onnx")
    assert_user_error(tl_cli("predict", plan, photos, "--backend", "ort"), "TensorRT engine")
    assert_user_error(tl_cli("predict", plan, photos, "--providers", "cpu"), "providers apply to ONNX Runtime")


def test_info_onnx(tl_cli, onnx_path):
    # With the environment, `tl info` starts OpenVINO's Core where it is installed; that runs in a
    # child interpreter, so OpenVINO never runs in the pytest process (see conftest OPENVINO_IN_PROCESS).
    r = run_tl_subprocess("info", onnx_path, timeout=120)
    assert r.code == 0, r.err
    for frag in ("opset", "20", "fp32", EXPORT_ARCH, "circle, square, triangle, cross",
                 "tensor(float)", "onnxruntime", "CPUExecutionProvider", "environment"):
        assert frag in r.out, frag
    j = json.loads(run_tl_subprocess("info", onnx_path, "--format", "json", timeout=120).out)
    a = j["artifact"]
    assert a["opset"] == 20 and a["precision"] == "fp32" and a["spec"]["num_classes"] == 4
    assert a["inputs"][0]["shape"][1:] == [3, 64, 64] and a["outputs"][0]["name"] == "logits"
    assert a["size_mb"] == pytest.approx(onnx_path.stat().st_size / 2**20, abs=1e-3)
    env = j["environment"]
    assert env["onnxruntime"]["version"] and env["numpy"] == np.__version__ and env["cpu"]["cores"] >= 1
    assert "environment" not in json.loads(tl_cli("info", onnx_path, "--format", "json", "--no-env").out)


def test_info_engine_from_sidecar(tl_cli, onnx_path, tmp_path):
    plan = _engine_with_sidecar(tmp_path, Classifier.load(onnx_path).spec)
    r = tl_cli("info", plan, "--no-env")
    assert r.code == 0, r.err
    for frag in ("tensorrt", "fp16", "10.3.0", "Orin", "8.7", "[32, 3, 64, 64]"):
        assert frag in r.out, frag
    plan.with_name(plan.name + ".json").write_text("{broken")
    assert_user_error(tl_cli("info", plan), "not a valid tl engine sidecar")


def test_info_errors(tl_cli, tmp_path):
    assert_user_error(tl_cli("info", tmp_path / "x.onnx"), "model not found")
    assert_user_error(tl_cli("info", tmp_path), "folder")
    img = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(img)
    assert_user_error(tl_cli("info", img), "not a model file")
