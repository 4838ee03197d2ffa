"""Images/s of `tl predict --ray` on a local Ray against plain `tl predict`, same folder, same model.

    python -m tl.benchmarks.ray_overhead OUT [--models resnet18:48:2400,vgg16:224:160] [--rounds 2]

For each model (arch:image_size:images; untrained weights, exported to ONNX FP32 here, synthetic
images of the model's size): plain `tl predict`'s library call (predict_files: list, load, decode,
classify, one process, ONNX Runtime on every core), and the Ray Data run (tl.runtime.raydata:
classify + write_results into Parquet) with the default pool (one actor per CPU, one thread each,
decoding its own batches) and with one actor of every CPU's threads. Ray's figures are given for the
run (actors starting, classifying, the file written) and with Ray's own start and stop. Rounds
alternate the runners; the best round of each is reported, every round is kept in the JSON. The
answers are compared too (labels and scores equal per file). Writes OUT/ray_overhead.json and .md.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

from tl.benchmarks.cases import CLASSES, ModelCase, command_line, export_model, machine, parse_models, write_report

DEFAULT_MODELS = "resnet18:48:2400,vgg16:224:160"  # the demo's model on the demo's 2400 images; the seed's at 224


STEADY_SHARE = 10  # the pace after the first results is shown when they are at most a tenth of the images


def make_images(case: ModelCase, folder: Path) -> Path:
    from tl.train.synth import SynthOptions, make_dataset

    out = folder / f"images_{case.image_size}_{case.frames}"
    if not out.exists():
        make_dataset(out, SynthOptions(classes=len(CLASSES), per_class=math.ceil(case.frames / len(CLASSES)),
                                       size=case.image_size, seed=0))
    return out


def run_plain(model: Path, images: Path) -> dict:
    from tl.runtime.predict import PredictOptions, predict_files

    start = time.perf_counter()
    result = predict_files(PredictOptions(model=model, paths=[images], providers="cpu"))
    seconds = time.perf_counter() - start
    answers = {p.source: (p.label, p.score) for p in result.predictions}
    return {"images": len(answers), "seconds": seconds, "images_per_s": len(answers) / seconds, "answers": answers}


def run_ray(model: Path, images: Path, out: Path, *, actors: int | None, threads: int) -> dict:
    import pyarrow.parquet as pq

    from tl.runtime.predict import PredictOptions
    from tl.runtime.raydata import RayOptions, classify, connected, list_sources, write_results

    options = PredictOptions(model=model, paths=[images], providers="cpu")
    ray_options = RayOptions(actors=actors, threads=threads)
    start = time.perf_counter()
    with connected(ray_options):
        sources = list_sources(options.paths)
        run = write_results(classify(options, ray_options, sources=sources), out, total=len(sources[0]))
    total = time.perf_counter() - start
    rows = pq.read_table(out, columns=["path", "label", "score"]).to_pylist()
    answers = {r["path"]: (r["label"], r["score"]) for r in rows}
    return {"images": run.rows, "seconds": run.seconds, "images_per_s": run.images_per_s,
            "first_batch_seconds": run.first_seconds,
            # a pace only where the first results are a small part of the run (results come in blocks)
            "steady_images_per_s": run.steady_images_per_s if run.first_rows * STEADY_SHARE <= run.rows else None,
            "seconds_with_ray_start_stop": total, "images_per_s_with_ray_start_stop": run.rows / total,
            "answers": answers}


def measure(model: Path, images: Path, work: Path, rounds: int) -> dict:
    cpus = os.cpu_count() or 1
    runners = {"tl predict": lambda: run_plain(model, images),
               f"--ray, {cpus} actors x 1 thread": lambda: run_ray(model, images, work / "r.parquet", actors=None,
                                                                    threads=1),
               f"--ray, 1 actor x {cpus} threads": lambda: run_ray(model, images, work / "r.parquet", actors=1,
                                                                    threads=cpus)}
    rounds_out: dict[str, list[dict]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            rounds_out[name].append(fn())
    reference = rounds_out["tl predict"][0]["answers"]
    result = {}
    for name, runs in rounds_out.items():
        best = max(runs, key=lambda r: r["images_per_s"])
        same = sum(r["answers"] == reference for r in runs)
        result[name] = {**{k: v for k, v in best.items() if k != "answers"},
                        "rounds_images_per_s": [round(r["images_per_s"], 2) for r in runs],
                        "same_answers_as_tl_predict": f"{same} of {len(runs)} rounds"}
    return result


def environment() -> dict:
    import ray

    return machine(ray=ray.__version__)


def report_md(result: dict) -> str:
    env = result["environment"]
    lines = ["# tl predict --ray on one node: Ray Data's overhead against plain tl predict", "",
             f"CPU: {env['cpu']} ({env['cores']} cores usable); onnxruntime {env['onnxruntime']}, Ray {env['ray']}. "
             f"{result['note']}", "",
             "| model | images | runner | images/s (run) | share of tl predict | with Ray start + stop | "
             "first results after | after the first results | same answers |", "|---|---|---|---|---|---|---|---|---|"]
    for name, runs in result["models"].items():
        plain = runs["tl predict"]["images_per_s"]
        for runner, r in runs.items():
            ray = "images_per_s_with_ray_start_stop" in r
            lines.append(f"| {name} | {r['images']} | {runner} | {r['images_per_s']:.1f} | {r['images_per_s'] / plain:.0%} | "
                         + (f"{r['images_per_s_with_ray_start_stop']:.1f} | {r['first_batch_seconds']:.1f} s | "
                            f"{_figure(r['steady_images_per_s'])} | " if ray else " |  |  | ")
                         + f"{r['same_answers_as_tl_predict']} |")
    lines += ["", "tl predict: predict_files end to end (list, load the model, decode, classify) in one process, "
                  "ONNX Runtime on every core. --ray: the run is write_results (actors start and load the model, "
                  "decode + classify, one Parquet file written); Ray's own start and stop (a local Ray for the run) "
                  "come on top. 'After the first results': images/s once the first batch is out (the pool up and "
                  "running), where that batch is at most a tenth of the images (-: results came in too few "
                  "batches to tell). Best of the rounds; every round is in ray_overhead.json.",
              "", "On a cluster each node runs the same pool, so the expected throughput is about the per-node "
                  "figure above times the nodes, as long as reading the images (a shared file system or object "
                  "store) keeps up and the batches outnumber the actors; only one node was run here.",
              "", f"Re-run: `{result['command']}`", ""]
    return "\n".join(lines)


def _figure(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tl.benchmarks.ray_overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--models", default=DEFAULT_MODELS, help="arch:image_size:images,...")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, help="where the images and models go (default OUT/work)")
    parser.add_argument("--note", default="", help="a line for the report (e.g. what else ran on the machine)")
    args = parser.parse_args(argv)
    work = (args.work or args.out / "work").absolute()
    work.mkdir(parents=True, exist_ok=True)
    result = {"command": command_line("tl.benchmarks.ray_overhead", argv),
              "environment": environment(), "note": args.note, "models": {}}
    for case in parse_models(args.models):
        model = export_model(case, work)
        result["models"][f"{case.arch} {case.image_size}"] = measure(model, make_images(case, work), work, args.rounds)
    write_report(args.out, "ray_overhead", result, report_md)


if __name__ == "__main__":
    main()
