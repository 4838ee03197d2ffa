"""Outputs never destroy inputs; stale or mixed artifacts never pass as fresh.

One mechanism per class, each checked through the CLI where the CLI is the boundary:
the output-folder lock (train, export, bench), predict's -o guard, export's staging folder
and checkpoint stamps, bench's provenance check, and the Classifier's boundary checks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, assert_user_error, run_tl_subprocess, sigint_default
from tl.runtime.artifact import CHECKPOINT_KEY, onnx_metadata
from tl.runtime.errors import TLError
from tl.runtime.files import LOCK_NAME, output_lock, sha256_file

TINY = ["--arch", "mobilenet_v3_small", "--weights", "none", "--image-size", "32", "--workers", "0", "--no-progress"]
ENV = {"OMP_NUM_THREADS": "1"}


def _popen_tl(*args) -> subprocess.Popen:
    env = {**{k: v for k, v in os.environ.items() if k != "TL_DEBUG"}, **ENV}
    return subprocess.Popen([sys.executable, "-m", "tl", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """Two tiny datasets with different classes (2 and 3), as in the issue's mixed run folder."""
    from tl.train.synth import SynthOptions, make_dataset

    root = tmp_path_factory.mktemp("small")
    return (make_dataset(root / "two", SynthOptions(classes=2, per_class=8, size=32, seed=0)),
            make_dataset(root / "three", SynthOptions(classes=3, per_class=8, size=32, seed=1)))


# -- 1. the output-folder lock -----------------------------------------------------------------


def test_lock_names_its_holder_and_leaves_no_file(tmp_path):
    folder = tmp_path / "out"
    with output_lock(folder, "tl export"):
        assert json.loads((folder / LOCK_NAME).read_text())["command"] == "tl export"
        with pytest.raises(TLError, match=r"is in use by `tl export` \(pid \d+, since \d\d:\d\d:\d\d\); wait"):
            with output_lock(folder, "tl bench"):
                pass
    assert list(folder.iterdir()) == []  # the lock file is no artifact
    (folder / LOCK_NAME).write_text('{"pid": 1, "command": "tl train", "since": 0}')  # left by a killed command
    with output_lock(folder, "tl train"):  # the kernel dropped that lock with its process: free
        pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(TLError, match="is a file"):
        with output_lock(tmp_path / "file", "tl bench"):
            pass


def test_two_trains_into_one_folder_never_mix(small_data, tmp_path):
    """The issue's race: two runs a moment apart into one --out. One wins; the other is refused."""
    out = tmp_path / "run"
    two, three = small_data
    first = _popen_tl("train", two, *TINY, "--epochs", "1", "--batch-size", "4", "--out", out)
    second = _popen_tl("train", three, *TINY, "--epochs", "1", "--batch-size", "4", "--out", out)
    outputs = [p.communicate(timeout=300) for p in (first, second)]
    results = [(p.returncode, o, e) for p, (o, e) in zip((first, second), outputs)]
    ok = [r for r in results if r[0] == 0]
    refused = [r for r in results if r[0] != 0]
    assert len(ok) == 1 and len(refused) == 1, results
    code, _, err = refused[0]
    assert "Traceback" not in err and err.count("error: ") == 1, err
    assert "is in use by `tl train` (pid" in err or "already holds a run" in err, err
    import torch

    classes = json.loads((out / "spec.json").read_text())["classes"]
    for name in ("best.pt", "last.pt"):
        assert torch.load(out / name, weights_only=True)["spec"]["classes"] == classes
    assert len(json.loads((out / "metrics.jsonl").read_text().splitlines()[0])) > 0
    assert not (out / LOCK_NAME).exists()


def test_train_export_and_bench_refuse_a_folder_in_use(small_data, make_checkpoint, tmp_path):
    out = tmp_path / "busy"
    holder = _popen_tl("train", small_data[0], *TINY, "--epochs", "1000", "--batch-size", "4", "--out", out)
    try:
        deadline = time.time() + 240
        while not (out / "metrics.jsonl").exists() and time.time() < deadline and holder.poll() is None:
            time.sleep(0.2)
        assert (out / "metrics.jsonl").exists(), holder.communicate(timeout=5)
        before = {p.name for p in out.iterdir()}
        ckpt = make_checkpoint(image_size=32)
        for args in (["train", small_data[1], *TINY, "--epochs", "1", "--out", out],
                     ["export", ckpt, "--out", out, "--parity-count", "2"],
                     ["bench", ckpt, "--backends", "eager", "--iters", "1", "--warmup", "0", "--out", out]):
            r = run_tl_subprocess(*args, env=ENV)
            assert_user_error(r, f"{out} is in use by `tl train` (pid {holder.pid}, since", "pass another --out")
        # The holder keeps training: ignore the temp files of its own atomic writes.
        now = {p.name for p in out.iterdir() if not p.name.endswith(".tmp")}
        assert now <= before | {"best.pt", "last.pt", "history.png", "confusion.png"}
        assert not (out / "export.json").exists() and not (out / "bench.json").exists()
    finally:
        holder.send_signal(signal.SIGINT)
        _, err = holder.communicate(timeout=120)
    assert holder.returncode == 130, err[-3000:]
    assert not (out / LOCK_NAME).exists()


# -- 1. predict -o never overwrites what it reads ------------------------------------------------


@pytest.fixture
def predict_setup(make_onnx, synth_data, tmp_path):
    from tl.runtime import Classifier
    from tl.runtime.sidecar import BuildRecord, write_sidecar

    onnx_path = shutil.copy(make_onnx()[0], tmp_path / "model.onnx")
    photos = tmp_path / "photos"
    photos.mkdir()
    for f in sorted((synth_data / "val" / "circle").iterdir())[:2]:
        shutil.copy(f, photos / f.name)
    spec = Classifier.load(onnx_path).spec
    spec.save(tmp_path / "spec.json")
    plan = tmp_path / "model.fp16.plan"
    plan.write_bytes(b"not a real plan")
    write_sidecar(plan, spec, BuildRecord(tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7",
                                          precision="fp16", profile={"min": [1, 3, 64, 64], "opt": [8, 3, 64, 64],
                                                                     "max": [32, 3, 64, 64]}))
    return Path(onnx_path), photos, plan


@pytest.mark.parametrize("model, target, fragment", [
    ("onnx", "onnx", "is the model"),
    ("plan", "sidecar", "is the model's sidecar"),
    ("onnx", "image", "is an input image"),
    ("onnx", "spec", "is the --spec file"),
    ("onnx", "folder", "is a folder"),
])
def test_predict_output_never_overwrites_an_input(predict_setup, tmp_path, model, target, fragment):
    onnx_path, photos, plan = predict_setup
    image = sorted(photos.iterdir())[0]
    paths = {"onnx": onnx_path, "plan": plan, "sidecar": plan.with_name(plan.name + ".json"), "image": image,
             "spec": tmp_path / "spec.json", "folder": photos}
    before = {p: p.read_bytes() for p in (onnx_path, plan, paths["sidecar"], image, paths["spec"])}
    args = ["predict", paths[model], photos, "-o", paths[target]]
    if target == "spec":
        args += ["--spec", paths["spec"]]
    r = run_tl_subprocess(*args)
    assert_user_error(r, f"-o {paths[target]} {fragment}")
    assert {p: p.read_bytes() for p in before} == before
    # A path that reaches the model another way (a symlink) is the model too.
    if target == "onnx":
        (tmp_path / "link.txt").symlink_to(onnx_path)
        assert_user_error(run_tl_subprocess("predict", onnx_path, photos, "-o", tmp_path / "link.txt"), "is the model")
        assert onnx_path.read_bytes() == before[onnx_path]


# -- 1. export folders are always one export -----------------------------------------------------


def _export(tl_cli, ckpt, out, *flags):
    r = tl_cli("export", ckpt, "--out", out, "--parity-count", "2", *flags)
    assert r.code == 0, r.err
    return json.loads((out / "export.json").read_text())


def test_reexport_replaces_the_earlier_export_and_stamps_every_artifact(tl_cli, make_checkpoint, tmp_path):
    a = make_checkpoint(image_size=32, seed=0)
    b = make_checkpoint(image_size=32, seed=1)
    out = tmp_path / "exp"
    report = _export(tl_cli, a, out, "--onnx", "--fp16")
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.fp16.onnx", "model.onnx"]
    assert report["checkpoint_sha256"] == sha256_file(a)
    for name in ("model.onnx", "model.fp16.onnx"):
        assert onnx_metadata(out / name)[CHECKPOINT_KEY] == sha256_file(a)
    (out / ".tl-export-staging").mkdir()  # left by an export that was killed
    (out / ".tl-export-staging" / "model.onnx").write_bytes(b"half")
    report = _export(tl_cli, b, out, "--onnx")
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.onnx"]  # A's fp16 file is gone
    assert [x["file"] for x in report["artifacts"]] == ["model.onnx"]
    assert report["checkpoint_sha256"] == sha256_file(b) == onnx_metadata(out / "model.onnx")[CHECKPOINT_KEY]


def test_interrupted_or_failed_reexport_leaves_the_earlier_export_as_it_was(tl_cli, make_checkpoint, tmp_path,
                                                                             monkeypatch):
    import tl.export.fp16 as fp16
    import tl.export.parity as parity

    a = make_checkpoint(image_size=32, seed=0)
    b = make_checkpoint(image_size=32, seed=1)
    out = tmp_path / "exp"
    _export(tl_cli, a, out, "--onnx", "--fp16")
    before = _snapshot(out)

    def interrupt(*args, **kwargs):  # Ctrl-C after B's model.onnx is written and checked
        raise KeyboardInterrupt

    monkeypatch.setattr(fp16, "convert_fp16", interrupt)
    r = tl_cli("export", b, "--out", out, "--onnx", "--fp16", "--parity-count", "2")
    assert r.code == 130 and "error: interrupted" in r.err
    assert _snapshot(out) == before
    monkeypatch.undo()

    monkeypatch.setattr(parity, "FP32_MAX_ABS", -1.0)  # B's model.onnx fails its parity check
    r = tl_cli("export", b, "--out", out, "--onnx", "--parity-count", "2")
    assert_user_error(r, "model.onnx does not match PyTorch", f"the earlier export in {out} is unchanged")
    assert _snapshot(out) == before


def test_engine_stamp_in_the_build_record_and_old_sidecars_still_load(tmp_path):
    """build_engine copies its source ONNX's stamp into the build record; a sidecar from an older tl has none."""
    from tl.export.trt import TrtFeatures, TrtOptions, build_record, choose_route
    from tl.runtime.gpu import GpuDevice
    from tl.runtime.sidecar import read_sidecar, sidecar_path, write_sidecar
    from tl.runtime.spec import ModelSpec

    spec = ModelSpec.create(arch="resnet18", classes=["a", "b"], image_size=32)
    features = TrtFeatures(version="10.7.0", strongly_typed=True, fp16_flag=True, int8_flag=True)
    record = build_record(spec=spec, route=choose_route("fp16", features), options=TrtOptions(), features=features,
                          gpu=GpuDevice(0, "Orin", "8.7"), onnx_path=tmp_path / "model.fp16.onnx",
                          onnx_sha256="0" * 64, seconds=1.0, checkpoint_sha256="ab" * 32)
    engine = tmp_path / "model.fp16.plan"
    engine.write_bytes(b"x")
    write_sidecar(engine, spec, record)
    assert read_sidecar(engine)[1].checkpoint_sha256 == "ab" * 32
    data = json.loads(sidecar_path(engine).read_text())
    del data["build"]["checkpoint_sha256"]  # as an older tl wrote it
    sidecar_path(engine).write_text(json.dumps(data))
    assert read_sidecar(engine)[1].checkpoint_sha256 == ""


# -- 2. bench refuses an export of another checkpoint ---------------------------------------------


@pytest.fixture(scope="module")
def stamped_export(make_checkpoint, tmp_path_factory):
    from tl.export import ExportOptions, export

    a = make_checkpoint(image_size=32, seed=0)
    out = tmp_path_factory.mktemp("stamped") / "exp"
    export(ExportOptions(checkpoint=a, out=out, parity_count=2))
    return a, out


def test_bench_refuses_an_export_of_another_checkpoint(stamped_export, make_checkpoint, tmp_path):
    a, export_dir = stamped_export
    # Same architecture, classes and size: the specs agree, only the stamp tells the weights apart.
    b = make_checkpoint(image_size=32, seed=1)
    r = run_tl_subprocess("bench", b, export_dir, "--backends", "eager,ort", "--iters", "1", "--warmup", "0",
                          "--out", tmp_path / "bench", env=ENV)
    assert_user_error(r, f"{export_dir / 'model.onnx'} was exported from another checkpoint",
                      f"sha256 {sha256_file(a)[:12]}", f"not from {b}", f"sha256 {sha256_file(b)[:12]}")
    assert not (tmp_path / "bench" / "bench.json").exists()


def test_bench_unstamped_artifact_falls_back_to_the_spec_and_arch(stamped_export, make_checkpoint, tmp_path):
    """An ONNX file from an older tl (no stamp): a squeezenet checkpoint vs a resnet18 export is still caught."""
    import onnx

    from tl.benchmarks import BenchOptions, run

    _, export_dir = stamped_export
    proto = onnx.load(str(export_dir / "model.onnx"))
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key != CHECKPOINT_KEY]
    del proto.metadata_props[:]
    for k, v in keep:
        e = proto.metadata_props.add()
        e.key, e.value = k, v
    old = tmp_path / "model.onnx"
    onnx.save_model(proto, str(old))
    assert CHECKPOINT_KEY not in onnx_metadata(old)
    other = make_checkpoint("squeezenet1_1", image_size=32)
    res = run(BenchOptions(targets=[other, old], device="cpu", backends=["ort"], batch_sizes=[1], iters=1,
                           warmup=0, images=2))
    assert res.rows and all(r.status == "failed" for r in res.rows), res.rows
    assert "not exported from the benchmarked checkpoint (arch resnet18, checkpoint squeezenet1_1)" in res.rows[0].error


# -- 2. the Classifier validates at its boundary -------------------------------------------------


@pytest.fixture(scope="module")
def clf(make_onnx):
    from tl.runtime import Classifier

    return Classifier.load(make_onnx()[0], providers="cpu")


@pytest.mark.parametrize("bad", [np.zeros((0, 0, 3), np.uint8), np.zeros((0, 0), np.uint8),
                                 np.zeros((8, 8, 0), np.uint8), np.zeros((0, 5, 3), np.float32),
                                 Image.new("RGB", (0, 0))], ids=["0x0x3", "0x0", "8x8x0", "float0x5", "pil0x0"])
def test_empty_images_are_refused(clf, bad):
    with pytest.raises(TLError, match="empty image"):
        clf.predict(bad)
    with pytest.raises(TLError, match="empty image"):
        clf.preprocess(bad)
    with pytest.raises(TLError, match="empty image"):
        clf.predict([np.zeros((8, 8, 3), np.uint8), bad])


def test_batch_size_and_threads_are_checked(clf, make_onnx, synth_data):
    from tl.runtime import Classifier

    img = np.zeros((8, 8, 3), np.uint8)
    for size in (0, -1):
        with pytest.raises(TLError, match="batch_size must be at least 1"):
            clf.predict(img, batch_size=size)
    assert len(clf.predict([img, img], batch_size=1)) == 2
    for n in (0, -4):
        with pytest.raises(TLError, match="intra_op_threads must be at least 1"):
            Classifier.load(make_onnx()[0], providers="cpu", intra_op_threads=n)
    photo = next((synth_data / "val" / "circle").iterdir())
    for flag, value in (("--threads", "-4"), ("--threads", "0"), ("--batch-size", "0")):
        r = run_tl_subprocess("predict", make_onnx()[0], photo, flag, value)
        assert_user_error(r, flag)
        assert r.code == 2
