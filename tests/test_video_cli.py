"""`tl predict` on videos, URLs, cameras and image globs: rows, summary, annotated video, timeline, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, assert_user_error, sigint_default

pytest.importorskip("av")

from test_video import FPS, decoded, material, truncate, write_video  # noqa: E402,F401 - material: the clip's fixture


@pytest.fixture(scope="module")
def clip(material):
    """test_video's clip, its frames, their true labels and the colour model (made once for this module)."""
    return material


def test_predict_video_all_outputs(tl_cli, clip, tmp_path):
    out = tmp_path / "out.mp4"
    rows, timeline, summary = tmp_path / "frames.jsonl", tmp_path / "timeline.png", tmp_path / "summary.json"
    r = tl_cli("predict", clip["model"], clip["mp4"], "--save-video", out, "-o", rows, "--format", "json",
               "--timeline", timeline, "--summary", summary)
    assert r.code == 0, r.err
    lines = [json.loads(l) for l in rows.read_text().splitlines()]
    assert [l["label"] for l in lines] == clip["truth"]
    assert [l["frame"] for l in lines] == list(range(24))
    assert [l["time"] for l in lines] == pytest.approx([i / FPS for i in range(24)], abs=1e-3)
    assert "24 frames read, 24 classified, 0 dropped" in r.err and "labels: red 8, green 8, blue 8" in r.err
    info = json.loads(summary.read_text())
    assert [(s["label"], s["start_frame"], s["end_frame"]) for s in info["segments"]] == \
        [("red", 0, 7), ("green", 8, 15), ("blue", 16, 23)]
    assert info["segments"][1]["start"] == pytest.approx(0.8, abs=1e-3)
    # the annotated video: decodes, one frame per input frame, the label box drawn at the top-left only
    got, original = decoded(out), decoded(clip["mp4"])
    assert len(got) == 24 and got[0].shape == original[0].shape
    corner = np.abs(got[12][:6, :12].astype(int) - original[12][:6, :12].astype(int)).mean()
    rest = np.abs(got[12][24:, 24:].astype(int) - original[12][24:, 24:].astype(int)).mean()
    assert corner > 40 and rest < 8, (corner, rest)
    from PIL import Image

    with Image.open(timeline) as img:
        assert img.format == "PNG" and img.size[0] >= 600


def test_csv_and_table(tl_cli, clip):
    r = tl_cli("predict", clip["model"], clip["mp4"], "--format", "csv", "--every", "2")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0] == "frame,time,label,index,score,top_k,latency_ms" and len(lines) == 13
    assert [l.split(",")[2] for l in lines[1:]] == clip["truth"][::2]
    assert "12 skipped (--every)" in r.err
    r = tl_cli("predict", clip["model"], clip["mp4"])
    assert r.code == 0 and "label timeline" in r.out
    assert [l.split("│")[4].strip() for l in r.out.splitlines() if "│" in l] == ["red", "green", "blue"]


def test_image_glob(tl_cli, clip, tmp_path):
    from PIL import Image

    for i, f in enumerate(clip["frames"][:8]):
        Image.fromarray(f).save(tmp_path / f"{i:02d}.png")
    r = tl_cli("predict", clip["model"], str(tmp_path / "*.png"), "--format", "json", "--fps", "4")
    assert r.code == 0, r.err
    lines = [json.loads(l) for l in r.out.splitlines()]
    assert [l["label"] for l in lines] == ["red"] * 8 and lines[2]["time"] == pytest.approx(0.5)
    # a folder stays a folder of images, as before
    r = tl_cli("predict", clip["model"], tmp_path, "--format", "json")
    assert r.code == 0 and "8 images classified" in r.err


def test_truncated_video_keeps_rows(tl_cli, clip, tmp_path):
    cut = truncate(clip["mp4"], 0.6, tmp_path / "cut.mp4")
    rows = tmp_path / "rows.jsonl"
    r = tl_cli("predict", clip["model"], cut, "-o", rows, "--format", "json")
    assert_user_error(r, "truncated", "were classified and written")
    kept = rows.read_text().splitlines()
    assert 0 < len(kept) < 24 and f"{len(kept)} frames read" in r.err


def test_bad_inputs(tl_cli, clip, tmp_path):
    (tmp_path / "notes.mp4").write_text("not a video")
    (tmp_path / "a.png").write_bytes(b"")
    model = clip["model"]
    assert_user_error(tl_cli("predict", model, tmp_path / "missing.mp4"), "not found")
    assert_user_error(tl_cli("predict", model, tmp_path / "notes.mp4"), "not a readable video")
    assert_user_error(tl_cli("predict", model, "/dev/video99", "--max-frames", "300"), "no such camera")
    assert_user_error(tl_cli("predict", model, "http://127.0.0.1:9/clip.mp4", "--timeout", "2"), "cannot open the stream")
    assert_user_error(tl_cli("predict", model, clip["mp4"], "-o", clip["mp4"]), "input file")
    assert_user_error(tl_cli("predict", model, clip["mp4"], "--save-video", tmp_path / "x.gif"), "give a file ending in")
    assert_user_error(tl_cli("predict", model, clip["mp4"], clip["mp4"]), "one video")
    assert_user_error(tl_cli("predict", model, tmp_path / "a.png", "--save-video", tmp_path / "o.mp4"),
                      "apply to a video")
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "x.gif").exists()


def test_ctrl_c_writes_results_so_far(make_onnx, clip, tmp_path):
    """SIGINT part-way through a long video: the rows so far are in -o, one line, exit 130."""
    model = make_onnx(image_size=64)[0]
    long = write_video(tmp_path / "long.mp4", [np.resize(f, (64, 64, 3)) for f in clip["frames"]] * 25)  # 600 frames
    rows = tmp_path / "rows.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "tl", "predict", str(model), str(long), "-o", str(rows), "--format", "json",
                          "--batch-size", "1", "--threads", "1"], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:  # wait until rows are being written
        temps = list(tmp_path.glob(".rows.jsonl.tl*.tmp"))
        if temps and temps[0].stat().st_size > 2000:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "Traceback" not in err and [l for l in err.splitlines() if l.startswith("error: ")] == \
        [l for l in err.splitlines() if "interrupted after" in l]
    kept = rows.read_text().splitlines()
    assert 0 < len(kept) < 600 and all(json.loads(l)["frame"] == i for i, l in enumerate(kept))
    assert not list(tmp_path.glob(".rows.jsonl.tl*"))
