"""model.onnx and model.fp16.onnx: real torchvision models, real ONNX Runtime sessions."""

from __future__ import annotations

import numpy as np
import pytest

from tl.runtime.spec import ModelSpec

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(make_checkpoint, tmp_path_factory):
    from tl.export.fp16 import convert_fp16
    from tl.export.onnx import export_onnx
    from tl.train.checkpoint import load_model

    model, spec, _ = load_model(make_checkpoint(image_size=64))
    out = tmp_path_factory.mktemp("onnx")
    fp32 = export_onnx(model, spec, out / "model.onnx", opset=20, max_batch=16)
    fp16 = convert_fp16(fp32, out / "model.fp16.onnx")
    return model, spec, fp32, fp16


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _torch(model, x):
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def test_fp32_io_names_dynamic_batch_opset_and_single_file(exported):
    _, spec, fp32, _ = exported
    proto = onnx.load(str(fp32))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")  # batch is symbolic, never baked in
    assert [d.dim_value for d in dims[1:]] == [3, spec.input.height, spec.input.width]
    assert {o.domain: o.version for o in proto.opset_import}[""] == 20
    # One self-contained file: no external-data references, nothing else written beside it.
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert sorted(p.name for p in fp32.parent.iterdir()) == ["model.fp16.onnx", "model.onnx"]


def test_a_model_over_the_single_file_limit_is_refused_and_nothing_is_written(exported, tmp_path, monkeypatch):
    """Protobuf cannot hold 2 GB in one message; the limit is lowered to this model's size to test it."""
    import tl.export.onnx as tl_onnx
    from tl.runtime.errors import TLError

    _, _, fp32, _ = exported
    proto = onnx.load(str(fp32))
    monkeypatch.setattr(tl_onnx, "TWO_GB", proto.ByteSize())
    with pytest.raises(TLError, match=r"model\.onnx: the model is .* above protobuf's 2 GB limit for one file"):
        tl_onnx.save_model(proto, tmp_path / "model.onnx")
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(tl_onnx, "TWO_GB", proto.ByteSize() + 1)
    tl_onnx.save_model(proto, tmp_path / "model.onnx")
    assert (tmp_path / "model.onnx").read_bytes() == proto.SerializeToString()


def test_metadata_round_trip(exported):
    from tl.export.onnx import read_metadata
    from tl.runtime.spec import ModelSpec

    _, spec, fp32, fp16 = exported
    for path, precision in ((fp32, "fp32"), (fp16, "fp16")):
        meta = read_metadata(path)
        assert ModelSpec.from_json(meta["tl.spec"]) == spec
        assert meta["tl.precision"] == precision
        assert meta["tl.max_batch"] == "16"  # exported with max_batch=16; the runtime sizes batches by it
        # ONNX Runtime sees the same metadata (what tl.runtime reads).
        assert _session(path).get_modelmeta().custom_metadata_map["tl.spec"] == meta["tl.spec"]


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_fp32_matches_torch_at_any_batch(exported, batch):
    model, spec, fp32, _ = exported
    x = np.random.default_rng(batch).standard_normal((batch, 3, spec.input.height, spec.input.width)).astype(np.float32)
    y = _session(fp32).run(None, {"input": x})[0]
    assert y.shape == (batch, spec.num_classes)
    np.testing.assert_allclose(y, _torch(model, x), atol=1e-4, rtol=1e-4)


def test_fp16_has_half_weights_float_io_and_agrees(exported):
    model, spec, _, fp16 = exported
    proto = onnx.load(str(fp16))
    onnx.checker.check_model(proto, full_check=True)
    float_inits = [t for t in proto.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    big = [t for t in float_inits if np.prod(t.dims) > 16]
    assert big and all(t.data_type == onnx.TensorProto.FLOAT16 for t in big)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(n.op_type == "Conv" for n in proto.graph.node)
    x = np.random.default_rng(0).standard_normal((5, 3, spec.input.height, spec.input.width)).astype(np.float32)
    y = _session(fp16).run(None, {"input": x})[0]
    assert y.dtype == np.float32 and y.shape == (5, spec.num_classes)
    ref = _torch(model, x)
    assert np.abs(y - ref).max() < 5e-2 * max(1.0, np.abs(ref).max())
    assert fp16.stat().st_size < 0.6 * (fp16.parent / "model.onnx").stat().st_size


@pytest.mark.parametrize("opset", [13, 16, 24, 99])
def test_unsupported_opset_is_a_user_error(opset, tmp_path):
    from tl.export import ExportOptions
    from tl.runtime.errors import TLError

    with pytest.raises(TLError, match="--opset must be between 17 and 23"):
        ExportOptions(checkpoint=tmp_path / "best.pt", opset=opset)


@pytest.mark.parametrize("opset", [17, 18])
def test_opset_written_is_the_opset_asked_for_and_matches_pytorch(exported, tmp_path, opset):
    """17 goes through the TorchScript exporter (TensorRT 8.6's newest), 18+ through dynamo."""
    import onnx
    import torch

    from tl.export.onnx import export_onnx

    model, spec, _, _ = exported
    path = export_onnx(model, spec, tmp_path / "model.onnx", opset=opset, max_batch=16)
    proto = onnx.load(str(path))
    assert {o.domain: o.version for o in proto.opset_import}[""] == opset
    x = np.random.default_rng(opset).standard_normal((5, 3, spec.input.height, spec.input.width)).astype(np.float32)
    with torch.inference_mode():
        want = model(torch.from_numpy(x)).numpy()
    got = _session(path).run(None, {"input": x})[0]  # batch 5: the batch axis stayed dynamic
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert ModelSpec.from_json({p.key: p.value for p in proto.metadata_props}["tl.spec"]) == spec


def test_set_metadata_replaces_tl_keys_and_keeps_others(exported):
    from tl.export.onnx import read_metadata, set_metadata

    _, spec, fp32, _ = exported
    proto = onnx.load(str(fp32), load_external_data=False)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "author", "me"
    set_metadata(proto, spec, "int8")
    set_metadata(proto, spec, "int8")
    keys = [p.key for p in proto.metadata_props]
    assert sorted(keys) == ["author", "tl.max_batch", "tl.precision", "tl.spec"]
    assert read_metadata(proto)["tl.precision"] == "int8"
    assert read_metadata(proto)["tl.max_batch"] == "16"  # kept when not given
    set_metadata(proto, spec, "int8", 4)
    assert read_metadata(proto)["tl.max_batch"] == "4"


def test_fp16_refuses_onnx_without_spec(tmp_path):
    from onnx import TensorProto, helper

    from tl.export.fp16 import convert_fp16
    from tl.runtime.errors import TLError

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph), str(tmp_path / "foreign.onnx"))
    with pytest.raises(TLError, match="has no tl model spec"):
        convert_fp16(tmp_path / "foreign.onnx", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
