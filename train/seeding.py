"""Seeds and RNG state: every epoch is seeded from (seed, epoch), so a resumed run continues
exactly as an uninterrupted one would on CPU."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch)) % (2**63 - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_epoch(seed: int, epoch: int, loader_gen: torch.Generator, *, rank: int = 0) -> None:
    """Python, numpy, torch and the DataLoader's workers all start the epoch from (seed, epoch);
    DDP ranks > 0 from a stream of their own, so their augmentation and dropout differ from rank 0's."""
    s = epoch_seed(seed, epoch)
    if rank:
        s = epoch_seed(s, rank)
    seed_everything(s)
    loader_gen.manual_seed(s)


def rng_state() -> dict[str, Any]:
    """Plain values and tensors only, so the checkpoint loads with weights_only=True."""
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
