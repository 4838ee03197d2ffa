"""`tl export --triton REPO`: config.pbtxt checked against Triton's own schema, files against the export's.

Triton's schema is tritonclient's ``model_config_pb2``, loaded from its file: importing it as
``tritonclient.grpc.model_config_pb2`` runs ``tritonclient.grpc/__init__``, which needs grpcio (the
``grpc`` extra), and that extra pins protobuf<7, which would downgrade the protobuf onnx uses. The
schema module itself needs only protobuf, so the test reads the very file tritonclient ships.
"""

from __future__ import annotations

import filecmp
import importlib.util
import shutil
from pathlib import Path

import pytest

from conftest import assert_user_error
from tl.runtime.serve.options import ServeOptions

EXPORT = ["--opset", "17", "--parity-count", "4"]  # the TorchScript exporter: seconds, not half a minute


@pytest.fixture(scope="session")
def schema():
    """Triton's ModelConfig protobuf module (model_config.proto), as tritonclient ships it."""
    import tritonclient

    path = Path(tritonclient.__path__[0]) / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_config(schema, folder: Path):
    from google.protobuf import text_format

    return text_format.Parse((folder / "config.pbtxt").read_text(), schema.ModelConfig())


def spec_of(config):
    from tl.runtime.spec import ModelSpec

    return ModelSpec.from_json(config.parameters["tl.spec"].string_value)


@pytest.fixture(scope="module")
def exported(make_checkpoint, tmp_path_factory):
    """One real export (model.onnx + model.fp16.onnx) with --triton, through the CLI entry point."""
    from tl.cli import main

    root = tmp_path_factory.mktemp("triton")
    out, repo = root / "exports" / "shapes", root / "repo"
    (repo / "other" / "1").mkdir(parents=True)  # a model of someone else's, to be left alone
    (repo / "other" / "config.pbtxt").write_text('name: "other"\n')
    args = ["export", make_checkpoint(image_size=48), "--out", out, "--onnx", "--fp16", "--max-batch", "16",
            "--triton", repo, *EXPORT]
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    assert e.value.code in (0, None)
    return out, repo


def test_each_artifact_is_a_model_triton_reads(exported, schema):
    from tl.runtime.artifact import read_spec

    out, repo = exported
    assert sorted(p.name for p in repo.iterdir()) == ["other", "shapes", "shapes_fp16"]  # no staging, no lock
    assert (repo / "other" / "config.pbtxt").read_text() == 'name: "other"\n'
    for name, artifact in (("shapes", "model.onnx"), ("shapes_fp16", "model.fp16.onnx")):
        folder = repo / name
        assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == [
            "1", "1/model.onnx", "config.pbtxt", "labels.txt"]
        assert filecmp.cmp(folder / "1" / "model.onnx", out / artifact, shallow=False)
        spec = read_spec(out / artifact)
        cfg = parse_config(schema, folder)
        assert (cfg.name, cfg.platform, cfg.max_batch_size) == (name, "onnxruntime_onnx", 16)  # --max-batch
        assert spec_of(cfg) == spec
        assert (folder / "labels.txt").read_text().splitlines() == list(spec.classes)
        (inp,), (outp,) = cfg.input, cfg.output
        assert (inp.name, inp.data_type, inp.format, list(inp.dims)) == (
            "input", schema.TYPE_FP32, schema.ModelInput.FORMAT_NCHW, [3, 48, 48])
        assert (outp.name, outp.data_type, list(outp.dims), outp.label_filename) == (
            "logits", schema.TYPE_FP32, [4], "labels.txt")
        assert cfg.HasField("dynamic_batching")  # Triton batches only with this block present
        assert cfg.dynamic_batching.max_queue_delay_microseconds == ServeOptions().max_delay_ms * 1000
        assert [(g.kind, g.count) for g in cfg.instance_group] == [(schema.ModelInstanceGroup.KIND_AUTO, 1)]
        check_matches_onnx(folder / "1" / "model.onnx", cfg)


def check_matches_onnx(path: Path, cfg) -> None:
    """What Triton's ONNX Runtime backend checks on load: names, and shapes after the batch axis."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (i,), (o,) = session.get_inputs(), session.get_outputs()
    assert (i.name, i.shape[1:], o.name, o.shape[1:]) == (
        cfg.input[0].name, list(cfg.input[0].dims), cfg.output[0].name, list(cfg.output[0].dims))
    assert not isinstance(i.shape[0], int)  # the batch axis is dynamic: max_batch_size > 0 needs it


def write_plan(folder: Path, *, image_size: int = 40, classes=("cat", "dog", "bird"), max_batch: int = 8,
               min_batch: int = 1) -> Path:
    """An engine as tl export leaves it (plan bytes + sidecar); the bytes are not a real plan (no TensorRT here)."""
    from tl.runtime.sidecar import BuildRecord, write_sidecar
    from tl.runtime.spec import ModelSpec

    folder.mkdir(parents=True, exist_ok=True)
    plan = folder / "model.fp16.plan"
    plan.write_bytes(b"serialized engine " + bytes(range(256)))
    spec = ModelSpec.create(arch="resnet18", classes=list(classes), image_size=image_size)
    shape = [3, image_size, image_size]
    write_sidecar(plan, spec, BuildRecord(tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7",
                                          precision="fp16", profile={"min": [min_batch, *shape], "opt": [4, *shape],
                                                                     "max": [max_batch, *shape]}))
    return plan


def test_plan_config_from_its_sidecar(tmp_path, schema):
    from tl.export.triton import write_repository
    from tl.runtime.sidecar import read_sidecar, sidecar_path

    plan = write_plan(tmp_path / "exp", max_batch=8)
    (folder,) = write_repository(tmp_path / "repo", [plan], "cls")
    assert folder == tmp_path / "repo" / "cls_fp16_trt"
    assert filecmp.cmp(folder / "1" / "model.plan", plan, shallow=False)
    assert filecmp.cmp(folder / "1" / "model.plan.json", sidecar_path(plan), shallow=False)  # tl loads it from here
    cfg = parse_config(schema, folder)
    assert (cfg.name, cfg.platform, cfg.max_batch_size) == ("cls_fp16_trt", "tensorrt_plan", 8)  # the profile max
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(schema.ModelInstanceGroup.KIND_GPU, 1)]
    assert list(cfg.input[0].dims) == [3, 40, 40] and list(cfg.output[0].dims) == [3]
    assert spec_of(cfg) == read_sidecar(plan)[0]
    assert (folder / "labels.txt").read_text() == "cat\ndog\nbird\n"


def test_plan_that_cannot_take_batch_1_is_refused(tmp_path):
    """Triton's batcher sends batches from 1 up and, unlike tl's Classifier, does not pad to the profile's min."""
    from tl.export.triton import write_repository
    from tl.runtime.errors import TLError

    plan = write_plan(tmp_path / "exp", min_batch=4)
    with pytest.raises(TLError, match="batch profile starts at 4.*--min-batch 1"):
        write_repository(tmp_path / "repo", [plan], "cls")
    assert not (tmp_path / "repo").exists()


def test_second_write_replaces_the_model_folder_whole(tmp_path, schema, exported):
    from tl.export.triton import STAGING, write_repository

    repo = tmp_path / "repo"
    (folder,) = write_repository(repo, [write_plan(tmp_path / "a", max_batch=8)], "m")
    (folder / "2").mkdir()  # a version of the old model, and a file of it, that the new one must not inherit
    (folder / "notes.txt").write_text("old")
    (other,) = write_repository(repo, [write_plan(tmp_path / "b", image_size=56)], "keep")
    (repo / STAGING / "m").mkdir(parents=True)  # left by a killed export
    shutil.copyfile(exported[0] / "model.onnx", tmp_path / "b" / "model.onnx")
    (new,) = write_repository(repo, [tmp_path / "b" / "model.fp16.plan"], "m")
    assert new == folder and sorted(p.name for p in folder.iterdir()) == ["1", "config.pbtxt", "labels.txt"]
    assert list(parse_config(schema, folder).input[0].dims) == [3, 56, 56]  # the second model's
    assert sorted(p.name for p in repo.iterdir()) == ["keep_fp16_trt", "m_fp16_trt"]
    (fp32,) = write_repository(repo, [tmp_path / "b" / "model.onnx"], "m")  # model.onnx is the bare name
    assert fp32.name == "m" and parse_config(schema, fp32).platform == "onnxruntime_onnx"
    assert parse_config(schema, other).name == "keep_fp16_trt"


def test_bad_repos_and_names_fail_before_exporting(tl_cli, make_checkpoint, synth_data, tmp_path):
    run = tmp_path / "runs" / "shapes"
    run.mkdir(parents=True)
    ckpt = shutil.copyfile(make_checkpoint(image_size=48), run / "best.pt")
    out = tmp_path / "exp"
    (tmp_path / "file").write_text("x")
    cases = [
        (["--triton", out / "repo"], "must not contain each other"),
        (["--triton", out], "must not contain each other"),
        (["--triton", synth_data / "val", "--val-dir", synth_data / "val"], "is an input of this export"),
        (["--triton", run, "--triton-name", "x"], "is an input of this export"),
        (["--triton", tmp_path / "runs", "--triton-name", "shapes"], "would replace"),
        (["--triton", tmp_path / "file"], "--triton", "is a file"),
        (["--triton", tmp_path / "repo", "--triton-name", "my model/v2"], "a Triton model name"),
        (["--triton", tmp_path / "repo", "--triton-name", ".hidden"], "a Triton model name"),
        (["--triton-name", "x"], "--triton-name needs --triton"),
    ]
    for extra, *fragments in cases:
        r = tl_cli("export", run, "--out", out, *extra)
        assert_user_error(r, *fragments)
        assert not (out / "export.json").exists() and not (tmp_path / "repo" / "my model").exists()
    assert sorted(p.name for p in run.iterdir()) == ["best.pt"] and filecmp.cmp(ckpt, make_checkpoint(image_size=48))


def test_default_name_is_the_export_folder_made_safe():
    from tl.export.triton import default_name, model_name

    assert default_name("exports/shapes") == "shapes"
    assert default_name("exports/run 2026-11-26 15:00") == "run_2026-11-26_15_00"
    assert [model_name("x", f) for f in ("model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.fp16.plan",
                                         "model.int8.plan")] == ["x", "x_fp16", "x_int8", "x_fp16_trt", "x_int8_trt"]


def test_the_repository_loads_in_tl_serve(exported, tmp_path):
    """What --triton wrote is served by `tl serve` as is: each model answers as its artifact does in-process."""
    import numpy as np
    import tritonclient.http as httpclient

    from tl.benchmarks.serve_load import ServeProcess
    from tl.runtime import Classifier

    out, repo = exported
    served = tmp_path / "repo"  # the export's model folders, without the fixture's empty model of someone else's
    shutil.copytree(repo, served, ignore=lambda d, names: ["other"] if Path(d) == repo else [])
    server = ServeProcess(served, "--providers", "cpu")
    try:
        client = server.client()
        x = np.random.default_rng(0).standard_normal((3, 3, 48, 48)).astype(np.float32)
        for name, artifact in (("shapes", "model.onnx"), ("shapes_fp16", "model.fp16.onnx")):
            meta = client.get_model_metadata(name)
            assert meta["platform"] == "onnxruntime_onnx" and meta["parameters"]["max_batch_size"] == 16
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            got = client.infer(name, [inp]).as_numpy("logits")
            with Classifier.load(out / artifact, providers="cpu") as clf:
                np.testing.assert_allclose(got, clf.predict_logits(x), rtol=0, atol=1e-5)
    finally:
        assert server.stop() == 0


# -- --triton-release: what a chosen Triton's ONNX Runtime loads ---------------------------------


def test_release_table_is_consistent_and_is_the_readmes():
    """Releases in order, each ONNX Runtime no older than the one before and loading no less; the README's rows
    say what the table says."""
    import re

    from conftest import REPO
    from tl.export.options import DEFAULT_OPSET, MIN_OPSET
    from tl.export.triton_releases import ORT_LIMITS, first_release, releases

    rows = releases()
    assert [r.name for r in rows] == sorted(r.name for r in rows)
    version = lambda v: tuple(map(int, v.split(".")))  # noqa: E731
    for a, b in zip(rows, rows[1:]):
        assert version(a.ort) <= version(b.ort) and (a.max_opset, a.max_ir) <= (b.max_opset, b.max_ir)
    assert all(r.at_least == (".".join(r.ort.split(".")[:2]) not in ORT_LIMITS) for r in rows)
    readme = (REPO / "README.md").read_text()
    table = {m[0]: m[1:] for m in re.findall(r"^\| (\d\d\.\d\d)-(\d\d\.\d\d) \| [^|]+ \| (?:at least )?(\d+) / (\d+) \| "
                                             r"(yes|no) \| (yes|no) \|$", readme, re.M)}
    assert table, "the README's Triton release table"
    for first, (last, opset, ir, default_ok, opset17_ok) in table.items():
        span = [r for r in rows if first <= r.name <= last]
        assert span and {(r.max_opset, r.max_ir) for r in span} == {(int(opset), int(ir))}, first
        assert default_ok == ("yes" if first >= first_release(DEFAULT_OPSET) else "no")
        assert opset17_ok == ("yes" if first >= first_release(MIN_OPSET) else "no")
    covered = {r.name for r in rows for f, (last, *_) in table.items() if f <= r.name <= last}
    assert covered == {r.name for r in rows}


def test_bad_or_unknown_release_is_refused_before_anything_is_written(tl_cli, make_checkpoint, tmp_path):
    out, repo = tmp_path / "exp", tmp_path / "repo"
    ckpt = make_checkpoint(image_size=48)
    cases = [
        (["--triton", repo, "--triton-release", "24.5"], "--triton-release '24.5'", "YY.MM"),
        (["--triton", repo, "--triton-release", "24.13"], "YY.MM"),
        (["--triton-release", "24.05"], "--triton-release needs --triton REPO"),
        (["--triton", repo, "--triton-release", "22.12"], "tl knows Triton 23.01 through"),
        # the default export (opset 20, IR 10) on a Triton whose ONNX Runtime 1.17 reads IR 9 at most
        (["--triton", repo, "--triton-release", "24.03"], "opset 20, IR version 10", "ONNX Runtime 1.17.2",
         "--opset 17", "Triton 24.05 or later"),
        (["--triton", repo, "--triton-release", "24.05", "--opset", "22"], "loads opset 21", "--opset 21"),
    ]
    for extra, *fragments in cases:
        assert_user_error(tl_cli("export", ckpt, "--out", out, *extra), *fragments)
        assert not out.exists() and not repo.exists()


def test_opset_17_export_for_an_older_release(tl_cli, make_checkpoint, tmp_path):
    """--opset 17 is what Triton 23.01 loads: the export and the repository are written, each file IR 8."""
    from tl.export.triton_releases import TORCHSCRIPT_IR, release
    from tl.runtime.onnxmeta import read_onnx_meta

    out, repo = tmp_path / "exp", tmp_path / "repo"
    r = tl_cli("export", make_checkpoint(image_size=48), "--out", out, "--fp16", "--onnx", "--triton", repo,
               "--triton-release", "23.01", *EXPORT)
    assert r.code == 0, r.err
    for model in ("exp", "exp_fp16"):
        meta = read_onnx_meta(repo / model / "1" / "model.onnx", graph=False)
        assert (meta.opset, meta.ir_version) == (17, TORCHSCRIPT_IR)  # what expected_ir(17) promised
        assert meta.opset <= release("23.01").max_opset and meta.ir_version <= release("23.01").max_ir


def test_onnx_source_is_checked_by_its_own_metadata(tl_cli, exported, tmp_path):
    """An export from model.onnx: the file's own IR version decides, read before any work."""
    import onnx

    source = tmp_path / "src" / "model.onnx"
    source.parent.mkdir()
    proto = onnx.load(str(exported[0] / "model.onnx"))
    proto.ir_version = 10  # as the dynamo exporter writes: more than ONNX Runtime 1.17 (Triton 24.03) reads
    onnx.save(proto, str(source))
    out, repo = tmp_path / "exp", tmp_path / "repo"
    r = tl_cli("export", source, "--out", out, "--triton", repo, "--triton-release", "24.03", "--parity-count", "4")
    assert_user_error(r, "model.onnx is ONNX opset 17, IR version 10", "IR version 9", "Triton 24.05 or later")
    assert not out.exists() and not repo.exists()
    r = tl_cli("export", exported[0] / "model.onnx", "--out", out, "--triton", repo, "--triton-release", "23.01",
               "--parity-count", "4")
    assert r.code == 0, r.err
    assert (repo / "exp" / "1" / "model.onnx").is_file()


def test_repository_write_checks_each_file(exported, tmp_path):
    """write_repository reads each ONNX file's own opset and IR version against the release, before writing."""
    from tl.export.triton import write_repository
    from tl.runtime.errors import TLError

    import onnx

    (folder,) = write_repository(tmp_path / "ok", [exported[0] / "model.onnx"], "m", release="23.01")
    assert folder.is_dir()
    with pytest.raises(TLError, match="is ONNX opset 17, IR version 10"):
        proto = onnx.load(str(exported[0] / "model.onnx"))
        proto.ir_version = 10
        (tmp_path / "ir10").mkdir()
        onnx.save(proto, str(tmp_path / "ir10" / "model.onnx"))
        write_repository(tmp_path / "repo", [tmp_path / "ir10" / "model.onnx"], "m", release="24.03")
    assert not (tmp_path / "repo").exists()
