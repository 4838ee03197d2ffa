"""ModelSpec round trip and validation; the image pipeline on the modes real photos come in."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tl.runtime.errors import TLError
from tl.runtime.images import load_image, preprocess
from tl.runtime.spec import ModelSpec


def _spec(**kw) -> ModelSpec:
    return ModelSpec.create(arch="resnet18", classes=["cat", "dog", "fox"], **kw)


# -- ModelSpec ----------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, {"resize_mode": "shorter", "image_size": 64, "interpolation": "bicubic"},
                                {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}])
def test_spec_round_trip(kw, tmp_path):
    spec = _spec(**kw)
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    spec.save(tmp_path / "spec.json")
    assert ModelSpec.load(tmp_path / "spec.json") == spec
    # A TensorRT sidecar wraps the spec: {"spec": ..., "build": ...}.
    assert ModelSpec.from_json(json.dumps({"spec": spec.to_dict(), "build": {"x": 1}})) == spec
    assert spec.num_classes == 3 and spec.classes == ("cat", "dog", "fox")


def test_spec_defaults_resolved_once():
    assert _spec().preprocess.resize_size == 224
    shorter = _spec(resize_mode="shorter")
    assert shorter.preprocess.resize_size == 256 and shorter.input.height == shorter.input.width == 224


@pytest.mark.parametrize("change, fragment", [
    ({"classes": []}, "classes is empty"),
    ({"classes": ["a", "a"]}, "duplicates"),
    ({"num_classes": 5}, "num_classes=5"),
    ({"format": 0}, "format 0"),
    ({"input": {"layout": "NHWC"}}, "NCHW"),
    ({"input": {"channels": 1}}, "channels"),
    ({"input": {"height": 4, "width": 4}}, "too small"),
    ({"preprocess": {"resize_mode": "stretch"}}, "resize_mode"),
    ({"preprocess": {"interpolation": "area"}}, "interpolation"),
    ({"preprocess": {"resize_mode": "shorter", "resize_size": 100}}, "smaller than the crop"),
    ({"preprocess": {"std": [0.2, 0.0, 0.2]}}, "std"),
])
def test_spec_validation_errors(change, fragment):
    d = _spec().to_dict()
    for k, v in change.items():
        if isinstance(v, dict):
            d[k] = {**d[k], **v}
        else:
            d[k] = v
    with pytest.raises(TLError, match="invalid model spec") as e:
        ModelSpec.from_dict(d)
    assert fragment in str(e.value)


@pytest.mark.parametrize("text, fragment", [
    ("not json", "not JSON"), ("[1, 2]", "JSON object"), ('{"classes": ["a", "b"]}', "KeyError"),
    ('{"arch": "x", "classes": ["a", "b"], "input": {"bogus": 1}}', "TypeError"),
])
def test_spec_bad_json(text, fragment):
    with pytest.raises(TLError, match=fragment):
        ModelSpec.from_json(text)


def test_spec_load_missing(tmp_path):
    with pytest.raises(TLError, match="not found"):
        ModelSpec.load(tmp_path / "nope.json")


# -- image modes --------------------------------------------------------------------------


def _rgb(path) -> np.ndarray:
    img = load_image(path)
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


def test_grayscale_l(tmp_path):
    Image.fromarray(np.full((10, 12), 77, np.uint8), "L").save(tmp_path / "l.png")
    arr = _rgb(tmp_path / "l.png")
    assert arr.shape == (10, 12, 3) and (arr == 77).all()


def test_la_transparent_becomes_white(tmp_path):
    a = np.zeros((8, 8, 2), np.uint8)
    a[..., 0] = 30
    a[:4, :, 1] = 255  # top half opaque dark grey, bottom half fully transparent
    Image.fromarray(a, "LA").save(tmp_path / "la.png")
    arr = _rgb(tmp_path / "la.png")
    assert (arr[:4] == 30).all() and (arr[4:] == 255).all()


def test_rgba_composited_on_white(tmp_path):
    a = np.zeros((6, 6, 4), np.uint8)
    a[..., 0] = 255
    a[..., 3] = 128  # half-transparent red
    Image.fromarray(a, "RGBA").save(tmp_path / "rgba.png")
    arr = _rgb(tmp_path / "rgba.png")
    assert (arr[..., 0] == 255).all()
    assert np.allclose(arr[..., 1], 127, atol=2) and np.allclose(arr[..., 2], 127, atol=2)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 255] + [255, 0, 0] + [0] * 762)  # index 0 blue, 1 red
    img.paste(1, (0, 0, 4, 8))
    img.info["transparency"] = 0  # blue = transparent
    img.save(tmp_path / "p.png", transparency=0)
    with Image.open(tmp_path / "p.png") as check:
        assert check.mode == "P" and "transparency" in check.info
    arr = _rgb(tmp_path / "p.png")
    assert (arr[:, :4] == [255, 0, 0]).all()  # opaque red stays red
    assert (arr[:, 4:] == 255).all()  # transparent -> white background, not blue


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as check:
        assert check.mode == "CMYK"
    arr = _rgb(tmp_path / "cmyk.jpg")
    # Pure cyan: no red, full green and blue.
    assert arr[..., 0].max() < 30 and arr[..., 1].min() > 225 and arr[..., 2].min() > 225


def test_16bit_png(tmp_path):
    a = np.zeros((4, 4), np.uint16)
    a[:2] = 65535
    a[2:] = 32896  # 128.5 * 257 -> rounds to 128 in 8 bits
    Image.fromarray(a).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as check:
        assert check.mode.startswith("I")
    arr = _rgb(tmp_path / "g16.png")
    assert (arr[:2] == 255).all() and (abs(arr[2:] - 128) <= 1).all()


def test_exif_rotated_jpeg(tmp_path):
    # 40 wide x 20 tall, white marker in the top-left corner; EXIF orientation 6 = rotate 90 CW on display.
    a = np.zeros((20, 40, 3), np.uint8)
    a[:6, :6] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    arr = _rgb(tmp_path / "rot.jpg")
    assert arr.shape == (40, 20, 3)  # displayed upright: 20 wide x 40 tall
    assert arr[:6, -6:].mean() > 200 and arr[:6, :6].mean() < 50  # marker moved to the top-right


def test_preprocess_output(tmp_path):
    Image.fromarray(np.full((30, 50, 3), 255, np.uint8)).save(tmp_path / "w.png")
    spec = _spec(image_size=32)
    x = preprocess([tmp_path / "w.png", tmp_path / "w.png"], spec)
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.float32
    expect = (1.0 - np.array(spec.preprocess.mean)) / np.array(spec.preprocess.std)
    assert np.allclose(x[0, :, 5, 5], expect, atol=1e-6)


def test_decompression_bomb(tmp_path, monkeypatch):
    Image.new("RGB", (200, 200)).save(tmp_path / "big.png")
    monkeypatch.setenv("TL_MAX_IMAGE_PIXELS", "1000")  # error above 2x the limit, like Pillow
    with pytest.raises(TLError, match="TL_MAX_IMAGE_PIXELS") as e:
        load_image(tmp_path / "big.png")
    assert "big.png" in str(e.value)
    monkeypatch.setenv("TL_MAX_IMAGE_PIXELS", "none")
    assert load_image(tmp_path / "big.png").size == (200, 200)


@pytest.mark.parametrize("content", [b"", b"not an image at all", None])
def test_corrupt_and_truncated(tmp_path, content):
    path = tmp_path / "bad.jpg"
    if content is None:  # a real JPEG cut in half
        Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(TLError, match="bad.jpg"):
        load_image(path)
