"""tl.runtime.Classifier on real ONNX files from tl's exporter, checked against eager PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import EXPORT_ARCH
from tl.runtime import Classifier, TLError
from tl.runtime.backends import entry_for
from tl.runtime.backends.onnxruntime import CPU_EP, CUDA_EP, TRT_EP, resolve_providers
from tl.runtime.images import list_images, load_image
from tl.runtime.onnxmeta import read_onnx_meta


@pytest.fixture(scope="module")
def model_files(make_onnx):
    return make_onnx()


@pytest.fixture(scope="module")
def clf(model_files):
    return Classifier.load(model_files[0], providers="cpu")


@pytest.fixture(scope="module")
def eager(model_files):
    from tl.train.checkpoint import load_model

    model, spec, _ = load_model(model_files[1])
    return model, spec


def eager_logits(eager, files):
    import torch

    from tl.train.transforms import EvalPreset

    model, spec = eager
    preset = EvalPreset(spec=spec)
    x = torch.stack([preset(load_image(f)) for f in files])
    with torch.no_grad():
        return model(x).numpy()


def test_load_reports_what_runs(clf, model_files):
    assert clf.backend_name == "onnxruntime"
    assert clf.providers == [CPU_EP]
    assert clf.precision == "fp32"
    assert clf.max_batch is None  # dynamic batch on CPU: unbounded
    assert clf.path == model_files[0]
    assert clf.spec.arch == EXPORT_ARCH and clf.spec.num_classes == 4
    assert clf.device_compute_ms(np.zeros((1, 3, 64, 64), np.float32), 3) is None  # CPU: no device time
    assert "onnxruntime" in repr(clf)


def test_predictions_equal_eager_pytorch(clf, eager, synth_data):
    files = list_images(synth_data / "val")[:12]
    ref = eager_logits(eager, files)
    got = clf.predict_logits(clf.preprocess(files))
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    preds = clf.predict(files, top_k=3, batch_size=5)  # 5 + 5 + 2: partial last batch
    assert [p.index for p in preds] == list(ref.argmax(1))
    assert [p.source for p in preds] == [str(f) for f in files]
    for p, row in zip(preds, ref):
        e = np.exp(row - row.max())
        probs = e / e.sum()
        assert p.label == clf.classes[p.index]
        assert p.score == pytest.approx(float(probs.max()), abs=1e-5)
        assert len(p.top_k) == 3 and p.top_k[0] == (p.label, p.score)
        assert [s for _, s in p.top_k] == sorted((s for _, s in p.top_k), reverse=True)


def test_inputs_path_pil_and_array_agree(clf, synth_data):
    f = list_images(synth_data / "val")[0]
    img = load_image(f)
    by_path, by_pil, by_arr = clf.predict(f)[0], clf.predict(img)[0], clf.predict(np.asarray(img))[0]
    assert by_path.source == str(f) and by_pil.source is None
    assert by_path.top_k == by_pil.top_k == by_arr.top_k
    gray = np.asarray(img.convert("L"))  # HxW uint8 works too
    assert clf.predict([gray, gray], top_k=10)[0].top_k.__len__() == 4  # top_k clipped to num_classes


def test_batch_splitting_with_fixed_batch_model(model_files, clf, tmp_path):
    """A model with a fixed batch of 4: 10 inputs run as 4 + 4 + 2 (the last one padded)."""
    import onnx

    proto = onnx.load(str(model_files[0]))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    proto.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 4
    fixed_path = tmp_path / "fixed4.onnx"
    onnx.save(proto, str(fixed_path))
    fixed = Classifier.load(fixed_path, providers="cpu")
    assert fixed.max_batch == 4 and fixed.backend.min_batch == 4

    seen = []
    real_run = fixed.backend.run

    def spy(batch):
        seen.append(batch.shape[0])
        return real_run(batch)

    fixed.backend.run = spy
    x = np.random.default_rng(0).standard_normal((10, 3, 64, 64)).astype(np.float32)
    got = fixed.predict_logits(x)
    assert seen == [4, 4, 4] and got.shape == (10, 4)
    np.testing.assert_allclose(got, clf.predict_logits(x), atol=1e-5)
    assert fixed.predict_logits(x[:0]).shape == (0, 4)


def test_precision_from_metadata_and_from_graph(model_files, tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    meta = read_onnx_meta(model_files[0])
    proto = onnx.load(str(model_files[0]))
    assert meta.opset == {o.domain: o.version for o in proto.opset_import}[""]
    assert meta.metadata == {p.key: p.value for p in proto.metadata_props}
    assert meta.op_types == {n.op_type for n in proto.graph.node}
    assert meta.precision() == "fp32" and meta.metadata["tl.precision"] == "fp32"

    def tiny(path, nodes, inits):
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])], inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        onnx.save(m, str(path))
        return read_onnx_meta(path)

    w16 = numpy_helper.from_array(np.eye(4, dtype=np.float16), "w")
    fp16 = tiny(tmp_path / "a.onnx", [helper.make_node("Cast", ["w"], ["w32"], to=TensorProto.FLOAT),
                                      helper.make_node("MatMul", ["x", "w32"], ["y"])], [w16])
    assert fp16.precision() == "fp16" and fp16.opset == 17 and not fp16.metadata
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zp = numpy_helper.from_array(np.array(0, np.int8), "z")
    int8 = tiny(tmp_path / "b.onnx", [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                                      helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], [scale, zp])
    assert int8.precision() == "int8"
    # ORT runs it too (real file), and Classifier reports the graph's precision
    assert Classifier.load(tmp_path / "b.onnx", spec=_spec4()).precision == "int8"


def _spec4():
    from tl.runtime.spec import ModelSpec

    return ModelSpec.create(arch="custom", classes=["a", "b", "c", "d"], image_size=8)


def test_onnx_without_spec_needs_spec(model_files, clf, tmp_path):
    import onnx

    proto = onnx.load(str(model_files[0]))
    del proto.metadata_props[:]
    bare = tmp_path / "foreign.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(TLError, match="spec"):
        Classifier.load(bare)
    spec_file = tmp_path / "spec.json"
    clf.spec.save(spec_file)
    other = Classifier.load(bare, spec=spec_file, providers=["cpu"])
    assert other.spec == clf.spec and other.precision == "fp32"  # fp32 from the graph
    x = np.zeros((2, 3, 64, 64), np.float32)
    np.testing.assert_allclose(other.predict_logits(x), clf.predict_logits(x), atol=1e-6)
    # a spec that does not fit the model (3 classes for a 4-logit model) is caught
    wrong = clf.spec.with_(classes=("a", "b", "c"), num_classes=3)
    with pytest.raises(TLError, match="does not belong"):
        Classifier.load(bare, spec=wrong).predict_logits(x)


def test_load_errors(tmp_path, model_files, clf):
    with pytest.raises(TLError, match="not found"):
        Classifier.load(tmp_path / "missing.onnx")
    with pytest.raises(TLError, match="folder"):
        Classifier.load(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(TLError, match="not a model file"):
        Classifier.load(tmp_path / "notes.txt")
    (tmp_path / "garbage.onnx").write_bytes(b"\x00\x01 not a protobuf at all" * 10)
    with pytest.raises(TLError, match="not a valid ONNX"):
        Classifier.load(tmp_path / "garbage.onnx")
    with pytest.raises(TLError, match="TensorRT engine"):
        entry_for(tmp_path / "m.plan", "ort")
    with pytest.raises(TLError, match="unknown backend"):
        entry_for(model_files[0], "tensorflow")
    with pytest.raises(TLError, match="not available"):
        Classifier.load(model_files[0], providers="cuda")
    with pytest.raises(TLError, match="expected a batch"):
        clf.predict_logits(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(TLError, match="top_k"):
        clf.predict(np.zeros((8, 8, 3), np.uint8), top_k=0)
    with pytest.raises(TLError, match="uint8"):
        clf.predict(np.zeros((8, 8, 3), np.float32))


def test_resolve_providers_order_and_aliases():
    everything = [CPU_EP, TRT_EP, "AzureExecutionProvider", CUDA_EP]
    assert resolve_providers(None, everything) == [CUDA_EP, CPU_EP]  # the TensorRT EP only when asked for
    assert resolve_providers("auto", [CPU_EP]) == [CPU_EP]
    assert resolve_providers("cuda,cpu", everything) == [CUDA_EP, CPU_EP]
    assert resolve_providers(["trt", "TensorrtExecutionProvider", "cpu"], everything) == [TRT_EP, CPU_EP]
    with pytest.raises(TLError, match="onnxruntime-gpu"):
        resolve_providers("trt", [CPU_EP])


def test_trt_ep_options_follow_the_model(clf, tmp_path):
    opts = clf.backend._trt_options(tmp_path / "cache", 16)
    assert clf.precision == "fp32" and not opts["trt_fp16_enable"]  # an FP32 file runs in FP32 on the EP too
    assert opts["trt_engine_cache_enable"] and opts["trt_timing_cache_enable"]
    cache = Path(opts["trt_engine_cache_path"])
    assert cache.parent == tmp_path / "cache" and cache.is_dir() and len(cache.name) == 16  # keyed by the file's sha256
    assert opts["trt_profile_min_shapes"] == "input:1x3x64x64"
    assert opts["trt_profile_max_shapes"] == "input:16x3x64x64"


def test_prediction_to_dict_is_json(clf):
    p = clf.predict(np.full((20, 30, 3), 128, np.uint8), top_k=2)[0]
    d = json.loads(json.dumps(p.to_dict()))
    assert d["label"] == p.label and len(d["top_k"]) == 2 and d["source"] is None


def test_context_manager_and_rgba_image(model_files):
    with Classifier.load(model_files[0], providers="cpu", intra_op_threads=1) as c:
        rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
        white = Image.new("RGB", (40, 30), (255, 255, 255))
        assert c.predict(rgba)[0].top_k == c.predict(white)[0].top_k  # transparent -> white background


def test_fp16_artifact_from_the_exporter(model_files, clf, synth_data, tmp_path):
    """model.fp16.onnx (float16 weights, float32 I/O): precision from metadata and from the graph alone."""
    import onnx

    from tl.export.fp16 import convert_fp16

    half_path = convert_fp16(model_files[0], tmp_path / "model.fp16.onnx")
    half = Classifier.load(half_path, providers="cpu")
    assert half.precision == "fp16"
    files = list_images(synth_data / "val")[:8]
    x = clf.preprocess(files)
    ref, got = clf.predict_logits(x), half.predict_logits(x)
    assert got.dtype == np.float32 and np.abs(got - ref).max() < 0.05
    proto = onnx.load(str(half_path))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != "tl.precision"]
    del proto.metadata_props[:]
    for k, v in kept:
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(tmp_path / "undeclared.onnx"))
    assert Classifier.load(tmp_path / "undeclared.onnx").precision == "fp16"
