"""Alert logic: which windows raise which signals, and how signals become incidents and retrain requests.

What these guard: a drifted, degraded or broken window raises the right cause and a clean one raises nothing;
a performance alert needs the whole confidence interval beyond the bound; a storm is one incident and one
retrain request; cool-down, resolution and reopening; a restart neither forgets incidents nor re-publishes;
Alertmanager's webhook lands in the same book; the rule file and the compose configs agree with the code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
import yaml
from pydantic import ValidationError

from systems.common.predictions import RetrainRequest
from systems.monitoring import prometheus as prom
from systems.monitoring.alerts import (
    DATA_QUALITY,
    DEFAULT_SEVERITY,
    DRIFT,
    ESTIMATED_DROP,
    EXPORTED_METRICS,
    FEATURE_DRIFT,
    PERFORMANCE_DROP,
    PREDICTION_DRIFT,
    SLICE_DEGRADED,
    AlertLoop,
    AlertPolicy,
    IncidentBook,
    MetricTarget,
    RetrainPublisher,
    RetrainWatcher,
    Signal,
    drift_score,
    evaluate,
    evaluated_causes,
)
from systems.monitoring.drift import DriftConfig, detect_drift, fit_schema
from systems.monitoring.results import Metric, WindowKey, WindowResult

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
MIN = 60_000  # one window, ms
T0 = 1_700_000_000_000


class FakeProducer:
    """Records what would have been sent; ``fail`` makes flush raise like a dead broker."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []
        self.fail = False

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.sent.append((topic, value, key))

    def flush(self, timeout_s: float = 30.0) -> None:
        if self.fail:
            from systems.common.broker import BrokerError

            self.sent.clear()
            raise BrokerError("1 messages not delivered")

    def close(self) -> None:
        pass

    def requests(self) -> list[RetrainRequest]:
        return [RetrainRequest.model_validate_json(v) for _, v, _ in self.sent]


def key(version: str = "1", i: int = 0) -> WindowKey:
    return WindowKey("fraud", "fraud-xgb", version, T0 + i * MIN, T0 + (i + 1) * MIN)


# ----------------------------------------------------------------------------------------- windows


def _frame(rng: np.random.Generator, n: int, *, shift: float = 0.0, score_shift: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "amount": rng.normal(100 + 40 * shift, 40, n),
            "hour": rng.normal(12 + 6 * shift, 6, n),
            "tx_count": rng.normal(5 + 3 * shift, 3, n),
            "channel": rng.choice(["web", "pos", "atm"], n, p=[0.5, 0.3, 0.2]),
            "output.score": rng.beta(2 + 6 * score_shift, 8, n),
        }
    )


@pytest.fixture(scope="module")
def reference() -> tuple[Any, Any]:
    ref = _frame(np.random.default_rng(0), 5000)
    schema = fit_schema(ref)
    return schema, schema.summarize(ref)


def window(reference: tuple[Any, Any], current: pd.DataFrame, **kw: Any) -> WindowResult:
    schema, ref = reference
    report = detect_drift(ref, schema.summarize(current))
    return WindowResult(key=kw.pop("key", key()), count=len(current), drift=report.to_dict(), **kw)


def causes(signals: list[Signal]) -> list[str]:
    return sorted(s.cause for s in signals)


def test_drifted_window_raises_dataset_drift_and_clean_window_nothing(reference) -> None:
    rng = np.random.default_rng(1)
    drifted = evaluate(window(reference, _frame(rng, 1000, shift=1.0)))
    assert causes(drifted) == [DRIFT]  # per-feature drift is evidence of the dataset signal, not extra signals
    (s,) = drifted
    assert s.severity == "warning" and s.subject == "dataset" and s.value is not None and s.value >= 0.5
    assert s.window_start_ms == T0 and "amount" in str(s.evidence["drifted_columns"])

    clean = window(reference, _frame(rng, 1000))
    assert evaluate(clean) == []
    assert {DRIFT, FEATURE_DRIFT, PREDICTION_DRIFT, DATA_QUALITY} <= evaluated_causes(clean)


def test_window_under_the_minimum_sample_guard_is_not_judged(reference) -> None:
    small = window(reference, _frame(np.random.default_rng(2), 150, shift=1.0))
    assert evaluate(small) == []
    assert evaluated_causes(small) == set()  # and it does not count as a clean window either
    assert causes(evaluate(small, AlertPolicy(min_samples=100))) == [DRIFT]


def test_score_distribution_drift_is_a_prediction_anomaly(reference) -> None:
    signals = evaluate(window(reference, _frame(np.random.default_rng(3), 1000, score_shift=1.0)))
    assert causes(signals) == [PREDICTION_DRIFT]
    assert signals[0].subject == "score" and signals[0].value is not None and signals[0].value >= 1


def test_one_drifted_feature_is_info_only(reference) -> None:
    current = _frame(np.random.default_rng(4), 1000)
    current["amount"] += 80  # 2 std: drifted; 1 of 4 features is below the dataset share
    (s,) = evaluate(window(reference, current))
    assert (s.cause, s.subject, s.severity) == (FEATURE_DRIFT, "amount", "info")


def test_null_spike_and_unseen_categories_break_data_quality(reference) -> None:
    current = _frame(np.random.default_rng(5), 1000)
    current.loc[: len(current) // 3, "tx_count"] = np.nan  # a broken feature pipeline emitting nulls
    current.loc[:99, "channel"] = "voice"  # a category the model never saw (10 %)
    signals = evaluate(window(reference, current))  # data quality derived from the drift report
    dq = sorted(s.subject for s in signals if s.cause == DATA_QUALITY)
    assert dq == ["channel:unseen", "tx_count:nulls"]
    assert all(s.severity == "critical" for s in signals if s.cause == DATA_QUALITY)

    explicit = WindowResult(
        key=key(), count=500, data_quality={"features": {"amount": {"null_share": 0.12, "reference_null_share": 0.01}}}
    )
    (s,) = evaluate(explicit)
    assert s.subject == "amount:nulls" and s.value == pytest.approx(0.11)
    fine = WindowResult(
        key=key(), count=500, data_quality={"features": {"amount": {"null_share": 0.1, "reference_null_share": 0.05}}}
    )
    assert evaluate(fine) == []


AP = MetricTarget(reference=0.80, tolerance=0.05)  # bound 0.75
FPR = MetricTarget(reference=0.02, tolerance=0.01, higher_is_better=False)  # bound 0.03
POLICY = AlertPolicy(targets={"average_precision": AP, "fpr": FPR})


def test_realised_drop_needs_the_whole_ci_beyond_the_bound() -> None:
    def realised(*metrics: Metric) -> list[Signal]:
        return evaluate(WindowResult(key=key(), count=1000, realised=list(metrics)), POLICY)

    assert realised(Metric("average_precision", 0.70, 0.60, 0.80, n=400)) == []  # point below, CI crosses
    (s,) = realised(Metric("average_precision", 0.70, 0.66, 0.74, n=400))
    assert (s.cause, s.severity, s.subject, s.threshold) == (PERFORMANCE_DROP, "critical", "average_precision", 0.75)
    assert s.evidence["high"] == 0.74 and s.evidence["reference"] == 0.80
    assert realised(Metric("average_precision", None, n=50)) == []  # under the minimum-sample guard
    assert realised(Metric("average_precision", 0.70, 0.66, 0.74, n=199)) == []
    assert realised(Metric("recall", 0.10, 0.05, 0.15, n=400)) == []  # no target: shown, never alerted
    # lower is better: the CI's *low* end must be above the ceiling
    assert realised(Metric("fpr", 0.05, 0.02, 0.08, n=400)) == []
    assert causes(realised(Metric("fpr", 0.05, 0.04, 0.06, n=400))) == [PERFORMANCE_DROP]


def test_estimated_drop_fires_before_labels() -> None:
    result = WindowResult(key=key(), count=1000, estimated=[Metric("average_precision", 0.70, n=1000)])
    (s,) = evaluate(result, POLICY)
    assert (s.cause, s.severity) == (ESTIMATED_DROP, "warning")
    assert ESTIMATED_DROP in evaluated_causes(result, POLICY)
    assert PERFORMANCE_DROP not in evaluated_causes(result, POLICY)  # no labels: performance not judged


def test_slice_degraded_only_while_the_aggregate_is_fine() -> None:
    bad_slice = Metric("average_precision", 0.55, 0.45, 0.65, n=150)
    fine = WindowResult(
        key=key(),
        count=2000,
        realised=[Metric("average_precision", 0.79, 0.76, 0.82, n=1500)],
        slices={
            "spending_band=low": [bad_slice],
            "spending_band=high": [Metric("average_precision", 0.8, 0.7, 0.9, 150)],
        },
    )
    (s,) = evaluate(fine, POLICY)
    assert (s.cause, s.subject, s.severity) == (SLICE_DEGRADED, "spending_band=low:average_precision", "warning")
    assert s.evidence["aggregate"] == 0.79

    both = WindowResult(
        key=key(),
        count=2000,
        realised=[Metric("average_precision", 0.60, 0.55, 0.65, n=1500)],
        slices={"spending_band=low": [bad_slice]},
    )
    assert causes(evaluate(both, POLICY)) == [PERFORMANCE_DROP]  # the aggregate alert covers it


def test_drift_score_is_at_least_one_exactly_when_drifted() -> None:
    assert drift_score({"method": "wasserstein", "statistic": 0.25, "threshold": 0.1}) == pytest.approx(2.5)
    assert drift_score({"method": "ks", "statistic": 0.01, "threshold": 0.05}) == pytest.approx(5.0)
    assert drift_score({"method": "ks", "statistic": 0.5, "threshold": 0.05}) == pytest.approx(0.1)
    assert drift_score({"method": "ks", "statistic": 0.0, "threshold": 0.05}) == 1e6
    assert drift_score({"method": "psi", "statistic": None, "threshold": 0.1}) is None


# --------------------------------------------------------------------------------------- incidents


def drift_window(i: int, version: str = "1", *, drifted: bool = True) -> WindowResult:
    report = {
        "dataset_drift": drifted,
        "share_of_drifted_columns": 0.75 if drifted else 0.0,
        "drift_share": 0.5,
        "columns": [],
    }
    return WindowResult(key=key(version, i), count=1000, drift=report)


def dq_window(i: int, null_share: float) -> WindowResult:
    dq = {"features": {"tx_count": {"null_share": null_share, "reference_null_share": 0.0}}}
    return WindowResult(key=key("1", i), count=1000, data_quality=dq)


def make_loop(path: Path | None, producer: FakeProducer, **policy: Any) -> AlertLoop:
    p = AlertPolicy(**{"cooldown_s": 600.0, "resolve_after_windows": 3, **policy})
    book = IncidentBook(path, cooldown_s=p.cooldown_s, resolve_after_windows=p.resolve_after_windows)
    return AlertLoop(book, RetrainPublisher(producer, topic="retrain.requests"), p)


def test_a_storm_is_one_incident_and_one_retrain_request_then_cooldown_and_resolution() -> None:
    producer = FakeProducer()
    loop = make_loop(None, producer)
    for i in range(50):  # 50 windows in a row, each raising the same drift signal
        loop.on_window(drift_window(i), now_ms=T0 + i * MIN)
    (inc,) = loop.incidents()
    assert (inc.cause, inc.status, inc.signals, inc.severity) == (DRIFT, "open", 50, "warning")
    assert len(producer.requests()) == 1
    (req,) = producer.requests()
    assert (req.incident_id, req.request_id) == (inc.incident_id, f"retrain-{inc.incident_id}")
    assert (req.system, req.model_name, req.model_version) == ("fraud", "fraud-xgb", "1")
    # where the change began (the first signalling window), so the retrain can learn from data after it
    assert req.evidence["change_ts_ms"] == drift_window(0).key.start_ms == inc.change_ts_ms
    assert producer.sent[0][0] == "retrain.requests" and producer.sent[0][2] == b"fraud:fraud-xgb"
    assert [e["kind"] for e in inc.events] == ["opened", "retrain_requested"]  # no 50-line timeline

    # clean for 2 windows: still open; the 3rd resolves it
    for i in (50, 51):
        loop.on_window(drift_window(i, drifted=False), now_ms=T0 + i * MIN)
    assert inc.status == "open" and inc.clean_windows == 2
    loop.on_window(drift_window(52, drifted=False), now_ms=T0 + 52 * MIN)
    assert inc.status == "resolved" and inc.resolved_ts_ms == T0 + 52 * MIN

    # back within the 10-min cool-down: the same incident reopens, no second request
    loop.on_window(drift_window(55), now_ms=T0 + 55 * MIN)
    assert len(loop.incidents()) == 1 and inc.status == "open" and inc.reopened == 1
    assert len(producer.requests()) == 1

    # resolve again, then fire after the cool-down: a new incident; while the first request is unanswered it
    # joins that one, and once the retrained version is known it asks for its own
    for i in (56, 57, 58):
        loop.on_window(drift_window(i, drifted=False), now_ms=T0 + i * MIN)
    assert inc.status == "resolved"
    loop.on_window(drift_window(70), now_ms=T0 + 70 * MIN)
    first, second = loop.incidents()
    assert first is inc and second.status == "open" and second.incident_id != inc.incident_id
    assert second.retrain_request_id == inc.retrain_request_id and len(producer.requests()) == 1
    loop.book.record_retrain(inc.incident_id, model_version="2", ts_ms=T0 + 71 * MIN)
    for i in (72, 73, 74):
        loop.on_window(drift_window(i, drifted=False), now_ms=T0 + i * MIN)
    loop.on_window(drift_window(90), now_ms=T0 + 90 * MIN)
    third = loop.incidents()[-1]
    assert third.incident_id not in (inc.incident_id, second.incident_id)
    assert [r.incident_id for r in producer.requests()] == [inc.incident_id, third.incident_id]


def test_revisions_of_a_window_are_one_window_for_signals_and_for_resolution() -> None:
    """A window is re-emitted every time labels mature (revision 1, 2, …): that is one window, not five."""
    import dataclasses

    loop = make_loop(None, FakeProducer())
    drifted = drift_window(0)
    for rev in range(5):
        loop.on_window(dataclasses.replace(drifted, revision=rev), now_ms=T0 + rev * 1000)
    (inc,) = loop.incidents()
    assert inc.signals == 1
    clean = drift_window(1, drifted=False)
    for rev in range(5):  # five revisions of one clean window: one clean window, still open
        loop.on_window(dataclasses.replace(clean, revision=rev, final=rev == 4), now_ms=T0 + MIN + rev * 1000)
    assert (inc.status, inc.clean_windows) == ("open", 1)
    for i in (2, 3):
        loop.on_window(drift_window(i, drifted=False), now_ms=T0 + i * MIN)
    assert inc.status == "resolved"
    # An old window's late revision is the evidence the incident already counted: it neither reopens it ...
    loop.on_window(dataclasses.replace(drifted, revision=5), now_ms=T0 + 4 * MIN)
    assert (inc.status, inc.signals, inc.reopened) == ("resolved", 1, 0)
    # ... nor, while it is open, resets its clean streak; a window it never saw does reopen it.
    loop.on_window(drift_window(5), now_ms=T0 + 5 * MIN)
    assert (inc.status, inc.signals, inc.reopened) == ("open", 2, 1)
    loop.on_window(drift_window(6, drifted=False), now_ms=T0 + 6 * MIN)
    loop.on_window(dataclasses.replace(drift_window(5), revision=1), now_ms=T0 + 6 * MIN + 1000)
    assert (inc.clean_windows, inc.signals) == (1, 2)


def test_clean_revisions_of_windows_from_before_the_change_do_not_resolve_it() -> None:
    """Windows from before the drift are re-emitted as their labels mature, after the incident opened: they
    are clean, but they say nothing about now."""
    import dataclasses

    loop = make_loop(None, FakeProducer())
    before = [drift_window(i, drifted=False) for i in range(3)]
    for i, w in enumerate(before):
        loop.on_window(w, now_ms=T0 + i * MIN)
    loop.on_window(drift_window(3), now_ms=T0 + 3 * MIN)
    (inc,) = loop.incidents()
    for i, w in enumerate(before):  # their revisions: clean, but older than the newest drifted window
        loop.on_window(dataclasses.replace(w, revision=1), now_ms=T0 + (4 + i) * MIN)
    assert (inc.status, inc.clean_windows) == ("open", 0)
    for i in (4, 5, 6):
        loop.on_window(drift_window(i, drifted=False), now_ms=T0 + (7 + i) * MIN)
    assert inc.status == "resolved"


def test_the_persisted_book_survives_a_restart_without_republishing(tmp_path: Path) -> None:
    path = tmp_path / "monitoring" / "incidents.sqlite"
    producer = FakeProducer()
    loop = make_loop(path, producer)
    loop.on_window(drift_window(0), now_ms=T0)
    loop.on_window(dq_window(0, 0.0), now_ms=T0)  # a judged, clean data-quality window: no incident
    (before,) = loop.incidents()
    loop.close()
    assert len(producer.requests()) == 1

    restarted_producer = FakeProducer()
    restarted = make_loop(path, restarted_producer)  # a new process: the same file, a new producer
    (after,) = restarted.incidents()
    assert after.to_dict() == before.to_dict()
    restarted.on_window(drift_window(1), now_ms=T0 + MIN)  # the cause is still there after the restart
    (after,) = restarted.incidents()
    assert after.signals == 2 and after.incident_id == before.incident_id
    assert restarted_producer.sent == []  # already requested before the restart
    restarted.close()


def test_a_failed_publish_is_retried_and_recorded_once() -> None:
    producer = FakeProducer()
    producer.fail = True
    loop = make_loop(None, producer)
    loop.on_window(drift_window(0), now_ms=T0)  # broker down: logged, the window is still filed
    (inc,) = loop.incidents()
    assert inc.retrain_request_id is None
    producer.fail = False
    loop.on_window(drift_window(1), now_ms=T0 + MIN)
    loop.on_window(drift_window(2), now_ms=T0 + 2 * MIN)
    assert len(producer.requests()) == 1 and inc.retrain_request_id == f"retrain-{inc.incident_id}"


def test_retraining_waits_while_the_pipeline_is_broken() -> None:
    producer = FakeProducer()
    loop = make_loop(None, producer)
    loop.on_window(dq_window(0, 0.4), now_ms=T0)  # nulls: the pipeline broke
    loop.on_window(drift_window(0), now_ms=T0)  # and the inputs look drifted (because of it)
    by_cause = {i.cause: i for i in loop.incidents()}
    dq, drift = by_cause[DATA_QUALITY], by_cause[DRIFT]
    assert (dq.cause, dq.severity, drift.cause) == (DATA_QUALITY, "critical", DRIFT)
    assert producer.sent == [] and any(e["kind"] == "retrain_held" for e in drift.events)
    for i in (1, 2, 3):  # the pipeline is fixed: three clean windows resolve the data-quality incident
        loop.on_window(dq_window(i, 0.0), now_ms=T0 + i * MIN)
    assert dq.status == "resolved" and drift.status == "open"
    loop.on_window(drift_window(4), now_ms=T0 + 4 * MIN)  # drift persists on clean data: now retrain
    (req,) = producer.requests()
    assert req.incident_id == drift.incident_id


def test_the_incident_records_the_retrained_version_and_whether_it_recovered() -> None:
    producer = FakeProducer()
    loop = make_loop(None, producer)
    loop.on_window(drift_window(0, "1"), now_ms=T0)
    (inc,) = loop.incidents()
    loop.book.record_retrain(inc.incident_id, model_version="2", ts_ms=T0 + 5 * MIN)
    loop.on_window(drift_window(6, "2"), now_ms=T0 + 6 * MIN)  # the new champion still drifts
    assert inc.recovered is False and inc.status == "open"
    for i in (7, 8, 9):
        result = drift_window(i, "2", drifted=False)
        result.realised.append(Metric("average_precision", 0.81, 0.78, 0.84, n=500))
        loop.on_window(result, now_ms=T0 + i * MIN)
    assert inc.status == "resolved" and inc.recovered is True
    assert inc.recovery_evidence == {"model_version": "2", "realised.average_precision": 0.81}
    assert [e["kind"] for e in inc.events][-3:] == ["not_recovered", "recovered", "resolved"]
    assert len(producer.requests()) == 1  # a retrain that had not helped yet did not ask for another


def test_a_second_cause_of_one_model_joins_the_outstanding_retrain_and_both_see_the_new_version() -> None:
    producer = FakeProducer()
    loop = make_loop(None, producer, targets={"average_precision": AP})
    loop.on_window(drift_window(0, "1"), now_ms=T0)  # drift first: a retrain is requested
    dropped = WindowResult(key=key("1", 7), count=2000, realised=[Metric("average_precision", 0.5, 0.45, 0.55, 1500)])
    loop.on_window(dropped, now_ms=T0 + 7 * MIN)  # a week later its labels show the drop: same change
    by_cause = {i.cause: i for i in loop.incidents()}
    drift, perf = by_cause[DRIFT], by_cause[PERFORMANCE_DROP]
    assert len(producer.requests()) == 1 and producer.requests()[0].incident_id == drift.incident_id
    assert perf.retrain_request_id == drift.retrain_request_id
    assert any(e["kind"] == "retrain_joined" for e in perf.events)
    watcher = RetrainWatcher(loop, lambda _model, rid: ["2"] if rid == drift.retrain_request_id else [])
    assert {i.incident_id for i in watcher.check(T0 + 8 * MIN)} == {drift.incident_id, perf.incident_id}
    assert drift.retrained_version == perf.retrained_version == "2"
    assert len(producer.requests()) == 1


def test_a_request_stays_outstanding_after_its_incident_resolved_until_it_is_answered_or_stale() -> None:
    """A dataset-drift verdict near its threshold flaps: the drift incident may resolve before the retrain it
    asked for lands. The performance drop that follows is the same change and must not ask again; a request
    nobody answered within ``outstanding_s`` blocks nothing."""
    producer = FakeProducer()
    loop = make_loop(None, producer, targets={"average_precision": AP})
    loop.on_window(drift_window(0, "1"), now_ms=T0)
    for i in (1, 2, 3):
        loop.on_window(drift_window(i, "1", drifted=False), now_ms=T0 + i * MIN)
    (drift,) = loop.incidents()
    assert drift.status == "resolved" and drift.retrained_version is None

    def dropped(i: int) -> WindowResult:
        metric = Metric("average_precision", 0.5, 0.45, 0.55, 1500)
        return WindowResult(key=key("1", i), count=2000, realised=[metric])

    loop.on_window(dropped(7), now_ms=T0 + 7 * MIN)
    perf = next(i for i in loop.incidents() if i.cause == PERFORMANCE_DROP)
    assert perf.retrain_request_id == drift.retrain_request_id and len(producer.requests()) == 1

    stale = make_loop(None, FakeProducer(), targets={"average_precision": AP})
    stale.publisher.outstanding_ms = 5 * MIN  # type: ignore[union-attr]
    stale.on_window(drift_window(0, "1"), now_ms=T0)
    for i in (1, 2, 3):
        stale.on_window(drift_window(i, "1", drifted=False), now_ms=T0 + i * MIN)
    stale.on_window(dropped(7), now_ms=T0 + 7 * MIN)
    first, second = (i.retrain_request_id for i in stale.incidents())
    assert first != second and len(stale.publisher.producer.requests()) == 2  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------ alertmanager


def webhook(status: str, *alerts: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="DatasetDrift"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "monitoring",
        "groupLabels": {"alertname": "DatasetDrift"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": list(alerts),
    }


def am_alert(status: str, labels: dict[str, str], fingerprint: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": f"{labels['alertname']} on {labels.get('system', labels.get('job'))}"},
        "startsAt": "2024-05-01T10:00:00.123456789Z",
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2024-05-01T10:05:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint,
    }


DRIFT_LABELS = {
    "alertname": "DatasetDrift",
    "cause": "drift",
    "severity": "warning",
    "system": "fraud",
    "model_name": "fraud-xgb",
    "model_version": "1",
}


def test_alertmanager_repeats_are_one_incident_and_resolution_closes_it() -> None:
    producer = FakeProducer()
    loop = make_loop(None, producer)
    firing = webhook("firing", am_alert("firing", DRIFT_LABELS, "abc"))
    for i in range(3):  # first send, then Alertmanager's repeat_interval re-sends
        (inc,) = loop.handle_alertmanager_webhook(firing, now_ms=T0 + i * MIN)
    assert (inc.cause, inc.signals, inc.notifications, inc.sources) == (DRIFT, 1, 3, ["alertmanager"])
    assert inc.firing == ["abc"] and len(producer.requests()) == 1

    (inc2,) = loop.handle_alertmanager_webhook(webhook("resolved", am_alert("resolved", DRIFT_LABELS, "abc")))
    assert inc2 is inc and inc.status == "resolved" and inc.firing == []


def test_service_signals_and_prometheus_alerts_share_one_incident() -> None:
    producer = FakeProducer()
    loop = make_loop(None, producer)
    loop.on_window(drift_window(0), now_ms=T0)
    loop.handle_alertmanager_webhook(webhook("firing", am_alert("firing", DRIFT_LABELS, "abc")), now_ms=T0 + 5_000)
    (inc,) = loop.incidents()
    assert inc.sources == ["service", "alertmanager"] and inc.signals == 2 and len(producer.requests()) == 1
    # Prometheus resolves first; the service-fed incident still waits for its clean windows
    loop.handle_alertmanager_webhook(webhook("resolved", am_alert("resolved", DRIFT_LABELS, "abc")))
    assert inc.status == "open"
    for i in (1, 2, 3):
        loop.on_window(drift_window(i, drifted=False), now_ms=T0 + i * MIN)
    assert inc.status == "resolved"


def test_ops_alerts_are_keyed_by_job_and_never_retrain() -> None:
    producer = FakeProducer()
    loop = make_loop(None, producer)
    labels = {"alertname": "HighErrorRate", "cause": "errors", "severity": "critical", "job": "fraud-api"}
    (inc,) = loop.handle_alertmanager_webhook(webhook("firing", am_alert("firing", labels, "e1")), now_ms=T0)
    assert (inc.system, inc.model_name, inc.cause, inc.severity) == ("fraud-api", "-", "errors", "critical")
    assert producer.sent == []
    # a window of the service's own alerts is no evidence about an ops cause
    for i in range(5):
        loop.on_window(drift_window(i, drifted=False), now_ms=T0 + i * MIN)
    assert inc.status == "open"


def test_a_webhook_body_of_another_version_is_refused() -> None:
    loop = make_loop(None, FakeProducer())
    with pytest.raises(ValidationError, match="version"):
        loop.handle_alertmanager_webhook({**webhook("firing"), "version": "3"})
    with pytest.raises(ValidationError):
        loop.handle_alertmanager_webhook({"version": "4", "status": "firing"})


# ------------------------------------------------------------------------- the rule file and configs


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(prom.RULES_FILE.read_text())["groups"]
    return [rule for g in groups for rule in g["rules"]]


def test_every_rule_has_a_severity_a_cause_and_a_for(rules) -> None:
    assert len(rules) >= 15
    for rule in rules:
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]
        assert rule["labels"]["cause"], rule["alert"]
        assert "for" in rule and re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
    ml = [r for r in rules if r["labels"]["cause"] in DEFAULT_SEVERITY]
    assert {r["labels"]["cause"] for r in ml} == set(DEFAULT_SEVERITY)  # every service cause has a rule
    for rule in ml:  # and pages (or not) exactly as the service's own signal would
        assert rule["labels"]["severity"] == DEFAULT_SEVERITY[rule["labels"]["cause"]], rule["alert"]


def test_rules_use_only_exported_metrics_and_the_policy_thresholds(rules) -> None:
    by_name = {r["alert"]: r["expr"] for r in rules}
    used = set(re.findall(r"mlsd_monitoring_[a-z_]+", " ".join(by_name.values())))
    assert used and used <= set(EXPORTED_METRICS), used - set(EXPORTED_METRICS)
    policy = AlertPolicy()
    assert f">= {DriftConfig().drift_share}" in by_name["DatasetDrift"]
    assert f"> {policy.max_null_share_increase}" in by_name["NullSpike"]
    assert f"> {policy.max_unseen_share}" in by_name["UnseenCategories"]
    assert "_high <" in by_name["RealisedPerformanceDrop"] and "_low >" in by_name["RealisedPerformanceDrop"]
    assert ">= 1" in by_name["FeatureDrift"] and ">= 1" in by_name["PredictionDrift"]


COMPOSE_TARGETS = [
    prom.ScrapeTarget("recsys-api", ("recsys-api:8001",)),
    prom.ScrapeTarget("fraud-api", ("fraud-api:8002",)),
    prom.ScrapeTarget("textclf-api", ("textclf-api:8004",)),
    prom.ScrapeTarget("monitoring", ("monitoring-api:8005",)),
]


def test_compose_configs_are_what_the_generators_produce() -> None:
    """One shape in two places: the compose files equal the generated configs for the compose hosts, and the
    compose Prometheus loads the same rule file (mounted) as the local one."""
    compose_prom = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    assert compose_prom == prom.prometheus_config(
        targets=COMPOSE_TARGETS,
        scrape_interval_s=5,
        rule_files=[prom.COMPOSE_RULES_PATH],
        alertmanagers=["alertmanager:9093"],
    )
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert f"./docker/alerts.yml:{prom.COMPOSE_RULES_PATH}:ro" in mounts
    assert prom.RULES_FILE == ROOT / "docker" / "alerts.yml"

    compose_am = yaml.safe_load((ROOT / "docker" / "alertmanager.yml").read_text())
    assert compose_am == prom.alertmanager_config(webhook_url="http://monitoring-api:8005/alerts")


def test_generated_configs() -> None:
    cfg = prom.prometheus_config(
        targets=[prom.ScrapeTarget("app", ("127.0.0.1:8000",))], scrape_interval_s=1, alertmanagers=["127.0.0.1:9093"]
    )
    assert cfg["global"] == {"scrape_interval": "1s", "evaluation_interval": "1s"}
    assert cfg["rule_files"] == [str(prom.RULES_FILE)]
    assert cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]
    with pytest.raises(ValueError, match="host:port"):
        prom.ScrapeTarget("app", ("localhost",))

    am = prom.alertmanager_config(webhook_url="http://h:1/alerts", pager_url="http://pager/", group_wait_s=0.5)
    assert am["route"]["group_wait"] == "500ms"
    assert [r["receiver"] for r in am["route"]["routes"]] == ["pager", "monitoring"]
    assert am["route"]["routes"][0]["matchers"] == ['severity="critical"'] and am["route"]["routes"][0]["continue"]
    assert [prom.duration(s) for s in (1, 15, 60, 90, 14400, 0)] == ["1s", "15s", "1m", "90s", "4h", "0s"]


def test_a_missing_binary_names_the_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prom.shutil, "which", lambda _name: None)
    with pytest.raises(prom.ObservabilityError, match="`apt-get install -y prometheus`"):
        prom.LocalPrometheus(tmp_path, targets=[]).start()
    with pytest.raises(prom.ObservabilityError, match="`apt-get install -y prometheus-alertmanager`"):
        prom.LocalAlertmanager(tmp_path, webhook_url="http://127.0.0.1:1/alerts").start()
    assert not (tmp_path / "prometheus.yml").exists()  # failed before writing anything


def test_incident_round_trips_through_json() -> None:
    loop = make_loop(None, FakeProducer())
    (inc,) = loop.on_window(drift_window(0), now_ms=T0)
    assert type(inc).from_dict(orjson.loads(orjson.dumps(inc.to_dict()))) == inc
