"""Dynamic batching: gather concurrent requests, run them as one batch off the event loop, split back.

One Batcher per model. ``submit`` puts a request's rows on a bounded queue (full -> QueueFull,
which the server answers 503); one loop takes the first waiting request, gathers more until
``max_batch`` rows or ``max_delay`` has passed, runs the batch in the model's worker thread and
hands each request its rows. ``close`` stops taking requests and answers everything queued first.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


class QueueFull(Exception):
    """The model's queue holds ``queue`` requests already."""


@dataclass
class _Item:
    rows: np.ndarray
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(self, run: Callable[[np.ndarray], np.ndarray], *, max_batch: int, max_delay_s: float,
                 queue: int, on_batch: Callable[[int, list[float]], None] | None = None):
        self.run, self.max_batch, self.max_delay_s = run, max(1, int(max_batch)), max(0.0, float(max_delay_s))
        self.on_batch = on_batch or (lambda size, waits: None)
        self.queue: asyncio.Queue[_Item | None] = asyncio.Queue(maxsize=max(1, int(queue)))
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tl-batch")
        self.task: asyncio.Task | None = None
        self.held: _Item | None = None  # did not fit the last batch: it leads the next one
        self.waiting = 0  # requests submitted and not yet answered (queued, gathering or running)
        self.arrived = asyncio.Event()  # set on every put: wakes a gathering batch
        self.closing = False

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, rows: np.ndarray) -> np.ndarray:
        """The model's output rows for ``rows``, computed in some batch."""
        if self.closing:
            raise QueueFull("the server is shutting down")
        item = _Item(rows, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(item)
            self.arrived.set()
        except asyncio.QueueFull:
            raise QueueFull(f"the queue is full ({self.queue.maxsize} requests waiting); retry later") from None
        self.waiting += 1
        try:
            return await item.future
        finally:
            self.waiting -= 1

    async def close(self) -> None:
        """Answer what is queued, then stop the loop and the worker thread."""
        self.closing = True
        if self.task is not None:
            await self.queue.put(None)
            self.arrived.set()
            await self.task
        self.worker.shutdown(wait=True)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first, self.held = self.held or await self.queue.get(), None
            if first is None:
                return
            items, stop = await self._gather(first)
            await self._run(loop, items)
            if stop:
                return

    async def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        """``first`` and whatever joins it before the batch is full or the delay is over."""
        items, rows = [first], len(first.rows)
        deadline = time.perf_counter() + self.max_delay_s
        while rows < self.max_batch:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - time.perf_counter()
                if left <= 0 or self.closing:
                    break
                # Wait on an event, not on queue.get: a timed-out wait_for(queue.get()) can drop the
                # item it was handed (Python 3.10/3.11), and a dropped request would never be answered.
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), left)
                except asyncio.TimeoutError:
                    pass
                continue
            if item is None:
                return items, True
            if rows + len(item.rows) > self.max_batch:  # batches stay within max_batch
                self.held = item
                break
            items.append(item)
            rows += len(item.rows)
        return items, False

    async def _run(self, loop, items: list[_Item]) -> None:
        start = time.perf_counter()
        waits = [start - it.queued_at for it in items]
        try:
            out = await loop.run_in_executor(self.worker, self.run, np.concatenate([it.rows for it in items]))
        except Exception as e:  # noqa: BLE001 - every waiting request gets the model's error
            for it in items:
                if not it.future.done():
                    it.future.set_exception(e)
            return
        self.on_batch(sum(len(it.rows) for it in items), waits)
        offset = 0
        for it in items:
            if not it.future.done():  # a client that went away leaves a cancelled future
                it.future.set_result(out[offset:offset + len(it.rows)])
            offset += len(it.rows)
