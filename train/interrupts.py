"""Ctrl-C during training: never lost, and never in the middle of a checkpoint write.

Python raises KeyboardInterrupt wherever the main thread happens to be when the signal is
checked. Two places make that wrong for a training loop:

- a finalizer or weakref callback (the garbage collector runs them at any allocation): the
  exception is printed as "Exception ignored in ..." and dropped, and training goes on as if
  Ctrl-C had never been pressed;
- ``torch.save``: cut short, it often raises RuntimeError ("enforce fail at
  inline_container.cc ... unexpected pos") instead of KeyboardInterrupt, a traceback and
  exit 1; or its zip writer is left unfinished, and when the writer is freed later it writes
  the end of the archive through the closed file, and that C++ error aborts the process.

``interrupts_caught`` installs a SIGINT handler that remembers the signal as well as raising it;
the loops call ``raise_if_interrupted`` once per batch, so a dropped KeyboardInterrupt is raised
again at the next step. Inside ``interrupts_held`` the handler only remembers, so the block (a
checkpoint, the metrics) completes and the interrupt is raised at the next check.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_pending = False
_held = 0


def _on_sigint(signum, frame) -> None:
    global _pending
    _pending = True
    if not _held:
        raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_caught() -> Iterator[None]:
    """Ctrl-C as KeyboardInterrupt that is also remembered. Only where Python's own handler is
    installed (the main thread of a process whose SIGINT is neither ignored nor taken)."""
    global _pending
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    _pending = False
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _pending = False


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """A Ctrl-C inside the block is remembered, not raised: raise_if_interrupted raises it after."""
    global _held
    _held += 1
    try:
        yield
    finally:
        _held -= 1


def raise_if_interrupted() -> None:
    """KeyboardInterrupt if Ctrl-C came and was not raised yet (held, or dropped by a finalizer)."""
    global _pending
    if _pending and not _held:
        _pending = False
        raise KeyboardInterrupt
