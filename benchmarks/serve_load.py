"""The serving load generator: `tl serve` under tritonclient load vs the in-process Classifier.

    tl bench serve exports/x/model.onnx --out bench/serve

Starts `tl serve` on free ports, sends single-image binary requests from 1, 8 and 32 virtual
users over each transport (HTTP: greenlets sharing one tritonclient.http connection pool; gRPC:
coroutines sharing one tritonclient.grpc.aio channel), and times the same model, backend and
batch sizes in-process with ``Classifier.predict_logits``, alternating them in rounds so that
background load on a shared machine hits all alike.
Writes serve_load.json and serve_load.md. Client and server share the machine, so on a
small box the client's own CPU use is part of what is measured; the report gives it per level.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tl.benchmarks.options import TRANSPORTS, LoadOptions
from tl.runtime.errors import DEBUG_ENV, TLError


READY = re.compile(r"ready on (http://\S+?)(?:, gRPC on (\S+))? \(")


class ServeProcess:
    """`tl serve SOURCE ARGS` in a subprocess on free ports; ``url``/``host`` (HTTP) and ``grpc_host``
    (None with --no-grpc) once it is ready."""

    def __init__(self, source, *args: str, timeout: float = 120, env: dict | None = None):
        env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k != DEBUG_ENV}
        args = [*map(str, args), "--port", "0"] + ([] if "--no-grpc" in args else ["--grpc-port", "0"])
        self.proc = subprocess.Popen([sys.executable, "-m", "tl", "serve", str(source), *args],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self.lines: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise TLError(f"tl serve exited ({self.proc.wait()}): {''.join(self.lines).strip()}")
            self.lines.append(line)
            if (ready := READY.search(line)) is not None:
                self.url, self.grpc_host = ready[1], ready[2]
                self.host = self.url.removeprefix("http://")
                break
        else:
            self.stop()
            raise TLError(f"tl serve was not ready within {timeout:.0f} s: {''.join(self.lines).strip()}")
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)
        self.reader.start()  # keeps the pipe drained; the lines stay readable

    def client(self, **kw):
        import tritonclient.http as httpclient

        return httpclient.InferenceServerClient(self.host, **kw)

    def grpc_client(self, **kw):
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.grpc_host, **kw)

    def stop(self) -> int:
        """SIGTERM (the server drains its queue) and its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        if hasattr(self, "reader"):
            self.reader.join(10)
        return code


def _serve_args(o: LoadOptions) -> list[str]:
    args = ["--max-delay-ms", str(o.max_delay_ms), "--backend", o.backend]
    for flag, value in (("--max-batch", o.max_batch), ("--providers", o.providers), ("--threads", o.threads)):
        if value is not None:
            args += [flag, str(value)]
    return args


def _client_loop(client, model: str, x: np.ndarray, until: float, latencies: list[float]) -> None:
    """One virtual user: a request, its answer, the next request, until ``until``."""
    import tritonclient.http as httpclient

    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    out = [httpclient.InferRequestedOutput("logits", binary_data=True)]
    while time.perf_counter() < until:
        t0 = time.perf_counter()
        client.infer(model, [inp], outputs=out)
        latencies.append((time.perf_counter() - t0) * 1000.0)


@dataclass
class Tally:
    """One level's slices, pooled over the rounds."""

    samples: list[float] = field(default_factory=list)
    images: int = 0
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    batches: float = 0.0
    rows: float = 0.0


def load_slice(server: ServeProcess, model: str, x: np.ndarray, clients: int, seconds: float, tally: Tally,
               transport: str = "http") -> None:
    """``clients`` virtual users sending ``x`` back to back over ``transport`` for ``seconds``, after a short
    warm-up; latencies, images, wall and client CPU time (it shares the machine with the server) and
    batches into ``tally``."""
    spin = SPINS[transport]
    spin(server, model, x, clients, min(0.3, seconds / 5))  # warm-up: connections, first batches
    before = _batch_counts(server, model)
    per_user: list[list[float]] = [[] for _ in range(clients)]
    start, cpu = time.perf_counter(), time.process_time()
    spin(server, model, x, clients, seconds, per_user)
    tally.wall_s += time.perf_counter() - start
    tally.client_cpu_s += time.process_time() - cpu
    after = _batch_counts(server, model)
    tally.samples += [v for t in per_user for v in t]
    tally.images += sum(map(len, per_user)) * len(x)
    tally.batches += after[0] - before[0]
    tally.rows += after[1] - before[1]


def served_row(clients: int, t: Tally, transport: str = "http") -> dict:
    from tl.benchmarks.timing import Stats

    stats = Stats.of(t.samples)
    return {"transport": transport, "concurrency": clients, "requests": len(t.samples), "p50_ms": stats.p50_ms, "p99_ms": stats.p99_ms,
            "mean_ms": stats.mean_ms, "throughput": t.images / t.wall_s, "client_cpu_s": t.client_cpu_s,
            "client_cores": t.client_cpu_s / t.wall_s, "mean_batch": t.rows / t.batches if t.batches else None}


def _spin_http(server, model, x, clients: int, seconds: float, per_user: list[list[float]] | None = None) -> None:
    """The users as greenlets on one tritonclient connection pool of ``clients`` connections, the way
    tritonclient's own async_infer runs concurrent requests: cheaper for the shared CPU than OS threads."""
    import gevent

    per_user = per_user or [[] for _ in range(clients)]
    client = server.client(concurrency=clients)
    until = time.perf_counter() + seconds
    try:
        users = [gevent.spawn(_client_loop, client, model, x, until, per_user[i]) for i in range(clients)]
        gevent.joinall(users, raise_error=True)
    finally:
        client.close()


def _spin_grpc(server, model, x, clients: int, seconds: float, per_user: list[list[float]] | None = None) -> None:
    """The users as coroutines on one tritonclient.grpc.aio channel (HTTP/2 streams side by side), the
    way a gRPC client runs concurrent calls."""
    import asyncio

    import tritonclient.grpc.aio as grpcaio

    per_user = per_user or [[] for _ in range(clients)]

    async def main():
        async with grpcaio.InferenceServerClient(server.grpc_host) as client:
            inp = grpcaio.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            out = [grpcaio.InferRequestedOutput("logits")]
            until = time.perf_counter() + seconds

            async def user(latencies: list[float]) -> None:
                while time.perf_counter() < until:
                    t0 = time.perf_counter()
                    await client.infer(model, [inp], outputs=out)
                    latencies.append((time.perf_counter() - t0) * 1000.0)

            await asyncio.gather(*(user(per_user[i]) for i in range(clients)))

    asyncio.run(main())


SPINS = {"http": _spin_http, "grpc": _spin_grpc}  # one client per transport of TRANSPORTS
TRANSPORT_NAMES = {"http": "HTTP", "grpc": "gRPC"}


def _batch_counts(server: ServeProcess, model: str) -> tuple[float, float]:
    """(batches run, rows run) so far, from the server's /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"{server.url}/metrics", timeout=30).read().decode()
    found = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
             if s.name in ("tl_batch_size_count", "tl_batch_size_sum") and s.labels.get("model") == model}
    return found.get("tl_batch_size_count", 0.0), found.get("tl_batch_size_sum", 0.0)


def in_process_slice(clf, x: np.ndarray, seconds: float, tally: Tally) -> None:
    """The same model and backend called directly on ``x`` for ``seconds``, after 5 untimed calls."""
    from tl.benchmarks.timing import TimingOptions, measure

    t = measure(lambda: clf.predict_logits(x), batch=len(x), options=TimingOptions(warmup=5, seconds=seconds))
    tally.samples += t.samples_ms
    tally.images += len(x) * len(t.samples_ms)
    tally.wall_s += sum(t.samples_ms) / 1000.0


def in_process_row(batch: int, t: Tally) -> dict:
    from tl.benchmarks.timing import Stats

    stats = Stats.of(t.samples)
    return {"batch": batch, "p50_ms": stats.p50_ms, "p99_ms": stats.p99_ms, "throughput": t.images / t.wall_s}


def run_serve_load(model_path: str | Path, options: LoadOptions | None = None, out: str | Path | None = None) -> dict:
    """Serve ``model_path``, load it at each concurrency, compare with in-process; write the report to ``out``.

    Each round runs every concurrency level against the server, then every batch size in-process,
    ``seconds / rounds`` each; the figures pool the rounds.
    """
    from tl.runtime.classifier import Classifier

    o = options or LoadOptions()
    model_path = Path(model_path)
    if not model_path.is_file():
        raise TLError(f"model not found: {model_path}")
    unknown = [t for t in o.transports if t not in SPINS]
    if unknown or not o.transports:
        raise TLError(f"--transport: {', '.join(unknown) or 'none given'}; choose from {', '.join(TRANSPORTS)}")
    server = ServeProcess(model_path, "--name", "bench", *_serve_args(o))
    try:
        meta = server.client().get_model_metadata("bench")
        max_batch = int(meta["parameters"]["max_batch_size"])
        shape = tuple(meta["inputs"][0]["shape"][1:])
        x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
        same = min(max(o.concurrency), max_batch)  # the batch the server can form at the highest concurrency
        batches = {b: np.random.default_rng(b).standard_normal((b, *shape)).astype(np.float32) for b in sorted({1, same})}
        served = {(t, c): Tally() for t in o.transports for c in o.concurrency}
        local = {b: Tally() for b in batches}
        piece = o.seconds / o.rounds
        with Classifier.load(model_path, backend=o.backend, providers=o.providers, intra_op_threads=o.threads) as clf:
            for _ in range(o.rounds):
                for (t, c), tally in served.items():
                    load_slice(server, "bench", x, c, piece, tally, t)
                for b, xb in batches.items():
                    in_process_slice(clf, xb, piece, local[b])
    finally:
        server.stop()
    from tl.runtime.env import environment

    served_rows = [served_row(c, tally, t) for (t, c), tally in served.items()]
    local_rows = [in_process_row(b, t) for b, t in local.items()]
    summary = {t: _summary([r for r in served_rows if r["transport"] == t], local_rows, same) for t in o.transports}
    result = {"model": str(model_path), "options": asdict(o), "max_batch": max_batch, "served": served_rows,
              "in_process": local_rows, "summary": summary, "environment": environment()}
    if out is not None:
        write_report(result, Path(out))
    return result


def _summary(served: list[dict], local: list[dict], same: int) -> dict:
    """One transport's figures against in-process: overhead at concurrency 1, throughput share at the top level."""
    by_c = {r["concurrency"]: r for r in served}
    by_b = {r["batch"]: r for r in local}
    top = by_c[max(by_c)]
    summary = {"throughput_ratio": top["throughput"] / by_b[same]["throughput"], "ratio_batch": same,
               "ratio_concurrency": top["concurrency"]}
    if 1 in by_c:
        summary["overhead_p50_ms"] = by_c[1]["p50_ms"] - by_b[1]["p50_ms"]
    return summary


def write_report(result: dict, out: Path) -> None:
    """serve_load.json, serve_load.md, and serve_load.png where matplotlib is installed."""
    from tl.runtime.files import atomic_write_text, ensure_output_dir

    ensure_output_dir(out)
    atomic_write_text(out / "serve_load.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "serve_load.md", markdown(result))
    import importlib.util

    if importlib.util.find_spec("matplotlib") is not None:  # the train extra; an edge box may not have it
        write_png(result, out / "serve_load.png")


def write_png(result: dict, path: Path) -> None:
    """p50/p99 latency and throughput per concurrency, the in-process figures as dashed lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from tl.runtime.files import atomic_path

    fig = Figure(figsize=(10, 4.2), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax_lat, ax_thr = fig.subplots(1, 2)
    for transport in result["summary"]:
        rows = [r for r in result["served"] if r["transport"] == transport]
        cs = [r["concurrency"] for r in rows]
        name = TRANSPORT_NAMES[transport]
        line = ax_lat.plot(cs, [r["p50_ms"] for r in rows], "o-", label=f"tl serve {name} p50")[0]
        ax_lat.plot(cs, [r["p99_ms"] for r in rows], "o--", color=line.get_color(), label=f"tl serve {name} p99")
        ax_thr.plot(cs, [r["throughput"] for r in rows], "o-", color=line.get_color(), label=f"tl serve {name}")
    for r in result["in_process"]:
        ax_lat.axhline(r["p50_ms"], ls=":", color="grey")
        ax_lat.text(cs[0], r["p50_ms"], f" in-process b={r['batch']} p50", va="bottom", fontsize=7)
        ax_thr.axhline(r["throughput"], ls=":", color="grey")
        ax_thr.text(cs[0], r["throughput"], f" in-process b={r['batch']}", va="bottom", fontsize=7)
    for ax, title in ((ax_lat, "latency (ms)"), (ax_thr, "images/s")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(cs, [str(c) for c in cs])
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.legend(fontsize=8)
    cpu = result.get("environment", {}).get("cpu", {}).get("model", "")
    where = f" on {cpu}" if cpu else ""
    fig.suptitle(f"tl serve: {Path(result['model']).name}, max batch {result['max_batch']}{where}", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def markdown(result: dict) -> str:
    lines = [f"# tl serve under load: {Path(result['model']).name} (max batch {result['max_batch']})", "",
             "| where | concurrency / batch | p50 ms | p99 ms | images/s | mean batch | client CPU (cores) |",
             "|---|---|---|---|---|---|---|"]
    for r in result["served"]:
        mean = f"{r['mean_batch']:.1f}" if r["mean_batch"] else "-"
        lines.append(f"| tl serve {TRANSPORT_NAMES[r['transport']]} | c={r['concurrency']} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['throughput']:.0f} | {mean} | {r['client_cores']:.2f} |")
    for r in result["in_process"]:
        lines.append(f"| in-process | b={r['batch']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['throughput']:.0f} | - | - |")
    lines.append("")
    for transport, s in result["summary"].items():
        name = TRANSPORT_NAMES[transport]
        lines += [f"- {name}: serving overhead at concurrency 1 (p50): {s.get('overhead_p50_ms', float('nan')):.2f} ms",
                  f"- {name}: throughput at concurrency {s['ratio_concurrency']} vs in-process batch "
                  f"{s['ratio_batch']}: {100 * s['throughput_ratio']:.0f}%"]
    lines.append("")
    return "\n".join(lines)
