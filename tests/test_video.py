"""Classifier.stream and the frame sources, on videos made here with PyAV.

Each video is a run of segments of `tl data synth` shapes, each segment tinted one colour; the
colour model (a real ONNX file: the mean of each channel, scaled) labels a frame by its colour, so
the true label of every frame is known. Frame-level parity and live-mode dropping use the exported
resnet18 of conftest.
"""

from __future__ import annotations

import functools
import http.server
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import skip_where_installed
from tl.runtime import Classifier, TLError

av = pytest.importorskip("av")

COLOURS = ("red", "green", "blue")
FPS = 10
SIZE = 48


# -- test material --------------------------------------------------------------------------
def colour_model(path: Path) -> Path:
    """NCHW 3x16x16 -> the mean of each channel x 20: the dominant colour wins. Carries a tl spec."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tl.runtime.spec import ModelSpec

    spec = ModelSpec.create(arch="colour", classes=list(COLOURS), image_size=16, mean=(0.0, 0.0, 0.0),
                            std=(1.0, 1.0, 1.0))
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Mul", ["flat", "scale"], ["logits"])]
    graph = helper.make_graph(nodes, "colour", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(np.array(20.0, np.float32), "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"tl.spec": spec.to_json()})
    onnx.save(model, str(path))
    return path


def segment_frames(labels=COLOURS, per: int = 8, size: int = SIZE, seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """Synth shapes, ``per`` frames for each label in turn, tinted with that label's colour."""
    from tl.train.synth import SHAPES, draw_shape

    rng = np.random.default_rng(seed)
    frames, truth = [], []
    for label in labels:
        channel = COLOURS.index(label)
        for i in range(per):
            gray = np.asarray(draw_shape(SHAPES[i % len(SHAPES)], size, rng).convert("L"), dtype=np.float32)
            frame = (0.25 * gray)[:, :, None].repeat(3, axis=2)
            frame[:, :, channel] = 150 + 0.4 * gray
            frames.append(frame.clip(0, 255).astype(np.uint8))
            truth.append(label)
    return frames, truth


def write_video(path: Path, frames, *, fps: int = FPS, codec: str | None = None) -> Path:
    """Encode with PyAV; mp4 with its index first (faststart), so a cut file keeps its first frames."""
    codec = codec or {".webm": "libvpx-vp9", ".avi": "mpeg4"}.get(path.suffix, "libx264")
    options = {"movflags": "faststart"} if path.suffix == ".mp4" else {}
    with av.open(str(path), "w", options=options) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def truncate(path: Path, share: float, out: Path) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * share)])
    return out


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    frames, truth = segment_frames()
    return {"root": root, "frames": frames, "truth": truth, "model": colour_model(root / "colour.onnx"),
            "mp4": write_video(root / "clip.mp4", frames)}


@pytest.fixture(scope="module")
def colour(material):
    with Classifier.load(material["model"], providers="cpu") as clf:
        yield clf


@pytest.fixture(scope="module")
def resnet(make_onnx):
    with Classifier.load(make_onnx(image_size=64)[0], providers="cpu", intra_op_threads=1) as clf:
        yield clf


class _Server:
    """A local HTTP server over a folder (and a handler that cuts one file off half-way)."""

    def __init__(self, folder: Path):
        folder_ = str(folder)

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **k):
                super().__init__(*a, directory=folder_, **k)

            def log_message(self, *args):
                pass

            def do_GET(self):
                if not self.path.startswith("/cut/"):
                    return super().do_GET()
                data = (Path(folder_) / self.path[5:]).read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])  # the stream stops here: the connection closes
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server(material):
    s = _Server(material["root"])
    yield s
    s.close()


def run(stream) -> tuple[list, object, TLError | None]:
    """Everything a stream gave, and the error it ended with."""
    results, error = [], None
    with stream:
        try:
            for r in stream:
                results.append(r)
        except TLError as e:
            error = e
    return results, stream.stats, error


# -- files -------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".avi", ".webm"])
def test_file_labels_and_timestamps(colour, material, suffix):
    path = material["mp4"] if suffix == ".mp4" else write_video(material["root"] / f"clip{suffix}", material["frames"])
    results, stats, error = run(colour.stream(path, top_k=3))
    n = len(material["truth"])
    assert error is None
    assert [r.label for r in results] == material["truth"]
    assert [r.frame for r in results] == list(range(n))
    assert [r.time for r in results] == pytest.approx([i / FPS for i in range(n)], abs=1e-3)
    assert (stats.frames_read, stats.frames_classified, stats.frames_dropped, stats.stopped) == (n, n, 0, "end")
    assert not stats.live and all(r.score > 0.9 for r in results) and len(results[0].top_k) == 3


def test_frame_gives_the_logits_of_its_png(resnet, material, tmp_path):
    """A frame goes through the same image pipeline as a PNG of that frame; batching changes nothing."""
    from PIL import Image

    frames = decoded(material["mp4"])
    batched, _, _ = run(resnet.stream(material["mp4"], batch_size=5, top_k=4))
    single, _, _ = run(resnet.stream(material["mp4"], batch_size=1, top_k=4))
    for k in (0, 9, len(frames) - 1):
        png = tmp_path / f"frame{k}.png"
        Image.fromarray(frames[k]).save(png)
        want = dict(resnet.predict(png, top_k=4)[0].top_k)
        for results in (batched, single):
            got = dict(results[k].top_k)
            assert got.keys() == want.keys()
            assert [got[c] for c in want] == pytest.approx([want[c] for c in want], abs=1e-5)


def test_every_max_frames_max_seconds(colour, material):
    results, stats, _ = run(colour.stream(material["mp4"], every=3))
    assert [r.frame for r in results] == list(range(0, 24, 3))
    assert [r.label for r in results] == material["truth"][::3]
    assert (stats.frames_read, stats.frames_skipped, stats.frames_classified) == (24, 16, 8)
    results, stats, _ = run(colour.stream(material["mp4"], max_frames=5))
    assert [r.frame for r in results] == [0, 1, 2, 3, 4] and stats.stopped == "max_frames"
    results, stats, _ = run(colour.stream(material["mp4"], max_seconds=1.0))
    assert [r.frame for r in results] == list(range(10)) and stats.stopped == "max_seconds"


def test_truncated_file_keeps_the_frames_before(colour, material):
    """mp4 (index first): FFmpeg fails part-way; mkv: it ends early without complaint, caught by the declared
    duration. Either way the frames before are classified, then one TLError."""
    mkv = write_video(material["root"] / "whole.mkv", material["frames"])
    for whole in (material["mp4"], mkv):
        cut = truncate(whole, 0.6, material["root"] / f"cut{whole.suffix}")
        results, stats, error = run(colour.stream(cut))
        assert error is not None and "truncated" in str(error) and str(cut) in str(error)
        assert 0 < len(results) < 24 and stats.stopped == "error"
        assert [r.label for r in results] == material["truth"][:len(results)]


def test_image_sequence_glob_and_folder(colour, material, tmp_path):
    from PIL import Image

    for i, f in enumerate(material["frames"]):
        Image.fromarray(f).save(tmp_path / f"f{i:03d}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    for source in (str(tmp_path / "f*.png"), tmp_path):
        results, stats, error = run(colour.stream(source, fps=5))
        assert error is None and [r.label for r in results] == material["truth"]
        assert [r.time for r in results] == pytest.approx([i / 5 for i in range(24)])


def test_in_memory_frames(colour, material):
    results, stats, _ = run(colour.stream(iter(material["frames"]), fps=FPS))
    assert [r.label for r in results] == material["truth"] and results[3].time == pytest.approx(0.3)


# -- live mode ---------------------------------------------------------------------------------
def test_live_mode_drops_stale_frames(resnet, material):
    """A source that produces faster than inference: live mode classifies the newest frames, counts the
    others as dropped and keeps latency near one inference; file mode classifies all and falls behind."""
    from tl.runtime.video import ArraySource, Paced

    frames = [np.ascontiguousarray(np.resize(f, (64, 64, 3))) for f in material["frames"]] * 5  # 120 frames

    def source():
        return Paced(ArraySource(frames), fps=1000)

    live, live_stats, _ = run(resnet.stream(source()))
    assert live_stats.live and live_stats.frames_read == 120
    assert live_stats.frames_dropped > 0
    assert live_stats.frames_classified + live_stats.frames_dropped == 120
    assert [r.frame for r in live] == sorted({r.frame for r in live})  # in order, none twice
    every, every_stats, _ = run(resnet.stream(source(), live=False))
    assert every_stats.frames_classified == 120 and every_stats.frames_dropped == 0
    # bounded: the live p95 latency stays under the file mode's worst, which grows with the backlog
    assert np.percentile([r.latency_ms for r in live], 95) < max(r.latency_ms for r in every)


# -- network -------------------------------------------------------------------------------------
def test_http_url(colour, material, server):
    results, stats, error = run(colour.stream(f"{server.url}/clip.mp4"))
    assert error is None and [r.label for r in results] == material["truth"]
    assert stats.source.startswith("url http://127.0.0.1") and not stats.live


def test_http_stream_that_stops_midway(colour, material, server):
    results, stats, error = run(colour.stream(f"{server.url}/cut/clip.mp4"))
    assert error is not None and "stopped after frame" in str(error)
    assert 0 < len(results) < 24 and [r.label for r in results] == material["truth"][:len(results)]


def test_unreachable_and_silent_servers(colour, server):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TLError, match="cannot open the stream"):
        colour.stream(f"http://127.0.0.1:{port}/clip.mp4")
    with pytest.raises(TLError, match="404"):
        colour.stream(f"{server.url}/missing.mp4")
    with socket.socket() as silent:  # accepts the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        start = time.monotonic()
        with pytest.raises(TLError, match="no answer within 1 s"):
            colour.stream(f"http://127.0.0.1:{silent.getsockname()[1]}/clip.mp4", timeout=1)
        assert time.monotonic() - start < 10


# -- bad input -------------------------------------------------------------------------------------
def test_bad_sources(colour, material, tmp_path):
    (tmp_path / "notes.mp4").write_text("this is not a video\n")
    cases = [(tmp_path / "missing.mp4", "not found"), (tmp_path / "notes.mp4", "not a readable video"),
             ("/dev/video99", "no such camera"), ("99", "no such camera"), (str(tmp_path / "*.png"), "no image files"),
             (42, "cannot stream from int")]
    for source, message in cases:
        with pytest.raises(TLError, match=message):
            colour.stream(source)
    with pytest.raises(TLError, match="every must be at least 1"):
        colour.stream(material["mp4"], every=0)


def test_gstreamer_needs_opencv_with_gstreamer(colour):
    """No OpenCV with GStreamer here: a pipeline string is one clear error, not a hang or a traceback."""
    skip_where_installed("cv2", "OpenCV is installed here; this checks the message without it")
    with pytest.raises(TLError, match="OpenCV built with GStreamer"):
        colour.stream("videotestsrc ! videoconvert ! appsink")
    with pytest.raises(TLError, match="OpenCV built with GStreamer"):
        colour.stream("csi://0")


def test_source_kinds(tmp_path):
    from tl.runtime.video import source_kind

    (tmp_path / "a.png").write_bytes(b"")
    assert [source_kind(s) for s in ("rtsp://cam/1", "https://x/a.mp4", "/dev/video0", "0", "clip.MKV",
                                     str(tmp_path / "*.png"), tmp_path, tmp_path / "a.png", "csi://0",
                                     "v4l2src ! appsink")] == \
        ["url", "url", "camera", "camera", "video", "sequence", "sequence", None, "gstreamer", "gstreamer"]


# -- what is drawn ---------------------------------------------------------------------------------
def test_annotated_video_and_timeline(material, tmp_path):
    from PIL import Image

    from tl.runtime.annotate import VideoWriter, draw_label, timeline_image

    frame = material["frames"][0]
    drawn = draw_label(frame, "red 0.99")
    changed = np.abs(drawn.astype(int) - frame.astype(int)).sum(axis=2) > 0
    assert changed[:4, :10].all() and not changed[-8:, -8:].any()  # a box at the top-left, the rest untouched
    writer = VideoWriter(tmp_path / "out.mp4", fps=FPS)
    for f in material["frames"][:7]:
        writer.write(draw_label(f, "x"))
    assert not (tmp_path / "out.mp4").exists()  # written beside it until closed
    writer.close()
    assert len(decoded(tmp_path / "out.mp4")) == 7
    img = timeline_image([0.0, 0.1, 0.2], ["red", "red", "blue"], [0.9, 0.8, 0.7], COLOURS, title="t")
    assert isinstance(img, Image.Image) and img.size == (1000, 320)
    assert len(np.unique(np.asarray(img).reshape(-1, 3), axis=0)) > 3
