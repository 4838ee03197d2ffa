"""The timing core: percentiles, warm-up exclusion, time bound. Fake workloads are fine here:
the thing under test is the timing logic, not a model."""

from __future__ import annotations

import time

import pytest

from tl.benchmarks.timing import Stats, TimingOptions, measure, percentile


class FakeClock:
    """A clock that only moves when the fake workload says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def workload(clock: FakeClock, durations_ms: list[float]):
    calls = []

    def fn():
        d = durations_ms[len(calls)] if len(calls) < len(durations_ms) else durations_ms[-1]
        calls.append(d)
        clock.now += d / 1000.0

    return fn, calls


def test_nearest_rank_percentiles_hand_computed():
    # Wikipedia's nearest-rank example: 15 20 35 40 50.
    data = [50, 15, 40, 20, 35]
    assert percentile(data, 5) == 15
    assert percentile(data, 30) == 20
    assert percentile(data, 40) == 20
    assert percentile(data, 50) == 35
    assert percentile(data, 100) == 50
    ten = list(range(10, 0, -1))  # 10..1
    assert percentile(ten, 50) == 5
    assert percentile(ten, 90) == 9
    assert percentile(ten, 99) == 10
    assert percentile(ten, 0) == 1
    # 200 samples 1..200: p99 is the 198th value, p90 the 180th (no interpolation).
    big = [float(i) for i in range(1, 201)]
    assert percentile(big, 99) == 198.0
    assert percentile(big, 90) == 180.0
    assert percentile([7.5], 99) == 7.5
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_stats_summary():
    s = Stats.of([4.0, 1.0, 3.0, 2.0])
    assert (s.n, s.mean_ms, s.p50_ms, s.p90_ms, s.p99_ms, s.min_ms, s.max_ms) == (4, 2.5, 2.0, 4.0, 4.0, 1.0, 4.0)


def test_first_run_and_warmup_are_excluded():
    clock = FakeClock()
    # first call 500 ms (compile), 2 warm-up calls 100 ms, then 10, 20, 30, 40 ms.
    fn, calls = workload(clock, [500, 100, 100, 10, 20, 30, 40])
    t = measure(fn, batch=4, options=TimingOptions(warmup=2, iters=4), clock=clock)
    assert len(calls) == 1 + 2 + 4
    assert t.first_ms == pytest.approx(500)
    assert t.samples_ms == pytest.approx((10, 20, 30, 40))
    st = t.stats
    assert st.mean_ms == pytest.approx(25)
    assert st.p50_ms == pytest.approx(20)
    assert st.max_ms == pytest.approx(40)
    assert st.min_ms == pytest.approx(10)
    # 4 images per call at the 20 ms median -> 200 images/s.
    assert t.throughput == pytest.approx(200)
    assert t.wall_s == pytest.approx(0.5 + 0.2 + 0.1)


def test_sync_is_inside_the_timed_region():
    clock = FakeClock()
    fn, _ = workload(clock, [1.0])

    def sync():  # an asynchronous device finishing its work: 9 ms more
        clock.now += 0.009

    t = measure(fn, batch=1, options=TimingOptions(warmup=0, iters=3), sync=sync, clock=clock)
    assert t.samples_ms == pytest.approx((10.0, 10.0, 10.0))


def test_time_bound_with_fake_clock():
    clock = FakeClock()
    fn, calls = workload(clock, [5, 30])
    t = measure(fn, batch=1, options=TimingOptions(warmup=0, seconds=0.1, min_iters=1), clock=clock)
    # Timed calls start at 0, 30, 60, 90 ms; at 120 ms the 100 ms budget is spent.
    assert len(t.samples_ms) == 4
    assert len(calls) == 5


def test_min_iters_when_one_call_exceeds_the_budget():
    clock = FakeClock()
    fn, _ = workload(clock, [1000])
    t = measure(fn, batch=2, options=TimingOptions(warmup=1, seconds=0.01, min_iters=3), clock=clock)
    assert len(t.samples_ms) == 3


def test_time_bound_respected_with_real_sleep():
    def fn():
        time.sleep(0.01)

    t0 = time.perf_counter()
    t = measure(fn, batch=1, options=TimingOptions(warmup=2, seconds=0.2))
    elapsed = time.perf_counter() - t0
    # first + 2 warm-up + ~0.2 s of timed calls (overshoot at most one call).
    assert 0.2 <= elapsed < 0.2 + 3 * 0.01 + 0.6  # generous: the machine is shared
    assert 5 <= len(t.samples_ms) <= 21
    assert all(s >= 9.0 for s in t.samples_ms)
    assert t.stats.p50_ms < 50


def test_iters_wins_over_seconds():
    clock = FakeClock()
    fn, calls = workload(clock, [1])
    t = measure(fn, batch=1, options=TimingOptions(warmup=0, seconds=100.0, iters=7), clock=clock)
    assert len(t.samples_ms) == 7


def test_options_validation():
    from tl.runtime.errors import TLError

    with pytest.raises(TLError, match="--warmup"):
        TimingOptions(warmup=-1)
    with pytest.raises(TLError, match="--iters"):
        TimingOptions(iters=0)
    with pytest.raises(TLError, match="--seconds"):
        TimingOptions(seconds=0)
    TimingOptions(seconds=None, iters=5)


def test_rounds_interleave_every_runner_and_rotate_the_order():
    """Each round times every runner once, after one untimed settle call; the start rotates."""
    from tl.benchmarks.timing import measure_rounds

    clock = FakeClock()
    log = []

    def runner(name, ms):
        def fn():
            log.append(name)
            clock.now += ms / 1000.0
        return fn

    timings = measure_rounds([runner("a", 10), runner("b", 30)], batch=2,
                             options=TimingOptions(warmup=1, iters=3), clock=clock)
    # first + warm-up of each, then rounds of (settle, timed) per runner, rotating a,b / b,a / a,b.
    assert log == ["a", "a", "b", "b"] + ["a", "a", "b", "b"] + ["b", "b", "a", "a"] + ["a", "a", "b", "b"]
    a, b = timings
    assert a.samples_ms == pytest.approx((10, 10, 10)) and b.samples_ms == pytest.approx((30, 30, 30))
    assert a.throughput == pytest.approx(200) and b.first_ms == pytest.approx(30)


def test_rounds_budget_counts_timed_calls_and_a_failing_runner_leaves():
    from tl.benchmarks.timing import measure_rounds

    clock = FakeClock()
    ok, _ = workload(clock, [10])
    calls = []

    def flaky():  # fine for its first call and warm-up, then breaks in round 2
        calls.append(1)
        clock.now += 0.01
        if len(calls) > 4:
            raise RuntimeError("device lost")

    def broken():
        raise ValueError("cannot even start")

    t_ok, t_flaky, t_broken = measure_rounds([ok, flaky, broken], batch=1,
                                             options=TimingOptions(warmup=0, seconds=0.1, min_iters=1), clock=clock)
    assert isinstance(t_flaky, RuntimeError) and isinstance(t_broken, ValueError)
    # 100 ms of timed calls per live runner: ok's 10 ms samples, while flaky lasted (1 round) it counted too.
    assert 9 <= len(t_ok.samples_ms) <= 11


def test_spread_and_the_disturbed_threshold():
    from tl.benchmarks.timing import DISTURBED_SPREAD, spread

    quiet = Stats.of([10.0] * 9 + [11.0])
    noisy = Stats.of([10.0] * 8 + [20.0, 30.0])
    assert spread(quiet) == pytest.approx(1.0) and spread(quiet) <= DISTURBED_SPREAD
    assert spread(noisy) == pytest.approx(2.0) and spread(noisy) > DISTURBED_SPREAD
