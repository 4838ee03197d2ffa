"""The one way tl reads a torch file: ``torch.load(weights_only=True)``, and the one message when it refuses.

Below both readers (checkpoints and ``--weights PATH``), so each states only what it expected
and what to give instead.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from tl.runtime.errors import TLError

WEIGHTS_ONLY_NOTE = "tl loads checkpoints with torch.load(weights_only=True), which never runs code from a file"


def load_refusal(e: BaseException) -> str:
    """Why torch.load(weights_only=True) refused a file, in one line and without torch's advice to
    retry with weights_only=False: wrong advice for a file that may be hostile."""
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    if found:
        return f"it holds Python objects ({found.group(1)}), not only tensors and plain values"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return "it is not a file that torch.save wrote, or it is damaged"


def safe_load(path: str | Path, *, refused: str, advice: str) -> Any:
    """``path`` loaded on the CPU with weights_only=True; a refusal is the TLError
    "REFUSED: why. note; ADVICE"."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TLError(f"{refused}: {load_refusal(e)}. {WEIGHTS_ONLY_NOTE}; {advice}") from e
