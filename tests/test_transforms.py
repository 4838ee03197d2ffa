"""Transform presets; the eval transform equals the runtime's preprocess on real files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from tl.runtime.errors import TLError
from tl.runtime.images import list_images, load_image, preprocess
from tl.runtime.spec import ModelSpec
from tl.train.transforms import denormalize, eval_transform, train_transform


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise: closer to a photo than pure noise (resampling matters)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255], axis=-1)
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    paths = []
    for name, (h, w) in {"wide.jpg": (75, 131), "tall.png": (140, 61), "square.jpg": (96, 96), "tiny.png": (40, 52)}.items():
        p = d / name
        img = Image.fromarray(_photo(h, w, seed=len(paths)))
        img.save(p, quality=90) if p.suffix == ".jpg" else img.save(p)
        paths.append(p)
    return paths


@pytest.mark.parametrize("resize_mode", ["squash", "shorter"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "lanczos"])
def test_eval_transform_equals_runtime_preprocess(photos, resize_mode, interpolation):
    spec = ModelSpec.create(arch="resnet18", classes=["a", "b"], image_size=32,
                            resize_mode=resize_mode, interpolation=interpolation)
    tf = eval_transform(spec)
    for path in photos:
        ours = tf(load_image(path)).numpy()
        runtime = preprocess(path, spec)[0]
        assert ours.shape == runtime.shape == (3, 32, 32)
        assert np.abs(ours - runtime).max() <= 1e-6, path.name


def test_eval_transform_on_synth_files(synth_data):
    spec = ModelSpec.create(arch="resnet18", classes=["a", "b"], image_size=40, resize_mode="shorter")
    files = list_images(synth_data / "val")[:6]
    assert {p.suffix for p in files} == {".jpg", ".png"}
    ours = torch.stack([eval_transform(spec)(load_image(p)) for p in files]).numpy()
    assert np.abs(ours - preprocess(files, spec)).max() <= 1e-6


def test_eval_transform_structure():
    squash = eval_transform(ModelSpec.create(arch="vgg16", classes=["a", "b"], image_size=64))
    kinds = [type(t) for t in squash.transforms.transforms]
    assert kinds == [T.Resize, T.ToTensor, T.Normalize]
    assert squash.transforms.transforms[0].size == (64, 64)
    shorter = eval_transform(ModelSpec.create(arch="vgg16", classes=["a", "b"], image_size=64, resize_mode="shorter"))
    kinds = [type(t) for t in shorter.transforms.transforms]
    assert kinds == [T.Resize, T.CenterCrop, T.ToTensor, T.Normalize]
    assert shorter.transforms.transforms[0].size == 73  # round(64 / 0.875)


def test_jitter_preset_is_the_blogs_pipeline_fixed():
    spec = ModelSpec.create(arch="vgg16", classes=["a", "b"], image_size=48)
    steps = train_transform(spec, augment="jitter").transforms.transforms
    assert [type(t) for t in steps] == [T.Resize, T.ColorJitter, T.RandomAffine, T.ToTensor, T.Normalize]
    resize, jitter, affine = steps[0], steps[1], steps[2]
    assert resize.size == (48, 48)
    assert jitter.brightness == (0.8, 1.2) and jitter.contrast == (0.8, 1.2)
    assert jitter.saturation == (0.9, 1.1) and jitter.hue == (-0.1, 0.1)
    assert affine.degrees == [-40.0, 40.0] and affine.scale == (1, 2) and affine.fill == 0
    assert affine.shear == [-15.0, 15.0]


@pytest.mark.parametrize("augment", ["jitter", "standard", "none"])
def test_train_presets_output_and_repeatability(photos, augment):
    spec = ModelSpec.create(arch="resnet18", classes=["a", "b"], image_size=32)
    tf = train_transform(spec, augment=augment)
    img = load_image(photos[0])
    torch.manual_seed(3)
    a = tf(img)
    torch.manual_seed(3)
    b = tf(img)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)  # the global torch seed fixes the augmentation
    torch.manual_seed(4)
    c = tf(img)
    if augment == "none":
        assert torch.equal(a, c) and np.abs(a.numpy() - preprocess(photos[0], spec)[0]).max() <= 1e-6
    else:
        assert not torch.equal(a, c)


def test_unknown_augment():
    spec = ModelSpec.create(arch="resnet18", classes=["a", "b"], image_size=32)
    with pytest.raises(TLError, match="--augment"):
        train_transform(spec, augment="heavy")


def test_denormalize_inverts_normalize(photos):
    spec = ModelSpec.create(arch="resnet18", classes=["a", "b"], image_size=32)
    x = torch.from_numpy(preprocess(photos, spec))
    img = denormalize(x, spec)
    assert img.min() >= 0 and img.max() <= 1
    ref = torch.stack([T.ToTensor()(T.Resize((32, 32))(load_image(p))) for p in photos])
    assert torch.allclose(img, ref, atol=1e-5)
