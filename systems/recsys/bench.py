"""``mlsd recsys bench --out FILE.json``: quality, ANN at scale, serving under open-loop load, freshness.

    mlsd recsys bench --out bench/recsys.json --catalogue 1000000 --rates 50,100,200

Sections of the JSON: ``quality.<model>.<metric>`` (temporal split, full ranking), ``ann`` (1M x 64 ANN sweep vs
exact), ``serving.<rate>`` (latency from the intended send time, achieved RPS, errors, per-stage p50/p99)
and ``freshness_ms`` (event produced → a changed /recommend answer).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from systems.recsys.settings import RecsysSettings

log = logging.getLogger(__name__)


# (kind, faiss factory string, search-parameter values): nprobe for IVF, efSearch for HNSW.
ANN_CONFIGS: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("ivf", "IVF1024,Flat", (16, 32, 48, 64)),
    ("ivf", "IVF1024,PQ64x4fs,RFlat", (24, 32, 40, 48, 64)),
    ("ivf", "IVF2048,PQ64x4fs,RFlat", (32, 48, 64, 96)),
)
RECALL_TARGET = 0.95
# The operating point must clear the target by about one standard error of recall@10 over ~300 queries
# (per-query recall sd ~0.1 / sqrt(315) ~ 0.006): a setting at 0.9505 would miss the target on the next sample.
RECALL_MARGIN = 0.005


def _qps_per_call(index: Any, queries: np.ndarray, k: int, reps: int) -> tuple[list[float], list[float]]:
    """Single-threaded QPS with one query per call (what a request does), one value per repetition.

    Returns (wall-clock QPS, CPU-time QPS). On a shared box the wall clock also counts the time this thread
    waited for a core; the process CPU time (one thread) is what a dedicated core would give.
    """
    wall, cpu = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        for q in queries:
            index.search(q[None], k)
        wall.append(len(queries) / (time.perf_counter() - t))
        cpu.append(len(queries) / max(time.process_time() - c, 1e-9))
    return wall, cpu


def bench_ann(
    vectors: np.ndarray,
    queries: np.ndarray,
    *,
    k: int = 10,
    configs: tuple[tuple[str, str, tuple[int, ...]], ...] = ANN_CONFIGS,
    extra: Sequence[tuple[Any, tuple[int, ...]]] = (),
    reps: int = 3,
) -> tuple[dict[str, Any], Any]:
    """Sweep ANN indexes vs exact inner-product search: recall@k and single-threaded QPS per setting.

    Builds each of ``configs`` (2 threads), plus already-built ``extra`` indexes (e.g. a saved HNSW), and
    picks the fastest setting (CPU-time QPS) with recall@k >= 0.95 + a margin. QPS is the median of ``reps`` passes
    over the queries (the box is shared: the max and the CPU-time QPS are reported too).
    Returns (report, the chosen AnnIndex set to its operating point).
    """
    import faiss

    from systems.recsys.candidates import AnnIndex, recall_at_k

    faiss.omp_set_num_threads(1)
    exact = AnnIndex.build(vectors, kind="exact")
    t = time.perf_counter()
    _, truth = exact.search(queries, k)
    exact_s = time.perf_counter() - t
    del exact
    sweep: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_index: Any = None

    def run(index: Any, params: tuple[int, ...], build_s: float | None) -> None:
        nonlocal best, best_index
        for p in params:
            index.set_search_param(p)
            index.search(queries[:50], k)  # warm
            _, ids = index.search(queries, k)
            qps, qps_cpu = _qps_per_call(index, queries, k, reps)
            row = {
                "index": index.factory,
                "kind": index.kind,
                "param": "nprobe" if index.kind == "ivf" else "ef_search",
                "value": p,
                "recall@10": recall_at_k(ids, truth, k),
                "qps": float(np.median(qps)),
                "qps_max": float(max(qps)),
                "qps_cpu": float(np.median(qps_cpu)),
                "build_s": build_s,
            }
            sweep.append(row)
            log.info("ann %s %s=%s: %s", row["index"], row["param"], p, row)
            # chosen on CPU-time QPS: wall-clock QPS on this shared box mostly measures the neighbours' load
            ok = row["recall@10"] >= RECALL_TARGET + RECALL_MARGIN
            if ok and (best is None or row["qps_cpu"] > best["qps_cpu"]):
                best, best_index = row, index
        if best_index is not None and best is not None:
            best_index.set_search_param(best["value"])

    for kind, factory, params in configs:
        t = time.perf_counter()
        index = AnnIndex.build(vectors, kind=kind, factory=factory, build_threads=2)
        run(index, params, time.perf_counter() - t)
    for index, params in extra:
        run(index, params, None)  # built elsewhere: build time unknown
    if best is None:  # nothing reached the target: report the most accurate setting
        best = max(sweep, key=lambda r: r["recall@10"])
    report = {
        "n_items": len(vectors),
        "dim": int(vectors.shape[1]),
        "queries": len(queries),
        "threads": 1,
        "index": best["index"],
        "param": best["param"],
        "value": best["value"],
        "qps": best["qps"],
        "qps_max": best["qps_max"],
        "qps_cpu": best["qps_cpu"],
        "recall@10": best["recall@10"],
        "build_s": best["build_s"],
        "exact_qps": len(queries) / exact_s,
        "recall_target": RECALL_TARGET,
        "recall_margin": RECALL_MARGIN,
        "sweep": sweep,
    }
    return report, best_index


QUALITY_DATASETS = ("movielens-100k", "movielens-1m")
# ML-1M is studied on a seeded half of its users (all their ~500k ratings): the full log costs about an hour
# of SASRec and BPR training per run on the shared 2-core machine.
QUALITY_SAMPLE_USERS = {"movielens-1m": 3000}


def bench_quality(settings: RecsysSettings, report: Any, *, datasets: tuple[str, ...]) -> dict[str, Any]:
    """The quality study (``study.py``) on each dataset, one section ``quality.<dataset>`` written as each ends.

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
    return out


def _user_params(users: np.ndarray) -> Callable[[int], dict[str, Any]]:
    def params(i: int) -> dict[str, Any]:
        return {"user_id": int(users[i % len(users)]), "k": 10}

    return params


def bench_serving(
    url: str, *, rates: list[int], duration_s: float, n_users: int = 943, seed: int = 0
) -> dict[str, Any]:
    """Open-loop GET /recommend at each offered rate; users drawn at random (10% unknown ids)."""
    from systems.common.bench import http_load, run_async

    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    runs = []
    for rate in rates:
        users = rng.integers(1, int(n_users * 1.1), size=int(rate * (duration_s + 2)) + 10)
        stages: dict[str, list[float]] = {}

        def on_response(_i: int, body: Any, stages: dict[str, list[float]] = stages) -> None:
            for name, ms in body["timings_ms"].items():
                stages.setdefault(name, []).append(ms)

        res = run_async(
            http_load(
                url + "/recommend",
                rate=rate,
                duration_s=duration_s,
                params=_user_params(users),
                on_response=on_response,
            )
        )
        res.extra["stages_ms"] = {
            n: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99))} for n, v in stages.items()
        }
        runs.append(res)
        out[str(rate)] = res.to_dict()
        log.info("rate %s: %s", rate, res.latency_ms)
    out["_runs"] = runs
    return out


def measure_freshness(
    url: str, settings: RecsysSettings, *, n: int = 20, user_ids: list[int] | None = None, timeout_s: float = 5.0
) -> list[float]:
    """Per trial: view the user's current #1 item; time until /recommend no longer shows it (ms).

    The viewed item must leave the answer (seen items are filtered), so a change is guaranteed once the event
    has gone Kafka → stream processor → online store → API. Time starts just before produce().
    """
    import httpx

    from systems.common.broker import make_producer, publish
    from systems.recsys.stream import BrowseEvent

    producer = make_producer(settings)
    users = user_ids or list(range(1, n + 1))
    out: list[float] = []
    with httpx.Client(timeout=5.0) as client:
        for u in users[:n]:
            before = client.get(url + "/recommend", params={"user_id": u, "k": 10}).json()
            top = before["items"][0]["item_id"]
            t0 = time.perf_counter()
            publish(
                producer,
                settings.events_topic,
                BrowseEvent(user_id=u, item_id=top, event_type="view", ts_ms=int(time.time() * 1000)),
                key=str(u),
            )
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


def start_stream_thread(settings: RecsysSettings, timeout_s: float = 60.0) -> tuple[threading.Thread, threading.Event]:
    """The stream processor in a thread; returns once its consumer group has assigned it its partitions."""
    from systems.recsys.stream import run_stream_processor

    stop, ready = threading.Event(), threading.Event()
    th = threading.Thread(
        target=run_stream_processor, args=(settings, stop), kwargs={"ready": ready}, daemon=True, name="recsys-stream"
    )
    th.start()
    if not ready.wait(timeout_s):
        stop.set()
        raise RuntimeError(f"the stream processor did not join its consumer group within {timeout_s:.0f} s")
    return th, stop


def run_bench(
    settings: RecsysSettings,
    out: Path | None,
    *,
    catalogue: int,
    rates: list[int],
    duration_s: float,
    freshness_n: int,
    retrain: bool,
    workers: int = 2,
    reuse_index: bool = False,
    only: set[str] | None = None,
    quality_datasets: tuple[str, ...] = QUALITY_DATASETS,
) -> dict[str, Any]:
    """Measure the sections (``only`` picks some of quality, ann, serving, freshness, abtest; the last three of
    ann/serving/freshness run together, on one broker and index) into ``out`` (default: the committed
    ``systems/recsys/bench/recsys.json``); sections not measured this time are kept with their provenance."""
    from systems.common.bench import BenchReport, plot_latency_vs_rate
    from systems.common.broker import LocalBroker
    from systems.common.http import ServerProcess, free_port
    from systems.recsys.candidates import AnnIndex
    from systems.recsys.pipeline import Artifacts
    from systems.recsys.scale import grow_catalogue, save_scaled, scale_dir
    from systems.recsys.train import publish_features, train_and_publish

    settings.ensure_dirs()
    wanted = only or {"quality", "ann", "serving", "freshness", "abtest"}
    report = BenchReport("recsys", out=out)
    result: dict[str, Any] = {"system": "recsys", "catalogue": catalogue}
    if "quality" in wanted:
        result["quality"] = bench_quality(settings, report, datasets=quality_datasets)
    if not wanted - {"quality"}:
        return result
    quality_path = settings.model_dir / "quality.json"
    if retrain or not quality_path.exists():
        train_and_publish(settings)
    elif not (settings.feast_dir / "registry.db").exists():
        publish_features(settings)
    if "abtest" in wanted:
        from systems.recsys.experiment import run_simulated_experiment

        result["abtest"] = report.section("abtest", run_simulated_experiment(settings))
    if not wanted & {"ann", "serving", "freshness"}:
        return result

    # ANN at scale: queries are the real users' two-tower vectors; ground truth is exact search.
    from systems.recsys.train import tower_user_vectors

    sdir = scale_dir(settings, catalogue)
    if reuse_index and (sdir / "ann.faiss").exists() and (sdir / "ann_sweep.json").exists():
        # the serving index and sweep of an earlier run (the sweep builds several indexes: minutes at 1 M)
        result["ann"] = json.loads((sdir / "ann_sweep.json").read_text())
        result["ann"]["reused"] = True
    else:
        art = grow_catalogue(Artifacts.load(settings.model_dir), catalogue)
        queries = tower_user_vectors(art.tower, art.histories, art.user_cats)[::3]  # 315 real user vectors
        extra = []
        if (sdir / "hnsw.faiss").exists():  # an HNSW32/efC80 index saved by an earlier version: sweep it too
            extra.append(
                (
                    AnnIndex.load(str(sdir / "hnsw.faiss"), kind="hnsw", factory="HNSW32,efConstruction=80"),
                    (64, 128, 256),
                )
            )
        result["ann"], art.index = bench_ann(art.item_vecs, queries, extra=extra)
        save_scaled(settings, art)  # the winner becomes the serving index
        (sdir / "ann_sweep.json").write_text(json.dumps(result["ann"]))
        del art, extra
    report.section("ann", result["ann"])

    port = free_port()
    with LocalBroker(port=port, log_path=settings.recsys_dir / "broker.log") as broker:
        # the scale and freshness runs exercise the legacy path (ANN index, Feast, stream processor)
        bsettings = settings.model_copy(
            update={
                "kafka_bootstrap": broker.bootstrap,
                "data_dir": settings.data_dir.resolve(),
                "serve_model": "legacy",
            }
        )
        env = {**bsettings.to_env(), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        with ServerProcess(
            "systems.recsys.serve:create_app",
            env={**env, "MLSD_RECSYS_CATALOGUE_SIZE": str(catalogue)},
            log_path=settings.recsys_dir / "api.log",
            timeout_s=600,
            workers=workers,
        ) as server:
            serving = bench_serving(server.url, rates=rates, duration_s=duration_s)
        runs = serving.pop("_runs")
        setup = {"workers": workers, "catalogue": catalogue, "n_candidates": settings.n_candidates}
        result["serving"] = report.section("serving", {**serving, "setup": setup})
        # Freshness on the real catalogue (events name real items), processor in this process.
        th, stop = start_stream_thread(bsettings)
        try:
            with ServerProcess(
                "systems.recsys.serve:create_app", env=env, log_path=settings.recsys_dir / "api.log"
            ) as server:
                fresh = measure_freshness(
                    server.url, bsettings, n=freshness_n, user_ids=list(range(1, freshness_n + 1))
                )
        finally:
            stop.set()
            th.join(timeout=10)
    fr = np.asarray(fresh)
    result["freshness_ms"] = report.section(
        "freshness_ms",
        {
            "p50": float(np.percentile(fr, 50)),
            "p99": float(np.percentile(fr, 99)),
            "max": float(fr.max()),
            "n": len(fr),
        },
    )

    def plot(png: Path) -> None:
        plot_latency_vs_rate(
            runs, png, title=f"recsys /recommend, {catalogue:,}-item catalogue (open loop, {workers} workers)"
        )

    report.plot(plot)
    return result
