"""DDP through torch's elastic launcher: 2 CPU processes (gloo) on this machine.

Each launch imports torch in three processes, so the assertions share as few launches as
possible: one finished 2-process run, one run whose rank 1 is killed, one stopped with Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, assert_user_error, run_tl_subprocess, sigint_default
from tl.runtime.progress import SILENT
from tl.train import TrainOptions, fit
from tl.train.checkpoint import load_checkpoint, load_model

RUN_FILES = {"best.pt", "last.pt", "metrics.jsonl", "history.png", "confusion.png", "batch.png", "spec.json"}
# SqueezeNet 1.1 has no BatchNorm, and --dropout 0 turns its one dropout layer off; with no random
# augmentation the arithmetic of 1 and 2 processes is the same (up to float summation order).
SAME_MATH = dict(arch="squeezenet1_1", weights="none", image_size=32, workers=0, augment="none", dropout=0.0,
                 batch_size=6, epochs=1, progress=False)


def _cli_args(**fields) -> list[str]:
    args = []
    for name, value in {**SAME_MATH, **fields}.items():
        if name == "progress":
            args.append("--no-progress")
        else:
            args += [f"--{name.replace('_', '-')}", str(value)]
    return args


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory) -> Path:
    """3 classes x 8 images at 32 px: 18 train (3 global batches of 6, 9 per rank), 6 val."""
    from tl.train.synth import SynthOptions, make_dataset

    return make_dataset(tmp_path_factory.mktemp("ddp") / "data", SynthOptions(classes=3, per_class=8, size=32, seed=0))


@pytest.fixture(scope="module")
def two_process_run(ddp_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_run") / "run"
    r = run_tl_subprocess("train", ddp_data, *_cli_args(), "--nproc-per-node", "2", "--out", out, timeout=300)
    assert r.code == 0, (r.out, r.err)
    return out, r


@pytest.mark.slow  # shares the 2-process launch
def test_two_processes_write_one_run_folder(two_process_run):
    out, r = two_process_run
    assert {p.name for p in out.iterdir()} == RUN_FILES
    assert [p.name for p in out.parent.iterdir()] == ["run"]
    # rank 0 alone reports: one banner, one epoch line, one summary
    assert r.out.count("x 2 processes (DDP)") == 1 and "batch 6 (3 per process)" in r.out
    assert r.out.count("epoch 1/1 ") == 1 and r.out.count("run folder:") == 1
    assert "error" not in r.err.lower(), r.err
    state = torch.load(out / "best.pt", weights_only=True)["state_dict"]
    assert not any(k.startswith("module.") for k in state)  # the unwrapped model: export and --weights as ever


@pytest.mark.slow  # shares the 2-process launch
def test_weights_equal_one_process_at_the_same_global_batch(two_process_run, ddp_data, tmp_path):
    """The average of the ranks' mean gradients is the mean gradient of the global batch."""
    out, _ = two_process_run
    one = fit(TrainOptions(data=ddp_data, out=tmp_path / "one", **SAME_MATH), reporter=SILENT)
    w1 = torch.load(one.last_path, weights_only=True)["state_dict"]
    w2 = torch.load(out / "last.pt", weights_only=True)["state_dict"]
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6, msg=k)
    from tl.train.models import build_model
    from tl.train.seeding import seed_everything

    seed_everything(0)
    init = build_model("squeezenet1_1", 3).state_dict()
    moved = max((w1[k] - init[k]).abs().max().item() for k in w1)
    assert moved > 1e-3  # training did move the weights: the equality above is not of two untouched inits


@pytest.mark.slow  # shares the 2-process launch
def test_validation_metrics_equal_a_single_process_evaluation(two_process_run):
    """Each rank scores its own shard (no padded repeats); the all-reduced figures are one process's."""
    from tl.train.data import ImageFileDataset
    from tl.train.epoch import evaluate
    from tl.train.transforms import eval_transform

    out, _ = two_process_run
    model, spec, ckpt = load_model(out / "best.pt")
    last = torch.load(out / "last.pt", weights_only=True)
    data = ckpt["data"]
    loader = torch.utils.data.DataLoader(
        ImageFileDataset([Path(p) for p in data["val_files"]], data["val_labels"], eval_transform(spec)), batch_size=6)
    loss, acc, confusion = evaluate(model, loader, torch.device("cpu"), dtype=None,
                                    memory_format=torch.contiguous_format, num_classes=3, task=SILENT.task("v"))
    assert confusion.sum() == len(data["val_files"]) == 6
    np.testing.assert_array_equal(np.asarray(last["best_confusion"]), confusion)
    assert ckpt["metrics"]["val_acc"] == acc
    assert ckpt["metrics"]["val_loss"] == pytest.approx(loss, rel=1e-6)


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in _children(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds rank 1 through /proc")
def test_killed_rank_ends_the_other_and_its_last_pt_resumes_in_one_process(ddp_data, tmp_path):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "TL_DEBUG"}
    p = subprocess.Popen([sys.executable, "-m", "tl", "train", str(ddp_data), *_cli_args(epochs=1000),
                          "--nproc-per-node", "2", "--out", str(out)],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not (out / "batch.png").exists() and time.time() < deadline and p.poll() is None:
            time.sleep(0.1)  # batch.png: rank 0 has its first batch of epoch 1
        rank1 = _rank_pid(p.pid, 1)
        assert rank1 is not None and p.poll() is None, p.communicate(timeout=60)
        os.kill(rank1, signal.SIGKILL)
        stdout, stderr = p.communicate(timeout=120)  # no rank hangs
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0
    assert_user_error_once = [l for l in stderr.splitlines() if l.startswith("error: ")]
    assert len(assert_user_error_once) == 1, stderr
    assert "Traceback" not in stderr and "--resume" in stderr, stderr
    assert (out / "last.pt").exists(), (stdout, stderr)
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["interrupted"] is True
    # A 2-process last.pt continues in one process.
    r = fit(TrainOptions.for_resume(load_checkpoint(out / "last.pt"), epochs=last["epoch"] + 1, progress=False))
    assert r.epochs_run == last["epoch"] + 1 and not r.interrupted


@pytest.mark.slow
def test_ctrl_c_ends_every_rank_with_one_line_and_a_last_pt(ddp_data, tmp_path):
    """Ctrl-C in a terminal sends SIGINT to the launcher and both ranks (one process group)."""
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "TL_DEBUG"}
    p = subprocess.Popen([sys.executable, "-m", "tl", "train", str(ddp_data), *_cli_args(epochs=1000),
                          "--nproc-per-node", "2", "--out", str(out)], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=sigint_default)
    try:
        deadline = time.time() + 180
        while not (out / "metrics.jsonl").exists() and time.time() < deadline and p.poll() is None:
            time.sleep(0.1)
        assert p.poll() is None, p.communicate(timeout=60)
        time.sleep(0.5)  # somewhere in epoch 2 or later
        os.killpg(p.pid, signal.SIGINT)
        stdout, stderr = p.communicate(timeout=120)  # no rank hangs
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr and "error: " not in stderr, stderr
    lines = [line for line in stdout.splitlines() if line.startswith("interrupted: saved")]
    assert len(lines) == 1 and str(out / "last.pt") in lines[0] and "--resume" in lines[0], stdout
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["interrupted"] is True and last["epoch"] >= 1
    with pytest.raises(ProcessLookupError):  # no rank outlives the launcher
        os.killpg(p.pid, 0)


def test_bad_launch_input(tl_cli, ddp_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert_user_error(tl_cli("train", ddp_data, *_cli_args(), "--nproc-per-node", "0", "--out", out),
                      "--nproc-per-node must be at least 1")
    assert_user_error(tl_cli("train", ddp_data, *_cli_args(batch_size=5), "--nproc-per-node", "2", "--out", out),
                      "--batch-size 5", "multiple of 2")
    # Under torchrun (its env on this process, no group started): checked before joining the group.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert_user_error(tl_cli("train", ddp_data, *_cli_args(batch_size=5), "--out", out), "multiple of 2")
    assert_user_error(tl_cli("train", ddp_data, *_cli_args(), "--sync-bn", "--device", "cpu", "--out", out),
                      "--sync-bn needs CUDA")
    assert_user_error(tl_cli("train", ddp_data, *_cli_args(), "--nproc-per-node", "2", "--out", out),
                      "under torchrun")
    assert not out.exists()  # all refused before a rank started or a folder was made
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    assert_user_error(tl_cli("train", ddp_data, *_cli_args(arch="resnet18"), "--out", out), "resnet18 has no dropout")
    assert not (out / "last.pt").exists()
