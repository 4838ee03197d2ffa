"""model.int8.onnx: QDQ, symmetric INT8, per-channel weights, calibrated on real images."""

from __future__ import annotations


import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402


@pytest.fixture(scope="module")
def quantized(make_checkpoint, synth_data, tmp_path_factory):
    from tl.export.int8 import CalibOptions, calibration_images, quantize_int8
    from tl.export.onnx import export_onnx
    from tl.train.checkpoint import load_model

    model, spec, _ = load_model(make_checkpoint("resnet18", image_size=48))
    out = tmp_path_factory.mktemp("int8")
    fp32 = export_onnx(model, spec, out / "model.onnx")
    files = calibration_images(calib_dir=synth_data / "train", ckpt=None, count=16)
    info = quantize_int8(fp32, out / "model.int8.onnx", files=files, options=CalibOptions(count=16, method="minmax"))
    return model, spec, out / "model.int8.onnx", info


def test_qdq_pairs_symmetric_zero_points_per_channel(quantized):
    _, _, path, info = quantized
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") >= 10 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    zero_points = [inits[n.input[2]] for n in proto.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits]
    assert zero_points, "no zero points found"
    assert all(not z.any() for z in zero_points)  # symmetric: every zero point is 0
    # INT8 everywhere, except int32 biases (ORT's form; tl.export.trt folds them for TensorRT).
    assert {z.dtype for z in zero_points} <= {np.dtype(np.int8), np.dtype(np.int32)}
    assert sum(z.dtype == np.int8 for z in zero_points) > 10
    # Weights: per-channel (a scale vector per output channel) on every Conv.
    per_channel = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[1]) is not None
                   and inits[n.input[1]].size > 1]
    assert len(per_channel) >= sum(op == "Conv" for op in ops) - 1
    assert info["images"] == 16 and info["calibrate_s"] > 0


def test_int8_runs_on_ort_cpu_with_int8_kernels(quantized, tmp_path):
    model, spec, path, _ = quantized
    import torch

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 3, 48, 48)).astype(np.float32)
    y = sess.run(None, {"input": x})[0]
    assert y.shape == (3, spec.num_classes) and y.dtype == np.float32
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(y - ref).max() < 0.5 * max(1.0, np.abs(ref).max())
    # After ORT's graph optimization the QDQ groups become real integer kernels.
    optimized = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx"), load_external_data=False).graph.node]
    assert "QLinearConv" in optimized, sorted(set(optimized))


def test_int8_metadata(quantized):
    from tl.export.onnx import read_metadata
    from tl.runtime.spec import ModelSpec

    _, spec, path, _ = quantized
    meta = read_metadata(path)
    assert meta["tl.precision"] == "int8" and ModelSpec.from_json(meta["tl.spec"]) == spec
    assert meta["tl.max_batch"] == "32"  # carried over from model.onnx (default max batch)
    # No leftovers from quant_pre_process/calibration beside the artifact.
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.int8.onnx", "model.onnx"]


def test_entropy_calibration(make_checkpoint, synth_data, tmp_path):
    from tl.export.int8 import CalibOptions, calibration_images, quantize_int8
    from tl.export.onnx import export_onnx
    from tl.train.checkpoint import load_model

    model, spec, _ = load_model(make_checkpoint(image_size=32))
    fp32 = export_onnx(model, spec, tmp_path / "model.onnx")
    files = calibration_images(calib_dir=synth_data / "val", ckpt=None, count=8)
    info = quantize_int8(fp32, tmp_path / "model.int8.onnx", files=files, options=CalibOptions(count=8, method="entropy"))
    assert info["method"] == "entropy"
    sess = ort.InferenceSession(str(tmp_path / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((2, 3, 32, 32), np.float32)})[0].shape == (2, 4)


def test_calibration_reader_counts_and_ranges_batches(quantized, synth_data):
    """ORT's strided calibration sees one batch per collection: len() and set_range() count batches."""
    from tl.export.int8 import ImageCalibrationReader, calibration_images
    from tl.runtime.images import preprocess

    _, spec, _, _ = quantized
    files = calibration_images(calib_dir=synth_data / "val", ckpt=None, count=10)
    reader = ImageCalibrationReader(files, spec, batch_size=4)
    assert len(reader) == 3 and reader.images == 10
    reader.set_range(2, 3)  # the last, short batch first: earlier batches are decoded on the way
    last = reader.get_next()["input"]
    assert reader.get_next() is None
    np.testing.assert_array_equal(last, preprocess(files[8:], spec))
    reader.set_range(1, 2)
    np.testing.assert_array_equal(reader.get_next()["input"], preprocess(files[4:8], spec))
    assert reader.get_next() is None
    reader.rewind()
    assert sum(len(b["input"]) for b in iter(reader.get_next, None)) == 10


def test_strided_minmax_equals_one_pass(quantized, synth_data, tmp_path):
    """Batch-by-batch collection (what tl asks ORT for) gives the min-max scales one pass gives."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from tl.export.int8 import CalibOptions, ImageCalibrationReader, Quantizer, calibration_images

    _, spec, path, _ = quantized
    files = calibration_images(calib_dir=synth_data / "train", ckpt=None, count=16)
    with Quantizer(path.with_name("model.onnx"), tmp_path / "a.onnx", files=files,
                   options=CalibOptions(count=16, method="minmax")) as q:
        strided = onnx.load(str(q.quantize("minmax")))
        quantize_static(str(q.pre), str(tmp_path / "one.onnx"), ImageCalibrationReader(files, spec),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        per_channel=True, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    one = onnx.load(str(tmp_path / "one.onnx"))
    scales = lambda p: {t.name: numpy_helper.to_array(t) for t in p.graph.initializer if t.name.endswith("_scale")}  # noqa: E731
    a, b = scales(strided), scales(one)
    assert len(a) > 10 and a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, err_msg=name)


# -- choosing calibration images --------------------------------------------------------------

def test_calibration_images_from_dir_sample_is_fixed_and_bounded(synth_data):
    from tl.export.int8 import calibration_images

    a = calibration_images(calib_dir=synth_data / "train", ckpt=None, count=10)
    b = calibration_images(calib_dir=synth_data / "train", ckpt=None, count=10)
    assert a == b and len(a) == 10 and len({p.parent.name for p in a}) > 1
    assert len(calibration_images(calib_dir=synth_data / "train", ckpt=None, count=10_000)) == 4 * 18


def test_calibration_images_from_checkpoint_data(synth_data):
    from tl.export.int8 import calibration_images
    from tl.runtime.images import list_images

    train = [str(p) for p in list_images(synth_data / "train")]
    ckpt = {"data": {"train_dir": str(synth_data / "train"), "train_files": train[:5]}}
    assert [str(p) for p in calibration_images(calib_dir=None, ckpt=ckpt, count=256)] == train[:5]
    # train_files gone (moved data) but train_dir there: list it.
    ckpt = {"data": {"train_dir": str(synth_data / "train"), "train_files": ["/nope/a.jpg"]}}
    assert len(calibration_images(calib_dir=None, ckpt=ckpt, count=256)) == len(train)
    # Older checkpoints: only args.data (the dataset root).
    assert len(calibration_images(calib_dir=None, ckpt={"args": {"data": str(synth_data)}}, count=256)) == len(train)


def test_calibration_images_errors(tmp_path):
    from tl.export.int8 import calibration_images
    from tl.runtime.errors import TLError

    with pytest.raises(TLError, match="--calib-dir: folder not found"):
        calibration_images(calib_dir=tmp_path / "missing", ckpt=None, count=4)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(TLError, match="no images"):
        calibration_images(calib_dir=tmp_path / "empty", ckpt=None, count=4)
    with pytest.raises(TLError, match="pass --calib-dir"):
        calibration_images(calib_dir=None, ckpt={"data": {"train_dir": "/gone/train", "train_files": []}}, count=4)
    with pytest.raises(TLError, match="pass --calib-dir"):
        calibration_images(calib_dir=None, ckpt={}, count=4)
    with pytest.raises(TLError, match="--calib-count"):
        calibration_images(calib_dir=tmp_path, ckpt=None, count=0)


def test_corrupt_calibration_image_is_a_user_error(make_checkpoint, tmp_path):
    from tl.export.int8 import calibration_images, quantize_int8
    from tl.export.onnx import export_onnx
    from tl.runtime.errors import TLError
    from tl.train.checkpoint import load_model

    model, spec, _ = load_model(make_checkpoint(image_size=32))
    fp32 = export_onnx(model, spec, tmp_path / "model.onnx")
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(TLError, match="broken.jpg"):
        quantize_int8(fp32, tmp_path / "model.int8.onnx", files=calibration_images(calib_dir=calib, ckpt=None, count=4))
    assert not (tmp_path / "model.int8.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib", "model.onnx"]
