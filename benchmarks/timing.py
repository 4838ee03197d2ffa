"""The timing core: one place that decides what a latency number means.

Like trtexec: the first call (cold caches, lazy init, compilation) is recorded on its own,
warm-up calls are thrown away, then calls are timed until an iteration count or a time
budget is reached. Each sample is end-to-end (host input -> host output); ``sync`` runs
inside the timed region so asynchronous devices are waited for. Device-resident compute
time, where a backend can measure it, is gathered separately (``cuda_event_timer``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

Clock = Callable[[], float]


@dataclass(frozen=True, kw_only=True)
class TimingOptions:
    """``iters`` wins over ``seconds``; with ``seconds`` at least ``min_iters`` samples are taken."""

    warmup: int = 3
    seconds: float | None = 3.0
    iters: int | None = None
    min_iters: int = 3
    max_iters: int = 100_000

    def __post_init__(self) -> None:
        from tl.runtime.errors import TLError

        if self.warmup < 0:
            raise TLError(f"--warmup must be 0 or more (got {self.warmup})")
        if self.iters is not None and self.iters < 1:
            raise TLError(f"--iters must be at least 1 (got {self.iters})")
        if (self.seconds is not None and not self.seconds > 0) or (self.iters is None and self.seconds is None):
            raise TLError(f"--seconds must be more than 0 (got {self.seconds}); or give --iters N")


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least q% of samples <= it.

    No interpolation, so every reported number is a latency that actually happened.
    """
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100] (got {q})")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[rank - 1])


@dataclass(frozen=True)
class Stats:
    """Summary of latency samples in milliseconds."""

    n: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> "Stats":
        if not samples_ms:
            raise ValueError("no samples")
        return cls(
            n=len(samples_ms),
            mean_ms=float(sum(samples_ms) / len(samples_ms)),
            p50_ms=percentile(samples_ms, 50),
            p90_ms=percentile(samples_ms, 90),
            p99_ms=percentile(samples_ms, 99),
            min_ms=float(min(samples_ms)),
            max_ms=float(max(samples_ms)),
        )


@dataclass(frozen=True)
class Timing:
    """Samples of one benchmark cell; throughput counts images, not calls."""

    batch: int
    first_ms: float
    samples_ms: tuple[float, ...]
    wall_s: float

    @property
    def stats(self) -> Stats:
        return Stats.of(self.samples_ms)

    @property
    def throughput(self) -> float:
        """Images per second at the median latency (host -> host).

        The median, not the mean: one stall from another process on a shared machine
        should not decide a speedup. mean_ms is reported beside it.
        """
        p50 = self.stats.p50_ms
        return self.batch * 1000.0 / p50 if p50 > 0 else float("inf")


def measure(
    fn: Callable[[], Any],
    *,
    batch: int,
    options: TimingOptions,
    sync: Callable[[], None] | None = None,
    clock: Clock = time.perf_counter,
) -> Timing:
    """Time ``fn`` (one inference of ``batch`` images, host to host).

    Order: one first call (its latency kept as ``first_ms``), ``options.warmup`` untimed
    calls, then timed calls until ``options.iters`` calls or, without iters, until
    ``options.seconds`` of timed calls have passed (never fewer than ``min_iters``).
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1 (got {batch})")

    call = _timed_call(fn, sync, clock)
    start = clock()
    first_ms = call()
    for _ in range(options.warmup):
        call()
    samples: list[float] = []
    if options.iters is not None:
        for _ in range(options.iters):
            samples.append(call())
    else:
        budget = float(options.seconds or 0.0)
        t_begin = clock()
        # A call is started only if the budget is not yet spent: overshoot <= one call.
        while len(samples) < options.max_iters:
            if len(samples) >= options.min_iters and clock() - t_begin >= budget:
                break
            samples.append(call())
    return Timing(
        batch=batch,
        first_ms=first_ms,
        samples_ms=tuple(samples),
        wall_s=clock() - start,
    )


# p90/p50 above this marks a cell as disturbed: other processes on a shared machine stretch a
# cell's slow tail before they move its median.
DISTURBED_SPREAD = 1.3


def spread(stats: Stats) -> float:
    """p90 / p50: how far the slow tail of a cell sits from its median."""
    return stats.p90_ms / stats.p50_ms if stats.p50_ms > 0 else float("inf")


def _stop_rounds(options: TimingOptions, rounds: int, timed_ms: float, active: int) -> bool:
    if options.iters is not None:
        return rounds >= options.iters
    if rounds >= options.max_iters:
        return True
    return rounds >= options.min_iters and timed_ms >= float(options.seconds or 0.0) * 1000.0 * active


def measure_rounds(
    fns: Sequence[Callable[[], Any]],
    *,
    batch: int,
    options: TimingOptions,
    syncs: Sequence[Callable[[], None] | None] | None = None,
    clock: Clock = time.perf_counter,
) -> list[Timing | Exception]:
    """Time several runners of one batch size in interleaved rounds: each is timed once per round.

    Background load on a shared machine then falls on every runner alike, so their ratios
    stay honest where back-to-back cells would each see a different moment. Each runner
    gets its first call and warm-up as in ``measure``; ``options.iters`` is the number of
    rounds, else rounds run until ``options.seconds`` of timed calls per runner. In a round
    each runner makes one untimed call before its timed one: ONNX Runtime, OpenMP (torch)
    and TBB (OpenVINO) spin their threads after a call, and the untimed call absorbs the
    previous runner's spinning, so the timed call sees only its own runtime, as in a server.
    The order rotates every round. A runner that raises gets its exception back and leaves.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1 (got {batch})")
    syncs = list(syncs) if syncs is not None else [None] * len(fns)
    calls = [_timed_call(fn, sync, clock) for fn, sync in zip(fns, syncs)]
    out: list[Timing | Exception | None] = [None] * len(fns)
    firsts: dict[int, float] = {}
    for i, call in enumerate(calls):
        try:
            firsts[i] = call()
            for _ in range(options.warmup):
                call()
        except Exception as e:  # noqa: BLE001 - reported per runner
            out[i] = e
    samples: dict[int, list[float]] = {i: [] for i in firsts}
    start, rounds, timed = clock(), 0, 0.0
    while samples and not _stop_rounds(options, rounds, timed, len(samples)):
        order = sorted(samples)
        for i in order[rounds % len(order):] + order[: rounds % len(order)]:
            try:
                calls[i]()  # settle: see the docstring
                samples[i].append(calls[i]())
                timed += samples[i][-1]
            except Exception as e:  # noqa: BLE001
                out[i] = e
                del samples[i]
        rounds += 1
    for i, got in samples.items():
        out[i] = Timing(batch=batch, first_ms=firsts[i], samples_ms=tuple(got), wall_s=clock() - start)
    return out  # type: ignore[return-value]


def _timed_call(fn: Callable[[], Any], sync: Callable[[], None] | None, clock: Clock) -> Callable[[], float]:
    def call() -> float:
        t0 = clock()
        fn()
        if sync is not None:
            sync()
        return (clock() - t0) * 1000.0

    return call


def cuda_event_timer(torch_module: Any) -> Callable[[Callable[[], Any], int], list[float]]:
    """Device compute time with CUDA events: ``timer(fn, iters) -> [ms]`` for inputs already on the GPU.

    Events are recorded on the current stream around each call, so host-side launch
    overhead that overlaps GPU work is not counted — trtexec's "GPU Compute Time".
    """
    torch = torch_module

    def timer(fn: Callable[[], Any], iters: int) -> list[float]:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        torch.cuda.synchronize()
        for s, e in zip(starts, ends):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize()
        return [float(s.elapsed_time(e)) for s, e in zip(starts, ends)]

    return timer
