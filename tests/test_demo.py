"""`tl demo`: the whole path on synthetic data, on CPU, through the real CLI."""

from __future__ import annotations

import json

import pytest
import torch

RUN_FILES = {"best.pt", "last.pt", "metrics.jsonl", "history.png", "confusion.png", "batch.png", "spec.json"}


@pytest.mark.slow
def test_demo_runs_data_train_export_predict_bench(tl_cli, tmp_path):
    out = tmp_path / "demo"
    r = tl_cli("demo", "--out", out)
    assert r.code == 0, r.err

    # train: from scratch, far above chance (0.25 for 4 classes)
    run = out / "run"
    assert RUN_FILES <= {p.name for p in run.iterdir()}
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["best_metric"]["val_acc"] >= 0.7, ckpt["best_metric"]
    assert ckpt["spec"]["arch"] == "resnet18" and len(ckpt["data"]["val_files"]) == 4 * 150
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]

    # export: FP32 + INT8 ONNX with their parity against eager PyTorch; no engine without TensorRT
    export = out / "export"
    report = json.loads((export / "export.json").read_text())
    by_file = {a["file"]: a for a in report["artifacts"]}
    assert set(by_file) == {"model.onnx", "model.int8.onnx"}
    assert by_file["model.onnx"]["top1_agreement"] == 1.0 and by_file["model.onnx"]["max_abs_diff"] < 1e-3
    assert by_file["model.int8.onnx"]["top1_agreement"] >= 0.9
    assert not list(export.glob("*.plan")) and "no TensorRT engine" in r.out

    # predict: six validation images through the torch-free runtime, most of them right
    assert "tl predict" in r.out and "model.int8.onnx" in r.out

    # bench: eager vs each ONNX form at batch 1 and 8, every file written
    bench = out / "bench"
    assert {p.name for p in bench.iterdir()} >= {"bench.json", "bench.csv", "bench.md", "bench.png"}
    rows = json.loads((bench / "bench.json").read_text())["rows"]
    cells = {(row["backend"], row["precision"], row["batch"]) for row in rows if row["status"] == "ok"}
    for backend, precision in (("eager", "fp32"), ("ort", "fp32"), ("ort", "int8")):
        for batch in (1, 8):
            assert (backend, precision, batch) in cells, cells
    ort_fp32 = [row for row in rows if row["backend"] == "ort" and row["precision"] == "fp32"]
    assert all(row["agreement"] == 1.0 for row in ort_fp32)

    # the closing summary names every place, one per line
    for path in (out / "data", run / "best.pt", export / "export.json", bench / "bench.png"):
        assert str(path) in r.out
