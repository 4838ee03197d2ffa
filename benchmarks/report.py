"""Bench reports: bench.json/csv/md and bench.png, and the cell formatting they share with the terminal table.

Every report carries the machine it was measured on (``environment``). Files are written atomically.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from tl.benchmarks.rows import ROW_FIELDS, BenchResult, BenchRow
from tl.benchmarks.runners import ORT_PROVIDER_SHORT
from tl.runtime.files import atomic_path, atomic_write_text


# -- formatting ---------------------------------------------------------------------------------


def fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.1f}"
        return f"{v:.{nd}f}"
    return str(v)


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def times(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def provider(r: BenchRow) -> str:
    """Short provider: ORT's EP names shortened; OpenVINO's "OpenVINO 2026.4 CPU bf16" as "cpu bf16"."""
    if r.backend == "openvino" and r.provider.startswith("OpenVINO "):
        return " ".join(r.provider.split()[2:]).lower()
    return ORT_PROVIDER_SHORT.get(r.provider, r.provider) if r.provider else "-"


def status(r: BenchRow, *, short: bool = False) -> str:
    """ok, or ok with the p90/p50 of a disturbed cell, or the reason a cell did not run."""
    if r.status != "ok":
        return f"{r.status}: {r.error or ''}"
    if not r.disturbed:
        return "ok"
    return f"disturbed {r.spread:.2f}" if short else f"ok, disturbed (p90/p50 {r.spread:.2f})"


def table_rows(rows: list[BenchRow]) -> tuple[list[str], list[list[str]]]:
    """Header and cells shared by the terminal table and bench.md."""
    header = ["backend", "prec", "provider", "dev", "batch", "mean ms", "p50", "p90", "p99", "min", "max",
              "first ms", "img/s", "speedup", "agree", "acc", "MB", "build s", "gpu ms", "rounds", "p90/p50", "status"]
    body = []
    for r in rows:
        body.append([
            r.backend, r.precision, provider(r), r.device, str(r.batch), fmt(r.mean_ms), fmt(r.p50_ms),
            fmt(r.p90_ms), fmt(r.p99_ms), fmt(r.min_ms), fmt(r.max_ms), fmt(r.first_ms),
            fmt(r.throughput, 1), times(r.speedup), pct(r.agreement), pct(r.accuracy), fmt(r.size_mb, 1),
            fmt(r.build_s), fmt(r.compute_ms), fmt(r.rounds), fmt(r.spread), status(r),
        ])
    return header, body


def caption(result: BenchResult) -> str:
    env = result.environment
    t = env.get("timing", {})
    budget = f"{t.get('iters')} iters" if t.get("iters") else f"{t.get('seconds')} s"
    img = env.get("images", {})
    ref = env.get("reference") or "eager fp32"
    return (f"latency host->host, nearest-rank percentiles; warm-up {t.get('warmup')}, {budget} per cell, every runner "
            f"of a batch size timed in the same interleaved rounds (one call each per round); a cell whose p90/p50 "
            f"exceeds {t.get('disturbed_spread')} is marked disturbed; "
            f"img/s = batch / p50 latency; speedup = img/s vs {ref} at the same batch; agreement = top-1 vs {ref} on "
            f"{img.get('count')} images ({img.get('source')}); latency includes host<->device copies for every backend "
            f"(TensorRT uses pinned host buffers, torch and ONNX Runtime pageable memory); gpu ms = "
            f"{t.get('compute_ms') or 'device compute'}")


# -- files ----------------------------------------------------------------------------------------


def write_json(result: BenchResult, path: Path) -> Path:
    atomic_write_text(path, json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    return path


def write_csv(result: BenchResult, path: Path) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(ROW_FIELDS), lineterminator="\n")
    w.writeheader()
    for r in result.rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.to_dict().items()})
    atomic_write_text(path, buf.getvalue())
    return path


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def write_md(result: BenchResult, path: Path, *, plot: bool = True) -> Path:
    env = result.environment
    header, body = table_rows(result.rows)
    lines = [
        f"# tl bench: {env.get('arch')} {'x'.join(map(str, env.get('image_size') or []))}, {env.get('device')}",
        "",
        f"- date: {env.get('date')}",
        f"- CPU: {env.get('cpu')} ({env.get('cpu_cores')} cores, {env.get('cpu_threads')} threads; "
        f"torch threads {env.get('torch_threads')})",
        f"- GPU: {env.get('gpu') or 'none'}" + (f" (driver {env.get('gpu_driver')}, CUDA {env.get('cuda')})" if env.get("gpu") else ""),
        f"- versions: Python {env.get('python')}, torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}, "
        f"tensorrt {env.get('tensorrt') or 'not installed'}",
        f"- model: {env.get('checkpoint') or '-'}; artifacts: {', '.join(Path(a).name for a in env.get('artifacts', [])) or '-'}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 4 or i == len(header) - 1 else "---:" for i in range(len(header))) + "|",
    ]
    for cells in body:
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    lines += ["", caption(result) + ".", "", *recommendation_md(result), *(["![bench](bench.png)"] if plot else []), ""]
    atomic_write_text(path, "\n".join(lines))
    return path


def recommendation_md(result: BenchResult) -> list[str]:
    """The 'what to ship' section of bench.md: one entry per batch size with the lines that load it."""
    if result.min_agreement is None:
        return []
    ref = result.environment.get("reference") or "eager fp32"
    lines = [f"## Recommendation (fastest with top-1 agreement >= {result.min_agreement:.1%} vs {ref})", ""]
    for rec in result.recommendations:
        lines.append(f"- {_md_escape(rec.summary(result.min_agreement))}")
        lines += [f"  - Python: `{rec.python}`"] if rec.python else []
        lines += [f"  - CLI: `{rec.cli}`"] if rec.cli else []
    return lines + [""]


# Colours per backend family; precision varies the shade so ort fp32/int8 stay distinct.
_COLOURS = {
    "eager fp32": "#4d4d4d", "eager fp16": "#8c8c8c", "eager bf16": "#b3b3b3", "compile fp32": "#9467bd",
    "ort fp32": "#1f77b4", "ort fp16": "#6baed6", "ort int8": "#2ca02c",
    "trt fp32": "#d62728", "trt fp16": "#ff7f0e", "trt int8": "#e6550d",
    "openvino fp32": "#17becf", "openvino bf16": "#9edae5", "openvino fp16": "#7fc7d1", "openvino int8": "#bcbd22",
}


def _series(rows: list[BenchRow]) -> tuple[list[str], list[int], dict[str, dict[int, BenchRow]]]:
    labels: list[str] = []
    batches = sorted({r.batch for r in rows})
    by: dict[str, dict[int, BenchRow]] = {}
    for r in rows:
        lab = _plot_label(r)
        if lab not in by:
            labels.append(lab)
            by[lab] = {}
        by[lab][r.batch] = r
    return labels, batches, by


def _plot_label(r: BenchRow) -> str:
    lab = f"{r.backend.split('-')[0]} {r.precision}"
    if r.backend == "ort" and r.provider and r.provider != "CPUExecutionProvider":
        lab += f" ({provider(r)})"
    return lab


def write_png(result: BenchResult, path: Path) -> Path:
    """Two panels: p50 latency (log scale, p90-p99 whiskers) and throughput per backend and batch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    env = result.environment
    rows = list(result.rows)
    labels, batches, by = _series(rows)
    n = max(1, len(labels))
    width = 0.8 / n
    fig = Figure(figsize=(max(11, 2.2 + 1.1 * len(batches) * (0.6 + 0.35 * n)), 5.6), dpi=130,
                 layout="constrained")
    FigureCanvasAgg(fig)
    ax_lat, ax_thr = fig.subplots(1, 2)
    xs = list(range(len(batches)))
    for i, lab in enumerate(labels):
        colour = _COLOURS.get(lab.split(" (")[0], None)
        offs = [x - 0.4 + width * (i + 0.5) for x in xs]
        lat, lo, hi, thr = [], [], [], []
        for b in batches:
            r = by[lab].get(b)
            ok = r is not None and r.status == "ok" and r.p50_ms
            lat.append(r.p50_ms if ok else 0)
            lo.append(0)
            hi.append(max(0.0, (r.p90_ms or r.p50_ms) - r.p50_ms) if ok else 0)
            thr.append(r.throughput if ok else 0)
        ax_lat.bar(offs, lat, width * 0.92, color=colour, label=lab, yerr=[lo, hi], capsize=2,
                   error_kw={"elinewidth": 0.8, "ecolor": "#333333"})
        bars = ax_thr.bar(offs, thr, width * 0.92, color=colour, label=lab)
        for x, b, bar in zip(offs, batches, bars):
            r = by[lab].get(b)
            if r is None:
                continue
            if r.status != "ok":
                for ax in (ax_lat, ax_thr):
                    ax.text(x, 0.01, f" {r.status}", rotation=90, ha="center", va="bottom", fontsize=7,
                            color="#b22222", transform=ax.get_xaxis_transform())
                continue
            txt = f"{r.throughput:,.0f}" if r.throughput >= 100 else f"{r.throughput:.1f}"
            if r.speedup is not None and not (r.backend == "eager" and r.precision == "fp32"):
                txt += f"\n{r.speedup:.2f}x"
            ax_thr.text(x, bar.get_height(), txt, ha="center", va="bottom", fontsize=7)
            # Above the whisker, so the number never sits on the line.
            ax_lat.text(x, max(r.p50_ms, r.p90_ms or 0) * 1.02, f" {r.p50_ms:.1f}" if r.p50_ms < 100 else f" {r.p50_ms:.0f}",
                        ha="center", va="bottom", fontsize=7, rotation=90 if n > 3 else 0)
    _style_axes(ax_lat, ax_thr, rows, batches, reference=env.get("reference") or "eager fp32")
    hw = env.get("gpu") or f"{env.get('cpu')} ({env.get('cpu_threads')} threads)"
    size = "x".join(map(str, env.get("image_size") or []))
    fig.suptitle(f"{env.get('arch')} {size} on {hw} [{env.get('device')}]", fontsize=11, fontweight="bold")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _style_axes(ax_lat, ax_thr, rows: list[BenchRow], batches: list[int], *, reference: str = "eager fp32") -> None:
    """Ticks, grid, scales (log latency when the spread is wide), labels and the legend."""
    for ax in (ax_lat, ax_thr):
        ax.set_xticks(list(range(len(batches))), [f"batch {b}" for b in batches])
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
    ok_lat = [r.p50_ms for r in rows if r.status == "ok" and r.p50_ms]
    top = max([max(r.p50_ms, r.p90_ms or 0) for r in rows if r.status == "ok" and r.p50_ms] or [1.0])
    if ok_lat and max(ok_lat) / max(min(ok_lat), 1e-9) > 20:
        ax_lat.set_yscale("log")
        ax_lat.set_ylim(min(ok_lat) / 1.5, top * 4)
    elif ok_lat:
        ax_lat.set_ylim(0, top * 1.25)
    ax_lat.set_ylabel("latency per batch, ms (p50, whisker to p90) - lower is better")
    ax_thr.set_ylabel("throughput, images/s - higher is better")
    ax_lat.set_title("Latency")
    ax_thr.set_title(f"Throughput at p50 (label: img/s, speedup vs {reference})")
    ax_thr.set_ylim(0, max([r.throughput for r in rows if r.status == "ok" and r.throughput] or [1]) * 1.22)
    ax_thr.legend(loc="upper left", fontsize=8, frameon=False, ncol=2)


def write_all(result: BenchResult, out: Path) -> dict[str, Path]:
    """bench.json, .csv, .md and .png; no .png where matplotlib is not installed (an edge box's runtime-only
    install: the numbers are all in the other three)."""
    import importlib.util

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot = importlib.util.find_spec("matplotlib") is not None
    files = {"json": write_json(result, out / "bench.json"), "csv": write_csv(result, out / "bench.csv"),
             "md": write_md(result, out / "bench.md", plot=plot)}
    if plot:
        files["png"] = write_png(result, out / "bench.png")
    return files
