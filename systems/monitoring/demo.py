"""The loop, end to end on one laptop: drift injected into fraud → alert → retrain request → new champion →
the metric recovers.

    mlsd monitoring demo          # ~3 min; also the monitoring part of `mlsd demo`

Everything is the real thing, in one process and one tansu broker: fraud's scorer (``stream.run_scorer``),
label sink and retrain listener (``feedback.py``); monitoring's ingest, windows, alert loop and registry watch
(``serve.LiveMonitor``); one MLflow sqlite registry both systems use. What is staged:

1. a simulated fraud world; a champion trained on it and registered; monitoring's reference for that model
   is a healthy period after training (its features and the champion's scores), with the champion's AP there
   as the performance target;
2. the world is replayed day by day. From ``drift_day`` on, every amount is multiplied by ``amount_factor``
   (a currency change upstream): the champion's learnt "large amount" signal now fires on ordinary
   purchases, so its precision collapses while the features shift;
3. monitoring sees the amount features drift the next day, and — a week later in event time, when the
   chargebacks mature — the realised AP drop (a ``performance_drop`` incident, critical), which asks for a
   retrain; fraud defers it until labels from after the change point have matured, retrains on them, and the
   gate promotes the candidate if it beats the champion on the same recent day; scorers swap to it;
4. the registry watch finds the new version and re-baselines it (its first window becomes its reference:
   it was trained on the new world), so three windows without drift resolve the drift incident as recovered;
   a week after that, the new version's windows have matured labels, and three clean ones resolve the
   performance incident as recovered.

Event time is compressed (a simulated day takes a few seconds), so the replay waits at each day boundary
until the scorer has scored the day and monitoring has ingested it; while a retrain request is pending it
also waits for the listener (in production the world goes on, and the retrain lands a little later in
event time). Timings are reported in both clocks.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from systems.common.errors import MlsdError

DAY_S = 86_400


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    n_customers: int = 3_000
    n_terminals: int = 6_000
    n_days: int = 58
    train_start_day: int = 10
    replay_day: int = 26
    """First replayed day (the champion's training, calibration and label delay come before)."""
    drift_day: int = 29
    amount_factor: float = 3.0
    last_day: int = 57
    retrain: dict[str, Any] = field(
        default_factory=lambda: {"train_days": 4, "calib_days": 1, "eval_days": 1, "kind": "xgboost"}
    )
    fit_params: dict[str, Any] = field(
        default_factory=lambda: {"xgb_params": {"n_estimators": 150, "learning_rate": 0.1}}
    )
    tolerance: float = 0.1
    seed: int = 0


@dataclass
class LoopResult:
    timeline: list[dict[str, Any]] = field(default_factory=list)
    windows: list[dict[str, Any]] = field(default_factory=list)
    incidents: list[dict[str, Any]] = field(default_factory=list)
    reference_ap: float = 0.0
    recovered: bool | None = None
    seconds: float = 0.0


def _wait(check: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise MlsdError(f"the loop demo timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def _reference(model: Any, frame: pd.DataFrame, lo: int, hi: int) -> tuple[Any, float]:
    """Monitoring's reference for the champion: days ``lo..hi`` as prediction records would carry them."""
    from systems.fraud.features import FEATURES
    from systems.monitoring.performance import average_precision
    from systems.monitoring.windows import Reference, amount_band

    part = frame[(frame["day"] >= lo) & (frame["day"] <= hi)]
    X = part[FEATURES].to_numpy(np.float64)
    score = model.predict_proba(X)
    y = part["fraud"].to_numpy()
    rows = pd.DataFrame(X, columns=FEATURES)
    rows["output.score"] = score
    rows["output.decision"] = np.where(score >= model.threshold, "block", "approve")
    ap = average_precision(score, y)
    bands = np.array([amount_band({"amount": a}) or "" for a in part["amount"].tolist()])
    slices = {}  # each spending band against its own reference (AP depends on a segment's prevalence)
    for band in sorted(set(bands.tolist())):
        mask = bands == band
        if y[mask].sum() >= 20:
            slices[f"amount_band={band}:ap"] = average_precision(score[mask], y[mask])
    return Reference.fit(rows).with_metrics({"ap": ap}, slices), ap


def run_loop(cfg: LoopConfig = LoopConfig(), *, say: Callable[[str], None] = print) -> LoopResult:
    """Run the loop (see the module docstring); ``say`` gets one line per event."""
    from systems.common.broker import LocalBroker, create_topics, make_producer
    from systems.common.proc import free_port
    from systems.fraud.data import SimulatorConfig, simulate, write_dataset
    from systems.fraud.feedback import RetrainOutcome, run_label_sink, run_retrain_listener
    from systems.fraud.replay import day_start_s, replay
    from systems.fraud.settings import FraudSettings
    from systems.fraud.stream import Scorer, fraud_topics, run_scorer
    from systems.fraud.train import SplitConfig, add_features, train_champion
    from systems.monitoring.serve import LiveMonitor
    from systems.monitoring.settings import MonitoringSettings
    from systems.monitoring.windows import reference_path

    t_start = time.perf_counter()
    result = LoopResult()

    def event(what: str, sim_day: float | None = None, **extra: Any) -> None:
        wall = time.perf_counter() - t_start
        result.timeline.append({"wall_s": round(wall, 1), "sim_day": sim_day, "event": what, **extra})
        say(f"[{wall:6.1f} s · day {'-' if sim_day is None else f'{sim_day:.0f}'}] {what}")

    work = Path(tempfile.mkdtemp(prefix="mlsd-loop-"))
    sim = simulate(
        SimulatorConfig(
            n_customers=cfg.n_customers,
            n_terminals=cfg.n_terminals,
            n_days=cfg.n_days,
            compromised_terminals_per_day=1,
            compromised_customers_per_day=2,
            seed=cfg.seed,
        )
    )
    tx = sim.transactions
    ds = write_dataset(sim, work / "datasets" / "fraud")
    first_s = day_start_s(tx, 0)
    sim_day = tx["day"]
    drifted = tx.copy()
    drifted.loc[sim_day >= cfg.drift_day, "amount"] = (
        drifted.loc[sim_day >= cfg.drift_day, "amount"] * cfg.amount_factor
    ).round(2)
    event(f"simulated {len(tx):,} transactions over {cfg.n_days} days ({sim.fraud_rate:.2%} fraud)")

    with LocalBroker(free_port(), log_path=work / "tansu.log") as broker:
        fraud = FraudSettings(
            data_dir=work,
            kafka_bootstrap=broker.bootstrap,
            history_path=ds / "transactions.parquet",
            alias_poll_s=1.0,
        )
        fraud.ensure_dirs()
        fraud.system_dir("fraud").mkdir(parents=True, exist_ok=True)
        frame = add_features(tx)
        split = SplitConfig(start_day=cfg.train_start_day, train_days=9, calib_days=2, test_days=7)
        model, v1, _ = train_champion(fraud, frame, split, fit_params=cfg.fit_params)
        periods = split.periods()
        lo, hi = periods["delay"]  # after training, before the replay: a healthy period with known labels
        reference, ref_ap = _reference(model, frame, lo, hi)
        result.reference_ap = ref_ap
        monitoring = MonitoringSettings(
            data_dir=work,
            kafka_bootstrap=broker.bootstrap,
            window_s=float(DAY_S),
            allowed_lateness_s=3_600.0,
            api_port=free_port(),
        )
        reference.save(reference_path(monitoring.references, "fraud", fraud.model_name))
        event(
            f"champion v{v1} registered; reference = days {lo}..{hi}, AP {ref_ap:.3f} "
            f"(alert when a window's whole 95 % CI is below {ref_ap - cfg.tolerance:.3f})"
        )

        create_topics(fraud, fraud_topics(fraud))
        live = LiveMonitor(monitoring, poll_s=0.5, registry_poll_s=1.0, tolerance=cfg.tolerance)
        live.start()
        stop = threading.Event()
        scorer_box: dict[str, Scorer] = {}
        outcomes: list[RetrainOutcome] = []
        start_s = day_start_s(tx, cfg.replay_day)
        threads = [
            threading.Thread(
                target=run_scorer,
                kwargs={
                    "settings": fraud,
                    "history": fraud.history,
                    "warm_until_s": start_s,
                    "stop": stop,
                    "on_ready": lambda s: scorer_box.setdefault("scorer", s),
                },
                daemon=True,
            ),
            threading.Thread(target=run_label_sink, args=(fraud, stop), daemon=True),
            threading.Thread(
                target=run_retrain_listener,
                args=(fraud, stop),
                kwargs={"on_outcome": outcomes.append, "retrain_kwargs": {**cfg.retrain, "fit_params": cfg.fit_params}},
                daemon=True,
            ),
        ]
        for t in threads:
            t.start()
        try:
            _wait(lambda: "scorer" in scorer_box and live.ready.is_set(), 120, "the scorer and monitoring to join")
            scorer = scorer_box["scorer"]
            producer = make_producer(fraud)
            sent = 0
            seen: set[tuple[str, str]] = set()
            reported: set[str] = set()
            for day in range(cfg.replay_day, cfg.last_day + 1):
                day_s = day_start_s(tx, day)
                if day == cfg.drift_day:
                    event(f"drift injected: every amount × {cfg.amount_factor:g} from now on", day)
                r = replay(fraud, producer, drifted, start_s=day_s, end_s=day_s + DAY_S)
                sent += r.transactions
                target = sent
                _wait(lambda: scorer.scored >= target, 120, f"the scorer to score day {day}")  # noqa: B023
                _wait(lambda: live.state.counters.predictions >= target, 120, f"monitoring to ingest {day}")  # noqa: B023
                _report(live, day, seen, reported, outcomes, event, result)
                pending = [i for i in live.loop.incidents(status="open") if i.retrain_request_id]
                if pending and not any(o.status in ("retrained", "failed") for o in outcomes):
                    deferred = [o for o in outcomes if o.status == "deferred"]
                    if not deferred:  # let the listener read the request before the world moves on
                        _wait(lambda: bool(outcomes), 60, "the retrain listener to read the request")
                        _report(live, day, seen, reported, outcomes, event, result)
                    elif any(o.status == "deferred" for o in outcomes):
                        # give the deferred retry a chance once the day's labels are stored
                        _wait_retry(outcomes, 8.0)
                        _report(live, day, seen, reported, outcomes, event, result)
                retrained = [o for o in outcomes if o.status == "retrained"]
                if retrained and retrained[-1].promoted and scorer.model.version != retrained[-1].version:
                    new = retrained[-1].version
                    _wait(lambda: scorer.model.version == new, 30, "the scorer to swap")  # noqa: B023
                    event(f"scorer swapped to v{scorer.model.version}", day)
                inc = next((i for i in live.loop.incidents() if i.cause == "performance_drop"), None)
                if inc is not None and inc.recovered is not None and inc.status == "resolved":
                    break
            producer.close()
            live.state.flush(final=False)
            _report(live, cfg.last_day, seen, reported, outcomes, event, result)
        finally:
            stop.set()
            live.stop()
            for t in threads:
                t.join(timeout=20)
        result.incidents = [i.to_dict() for i in live.loop.incidents()]
        perf = next((i for i in live.loop.incidents() if i.cause == "performance_drop"), None)
        result.recovered = None if perf is None else perf.recovered
        result.windows = _windows(live, first_s)
        live.loop.close()
    result.seconds = round(time.perf_counter() - t_start, 1)
    return result


def _wait_retry(outcomes: list[Any], timeout_s: float) -> None:
    n = len(outcomes)
    deadline = time.monotonic() + timeout_s
    while len(outcomes) == n and time.monotonic() < deadline:
        time.sleep(0.1)


def _report(
    live: Any,
    day: int,
    seen: set[tuple[str, str]],
    reported: set[str],
    outcomes: list[Any],
    event: Callable[..., None],
    result: LoopResult,
) -> None:
    """New incident events and listener outcomes since the last call, as timeline lines."""
    for inc in live.loop.incidents():
        for e in inc.events:
            key = (inc.incident_id, f"{e['ts_ms']}:{e['kind']}")
            if key in seen:
                continue
            seen.add(key)
            if inc.severity == "info":
                continue
            event(f"incident {inc.cause} ({inc.severity}) {e['kind']}: {e['detail'][:110]}", day)
    for o in outcomes:
        k = f"{o.request_id}:{o.status}"
        if k not in reported:
            reported.add(k)
            extra = f" v{o.version}, promoted {o.promoted}" if o.version else ""
            event(f"fraud retrain listener: {o.status}{extra} ({o.detail[:90]})", day)


def _windows(live: Any, first_s: int) -> list[dict[str, Any]]:
    """Per closed window (one simulated day): version, records, realised AP with CI, estimated AP, drift share."""
    out = []
    for r in sorted(live.state.latest.values(), key=lambda r: (r.key.start_ms, r.key.model_version)):
        if r.key.system != "fraud":
            continue
        realised = {m.name: m for m in r.realised}
        estimated = {m.name: m for m in r.estimated}
        ap = realised.get("ap")
        out.append(
            {
                "day": (r.key.start_ms // 1000 - first_s) // DAY_S,
                "version": r.key.model_version,
                "count": r.count,
                "drift_share": (r.drift or {}).get("share_of_drifted_columns"),
                "ap": None if ap is None else ap.value,
                "ap_low": None if ap is None else ap.low,
                "ap_high": None if ap is None else ap.high,
                "labelled": r.labelled,
                "estimated_ap": None if "ap" not in estimated else estimated["ap"].value,
            }
        )
    return out


def summarize(result: LoopResult, cfg: LoopConfig) -> dict[str, Any]:
    """The loop's timings (simulated days after the drift, wall seconds) and AP before, during and after."""

    def first(prefix: str) -> dict[str, Any] | None:
        return next((e for e in result.timeline if e["event"].startswith(prefix)), None)

    drift = first("drift injected")
    marks = {
        "performance_incident": first("incident performance_drop (critical) opened"),
        "retrained": first("fraud retrain listener: retrained"),
        "swapped": first("scorer swapped"),
        "recovered": first("incident performance_drop (critical) recovered"),
        "drift_recovered": first("incident drift (warning) recovered"),
    }
    out: dict[str, Any] = {"drift_day": cfg.drift_day, "amount_factor": cfg.amount_factor}
    for name, e in marks.items():
        out[f"{name}_days_after_drift"] = None if e is None or drift is None else e["sim_day"] - drift["sim_day"]
        out[f"{name}_wall_s_after_drift"] = (
            None if e is None or drift is None else round(e["wall_s"] - drift["wall_s"], 1)
        )
    perf = next((i for i in result.incidents if i["cause"] == "performance_drop"), None)
    new = None if perf is None else perf.get("retrained_version")

    def median_ap(rows: list[dict[str, Any]]) -> float | None:
        values = [w["ap"] for w in rows if w["ap"] is not None]
        return None if not values else round(float(np.median(values)), 4)

    w = result.windows
    out.update(
        {
            "reference_ap": round(result.reference_ap, 4),
            "alert_bound": round(result.reference_ap - cfg.tolerance, 4),
            "ap_before_drift": median_ap([x for x in w if x["day"] < cfg.drift_day]),
            "ap_champion_after_drift": median_ap([x for x in w if x["day"] >= cfg.drift_day and x["version"] == "1"]),
            "ap_retrained": median_ap([x for x in w if x["version"] == new]),
            "estimated_ap_champion_after_drift": median_ap(
                [
                    {"ap": x["estimated_ap"]}
                    for x in w
                    if x["day"] >= cfg.drift_day and x["version"] == "1" and x["estimated_ap"] is not None
                ]
            ),
            "retrained_version": new,
            "recovered": result.recovered,
            "drift_recovered": next((i["recovered"] for i in result.incidents if i["cause"] == "drift"), None),
            "retrain_requests": len({i["retrain_request_id"] for i in result.incidents if i["retrain_request_id"]}),
            "seconds": result.seconds,
            "timeline": result.timeline,
            "windows": [{k: x[k] for k in ("day", "version", "ap", "ap_low", "ap_high", "estimated_ap")} for x in w],
        }
    )
    return out
