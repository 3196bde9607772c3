"""The benchmark harness: an open-loop load generator, HDR percentiles, JSON + PNG reports.

Open loop means requests leave on a fixed schedule (request *i* is due at ``t0 + i / rate``) whatever happened
to the earlier ones, and latency is measured from that *intended* send time. A closed-loop tester (send, wait,
send) slows down when the server does and so hides queueing — the "coordinated omission" that makes p99 look
great exactly when the service is overloaded. Here a slow server shows up as a growing p99 and as achieved RPS
falling below offered RPS.

    mlsd bench selftest --out .mlsd/bench/selftest.json

``selftest`` measures the harness against a no-op endpoint of our own FastAPI factory, served by uvicorn in
another process, and against a bare ASGI app (the peer baseline): that is the ceiling every system's numbers
are read against on the same machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

# ------------------------------------------------------------------------------------------- histogram


class Histogram:
    """Latency histogram with 3 significant digits from 1 µs to 2 min (HdrHistogram): O(1) record."""

    def __init__(self) -> None:
        self._h = HdrHistogram(1, 120_000_000, 3)

    def record_ms(self, value_ms: float) -> None:
        self._h.record_value(max(1, int(value_ms * 1000)))

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def percentile_ms(self, q: float) -> float:
        return float(self._h.get_value_at_percentile(q)) / 1000.0

    def percentiles(self) -> dict[str, float]:
        if self.count == 0:
            return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
        return {
            "p50": round(self.percentile_ms(50), 3),
            "p95": round(self.percentile_ms(95), 3),
            "p99": round(self.percentile_ms(99), 3),
            "max": round(float(self._h.get_max_value()) / 1000.0, 3),
            "mean": round(float(self._h.get_mean_value()) / 1000.0, 3),
        }


# ----------------------------------------------------------------------------------------- open loop


@dataclass
class LoadResult:
    offered_rps: float
    achieved_rps: float
    duration_s: float
    count: int
    errors: int
    latency_ms: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def run_open_loop(
    send: Callable[[int], Awaitable[Any]],
    *,
    rate: float,
    duration_s: float,
    warmup_s: float = 1.0,
    max_in_flight: int = 1000,
) -> LoadResult:
    """Call ``send(i)`` at ``rate`` per second for ``warmup_s + duration_s``; measure the last ``duration_s``.

    A request that raises counts as an error. When ``max_in_flight`` requests are outstanding, a due request
    is not sent and counts as an error: the system is saturated, and saying so beats queueing without bound.
    """
    # time.perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
    clock = time.perf_counter
    n_warm = int(warmup_s * rate)
    n_total = n_warm + int(duration_s * rate)
    hist = Histogram()
    errors = 0
    completed = 0
    in_flight: set[asyncio.Task[None]] = set()
    t0 = clock() + 0.01
    measure_start = t0 + n_warm / rate
    last_done = measure_start

    async def one(i: int, intended: float) -> None:
        nonlocal errors, completed, last_done
        ok = True
        try:
            await send(i)
        except Exception:
            ok = False
        done = clock()
        if i < n_warm:
            return
        if ok:
            hist.record_ms((done - intended) * 1000.0)  # from the *intended* time: queueing included
            completed += 1
            last_done = max(last_done, done)
        else:
            errors += 1

    for i in range(n_total):
        intended = t0 + i / rate
        delay = intended - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        elif i % 64 == 0:
            await asyncio.sleep(0)  # behind schedule: still let responses be processed
        if len(in_flight) >= max_in_flight:
            if i >= n_warm:
                errors += 1
            continue
        task = asyncio.create_task(one(i, intended))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight, return_exceptions=True)
    elapsed = max(last_done - measure_start, 1e-9)
    return LoadResult(
        offered_rps=rate,
        achieved_rps=round(completed / max(elapsed, duration_s), 1),
        duration_s=round(elapsed, 3),
        count=completed,
        errors=errors,
        latency_ms=hist.percentiles(),
    )


async def http_load(
    url: str,
    *,
    rate: float,
    duration_s: float,
    method: str = "GET",
    json_body: Callable[[int], Any] | None = None,
    params: Callable[[int], dict[str, Any]] | None = None,
    warmup_s: float = 1.0,
    max_in_flight: int = 1000,
    timeout_s: float = 10.0,
    on_response: Callable[[int, Any], None] | None = None,
) -> LoadResult:
    """Open-loop HTTP load (aiohttp client: ~3x the request rate of httpx per core). Non-2xx is an error.

    ``on_response(i, parsed_json)`` sees every successful response (e.g. to collect per-stage timings).
    """
    import aiohttp

    connector = aiohttp.TCPConnector(limit=max_in_flight, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send(i: int) -> None:
            kwargs: dict[str, Any] = {}
            if json_body is not None:
                kwargs["json"] = json_body(i)
            if params is not None:
                kwargs["params"] = params(i)
            async with session.request(method, url, **kwargs) as response:
                body = await response.read()
                if response.status >= 300:
                    raise RuntimeError(f"HTTP {response.status}")
                if on_response is not None:
                    on_response(i, json.loads(body))

        return await run_open_loop(
            send, rate=rate, duration_s=duration_s, warmup_s=warmup_s, max_in_flight=max_in_flight
        )


def run_async(coro: Awaitable[Any]) -> Any:
    """Run a coroutine on uvloop when available (a faster event loop for the load generator)."""
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- reporting


def summary_stats(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements (report the median: these machines are noisy)."""
    vals = [float(v) for v in values]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": float(len(vals))}


def median_result(results: Sequence[LoadResult]) -> LoadResult:
    """Per-field median of repeated runs at the same offered rate."""
    keys = results[0].latency_ms.keys()
    return LoadResult(
        offered_rps=results[0].offered_rps,
        achieved_rps=round(statistics.median(r.achieved_rps for r in results), 1),
        duration_s=round(statistics.median(r.duration_s for r in results), 3),
        count=int(statistics.median(r.count for r in results)),
        errors=int(statistics.median(r.errors for r in results)),
        latency_ms={k: round(statistics.median(r.latency_ms[k] for r in results), 3) for k in keys},
        extra={"repeats": len(results)},
    )


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_report(result: dict[str, Any], out: Path, *, plot: Callable[[Path], None] | None = None) -> Path | None:
    """Write ``result`` as JSON to ``out`` and, when ``plot`` is given, a PNG beside it; returns the PNG path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    result.setdefault("machine", machine_info())
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if plot is None:
        return None
    png = out.with_suffix(".png")
    plot(png)
    return png


def plot_latency_vs_rate(
    runs: Sequence[LoadResult],
    out_png: Path,
    title: str,
    baseline: Sequence[LoadResult] | None = None,
    baseline_label: str = "baseline",
    label: str = "system",
) -> None:
    """p50/p95/p99 latency (log scale) and achieved RPS against offered RPS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_rps) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = [(label, runs, "-")] + ([(baseline_label, baseline, "--")] if baseline else [])
    for name, results, style in series:
        rates = [r.offered_rps for r in results]
        for q, colour in (("p50", "tab:blue"), ("p95", "tab:orange"), ("p99", "tab:red")):
            ax_lat.plot(rates, [r.latency_ms[q] for r in results], style, marker="o", color=colour, label=f"{name} {q}")
        ax_rps.plot(rates, [r.achieved_rps for r in results], style, marker="o", label=name)
    all_rates = [r.offered_rps for r in runs] + [r.offered_rps for r in (baseline or [])]
    ax_rps.plot([0, max(all_rates)], [0, max(all_rates)], ":", color="grey", label="achieved = offered")
    ax_lat.set(xlabel="offered RPS", ylabel="latency (ms, from intended send)", yscale="log", title="latency")
    ax_rps.set(xlabel="offered RPS", ylabel="achieved RPS", title="throughput")
    ax_lat.legend(fontsize=7)
    ax_rps.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- selftest


def create_noop_app() -> Any:
    """Our FastAPI factory with one no-op route: the ceiling of a service built on ``systems.common.http``."""
    from systems.common.http import create_app

    app = create_app(title="mlsd bench no-op")

    @app.get("/noop")
    async def noop() -> dict[str, bool]:
        return {"ok": True}

    return app


def create_raw_asgi_app() -> Callable[..., Awaitable[None]]:
    """The peer baseline: a bare ASGI callable (no framework), answering every path with the same JSON."""
    body = b'{"ok":true}'

    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def ceiling(runs: Sequence[LoadResult], *, min_ratio: float = 0.95, max_p99_ms: float = 50.0) -> LoadResult:
    """The highest offered rate served well: achieved ≥ 95 % of offered, no errors, p99 ≤ ``max_p99_ms``."""
    served = [
        r
        for r in runs
        if r.achieved_rps >= min_ratio * r.offered_rps and r.errors == 0 and r.latency_ms["p99"] <= max_p99_ms
    ]
    return max(served, key=lambda r: r.offered_rps) if served else min(runs, key=lambda r: r.offered_rps)


def selftest(
    out: Path,
    *,
    rates: Sequence[float] = (250, 500, 1000, 2000, 3000),
    duration_s: float = 4.0,
    repeats: int = 3,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure the harness + our FastAPI factory (and a bare ASGI app) on 127.0.0.1; write JSON + PNG."""
    from systems.common.http import ServerProcess

    def measure(factory: str) -> list[LoadResult]:
        results: list[LoadResult] = []
        with ServerProcess(factory) as server:  # the bare app answers /readyz like any path
            for rate in rates:
                reps = []
                for rep in range(repeats):
                    if progress:
                        progress(f"{factory.rsplit(':', 1)[1]} @ {rate:g} rps (run {rep + 1}/{repeats})")
                    reps.append(run_async(http_load(server.url + "/noop", rate=rate, duration_s=duration_s)))
                results.append(median_result(reps))
        return results

    system = measure("systems.common.bench:create_noop_app")
    baseline = measure("systems.common.bench:create_raw_asgi_app")
    top = ceiling(system)
    result: dict[str, Any] = {
        "benchmark": "selftest",
        "what": "open-loop GET /noop on systems.common.http.create_app (uvicorn, 1 worker) vs a bare ASGI app",
        **top.to_dict(),
        "ceiling_rps": top.offered_rps,
        "ceiling_rule": "highest offered rate with achieved >= 95% of offered, 0 errors and p99 <= 50 ms",
        "runs": [r.to_dict() for r in system],
        "baseline": {
            "name": "bare ASGI app (no framework)",
            "ceiling_rps": ceiling(baseline).offered_rps,
            "runs": [r.to_dict() for r in baseline],
        },
        "ratio_vs_baseline": {
            "ceiling_rps": round(top.offered_rps / max(ceiling(baseline).offered_rps, 1e-9), 3),
        },
        "settings": {"rates": list(rates), "duration_s": duration_s, "repeats": repeats},
    }
    write_report(
        result,
        out,
        plot=lambda png: plot_latency_vs_rate(
            system, png, "bench selftest: no-op endpoint", baseline, "bare ASGI", "FastAPI factory"
        ),
    )
    return result
