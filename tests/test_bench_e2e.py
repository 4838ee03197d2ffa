"""`tl bench` end to end on CPU: a small real model, its real ONNX FP32/INT8 export, real sessions.

One export folder is made per session (tl.export.export), with a corrupt artifact and an
engine beside the good files, so one run checks that failing/skipped cells do not stop the
matrix and that agreement/accuracy/speedup are computed against eager FP32.
"""

from __future__ import annotations

import json
import subprocess
import sys
import shutil

import numpy as np
import pytest

from conftest import assert_user_error

ARCH = "resnet18"  # conftest.EXPORT_ARCH: its ONNX export is 3x faster than mobilenet_v3_small's
SIZE = 48
CLASSES = ("circle", "square", "triangle", "cross")
FAST = ("--iters", "3", "--warmup", "1")


@pytest.fixture(scope="module")
def bench_model(tmp_path_factory, synth_data):
    """A barely trained model (predictions differ per image) + its ONNX FP32/INT8 export."""
    import torch

    from tl.export import ExportOptions, export
    from tl.runtime.images import list_images, preprocess
    from tl.runtime.spec import ModelSpec
    from tl.train.checkpoint import clean_state_dict, save_checkpoint
    from tl.train.models import build_model

    root = tmp_path_factory.mktemp("bench_model")
    torch.manual_seed(0)
    spec = ModelSpec.create(arch=ARCH, classes=list(CLASSES), image_size=SIZE)
    model = build_model(ARCH, len(CLASSES), weights="none")
    files = list_images(synth_data / "train")
    x = torch.from_numpy(preprocess(files, spec))
    y = torch.tensor([CLASSES.index(f.parent.name) for f in files])
    # A few training steps, then BatchNorm statistics from the data (cumulative average), so
    # eval-mode predictions vary per image and agreement is not trivially 100%.
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None
            m.reset_running_stats()
    with torch.no_grad():
        model(x)
    model.eval()
    val = list_images(synth_data / "val")
    ckpt = root / "run" / "best.pt"
    save_checkpoint(ckpt, {
        "spec": spec.to_dict(), "state_dict": clean_state_dict(model), "epoch": 1,
        "best_metric": {"val_acc": 0.0, "val_loss": 0.0}, "args": {"arch": ARCH},
        "data": {"root": str(synth_data), "train_dir": str(synth_data / "train"), "val_dir": str(synth_data / "val"),
                 "val_split": None, "seed": 0, "train_files": [str(f) for f in files],
                 "val_files": [str(f) for f in val], "val_labels": [CLASSES.index(f.parent.name) for f in val]},
    })
    out = root / "export"
    export(ExportOptions(checkpoint=ckpt, out=out, onnx=True, int8=True, calib_dir=synth_data / "train", calib_count=16,
                         parity_count=8))
    assert (out / "model.onnx").is_file() and (out / "model.int8.onnx").is_file()
    return ckpt, out


@pytest.fixture
def messy_export(bench_model, tmp_path):
    """The real export plus a corrupt ONNX file and an engine that cannot run here."""
    _, out = bench_model
    folder = tmp_path / "export"
    shutil.copytree(out, folder)
    (folder / "model.fp16.onnx").write_bytes(b"\x08\x07not really an onnx file" * 10)
    (folder / "model.fp16.plan").write_bytes(b"\x00" * 64)
    return folder


def in_fresh_python(code: str):
    """The JSON a Python snippet prints, run in its own interpreter: OpenVINO never runs in the pytest
    process (see OPENVINO_IN_PROCESS in conftest.py)."""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_cli_end_to_end_on_cpu(bench_model, messy_export, synth_data, tmp_path):
    from conftest import run_tl_subprocess

    ckpt, _ = bench_model
    out = tmp_path / "bench"
    r = run_tl_subprocess("bench", ckpt.parent, messy_export, "--device", "cpu", "--backends", "eager,ort,openvino,trt",
                          "--batch-sizes", "1,4", *FAST, "--val-dir", synth_data / "val", "--threads", "2",
                          "--out", out, "--min-agreement", "0.5")
    assert r.code == 0, r.err
    assert "ort" in r.out and "int8" in r.out
    assert f"to {out}" in r.out
    for name in ("bench.json", "bench.csv", "bench.md", "bench.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 200, name
    data = json.loads((out / "bench.json").read_text())
    rows = data["rows"]
    by = {(r["backend"], r["precision"], r["batch"]): r for r in rows}
    # 8 runners (eager, ort fp32/fp16 (corrupt)/int8, openvino fp32/fp16/int8, trt fp16) x 2 batch sizes;
    # no openvino bf16 row: OpenVINO's default on this CPU is f32 (a bf16 row appears only where it runs bf16).
    bf16_here = in_fresh_python("from tl.runtime.backends.openvino import default_inference_precision as d; "
                                "import json; print(json.dumps(d()))") == "bf16"
    assert len(rows) == (9 if bf16_here else 8) * 2
    assert ("openvino", "bf16", 1) in by if bf16_here else ("openvino", "bf16", 1) not in by
    assert [r["backend"] for r in rows[:2]] == ["eager", "eager"]

    for b in (1, 4):
        eager, fp32, int8 = by[("eager", "fp32", b)], by[("ort", "fp32", b)], by[("ort", "int8", b)]
        for row in (eager, fp32, int8):
            assert row["status"] == "ok", row
            assert 0 < row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
            assert row["throughput"] == pytest.approx(b * 1000 / row["p50_ms"])
            assert row["speedup"] == pytest.approx(row["throughput"] / eager["throughput"])
            assert row["first_ms"] > 0 and row["size_mb"] > 0
        assert eager["agreement"] == 1.0 and eager["speedup"] == pytest.approx(1.0)
        assert fp32["provider"] == "CPUExecutionProvider" and fp32["build_s"] > 0
        assert int8["size_mb"] < 0.6 * fp32["size_mb"]
        # The corrupt file failed with its reason; the engine is skipped on CPU; the rest ran.
        for backend in ("ort", "openvino"):
            bad = by[(backend, "fp16", b)]
            assert bad["status"] == "failed" and bad["error"] and bad["mean_ms"] is None
        ov32, ov8 = by[("openvino", "fp32", b)], by[("openvino", "int8", b)]
        assert ov32["status"] == ov8["status"] == "ok" and ov32["provider"].endswith("CPU f32")
        assert ov32["agreement"] >= 0.9 and ov8["agreement"] is not None
        for row in (eager, fp32, int8, ov32, ov8):  # every runner of a batch size in the same rounds
            assert row["rounds"] == 3 and row["spread"] == pytest.approx(row["p90_ms"] / row["p50_ms"])
            assert row["disturbed"] == (row["spread"] > data["environment"]["timing"]["disturbed_spread"])
        trt = by[("trt", "fp16", b)]
        assert trt["status"] == "skipped" and "CUDA" in trt["error"]

    # Agreement and accuracy, recomputed independently: eager via torch, INT8 via tl.runtime.
    from tl.runtime import Classifier
    from tl.runtime.images import list_images, preprocess
    from tl.train.checkpoint import load_model
    import torch

    model, spec, _ = load_model(ckpt)
    files = list_images(synth_data / "val")
    labels = np.array([CLASSES.index(f.parent.name) for f in files])
    x = preprocess(files, spec)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).argmax(1).numpy()
    int8_top1 = Classifier.load(messy_export / "model.int8.onnx").predict_logits(x).argmax(1)
    assert len(set(ref.tolist())) > 1, "the test model should not predict one class for everything"
    assert by[("eager", "fp32", 1)]["accuracy"] == pytest.approx(float((ref == labels).mean()))
    assert by[("ort", "int8", 4)]["agreement"] == pytest.approx(float((int8_top1 == ref).mean()))
    assert by[("ort", "int8", 4)]["accuracy"] == pytest.approx(float((int8_top1 == labels).mean()))
    assert by[("ort", "fp32", 1)]["agreement"] >= 0.9

    np.save(tmp_path / "x.npy", x)
    ov_top1 = np.array(in_fresh_python(
        "import json, numpy as np; from tl.runtime import Classifier; "
        f"clf = Classifier.load({str(messy_export / 'model.int8.onnx')!r}, backend='openvino', inference_precision='default'); "
        f"print(json.dumps(clf.predict_logits(np.load({str(tmp_path / 'x.npy')!r})).argmax(1).tolist()))"))
    assert by[("openvino", "int8", 1)]["agreement"] == pytest.approx(float((ov_top1 == ref).mean()))

    # The recommendation: per batch size, the fastest ok row at >= 50% agreement, with lines that load it.
    assert data["min_agreement"] == 0.5
    for rec in data["recommendations"]:
        ok = [x for x in rows if x["batch"] == rec["batch"] and x["status"] == "ok" and x["agreement"] >= 0.5]
        best = min(ok, key=lambda x: x["p50_ms"])
        assert (rec["backend"], rec["precision"], rec["p50_ms"]) == (best["backend"], best["precision"], best["p50_ms"])
        assert f"batch {rec['batch']}: {rec['backend']} {rec['precision']}" in r.out and rec["python"] in r.out
    assert [rec["batch"] for rec in data["recommendations"]] == [1, 4]
    assert "## Recommendation" in (out / "bench.md").read_text()

    env = data["environment"]
    assert env["images"]["count"] == len(files) and env["images"]["labelled"]
    assert env["arch"] == ARCH and env["image_size"] == [SIZE, SIZE]
    md = (out / "bench.md").read_text()
    assert "failed" in md and "skipped" in md and "int8" in md


def test_export_folder_alone_finds_its_checkpoint(tl_cli, bench_model, tmp_path):
    """export.json names the checkpoint: agreement still means 'vs eager FP32', images from its data."""
    ckpt, export_dir = bench_model
    from tl.benchmarks import BenchOptions, run

    res = run(BenchOptions(targets=[export_dir], device="cpu", backends=["ort"], batch_sizes=[2],
                           iters=2, warmup=0, images=6))
    assert [r.precision for r in res.rows] == ["fp32", "int8"]
    assert all(r.status == "ok" and r.agreement is not None for r in res.rows), res.rows
    assert all(r.speedup is None for r in res.rows)  # no eager row timed: no speedup claimed
    assert res.environment["checkpoint"] == str(ckpt)
    assert res.images["source"].startswith("checkpoint val_files") and res.images["count"] == 6
    assert res.files == {}  # no --out: nothing written


@pytest.mark.parametrize("args, fragments", [
    (["{missing}"], ["no such file or folder"]),
    (["{empty}"], ["no best.pt"]),
    (["{readme}"], ["not a checkpoint"]),
    (["{ckpt}", "--batch-sizes", "0,8"], ["--batch-sizes"]),
    (["{ckpt}", "--batch-sizes", "one"], ["--batch-sizes"]),
    (["{ckpt}", "--backends", "eager,tensorflow"], ["--backends", "tensorflow"]),
    (["{ckpt}", "--backends", "ort"], ["export folder"]),
    (["{ckpt}", "--seconds", "0"], ["--seconds"]),
    (["{ckpt}", "--iters", "0"], ["--iters"]),
    (["{ckpt}", "--threads", "0"], ["--threads"]),
    (["{ckpt}", "--warmup", "-1"], ["--warmup"]),
    (["{ckpt}", "{ckpt2}"], ["at most one checkpoint"]),
    (["{ckpt}", "--val-dir", "{missing}"], ["--val-dir", "no such folder"]),
    (["{ckpt}", "--val-dir", "{badval}"], ["--val-dir", "not one of the model's classes"]),
    (["{ckpt}", "--device", "gpu"], ["--device"]),
])
def test_bad_inputs_are_one_error_line(tl_cli, bench_model, tmp_path, args, fragments):
    ckpt, export_dir = bench_model
    (tmp_path / "empty").mkdir()
    (tmp_path / "readme.txt").write_text("hi")
    (tmp_path / "badval" / "dog").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (20, 20)).save(tmp_path / "badval" / "dog" / "a.png")
    ckpt2 = tmp_path / "other.pt"
    shutil.copy(ckpt, ckpt2)
    subst = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "readme": tmp_path / "readme.txt",
             "ckpt": ckpt, "ckpt2": ckpt2, "export": export_dir, "badval": tmp_path / "badval"}
    argv = [a.format(**subst) for a in args]
    # Cheap defaults first; the case's own options come later and win.
    r = tl_cli("bench", "--backends", "eager", *FAST, "--out", tmp_path / "out", *argv)
    assert_user_error(r, *fragments)
    assert not (tmp_path / "out" / "bench.json").exists()


def test_device_cuda_without_gpu_is_a_user_error(tl_cli, bench_model, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    ckpt, _ = bench_model
    r = tl_cli("bench", ckpt, "--device", "cuda", "--out", tmp_path / "out", *FAST)
    assert_user_error(r, "--device cuda", "--device cpu")


def test_bench_help_imports_no_torch():
    from conftest import run_tl_subprocess

    r = run_tl_subprocess("bench", "--help")
    assert r.code == 0 and "--batch-sizes" in r.out and "--val-dir" in r.out
    import subprocess
    import sys

    code = "import sys, tl.commands.bench; assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_compile_that_cannot_build_fails_its_cells_and_the_matrix_goes_on(bench_model, tmp_path):
    """A real torch.compile failure (no C++ compiler for inductor), in a fresh interpreter."""
    from conftest import run_tl_subprocess

    ckpt, _ = bench_model
    out = tmp_path / "bench"
    r = run_tl_subprocess("bench", ckpt, "--device", "cpu", "--backends", "compile,eager", "--batch-sizes", "1,2",
                          "--iters", "2", "--warmup", "0", "--images", "4", "--out", out,
                          env={"CXX": str(tmp_path / "no-such-compiler")})
    assert r.code == 0, r.err
    rows = json.loads((out / "bench.json").read_text())["rows"]
    compile_rows = [x for x in rows if x["backend"] == "compile"]
    assert [x["status"] for x in compile_rows] == ["failed", "failed"]
    assert all("compiler" in x["error"].lower() for x in compile_rows)
    assert [x["status"] for x in rows if x["backend"] == "eager"] == ["ok", "ok"]


def test_files_without_a_checkpoint_are_compared_with_the_fp32_onnx(bench_model):
    """No checkpoint (an edge box without torch, or ONNX files alone): agreement and speedup are measured
    against the FP32 ONNX file on ONNX Runtime, and every report says so."""
    _, export_dir = bench_model
    from tl.benchmarks import BenchOptions, run

    res = run(BenchOptions(targets=[export_dir / "model.int8.onnx", export_dir / "model.onnx"], device="cpu",
                           backends=["ort"], batch_sizes=[1, 2], iters=3, warmup=0, images=8))
    assert res.environment["reference"] == "ort fp32 (model.onnx)" and res.environment["checkpoint"] is None
    fp32 = [r for r in res.rows if r.precision == "fp32"]
    int8 = [r for r in res.rows if r.precision == "int8"]
    assert all(r.agreement == 1.0 and r.speedup == pytest.approx(1.0) for r in fp32), fp32
    assert all(r.agreement is not None and r.speedup is not None for r in int8), int8
    assert int8[0].speedup == pytest.approx(int8[0].throughput / fp32[0].throughput)
    assert all(rec.backend is not None and rec.reference == "ort fp32 (model.onnx)" for rec in res.recommendations)
