"""The runtime's image pipeline equals training's eval transform, on every image kind users have."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tl.runtime import TLError
from tl.runtime.images import BACKGROUND, load_image, preprocess
from tl.runtime.spec import ModelSpec

SPECS = {
    "squash": ModelSpec.create(arch="resnet18", classes=["a", "b"], image_size=32, resize_mode="squash"),
    "shorter": ModelSpec.create(arch="resnet18", classes=["a", "b"], image_size=32, resize_mode="shorter"),
    "bicubic": ModelSpec.create(arch="resnet18", classes=["a", "b"], image_size=40, resize_mode="shorter",
                                interpolation="bicubic", resize_size=48),
}


def _photo(w=71, h=53, seed=0) -> np.ndarray:
    """A smooth gradient plus noise: like a photo, and asymmetric so rotations show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    d = tmp_path_factory.mktemp("kinds")
    rgb = _photo()
    files = {}

    def save(name, img, **kw):
        files[name] = d / name
        img.save(files[name], **kw)

    save("rgb.jpg", Image.fromarray(rgb), quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    save("exif6.jpg", Image.fromarray(rgb), quality=95, exif=exif)
    save("gray.png", Image.fromarray(rgb[..., 0]))
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    save("palette_transparent.png", pal, transparency=0)
    rgba = np.dstack([rgb, np.tile(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), (rgb.shape[0], 1))])
    save("rgba.png", Image.fromarray(rgba))
    save("la.png", Image.merge("LA", [Image.fromarray(rgba[..., 0]), Image.fromarray(rgba[..., 3])]))
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=95)
    save("gray16.png", Image.fromarray(rgb[..., 1].astype(np.uint16) * 257))
    save("bw.bmp", Image.fromarray(rgb[..., 0] > 128))
    save("anim.gif", Image.fromarray(rgb).convert("P"))
    save("rgb.webp", Image.fromarray(rgb), quality=90)
    return files


@pytest.mark.parametrize("mode", list(SPECS))
def test_equals_training_eval_transform(kinds, mode):
    from tl.train.transforms import EvalPreset

    spec = SPECS[mode]
    preset = EvalPreset(spec=spec)
    for name, path in kinds.items():
        ours = preprocess(path, spec)
        ref = preset(load_image(path)).numpy()[None]
        assert ours.shape == (1, 3, spec.input.height, spec.input.width) and ours.dtype == np.float32, name
        np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0, err_msg=name)


def test_decoding_each_kind(kinds):
    rgb = _photo()
    exif = load_image(kinds["exif6.jpg"])
    assert exif.size == (rgb.shape[0], rgb.shape[1])  # orientation 6: width and height swap
    plain = np.asarray(load_image(kinds["rgb.jpg"]), dtype=np.float32)
    shown = np.asarray(exif, dtype=np.float32)
    cw = np.abs(shown - np.rot90(plain, k=-1)).mean()  # 90 degrees clockwise: what a viewer shows
    ccw = np.abs(shown - np.rot90(plain, k=1)).mean()
    assert cw < 8 and ccw > 5 * cw  # JPEG noise only, and clearly not the other way round

    for name in kinds:
        img = load_image(kinds[name])
        assert img.mode == "RGB", name

    rgba = load_image(kinds["rgba.png"])
    left = np.asarray(rgba)[:, 0]  # alpha 0 at the left edge -> the documented background
    assert (left == np.array(BACKGROUND, np.uint8)).all()
    right = np.asarray(rgba)[:, -1]  # alpha 255 at the right edge -> the pixel itself
    assert (right == rgb[:, -1]).all()

    g16 = np.asarray(load_image(kinds["gray16.png"]))
    assert (np.abs(g16[..., 0].astype(int) - rgb[..., 1]) <= 1).all() and (g16[..., 0] == g16[..., 2]).all()

    cmyk = np.asarray(load_image(kinds["cmyk.jpg"]), dtype=np.float32)
    assert np.abs(cmyk - rgb).mean() < 12  # CMYK round trip, colours preserved


def test_in_memory_inputs_match_files(kinds):
    spec = SPECS["shorter"]
    img = Image.open(kinds["rgb.webp"])
    arr = np.asarray(load_image(kinds["rgb.webp"]))
    batch = preprocess([kinds["rgb.webp"], img, arr, arr[..., :1]], spec)
    assert batch.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(batch[0], batch[1])
    np.testing.assert_array_equal(batch[0], batch[2])
    assert preprocess([], spec).shape == (0, 3, 32, 32)


def test_decompression_bomb_and_bad_files(tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(big)
    monkeypatch.setenv("TL_MAX_IMAGE_PIXELS", "10000")  # 300*300 > 2 * 10000: Pillow's error threshold
    with pytest.raises(TLError, match="decompression-bomb.*TL_MAX_IMAGE_PIXELS"):
        load_image(big)
    monkeypatch.setenv("TL_MAX_IMAGE_PIXELS", "none")
    assert load_image(big).size == (300, 300)
    with pytest.raises(TLError, match="not found"):
        load_image(tmp_path / "missing.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(TLError, match="not a readable image"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(TLError, match="HxWx3"):
        load_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(TLError, match="cannot read an image"):
        load_image(42)
