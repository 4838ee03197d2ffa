"""The training loop: `tl.train.fit(TrainOptions(...), reporter=...) -> TrainResult`.

Keeps the seed's defaults (VGG16, SGD 0.001/0.9, StepLR 7/0.1, batch 8, 25 epochs, keep
the best val weights) and fixes its bugs (validation on the val loader, the right head).
`fit` is the list of steps (join the DDP group if torchrun started ranks, check a resume, set
up, restore, run the epochs, finish); the per-batch work lives in tl.train.epoch, what a DDP
rank adds in tl.train.distributed (only rank 0 reports and writes the run folder). Progress and messages go to the reporter it is
given; it prints nothing, so a notebook or a server can call it silently.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tl.runtime.errors import TLError, escaped
from tl.runtime.files import atomic_write_text, ensure_output_dir, output_lock
from tl.runtime.progress import SILENT, Reporter
from tl.runtime.spec import ModelSpec
from tl.train.checkpoint import check_resumable, clean_state_dict, load_checkpoint, save_checkpoint
from tl.train.data import ImageFileDataset, RunData, prepare_data
from tl.train.distributed import (Ranks, is_peer_failure, per_rank_batch, process_group, rank_device, ranks_from_env,
                                  share_from_main, sigterm_raises, signals_held, stopped_with_launcher, sum_across_ranks,
                                  train_sampler, val_shard, wrap_model)
from tl.train.epoch import amp_dtype, evaluate, per_class_metrics, train_one_epoch
from tl.train.interrupts import interrupts_caught, interrupts_held, raise_if_interrupted
from tl.train.models import build_model, freeze, set_dropout
from tl.train.options import TrainOptions
from tl.train.seeding import epoch_seed, rng_state, seed_epoch, seed_everything, set_rng_state
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


@dataclass
class _Run:
    """Everything one training run holds (kept together so Ctrl-C can save it)."""

    options: TrainOptions
    data: RunData
    spec: ModelSpec
    device: torch.device
    ranks: Ranks
    run_dir: Path
    model: nn.Module  # what checkpoints hold (no DDP "module." prefix)
    net: nn.Module  # what trains: the model, or DDP around it
    n_trainable: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    dtype: torch.dtype | None  # autocast dtype; None = no AMP
    memory_format: torch.memory_format
    train_loader: DataLoader
    val_loader: DataLoader
    loader_gen: torch.Generator
    criterion: nn.Module
    epoch: int = 0
    best_acc: float = -1.0
    best_loss: float = math.inf
    best_epoch: int = 0
    best_confusion: list = field(default_factory=list)
    acc_epoch: int = 0  # last epoch whose val accuracy beat every earlier one (--patience)
    history: list[dict] = field(default_factory=list)
    failed_pictures: set = field(default_factory=set)  # said once each

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


def fit(options: TrainOptions, *, reporter: Reporter = SILENT) -> TrainResult:
    """Train, validate every epoch, keep best.pt (val accuracy, ties by lower loss) and last.pt.

    Under torchrun (RANK / WORLD_SIZE set) this process is one DDP rank; rank 0 reports.
    """
    ranks = ranks_from_env()
    reporter = reporter if ranks.is_main else SILENT
    per_rank_batch(options.batch_size, ranks.world_size)
    device = rank_device(options.device, ranks, sync_bn=options.sync_bn)
    with stopped_with_launcher(ranks), process_group(ranks, device):
        resume = _load_resume(options)
        _refuse_run_dir_around_data(_run_dir(options, resume), Path(options.data).expanduser())
        data, spec = _prepare_data(options, resume)
        with _own_run_dir(options, resume, spec, ranks, reporter) as run_dir:  # one run per folder, claimed by rank 0
            run = _setup(options, resume, data, spec, run_dir, device, ranks)
            if resume is not None:
                _restore(run, resume)
            reporter.info(_banner(run, resumed=resume is not None))
            if resume is not None:
                reporter.info(f"resuming after epoch {run.epoch} from {options.resume}")
            stopped_early, interrupted = _run_epochs(run, reporter)
            return _finish(run, reporter, stopped_early=stopped_early, interrupted=interrupted)


# -- setup --------------------------------------------------------------------------------


def _load_resume(options: TrainOptions) -> dict[str, Any] | None:
    """The last.pt to continue from, checked before any data is read; None for a new run."""
    if options.resume is None:
        return None
    path = Path(options.resume)
    ckpt = load_checkpoint(path)
    check_resumable(ckpt)
    arch = ckpt["spec"].get("arch")
    if arch != options.arch:
        raise TLError(f"{path} was trained as {arch}, not {options.arch}; drop --arch or start a new run")
    if int(ckpt["epoch"]) >= options.epochs:
        raise TLError(
            f"{options.resume} has already finished epoch {ckpt['epoch']} of --epochs {options.epochs}; "
            f"pass --epochs N with N > {ckpt['epoch']} to train further"
        )
    return ckpt


def _run_dir(o: TrainOptions, resume: dict | None) -> Path:
    if o.out is not None:
        return Path(o.out)
    if resume is not None:
        return Path(resume["path"]).parent
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def _refuse_run_dir_around_data(run_dir: Path, data: Path) -> None:
    """The run folder's pictures and checkpoints inside DATA would become images of a class (or a class
    of their own) in the next run; DATA inside the run folder would be mixed with its files."""
    run, root = run_dir.expanduser().resolve(), data.resolve()
    if run == root or root in run.parents:
        raise TLError(f"--out {escaped(run_dir)} is inside the data folder {escaped(data)}: the run's pictures "
                      f"would become training images; pass an --out outside {escaped(data)}")
    if run in root.parents:
        raise TLError(f"the data folder {escaped(data)} is inside the run folder {escaped(run_dir)}; "
                      "pass an --out that does not hold the data")


def _prepare_data(o: TrainOptions, resume: dict | None) -> tuple[RunData, ModelSpec]:
    """Read the data and make the spec, before the run folder is touched."""
    data = prepare_data(o.data, val_split=o.val_split, seed=o.seed, skip_bad=o.skip_bad)
    spec = ModelSpec.create(
        arch=o.arch, classes=data.classes, image_size=o.image_size,
        resize_mode=o.resize_mode, resize_size=o.resize_size, interpolation=o.interpolation,
    )
    if resume is not None and list(resume["spec"]["classes"]) != data.classes:
        raise TLError(
            f"{o.resume} was trained on classes {', '.join(resume['spec']['classes'])}, "
            f"but {o.data} has {', '.join(data.classes)}; resume on the same data"
        )
    return data, spec


@contextlib.contextmanager
def _own_run_dir(o: TrainOptions, resume: dict | None, spec: ModelSpec, ranks: Ranks, reporter: Reporter):
    """Rank 0 claims the run folder under its lock for the whole run (the lock removes the temporaries a
    killed run left, such as a half-written last.pt, and says so); the others get its path, or its error."""
    if not ranks.is_main:
        yield Path(share_from_main(ranks, None))
        return
    with contextlib.ExitStack() as stack:
        try:
            run_dir = ensure_output_dir(_run_dir(o, resume), option="--out")
            run_dir = stack.enter_context(output_lock(run_dir, "tl train", reporter=reporter))
            _claim_run_dir(o, resume, run_dir, spec)
        except TLError as e:
            share_from_main(ranks, e)
            raise
        share_from_main(ranks, str(run_dir))
        yield run_dir


def _claim_run_dir(o: TrainOptions, resume: dict | None, run_dir: Path, spec: ModelSpec) -> None:
    """Under the folder's lock: never start a run over another run."""
    if resume is None:
        _refuse_earlier_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec.save(run_dir / "spec.json")


def _refuse_earlier_run(run_dir: Path) -> None:
    """A new run never writes over another; the message offers --resume only when last.pt is there."""
    held = [name for name in ("best.pt", "last.pt") if (run_dir / name).exists()]
    if not held:
        return
    if "last.pt" in held:
        raise TLError(f"{run_dir} already holds a run; pass another --out, or --resume {run_dir / 'last.pt'}")
    raise TLError(f"{run_dir} already holds {' and '.join(held)} from an earlier run but no last.pt to resume from; "
                  "pass another --out, or remove that folder")


def _setup(o: TrainOptions, resume: dict | None, data: RunData, spec: ModelSpec, run_dir: Path,
           device: torch.device, ranks: Ranks) -> _Run:
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seed_everything(o.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = build_model(o.arch, len(data.classes), weights="none" if resume is not None else o.weights)
    set_dropout(model, o.arch, o.dropout)
    n_trainable = freeze(model, o.arch, o.freeze)
    memory_format = torch.channels_last if (device.type == "cuda" and o.channels_last) else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    optimizer = _make_optimizer(o, [p for p in model.parameters() if p.requires_grad])
    dtype = amp_dtype(device, o.amp)
    train_loader, val_loader, loader_gen = _make_loaders(o, data, spec, device, ranks)
    return _Run(
        options=o, data=data, spec=spec, device=device, ranks=ranks, run_dir=run_dir, model=model,
        net=wrap_model(model, ranks, device, sync_bn=o.sync_bn), n_trainable=n_trainable,
        optimizer=optimizer, scheduler=_make_scheduler(o, optimizer),
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        dtype=dtype, memory_format=memory_format, train_loader=train_loader, val_loader=val_loader,
        loader_gen=loader_gen, criterion=nn.CrossEntropyLoss(label_smoothing=o.label_smoothing),
    )


def _make_optimizer(o: TrainOptions, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)


def _make_scheduler(o: TrainOptions, optimizer: torch.optim.Optimizer):
    if o.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=o.step_size, gamma=o.gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=o.epochs)


def _worker_start(workers: int) -> str | None:
    """How DataLoader workers start: forked (the default, fast) unless OpenVINO already runs in this
    process. Forking after OpenVINO's CPU plugin started its threads kills the process with SIGSEGV
    (as when a bench or an OpenVINO Classifier runs before fit in one Python process); a forkserver
    starts each worker from a clean process instead, at the cost of importing torch there."""
    import sys

    return "forkserver" if workers and "openvino" in sys.modules else None


def _make_loaders(o: TrainOptions, data: RunData, spec: ModelSpec, device: torch.device,
                  ranks: Ranks) -> tuple[DataLoader, DataLoader, torch.Generator]:
    """Train and val loaders of this rank's share; the generator seeds the workers' augmentation and
    is reseeded every epoch, the sampler's order by set_epoch."""
    loader_gen = torch.Generator()
    pin = device.type == "cuda"
    batch = per_rank_batch(o.batch_size, ranks.world_size)
    train_ds = ImageFileDataset(data.train_files, data.train_labels, train_transform(spec, augment=o.augment))
    val_ds = ImageFileDataset(data.val_files, data.val_labels, eval_transform(spec))
    sampler = train_sampler(train_ds, ranks)
    # BatchNorm cannot train on a batch of one; drop a lone last sample.
    drop_last = len(sampler) > batch and len(sampler) % batch == 1
    train_loader = DataLoader(train_ds, batch_size=batch, sampler=sampler, generator=loader_gen,
                              num_workers=o.workers, pin_memory=pin, drop_last=drop_last,
                              multiprocessing_context=_worker_start(o.workers))
    val_loader = DataLoader(val_shard(val_ds, ranks), batch_size=batch, shuffle=False, num_workers=o.workers,
                            pin_memory=pin, multiprocessing_context=_worker_start(o.workers))
    return train_loader, val_loader, loader_gen


def restore_scaler(scaler, state: dict) -> None:
    """Resume across AMP dtypes: a bf16 (or CPU) run saves a disabled GradScaler's empty state.

    An fp16 run resumed where bf16 is used (or AMP is off) drops the saved loss scale; a
    bf16 run resumed on an fp16 GPU starts a fresh scaler, which finds its scale within a
    few steps. ``GradScaler.load_state_dict({})`` would raise on an enabled scaler.
    """
    if state and scaler.is_enabled():
        scaler.load_state_dict(state)


def _restore(run: _Run, ckpt: dict[str, Any]) -> None:
    """Weights, optimizer, scheduler, loss scale, RNG and the bookkeeping of a last.pt; state of the
    right types (checked when loaded) that still does not fit this run is one error naming the file."""
    try:
        _restore_state(run, ckpt)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise TLError(f"{ckpt['path']} cannot be resumed: its saved training state does not fit this run "
                      f"({type(e).__name__}: {why}); start a new run or resume from another last.pt") from e


def _restore_state(run: _Run, ckpt: dict[str, Any]) -> None:
    run.model.load_state_dict(ckpt["state_dict"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    restore_scaler(run.scaler, ckpt.get("scaler") or {})
    set_rng_state(ckpt.get("rng") or {})
    run.epoch = int(ckpt["epoch"])
    run.best_acc = float(ckpt["best_metric"]["val_acc"])
    run.best_loss = float(ckpt["best_metric"]["val_loss"])
    run.best_epoch = int(ckpt.get("best_epoch", 0))
    run.best_confusion = list(ckpt.get("best_confusion") or [])
    run.acc_epoch = int(ckpt.get("acc_epoch", run.best_epoch))
    run.history = [h for h in ckpt.get("history") or [] if h["epoch"] <= run.epoch]


def _banner(run: _Run, *, resumed: bool) -> str:
    o, data, world = run.options, run.data, run.ranks.world_size
    return (
        f"tl train {o.arch} (weights: {'resumed' if resumed else o.weights}, "
        f"{run.n_trainable:,} trainable params) on {run.device}"
        + (f" x {world} processes (DDP)" if world > 1 else "")
        + f" | {len(data.classes)} classes, {len(data.train_files)} train / {len(data.val_files)} val images"
        + (f", {len(data.skipped)} bad skipped" if data.skipped else "")
        + f" | {o.image_size}px, batch {o.batch_size}" + (f" ({o.batch_size // world} per process)" if world > 1 else "")
        + f", {o.optimizer} lr {o.lr}"
        + (f" | AMP {str(run.dtype).removeprefix('torch.')}" if run.dtype else "")
    )


# -- epochs -------------------------------------------------------------------------------


def _run_epochs(run: _Run, reporter: Reporter) -> tuple[bool, bool]:
    """Epochs until --epochs, --patience or Ctrl-C; returns (stopped_early, interrupted)."""
    o = run.options
    try:
        with _cudnn_autotune(run.device), _worker_errors_as_one_line(), sigterm_raises(run.ranks), \
                interrupts_caught():
            for epoch in range(run.epoch + 1, o.epochs + 1):
                _one_epoch(run, epoch, reporter)
                raise_if_interrupted()
                if o.patience and epoch - run.acc_epoch >= o.patience:
                    reporter.info(f"early stop: val accuracy has not improved for {o.patience} epochs "
                                  f"(last improvement: epoch {run.acc_epoch})")
                    return True, False
    except KeyboardInterrupt:
        path = _save_interrupted(run)
        if path is not None:
            reporter.info(f"\ninterrupted: saved {path} (after epoch {run.epoch}); continue with "
                          f"tl train --resume {path}")
        return False, True
    except Exception as e:
        if not (run.ranks.distributed and is_peer_failure(e)):
            raise
        path = _save_interrupted(run)
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise TLError(f"stopped in epoch {run.epoch + 1}: another process of this run ended ({why}); "
                      f"saved {path}; continue with tl train --resume {path} (any number of processes)") from None
    return False, False


def _save_interrupted(run: _Run) -> Path | None:
    """Rank 0 saves where the run stands (weights of the last finished step); None on other ranks."""
    if not run.ranks.is_main:
        return None
    if not all(torch.isfinite(t).all() for t in run.model.state_dict().values() if t.is_floating_point()):
        # Stopped mid-epoch after the loss diverged: the last good epoch's checkpoints stay as they are.
        _require_finite_losses(run, run.epoch + 1, weights=math.nan)
    with signals_held(run.ranks), interrupts_caught(), interrupts_held():  # a second Ctrl-C waits
        path = run.save_last(interrupted=True)
        _write_metrics(run.run_dir / "metrics.jsonl", run.history)
    return path


def _one_epoch(run: _Run, epoch: int, reporter: Reporter) -> None:
    """Train, validate, step the scheduler, record; one line to the reporter."""
    o = run.options
    seed_epoch(o.seed, epoch, run.loader_gen, rank=run.ranks.rank)
    run.train_loader.sampler.set_epoch(epoch_seed(o.seed, epoch))  # the same order on every rank
    reduce = sum_across_ranks if run.ranks.distributed else None
    t0 = time.perf_counter()
    batch_png = run.run_dir / "batch.png"
    write_png = run.ranks.is_main and not batch_png.exists()
    capture = ((lambda x, y: _draw(run, reporter, batch_png, lambda: _write_batch_png(x, y, run.spec, batch_png)))
               if write_png else None)
    with reporter.task(f"epoch {epoch}/{o.epochs}", total=len(run.train_loader)) as task:
        train_loss, train_acc = train_one_epoch(
            run.net, run.criterion, run.optimizer, run.scaler, run.train_loader, run.device,
            dtype=run.dtype, memory_format=run.memory_format, task=task, on_first_batch=capture, reduce=reduce,
        )
    with reporter.task("  validate", total=len(run.val_loader)) as task:
        val_loss, val_acc, confusion = evaluate(
            run.model, run.val_loader, run.device, dtype=run.dtype, memory_format=run.memory_format,
            num_classes=len(run.data.classes), task=task, reduce=reduce,
        )
    _require_finite_losses(run, epoch, train_loss=train_loss, val_loss=val_loss)
    lr = run.optimizer.param_groups[0]["lr"]
    run.scheduler.step()
    row = {
        "epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
        "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "seconds": round(time.perf_counter() - t0, 3),
    }
    with interrupts_held():  # best.pt, last.pt and the metrics of this epoch are written whole
        _record_epoch(run, row, confusion, reporter)
    reporter.info(
        f"epoch {epoch}/{o.epochs}  train loss {train_loss:.4f} acc {train_acc:.3f}  "
        f"val loss {val_loss:.4f} acc {val_acc:.3f}  lr {lr:.2e}  {row['seconds']:.1f}s"
        + ("  best" if row["best"] else "")
    )


def _require_finite_losses(run: _Run, epoch: int, **losses: float) -> None:
    """A loss that is NaN or infinite means the weights are too: stop before they are saved, keeping the
    checkpoints of the last good epoch. The losses are summed over the ranks, so every rank stops here alike."""
    bad = {name: value for name, value in losses.items() if not math.isfinite(value)}
    if not bad:
        return
    what = ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in bad.items())
    kept = (f"{run.run_dir / 'last.pt'} (epoch {run.epoch}) and best.pt (epoch {run.best_epoch}) are kept"
            if run.epoch else "no checkpoint was written")
    raise TLError(f"training diverged in epoch {epoch} ({what}); {kept}; start again with a lower --lr "
                  "(or a smaller --weight-decay, --momentum or --gamma)")


def _record_epoch(run: _Run, row: dict, confusion: np.ndarray, reporter: Reporter) -> None:
    """Best so far (val accuracy, ties by lower loss) -> best.pt; always last.pt, metrics, curves."""
    epoch, val_acc, val_loss = row["epoch"], row["val_acc"], row["val_loss"]
    run.epoch = epoch
    if val_acc > run.best_acc:
        run.acc_epoch = epoch
    row["best"] = improved = val_acc > run.best_acc or (val_acc == run.best_acc and val_loss < run.best_loss)
    run.history.append(row)
    if improved:
        run.best_acc, run.best_loss, run.best_epoch = val_acc, val_loss, epoch
        run.best_confusion = confusion.tolist()
    if not run.ranks.is_main:  # the same bookkeeping on every rank (metrics are all-reduced); rank 0 writes
        return
    if improved:
        save_checkpoint(run.run_dir / "best.pt", run.payload(metrics=row))
    run.save_last()
    _write_metrics(run.run_dir / "metrics.jsonl", run.history)
    from tl.train.plots import plot_history

    history_png = run.run_dir / "history.png"
    _draw(run, reporter, history_png, lambda: plot_history(run.history, history_png))


def _draw(run: _Run, reporter: Reporter, path: Path, draw) -> None:
    """Pictures are a convenience beside the checkpoints: one that cannot be drawn (memory, a full disk,
    a font) is a warning, said once per picture, and never the end of a run."""
    try:
        draw()
    except Exception as e:  # noqa: BLE001 - whatever matplotlib raises; Ctrl-C and a stopping rank still stop
        if is_peer_failure(e):
            raise
        if path.name not in run.failed_pictures:
            run.failed_pictures.add(path.name)
            why = str(e).splitlines()[0][:200] if str(e) else ""
            reporter.warning(f"could not draw {escaped(path)} ({type(e).__name__}{': ' if why else ''}"
                             f"{escaped(why)}); the run's checkpoints are not affected")


@contextlib.contextmanager
def _cudnn_autotune(device: torch.device):
    """Fixed input size: let cuDNN pick the fastest kernels; restore the global flag after."""
    old = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


@contextlib.contextmanager
def _worker_errors_as_one_line():
    """A file that broke after the up-front check raises TLError inside a DataLoader worker;
    torch re-raises it with the worker's traceback in the message: keep one line."""
    try:
        yield
    except TLError as e:
        text = str(e)
        if "Original Traceback" in text and "TLError: " in text:
            raise TLError(text.rsplit("TLError: ", 1)[1].strip()) from None
        raise


def _write_batch_png(x: torch.Tensor, y: torch.Tensor, spec: ModelSpec, path: Path) -> None:
    from tl.train.plots import plot_batch

    images = denormalize(x[:32].float(), spec).permute(0, 2, 3, 1).numpy()
    plot_batch(images, [spec.classes[int(i)] for i in y[:32]], path)


def _write_metrics(path: Path, history: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in history))


# -- finish -------------------------------------------------------------------------------


def _finish(run: _Run, reporter: Reporter, *, stopped_early: bool, interrupted: bool) -> TrainResult:
    """The best epoch's confusion matrix picture and per-class figures, as a result."""
    classes = run.data.classes
    per_class: list[dict] = []
    if run.best_confusion and run.ranks.is_main:
        from tl.train.plots import plot_confusion

        confusion = np.asarray(run.best_confusion)
        confusion_png = run.run_dir / "confusion.png"
        _draw(run, reporter, confusion_png,
              lambda: plot_confusion(confusion, classes, confusion_png, title=f"val, epoch {run.best_epoch}"))
        per_class = per_class_metrics(confusion, classes)
    return TrainResult(
        run_dir=run.run_dir, best_path=run.run_dir / "best.pt", last_path=run.run_dir / "last.pt", spec=run.spec,
        device=str(run.device), epochs_run=run.epoch, best_epoch=run.best_epoch,
        best_val_acc=max(run.best_acc, 0.0), best_val_loss=run.best_loss, history=run.history,
        per_class=per_class, stopped_early=stopped_early, interrupted=interrupted,
        skipped=[str(p) for p, _ in run.data.skipped],
    )
