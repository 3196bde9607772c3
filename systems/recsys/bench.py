"""``mlsd recsys bench``: quality, A/B, serving under open-loop load, freshness, faults — into the bench JSON.

    mlsd recsys bench                              # every section
    mlsd recsys bench --only serving,freshness     # some sections (the others keep their committed values)

Sections: ``quality.<dataset>`` (the study: every peer tuned on validation, the gate, 95 % CIs), ``abtest`` (a
simulated experiment on ML-100k's test stage), ``serving`` (the registered champion behind the real API,
open-loop GET ``/recommend`` at each rate, repeated, next to the no-op ceiling of the same HTTP stack measured
in the same run; latency from the intended send time, server CPU per request, per-stage timings),
``freshness_ms`` (browse event produced → an answer without the viewed item), ``poison``, ``chaos`` and
``fuzz`` (``faults.py``).
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from systems.recsys.settings import RecsysSettings

log = logging.getLogger(__name__)

QUALITY_DATASETS = ("movielens-100k", "movielens-1m")
# ML-1M is studied on a seeded half of its users (all their ~500k ratings): the full log costs about an hour
# of SASRec and BPR training per run on the shared 2-core machine.
QUALITY_SAMPLE_USERS = {"movielens-1m": 3000}
ABTEST_DATASET = "movielens-100k"
SERVING_RATES = (100, 200, 300, 400, 500, 600)
LATENCY_BUDGET_MS = 50.0
TARGET_RPS, TARGET_P99_MS, TARGET_MAX_RPS = 200, 30.0, 400
"""The serving targets: p99 ≤ 30 ms at 200 RPS; the highest rate with p99 ≤ 50 ms at least 400 RPS."""


def bench_quality(settings: RecsysSettings, report: Any, *, datasets: tuple[str, ...], abtest: bool) -> dict[str, Any]:
    """The quality study (``study.py``) on each dataset, one section ``quality.<dataset>`` written as each ends;
    with ``abtest``, the simulated experiment on ML-100k's test stage from the same study (section ``abtest``).

    BLAS, OpenMP and torch run single-threaded: on the shared 2-core machine their thread pools spin-wait
    and made the study ~5x slower (measured), and single threads keep the run reproducible.
    """
    import torch
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from threadpoolctl import threadpool_limits

    from systems.common.bench import provenance
    from systems.recsys.dataset import load_log
    from systems.recsys.study import StudyConfig, run_study

    torch.set_num_threads(1)
    # datasets measured earlier are kept (each carries its own provenance): one can re-run one dataset
    out: dict[str, Any] = {k: v for k, v in (report.get("quality") or {}).items() if k != "provenance"}
    with threadpool_limits(1), Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()) as bar:
        task = bar.add_task("quality", total=None)
        for name in datasets:
            log_ = load_log(name, settings)
            t = time.perf_counter()
            cfg = StudyConfig(sample_users=QUALITY_SAMPLE_USERS.get(name))
            res = run_study(log_, cfg, progress=lambda m: bar.update(task, description=m))
            res.report["study_s"] = time.perf_counter() - t
            res.report["provenance"] = provenance(report.command)
            out[name] = res.report
            report.section("quality", out)  # rewritten after each dataset: a crash keeps the finished ones
            if abtest and name == ABTEST_DATASET:
                bar.update(task, description=f"{name}: simulated A/B experiment")
                report.section("abtest", bench_abtest(settings, res))
    return out


def bench_abtest(settings: RecsysSettings, res: Any, **kwargs: Any) -> dict[str, Any]:
    """The A/B simulation on a study's test stage (``experiment.py``)."""
    from systems.recsys.experiment import run_simulated_experiment, test_stage_world
    from systems.recsys.served import experiment_model

    model = experiment_model(res).warm()
    test = res.protocol.test
    times, future = test_stage_world(model, test.truth, test.users, test.request_ts)
    out = run_simulated_experiment(
        model,
        request_ts=times,
        future=future,
        exposure_log=settings.recsys_dir / "exposures-ranker-v1.parquet",
        **kwargs,
    )
    out["dataset"] = res.log.name
    return out


# ------------------------------------------------------------------------------------------------ serving


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its children (uvicorn's workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:  # field 4: the parent's pid
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def serving_traffic(model: Any, n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """Request parameters: a known user 90 % of the time (10 % unknown ids), and in 30 % of requests 1–3 items
    the shopper is browsing (``session_items``), so the session path is measured too."""
    rng = np.random.default_rng(seed)
    ids = model.users.ids
    out = []
    for i in range(n):
        known = rng.random() < 0.9
        uid = ids[int(rng.integers(len(ids)))] if known else _unknown_id(ids[0], i)
        params: dict[str, Any] = {"user_id": uid, "k": 10}
        if rng.random() < 0.3:
            items = rng.choice(len(model.items.ids), size=int(rng.integers(1, 4)), replace=False)
            params["session_items"] = ",".join(str(model.items.ids[int(j)]) for j in items)
        out.append(params)
    return out


def _unknown_id(example: Any, i: int) -> Any:
    return 10**12 + i if isinstance(example, int) else f"unknown-{i}"


def measure_rates(
    url: str,
    *,
    rates: tuple[int, ...],
    duration_s: float,
    repeats: int,
    params: Callable[[int], dict[str, Any]] | None = None,
    pid: int | None = None,
    progress: Callable[[str], None] | None = None,
    label: str = "",
) -> tuple[dict[str, Any], list[Any]]:
    """Open-loop load at each rate, ``repeats`` times; per rate the median of the runs (``common.bench``), the
    server CPU per completed request (``pid``'s process tree), the per-stage timings the API reports (p50/p99
    over every completed request of every repeat) and the load average at the end of the rate."""
    from systems.common.bench import LoadResult, http_load, median_result, run_async

    out: dict[str, Any] = {}
    medians: list[LoadResult] = []
    for rate in rates:
        runs: list[LoadResult] = []
        cpu_ms: list[float] = []
        stages: dict[str, list[float]] = {}

        def on_response(_i: int, body: Any, stages: dict[str, list[float]] = stages) -> None:
            for name, ms in body.get("timings_ms", {}).items():
                stages.setdefault(name, []).append(ms)

        for rep in range(repeats):
            if progress is not None:
                progress(f"{label} {rate} rps, run {rep + 1}/{repeats}")
            c0 = process_cpu_s(pid) if pid is not None else 0.0
            res = run_async(http_load(url, rate=rate, duration_s=duration_s, params=params, on_response=on_response))
            if pid is not None and res.count:
                cpu_ms.append((process_cpu_s(pid) - c0) * 1e3 / (res.count + rate * 1.0))  # + the warm-up second
            runs.append(res)
        med = median_result(runs)
        med.extra.update(
            {
                "p99_runs_ms": [r.latency_ms["p99"] for r in runs],
                "achieved_runs": [r.achieved_rps for r in runs],
                "loadavg_1m": os.getloadavg()[0],
            }
        )
        if cpu_ms:
            med.extra["server_cpu_ms_per_request"] = statistics.median(cpu_ms)
        if stages:
            med.extra["stages_ms"] = {
                n: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99))} for n, v in stages.items()
            }
        out[str(rate)] = med.to_dict()
        medians.append(med)
        log.info("%s %s rps: %s", label, rate, med.latency_ms)
    return out, medians


def max_rate_within(runs: list[Any], *, p99_ms: float) -> int | None:
    """The highest offered rate served within the budget: median p99 ≤ ``p99_ms``, achieved ≥ 95 % of offered,
    no errors (None when no rate was)."""
    ok = [r for r in runs if r.errors == 0 and r.achieved_rps >= 0.95 * r.offered_rps and r.latency_ms["p99"] <= p99_ms]
    return int(max(r.offered_rps for r in ok)) if ok else None


def ensure_champion(settings: RecsysSettings) -> Any:
    """The registered champion (trained with ``mlsd recsys train``'s full study when none is registered)."""
    from systems.recsys.served import load_champion

    try:
        return load_champion(settings.model_name, settings)
    except LookupError:
        from systems.recsys.cli import train_registered

        train_registered(settings, settings.dataset, quick=False)
        return load_champion(settings.model_name, settings)


def bench_serving(
    settings: RecsysSettings,
    *,
    bootstrap: str,
    rates: tuple[int, ...],
    duration_s: float,
    repeats: int,
    workers: int,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], list[Any], list[Any]]:
    """The champion behind ``uvicorn --workers N`` and the no-op ceiling of the same stack, at the same rates."""
    from systems.common.http import ServerProcess
    from systems.recsys.feature_store import ensure_store, push_sessions

    model = ensure_champion(settings)
    s = settings.model_copy(update={"kafka_bootstrap": bootstrap, "data_dir": settings.data_dir.resolve()})
    # live sessions in the online store for half the known users, as the stream processor would have left them
    rng = np.random.default_rng(1)
    users = [model.users.ids[int(u)] for u in rng.choice(len(model.users.ids), len(model.users.ids) // 2, False)]
    now_ms = int(time.time() * 1000)
    rows = [
        {
            "user_id": u,
            "session_items": [model.items.ids[int(i)] for i in rng.choice(len(model.items.ids), 3, False)],
            "last_event_ms": now_ms,
        }
        for u in users
    ]
    push_sessions(ensure_store(s), rows)
    traffic = serving_traffic(model, max(rates) * int(duration_s + 2) + 100)
    env = {**s.to_env(), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    with ServerProcess(
        "systems.recsys.serve:create_app", env=env, log_path=s.recsys_dir / "api.log", workers=workers
    ) as server:
        served, runs = measure_rates(
            server.url + "/recommend",
            rates=rates,
            duration_s=duration_s,
            repeats=repeats,
            params=lambda i: traffic[i % len(traffic)],
            pid=server.process.pid if server.process else None,
            progress=progress,
            label="recommend",
        )
    with ServerProcess("systems.common.bench:create_noop_app", workers=workers) as noop:
        ceiling, ceiling_runs = measure_rates(
            noop.url + "/noop",
            rates=rates,
            duration_s=duration_s,
            repeats=repeats,
            pid=noop.process.pid if noop.process else None,
            progress=progress,
            label="no-op ceiling",
        )
    top = max_rate_within(runs, p99_ms=LATENCY_BUDGET_MS)
    at = served.get(str(TARGET_RPS))
    out = {
        **served,
        "max_rps_p99_50ms": top,
        "target": {
            "rps": TARGET_RPS,
            "p99_ms": TARGET_P99_MS,
            "measured_p99_ms": at["latency_ms"]["p99"] if at else None,
            # met: the median run's p99 within the target, every request answered, the offered rate achieved
            "met": bool(
                at is not None
                and at["errors"] == 0
                and at["achieved_rps"] >= 0.95 * TARGET_RPS
                and at["latency_ms"]["p99"] <= TARGET_P99_MS
            ),
            "aim_max_rps_p99_50ms": TARGET_MAX_RPS,
            "aim_met": bool(top is not None and top >= TARGET_MAX_RPS),
        },
        "ceiling": {**ceiling, "max_rps_p99_50ms": max_rate_within(ceiling_runs, p99_ms=LATENCY_BUDGET_MS)},
        "setup": {
            "workers": workers,
            "dataset": model.dataset,
            "items": len(model.items.ids),
            "users": len(model.users.ids),
            "model": model.kind,
            "model_version": model.version,
            "duration_s": duration_s,
            "repeats": repeats,
            "online_store": settings.online_store,
            "traffic": "GET /recommend: 90% known users, 10% unknown ids, 30% with 1-3 session items; "
            "half the known users have a 3-item live session in the online store",
        },
    }
    return out, runs, ceiling_runs


# ---------------------------------------------------------------------------------------------- freshness


def measure_freshness(
    url: str, settings: RecsysSettings, *, user_ids: list[Any], timeout_s: float = 5.0
) -> list[float]:
    """Per trial: view the user's current #1 item; time until /recommend no longer shows it (ms).

    The viewed item must leave the answer (seen items are never recommended), so a change is guaranteed once
    the event has gone Kafka → stream processor → online store → API. Time starts just before produce().
    """
    import httpx

    from systems.common.broker import make_producer, publish
    from systems.recsys.stream import BrowseEvent

    producer = make_producer(settings)
    out: list[float] = []
    with httpx.Client(timeout=5.0) as client:
        for u in user_ids:
            before = client.get(url + "/recommend", params={"user_id": u, "k": 10}).json()
            top = before["items"][0]["item_id"]
            t0 = time.perf_counter()
            event = BrowseEvent(user_id=u, item_id=top, event_type="view", ts_ms=int(time.time() * 1000))
            publish(producer, settings.events_topic, event, key=str(u))
            producer.flush(5.0)
            while True:
                now = client.get(url + "/recommend", params={"user_id": u, "k": 10}).json()
                if top not in [i["item_id"] for i in now["items"]]:
                    out.append((time.perf_counter() - t0) * 1e3)
                    break
                if time.perf_counter() - t0 > timeout_s:
                    out.append(float("inf"))
                    break
                time.sleep(0.005)
    producer.close()
    return out


def start_stream_thread(settings: RecsysSettings, timeout_s: float = 60.0) -> Any:
    """The stream processor, supervised, in a thread; returns once its consumer group has assigned it."""
    from systems.recsys.stream import StreamSupervisor

    sup = StreamSupervisor(settings)
    sup.start()
    if not sup.ready.wait(timeout_s):
        sup.stop()
        raise RuntimeError(f"the stream processor did not join its consumer group within {timeout_s:.0f} s")
    return sup


def bench_freshness(settings: RecsysSettings, *, bootstrap: str, n: int) -> dict[str, Any]:
    from systems.common.http import ServerProcess

    model = ensure_champion(settings)
    s = settings.model_copy(update={"kafka_bootstrap": bootstrap, "data_dir": settings.data_dir.resolve()}).scoped()
    sup = start_stream_thread(s)
    try:
        env = {**s.to_env(), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        with ServerProcess("systems.recsys.serve:create_app", env=env, log_path=s.recsys_dir / "api.log") as server:
            fresh = measure_freshness(server.url, s, user_ids=list(model.users.ids[:n]))
    finally:
        sup.stop()
    fr = np.asarray(fresh)
    return {
        "p50": float(np.percentile(fr, 50)),
        "p99": float(np.percentile(fr, 99)),
        "max": float(fr.max()),
        "n": len(fr),
        "target_ms": 1000.0,
        "target_met": bool(np.percentile(fr, 99) < 1000.0),
    }


# ------------------------------------------------------------------------------------------------- the run


def run_bench(
    settings: RecsysSettings,
    out: Path | None,
    *,
    rates: tuple[int, ...] = SERVING_RATES,
    duration_s: float = 10.0,
    repeats: int = 3,
    workers: int = 2,
    freshness_n: int = 30,
    only: set[str] | None = None,
    quality_datasets: tuple[str, ...] = QUALITY_DATASETS,
) -> dict[str, Any]:
    """Measure the sections (``only`` picks some of quality, abtest, serving, freshness, poison, chaos, fuzz) into
    ``out`` (default: the committed ``systems/recsys/bench/recsys.json``); sections not measured this time are
    kept with their provenance."""
    from rich.console import Console

    from systems.common.bench import BenchReport, plot_latency_vs_rate
    from systems.common.broker import LocalBroker
    from systems.common.http import free_port

    console = Console()
    settings.ensure_dirs()
    wanted = only or {"quality", "abtest", "serving", "freshness", "poison", "chaos", "fuzz"}
    report = BenchReport("recsys", out=out)
    result: dict[str, Any] = {"system": "recsys"}
    if "quality" in wanted or "abtest" in wanted:
        datasets = quality_datasets if "quality" in wanted else (ABTEST_DATASET,)
        result["quality"] = bench_quality(settings, report, datasets=datasets, abtest="abtest" in wanted)
    if not wanted & {"serving", "freshness", "poison", "chaos", "fuzz"}:
        return result
    with LocalBroker(port=free_port(), log_path=settings.recsys_dir / "broker.log") as broker:
        if "serving" in wanted:
            serving, runs, ceiling_runs = bench_serving(
                settings,
                bootstrap=broker.bootstrap,
                rates=rates,
                duration_s=duration_s,
                repeats=repeats,
                workers=workers,
                progress=lambda m: console.log(m),
            )
            result["serving"] = report.section("serving", serving)
            setup = serving["setup"]

            def plot(png: Path) -> None:
                plot_latency_vs_rate(
                    runs,
                    png,
                    title=f"recsys /recommend, {setup['dataset']} ({setup['items']:,} items), "
                    f"{workers} workers, open loop (median of {repeats})",
                    baseline=ceiling_runs,
                    baseline_label="no-op ceiling",
                    label="/recommend",
                )

            report.plot(plot)
        if "freshness" in wanted:
            result["freshness_ms"] = report.section(
                "freshness_ms", bench_freshness(settings, bootstrap=broker.bootstrap, n=freshness_n)
            )
        if wanted & {"poison", "chaos", "fuzz"}:
            from systems.recsys import faults

            s = settings.model_copy(
                update={"kafka_bootstrap": broker.bootstrap, "data_dir": settings.data_dir.resolve()}
            )
            ensure_champion(s)
            if "poison" in wanted:
                result["poison"] = report.section("poison", faults.poison_run(s.scoped()))
            if "chaos" in wanted:
                result["chaos"] = report.section("chaos", faults.chaos_run(s.scoped()))
            if "fuzz" in wanted:
                result["fuzz"] = report.section("fuzz", faults.fuzz_run(s.scoped()))
    return result
