"""`tl train` refuses what would end in a NaN model, a traceback, a lost run or files in the data:
non-finite and out-of-range options, an output folder inside DATA, damaged or future checkpoints,
undecodable or control-character names, too many ranks; plots never cost a finished run."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import assert_user_error
from tl.train import TrainOptions, fit

TINY = ["--arch", "mobilenet_v3_small", "--weights", "none", "--image-size", "32", "--workers", "0",
        "--no-progress"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """3 classes x 8 images at 32 px: a run of one epoch takes about a second."""
    from tl.train.synth import SynthOptions, make_dataset

    return make_dataset(tmp_path_factory.mktemp("small") / "data",
                        SynthOptions(classes=3, per_class=8, size=32, seed=0, val_fraction=0.25))


@pytest.fixture(scope="module")
def one_epoch_run(small_data, tmp_path_factory):
    """A finished run of one epoch (best.pt, last.pt); tests copy it before changing it."""
    out = tmp_path_factory.mktemp("run") / "run"
    fit(TrainOptions(data=small_data, out=out, arch="mobilenet_v3_small", weights="none", image_size=32, epochs=1,
                     batch_size=4, workers=0, progress=False))
    return out


def _copy_run(run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(run, dest)
    return dest


def _rewrite(path, change):
    ckpt = torch.load(path, weights_only=True)
    change(ckpt)
    torch.save(ckpt, path)


def _one_line(result):
    return [line for line in result.err.splitlines() if line.strip()]


# -- 7: non-finite options, a diverging run ---------------------------------------------------


@pytest.mark.parametrize("option", ["--weight-decay", "--momentum", "--gamma", "--lr", "--label-smoothing"])
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_non_finite_options_are_refused(tl_cli, small_data, tmp_path, option, value):
    r = tl_cli("train", small_data, *TINY, option, value, "--out", tmp_path / "r")
    assert_user_error(r, option, "finite" if option != "--label-smoothing" else option)
    assert not (tmp_path / "r").exists()


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(tl_cli, small_data, tmp_path):
    # Epoch 1 trains at --lr 0.01; StepLR then multiplies it by 1e30: epoch 2's loss is not finite.
    out = tmp_path / "r"
    r = tl_cli("train", small_data, *TINY, "--epochs", "3", "--batch-size", "4", "--lr", "0.01",
               "--step-size", "1", "--gamma", "1e30", "--out", out)
    assert_user_error(r, "training diverged in epoch 2", "lower --lr", "(epoch 1)")
    best = torch.load(out / "best.pt", weights_only=True)
    last = torch.load(out / "last.pt", weights_only=True)
    assert best["epoch"] == 1 and last["epoch"] == 1
    for ckpt in (best, last):
        assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values() if t.is_floating_point())
        assert math.isfinite(ckpt["best_metric"]["val_loss"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1]


# -- 8: the run folder and the data ----------------------------------------------------------


def test_out_inside_data_is_refused_and_nothing_is_written_there(tl_cli, small_data):
    before = sorted(p.name for p in (small_data / "train").iterdir())
    r = tl_cli("train", small_data, *TINY, "--epochs", "1", "--out", small_data / "train" / "circle")
    assert_user_error(r, "is inside the data folder", "pass an --out outside")
    r = tl_cli("train", small_data, *TINY, "--epochs", "1", "--out", small_data / "new")
    assert_user_error(r, "is inside the data folder")
    assert not (small_data / "new").exists()
    assert sorted(p.name for p in (small_data / "train").iterdir()) == before
    assert not (small_data / "train" / "circle" / "batch.png").exists()


def test_data_inside_out_is_refused(tl_cli, small_data, tmp_path):
    r = tl_cli("train", small_data, *TINY, "--epochs", "1", "--out", small_data.parent)
    assert_user_error(r, "is inside the run folder")


# -- 9, 20: checkpoints checked once when loaded --------------------------------------------


def test_a_future_spec_format_is_refused_on_resume_and_export(tl_cli, one_epoch_run, tmp_path):
    run = _copy_run(one_epoch_run, tmp_path)

    def future(ckpt):
        ckpt["spec"]["format"] = 2

    _rewrite(run / "last.pt", future)
    _rewrite(run / "best.pt", future)
    r = tl_cli("train", "--resume", run / "last.pt", "--epochs", "2", "--no-progress")
    assert_user_error(r, "format 2")
    assert len(_one_line(r)) == 1
    r = tl_cli("export", run / "best.pt", "--out", tmp_path / "x")
    assert_user_error(r, "format 2")


@pytest.mark.parametrize("damage, expected", [
    (lambda c: c.pop("epoch"), "its epoch is None"),
    (lambda c: c["args"].update(lr="fast"), "--lr must be a number (got 'fast')"),
    (lambda c: c.update(spec="vgg16"), "its spec is str"),
    (lambda c: c.update(best_metric={"val_acc": "high"}), "its best_metric"),
    (lambda c: c.update(history=[{"no": "epoch"}]), "history"),
    (lambda c: c.update(optimizer={"state": {}, "param_groups": "x"}), "cannot be resumed"),
])
def test_a_damaged_checkpoint_is_one_error_line(tl_cli, one_epoch_run, tmp_path, damage, expected):
    run = _copy_run(one_epoch_run, tmp_path)
    _rewrite(run / "last.pt", damage)
    r = tl_cli("train", "--resume", run / "last.pt", "--epochs", "2", "--no-progress")
    assert_user_error(r, expected)
    assert len(_one_line(r)) == 1, r.err


# -- 13: pictures ----------------------------------------------------------------------------


def test_the_confusion_picture_is_bounded_for_many_classes(tmp_path):
    import numpy as np
    from PIL import Image

    from tl.train.plots import plot_confusion

    n = 1000
    path = plot_confusion(np.eye(n, dtype=np.int64), [f"class {i} " + "x" * 200 for i in range(n)],
                          tmp_path / "confusion.png", title="val")
    with Image.open(path) as img:
        assert max(img.size) <= 3000, img.size


def test_a_plot_that_fails_costs_no_finished_run(tl_cli, small_data, tmp_path, monkeypatch):
    import tl.train.plots as plots

    def out_of_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 23.6 GiB")

    monkeypatch.setattr(plots, "plot_confusion", out_of_memory)
    monkeypatch.setattr(plots, "plot_history", out_of_memory)
    out = tmp_path / "r"
    r = tl_cli("train", small_data, *TINY, "--epochs", "2", "--batch-size", "4", "--out", out)
    assert r.code == 0, r.err
    assert "could not draw" in r.out + r.err and "confusion.png" in r.out + r.err
    assert (r.out + r.err).count("history.png (MemoryError") == 1  # said once, not every epoch
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2
    assert (out / "best.pt").is_file() and not (out / "confusion.png").exists()


# -- 16, 17, 19: ranges checked up front -----------------------------------------------------


def test_nproc_per_node_is_bounded_by_the_machine(tl_cli, small_data, tmp_path):
    # --batch-size 1 does not split over the ranks either: whatever is checked first, nothing is started.
    too_many = len(os.sched_getaffinity(0)) + 1
    r = tl_cli("train", small_data, *TINY, "--device", "cpu", "--batch-size", "1", "--nproc-per-node", too_many,
               "--out", tmp_path / "r")
    assert_user_error(r, f"--nproc-per-node {too_many} is more than", "CPU core")


def test_seed_out_of_range_is_one_line(tl_cli, small_data, tmp_path):
    for seed in (str(10**23), "-1"):
        assert_user_error(tl_cli("train", small_data, *TINY, "--seed", seed, "--out", tmp_path / "r"),
                          "--seed must be between 0 and")


@pytest.mark.parametrize("arch, smallest", [("vgg11", 32), ("squeezenet1_1", 17)])
def test_image_size_below_the_architecture_minimum_is_refused(tl_cli, small_data, tmp_path, arch, smallest):
    r = tl_cli("train", small_data, "--arch", arch, "--weights", "none", "--image-size", "16", "--out", tmp_path / "r")
    assert_user_error(r, f"--image-size must be between {smallest} and", arch)


# -- 18, 24: names -----------------------------------------------------------------------------


def _two_classes(root, names):
    from PIL import Image

    for name in names:
        folder = os.path.join(os.fsencode(root), name if isinstance(name, bytes) else os.fsencode(name))
        os.makedirs(folder)
        for i in range(3):
            Image.new("RGB", (32, 32), (40 * i, 80, 120)).save(os.path.join(folder, b"%d.png" % i))
    return root


def test_a_class_folder_name_that_is_not_utf8_is_refused_escaped(tl_cli, tmp_path):
    data = _two_classes(tmp_path / "d", [b"cat\xff", b"dog"])
    r = tl_cli("train", data, *TINY, "--epochs", "1", "--out", tmp_path / "r")
    assert_user_error(r, "not valid UTF-8", "cat\\udcff")


def test_names_with_control_characters_are_shown_escaped(tl_cli, tmp_path):
    data = _two_classes(tmp_path / "d", ["cat", "dog"])
    os.makedirs(data / "evil\n\x1b[2Jname")  # a class folder without images
    r = tl_cli("train", data, *TINY, "--epochs", "1", "--out", tmp_path / "r")
    assert_user_error(r, "evil\\n\\x1b[2Jname", "has no images")
    assert len(_one_line(r)) == 1 and "\x1b" not in r.err


# -- leftovers: temporaries of a killed run --------------------------------------------------


def test_a_killed_saves_temporary_is_removed_on_the_next_run(tl_cli, one_epoch_run, tmp_path):
    run = _copy_run(one_epoch_run, tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = run / f".last.pt.tl{dead.pid}.abcd1234.tmp"
    stale.write_bytes(b"half a checkpoint")
    r = tl_cli("train", "--resume", run / "last.pt", "--epochs", "2", "--no-progress")
    assert r.code == 0, r.err
    assert not stale.exists()
    assert "removed 1 temporary file" in r.out + r.err


# -- 16: no rank outlives its launcher ---------------------------------------------------------


def _children(pid):
    from pathlib import Path

    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return kids


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="finds the ranks through /proc")
def test_ranks_stop_when_their_launcher_is_killed(small_data, tmp_path):
    import time

    from conftest import REPO

    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "TL_DEBUG"}
    p = subprocess.Popen([sys.executable, "-m", "tl", "train", str(small_data), *TINY, "--arch", "squeezenet1_1",
                          "--epochs", "1000", "--batch-size", "4", "--device", "cpu", "--nproc-per-node", "2",
                          "--out", str(out)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ranks = []
    try:
        deadline = time.time() + 180
        while not (out / "metrics.jsonl").exists() and time.time() < deadline and p.poll() is None:
            time.sleep(0.1)
        ranks = _children(p.pid)
        assert len(ranks) == 2 and p.poll() is None, p.communicate(timeout=60)
        p.kill()  # SIGKILL: the launcher stops nothing itself
        p.wait()
        deadline = time.time() + 60
        while any(_alive(r) for r in ranks) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_alive(r) for r in ranks)
    finally:
        for r in ranks:
            if _alive(r):
                os.kill(r, 9)
    last = torch.load(out / "last.pt", weights_only=True)  # rank 0 saved where it stood
    assert last["epoch"] >= 1


def test_ctrl_c_after_the_loss_diverged_writes_no_nan_last_pt(small_data, tmp_path):
    from tl.runtime.errors import TLError
    from tl.runtime.progress import Reporter, Task

    class CtrlCAtStep4(Task):
        def update(self, *, completed=None, **kwargs):
            if completed == 4:
                raise KeyboardInterrupt

    class Stopping(Reporter):
        def task(self, description, total=None):
            return CtrlCAtStep4()

    out = tmp_path / "r"
    with pytest.raises(TLError, match="training diverged in epoch 1.*no checkpoint was written"):
        fit(TrainOptions(data=small_data, out=out, arch="mobilenet_v3_small", weights="none", image_size=32, epochs=1,
                         batch_size=2, workers=0, lr=1e30, progress=False), reporter=Stopping())
    assert not (out / "last.pt").exists()
