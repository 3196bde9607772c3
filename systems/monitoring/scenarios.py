"""Injected scenarios: a prediction stream with a known change, its detection delay and its false-alarm rate.

    mlsd monitoring bench --only scenarios          # every scenario offline, in simulated event time
    mlsd monitoring inject covariate_shift          # the same stream, published to a live system's topics

A scenario is a fraud-like stream (``system="fraud"``, 5 numerical features and a categorical channel, a
calibrated score and a label per prediction that arrives ``label_delay_s`` later) that is clean for
``clean_windows`` windows and then changes in one designed way:

==================== ===================================================================== ===================
scenario             what changes after the change point                                  expected cause
==================== ===================================================================== ===================
covariate_shift      sudden: four of seven features move by one standard deviation         ``drift``
gradual_drift        the same move, ramped in linearly over ``ramp_windows`` windows        ``drift``
concept_drift        features and scores unchanged; labels follow another rule (the fraud  ``performance_drop``
                     pattern moved), so only matured labels can tell
broken_pipeline      one feature arrives null in 60 % of records                            ``data_quality``
latency_regression   the model's ``latency_ms`` grows 6×                                    ``latency``
==================== ===================================================================== ===================

The offline run (:func:`run_scenario`) drives the real stages — :class:`~systems.monitoring.ingest.MonitorState`
(join, windows, drift, metrics) and :class:`~systems.monitoring.alerts.AlertLoop` (signals, incidents) — with
predictions and labels merged in event-time order, and the clock of every alert decision set to the stream's
event time. So a **detection delay** is event time from the change point to the incident of the expected
cause (it includes waiting for the window to close, and for concept drift the label delay), and the
**false-alarm rate** is the share of clean windows in which any warning-or-worse signal fired. Two dummy
detectors are scored on the same windows so the numbers mean something: *always fire* (delay = the first
window after the change closing; false alarms 100 %) and *never fire* (no false alarm, never detects), and a
p-value peer (*KS / chi² at p < 0.05*, the test many monitors use) shows why distances decide here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from systems.common.predictions import LabelRecord, PredictionRecord
from systems.monitoring.alerts import (
    DATA_QUALITY,
    DRIFT,
    LATENCY,
    PERFORMANCE_DROP,
    SEVERITY_RANK,
    AlertLoop,
    AlertPolicy,
    IncidentBook,
    MetricTarget,
)
from systems.monitoring.drift import DriftConfig
from systems.monitoring.ingest import MonitorState
from systems.monitoring.performance import MetricConfig, estimate_gaps
from systems.monitoring.results import WindowResult
from systems.monitoring.windows import Reference, WindowConfig

SYSTEM = "fraud"
MODEL = "fraud-scenario"
NUMERIC = ("amount", "tx_count_1d", "avg_amount_7d", "terminal_risk_7d", "customer_age_days", "hour")
CHANNELS = ("web", "pos", "atm", "app", "phone")
CHANNEL_P = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
WEIGHTS = np.array([0.9, 0.6, 0.0, 1.4, -0.3, 0.0])
"""The true (and, before a concept drift, the model's) log-odds per standardised feature."""
CONCEPT_WEIGHTS = np.array([-0.9, 0.0, 1.2, 0.0, 0.6, 0.8])
"""After a concept drift: fraud follows another pattern the model never learnt."""
INTERCEPT = -4.6  # ≈ 2.5 % positives
SHIFTED = (0, 1, 3, 5)  # covariate shift: amount, tx_count_1d, terminal_risk_7d, hour (4 of 7 features)


@dataclass(frozen=True)
class Scenario:
    name: str
    expected_cause: str
    description: str


SCENARIOS: Mapping[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("covariate_shift", DRIFT, "four of seven features move by 1 σ at once"),
        Scenario("gradual_drift", DRIFT, "the same 1 σ move, ramped in over ramp_windows windows"),
        Scenario("concept_drift", PERFORMANCE_DROP, "labels follow another rule; features and scores do not move"),
        Scenario("broken_pipeline", DATA_QUALITY, "terminal_risk_7d arrives null in 60 % of records"),
        Scenario("latency_regression", LATENCY, "the model's latency_ms grows 6×"),
    )
}


@dataclass(frozen=True, kw_only=True)
class StreamConfig:
    """Geometry of a scenario stream (event time)."""

    window_s: float = 60.0
    rate_per_s: float = 100.0
    """Predictions per event-time second: ``window_s × rate_per_s`` per window."""
    clean_windows: int = 60
    changed_windows: int = 20
    ramp_windows: int = 10
    label_delay_s: float = 120.0
    allowed_lateness_s: float = 10.0
    reference_rows: int = 50_000
    t0_ms: int = 1_700_000_040_000  # a multiple of 60 s
    seed: int = 0

    @property
    def per_window(self) -> int:
        return round(self.window_s * self.rate_per_s)

    @property
    def change_ms(self) -> int:
        return self.t0_ms + round(self.clean_windows * self.window_s * 1000)

    @property
    def end_ms(self) -> int:
        return self.t0_ms + round((self.clean_windows + self.changed_windows) * self.window_s * 1000)


# ================================================================================================ stream


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass
class Batch:
    """One window's worth of rows (standardised features ``z``, raw features, score, label, latency)."""

    ts_ms: np.ndarray
    features: np.ndarray
    channel: np.ndarray
    score: np.ndarray
    label: np.ndarray
    latency_ms: np.ndarray


def _raw(z: np.ndarray) -> np.ndarray:
    """Standardised → plausible units (amount in €, counts, days, hour), so slices and the README read."""
    out = np.empty_like(z)
    out[:, 0] = np.exp(3.5 + 0.8 * z[:, 0])  # amount, lognormal around 33 €
    out[:, 1] = 3.0 + 1.5 * z[:, 1]
    out[:, 2] = 40.0 + 12.0 * z[:, 2]
    out[:, 3] = 0.02 + 0.01 * z[:, 3]
    out[:, 4] = 900.0 + 300.0 * z[:, 4]
    out[:, 5] = 12.0 + 4.0 * z[:, 5]
    return out.round(4)


def window_batch(scenario: str | None, i: int, cfg: StreamConfig, rng: np.random.Generator) -> Batch:
    """Rows of window ``i`` (0-based from ``t0``); ``scenario`` None or a window before the change: clean."""
    n = cfg.per_window
    start = cfg.t0_ms + round(i * cfg.window_s * 1000)
    ts = np.sort(start + rng.integers(0, round(cfg.window_s * 1000), n))
    z = rng.normal(size=(n, len(NUMERIC)))
    after = scenario is not None and i >= cfg.clean_windows
    k = i - cfg.clean_windows
    shift = 0.0
    if after and scenario == "covariate_shift":
        shift = 1.0
    elif after and scenario == "gradual_drift":
        shift = min(1.0, (k + 1) / cfg.ramp_windows)
    z[:, list(SHIFTED)] += shift
    score = _sigmoid(INTERCEPT + z @ WEIGHTS)
    truth = _sigmoid(INTERCEPT + z @ CONCEPT_WEIGHTS) if after and scenario == "concept_drift" else score
    label = (rng.random(n) < truth).astype(np.int8)
    raw = _raw(z)
    if after and scenario == "broken_pipeline":
        raw[rng.random(n) < 0.6, 3] = np.nan
    latency = rng.gamma(4.0, 0.5, n)  # ~2 ms, p99 ≈ 5 ms
    if after and scenario == "latency_regression":
        latency *= 6.0
    channel = rng.choice(len(CHANNELS), size=n, p=CHANNEL_P)
    return Batch(ts, raw, channel, score.round(6), label, latency.round(3))


def _records(b: Batch, *, prefix: str, version: str) -> list[PredictionRecord]:
    out = []
    construct = PredictionRecord.model_construct
    for j in range(len(b.ts_ms)):
        row = b.features[j]
        features: dict[str, Any] = {
            name: (None if math.isnan(v) else float(v)) for name, v in zip(NUMERIC, row.tolist(), strict=True)
        }
        features["channel"] = CHANNELS[int(b.channel[j])]
        s = float(b.score[j])
        out.append(
            construct(
                schema_version=PredictionRecord.model_fields["schema_version"].default,
                system=SYSTEM,
                model_name=MODEL,
                model_version=version,
                prediction_id=f"{prefix}{int(b.ts_ms[j])}-{j}",
                entity_key=None,
                event_ts_ms=int(b.ts_ms[j]),
                features=features,
                output={"score": s, "decision": "block" if s > 0.2 else "approve"},
                latency_ms=float(b.latency_ms[j]),
            )
        )
    return out


def _labels(records: list[PredictionRecord], b: Batch, delay_ms: int) -> list[LabelRecord]:
    construct = LabelRecord.model_construct
    default = LabelRecord.model_fields["schema_version"].default
    return [
        construct(
            schema_version=default,
            system=SYSTEM,
            prediction_id=r.prediction_id,
            entity_key=None,
            label=int(b.label[j]),
            label_ts_ms=r.event_ts_ms + delay_ms,
            event_ts_ms=r.event_ts_ms,
            attributes={},
        )
        for j, r in enumerate(records)
    ]


Event = tuple[int, str, list[PredictionRecord] | list[LabelRecord]]


def stream(scenario: str | None, cfg: StreamConfig, *, version: str = "1") -> Iterator[Event]:
    """``(stream_ts_ms, "predictions" | "labels", records)`` in event-time order, a tenth of a window at a time.

    Labels of a prediction come ``label_delay_s`` after it, so they interleave with later predictions as they
    would on the topics. Deterministic for a seed.
    """
    rng = np.random.default_rng(cfg.seed)
    delay = round(cfg.label_delay_s * 1000)
    step = round(cfg.window_s * 100)  # a tenth of a window
    pending: list[tuple[int, LabelRecord]] = []  # (label ts, label), in ts order per window
    windows = cfg.clean_windows + cfg.changed_windows
    for i in range(windows):
        b = window_batch(scenario, i, cfg, rng)
        recs = _records(b, prefix=f"{scenario or 'clean'}-", version=version)
        pending.extend((lab.label_ts_ms, lab) for lab in _labels(recs, b, delay))
        start = cfg.t0_ms + round(i * cfg.window_s * 1000)
        for s in range(start, start + round(cfg.window_s * 1000), step):
            chunk = [r for r in recs if s <= r.event_ts_ms < s + step]
            due = [lab for ts, lab in pending if ts < s + step]
            if due:
                pending = [(ts, lab) for ts, lab in pending if ts >= s + step]
                yield s + step, "labels", due
            if chunk:
                yield s + step, "predictions", chunk
    if pending:
        yield pending[-1][0] + 1, "labels", [lab for _, lab in pending]


@dataclass(frozen=True)
class ReferenceSet:
    """What the model's validation data says: drift reference, AP overall and per spending band."""

    reference: Reference
    ap: float
    slice_ap: dict[str, float]


def reference_frame(cfg: StreamConfig) -> ReferenceSet:
    """The reference: a clean sample of ``reference_rows`` (the model's validation data), with its realised AP
    overall and per slice (a segment is judged against its own reference, not the aggregate's)."""
    from systems.monitoring.drift import frame_from_records
    from systems.monitoring.performance import average_precision
    from systems.monitoring.windows import amount_band

    rng = np.random.default_rng(cfg.seed + 10_000)
    ref_cfg = dataclasses.replace(cfg, rate_per_s=cfg.reference_rows / cfg.window_s)
    b = window_batch(None, 0, ref_cfg, rng)
    records = _records(b, prefix="ref-", version="1")
    bands = np.array([amount_band(r.features) or "" for r in records])
    slice_ap = {}
    for band in sorted(set(bands.tolist())):
        mask = bands == band
        if b.label[mask].sum() >= 20:  # too few positives for a reference AP: the aggregate's target applies
            slice_ap[f"amount_band={band}"] = average_precision(b.score[mask], b.label[mask])
    return ReferenceSet(Reference.fit(frame_from_records(records)), average_precision(b.score, b.label), slice_ap)


# ============================================================================================== detection


@dataclass
class _WindowLog:
    start_ms: int
    end_ms: int
    causes: set[str]
    pvalue_drift: bool
    emitted_ms: int


def _pvalue_drift(result: WindowResult) -> bool:
    """The p-value peer: any feature column with a KS / chi² p-value under 0.05."""
    for c in (result.drift or {}).get("columns", []):
        if c.get("role") == "prediction":
            continue
        for k in ("ks_p_value", "chisquare_p_value"):
            p = (c.get("stats") or {}).get(k)
            if p is not None and p < 0.05:
                return True
    return False


def policy_for(ref: ReferenceSet, tolerance: float = 0.1) -> AlertPolicy:
    """The alert policy of the scenario runs: AP targets (overall and per slice) from the reference, and a
    15 ms budget for the model's p99 latency."""
    return AlertPolicy(
        min_samples=200,
        targets={"ap": MetricTarget(reference=ref.ap, tolerance=tolerance)},
        slice_targets={f"{k}:ap": MetricTarget(reference=v, tolerance=tolerance) for k, v in ref.slice_ap.items()},
        latency_p99_ms={SYSTEM: 15.0},
        cooldown_s=3600.0,
    )


def run_scenario(
    name: str | None,
    cfg: StreamConfig = StreamConfig(),
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run one scenario (None: a clean stream) through the real stages; returns delays, false alarms, gaps.

    Keys: ``detection_delay_s`` (None if the expected incident never opened), ``false_alarm_rate`` and
    ``false_alarm_windows`` / ``clean_windows`` (warning-or-worse signals in windows that end before the change),
    ``first_cause`` (the first cause to fire after the change), the dummies' and the p-value peer's numbers on
    the same windows, and the CBPE estimate's gaps per window (``cbpe``).
    """
    scenario = SCENARIOS[name] if name is not None else None
    ref = reference_frame(cfg)
    policy = policy_for(ref)
    loop = AlertLoop(IncidentBook(None, cooldown_s=policy.cooldown_s), None, policy)
    logs: dict[tuple[int, int], _WindowLog] = {}
    gaps: list[dict[str, float]] = []
    clock = {"now": cfg.t0_ms}

    def on_result(r: WindowResult) -> None:
        now = clock["now"]
        touched = loop.on_window(r, now_ms=now)  # the incidents this window's (confirmed) signals went to
        fired = {i.cause for i in touched if SEVERITY_RANK[i.severity] >= SEVERITY_RANK["warning"]}
        k = (r.key.start_ms, r.key.end_ms)
        log = logs.get(k)
        if log is None:
            logs[k] = _WindowLog(r.key.start_ms, r.key.end_ms, fired, _pvalue_drift(r), now)
        else:
            log.causes |= fired
        if r.final and r.realised and r.estimated:
            gaps.append({"end_ms": r.key.end_ms, **estimate_gaps(r.realised, r.estimated)})

    wcfg = WindowConfig(
        window_s=cfg.window_s,
        allowed_lateness_s=cfg.allowed_lateness_s,
        label_wait_s=cfg.label_delay_s + 2 * cfg.window_s,
        update_interval_s=0.0,
        metrics=MetricConfig(min_samples=200, bootstrap_resamples=100),
        drift=DriftConfig(),
    )
    state = MonitorState(windows=wcfg, references={(SYSTEM, MODEL): ref.reference}, on_result=on_result)
    t = time.perf_counter()
    records = 0
    total = cfg.clean_windows + cfg.changed_windows
    for ts, kind, batch in stream(name, cfg):
        clock["now"] = ts
        if kind == "predictions":
            state.add_predictions(batch)  # type: ignore[arg-type]
            records += len(batch)
        else:
            state.add_labels(batch)  # type: ignore[arg-type]
        if progress is not None:
            progress(min(total, (ts - cfg.t0_ms) // round(cfg.window_s * 1000)), total)
    clock["now"] = cfg.end_ms + round((cfg.label_delay_s + 3 * cfg.window_s) * 1000)
    state.flush(final=True)
    seconds = time.perf_counter() - t

    change = cfg.change_ms if scenario is not None else cfg.end_ms  # a clean stream is clean throughout
    clean = [w for w in logs.values() if w.end_ms <= change]
    after = sorted((w for w in logs.values() if w.end_ms > change), key=lambda w: w.end_ms)
    false_alarms = sum(1 for w in clean if w.causes)
    out: dict[str, Any] = {
        "scenario": name or "clean",
        "description": scenario.description if scenario else "no change",
        "expected_cause": scenario.expected_cause if scenario else None,
        "records": records,
        "windows": len(logs),
        "clean_windows": len(clean),
        "false_alarm_windows": false_alarms,
        "false_alarm_rate": round(false_alarms / len(clean), 4) if clean else None,
        "false_alarm_causes": sorted({c for w in clean for c in w.causes}),
        "reference_ap": round(ref.ap, 4),
        "seconds": round(seconds, 2),
        "records_per_s": round(records / seconds, 1),
    }
    if scenario is not None:
        expected = [
            i
            for i in loop.incidents()
            if i.cause == scenario.expected_cause and i.opened_ts_ms >= change - round(cfg.window_s * 1000)
        ]
        first = min((i.opened_ts_ms for i in expected), default=None)
        out["detection_delay_s"] = None if first is None else round((first - change) / 1000, 1)
        out["detected"] = first is not None
        fired_after = [(w.emitted_ms, sorted(w.causes)) for w in after if w.causes]
        out["first_cause"] = fired_after[0][1] if fired_after else []
        out["causes_after"] = sorted({c for w in after for c in w.causes})
        first_after = after[0].emitted_ms if after else None
        out["always_fire"] = {
            "detection_delay_s": None if first_after is None else round((first_after - change) / 1000, 1),
            "false_alarm_rate": 1.0 if clean else None,
        }
        out["never_fire"] = {"detection_delay_s": None, "false_alarm_rate": 0.0}
        p_after = [w.emitted_ms for w in after if w.pvalue_drift]
        out["pvalue_peer"] = {
            "detection_delay_s": round((p_after[0] - change) / 1000, 1) if p_after else None,
            "false_alarm_rate": round(sum(w.pvalue_drift for w in clean) / len(clean), 4) if clean else None,
        }
    out["cbpe"] = _cbpe_summary(gaps, change)
    out["incidents"] = [
        {"cause": i.cause, "opened_s": round((i.opened_ts_ms - change) / 1000, 1), "signals": i.signals}
        for i in loop.incidents()
    ]
    loop.close()
    return out


def _cbpe_summary(gaps: list[dict[str, float]], change_ms: int) -> dict[str, Any]:
    """Mean absolute error of the estimate against the realised value, before and after the change."""
    out: dict[str, Any] = {}
    for part, rows in (
        ("before", [g for g in gaps if g["end_ms"] <= change_ms]),
        ("after", [g for g in gaps if g["end_ms"] > change_ms]),
    ):
        metrics = sorted({k for g in rows for k in g if k != "end_ms"})
        out[part] = {
            m: {"mae": round(float(np.mean([abs(g[m]) for g in rows if m in g])), 4), "windows": len(rows)}
            for m in metrics
        }
    return out


def bench_scenarios(
    cfg: StreamConfig = StreamConfig(),
    names: tuple[str, ...] = tuple(SCENARIOS),
    *,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Every scenario on the same stream geometry; ``cbpe`` aggregates the estimate's error over the runs."""
    runs: dict[str, Any] = {}
    for name in names:
        step: Callable[[int, int], None] | None = None
        if progress is not None:
            step = functools.partial(progress, name)
        runs[name] = run_scenario(name, cfg, progress=step)
    maes = [
        v["mae"]
        for name, r in runs.items()
        if name != "concept_drift"
        for part in ("before", "after")
        for m, v in r["cbpe"][part].items()
        if m == "ap"
    ]
    concept = runs.get("concept_drift", {}).get("cbpe", {}).get("after", {}).get("ap", {})
    return {
        "config": dataclasses.asdict(cfg),
        "scenarios": runs,
        "cbpe": {
            "metric": "ap",
            "mae": round(float(np.mean(maes)), 4) if maes else None,
            "mae_concept_drift": concept.get("mae"),
            "note": "estimate vs realised AP per final window; concept drift is CBPE's blind spot (no score change)",
        },
    }


# ================================================================================================== live


def _encode(r: PredictionRecord | LabelRecord) -> bytes:
    import orjson

    return orjson.dumps(r.model_dump())


def _service_watermark_ms(service_url: str) -> int:
    """The largest window end the service has closed for the scenario's system (0 when none)."""
    import httpx

    try:
        series = httpx.get(service_url + "/api/summary", timeout=5.0).json().get("series", [])
    except (httpx.HTTPError, ValueError):
        return 0
    return max((s["window"]["end_ms"] for s in series if s.get("system") == SYSTEM), default=0)


def install_reference(settings: Any, cfg: StreamConfig, service_url: str | None) -> ReferenceSet:
    """Write the scenario model's reference (with its AP targets) and ask the service to load it."""
    import httpx

    from systems.common.errors import MlsdError
    from systems.monitoring.windows import reference_path

    ref = reference_frame(cfg)
    reference = ref.reference.with_metrics({"ap": ref.ap}, {f"{k}:ap": v for k, v in ref.slice_ap.items()})
    reference.save(reference_path(settings.references, SYSTEM, MODEL))
    if service_url is not None:
        headers = {"Authorization": f"Bearer {settings.admin_token}"} if settings.admin_token else {}
        r = httpx.post(service_url + "/api/references/reload", headers=headers, timeout=10.0)
        if r.status_code != 200:
            raise MlsdError(f"the service refused the reference reload: {r.status_code} {r.text[:200]}")
    return ref


def inject_live(
    settings: Any,
    name: str | None,
    *,
    service_url: str | None,
    clean_windows: int = 5,
    changed_windows: int = 5,
    rate_per_s: float = 100.0,
    speed: float = 10.0,
    model_version: str = "1",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Publish a scenario to the live topics (predictions; labels on the first label topic), paced so that
    event time runs ``speed`` times faster than the wall clock and starts after the service's watermark.

    Returns counts, seconds and the change point (event time, and the wall time it was published at).
    """
    from systems.common.broker import make_producer

    window_ms = round(settings.window_s * 1000)
    start = max(int(time.time() * 1000), _service_watermark_ms(service_url) + window_ms if service_url else 0)
    t0 = (start // window_ms + 1) * window_ms
    cfg = StreamConfig(
        window_s=settings.window_s,
        rate_per_s=rate_per_s,
        clean_windows=clean_windows,
        changed_windows=changed_windows,
        allowed_lateness_s=settings.allowed_lateness_s,
        label_delay_s=2 * settings.window_s,  # labels two windows after their predictions
        t0_ms=t0,
        seed=int(time.time()) % 1000,
    )
    install_reference(settings, cfg, service_url)
    producer = make_producer(settings)
    label_topic = settings.labels[0]
    counts = {"predictions": 0, "labels": 0}
    wall0 = time.time()
    change_wall = None
    try:
        for ts, kind, batch in stream(name, cfg, version=model_version):
            due = wall0 + (ts - t0) / 1000 / speed
            if due > time.time():
                time.sleep(due - time.time())
            if change_wall is None and ts > cfg.change_ms:
                change_wall = time.strftime("%H:%M:%S")
            topic = settings.predictions_topic if kind == "predictions" else label_topic
            for r in batch:
                producer.send(topic, _encode(r), key=(r.prediction_id or "").encode())
            counts[kind] += len(batch)
            if progress is not None:
                window = (ts - t0) // window_ms
                phase = "clean" if ts <= cfg.change_ms else (name or "clean")
                progress(f"window {window}/{clean_windows + changed_windows} ({phase}): {counts['predictions']:,} sent")
        producer.flush()
    finally:
        producer.close()
    return {**counts, "seconds": time.time() - wall0, "change_ts_ms": cfg.change_ms, "change_wall": change_wall}


def bench_alert_latency(
    *,
    window_s: float = 10.0,
    allowed_lateness_s: float = 2.0,
    clean_windows: int = 3,
    rate_per_s: float = 400.0,
    timeout_s: float = 90.0,
    repeats: int = 3,
) -> dict[str, Any]:
    """Wall-clock seconds from the first drifted record published to the drift incident opened, live.

    A tansu broker and the service's ingest (:class:`~systems.monitoring.serve.LiveMonitor`, two consumer-group
    members) run in this process; records carry wall-clock event times and are published in real time, clean
    for ``clean_windows`` windows and then covariate-shifted. Target: one window plus 5 s (the window has to
    close, which takes its length plus the allowed lateness after its first drifted record in the worst case).
    Median of ``repeats`` runs, each on a fresh broker.
    """
    import tempfile
    from pathlib import Path

    from systems.common.broker import LocalBroker, make_producer
    from systems.common.proc import free_port
    from systems.monitoring.serve import LiveMonitor
    from systems.monitoring.settings import MonitoringSettings

    runs = []
    for rep in range(repeats):
        with tempfile.TemporaryDirectory() as tmp, LocalBroker(free_port()) as broker:
            settings = MonitoringSettings(
                kafka_bootstrap=broker.bootstrap,
                data_dir=Path(tmp),
                window_s=window_s,
                allowed_lateness_s=allowed_lateness_s,
            ).scoped()
            now = int(time.time() * 1000)
            window_ms = round(window_s * 1000)
            cfg = StreamConfig(
                window_s=window_s,
                rate_per_s=rate_per_s,
                clean_windows=clean_windows,
                changed_windows=3,
                allowed_lateness_s=allowed_lateness_s,
                t0_ms=(now // window_ms + 2) * window_ms,
                reference_rows=20_000,
                seed=rep,
            )
            install_reference(settings, cfg, None)
            live = LiveMonitor(settings, lookup=lambda _m, _r: [], poll_s=0.2)
            live.start()
            try:
                if not live.ready.wait(60):
                    raise RuntimeError("the monitoring ingest did not get its partitions within 60 s")
                producer = make_producer(settings)
                first_drift: float | None = None
                opened: float | None = None
                for ts, kind, batch in stream("covariate_shift", cfg):
                    if kind != "predictions":
                        continue  # drift needs no labels
                    while time.time() * 1000 < ts:  # real time: event time is the wall clock
                        time.sleep(min(0.05, max(0.0, ts / 1000 - time.time())))
                    for r in batch:
                        producer.send(settings.predictions_topic, _encode(r), key=str(r.prediction_id).encode())
                    producer.flush()
                    if first_drift is None and ts > cfg.change_ms:
                        first_drift = time.time()
                    if first_drift is not None and any(i.cause == DRIFT for i in live.loop.incidents()):
                        opened = time.time()
                        break
                deadline = time.time() + timeout_s
                while opened is None and time.time() < deadline:
                    if any(i.cause == DRIFT for i in live.loop.incidents()):
                        opened = time.time()
                    time.sleep(0.05)
                producer.close()
            finally:
                live.stop()
                live.loop.close()
            if first_drift is None or opened is None:
                raise RuntimeError("no drift incident opened")
            runs.append(round(opened - first_drift, 2))
    return {
        "latency_s": float(np.median(runs)),
        "runs_s": runs,
        "window_s": window_s,
        "allowed_lateness_s": allowed_lateness_s,
        "target_s": window_s + 5.0,
        "rate_per_s": rate_per_s,
        "note": "first drifted record published -> drift incident open, service path, median of runs",
    }
