"""`tl train` end to end on CPU: run folder, checkpoints, resume exactness, Ctrl-C, errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, assert_user_error, sigint_default
from tl.runtime.images import preprocess
from tl.runtime.progress import Reporter, Task
from tl.runtime.spec import ModelSpec
from tl.train import TrainOptions, fit
from tl.train.checkpoint import load_checkpoint, load_model

RUN_FILES = {"best.pt", "last.pt", "metrics.jsonl", "history.png", "confusion.png", "batch.png", "spec.json"}
TINY = ["--arch", "mobilenet_v3_small", "--weights", "none", "--image-size", "32", "--workers", "0",
        "--no-progress"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine threads spinning
    against other processes slow these runs down. Restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _tiny(data, out, **kw) -> TrainOptions:
    base = dict(data=data, out=out, arch="mobilenet_v3_small", weights="none", image_size=32, workers=0,
                progress=False, batch_size=8)
    base.update(kw)
    return TrainOptions(**base)


@pytest.fixture(scope="module")
def cli_run(synth_data, tmp_path_factory):
    """One real `tl train` through the CLI entry point (in-process), 2 epochs."""
    from tl.cli import main

    out = tmp_path_factory.mktemp("cli_run") / "run"
    try:
        main(["train", str(synth_data), *TINY, "--epochs", "2", "--optimizer", "adamw", "--lr", "0.003",
              "--scheduler", "cosine", "--label-smoothing", "0.1", "--weight-decay", "0.01", "--out", str(out)])
    except SystemExit as e:
        assert e.code in (0, None)
    return out


def test_run_folder_has_exactly_the_design_files(cli_run):
    assert {p.name for p in cli_run.iterdir()} == RUN_FILES
    for png in ("history.png", "confusion.png", "batch.png"):
        with Image.open(cli_run / png) as img:
            img.verify()
    rows = [json.loads(line) for line in (cli_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr"} <= set(rows[0])
    assert rows[1]["lr"] < rows[0]["lr"]  # cosine


def test_checkpoints_load_weights_only_with_the_shared_keys(cli_run, synth_data):
    best = torch.load(cli_run / "best.pt", map_location="cpu", weights_only=True)
    last = torch.load(cli_run / "last.pt", map_location="cpu", weights_only=True)
    for ck in (best, last):
        assert {"spec", "state_dict", "epoch", "best_metric", "args", "data"} <= set(ck)
        assert set(ck["best_metric"]) == {"val_acc", "val_loss"}
    assert last["epoch"] == 2 and {"optimizer", "scheduler", "scaler", "rng"} <= set(last)
    spec = ModelSpec.from_dict(best["spec"])
    assert spec == ModelSpec.load(cli_run / "spec.json")
    assert spec.arch == "mobilenet_v3_small" and spec.input.height == 32
    assert spec.classes == ("circle", "cross", "square", "triangle")
    data = best["data"]
    assert data["root"] == str(synth_data.resolve()) and data["val_dir"] == str((synth_data / "val").resolve())
    assert data["train_dir"] == str((synth_data / "train").resolve()) and data["val_split"] is None
    assert len(data["val_files"]) == len(data["val_labels"]) == 24 and len(data["train_files"]) == 72
    assert all(os.path.isabs(p) and os.path.exists(p) for p in data["val_files"] + data["train_files"])
    assert best["args"]["optimizer"] == "adamw" and best["args"]["label_smoothing"] == 0.1


def test_best_metric_reproduced_through_the_runtime_pipeline(cli_run):
    """best.pt's val accuracy, recomputed with tl.runtime.images.preprocess: train and deploy agree."""
    model, spec, ckpt = load_model(cli_run)
    assert not model.training
    x = torch.from_numpy(preprocess(ckpt["data"]["val_files"], spec))
    with torch.no_grad():
        logits = model(x)
    labels = torch.tensor(ckpt["data"]["val_labels"])
    acc = (logits.argmax(1) == labels).float().mean().item()
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert acc == pytest.approx(ckpt["best_metric"]["val_acc"], abs=1e-6)
    assert loss == pytest.approx(ckpt["best_metric"]["val_loss"], rel=1e-4)


def test_summary_printed(synth_data, tmp_path, tl_cli):
    r = tl_cli("train", synth_data, *TINY, "--epochs", "1", "--out", tmp_path / "run")
    assert r.code == 0, r.err
    assert "precision" in r.out and "recall" in r.out and "best epoch 1" in r.out
    for c in ("circle", "cross", "square", "triangle"):
        assert c in r.out


def test_resume_is_exact_on_cpu(synth_data, tmp_path):
    # Random augmentation and a DataLoader worker: both random streams must continue exactly.
    kw = dict(augment="jitter", workers=1, lr=0.01)
    straight = fit(_tiny(synth_data, tmp_path / "straight", epochs=2, **kw))
    first = fit(_tiny(synth_data, tmp_path / "split", epochs=1, **kw))
    resumed = fit(TrainOptions.for_resume(load_checkpoint(first.last_path), epochs=2, progress=False))
    assert resumed.run_dir == tmp_path / "split" and resumed.epochs_run == 2
    a = torch.load(straight.last_path, weights_only=True)
    b = torch.load(resumed.last_path, weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for k, s in a["optimizer"]["state"].items():
        assert torch.equal(s["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
    assert [h["val_loss"] for h in a["history"]] == [h["val_loss"] for h in b["history"]]
    assert len((tmp_path / "split" / "metrics.jsonl").read_text().splitlines()) == 2
    # The weights did move: this is not comparing two untrained models.
    init = fit(_tiny(synth_data, tmp_path / "other", epochs=1, **{**kw, "seed": 1}))
    c = torch.load(init.last_path, weights_only=True)
    assert not all(torch.equal(a["state_dict"][k], c["state_dict"][k]) for k in a["state_dict"])


def test_freeze_features_trains_only_the_head(synth_data, tmp_path):
    torch.manual_seed(0)
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    weights = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), weights)
    r = fit(_tiny(synth_data, tmp_path / "run", arch="resnet18", weights=str(weights), freeze="features",
                  epochs=1, lr=0.01))
    state = torch.load(r.last_path, weights_only=True)["state_dict"]
    model = torchvision.models.resnet18(weights=None)
    for name, _ in model.named_parameters():
        if not name.startswith("fc."):
            assert torch.equal(state[name], ref.state_dict()[name]), name
    assert state["fc.weight"].shape == (4, 512)
    # Only the head reached the optimizer.
    opt = torch.load(r.last_path, weights_only=True)["optimizer"]
    assert sum(len(g["params"]) for g in opt["param_groups"]) == 2


@dataclass
class RecordedTask(Task):
    description: str
    total: int | None
    updates: list[dict] = field(default_factory=list)
    advanced: int = 0
    closed: bool = False

    def advance(self, n=1):
        self.advanced += n

    def update(self, **fields):
        self.updates.append(fields)

    def close(self):
        self.closed = True


class RecordingReporter(Reporter):
    """Keeps what fit reports, to check it goes through the reporter and nowhere else."""

    def __init__(self):
        self.lines: list[str] = []
        self.tasks: list[RecordedTask] = []

    def task(self, description, total=None):
        self.tasks.append(RecordedTask(description, total))
        return self.tasks[-1]

    def info(self, text):
        self.lines.append(text)

    def warning(self, text):
        self.lines.append(f"warning: {text}")


def test_patience_stops_early(tmp_path, capsys):
    from tl.train.synth import SynthOptions, make_dataset

    # SqueezeNet has no BatchNorm: with a vanishing lr the val accuracy cannot change, so patience must
    # trigger (the val loss repeats to the last bit too: no epoch after the first counts as best).
    data = make_dataset(tmp_path / "data", SynthOptions(classes=2, per_class=6, size=32, seed=0))
    reporter = RecordingReporter()
    capsys.readouterr()
    r = fit(_tiny(data, tmp_path / "run", arch="squeezenet1_1", lr=1e-12, epochs=6, patience=2, augment="none"),
            reporter=reporter)
    assert r.stopped_early and r.epochs_run == 3 and r.best_epoch == 1
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3
    # The library prints nothing; everything went to the reporter.
    assert capsys.readouterr().out == ""
    assert reporter.lines[0].startswith("tl train squeezenet1_1 (weights: none,") and "2 classes" in reporter.lines[0]
    assert [line.split("  ")[0] for line in reporter.lines[1:4]] == ["epoch 1/6", "epoch 2/6", "epoch 3/6"]
    assert reporter.lines[1].endswith("  best") and not reporter.lines[2].endswith("best")
    assert reporter.lines[4].startswith("early stop: val accuracy has not improved for 2 epochs")
    assert [t.description for t in reporter.tasks] == ["epoch 1/6", "  validate", "epoch 2/6", "  validate",
                                                       "epoch 3/6", "  validate"]
    assert all(t.closed for t in reporter.tasks)
    train_task, val_task = reporter.tasks[0], reporter.tasks[1]
    assert train_task.updates[-1]["completed"] == train_task.total and "loss" in train_task.updates[-1]["note"]
    assert val_task.advanced == val_task.total


def test_options_are_checked_when_built():
    """TrainOptions refuses a bad value itself, with the flag's name, before any work starts."""
    from tl.runtime.errors import TLError

    cases = [
        (dict(data=None), "no data folder given"),
        (dict(arch="alexnet"), "--arch must be one of"),
        (dict(freeze="all"), "--freeze must be one of none, features"),
        (dict(resize_mode="crop"), "--resize-mode must be one of"),
        (dict(interpolation="area"), "--interpolation must be one of"),
        (dict(epochs=0), "--epochs must be at least 1"),
        (dict(val_split=1.0), "--val-split must be between 0 and 1"),
        (dict(device="tpu"), "--device must be auto, cpu, cuda or cuda:N"),
    ]
    for kw, message in cases:
        with pytest.raises(TLError, match=re.escape(message)):
            TrainOptions(**{"data": "images", **kw})
    assert TrainOptions(data="images", device="cuda:1").device == "cuda:1"  # availability is checked by fit


def test_augment_seed_is_a_hidden_name_of_jitter(tl_cli):
    """Scripts pass --augment seed and existing checkpoints hold augment="seed": both still mean jitter."""
    assert TrainOptions(data="images", augment="seed").augment == "jitter"
    saved = {"path": "runs/a/last.pt", "args": {"data": "images", "augment": "seed", "resume": None, "out": "x"}}
    resumed = TrainOptions.for_resume(saved, epochs=3)
    assert (resumed.augment, resumed.resume, resumed.out, resumed.epochs) == ("jitter", "runs/a/last.pt", "runs/a", 3)
    help_text = tl_cli("train", "--help").out
    assert "[jitter|standard|none]" in help_text and "seed:" not in help_text
    assert_user_error(tl_cli("train", "--augment", "seed"), "missing DATA")  # accepted; DATA is what is missing
    assert_user_error(tl_cli("train", "--augment", "heavy"), "'heavy' is not one of 'jitter', 'standard', 'none'")


def test_ctrl_c_writes_last_pt_and_exits_cleanly(synth_data, tmp_path):
    out = tmp_path / "run"
    env = {**{k: v for k, v in os.environ.items() if k != "TL_DEBUG"}, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "tl", "train", str(synth_data), *TINY, "--epochs", "1000",
                          "--out", str(out)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    try:
        deadline = time.time() + 180
        while not (out / "metrics.jsonl").exists() and time.time() < deadline and p.poll() is None:
            time.sleep(0.2)
        assert (out / "metrics.jsonl").exists(), p.communicate(timeout=5)
        time.sleep(0.5)  # somewhere inside epoch 2
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr and "Traceback" not in stdout
    assert "interrupted" in stdout and "--resume" in stdout
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["interrupted"] is True and last["epoch"] >= 1
    assert (out / "best.pt").exists()
    # And the run continues from there.
    r = fit(TrainOptions.for_resume(load_checkpoint(out / "last.pt"), epochs=last["epoch"] + 1, progress=False))
    assert r.epochs_run == last["epoch"] + 1 and not r.interrupted


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler in this process, whatever pytest was started with."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def _ctrl_c_here() -> None:
    """SIGINT whose Python handler runs inside the calling function."""
    signal.raise_signal(signal.SIGINT)  # to this (the main) thread, before it returns
    for _ in range(1000):  # the handler runs at one of these bytecodes, still in this frame
        pass


class _CtrlCInFinalizer:
    """Ctrl-C that arrives while the garbage collector runs a finalizer: Python raises the
    KeyboardInterrupt inside __del__, prints "Exception ignored" and drops it."""

    def __del__(self):
        _ctrl_c_here()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ctrl_c_dropped_by_a_finalizer_is_raised_at_the_next_step(python_sigint):
    from tl.train.interrupts import interrupts_caught, raise_if_interrupted

    _CtrlCInFinalizer()  # without the guard the interrupt is lost: this line returns normally
    raise_if_interrupted()
    with interrupts_caught():
        _CtrlCInFinalizer()
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
        raise_if_interrupted()  # raised once
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class _CtrlCWhilePickled:
    def __reduce__(self):
        _ctrl_c_here()
        return (dict, ())


def test_ctrl_c_during_a_held_checkpoint_write_waits_for_it(python_sigint, tmp_path):
    """A checkpoint write cut by Ctrl-C leaves torch's zip writer unfinished, and freeing it later
    aborts the process; held, the write completes and the interrupt comes right after."""
    from tl.train.checkpoint import save_checkpoint
    from tl.train.interrupts import interrupts_caught, interrupts_held, raise_if_interrupted

    with interrupts_caught():
        with interrupts_held():
            save_checkpoint(tmp_path / "last.pt", {"spec": {}, "state_dict": {}, "extra": _CtrlCWhilePickled()})
        assert torch.load(tmp_path / "last.pt", weights_only=False)["extra"] == {}
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_requested_without_gpu(tl_cli, synth_data, tmp_path):
    r = tl_cli("train", synth_data, *TINY, "--device", "cuda", "--out", tmp_path / "run")
    assert_user_error(r, "CUDA is not available", "--device cpu")


def test_bad_options(tl_cli, synth_data, tmp_path, cli_run):
    run = ("--out", tmp_path / "run")
    cases = [
        (("--device", "tpu"), "--device must be"),
        (("--epochs", "0"), "--epochs"),
        (("--lr", "-1"), "--lr"),
        (("--batch-size", "0"), "--batch-size"),
        (("--image-size", "8"), "--image-size"),
        (("--label-smoothing", "1"), "--label-smoothing"),
        (("--patience", "-1"), "--patience"),
        (("--arch", "alexnet"), "'alexnet' is not one of"),
        (("--weights", tmp_path / "nope.pth"), "file not found"),
        (("--optimizer", "rmsprop"), "optimizer"),
    ]
    for extra, fragment in cases:
        assert_user_error(tl_cli("train", synth_data, *TINY, *extra, *run), fragment)
    # Never overwrite a finished run; never resume from a best.pt or a missing file.
    assert_user_error(tl_cli("train", synth_data, *TINY, "--out", cli_run), "already holds a run", "--resume")
    assert_user_error(tl_cli("train", "--resume", cli_run / "best.pt"), "no optimizer state", "last.pt")
    assert_user_error(tl_cli("train", "--resume", tmp_path / "missing.pt"), "checkpoint not found")
    assert_user_error(tl_cli("train", "--resume", cli_run / "last.pt", "--arch", "resnet18"), "trained as")
    assert_user_error(tl_cli("train", "--resume", cli_run / "last.pt"), "already finished epoch 2", "--epochs")
    assert not (tmp_path / "run").exists() or not (tmp_path / "run" / "best.pt").exists()


def test_val_split_option_on_flat_folder(tl_cli, synth_data, tmp_path):
    import shutil

    flat = tmp_path / "flat"
    shutil.copytree(synth_data / "train", flat)
    assert_user_error(tl_cli("train", flat, *TINY, "--val-split", "0", "--out", tmp_path / "r0"), "--val-split")
    r = fit(_tiny(flat, tmp_path / "run", epochs=1, val_split=0.25, seed=3))
    ck = torch.load(r.best_path, weights_only=True)
    assert ck["data"]["val_split"] == 0.25 and ck["data"]["seed"] == 3 and ck["data"]["val_dir"] is None
    assert len(ck["data"]["val_files"]) == 4 * round(18 * 0.25)
    assert np.isfinite(r.best_val_loss)


def test_resume_across_amp_dtypes_restores_or_drops_the_loss_scale():
    """bf16/CPU runs save a disabled GradScaler's empty state; an fp16 resume must not choke on it."""
    from tl.train.loop import restore_scaler

    fp16 = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    with pytest.raises(RuntimeError):  # why a plain load_state_dict cannot be used
        fp16.load_state_dict({})
    restore_scaler(fp16, {})  # bf16 run resumed with fp16: fresh scaler
    assert fp16.get_scale() == 1024.0
    saved = torch.amp.GradScaler("cpu", enabled=True, init_scale=64.0)
    state = saved.state_dict()
    restore_scaler(fp16, state)  # fp16 -> fp16: the loss scale carries over
    assert fp16.get_scale() == 64.0
    off = torch.amp.GradScaler("cpu", enabled=False)
    restore_scaler(off, state)  # fp16 run resumed in bf16 / without AMP: nothing to restore
    assert not off.is_enabled()
