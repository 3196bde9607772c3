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
import heapq
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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


SLOWEST_KEPT = 20
"""How many of a load's slowest requests it keeps, with when they were sent."""


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
    slowest: list[tuple[float, float]] = []  # (latency ms, seconds into the measured window): where stalls were
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
            ms = (done - intended) * 1000.0
            hist.record_ms(ms)  # from the *intended* time: queueing included
            if len(slowest) < SLOWEST_KEPT or ms > slowest[0][0]:
                (heapq.heappush if len(slowest) < SLOWEST_KEPT else heapq.heapreplace)(
                    slowest, (ms, intended - measure_start)
                )
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
        extra={"slowest": [{"at_s": round(at, 3), "ms": round(ms, 2)} for ms, at in sorted(slowest, reverse=True)]},
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


def bootstrap_ci(
    metric: Callable[..., float],
    *columns: np.ndarray,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(*columns)`` over rows (users, texts, transactions).

    Every resample draws the same row indices for all columns, so a metric of two models on the same rows (a
    difference, a ratio) gets a *paired* interval: what the rows have in common cancels, as it should.
    """
    n = len(columns[0])
    if n == 0 or any(len(c) != n for c in columns):
        raise ValueError(f"bootstrap_ci needs columns of one non-zero length, got {[len(c) for c in columns]}")
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        stats[b] = metric(*(c[idx] for c in columns))
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


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


def cpu_times() -> tuple[float, float]:
    """(all CPU time, stolen CPU time) of the machine so far, in clock ticks, from ``/proc/stat``; (0, 0)
    where there is none. Steal is time the hypervisor gave this VM's CPUs to someone else: wall-clock
    throughput falls with it while the work done per CPU-second does not."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0, 0.0
    ticks = [float(f) for f in fields[:8]]
    return sum(ticks), (ticks[7] if len(ticks) > 7 else 0.0)


def steal_pct(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    """Percentage of CPU time stolen between two :func:`cpu_times` readings (None without them)."""
    total = after[0] - before[0]
    return round(100 * (after[1] - before[1]) / total, 1) if total > 0 else None


# ---------------------------------------------------------------------------- committed bench reports

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout this package runs from (an editable install); bench reports and READMEs live in it."""


def default_bench_path(system: str) -> Path:
    """Where a system's committed bench result lives: ``systems/<name>/bench/<name>.json`` (PNG beside it)."""
    return REPO_ROOT / "systems" / system / "bench" / f"{system}.json"


def git_sha() -> str | None:
    """The commit of the code being measured (``+dirty`` when the work tree has uncommitted changes)."""
    import subprocess

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def current_command() -> str:
    """The command line that is running, as a user would type it (``mlsd fraud bench --quick``)."""
    import shlex

    argv = list(sys.argv)
    # the console script, or `python -m systems.cli` (argv[0] is then the module's path): both are `mlsd`
    if argv and (Path(argv[0]).name == "mlsd" or Path(argv[0]).parts[-2:] == ("systems", "cli.py")):
        argv[0] = "mlsd"
    return shlex.join(argv)


def provenance(command: str | None = None) -> dict[str, Any]:
    """What a reader needs to reproduce a number: the command, the code version and the machine's load."""
    return {"command": command or current_command(), "git_sha": git_sha(), "machine": machine_info()}


class BenchReport:
    """One system's bench result, written section by section, each section with its own provenance.

    ``section(name, data)`` stores ``data`` under ``name`` with a ``provenance`` entry (command, git sha,
    machine, load average) and rewrites the JSON at once, so an interrupted run keeps what it measured.
    Sections that this run does not measure are kept from the existing file with *their* provenance: a
    ``--only ray`` re-run updates one section honestly, and nothing is stitched together by hand.
    """

    def __init__(self, system: str, *, out: Path | None = None, command: str | None = None) -> None:
        self.system = system
        self.path = Path(out) if out is not None else default_bench_path(system)
        self.command = command or current_command()
        self.data: dict[str, Any] = {}
        if self.path.exists():
            try:
                previous = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                previous = {}
            # only measured sections survive: an entry without provenance is not a number anyone can trace
            self.data = {k: v for k, v in previous.items() if isinstance(v, dict) and "provenance" in v}
        self.data["system"] = system

    @property
    def png(self) -> Path:
        return self.path.with_suffix(".png")

    def section(self, name: str, data: dict[str, Any]) -> dict[str, Any]:
        """Store one measured section (with provenance) and write the file; returns the stored dict."""
        stored = {**data, "provenance": provenance(self.command)}
        self.data[name] = stored
        self.write()
        return stored

    def get(self, name: str) -> Any:
        return self.data.get(name)

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        tmp.replace(self.path)

    def plot(self, draw: Callable[[Path], None]) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        draw(self.png)
        return self.png


# ------------------------------------------------------------------------------- README numbers from JSON

# A measured number in a README is written ``<!--m:KEY|FMT-->VALUE<!--/m-->``: KEY is a dotted path into the
# system's committed bench JSON (``quality.xgboost.ap``), or ``system:path`` for another system's; FMT is an
# optional Python format spec (``.3f``, ``,.0f``, ``.1%``), or ``met`` for a boolean target verdict. ``mlsd bench
# report`` rewrites every VALUE from the JSON, and ``--check`` (run by the tests) fails on any that disagree: a
# README number is never typed.
MARKER = re.compile(r"<!--m:(?P<key>[^|>]+?)(?:\|(?P<fmt>[^>]*?))?-->(?P<value>.*?)<!--/m-->", re.DOTALL)


def lookup(doc: Any, key: str) -> Any:
    """``doc`` at a dotted ``key``; a key segment may itself contain dots (``p99.9``) or be a list index."""
    parts = key.split(".")
    node, i = doc, 0
    while i < len(parts):
        if isinstance(node, dict):
            for j in range(len(parts), i, -1):  # longest match first: "1.5" before "1"
                candidate = ".".join(parts[i:j])
                if candidate in node:
                    node, i = node[candidate], j
                    break
            else:
                raise KeyError(key)
        elif isinstance(node, list) and parts[i].lstrip("-").isdigit():
            node, i = node[int(parts[i])], i + 1
        else:
            raise KeyError(key)
    return node


def format_value(value: Any, fmt: str | None = None) -> str:
    """A JSON value as README text: a format spec when given, else ints with separators, floats to 3 digits."""
    if isinstance(value, list):
        return "–".join(format_value(v, fmt) for v in value)
    if value is None:
        return "—"
    if isinstance(value, bool):
        if fmt == "met":  # a target's verdict, generated with its number so the words cannot contradict it
            return "met" if value else "**not met**"
        return "yes" if value else "no"
    if fmt:
        return format(value, fmt)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


@dataclass
class Mismatch:
    readme: Path
    key: str
    written: str
    measured: str

    def __str__(self) -> str:
        return f"{self.readme}: {self.key} says {self.written!r}, the bench JSON says {self.measured!r}"


def render_readme(
    text: str, load: Callable[[str], dict[str, Any]], default_system: str | None, readme: Path = Path("README.md")
) -> tuple[str, list[Mismatch]]:
    """``text`` with every marker's value regenerated, and the markers whose written value was different.

    ``load(system)`` returns that system's bench JSON. A key that is missing from the JSON raises
    ``KeyError`` naming the README: a number with no measurement behind it is an error, not a blank.
    """
    mismatches: list[Mismatch] = []

    def replace(match: re.Match[str]) -> str:
        key, fmt, written = match["key"].strip(), match["fmt"], match["value"]
        system, _, path = key.rpartition(":")
        system = system or (default_system or "")
        if not system:
            raise KeyError(f"{readme}: marker {key!r} names no system (write system:path)")
        try:
            measured = format_value(lookup(load(system), path), fmt)
        except (KeyError, IndexError) as exc:
            raise KeyError(f"{readme}: {key!r} is not in the {system} bench JSON") from exc
        if written != measured:
            mismatches.append(Mismatch(readme, key, written, measured))
        return match.group(0).replace(f"-->{written}<!--/m-->", f"-->{measured}<!--/m-->")

    return MARKER.sub(replace, text), mismatches


def readme_paths(root: Path = REPO_ROOT) -> list[tuple[Path, str | None]]:
    """Every README with measured numbers, and the system whose JSON its bare keys refer to."""
    out: list[tuple[Path, str | None]] = [(root / "README.md", None)]
    out += [(p, p.parent.name) for p in sorted((root / "systems").glob("*/README.md"))]
    return out


def report_readmes(root: Path = REPO_ROOT, *, write: bool = True) -> list[Mismatch]:
    """Regenerate (``write``) or only check every README's measured numbers; returns what disagreed."""
    cache: dict[str, dict[str, Any]] = {}

    def load(system: str) -> dict[str, Any]:
        if system not in cache:
            path = root / "systems" / system / "bench" / f"{system}.json"
            if not path.exists():
                raise KeyError(f"no committed bench JSON at {path}")
            cache[system] = json.loads(path.read_text())
        return cache[system]

    found: list[Mismatch] = []
    for readme, system in readme_paths(root):
        if not readme.exists():
            continue
        text = readme.read_text()
        new, mismatches = render_readme(text, load, system, readme.relative_to(root))
        found += mismatches
        if write and new != text:
            readme.write_text(new)
    return found


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
    report: BenchReport,
    *,
    rates: Sequence[float] = (250, 500, 1000, 2000, 3000),
    duration_s: float = 4.0,
    repeats: int = 3,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure the harness + our FastAPI factory (and a bare ASGI app) on 127.0.0.1; a ``selftest`` section + PNG."""
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
    report.section("selftest", result)
    report.plot(
        lambda png: plot_latency_vs_rate(
            system, png, "bench selftest: no-op endpoint", baseline, "bare ASGI", "FastAPI factory"
        )
    )
    return result
