"""The training loop: `tl.train.fit(TrainOptions(...)) -> TrainResult`.

Keeps the seed's defaults (VGG16, SGD 0.001/0.9, StepLR 7/0.1, batch 8, 25 epochs, keep
the best val weights) and fixes its bugs (validation on the val loader, the right head).
Every epoch is seeded from (seed, epoch), so `--resume` after epoch k continues exactly
as an uninterrupted run would on CPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tl.runtime.errors import TLError
from tl.runtime.files import atomic_write_text
from tl.runtime.spec import ModelSpec
from tl.train.checkpoint import clean_state_dict, load_checkpoint, save_checkpoint
from tl.train.data import ImageFileDataset, RunData, prepare_data
from tl.train.models import build_model, freeze
from tl.train.options import TrainOptions, parse_device
from tl.train.transforms import denormalize, eval_transform, train_transform

@dataclass
class TrainResult:
    run_dir: Path
    best_path: Path
    last_path: Path
    spec: ModelSpec
    device: str
    epochs_run: int  # last completed epoch
    best_epoch: int
    best_val_acc: float
    best_val_loss: float
    history: list[dict] = field(default_factory=list)
    per_class: list[dict] = field(default_factory=list)  # class, precision, recall, support
    stopped_early: bool = False
    interrupted: bool = False
    skipped: list[str] = field(default_factory=list)


# -- devices ------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """auto | cpu | cuda | cuda:N -> torch.device, with an error that says what to use instead."""
    kind, index = parse_device(name)
    if kind == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    name = str(name).strip().lower()
    if not torch.cuda.is_available():
        raise TLError(f"--device {name}: CUDA is not available here (no GPU, or a CPU-only torch); use --device cpu")
    index = torch.cuda.current_device() if index is None else index
    count = torch.cuda.device_count()
    if index >= count:
        raise TLError(f"--device {name}: there are only {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 on GPUs that do it natively (Ampere+), else fp16 (with a GradScaler); None = no AMP."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16


def restore_scaler(scaler, state: dict) -> None:
    """Resume across AMP dtypes: a bf16 (or CPU) run saves a disabled GradScaler's empty state.

    An fp16 run resumed where bf16 is used (or AMP is off) drops the saved loss scale; a
    bf16 run resumed on an fp16 GPU starts a fresh scaler, which finds its scale within a
    few steps. ``GradScaler.load_state_dict({})`` would raise on an enabled scaler.
    """
    if state and scaler.is_enabled():
        scaler.load_state_dict(state)


# -- seeding ------------------------------------------------------------------------------


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch)) % (2**63 - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        v = state["python"]
        random.setstate((v[0], tuple(v[1]), v[2]))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- metrics ------------------------------------------------------------------------------


def per_class_metrics(confusion: np.ndarray, classes: list[str]) -> list[dict]:
    """Precision and recall per class from a confusion matrix (rows true, columns predicted)."""
    cm = np.asarray(confusion, dtype=np.int64)
    rows = []
    for i, name in enumerate(classes):
        tp = int(cm[i, i])
        predicted, support = int(cm[:, i].sum()), int(cm[i, :].sum())
        rows.append({
            "class": name,
            "precision": tp / predicted if predicted else 0.0,
            "recall": tp / support if support else 0.0,
            "support": support,
        })
    return rows


# -- the loop -----------------------------------------------------------------------------


@dataclass
class _Run:
    """Mutable state of one training run (kept together so Ctrl-C can save it)."""

    options: TrainOptions
    data: RunData
    spec: ModelSpec
    device: torch.device
    run_dir: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    epoch: int = 0
    best_acc: float = -1.0
    best_loss: float = math.inf
    best_epoch: int = 0
    best_confusion: list = field(default_factory=list)
    acc_epoch: int = 0  # last epoch whose val accuracy beat every earlier one (--patience)
    history: list[dict] = field(default_factory=list)

    def payload(self, *, metrics: dict | None = None) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "state_dict": clean_state_dict(self.model),
            "epoch": self.epoch,
            "best_metric": {"val_acc": float(self.best_acc), "val_loss": float(self.best_loss)},
            "metrics": metrics or {},
            "args": self.options.to_args(),
            "data": self.data.record(),
        }

    def save_last(self, *, interrupted: bool = False) -> Path:
        payload = self.payload(metrics=self.history[-1] if self.history else None)
        payload.update({
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_confusion": self.best_confusion,
            "acc_epoch": self.acc_epoch,
            "interrupted": interrupted,
        })
        path = self.run_dir / "last.pt"
        save_checkpoint(path, payload)
        return path


def _make_optimizer(o: TrainOptions, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)


def _make_scheduler(o: TrainOptions, optimizer: torch.optim.Optimizer):
    if o.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=o.step_size, gamma=o.gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=o.epochs)


def _default_run_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def _check_resume(ckpt: dict, options: TrainOptions, path: Path) -> None:
    if "optimizer" not in ckpt or "scheduler" not in ckpt:
        raise TLError(f"{path} has no optimizer state (a best.pt?); resume from the run's last.pt")
    spec = ckpt["spec"]
    if spec.get("arch") != options.arch:
        raise TLError(f"{path} was trained as {spec.get('arch')}, not {options.arch}; drop --arch or start a new run")


def fit(options: TrainOptions, *, console=None) -> TrainResult:
    """Train, validate every epoch, keep best.pt (val accuracy, ties by lower loss) and last.pt."""
    from rich.console import Console

    console = console or Console()
    resume_ckpt = None
    if options.resume is not None:
        resume_ckpt = load_checkpoint(options.resume)
        _check_resume(resume_ckpt, options, Path(options.resume))
        if int(resume_ckpt["epoch"]) >= options.epochs:
            raise TLError(
                f"{options.resume} has already finished epoch {resume_ckpt['epoch']} of --epochs {options.epochs}; "
                f"pass --epochs N with N > {resume_ckpt['epoch']} to train further"
            )

    data = prepare_data(options.data, val_split=options.val_split, seed=options.seed, skip_bad=options.skip_bad)
    spec = ModelSpec.create(
        arch=options.arch, classes=data.classes, image_size=options.image_size,
        resize_mode=options.resize_mode, resize_size=options.resize_size, interpolation=options.interpolation,
    )
    if resume_ckpt is not None and list(resume_ckpt["spec"]["classes"]) != data.classes:
        raise TLError(
            f"{options.resume} was trained on classes {', '.join(resume_ckpt['spec']['classes'])}, "
            f"but {options.data} has {', '.join(data.classes)}; resume on the same data"
        )

    if options.out is not None:
        run_dir = Path(options.out)
    elif resume_ckpt is not None:
        run_dir = Path(resume_ckpt["path"]).parent
    else:
        run_dir = _default_run_dir()
    if resume_ckpt is None and ((run_dir / "best.pt").exists() or (run_dir / "last.pt").exists()):
        raise TLError(f"{run_dir} already holds a run; pass another --out, or --resume {run_dir / 'last.pt'}")
    run_dir.mkdir(parents=True, exist_ok=True)
    spec.save(run_dir / "spec.json")

    device = resolve_device(options.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seed_everything(options.seed)
    model = build_model(options.arch, len(data.classes), weights="none" if resume_ckpt is not None else options.weights)
    n_trainable = freeze(model, options.arch, options.freeze)
    memory_format = torch.channels_last if (device.type == "cuda" and options.channels_last) else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _make_optimizer(options, params)
    scheduler = _make_scheduler(options, optimizer)
    dtype = amp_dtype(device, options.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    run = _Run(options=options, data=data, spec=spec, device=device, run_dir=run_dir, model=model,
               optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["state_dict"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        scheduler.load_state_dict(resume_ckpt["scheduler"])
        restore_scaler(scaler, resume_ckpt.get("scaler") or {})
        set_rng_state(resume_ckpt.get("rng") or {})
        run.epoch = int(resume_ckpt["epoch"])
        run.best_acc = float(resume_ckpt["best_metric"]["val_acc"])
        run.best_loss = float(resume_ckpt["best_metric"]["val_loss"])
        run.best_epoch = int(resume_ckpt.get("best_epoch", 0))
        run.best_confusion = list(resume_ckpt.get("best_confusion") or [])
        run.acc_epoch = int(resume_ckpt.get("acc_epoch", run.best_epoch))
        run.history = [h for h in resume_ckpt.get("history") or [] if h["epoch"] <= run.epoch]

    loader_gen = torch.Generator()
    pin = device.type == "cuda"
    train_ds = ImageFileDataset(data.train_files, data.train_labels, train_transform(spec, augment=options.augment))
    val_ds = ImageFileDataset(data.val_files, data.val_labels, eval_transform(spec))
    # BatchNorm cannot train on a batch of one; drop a lone last sample.
    drop_last = len(train_ds) > options.batch_size and len(train_ds) % options.batch_size == 1
    train_loader = DataLoader(train_ds, batch_size=options.batch_size, shuffle=True, generator=loader_gen,
                              num_workers=options.workers, pin_memory=pin, drop_last=drop_last)
    val_loader = DataLoader(val_ds, batch_size=options.batch_size, shuffle=False,
                            num_workers=options.workers, pin_memory=pin)
    criterion = nn.CrossEntropyLoss(label_smoothing=options.label_smoothing)

    console.print(
        f"[bold]tl train[/] {options.arch} (weights: {options.weights if resume_ckpt is None else 'resumed'}, "
        f"{n_trainable:,} trainable params) on {device} | {len(data.classes)} classes, "
        f"{len(train_ds)} train / {len(val_ds)} val images"
        + (f", {len(data.skipped)} bad skipped" if data.skipped else "")
        + f" | {options.image_size}px, batch {options.batch_size}, {options.optimizer} lr {options.lr}"
        + (f" | AMP {str(dtype).removeprefix('torch.')}" if dtype else ""),
        soft_wrap=True,
    )
    if resume_ckpt is not None:
        console.print(f"resuming after epoch {run.epoch} from {options.resume}")

    old_benchmark = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    stopped_early = interrupted = False
    try:
        with _progress(console, options.progress) as progress:
            for epoch in range(run.epoch + 1, options.epochs + 1):
                _seed_epoch(options.seed, epoch, loader_gen)
                t0 = time.perf_counter()
                train_loss, train_acc = _train_epoch(
                    run, train_loader, criterion, dtype, memory_format, progress, epoch,
                    capture=None if (run_dir / "batch.png").exists() else run_dir / "batch.png",
                )
                val_task = progress.add_task("  validate", total=len(val_loader), stats="")
                val_loss, val_acc, confusion = _evaluate(
                    model, val_loader, device, dtype, memory_format, len(data.classes),
                    on_batch=lambda: progress.advance(val_task),
                )
                progress.remove_task(val_task)
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                run.epoch = epoch
                if val_acc > run.best_acc:
                    run.acc_epoch = epoch
                improved = val_acc > run.best_acc or (val_acc == run.best_acc and val_loss < run.best_loss)
                row = {
                    "epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                    "val_loss": val_loss, "val_acc": val_acc, "lr": lr,
                    "seconds": round(time.perf_counter() - t0, 3), "best": improved,
                }
                run.history.append(row)
                if improved:
                    run.best_acc, run.best_loss, run.best_epoch = val_acc, val_loss, epoch
                    run.best_confusion = confusion.tolist()
                    save_checkpoint(run_dir / "best.pt", run.payload(metrics=row))
                run.save_last()
                _write_metrics(run_dir / "metrics.jsonl", run.history)
                _plot_history(run_dir, run.history)
                progress.console.print(
                    f"epoch {epoch}/{options.epochs}  train loss {train_loss:.4f} acc {train_acc:.3f}  "
                    f"val loss {val_loss:.4f} acc {val_acc:.3f}  lr {lr:.2e}  {row['seconds']:.1f}s"
                    + ("  [green]best[/]" if improved else ""),
                    soft_wrap=True,
                )
                if options.patience and epoch - run.acc_epoch >= options.patience:
                    progress.console.print(
                        f"early stop: val accuracy has not improved for {options.patience} epochs "
                        f"(last improvement: epoch {run.acc_epoch})"
                    )
                    stopped_early = True
                    break
    except TLError as e:
        # A file that broke after the up-front check, raised inside a DataLoader worker:
        # torch re-raises it with the worker's traceback in the message; keep one line.
        text = str(e)
        if "Original Traceback" in text and "TLError: " in text:
            raise TLError(text.rsplit("TLError: ", 1)[1].strip()) from None
        raise
    except KeyboardInterrupt:
        interrupted = True
        path = run.save_last(interrupted=True)
        _write_metrics(run_dir / "metrics.jsonl", run.history)
        console.print(
            f"\ninterrupted: saved {path} (after epoch {run.epoch}); continue with "
            f"tl train --resume {path}", soft_wrap=True, highlight=False,
        )
    finally:
        torch.backends.cudnn.benchmark = old_benchmark

    if run.best_confusion:
        from tl.train.plots import plot_confusion

        plot_confusion(np.asarray(run.best_confusion), data.classes, run_dir / "confusion.png",
                       title=f"val, epoch {run.best_epoch}")
    per_class = per_class_metrics(np.asarray(run.best_confusion), data.classes) if run.best_confusion else []
    result = TrainResult(
        run_dir=run_dir, best_path=run_dir / "best.pt", last_path=run_dir / "last.pt", spec=spec,
        device=str(device), epochs_run=run.epoch, best_epoch=run.best_epoch,
        best_val_acc=max(run.best_acc, 0.0), best_val_loss=run.best_loss, history=run.history,
        per_class=per_class, stopped_early=stopped_early, interrupted=interrupted,
        skipped=[str(p) for p, _ in data.skipped],
    )
    if not interrupted:
        print_summary(result, console=console)
    return result


def _seed_epoch(seed: int, epoch: int, loader_gen: torch.Generator) -> None:
    s = _epoch_seed(seed, epoch)
    seed_everything(s)
    loader_gen.manual_seed(s)


@contextlib.contextmanager
def _progress(console, enabled: bool):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console, disable=not enabled, transient=True,
    ) as progress:
        yield progress


def _train_epoch(run: _Run, loader: DataLoader, criterion: nn.Module, dtype, memory_format, progress, epoch: int,
                 capture: Path | None) -> tuple[float, float]:
    model, device, optimizer, scaler = run.model, run.device, run.optimizer, run.scaler
    model.train()
    task = progress.add_task(f"epoch {epoch}/{run.options.epochs}", total=len(loader), stats="")
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    for step, (x, y) in enumerate(loader):
        if capture is not None:
            _write_batch_png(x, y, run.spec, capture)
            capture = None
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
            loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach().double() * y.shape[0]
        correct += (logits.detach().argmax(1) == y).sum()
        seen += y.shape[0]
        if device.type != "cuda" or step % 10 == 9 or step == len(loader) - 1:  # .item() syncs a GPU
            progress.update(task, completed=step + 1,
                            stats=f"loss {loss_sum.item() / seen:.4f} acc {correct.item() / seen:.3f}")
    progress.remove_task(task)
    if not seen:
        return math.nan, math.nan
    return loss_sum.item() / seen, correct.item() / seen


@torch.inference_mode()
def _evaluate(model: nn.Module, loader: DataLoader, device: torch.device, dtype, memory_format,
              num_classes: int, on_batch=None) -> tuple[float, float, np.ndarray]:
    """(mean cross-entropy, accuracy, confusion matrix) on the validation loader."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.int64)
    seen = 0
    for x, y in loader:
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        confusion += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes * num_classes)
        seen += y.shape[0]
        if on_batch is not None:
            on_batch()
    cm = confusion.view(num_classes, num_classes).cpu().numpy()
    if not seen:
        return math.nan, 0.0, cm
    return loss_sum.item() / seen, float(np.trace(cm)) / seen, cm


def _write_batch_png(x: torch.Tensor, y: torch.Tensor, spec: ModelSpec, path: Path) -> None:
    from tl.train.plots import plot_batch

    images = denormalize(x[:32].float(), spec).permute(0, 2, 3, 1).numpy()
    plot_batch(images, [spec.classes[int(i)] for i in y[:32]], path)


def _write_metrics(path: Path, history: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in history))


def _plot_history(run_dir: Path, history: list[dict]) -> None:
    from tl.train.plots import plot_history

    plot_history(history, run_dir / "history.png")


def print_summary(result: TrainResult, *, console) -> None:
    """Best epoch's accuracy and per-class precision/recall, and where the files are."""
    from rich.table import Table

    table = Table(title=f"best epoch {result.best_epoch}: val accuracy {result.best_val_acc:.3f}, "
                        f"loss {result.best_val_loss:.4f}")
    table.add_column("class")
    table.add_column("precision", justify="right")
    table.add_column("recall", justify="right")
    table.add_column("images", justify="right")
    for row in result.per_class:
        table.add_row(row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", str(row["support"]))
    console.print(table)
    if result.skipped:
        console.print(f"skipped {len(result.skipped)} bad image(s): " + ", ".join(result.skipped[:5])
                      + (" ..." if len(result.skipped) > 5 else ""))
    if result.stopped_early:
        console.print(f"stopped early after epoch {result.epochs_run} (--patience)")
    console.print(f"run folder: {result.run_dir}  (best.pt, last.pt, metrics.jsonl, history.png, "
                  f"confusion.png, batch.png, spec.json)", soft_wrap=True, highlight=False)
