"""DDP: one `tl train` process per device, joined through the RANK / LOCAL_RANK / WORLD_SIZE
that torchrun (or `tl train --nproc-per-node N`, which runs torch's same elastic launcher)
gives each worker.

`fit` runs one rank; this module holds what a rank needs beyond a single process: its place
in the group and its device, the wrapped model, the sampler and the validation shard, sums
across ranks, and what happens when another rank stops. Nothing here runs for one process.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, Subset

from tl.runtime.errors import TLError, debug_enabled
from tl.train.epoch import torch_device
from tl.train.options import parse_device

# How long a rank waits in a collective for the others. It must outlast the longest stretch one
# rank works alone (rank 0 writing checkpoints and plots between epochs). A dead rank is noticed
# sooner: its sockets close and the launcher stops the others; this is the backstop for a hung one.
GROUP_TIMEOUT = datetime.timedelta(minutes=10)
# Set by `--nproc-per-node` for its workers: rank 0 touches this file when it printed the error
# line itself, so the launcher adds none (one `error:` line per failure).
REPORTED_ENV = "TL_LAUNCH_REPORTED"
# Set by `--nproc-per-node` for its workers: the launcher's pid, which each rank watches (stopped_with_launcher).
LAUNCHER_ENV = "TL_LAUNCHER_PID"
LAUNCHER_POLL_S = 1.0


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class RankStopped(Exception):
    """SIGTERM from the launcher: another rank ended, or the job is being stopped."""


def ranks_from_env(env: Mapping[str, str] = os.environ) -> Ranks:
    """RANK / LOCAL_RANK / WORLD_SIZE as torchrun sets them; one process when they are absent."""
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise TLError(f"RANK, LOCAL_RANK and WORLD_SIZE must be integers ({e}); start ranks with torchrun") from e
    if not 0 <= rank < world:
        raise TLError(f"RANK {rank} is outside WORLD_SIZE {world}; start ranks with torchrun")
    return Ranks(rank=rank, local_rank=local, world_size=world)


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """--batch-size is the global batch (as in Ultralytics); every rank takes an equal share."""
    if batch_size % world_size:
        raise TLError(f"--batch-size {batch_size} is the global batch and must split evenly over {world_size} "
                      f"processes; pass a multiple of {world_size}")
    return batch_size // world_size


def rank_device(option: str, ranks: Ranks, *, sync_bn: bool = False) -> torch.device:
    """One process: --device as given. DDP: the CPU (gloo), or cuda:LOCAL_RANK (nccl, one GPU per local rank)."""
    if not ranks.distributed:
        return torch_device(option)
    kind, index = parse_device(option)
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        if sync_bn:
            raise TLError("--sync-bn needs CUDA ranks: torch's SyncBatchNorm runs on GPUs only; drop --sync-bn on CPU")
        return torch.device("cpu")
    if index is not None:
        raise TLError(f"--device {option}: with several processes each rank uses cuda:LOCAL_RANK; "
                      "pass --device cuda (or auto), and CUDA_VISIBLE_DEVICES to choose the GPUs")
    torch_device("cuda")  # the error when there is no CUDA
    count = torch.cuda.device_count()
    if ranks.local_rank >= count:
        raise TLError(f"local rank {ranks.local_rank} has no GPU of its own: this machine has {count}; "
                      f"start at most {count} processes per machine")
    return torch.device("cuda", ranks.local_rank)


@contextlib.contextmanager
def process_group(ranks: Ranks, device: torch.device):
    """Join the group for the run and leave it after (so a later run in this process starts clean)."""
    if not ranks.distributed:
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend, timeout=GROUP_TIMEOUT, device_id=device if device.type == "cuda" else None)
    except (RuntimeError, ValueError) as e:
        raise TLError(f"rank {ranks.rank} of {ranks.world_size} could not join the {backend} process group ({e}); "
                      "start the ranks with torchrun or tl train --nproc-per-node N") from e
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def stopped_with_launcher(ranks: Ranks):
    """torch's launcher starts every rank in a session of its own and stops them when it fails, but a
    launcher that is killed (SIGKILL, the OOM killer) stops nothing. So each rank of `--nproc-per-node`
    watches its launcher and, once it is gone, stops itself as the launcher would have: SIGTERM, on
    which rank 0 saves last.pt."""
    launcher = os.environ.get(LAUNCHER_ENV)
    if not ranks.distributed or not launcher or not launcher.isdigit():
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.wait(LAUNCHER_POLL_S):
            if os.getppid() != int(launcher):  # re-parented: the launcher has ended
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="tl-launcher-watch", daemon=True).start()
    try:
        yield
    finally:
        done.set()


def share_from_main(ranks: Ranks, value: Any) -> Any:
    """Rank 0's ``value`` (or, if it is a TLError, rank 0's error) on every rank."""
    if not ranks.distributed:
        return value
    box = [("error", str(value)) if isinstance(value, TLError) else ("ok", value)]
    dist.broadcast_object_list(box, src=0)
    kind, shared = box[0]
    if kind == "error":
        raise TLError(shared)
    return shared


def wrap_model(model: nn.Module, ranks: Ranks, device: torch.device, *, sync_bn: bool) -> nn.Module:
    """DDP around the model (averaging gradients in backward); the model itself stays what checkpoints hold."""
    if not ranks.distributed:
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # the same parameters, in new BN modules
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def train_sampler(dataset: Dataset, ranks: Ranks) -> DistributedSampler:
    """The epoch's order: every rank draws the same permutation and takes indices[rank::world_size].

    Seeded through ``set_epoch(epoch_seed(seed, epoch))`` (torch seeds it with seed 0 + that), and
    used with one process as well, so 1 and W processes shuffle alike: with a per-rank batch of
    b = B / W, global step k of rank r holds positions r + W*j, j in [k*b, (k+1)*b), which over
    all ranks are exactly positions [k*B, (k+1)*B) of the permutation: the batch one process
    draws at step k. DDP averages the ranks' mean gradients, which is that batch's mean gradient.
    Unless the set divides by W, the sampler pads it by repeating its first indices (training only).
    """
    return DistributedSampler(dataset, num_replicas=ranks.world_size, rank=ranks.rank, shuffle=True, seed=0)


def val_shard(dataset: Dataset, ranks: Ranks) -> Dataset:
    """Every W-th image from the rank on. Not DistributedSampler: it pads with repeated images,
    which would count twice in the all-reduced confusion matrix."""
    if not ranks.distributed:
        return dataset
    return Subset(dataset, range(ranks.rank, len(dataset), ranks.world_size))


def sum_across_ranks(t: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(t)
    return t


# gloo raises a plain RuntimeError when a peer's socket closes ("Connection reset by peer", from
# gloo/transport/tcp/pair.cc), NCCL a DistBackendError; these name the backend or the connection.
_PEER_SIGNS = ("gloo", "nccl", "connection reset", "connection closed", "broken pipe", "timed out")


def is_peer_failure(e: BaseException) -> bool:
    """What a rank sees when another one ends mid-run: the launcher's SIGTERM, or a collective that failed."""
    if isinstance(e, (RankStopped, dist.DistError)):
        return True
    return isinstance(e, RuntimeError) and any(sign in str(e).lower() for sign in _PEER_SIGNS)


@contextlib.contextmanager
def sigterm_raises(ranks: Ranks):
    """The launcher ends the other ranks with SIGTERM when one fails: make it an exception rank 0
    can save last.pt on, instead of dying silently."""
    if not ranks.distributed:
        yield
        return

    def stop(signum, frame):
        raise RankStopped("stopped by the launcher")

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def signals_held(ranks: Ranks):
    """While an interrupted rank writes last.pt, the launcher's repeated SIGINT/SIGTERM must not cut it off."""
    if not ranks.distributed:
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def mark_reported() -> None:
    """Rank 0 printed the run's error line: the launcher (if it is ours) stays quiet."""
    path = os.environ.get(REPORTED_ENV)
    if path:
        Path(path).touch()


def max_local_ranks(device: str) -> tuple[int, str]:
    """(how many ranks this machine runs, what bounds them): one per GPU for CUDA ranks (each takes
    cuda:LOCAL_RANK), one per CPU core this process may use for CPU ranks (more only share the cores,
    and every rank is a whole torch process). torchrun is there for anything else."""
    kind, _ = parse_device(device)
    if kind == "cuda" or (kind == "auto" and torch.cuda.is_available()):
        count = torch.cuda.device_count()
        return count, f"the {count} GPU(s) this machine has"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores, f"the {cores} CPU core(s) this process may use"


def check_nproc(nproc_per_node: int, device: str) -> None:
    if nproc_per_node < 1:
        raise TLError(f"--nproc-per-node must be at least 1 (got {nproc_per_node})")
    most, why = max_local_ranks(device)
    if nproc_per_node > most:
        raise TLError(f"--nproc-per-node {nproc_per_node} is more than {why}; pass at most {most} "
                      "(torchrun starts any number of processes if you mean it)")


def launch(argv: list[str], nproc_per_node: int, *, batch_size: int, device: str = "auto") -> int:
    """`tl train ... --nproc-per-node N`: N local ranks of `python -m tl ARGV` through torch's elastic
    launcher (what `torchrun --standalone` runs); returns the exit code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    check_nproc(nproc_per_node, device)
    per_rank_batch(batch_size, nproc_per_node)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc_per_node, run_id=f"tl-{uuid.uuid4().hex}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    with tempfile.TemporaryDirectory(prefix="tl-launch-") as tmp, _launcher_env(nproc_per_node, Path(tmp) / "reported"):
        try:
            elastic_launch(config, sys.executable)("-m", "tl", *argv)
        except ChildFailedError as e:
            return _failure_code(e, reported=(Path(tmp) / "reported").exists())
        except SignalException as e:
            if (Path(tmp) / "reported").exists():
                return 130  # rank 0 said where it saved last.pt
            raise KeyboardInterrupt from e
    return 0


@contextlib.contextmanager
def _launcher_env(nproc: int, reported: Path):
    """What the workers inherit: the report file, and CPU threads shared out (torchrun sets 1);
    the elastic agent's own log lines only with TL_DEBUG=1."""
    env = {REPORTED_ENV: str(reported), LAUNCHER_ENV: str(os.getpid())}
    if "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    saved = {k: os.environ.get(k) for k in env}
    loggers = [logging.getLogger(name) for name in logging.root.manager.loggerDict
               if name.startswith("torch.distributed")]
    levels = [logger.level for logger in loggers]
    if not debug_enabled():
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
    os.environ.update(env)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _failure_code(e, *, reported: bool) -> int:
    """Rank 0 has said why (its error line, or "interrupted: saved ..."): its exit code. Else say which rank ended how."""
    rank0 = e.failures.get(0)
    if reported or (rank0 is not None and rank0.exitcode in (1, 130)):
        return rank0.exitcode if rank0 is not None and rank0.exitcode > 0 else 1
    rank, failure = e.get_first_failure()
    how = f"was killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exited with code {failure.exitcode}"
    raise TLError(f"rank {rank} (pid {failure.pid}) {how}, so every rank was stopped; a run folder's last.pt "
                  "(written after every epoch) continues with tl train --resume RUN/last.pt")
