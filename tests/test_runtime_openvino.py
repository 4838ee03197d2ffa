"""The openvino backend on real files: the exporter's ONNX through OpenVINO's CPU plugin, against eager PyTorch.

No stub stands in for OpenVINO: the decisions that depend on the CPU (does OpenVINO's default
run bf16 here?) are pure functions tested on both answers, and the real plugin's answer on
this machine is checked against what a compiled model reports.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_user_error
from tl.runtime import Classifier
from tl.runtime.errors import TLError
from tl.runtime.images import list_images

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def model_files(make_onnx):
    return make_onnx()


@pytest.fixture(scope="module")
def ov_clf(model_files):
    return Classifier.load(model_files[0], backend="openvino", intra_op_threads=2)


def test_openvino_matches_eager_pytorch_with_the_f32_hint(ov_clf, model_files, synth_data):
    import torch

    from tl.train.checkpoint import load_model

    files = list_images(synth_data / "val")[:12]
    model, _, _ = load_model(model_files[1])
    x = ov_clf.preprocess(files)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    got = ov_clf.predict_logits(x)
    assert np.abs(got - ref).max() < 1e-3
    assert [p.index for p in ov_clf.predict(files, batch_size=5)] == list(ref.argmax(1))  # dynamic batch 5, 5, 2
    assert (ov_clf.backend_name, ov_clf.precision, ov_clf.max_batch) == ("openvino", "fp32", None)
    assert ov_clf.backend.compiled_precision == "f32" and ov_clf.providers[0].endswith("CPU f32")


def test_spec_comes_from_rt_info(ov_clf, model_files):
    import openvino as ov

    from tl.runtime.artifact import SPEC_KEY
    from tl.runtime.backends.openvino import rt_metadata
    from tl.runtime.onnxmeta import read_onnx_meta
    from tl.train.checkpoint import load_model

    meta = rt_metadata(ov.Core().read_model(str(model_files[0])))
    assert meta == read_onnx_meta(model_files[0], graph=False).metadata  # every metadata_props key, same text
    assert SPEC_KEY in meta and ov_clf.spec == load_model(model_files[1])[1]


def test_what_runs_is_read_back_not_assumed(model_files):
    """OpenVINO ignores a bf16 request on CPUs without bf16, and picks bf16 itself on AMX:
    the precision reported is the compiled model's, and the plugin's default says which case this is."""
    from tl.runtime.backends.openvino import default_inference_precision, runs_as

    default = Classifier.load(model_files[0], backend="ov", inference_precision="default")
    asked = Classifier.load(model_files[0], backend="ov", precision="bf16")  # the older keyword still works
    here = default_inference_precision()
    assert default.backend.compiled_precision == here
    assert default.precision == runs_as("fp32", here) == ("bf16" if here == "bf16" else "fp32")
    assert asked.precision in ("bf16", "fp32") and asked.precision == runs_as("fp32", asked.backend.compiled_precision)
    # Both answers of the decision, whatever this CPU is.
    assert runs_as("fp32", "bf16") == "bf16" and runs_as("fp32", "f32") == "fp32" and runs_as("fp32", "f16") == "fp16"
    assert runs_as("int8", "bf16") == "int8" and runs_as("fp16", "f32") == "fp16"


def test_bench_rows_follow_the_default_precision():
    from tl.benchmarks.runners import openvino_variants

    assert openvino_variants("fp32", "bf16") == [("fp32", "f32"), ("bf16", "default")]  # AMX: its own bf16 row
    assert openvino_variants("fp32", "f32") == [("fp32", "f32")]  # no bf16 here: no bf16 row
    assert openvino_variants("int8", "f32") == [("int8", "default")]
    assert openvino_variants("fp16", "bf16") == [("fp16", "f32")]


def test_options_and_file_kinds_are_checked(model_files, tmp_path):
    with pytest.raises(TLError, match="openvino backend only"):
        Classifier.load(model_files[0], precision="bf16")  # auto = ONNX Runtime
    with pytest.raises(TLError, match="precision must be one of"):
        Classifier.load(model_files[0], backend="openvino", precision="int4")
    with pytest.raises(TLError, match="hint must be one of"):
        Classifier.load(model_files[0], backend="openvino", hint="fastest")
    with pytest.raises(TLError, match="providers apply to ONNX Runtime only"):
        Classifier.load(model_files[0], backend="openvino", providers="cuda")
    (tmp_path / "m.plan").write_bytes(b"\0" * 16)
    with pytest.raises(TLError, match="TensorRT engine"):
        Classifier.load(tmp_path / "m.plan", backend="openvino")
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07" + b"\xff" * 40)
    with pytest.raises(TLError, match="not a valid ONNX"):
        Classifier.load(tmp_path / "bad.onnx", backend="openvino")


def test_cli_predict_and_info_with_openvino(tl_cli, model_files, synth_data, tmp_path):
    r = tl_cli("predict", model_files[0], synth_data / "val", "--backend", "openvino", "--inference-precision", "f32",
               "--format", "json", "--threads", "2")
    assert r.code == 0, r.err
    assert "(openvino, fp32, OpenVINO" in r.err
    old = tl_cli("predict", model_files[0], synth_data / "val", "--backend", "openvino", "--precision", "f32",
                 "--format", "json", "--threads", "2")  # the older spelling, kept for scripts
    assert old.code == 0 and old.out == r.out, old.err
    r = tl_cli("info", model_files[0])
    assert r.code == 0 and "--backend openvino" in r.out and "openvino" in r.out
    assert_user_error(tl_cli("predict", model_files[0], synth_data / "val", "--backend", "tflite"), "--backend", "tflite")
    assert_user_error(tl_cli("predict", model_files[0], synth_data / "val", "--inference-precision", "bf16"),
                      "openvino backend only")


def test_cache_dir_keeps_the_compiled_blob_and_threads_apply(model_files, tmp_path):
    import openvino.properties as props

    clf = Classifier.load(model_files[0], backend="openvino", cache_dir=tmp_path / "ov-cache", intra_op_threads=1,
                          hint="throughput")
    assert list((tmp_path / "ov-cache").glob("*.blob"))
    assert clf.backend.compiled.get_property(props.inference_num_threads) == 1
    again = Classifier.load(model_files[0], backend="openvino", cache_dir=tmp_path / "ov-cache")  # loads the blob
    x = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)
    np.testing.assert_allclose(again.predict_logits(x), clf.predict_logits(x), atol=1e-5)
