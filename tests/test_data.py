"""Dataset discovery: train/val folders, the seeded stratified split, bad and odd files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_user_error
from tl.runtime.errors import TLError
from tl.runtime.images import preprocess
from tl.runtime.spec import ModelSpec
from tl.train.data import ImageFileDataset, prepare_data, stratified_split
from tl.train.transforms import eval_transform


def _img(path: Path, value: int = 100, mode: str = "RGB", size=(20, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, (value,) * len(mode) if len(mode) > 1 else value).save(path)
    return path


def _flat(root: Path, counts: dict[str, int]) -> Path:
    """DATA/<class>/ with no train/val folders."""
    for c, n in counts.items():
        for i in range(n):
            _img(root / c / f"{c}_{i:03d}.{'jpg' if i % 2 else 'png'}", value=10 * i % 255)
    return root


def test_train_val_folders(synth_data):
    data = prepare_data(synth_data)
    assert data.classes == ["circle", "cross", "square", "triangle"]
    assert data.val_dir == synth_data / "val" and data.val_split is None
    assert len(data.train_files) == 4 * 18 and len(data.val_files) == 4 * 6
    assert all("/train/" in str(p) for p in data.train_files) and all("/val/" in str(p) for p in data.val_files)
    assert [data.classes[y] for y in data.val_labels] == [p.parent.name for p in data.val_files]
    rec = data.record()
    assert rec["val_dir"] == str((synth_data / "val").resolve()) and rec["val_split"] is None
    assert rec["val_files"] == [str(p.resolve()) for p in data.val_files]
    assert rec["val_labels"] == data.val_labels


def test_stratified_split_is_seeded_and_recorded(tmp_path):
    root = _flat(tmp_path / "flat", {"a": 10, "b": 20, "c": 5})
    d1 = prepare_data(root, val_split=0.2, seed=7)
    d2 = prepare_data(root, val_split=0.2, seed=7)
    d3 = prepare_data(root, val_split=0.2, seed=8)
    assert d1.val_files == d2.val_files and d1.train_files == d2.train_files
    assert d1.val_files != d3.val_files
    # Stratified: 20% of every class (at least one), no overlap, nothing lost.
    per_class = {c: sum(1 for y in d1.val_labels if d1.classes[y] == c) for c in d1.classes}
    assert per_class == {"a": 2, "b": 4, "c": 1}
    assert not set(d1.val_files) & set(d1.train_files)
    assert len(d1.val_files) + len(d1.train_files) == 35
    rec = d1.record()
    assert rec["val_split"] == 0.2 and rec["seed"] == 7 and rec["val_dir"] is None
    assert rec["root"] == str(root.resolve())


def test_stratified_split_unit():
    labels = [0] * 50 + [1] * 30
    tr, va = stratified_split(labels, fraction=0.1, seed=0)
    assert sorted(tr + va) == list(range(80)) and len(va) == 8
    assert stratified_split(labels, fraction=0.1, seed=0) == (tr, va)


def test_only_train_folder_is_split(tmp_path):
    root = tmp_path / "d"
    _flat(root / "train", {"x": 6, "y": 6})
    data = prepare_data(root, val_split=0.5, seed=0)
    assert data.classes == ["x", "y"] and len(data.val_files) == 6 and data.val_split == 0.5


def test_non_images_ignored(tmp_path):
    root = _flat(tmp_path / "d", {"a": 3, "b": 3})
    (root / "a" / "notes.txt").write_text("hello")
    (root / "a" / ".DS_Store").write_bytes(b"\0\1")
    (root / "b" / "labels.json").write_text("{}")
    (root / "README.md").write_text("# data")
    (root / ".hidden").mkdir()
    data = prepare_data(root, val_split=0.34, seed=0)
    assert data.classes == ["a", "b"]
    assert all(p.suffix in (".jpg", ".png") for p in data.train_files + data.val_files)
    assert len(data.train_files + data.val_files) == 6


def test_dataset_reads_through_runtime_pipeline(tmp_path):
    # A CMYK JPEG and an RGBA PNG: the dataset must see what tl.runtime sees.
    root = tmp_path / "d"
    _img(root / "a" / "cmyk.jpg", mode="CMYK", value=60)
    rgba = np.zeros((16, 20, 4), np.uint8)
    rgba[..., 1] = 200
    rgba[:8, :, 3] = 255
    (root / "b").mkdir(parents=True)
    Image.fromarray(rgba, "RGBA").save(root / "b" / "rgba.png")
    spec = ModelSpec.create(arch="resnet18", classes=["a", "b"], image_size=16)
    files = [root / "a" / "cmyk.jpg", root / "b" / "rgba.png"]
    ds = ImageFileDataset(files, [0, 1], eval_transform(spec))
    x = torch.stack([ds[i][0] for i in range(2)]).numpy()
    assert [ds[i][1] for i in range(2)] == [0, 1]
    assert np.abs(x - preprocess(files, spec)).max() <= 1e-6


def _corrupt(root: Path) -> tuple[Path, Path]:
    bad = root / "a" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    src = _img(root / "b" / "cut.png", size=(64, 64))
    arr = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(src)
    src.write_bytes(src.read_bytes()[:-300])  # truncated PNG
    return bad, src


def test_corrupt_images_error_or_skip(tmp_path):
    root = _flat(tmp_path / "d", {"a": 4, "b": 4})
    bad, cut = _corrupt(root)
    with pytest.raises(TLError, match="--skip-bad") as e:
        prepare_data(root, val_split=0.25)
    assert "broken.jpg" in str(e.value) and "1 more" in str(e.value)
    data = prepare_data(root, val_split=0.25, skip_bad=True)
    assert {p for p, _ in data.skipped} == {bad, cut}
    assert bad not in data.train_files + data.val_files and len(data.train_files + data.val_files) == 8
    assert sorted(data.record()["skipped"]) == sorted(str(p.resolve()) for p in (bad, cut))


def test_truncated_jpeg_detected(tmp_path):
    root = _flat(tmp_path / "d", {"a": 3, "b": 3})
    p = root / "a" / "big.jpg"
    arr = (np.random.default_rng(1).random((300, 400, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(p, quality=90)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(TLError, match="big.jpg"):
        prepare_data(root, val_split=0.34)


@pytest.mark.parametrize("case, fragments", [
    ("missing", ["data folder not found"]),
    ("file", ["is not a folder"]),
    ("no_classes", ["no class folders"]),
    ("single", ["single class", "at least 2"]),
    ("empty_class", ["has no images", "empty"]),
    ("mismatch", ["different class folders"]),
    ("corrupt", ["broken.jpg", "--skip-bad"]),
    ("all_bad_class", ["no usable images"]),
    ("one_image_class", ["only 1 usable image"]),
])
def test_bad_data_cli(tl_cli, tmp_path, case, fragments):
    root = tmp_path / "data"
    if case == "file":
        root.write_text("x")
    elif case == "no_classes":
        root.mkdir()
        _img(root / "loose.jpg")
    elif case == "single":
        _flat(root, {"only": 4})
    elif case == "empty_class":
        _flat(root, {"a": 4, "b": 4})
        (root / "empty").mkdir()
        fragments = ["has no images", str(root / "empty")]
    elif case == "mismatch":
        _flat(root / "train", {"a": 2, "b": 2})
        _flat(root / "val", {"a": 2, "c": 2})
    elif case == "corrupt":
        _flat(root, {"a": 4, "b": 4})
        _corrupt(root)
    elif case == "all_bad_class":
        _flat(root, {"a": 4})
        (root / "b").mkdir()
        (root / "b" / "x.jpg").write_bytes(b"junk")
    elif case == "one_image_class":
        _flat(root, {"a": 4, "b": 1})
    extra = ["--skip-bad"] if case == "all_bad_class" else []
    r = tl_cli("train", root, "--arch", "resnet18", "--weights", "none", "--epochs", "1",
               "--out", tmp_path / "run", *extra)
    assert_user_error(r, *fragments)
    assert not (tmp_path / "run" / "best.pt").exists()
