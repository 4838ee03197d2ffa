"""Hostile specs, file names and images on the runtime's load paths, through `tl predict` / `tl info`."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from conftest import assert_user_error
from tl.runtime import Classifier
from tl.runtime.artifact import SPEC_KEY
from tl.runtime.images import list_images
from tl.runtime.sidecar import BuildRecord, write_sidecar
from tl.runtime.spec import MAX_IMAGE_SIZE, ModelSpec


@pytest.fixture(scope="module")
def onnx_path(make_onnx):
    return make_onnx()[0]


@pytest.fixture(scope="module")
def spec(onnx_path) -> ModelSpec:
    return Classifier.load(onnx_path, providers="cpu").spec


@pytest.fixture
def photos(tmp_path, synth_data):
    root = tmp_path / "photos"
    root.mkdir()
    for i, f in enumerate(list_images(synth_data / "val")[:3]):
        shutil.copy(f, root / f"img{i}{f.suffix}")
    return root


def with_spec(onnx_path: Path, out: Path, spec_text: str | None) -> Path:
    """A copy of ``onnx_path`` whose tl.spec metadata is ``spec_text`` (None: no spec at all)."""
    import onnx

    proto = onnx.load(str(onnx_path))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != SPEC_KEY]
    del proto.metadata_props[:]
    for key, value in kept + ([(SPEC_KEY, spec_text)] if spec_text is not None else []):
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(out))
    return out


def spec_dict(spec: ModelSpec, **changes) -> dict:
    """``spec`` as a dict, with dotted keys changed (``preprocess.std=[...]``)."""
    d = spec.to_dict()
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = d
        for p in parents:
            node = node[p]
        node[leaf] = value
    return d


# -- 9: a spec of a newer format is refused on every load path, with one line saying to upgrade ---

def test_future_spec_format_refused_on_every_load_path(tl_cli, onnx_path, spec, photos, tmp_path):
    future = spec_dict(spec, format=2)
    future["preprocess"]["crop_pct"] = 0.9  # a field a newer tl might add: the format is checked first
    text = json.dumps(future)

    model = with_spec(onnx_path, tmp_path / "future.onnx", text)  # ONNX metadata
    for args in (("predict", model, photos), ("info", model, "--no-env")):
        assert_user_error(tl_cli(*args), "future.onnx", "format 2 is newer than this tl reads", "upgrade tl")

    bare = with_spec(onnx_path, tmp_path / "bare.onnx", None)  # spec.json
    (tmp_path / "spec.json").write_text(text)
    assert_user_error(tl_cli("predict", bare, photos, "--spec", tmp_path / "spec.json"),
                      "spec.json", "format 2 is newer", "upgrade tl")

    engine = tmp_path / "model.fp16.plan"  # an engine's sidecar: its spec, and the sidecar's own format
    engine.write_bytes(b"plan")
    build = BuildRecord("10.0", "gpu", "8.9", "fp16", {"min": [1, 3, 64, 64], "opt": [1, 3, 64, 64], "max": [1, 3, 64, 64]})
    write_sidecar(engine, spec, build)
    sidecar = Path(f"{engine}.json")
    data = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**data, "spec": future}))
    assert_user_error(tl_cli("info", engine, "--no-env"), "format 2 is newer", "upgrade tl")
    sidecar.write_text(json.dumps({**data, "format": 7}))
    assert_user_error(tl_cli("info", engine, "--no-env"), "sidecar format 7 is newer", "upgrade tl")


def test_future_spec_format_in_a_checkpoint(tl_cli, make_checkpoint, tmp_path):
    import torch

    ckpt = torch.load(make_checkpoint(), weights_only=True)
    ckpt["spec"]["format"] = 2
    path = tmp_path / "future.pt"
    torch.save(ckpt, path)
    assert_user_error(tl_cli("export", path, "--out", tmp_path / "x"), "format 2 is newer", "upgrade tl")
    assert not (tmp_path / "x" / "model.onnx").exists()


# -- 11: --spec over an embedded spec is said, with how they differ; spec numbers are checked ---

def test_spec_replacing_an_embedded_one_is_said(tl_cli, onnx_path, spec, photos, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps(spec_dict(spec, **{"preprocess.mean": [0.5, 0.5, 0.5], "classes": ["a", "b", "c", "d"]})))
    r = tl_cli("predict", onnx_path, photos, "--spec", other, "--format", "json")
    assert r.code == 0, r.err
    assert "replaces the spec embedded in" in r.err and "preprocess.mean" in r.err and "classes" in r.err
    assert {json.loads(line)["label"] for line in r.out.splitlines()} <= {"a", "b", "c", "d"}

    same = tmp_path / "same.json"
    spec.save(same)
    r = tl_cli("predict", onnx_path, photos, "--spec", same)
    assert r.code == 0 and "replaces the spec embedded" in r.err and "they are the same" in r.err

    bare = with_spec(onnx_path, tmp_path / "bare.onnx", None)  # nothing embedded: nothing replaced
    r = tl_cli("predict", bare, photos, "--spec", same)
    assert r.code == 0 and "replaces" not in r.err


@pytest.mark.parametrize("changes, fragment", [
    ({"preprocess.std": [float("nan"), 0.2, 0.2]}, "finite"),
    ({"preprocess.mean": [0.5, float("inf"), 0.5]}, "finite"),
    ({"preprocess.std": [0.2, -0.1, 0.2]}, "> 0"),
    ({"preprocess.std": [1e-300, 0.2, 0.2]}, "overflow"),
    ({"input.height": 64.5}, "whole pixels"),
    ({"input.height": 100000, "input.width": 100000}, f"at most {MAX_IMAGE_SIZE}"),
    ({"input.width": 0}, "too small"),
    ({"preprocess.resize_size": 10**9}, "resize_size"),
    ({"num_classes": 3}, "num_classes=3"),
    ({"classes": "abcd"}, "classes must be a list"),
    ({"format": "1"}, "format '1'"),
], ids=["std-nan", "mean-inf", "std-negative", "std-tiny", "height-float", "size-huge", "width-0", "resize-huge",
        "num-classes", "classes-string", "format-string"])
def test_spec_numbers_are_checked(tl_cli, onnx_path, spec, photos, tmp_path, changes, fragment):
    bare = with_spec(onnx_path, tmp_path / "bare.onnx", None)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(spec_dict(spec, **changes)))  # NaN / Infinity as Python's json writes them
    assert_user_error(tl_cli("predict", bare, photos, "--spec", bad), "bad.json", "invalid model spec", fragment)
    embedded = with_spec(onnx_path, tmp_path / "embedded.onnx", bad.read_text())
    assert_user_error(tl_cli("predict", embedded, photos), "embedded.onnx", "invalid model spec", fragment)


def test_train_and_specs_share_the_size_bound():
    from tl.train import options

    assert options.MAX_IMAGE_SIZE is MAX_IMAGE_SIZE
    ModelSpec.create(arch="resnet18", classes=["a", "b"], image_size=MAX_IMAGE_SIZE, resize_mode="shorter")


# -- 14: an extreme aspect ratio is refused with one line, in predict and in serve ---

@pytest.fixture
def shorter_onnx(onnx_path, spec, tmp_path) -> Path:
    shorter = replace(spec, preprocess=replace(spec.preprocess, resize_mode="shorter", resize_size=73))
    return with_spec(onnx_path, tmp_path / "shorter.onnx", shorter.to_json())


def elongated_png(path: Path) -> Path:
    # 200000 x 1 px is a few hundred bytes as a PNG; resized so its short side is 73 px it would be
    # 14,600,000 x 73 (3 GB of RGB).
    Image.new("L", (200_000, 1), 128).save(path)
    return path


def test_elongated_image_is_refused_others_classified(tl_cli, shorter_onnx, photos):
    elongated_png(photos / "strip.png")
    r = tl_cli("predict", shorter_onnx, photos, "--format", "json")
    assert_user_error(r, "1 of 4 images could not be read", "strip.png")
    assert "too elongated" in r.err and "200000x1" in r.err
    assert len(r.out.splitlines()) == 3  # the other images were classified


def test_elongated_image_is_a_bad_request_in_serve(shorter_onnx, tmp_path):
    from tl.runtime.serve.errors import BadRequest
    from tl.runtime.serve.model import ServedModel
    from tl.runtime.serve.repository import find_models

    entry = find_models(shorter_onnx, None)[0]
    served = ServedModel(entry, Classifier.load(shorter_onnx, providers="cpu"), max_batch=4, max_delay_ms=1,
                         queue_limit=8)
    with pytest.raises(BadRequest, match="too elongated"):
        served._decode([elongated_png(tmp_path / "strip.png").read_bytes()])


# -- 18: file names that are not UTF-8 are written escaped, never a crash ---

@pytest.mark.skipif(os.name != "posix", reason="POSIX file names are bytes")
def test_non_utf8_file_names_are_written_escaped(tl_cli, onnx_path, photos, tmp_path):
    first = sorted(photos.iterdir())[0]
    try:
        first.rename(photos / os.fsdecode(b"caf\xe9\xff.png"))
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    out = tmp_path / "preds.csv"
    r = tl_cli("predict", onnx_path, photos, "--format", "csv", "-o", out)
    assert r.code == 0, r.err
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert any(row["source"].endswith("caf\\xe9\\xff.png") for row in rows), rows

    r = tl_cli("predict", onnx_path, photos, "--format", "json")
    assert r.code == 0, r.err
    sources = [json.loads(line)["source"] for line in r.out.splitlines()]
    assert any(s.endswith("caf\\xe9\\xff.png") for s in sources), sources
    r.out.encode("utf-8")  # valid text: no lone surrogates

    r = tl_cli("predict", onnx_path, photos)
    assert r.code == 0, r.err
    assert "caf\\xe9\\xff.png" in r.out


# -- a FIFO (or device) where a file is expected is named as such, never opened ---

def test_fifo_model_spec_and_image_are_named(tl_cli, onnx_path, photos, tmp_path):
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    assert_user_error(tl_cli("predict", fifo, photos), "model.onnx is a FIFO (named pipe)", "regular file")
    assert_user_error(tl_cli("info", fifo, "--no-env"), "is a FIFO")
    spec_fifo = tmp_path / "spec.json"
    os.mkfifo(spec_fifo)
    assert_user_error(tl_cli("predict", onnx_path, photos, "--spec", spec_fifo), "spec.json is a FIFO")
    assert_user_error(tl_cli("predict", "/dev/null", photos), "/dev/null is a character device")
    image_fifo = tmp_path / "pipe.png"
    os.mkfifo(image_fifo)
    r = tl_cli("predict", onnx_path, photos, image_fifo, "--format", "json")
    assert_user_error(r, "1 of 4 images could not be read", "pipe.png is a FIFO")
    assert len(r.out.splitlines()) == 3
