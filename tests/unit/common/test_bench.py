"""The open-loop generator must expose queueing that a closed-loop tester would hide."""

import asyncio

import pytest

from systems.common.bench import Histogram, LoadResult, ceiling, median_result, run_open_loop

pytestmark = pytest.mark.unit


def test_histogram_percentiles() -> None:
    h = Histogram()
    for v in range(1, 1001):
        h.record_ms(v / 10)  # 0.1 .. 100 ms
    p = h.percentiles()
    assert p["p50"] == pytest.approx(50.0, rel=0.01)
    assert p["p99"] == pytest.approx(99.0, rel=0.01)
    assert p["max"] == pytest.approx(100.0, rel=0.01)


def test_open_loop_shows_queueing_when_offered_rate_exceeds_capacity() -> None:
    """A server that does 1 request at a time in 10 ms (100 rps capacity), offered 200 rps for 1 s."""

    async def scenario() -> tuple[LoadResult, LoadResult]:
        lock = asyncio.Lock()

        async def send(_i: int) -> None:
            async with lock:
                await asyncio.sleep(0.01)

        under = await run_open_loop(send, rate=50, duration_s=1.0, warmup_s=0.2)
        over = await run_open_loop(send, rate=200, duration_s=1.0, warmup_s=0.2)
        return under, over

    under, over = asyncio.run(scenario())
    # Under capacity the latency is the 10 ms of service (plus event-loop noise on a busy machine)...
    assert under.latency_ms["p50"] < 30 and under.latency_ms["p99"] < 100
    assert under.errors == 0 and under.achieved_rps == pytest.approx(50, rel=0.15)
    # ...overloaded, each request waits for all earlier ones: a closed-loop tester would still report ~10 ms.
    assert over.latency_ms["p99"] > 300 and over.latency_ms["p99"] > 5 * under.latency_ms["p99"]
    assert over.achieved_rps < 130


def test_errors_are_counted_not_timed() -> None:
    """Failures return at once, successes take 20 ms: timed failures would drag the latencies towards 0."""

    async def send(i: int) -> None:
        if i % 2:
            raise RuntimeError("boom")
        await asyncio.sleep(0.02)

    result = asyncio.run(run_open_loop(send, rate=100, duration_s=0.5, warmup_s=0))
    assert result.errors == 25 and result.count == 25
    assert result.latency_ms["p50"] >= 19.0 and result.latency_ms["mean"] >= 19.0  # ~10 ms if errors were timed


def test_ceiling_and_median() -> None:
    runs = [
        LoadResult(100, 100, 1, 100, 0, {"p50": 1, "p95": 2, "p99": 3}),
        LoadResult(200, 199, 1, 199, 0, {"p50": 1, "p95": 2, "p99": 4}),
        LoadResult(400, 250, 1, 250, 3, {"p50": 90, "p95": 200, "p99": 300}),
    ]
    assert ceiling(runs).offered_rps == 200
    assert ceiling(runs, max_p99_ms=3.5).offered_rps == 100  # 200 rps was served, but with p99 over the bound
    med = median_result([runs[0], runs[0], runs[1]])
    assert med.latency_ms["p99"] == 3 and med.achieved_rps == 100
