"""Dynamic batching: gather concurrent requests, run them as one batch in the model's thread, split back.

One Batcher per model. ``submit`` (on the event loop) puts a request's rows on a bounded queue
(full -> QueueFull, which the server answers 503). The model's own thread takes the first
waiting request, gathers more until ``max_batch`` rows or ``max_delay`` has passed, runs the
batch and hands each request its rows back on the event loop. The next batch is gathered by
that thread as soon as the last one ends, so the model never waits for the event loop, which
is busy with the transport under load. ``close`` stops taking requests and answers everything
queued first.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tl.runtime.serve.errors import QueueFull, Unavailable


@dataclass
class _Item:
    rows: np.ndarray
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    """``on_batch(size, waits, compute_s)`` hears of each batch run: its rows, how long each request
    waited, and how long the model took."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], *, max_batch: int, max_delay_s: float,
                 queue_limit: int, on_batch: Callable[[int, list[float], float], None] | None = None):
        self.run, self.max_batch, self.max_delay_s = run, max(1, int(max_batch)), max(0.0, float(max_delay_s))
        self.on_batch = on_batch or (lambda size, waits, compute_s: None)
        self.queue_limit = max(1, int(queue_limit))
        self.queue: deque[_Item] = deque()  # guarded by self.cond
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waiting = 0  # requests submitted and not yet answered (queued, gathering or running)
        self.closing = False

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (not those in the running one)."""
        return len(self.queue)

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread = threading.Thread(target=self._work, name="tl-batch", daemon=True)
        self.thread.start()

    async def submit(self, rows: np.ndarray) -> np.ndarray:
        """The model's output rows for ``rows``, computed in some batch."""
        item = _Item(rows, asyncio.get_running_loop().create_future())
        with self.cond:
            if self.closing:
                raise Unavailable("the server is shutting down")
            if len(self.queue) >= self.queue_limit:
                raise QueueFull(f"the queue is full ({self.queue_limit} requests waiting); retry later")
            self.queue.append(item)
            self.cond.notify()
        self.waiting += 1
        try:
            return await item.future
        finally:
            self.waiting -= 1

    async def close(self) -> None:
        """Answer what is queued, then stop the model's thread."""
        with self.cond:
            self.closing = True
            self.cond.notify()
        if self.thread is not None:
            await asyncio.to_thread(self.thread.join)

    def _work(self) -> None:
        while (items := self._gather()) is not None:
            self._run(items)

    def _gather(self) -> list[_Item] | None:
        """The next batch: the first waiting request and whatever joins it before the batch is full
        or the delay is over; None once closing and nothing is left."""
        with self.cond:
            while not self.queue:
                if self.closing:
                    return None
                self.cond.wait()
            first = self.queue.popleft()
            items, rows = [first], len(first.rows)
            deadline = time.perf_counter() + self.max_delay_s
            while rows < self.max_batch:
                if self.queue:
                    if rows + len(self.queue[0].rows) > self.max_batch:  # batches stay within max_batch
                        break
                    item = self.queue.popleft()
                    items.append(item)
                    rows += len(item.rows)
                    continue
                left = deadline - time.perf_counter()
                if left <= 0 or self.closing:
                    break
                self.cond.wait(left)
            return items

    def _run(self, items: list[_Item]) -> None:
        start = time.perf_counter()
        waits = [start - it.queued_at for it in items]
        try:
            out = self.run(np.concatenate([it.rows for it in items]))
        except Exception as e:  # noqa: BLE001 - every waiting request gets the model's error
            self.loop.call_soon_threadsafe(self._fail, items, e)
            return
        self.loop.call_soon_threadsafe(self._answer, items, out, waits, time.perf_counter() - start)

    def _answer(self, items: list[_Item], out: np.ndarray, waits: list[float], compute_s: float) -> None:
        """On the event loop: each request its rows."""
        self.on_batch(sum(len(it.rows) for it in items), waits, compute_s)
        offset = 0
        for it in items:
            if not it.future.done():  # a client that went away leaves a cancelled future
                it.future.set_result(out[offset:offset + len(it.rows)])
            offset += len(it.rows)

    @staticmethod
    def _fail(items: list[_Item], e: Exception) -> None:
        for it in items:
            if not it.future.done():
                it.future.set_exception(e)
