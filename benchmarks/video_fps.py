"""Frames per second of a video file through Classifier.stream, stage by stage, and live-mode latency.

    python -m tl.benchmarks.video_fps OUT [--models resnet18:48:300,vgg16:224:60] [--size 640x480]

For each model (arch:image_size:frames; untrained weights, exported to ONNX FP32 here): decode only
(PyAV, to RGB arrays), preprocess only, inference only (preprocessed batches of the stream's batch
size), end to end (``Classifier.stream`` on the file: the three overlapped), and the live mode on the
same file paced to its frame rate as a camera would deliver it (latency from decode to result, frames
dropped). Writes OUT/video_fps.json and OUT/video_fps.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from tl.benchmarks.cases import command_line, export_model, machine, parse_models, write_report

DEFAULT_MODELS = "resnet18:48:300,vgg16:224:60"  # the demo's model, and the seed's at 224
VIDEO_FPS = 30
def make_video(path: Path, frames: int, width: int, height: int) -> Path:
    """Synth shapes scaled to the frame size, H.264 at VIDEO_FPS."""
    import av

    from tl.train.synth import SHAPES, draw_shape

    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=VIDEO_FPS)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            img = draw_shape(SHAPES[(i // VIDEO_FPS) % len(SHAPES)], 96, rng).resize((width, height))
            for p in s.encode(av.VideoFrame.from_ndarray(np.asarray(img.convert("RGB")), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(clf, video: Path, frames: int) -> dict:
    from tl.runtime.images import preprocess_one
    from tl.runtime.video import Paced, open_source

    def decode():
        src = open_source(video)
        try:
            return [f.image for f in src.frames()][:frames]
        finally:
            src.close()

    decode_s, images = _timed(decode)
    decode_s *= frames / max(1, len(images))  # the file may hold more frames than this model reads
    pre_s, arrays = _timed(lambda: [preprocess_one(im, clf.spec) for im in images])
    stream_probe = clf.stream(video, max_frames=1)
    batch = stream_probe.stats.batch_size
    stream_probe.close()
    clf.predict_logits(np.stack(arrays[:batch]))  # warm-up
    infer_s, _ = _timed(lambda: [clf.predict_logits(np.stack(arrays[i:i + batch])) for i in range(0, frames, batch)])

    def end_to_end():
        with clf.stream(video, max_frames=frames) as s:
            return sum(1 for _ in s), s.stats

    e2e_s, (done, stats) = _timed(end_to_end)
    with clf.stream(Paced(open_source(video)), max_frames=frames) as live:
        latency = [r.latency_ms for r in live]
    fps = {"decode": frames / decode_s, "preprocess": frames / pre_s, "inference": frames / infer_s,
           "end_to_end": done / e2e_s}
    slower = min(fps["decode"], fps["inference"])
    return {"frames": frames, "batch_size": batch, "fps": {k: round(v, 1) for k, v in fps.items()},
            "end_to_end_share_of_slower_of_decode_and_inference": round(fps["end_to_end"] / slower, 3),
            "end_to_end_share_of_slowest_stage": round(fps["end_to_end"] / min(fps["decode"], fps["preprocess"],
                                                                              fps["inference"]), 3),
            "live": {"source_fps": VIDEO_FPS, "classified": len(latency), "dropped": live.stats.frames_dropped,
                     "latency_ms_p50": round(float(np.percentile(latency, 50)), 1),
                     "latency_ms_p95": round(float(np.percentile(latency, 95)), 1),
                     "latency_ms_max": round(float(max(latency)), 1)},
            "stream_stats": stats.to_dict()}


def report_md(result: dict) -> str:
    env = result["environment"]
    lines = [f"# Video: frames/s of a {result['video']['width']}x{result['video']['height']} H.264 file, "
             f"{result['video']['fps']} fps",
             "", f"CPU: {env['cpu']} ({env['cores']} cores usable); onnxruntime {env['onnxruntime']}, PyAV {env['av']} "
                 f"(FFmpeg {env['ffmpeg']}). {result['note']}", "",
             "| model | batch | decode | preprocess | inference | end to end | e2e / slower of decode, inference "
             "| live p50 / p95 ms | live classified / dropped |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["models"].items():
        f, live = r["fps"], r["live"]
        lines.append(f"| {name} | {r['batch_size']} | {f['decode']} | {f['preprocess']} | {f['inference']} | "
                     f"{f['end_to_end']} | {r['end_to_end_share_of_slower_of_decode_and_inference']:.0%} | "
                     f"{live['latency_ms_p50']} / {live['latency_ms_p95']} | {live['classified']} / {live['dropped']} |")
    lines += ["", "frames/s; live: the same file paced to its 30 fps, as a camera delivers it; latency from a frame "
                  "leaving the decoder to its result.",
              "The pipeline overlaps the stages; it hides the faster one fully only where cores are spare: "
              "decoding (FFmpeg's threads), preprocessing (Pillow) and inference (ONNX Runtime's intra-op threads, "
              "one per core) share the same cores, so end to end is bounded by their summed CPU time / cores too.",
              "", f"Re-run: `{result['command']}`", ""]
    return "\n".join(lines)


def environment() -> dict:
    import av

    ffmpeg = av.ffmpeg_version_info
    return machine(av=av.__version__, ffmpeg=".".join(map(str, ffmpeg)) if isinstance(ffmpeg, tuple) else str(ffmpeg))


def main(argv: list[str] | None = None) -> None:
    from tl.runtime import Classifier

    parser = argparse.ArgumentParser(prog="python -m tl.benchmarks.video_fps", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--models", default=DEFAULT_MODELS, help="arch:image_size:frames,...")
    parser.add_argument("--size", default="640x480", help="frame size of the test video")
    parser.add_argument("--work", type=Path, help="where the video and models go (default OUT/work)")
    parser.add_argument("--note", default="", help="a line for the report (e.g. what else ran on the machine)")
    args = parser.parse_args(argv)
    width, height = map(int, args.size.split("x"))
    cases = parse_models(args.models)
    work = args.work or args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    video = make_video(work / "clip.mp4", max(c.frames for c in cases), width, height)
    result = {"command": command_line("tl.benchmarks.video_fps", argv),
              "video": {"width": width, "height": height, "fps": VIDEO_FPS, "codec": "h264"},
              "environment": environment(), "note": args.note, "models": {}}
    for case in cases:
        with Classifier.load(export_model(case, work), providers="cpu") as clf:
            result["models"][f"{case.arch} {case.image_size}"] = measure(clf, video, case.frames)
    write_report(args.out, "video_fps", result, report_md)


if __name__ == "__main__":
    main()
