"""Report writers: bench.json schema, CSV/MD/PNG produced and carrying the numbers."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from tl.benchmarks import ROW_FIELDS, BenchResult, BenchRow
from tl.commands.bench import TABLE_WIDTH, bench_table
from tl.benchmarks.environment import bench_environment
from tl.benchmarks.report import write_all

ENV_KEYS = {"cpu", "cpu_cores", "cpu_threads", "gpu", "gpu_driver", "python", "torch", "onnxruntime", "tensorrt"}


def _row(backend, precision, batch, p50, **kw) -> BenchRow:
    provider = kw.pop("provider", "torch" if backend.startswith(("eager", "compile")) else "CPUExecutionProvider")
    r = BenchRow(backend=backend, precision=precision, provider=provider, device="cpu", batch=batch, **kw)
    if r.status == "ok":
        r.mean_ms, r.p50_ms, r.p90_ms, r.p99_ms = p50 * 1.1, p50, p50 * 1.2, p50 * 1.5
        r.min_ms, r.max_ms, r.first_ms = p50 * 0.9, p50 * 1.5, p50 * 3
        r.throughput = batch * 1000 / p50
    return r


def _find(result: BenchResult, backend: str, batch: int, precision: str | None = None) -> BenchRow:
    return next(r for r in result.rows
                if r.backend == backend and r.batch == batch and precision in (None, r.precision))


@pytest.fixture
def result() -> BenchResult:
    rows = []
    for b, base in ((1, 120.0), (8, 800.0)):
        rows.append(_row("eager", "fp32", b, base, size_mb=553.4, agreement=1.0, accuracy=0.9))
        rows.append(_row("compile", "fp32", b, base * 0.8, size_mb=553.4, build_s=61.0, agreement=1.0, accuracy=0.9))
        rows.append(_row("ort", "fp32", b, base * 0.9, size_mb=553.5, build_s=1.2, agreement=1.0, accuracy=0.9,
                         artifact="model.onnx"))
        rows.append(_row("ort", "int8", b, base * 0.3, size_mb=138.5, build_s=0.8, agreement=0.97, accuracy=0.88,
                         artifact="model.int8.onnx"))
        rows.append(_row("trt", "fp16", b, 0, provider="TensorRT", status="skipped",
                         error="TensorRT engines run only on a CUDA GPU (use --device cuda)", artifact="model.fp16.plan"))
        rows.append(_row("eager-bf16", "bf16", b, 0, status="failed", error="RuntimeError: boom | pipe"))
    from tl.benchmarks.matrix import _speedups
    from tl.benchmarks.recommend import recommend

    _speedups(rows)
    env = bench_environment(device="cpu", threads=None)
    env.update({"arch": "vgg16", "image_size": [224, 224], "artifacts": ["/x/model.onnx", "/x/model.int8.onnx"],
                "images": {"source": "synthetic shapes (32)", "count": 32, "labelled": True},
                "timing": {"warmup": 3, "seconds": 3.0, "iters": None}, "checkpoint": "/r/best.pt"})
    return BenchResult(rows=rows, environment=env, images=env["images"], min_agreement=0.95,
                       recommendations=recommend(rows, min_agreement=0.95, environment=env))


def test_speedup_is_relative_to_eager_fp32_at_the_same_batch(result):
    int8_b8 = _find(result, "ort", 8, "int8")
    assert int8_b8.speedup == pytest.approx(1 / 0.3)
    assert _find(result, "eager", 1).speedup == pytest.approx(1.0)
    assert _find(result, "trt", 1).speedup is None  # skipped rows get none


def test_environment_has_the_machine_and_versions():
    env = bench_environment(device="cpu")
    assert ENV_KEYS <= set(env)
    assert env["cpu_threads"] >= 1 and env["cpu"]
    assert env["python"].count(".") == 2
    assert env["torch"] and env["onnxruntime"]
    json.dumps(env)  # plain values only


def test_writers_schema_and_contents(result, tmp_path):
    files = write_all(result, tmp_path / "out")
    assert {p.name for p in files.values()} == {"bench.json", "bench.csv", "bench.md", "bench.png"}
    # No temp files left beside them.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bench.csv", "bench.json", "bench.md", "bench.png"]

    data = json.loads(files["json"].read_text())
    assert set(data) == {"environment", "rows", "min_agreement", "recommendations"}
    assert ENV_KEYS <= set(data["environment"])
    assert len(data["rows"]) == len(result.rows)
    for row in data["rows"]:
        assert tuple(row) == ROW_FIELDS
        assert row["status"] in ("ok", "failed", "skipped")
        if row["status"] == "ok":
            assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
            assert row["error"] is None
        else:
            assert row["error"] and row["mean_ms"] is None
    skipped = [r for r in data["rows"] if r["status"] == "skipped"]
    assert skipped and "CUDA" in skipped[0]["error"]

    with files["csv"].open() as f:
        csv_rows = list(csv.DictReader(f))
    assert list(csv_rows[0]) == list(ROW_FIELDS)
    assert len(csv_rows) == len(result.rows)
    int8 = next(r for r in csv_rows if r["precision"] == "int8" and r["batch"] == "8")
    assert float(int8["throughput"]) == pytest.approx(8000 / 240)
    assert float(int8["agreement"]) == pytest.approx(0.97)

    md = files["md"].read_text()
    table = [l for l in md.splitlines() if l.startswith("|")]
    assert len(table) == 2 + len(result.rows)  # header, rule, one line per row
    assert all(l.count(" | ") == table[0].count(" | ") for l in table if "\\|" not in l and not l.startswith("|---"))
    assert "RuntimeError: boom \\| pipe" in md  # escaped, not a broken table
    assert "97.0%" in md and "3.33x" in md and "vgg16" in md and "bench.png" in md

    png = files["png"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        w, h = im.size
        arr = np.asarray(im.convert("RGB"))
    assert w >= 1200 and h >= 600
    # Non-trivial: many distinct colours (bars, text), not a blank canvas.
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 50
    assert png.stat().st_size > 20_000


def test_terminal_table_fits_100_columns_and_shows_failures(result):
    from rich.console import Console

    console = Console(record=True, width=250)
    console.print(bench_table(result))
    text = console.export_text()
    assert "vgg16" in text and "int8" in text and "3.33x" in text and "97.0%" in text
    assert "failed: RuntimeError" in text and "skipped" in text
    assert max(len(line) for line in text.splitlines()) <= TABLE_WIDTH


def test_png_with_only_failed_rows_still_renders(tmp_path):
    rows = [_row("eager", "fp32", 1, 0, status="failed", error="x")]
    env = {"arch": "resnet18", "image_size": [32, 32], "device": "cpu", "cpu": "cpu", "timing": {}, "images": {}}
    files = write_all(BenchResult(rows=rows, environment=env, images={}), tmp_path)
    assert files["png"].stat().st_size > 5_000


def _ov_row(precision, batch, p50, agreement):
    return _row("openvino", precision, batch, p50, agreement=agreement, artifact="model.int8.onnx",
                provider=f"OpenVINO 2026.4.1 CPU {'bf16' if precision == 'bf16' else 'f32'}")


def test_recommendation_is_the_fastest_row_above_the_threshold(result):
    from tl.benchmarks.recommend import recommend

    # At 0.95, ORT INT8 (0.3x latency, 97% agreement) wins; at 0.99 it is out and compile (0.8x) wins.
    rec = {r.batch: r for r in result.recommendations}
    assert (rec[1].backend, rec[1].precision, rec[8].backend) == ("ort", "int8", "ort")
    assert rec[8].p50_ms == pytest.approx(240) and rec[8].speedup == pytest.approx(1 / 0.3)
    assert rec[1].python == "from tl.runtime import Classifier; clf = Classifier.load('/x/model.int8.onnx', providers='cpu')"
    assert rec[1].cli == "tl predict /x/model.int8.onnx IMAGES... --providers cpu"
    strict = {r.batch: r for r in recommend(result.rows, min_agreement=0.99, environment=result.environment)}
    assert strict[1].backend == "compile" and strict[1].cli is None and "torch.compile" in strict[1].python
    assert "/r/best.pt" in strict[1].python
    # An OpenVINO row faster still, at 99.5%: its line pins what it measured.
    rows = result.rows + [_ov_row("int8", 1, 10.0, 0.995), _ov_row("bf16", 1, 5.0, 0.98)]
    ov = recommend(rows, min_agreement=0.99, environment=result.environment)[0]
    assert (ov.backend, ov.precision, ov.agreement) == ("openvino", "int8", 0.995)
    assert ov.cli == "tl predict /x/model.int8.onnx IMAGES... --backend openvino --inference-precision default"
    assert "backend='openvino', inference_precision='default'" in ov.python
    # A bf16 row (AMX) that qualifies is loaded with bf16 pinned, not whatever another box defaults to.
    bf16 = recommend(rows[:-1] + [_ov_row("bf16", 1, 5.0, 0.995)], min_agreement=0.99, environment=result.environment)[0]
    assert bf16.precision == "bf16" and bf16.cli.endswith("--backend openvino --inference-precision bf16")
    assert bf16.level_with == () and "level with" not in bf16.summary(0.99)
    # A qualifying row within 3% of the fastest is named beside it (a rerun could swap them); one 4% off is not.
    close = recommend(rows + [_ov_row("fp32", 1, 10.2, 1.0), _ov_row("fp16", 1, 10.4, 1.0)], min_agreement=0.99,
                      environment=result.environment)[0]
    assert close.backend == "openvino" and close.precision == "int8" and close.level_with == ("openvino fp32 10.2 ms (+2.0%)",)
    assert close.summary(0.99).endswith("agreement 99.5%; level with openvino fp32 10.2 ms (+2.0%)")


def test_recommendation_says_plainly_when_nothing_meets_the_threshold(result, tmp_path):
    from tl.benchmarks.recommend import recommend

    none = recommend(result.rows, min_agreement=1.0 + 1e-9, environment=result.environment)
    assert [r.backend for r in none] == [None, None]
    assert none[0].summary(1.0) == ("batch 1: no row meets the 100.0% agreement threshold "
                                    "(the best agreement is 100.0% (eager fp32))")
    no_ref = [_row("ort", "int8", 1, 5.0, artifact="model.int8.onnx")]  # no checkpoint: no agreement
    assert "no agreement was measured" in recommend(no_ref, min_agreement=0.5)[0].reason
    result.recommendations, result.min_agreement = none, 1.0
    md = write_all(result, tmp_path)["md"].read_text()
    assert "## Recommendation" in md and "no row meets the 100.0% agreement threshold" in md


def test_disturbed_cells_are_flagged_in_every_report(result, tmp_path):
    from rich.console import Console

    row = _find(result, "ort", 1, "int8")
    row.rounds, row.spread, row.disturbed = 40, 1.8, True
    console = Console(record=True, width=250)
    console.print(bench_table(result))
    assert "disturbed" in console.export_text()
    files = write_all(result, tmp_path)
    assert "ok, disturbed (p90/p50 1.80)" in files["md"].read_text()
    data = json.loads(files["json"].read_text())
    assert next(r for r in data["rows"] if r["precision"] == "int8" and r["batch"] == 1)["disturbed"] is True
    assert data["recommendations"][0]["python"].startswith("from tl.runtime import Classifier")
