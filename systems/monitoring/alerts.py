"""Alerts: window results → signals → incidents → (some) retrain requests, and Prometheus's alerts into the same book.

Two sources, one timeline. The monitoring service evaluates every closed window itself (:func:`evaluate`):
it has the per-feature statistics, the confidence intervals and the slices, and it must be able to ask for
retraining without a round trip through Prometheus. It also *exports* the same numbers as Prometheus gauges
(below), so that ``docker/alerts.yml`` holds the rules for ML and ops alike, Alertmanager routes and pages, and
Grafana draws them beside latency and errors. Alertmanager's webhook comes back to the service
(:meth:`AlertLoop.handle_alertmanager_webhook`) and lands in the same :class:`IncidentBook`, keyed the same
way, so a drift the service saw and the ``DatasetDrift`` rule Prometheus fired are one incident, not two.

Alert design
------------
- **Signal** — one rule tripped by one window (or one Alertmanager alert). Cheap, frequent, never paged.
- **Cause** — what a signal is about: ``drift`` (dataset: at least half the features drifted, Evidently's
  rule), ``feature_drift`` (a feature drifted, the dataset did not), ``prediction_drift`` (the score or class
  distribution moved: an anomaly in predictions), ``performance_drop`` (realised metric on matured labels:
  the **whole confidence interval** beyond the target's bound, so a small window's noisy dip does not fire),
  ``estimated_performance_drop`` (the CBPE-style estimate beyond the bound, before labels arrive),
  ``data_quality`` (null share up by more than 0.1 over the reference, or more than 5 % of a categorical
  feature's values never seen in the reference: a broken pipeline, not a changed world), ``slice_degraded``
  (a segment's CI beyond the bound while the aggregate's is not: the fairness alert), ``latency`` (the p99 of
  the records' own ``latency_ms`` over the system's budget: stream scorers have no HTTP histogram for
  Prometheus to watch, but every record says how long the model took). Prometheus's ops rules
  add ``target_down``, ``latency``, ``errors``, ``dropped_predictions``, ``broker_down``, ``monitoring_lag``,
  ``malformed_records``.
- **Incident** — de-duplication: at most one *open* incident per ``(system, model_name, cause)``; every
  later signal of that cause attaches to it (a storm of 50 signals is one incident with ``signals=50``).
  Model version is not in the key: the champion that replaces a drifted version inherits its open incident,
  which is how the book tells whether the retrain helped.
- **Cool-down** (``settings.alert_cooldown_s``, 10 min) — a cause that fires again within the cool-down of its
  last incident's resolution *reopens* that incident instead of opening a new one: a flapping signal is one
  incident and one retrain request, not one per flap.
- **Resolution** — an incident resolves when its cause has been evaluated and found clean in
  ``resolve_after_windows`` (3) consecutive windows, and none of its Alertmanager alerts is still firing.
  Windows under the minimum-sample guard are no evidence either way.
- **Severity and who gets paged** — ``critical`` pages the on-call through Alertmanager's pager route: a
  service down or failing, realised performance confirmed below target, a broken feature pipeline.
  ``warning`` goes to the dashboard and the retrain loop, looked at in working hours: drift, prediction
  drift, an estimated drop, a degraded slice, latency over budget. ``info`` is dashboard only.
- **Retraining** — :class:`RetrainPublisher` publishes at most one ``RetrainRequest`` per incident (and joins an
  incident to a request of the same model still outstanding), for the
  causes where new data helps (``drift``, ``performance_drop``), and holds it while a ``data_quality``
  incident of the same model is open (retraining on a broken pipeline's output learns the bug). The request id
  is derived from the incident id, and "published" is persisted with the incident, so a restarted service
  does not publish again. The incident then records which version was retrained in response
  (:meth:`IncidentBook.record_retrain`) and whether the new champion recovered: clean windows of that version
  resolve the incident with ``recovered=True``; the cause firing on it sets ``recovered=False`` and keeps the
  incident open for a human (no second automatic retrain: that would be a loop).

Metrics ``serve.py`` exports (exact names and labels; gauges describe the **latest closed window** of each
series and are set to NaN when the window is under the minimum-sample guard, so no rule fires on it)::

    mlsd_monitoring_window_records{system,model_name,model_version}         predictions in the window
    mlsd_monitoring_drift_share{system,model_name,model_version}            share of drifted feature columns
    mlsd_monitoring_feature_drift{system,model_name,model_version,feature}  drift_score(): >= 1 means drifted
    mlsd_monitoring_prediction_drift{system,model_name,model_version,output}  the same on output.<output>
    mlsd_monitoring_null_share{system,model_name,model_version,feature}
    mlsd_monitoring_reference_null_share{system,model_name,feature}
    mlsd_monitoring_unseen_share{system,model_name,model_version,feature}   categorical features only
    mlsd_monitoring_realised_metric{system,model_name,model_version,metric}   (+ _low, _high: the CI)
    mlsd_monitoring_estimated_metric{system,model_name,model_version,metric}
    mlsd_monitoring_metric_floor{system,model_name,metric}     higher-is-better targets: reference - tolerance
    mlsd_monitoring_metric_ceiling{system,model_name,metric}   lower-is-better targets: reference + tolerance
    mlsd_monitoring_slice_metric{system,model_name,model_version,slice,metric}  (+ _low, _high)
    mlsd_monitoring_label_delay_seconds{system,model_name,model_version}     p50 label delay (dashboard)
    mlsd_monitoring_model_latency_p99_ms{system,model_name,model_version}    p99 of the records' latency_ms
    mlsd_monitoring_watermark_lag_seconds{system}              wall clock minus the event-time watermark
    mlsd_monitoring_dead_letters_total{topic}                  counter: records sent to <topic>.dlq
    mlsd_monitoring_incidents_open{system,model_name,cause,severity}         open incidents (dashboard)

:data:`EXPORTED_METRICS` holds the same list for code; a unit test checks that every ``mlsd_monitoring_*``
name in ``docker/alerts.yml`` is in it, and that the rule thresholds equal :class:`AlertPolicy`'s defaults.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import orjson
from pydantic import BaseModel, ConfigDict, Field

from systems.common.broker import BrokerError, Producer, make_producer, publish
from systems.common.predictions import RetrainRequest, Scalar
from systems.monitoring.drift import P_VALUE_METHODS, PREDICTION_PREFIX
from systems.monitoring.results import Metric, WindowKey, WindowResult
from systems.monitoring.settings import MonitoringSettings

log = logging.getLogger(__name__)

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK: Mapping[str, int] = {"info": 0, "warning": 1, "critical": 2}

DRIFT = "drift"
FEATURE_DRIFT = "feature_drift"
PREDICTION_DRIFT = "prediction_drift"
PERFORMANCE_DROP = "performance_drop"
ESTIMATED_DROP = "estimated_performance_drop"
DATA_QUALITY = "data_quality"
SLICE_DEGRADED = "slice_degraded"
LATENCY = "latency"
ML_CAUSES = (
    DRIFT,
    FEATURE_DRIFT,
    PREDICTION_DRIFT,
    PERFORMANCE_DROP,
    ESTIMATED_DROP,
    DATA_QUALITY,
    SLICE_DEGRADED,
    LATENCY,
)
"""The causes :func:`evaluate` raises (and so the causes a clean window can count towards resolving)."""

DEFAULT_SEVERITY: Mapping[str, Severity] = {
    DRIFT: "warning",
    FEATURE_DRIFT: "info",
    PREDICTION_DRIFT: "warning",
    PERFORMANCE_DROP: "critical",
    ESTIMATED_DROP: "warning",
    DATA_QUALITY: "critical",
    SLICE_DEGRADED: "warning",
    LATENCY: "warning",
}
RETRAIN_CAUSES: frozenset[str] = frozenset({DRIFT, PERFORMANCE_DROP})
"""Causes where fresh data is the fix. Not data quality (fix the pipeline), not a slice (look at its data first),
not an estimate alone (wait for labels to confirm)."""

MAX_SUBJECTS = 50  # distinct features/metrics listed on one incident
MAX_EVENTS = 200  # timeline entries kept per incident (state changes, new subjects, new sources)
MAX_WINDOWS_SEEN = 256  # window ids remembered per incident: revisions of older windows than this count again
DRIFT_SCORE_CAP = 1e6  # a p-value of 0 would be an infinite score

EXPORTED_METRICS: Mapping[str, tuple[str, ...]] = {
    "mlsd_monitoring_window_records": ("system", "model_name", "model_version"),
    "mlsd_monitoring_drift_share": ("system", "model_name", "model_version"),
    "mlsd_monitoring_feature_drift": ("system", "model_name", "model_version", "feature"),
    "mlsd_monitoring_prediction_drift": ("system", "model_name", "model_version", "output"),
    "mlsd_monitoring_null_share": ("system", "model_name", "model_version", "feature"),
    "mlsd_monitoring_reference_null_share": ("system", "model_name", "feature"),
    "mlsd_monitoring_unseen_share": ("system", "model_name", "model_version", "feature"),
    "mlsd_monitoring_realised_metric": ("system", "model_name", "model_version", "metric"),
    "mlsd_monitoring_realised_metric_low": ("system", "model_name", "model_version", "metric"),
    "mlsd_monitoring_realised_metric_high": ("system", "model_name", "model_version", "metric"),
    "mlsd_monitoring_estimated_metric": ("system", "model_name", "model_version", "metric"),
    "mlsd_monitoring_metric_floor": ("system", "model_name", "metric"),
    "mlsd_monitoring_metric_ceiling": ("system", "model_name", "metric"),
    "mlsd_monitoring_slice_metric": ("system", "model_name", "model_version", "slice", "metric"),
    "mlsd_monitoring_slice_metric_low": ("system", "model_name", "model_version", "slice", "metric"),
    "mlsd_monitoring_slice_metric_high": ("system", "model_name", "model_version", "slice", "metric"),
    "mlsd_monitoring_label_delay_seconds": ("system", "model_name", "model_version"),
    "mlsd_monitoring_model_latency_p99_ms": ("system", "model_name", "model_version"),
    "mlsd_monitoring_watermark_lag_seconds": ("system",),
    "mlsd_monitoring_dead_letters_total": ("topic",),
    "mlsd_monitoring_incidents_open": ("system", "model_name", "cause", "severity"),
}
"""The monitoring service's Prometheus metrics: name → label names (see the module docstring)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


# ================================================================================================ policy


@dataclass(frozen=True, kw_only=True)
class MetricTarget:
    """What a metric should be: its value on the reference (validation set or a healthy period) and the
    tolerated change. ``bound`` is the line an alert needs the confidence interval to be entirely beyond."""

    reference: float
    tolerance: float = 0.0
    higher_is_better: bool = True

    @property
    def bound(self) -> float:
        return self.reference - self.tolerance if self.higher_is_better else self.reference + self.tolerance

    def breached(self, metric: Metric, *, use_ci: bool = True) -> bool:
        """True when the metric is worse than the bound: its whole CI if it has one (``use_ci``), else its value."""
        if metric.value is None or not math.isfinite(metric.value):
            return False
        if self.higher_is_better:
            edge = metric.high if use_ci and metric.high is not None else metric.value
            return edge < self.bound
        edge = metric.low if use_ci and metric.low is not None else metric.value
        return edge > self.bound


@dataclass(frozen=True, kw_only=True)
class AlertPolicy:
    """Thresholds of the service-side ML alerts and the book's cool-down and resolution.

    The numeric thresholds equal those in ``docker/alerts.yml`` (tested), so a signal here and an alert
    there agree on the same window.
    """

    min_samples: int = 200
    """No drift, data-quality or performance signal from a window (or metric) with fewer records."""
    slice_min_samples: int = 100
    """Slices are smaller than the aggregate; their CIs are wider, which the CI rule already accounts for."""
    max_null_share_increase: float = 0.1
    max_unseen_share: float = 0.05
    targets: Mapping[str, MetricTarget] = field(default_factory=dict)
    """Per metric name (``ap``, ``accuracy`` …), or per model as ``"<system>/<model_name>:<metric>"`` (which wins):
    metrics without a target raise nothing."""
    slice_targets: Mapping[str, MetricTarget] = field(default_factory=dict)
    """Per ``"<slice>:<metric>"`` (e.g. ``amount_band=<10:ap``): the segment's own reference. Metrics that depend
    on prevalence (AP, precision) differ between segments on a healthy model, so judging a segment against the
    aggregate's target pages on every low-risk segment. A metric with no segment targets at all falls back to
    the aggregate's target (right for prevalence-free metrics such as FPR); one with some does not."""
    latency_p99_ms: Mapping[str, float] = field(default_factory=dict)
    confirm_windows: Mapping[str, int] = field(default_factory=lambda: {SLICE_DEGRADED: 2})
    """Causes that must fire in this many consecutive windows (per subject) before they reach the book —
    Prometheus's ``for:``. Slices need it: a 95 % interval per segment per window is many tests, and one of
    them is beyond its bound by chance every few dozen windows; twice in a row is a real degradation."""
    """Per system: the budget for the p99 of the records' ``latency_ms`` in a window; absent = not judged."""
    severity: Mapping[str, Severity] = field(default_factory=lambda: dict(DEFAULT_SEVERITY))
    cooldown_s: float = 600.0
    resolve_after_windows: int = 3
    retrain_causes: frozenset[str] = RETRAIN_CAUSES

    @classmethod
    def from_settings(cls, settings: MonitoringSettings, **overrides: Any) -> AlertPolicy:
        values: dict[str, Any] = {"min_samples": settings.min_samples, "cooldown_s": settings.alert_cooldown_s}
        values.update(overrides)
        return cls(**values)

    def target(self, system: str, model_name: str, metric: str) -> MetricTarget | None:
        """``targets["<system>/<model_name>:<metric>"]`` (one model's reference), else ``targets[metric]``."""
        return self.targets.get(f"{system}/{model_name}:{metric}") or self.targets.get(metric)

    def slice_target(self, system: str, model_name: str, slice_name: str, metric: str) -> MetricTarget | None:
        """The segment's own target (model-specific first); the aggregate's only when the policy has no segment
        targets for this metric (a segment left out of them had too little reference data, and is not judged)."""
        own = self.slice_targets.get(f"{system}/{model_name}:{slice_name}:{metric}") or self.slice_targets.get(
            f"{slice_name}:{metric}"
        )
        if own is not None:
            return own
        if any(k.endswith(f":{metric}") for k in self.slice_targets):
            return None
        return self.target(system, model_name, metric)

    def severity_of(self, cause: str) -> Severity:
        return self.severity.get(cause, "warning")


def targets_from_references(
    references: Mapping[tuple[str, str], Any], tolerance: float = 0.1
) -> tuple[dict[str, MetricTarget], dict[str, MetricTarget]]:
    """Per-model targets (``"<system>/<model>:<metric>"``) from the metrics each reference carries
    (``windows.Reference.metrics``: the model's performance on its validation data), with ``tolerance``.

    Metrics named ``fpr`` are lower-is-better; every other metric is higher-is-better.
    """
    targets: dict[str, MetricTarget] = {}
    slices: dict[str, MetricTarget] = {}
    for (system, model_name), ref in references.items():
        for metric, value in getattr(ref, "metrics", {}).items():
            targets[f"{system}/{model_name}:{metric}"] = MetricTarget(
                reference=value, tolerance=tolerance, higher_is_better=metric != "fpr"
            )
        for key, value in getattr(ref, "slice_metrics", {}).items():
            metric = key.rsplit(":", 1)[-1]
            slices[f"{system}/{model_name}:{key}"] = MetricTarget(
                reference=value, tolerance=tolerance, higher_is_better=metric != "fpr"
            )
    return targets, slices


# =============================================================================================== signals


@dataclass(frozen=True, kw_only=True)
class Signal:
    """One tripped rule: what (cause, subject), how bad (severity, value vs threshold), where (series, window)."""

    cause: str
    severity: Severity
    system: str
    model_name: str
    model_version: str
    subject: str
    """The feature, metric, slice or route it is about (``dataset`` for dataset drift)."""
    summary: str
    value: float | None = None
    threshold: float | None = None
    window_start_ms: int | None = None
    window_end_ms: int | None = None
    evidence: dict[str, Scalar] = field(default_factory=dict)
    source: str = "service"
    """``service`` (evaluated here) or ``alertmanager`` (a Prometheus rule, through the webhook)."""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.system, self.model_name, self.cause)


def drift_score(column: Mapping[str, Any]) -> float | None:
    """A column's drift as a multiple of its threshold, so that ``>= 1`` always means drifted.

    Distances (Wasserstein, Jensen–Shannon, PSI, MMD) drift *above* their threshold: ``statistic / threshold``.
    p-values (KS, chi-squared) drift *below*: ``threshold / p``. This is what ``serve.py`` exports as
    ``mlsd_monitoring_feature_drift``, so one rule (``>= 1``) covers every method.
    """
    statistic, threshold = column.get("statistic"), column.get("threshold")
    if statistic is None or threshold is None or not math.isfinite(statistic) or threshold <= 0:
        return None
    if column.get("method") in P_VALUE_METHODS:
        score = threshold / statistic if statistic > 0 else DRIFT_SCORE_CAP
    else:
        score = statistic / threshold
    return min(float(score), DRIFT_SCORE_CAP)


def data_quality_from_drift(drift: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """``WindowResult.data_quality`` derived from a drift report: per feature column, its null shares (window
    and reference) and, for categorical columns, the share of values never seen in the reference."""
    out: dict[str, dict[str, float | None]] = {}
    for col in drift.get("columns", ()):
        if col.get("role") != "feature":
            continue
        out[col["column"]] = {
            "null_share": col.get("current_null_share"),
            "reference_null_share": col.get("reference_null_share"),
            "unseen_share": (col.get("stats") or {}).get("unseen_share") if col.get("kind") == "categorical" else None,
        }
    return out


def feature_quality(result: WindowResult) -> dict[str, dict[str, float | None]]:
    """Per feature: ``null_share``, ``reference_null_share`` and ``unseen_share`` of one window.

    The window's own counts (``WindowResult.data_quality["features"]``, where a missing key counts as null)
    take precedence; the drift report adds the reference's null shares (and stands in when the window has
    no data-quality section).
    """
    out = data_quality_from_drift(result.drift) if result.drift else {}
    for feature, q in (result.data_quality or {}).get("features", {}).items():
        merged: dict[str, float | None] = {"reference_null_share": None, **out.get(feature, {})}
        merged.update({k: v for k, v in q.items() if v is not None or k not in merged})
        out[feature] = merged
    return out


def _signal(result: WindowResult, policy: AlertPolicy, cause: str, subject: str, summary: str, **kw: Any) -> Signal:
    k = result.key
    return Signal(
        cause=cause,
        severity=policy.severity_of(cause),
        system=k.system,
        model_name=k.model_name,
        model_version=k.model_version,
        subject=subject,
        summary=summary,
        window_start_ms=k.start_ms,
        window_end_ms=k.end_ms,
        **kw,
    )


def _metric_evidence(m: Metric, target: MetricTarget) -> dict[str, Scalar]:
    return {
        "metric": m.name,
        "value": m.value,
        "low": m.low,
        "high": m.high,
        "n": m.n,
        "reference": target.reference,
        "bound": target.bound,
    }


def _drift_signals(result: WindowResult, policy: AlertPolicy) -> list[Signal]:
    drift = result.drift
    columns = list(drift.get("columns", ()))
    features = [c for c in columns if c.get("role") == "feature"]
    drifted = [c for c in features if c.get("drifted")]
    out: list[Signal] = []
    if drift.get("dataset_drift"):
        share = float(drift.get("share_of_drifted_columns", 0.0))
        names = [c["column"] for c in drifted]
        out.append(
            _signal(
                result,
                policy,
                DRIFT,
                "dataset",
                f"dataset drift: {len(drifted)} of {len(features)} features drifted ({share:.0%})",
                value=share,
                threshold=float(drift.get("drift_share", 0.5)),
                evidence={
                    "share_of_drifted_columns": share,
                    "drifted_columns": ",".join(names)[:500],
                    "window_records": result.count,
                },
            )
        )
    else:  # a drifted feature on its own is worth showing, not worth a retrain (it is covered above otherwise)
        for c in drifted:
            score = drift_score(c)
            out.append(
                _signal(
                    result,
                    policy,
                    FEATURE_DRIFT,
                    c["column"],
                    f"feature {c['column']} drifted: {c['method']} {c.get('statistic')} vs {c.get('threshold')}",
                    value=score,
                    threshold=1.0,
                    evidence={"method": c.get("method"), "statistic": c.get("statistic"), "threshold": c["threshold"]},
                )
            )
    for c in columns:
        if c.get("role") == "prediction" and c.get("drifted"):
            output = c["column"].removeprefix(PREDICTION_PREFIX)
            out.append(
                _signal(
                    result,
                    policy,
                    PREDICTION_DRIFT,
                    output,
                    f"prediction drift on {output}: {c['method']} {c.get('statistic')} vs {c.get('threshold')}",
                    value=drift_score(c),
                    threshold=1.0,
                    evidence={"method": c.get("method"), "statistic": c.get("statistic"), "threshold": c["threshold"]},
                )
            )
    return out


def _data_quality_signals(result: WindowResult, policy: AlertPolicy) -> list[Signal]:
    quality = feature_quality(result)
    out: list[Signal] = []
    for feature, q in quality.items():
        null_share, ref_null = q.get("null_share"), q.get("reference_null_share") or 0.0
        if null_share is not None and null_share - ref_null > policy.max_null_share_increase:
            out.append(
                _signal(
                    result,
                    policy,
                    DATA_QUALITY,
                    f"{feature}:nulls",
                    f"null spike on {feature}: {null_share:.1%} null (reference {ref_null:.1%})",
                    value=null_share - ref_null,
                    threshold=policy.max_null_share_increase,
                    evidence={"feature": feature, "null_share": null_share, "reference_null_share": ref_null},
                )
            )
        unseen = q.get("unseen_share")
        if unseen is not None and unseen > policy.max_unseen_share:
            out.append(
                _signal(
                    result,
                    policy,
                    DATA_QUALITY,
                    f"{feature}:unseen",
                    f"unseen categories on {feature}: {unseen:.1%} of values not in the reference",
                    value=unseen,
                    threshold=policy.max_unseen_share,
                    evidence={"feature": feature, "unseen_share": unseen},
                )
            )
    return out


def _usable(result: WindowResult, m: Metric, policy: AlertPolicy, min_samples: int) -> MetricTarget | None:
    target = policy.target(result.key.system, result.key.model_name, m.name)
    if target is None or m.value is None or m.n < min_samples:
        return None
    return target


def _performance_signals(result: WindowResult, policy: AlertPolicy) -> list[Signal]:
    out: list[Signal] = []
    for m in result.realised:
        target = _usable(result, m, policy, policy.min_samples)
        if target is not None and target.breached(m):
            out.append(
                _signal(
                    result,
                    policy,
                    PERFORMANCE_DROP,
                    m.name,
                    f"{m.name} {m.value:.3f} [{m.low}, {m.high}] entirely beyond {target.bound:.3f} "
                    f"(reference {target.reference:.3f})",
                    value=m.value,
                    threshold=target.bound,
                    evidence=_metric_evidence(m, target),
                )
            )
    for m in result.estimated:
        # The estimate needs no labels, so its guard is the window size, not the labelled count.
        target = policy.target(result.key.system, result.key.model_name, m.name)
        if target is None or m.value is None or result.count < policy.min_samples:
            continue
        if target.breached(m, use_ci=m.low is not None and m.high is not None):
            out.append(
                _signal(
                    result,
                    policy,
                    ESTIMATED_DROP,
                    m.name,
                    f"estimated {m.name} {m.value:.3f} beyond {target.bound:.3f} (labels not in yet)",
                    value=m.value,
                    threshold=target.bound,
                    evidence=_metric_evidence(m, target),
                )
            )
    return out


def _latency_signals(result: WindowResult, policy: AlertPolicy) -> list[Signal]:
    budget = policy.latency_p99_ms.get(result.key.system)
    p99 = result.latency_ms_p99
    if budget is None or p99 is None or not math.isfinite(p99) or p99 <= budget:
        return []
    summary = f"model latency p99 {p99:.1f} ms over the {budget:g} ms budget"
    evidence: dict[str, Scalar] = {"latency_ms_p99": p99, "budget_ms": budget}
    return [_signal(result, policy, LATENCY, "latency_ms_p99", summary, value=p99, threshold=budget, evidence=evidence)]


def _usable_slice(result: WindowResult, slice_name: str, m: Metric, policy: AlertPolicy) -> MetricTarget | None:
    target = policy.slice_target(result.key.system, result.key.model_name, slice_name, m.name)
    if target is None or m.value is None or m.n < policy.slice_min_samples:
        return None
    return target


def _slice_signals(result: WindowResult, policy: AlertPolicy) -> list[Signal]:
    aggregate = {m.name: m for m in result.realised}
    out: list[Signal] = []
    for slice_name, metrics in result.slices.items():
        for m in metrics:
            target = _usable_slice(result, slice_name, m, policy)
            agg = aggregate.get(m.name)
            if target is None or agg is None or agg.value is None:
                continue  # "while the aggregate looks fine" needs an aggregate to look at
            agg_target = policy.target(result.key.system, result.key.model_name, m.name)
            if target.breached(m) and not (agg_target is not None and agg_target.breached(agg)):
                out.append(
                    _signal(
                        result,
                        policy,
                        SLICE_DEGRADED,
                        f"{slice_name}:{m.name}",
                        f"slice {slice_name}: {m.name} {m.value:.3f} [{m.low}, {m.high}] beyond "
                        f"{target.bound:.3f} while the aggregate is {agg.value:.3f}",
                        value=m.value,
                        threshold=target.bound,
                        evidence={**_metric_evidence(m, target), "slice": slice_name, "aggregate": agg.value},
                    )
                )
    return out


def evaluate(result: WindowResult, policy: AlertPolicy | None = None) -> list[Signal]:
    """Every signal a closed window raises: drift, prediction drift, data quality, performance, slices.

    Drift and data quality need ``policy.min_samples`` records in the window; a realised metric needs that
    many labelled records (``Metric.n``), a slice ``slice_min_samples``; a metric without a target is shown,
    never alerted on.
    """
    policy = policy or AlertPolicy()
    signals: list[Signal] = []
    if result.count >= policy.min_samples:
        if result.drift:
            signals += _drift_signals(result, policy)
        signals += _data_quality_signals(result, policy)
        signals += _latency_signals(result, policy)
    signals += _performance_signals(result, policy)
    signals += _slice_signals(result, policy)
    return signals


def evaluated_causes(result: WindowResult, policy: AlertPolicy | None = None) -> set[str]:
    """The causes this window had enough data to judge: only those count as clean when they do not fire."""
    policy = policy or AlertPolicy()
    out: set[str] = set()
    enough = result.count >= policy.min_samples
    if enough and result.drift:
        out |= {DRIFT, FEATURE_DRIFT, PREDICTION_DRIFT}
    if enough and (result.data_quality or result.drift):
        out.add(DATA_QUALITY)
    if any(_usable(result, m, policy, policy.min_samples) for m in result.realised):
        out.add(PERFORMANCE_DROP)
    k = result.key
    if enough and any(policy.target(k.system, k.model_name, m.name) and m.value is not None for m in result.estimated):
        out.add(ESTIMATED_DROP)
    if any(_usable_slice(result, name, m, policy) for name, ms in result.slices.items() for m in ms):
        out.add(SLICE_DEGRADED)
    if enough and result.latency_ms_p99 is not None and result.key.system in policy.latency_p99_ms:
        out.add(LATENCY)
    return out


# ============================================================================================= incidents


def incident_id_for(system: str, model_name: str, cause: str, opened_ts_ms: int) -> str:
    """Deterministic, so the retrain request derived from it is the same after a restart."""
    digest = hashlib.sha1(f"{system}\0{model_name}\0{cause}\0{opened_ts_ms}".encode()).hexdigest()[:16]
    return f"inc-{digest}"


@dataclass(kw_only=True)
class Incident:
    """One cause on one model, from the first signal to resolution, with what was done about it."""

    incident_id: str
    system: str
    model_name: str
    cause: str
    severity: Severity
    model_version: str
    """The version that showed the cause first (the one a retrain request names as degraded)."""
    summary: str
    opened_ts_ms: int
    last_signal_ts_ms: int
    change_ts_ms: int | None = None
    """Event time at which the cause first showed: the start of the first window that signalled it. A retrain
    that answers the incident should learn from data after it (``RetrainRequest.evidence["change_ts_ms"]``)."""
    status: Literal["open", "resolved"] = "open"
    resolved_ts_ms: int | None = None
    signals: int = 0
    """Signals attached (service windows and new Alertmanager alerts)."""
    notifications: int = 0
    """Alertmanager deliveries received (first sends, repeats and resolutions)."""
    reopened: int = 0
    """Times the cause came back within the cool-down and reopened this incident."""
    subjects: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    evidence: dict[str, Scalar] = field(default_factory=dict)
    """The latest signal's numbers."""
    clean_windows: int = 0
    """Consecutive evaluated windows in which the cause did not fire."""
    firing: list[str] = field(default_factory=list)
    """Fingerprints of this incident's Alertmanager alerts still firing."""
    retrain_request_id: str | None = None
    retrain_requested_ts_ms: int | None = None
    retrained_version: str | None = None
    """The model version registered in response to the retrain request."""
    retrained_ts_ms: int | None = None
    recovered: bool | None = None
    """None until known; False while the cause still fires on ``retrained_version``; True once it resolved there."""
    recovery_evidence: dict[str, Scalar] = field(default_factory=dict)
    last_signal_window_ms: int | None = None
    """Start of the newest window that signalled: a clean window older than it (a revision of a window from
    before the change, re-emitted as its labels matured) is old news and does not count towards resolving."""
    windows_seen: list[str] = field(default_factory=list)
    """Recent windows (``version:start:end``) already counted, as a signal or as clean: a window re-emitted with
    matured labels is the same window, so its revisions neither add signals nor count twice towards resolving."""
    events: list[dict[str, Any]] = field(default_factory=list)
    """The timeline: ``{"ts_ms", "kind", "detail"}`` for state changes, new subjects and new sources."""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.system, self.model_name, self.cause)

    @property
    def is_open(self) -> bool:
        return self.status == "open"

    def seen(self, window_id: str) -> bool:
        """True when ``window_id`` was counted already; else remember it (bounded) and return False."""
        if window_id in self.windows_seen:
            return True
        self.windows_seen.append(window_id)
        if len(self.windows_seen) > MAX_WINDOWS_SEEN:
            del self.windows_seen[0]
        return False

    def note(self, ts_ms: int, kind: str, detail: str = "") -> None:
        self.events.append({"ts_ms": ts_ms, "kind": kind, "detail": detail[:500]})
        if len(self.events) > MAX_EVENTS:
            del self.events[1 : len(self.events) - MAX_EVENTS + 1]  # keep the opening event

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Incident:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})  # tolerant: fields added later default


class IncidentBook:
    """Open, attach, reopen and resolve incidents; persisted to sqlite so a restart keeps its memory.

    Not thread-safe on its own: :class:`AlertLoop` serialises the consumer thread and the webhook handlers.
    Every incident stays in memory (a couple of kB each); the file is rewritten per changed incident, once
    per call, so a storm of signals in one window costs one write.
    """

    def __init__(self, path: Path | None = None, *, cooldown_s: float = 600.0, resolve_after_windows: int = 3) -> None:
        if resolve_after_windows < 1:
            raise ValueError("resolve_after_windows must be >= 1")
        self.path = path
        self.cooldown_ms = int(cooldown_s * 1000)
        self.resolve_after_windows = resolve_after_windows
        self._incidents: dict[str, Incident] = {}
        self._open: dict[tuple[str, str, str], Incident] = {}
        self._latest: dict[tuple[str, str, str], Incident] = {}
        self._dirty: set[str] = set()
        self._db: sqlite3.Connection | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS incidents (incident_id TEXT PRIMARY KEY, system TEXT, model_name TEXT,"
                " cause TEXT, status TEXT, opened_ts_ms INTEGER, body BLOB)"
            )
            for (body,) in self._db.execute("SELECT body FROM incidents ORDER BY opened_ts_ms"):
                self._index(Incident.from_dict(orjson.loads(body)))

    @classmethod
    def from_settings(cls, settings: MonitoringSettings, policy: AlertPolicy | None = None) -> IncidentBook:
        policy = policy or AlertPolicy.from_settings(settings)
        # run_dir: <data_dir>/monitoring, or a private folder under it for scoped settings (a test, a bench run)
        return cls(
            settings.run_dir("monitoring") / "incidents.sqlite",
            cooldown_s=policy.cooldown_s,
            resolve_after_windows=policy.resolve_after_windows,
        )

    # ---- reading -----------------------------------------------------------------------------------
    def _index(self, inc: Incident) -> None:
        self._incidents[inc.incident_id] = inc
        latest = self._latest.get(inc.key)
        if latest is None or inc.opened_ts_ms >= latest.opened_ts_ms:
            self._latest[inc.key] = inc
        if inc.is_open:
            self._open[inc.key] = inc

    def get(self, incident_id: str) -> Incident:
        return self._incidents[incident_id]

    def open_incident(self, system: str, model_name: str, cause: str) -> Incident | None:
        return self._open.get((system, model_name, cause))

    def incidents(self, *, status: str | None = None, system: str | None = None) -> list[Incident]:
        """Oldest first: the timeline the dashboard draws."""
        found = [
            i
            for i in self._incidents.values()
            if (status is None or i.status == status) and (system is None or i.system == system)
        ]
        return sorted(found, key=lambda i: (i.opened_ts_ms, i.incident_id))

    # ---- writing -----------------------------------------------------------------------------------
    def _flush(self) -> None:
        if self._db is None or not self._dirty:
            self._dirty.clear()
            return
        rows = []
        for incident_id in sorted(self._dirty):
            i = self._incidents[incident_id]
            rows.append(
                (i.incident_id, i.system, i.model_name, i.cause, i.status, i.opened_ts_ms, orjson.dumps(i.to_dict()))
            )
        with self._db:  # one transaction: all of a call's changes or none
            self._db.executemany("INSERT OR REPLACE INTO incidents VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        self._dirty.clear()

    def _attach(self, inc: Incident, signal: Signal, now_ms: int, *, count: bool = True) -> None:
        if count:
            inc.signals += 1
        inc.last_signal_ts_ms = max(inc.last_signal_ts_ms, now_ms)
        inc.clean_windows = 0
        inc.evidence = dict(signal.evidence)
        if SEVERITY_RANK[signal.severity] > SEVERITY_RANK[inc.severity]:
            inc.note(now_ms, "escalated", f"{inc.severity} -> {signal.severity}")
            inc.severity = signal.severity
        if signal.source not in inc.sources:
            inc.sources.append(signal.source)
            if len(inc.sources) > 1:  # the first source is in the "opened" event already
                inc.note(now_ms, "source", f"{signal.source}: {signal.summary}")
        if signal.subject not in inc.subjects and len(inc.subjects) < MAX_SUBJECTS:
            inc.subjects.append(signal.subject)
            if len(inc.subjects) > 1:
                inc.note(now_ms, "subject", signal.summary)
        self._dirty.add(inc.incident_id)

    def _record(self, signal: Signal, now_ms: int, *, count: bool = True) -> Incident:
        """Attach ``signal`` to the open incident of its cause, reopen one within the cool-down, or open one."""
        inc = self._open.get(signal.key)
        if inc is None:
            last = self._latest.get(signal.key)
            last_active = None if last is None else (last.resolved_ts_ms or last.opened_ts_ms)
            if last is not None and last_active is not None and now_ms - last_active < self.cooldown_ms:
                inc = last
                inc.status, inc.resolved_ts_ms = "open", None
                inc.reopened += 1
                inc.note(now_ms, "reopened", f"within the {self.cooldown_ms / 1000:.0f} s cool-down: {signal.summary}")
            else:
                inc = Incident(
                    incident_id=incident_id_for(signal.system, signal.model_name, signal.cause, now_ms),
                    system=signal.system,
                    model_name=signal.model_name,
                    cause=signal.cause,
                    severity=signal.severity,
                    model_version=signal.model_version,
                    summary=signal.summary,
                    opened_ts_ms=now_ms,
                    last_signal_ts_ms=now_ms,
                    change_ts_ms=signal.window_start_ms,
                )
                inc.note(now_ms, "opened", f"[{signal.source}] {signal.summary}")
                self._incidents[inc.incident_id] = inc
                self._latest[inc.key] = inc
            self._open[inc.key] = inc
        self._attach(inc, signal, now_ms, count=count)
        return inc

    def _resolve(self, inc: Incident, now_ms: int, detail: str) -> None:
        inc.status, inc.resolved_ts_ms = "resolved", now_ms
        self._open.pop(inc.key, None)
        inc.note(now_ms, "resolved", detail)
        self._dirty.add(inc.incident_id)

    def record(self, signal: Signal, now_ms: int | None = None) -> Incident:
        """File one signal (see :meth:`_record`); returns its incident."""
        inc = self._record(signal, _now_ms() if now_ms is None else now_ms)
        self._flush()
        return inc

    def observe_window(
        self,
        key: WindowKey,
        signals: Sequence[Signal],
        evaluated: Collection[str] = ML_CAUSES,
        *,
        now_ms: int | None = None,
        evidence: Mapping[str, Scalar] | None = None,
    ) -> list[Incident]:
        """File one window's signals, and count it as clean for the causes it judged and that did not fire.

        Returns the incidents the signals went to (opened, reopened or attached), in signal order without
        repeats. An open incident whose cause was clean ``resolve_after_windows`` windows in a row (and has no
        Alertmanager alert still firing) resolves; if those windows are of its ``retrained_version``, it
        resolves as recovered, with ``evidence`` (e.g. the new version's realised metrics) kept as proof.
        """
        now = _now_ms() if now_ms is None else now_ms
        window_id = f"{key.model_version}:{key.start_ms}:{key.end_ms}"
        touched: dict[str, Incident] = {}
        counted: set[str] = set()  # incidents this window already counted a signal for (several subjects)
        for s in signals:
            inc = self._open.get(s.key)
            known = inc or self._latest.get(s.key)
            if known is not None and known.incident_id not in counted and window_id in known.windows_seen:
                continue  # a revision of a window this incident counted: the same evidence, not a new signal
            repeat = inc is not None and inc.incident_id in counted
            inc = self._record(s, now, count=not repeat)
            if inc.last_signal_window_ms is None or key.start_ms > inc.last_signal_window_ms:
                inc.last_signal_window_ms = key.start_ms
            if not repeat:
                inc.seen(window_id)
                counted.add(inc.incident_id)
            touched.setdefault(inc.incident_id, inc)
            if inc.retrained_version == key.model_version and inc.recovered is not False:
                inc.recovered = False
                inc.note(now, "not_recovered", f"{s.cause} still fires on retrained version {key.model_version}")
        fired = {s.cause for s in signals}
        for inc in list(self._open.values()):
            if (inc.system, inc.model_name) != (key.system, key.model_name):
                continue
            if inc.cause in fired or inc.cause not in evaluated or inc.cause not in ML_CAUSES:
                continue
            if inc.last_signal_window_ms is not None and key.start_ms < inc.last_signal_window_ms:
                continue  # older than the change's newest evidence
            if inc.seen(f"clean:{window_id}"):  # a revision of a window already counted clean
                continue
            inc.clean_windows += 1
            self._dirty.add(inc.incident_id)
            if inc.clean_windows >= self.resolve_after_windows and not inc.firing:
                on_new_version = inc.retrained_version is not None and inc.retrained_version == key.model_version
                if on_new_version:
                    inc.recovered = True
                    inc.recovery_evidence = {"model_version": key.model_version, **dict(evidence or {})}
                    inc.note(now, "recovered", f"clean on retrained version {key.model_version}")
                self._resolve(inc, now, f"clean for {inc.clean_windows} windows")
        self._flush()
        return list(touched.values())

    def apply_alertmanager(self, payload: AlertmanagerWebhook, now_ms: int | None = None) -> list[Incident]:
        """File an Alertmanager webhook (version 4) through the same keys, cool-down and de-duplication.

        A firing alert is a signal of its ``cause`` label (``alertname`` when absent) on its ``system`` and
        ``model_name`` labels (``job`` and ``-`` for ops alerts, which name a service, not a model). Alertmanager
        repeats a firing alert every ``repeat_interval``: a known fingerprint counts as a notification, not as
        a new signal. A resolved alert clears its fingerprint; an incident only Prometheus fed then resolves,
        one the service also fed waits for its clean windows as well.
        """
        now = _now_ms() if now_ms is None else now_ms
        touched: dict[str, Incident] = {}
        for alert in payload.alerts:
            signal = alert.to_signal()
            fingerprint = alert.fingerprint or _fingerprint(alert.labels)
            if alert.status == "firing":
                open_inc = self._open.get(signal.key)
                known = open_inc is not None and fingerprint in open_inc.firing
                inc = self._record(signal, now, count=not known)
                if fingerprint not in inc.firing:
                    inc.firing.append(fingerprint)
                inc.notifications += 1
                touched.setdefault(inc.incident_id, inc)
                continue
            resolved_inc = self._open.get(signal.key)
            if resolved_inc is None:
                continue  # already resolved (or never seen: Alertmanager restarted with old state)
            resolved_inc.notifications += 1
            if fingerprint in resolved_inc.firing:
                resolved_inc.firing.remove(fingerprint)
                resolved_inc.note(now, "alert_resolved", f"{alert.labels.get('alertname', '')} resolved in Prometheus")
            self._dirty.add(resolved_inc.incident_id)
            service_fed = "service" in resolved_inc.sources
            if not resolved_inc.firing and (
                not service_fed or resolved_inc.clean_windows >= self.resolve_after_windows
            ):
                self._resolve(resolved_inc, now, "every Alertmanager alert of it resolved")
            touched.setdefault(resolved_inc.incident_id, resolved_inc)
        self._flush()
        return list(touched.values())

    def note(self, incident_id: str, kind: str, detail: str = "", ts_ms: int | None = None) -> Incident:
        """Add a timeline entry to an incident (and persist it)."""
        inc = self._incidents[incident_id]
        inc.note(_now_ms() if ts_ms is None else ts_ms, kind, detail)
        self._dirty.add(incident_id)
        self._flush()
        return inc

    def record_retrain_request(self, incident_id: str, request_id: str, ts_ms: int | None = None) -> Incident:
        ts = _now_ms() if ts_ms is None else ts_ms
        inc = self._incidents[incident_id]
        inc.retrain_request_id, inc.retrain_requested_ts_ms = request_id, ts
        inc.note(ts, "retrain_requested", request_id)
        self._dirty.add(incident_id)
        self._flush()
        return inc

    def record_retrain(self, incident_id: str, *, model_version: str, ts_ms: int | None = None) -> Incident:
        """Which version was retrained in response (its registry tags carry the request id); from now on
        windows of that version decide ``recovered``."""
        ts = _now_ms() if ts_ms is None else ts_ms
        inc = self._incidents[incident_id]
        inc.retrained_version, inc.retrained_ts_ms, inc.recovered = model_version, ts, None
        inc.note(ts, "retrained", f"new version {model_version}")
        self._dirty.add(incident_id)
        self._flush()
        return inc

    def record_recovery(
        self,
        incident_id: str,
        *,
        recovered: bool,
        evidence: Mapping[str, Scalar] | None = None,
        ts_ms: int | None = None,
    ) -> Incident:
        """Record the verdict directly (e.g. from a comparison of realised metrics once labels matured)."""
        ts = _now_ms() if ts_ms is None else ts_ms
        inc = self._incidents[incident_id]
        inc.recovered = recovered
        inc.recovery_evidence = dict(evidence or {})
        inc.note(ts, "recovered" if recovered else "not_recovered", orjson.dumps(inc.recovery_evidence).decode())
        self._dirty.add(incident_id)
        self._flush()
        return inc

    def close(self) -> None:
        self._flush()
        if self._db is not None:
            self._db.close()
            self._db = None


# ========================================================================================== alertmanager


def _fingerprint(labels: Mapping[str, str]) -> str:
    return hashlib.sha1(orjson.dumps(dict(sorted(labels.items())))).hexdigest()[:16]


class AlertmanagerAlert(BaseModel):
    """One alert of Alertmanager's webhook payload (fields as Alertmanager names them)."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str = ""
    endsAt: str = ""
    generatorURL: str = ""
    fingerprint: str = ""

    def to_signal(self) -> Signal:
        labels = self.labels
        alertname = labels.get("alertname", "unnamed")
        severity = labels.get("severity", "warning")
        subject = next((labels[k] for k in ("feature", "output", "metric", "slice", "route") if k in labels), alertname)
        return Signal(
            cause=labels.get("cause") or alertname,
            severity=cast(Severity, severity if severity in SEVERITY_RANK else "warning"),
            system=labels.get("system") or labels.get("job") or "unknown",
            model_name=labels.get("model_name") or "-",
            model_version=labels.get("model_version") or "-",
            subject=subject,
            summary=self.annotations.get("summary") or alertname,
            source="alertmanager",
            evidence={"alertname": alertname, "starts_at": self.startsAt, "fingerprint": self.fingerprint},
        )


class AlertmanagerWebhook(BaseModel):
    """Alertmanager's webhook body, version 4 (the only version Alertmanager has sent since 0.15)."""

    model_config = ConfigDict(extra="ignore")

    version: Literal["4"]
    """The webhook format's version: only 4 is read (the schema says so, so a client knows before it sends)."""
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupKey: str = ""
    truncatedAlerts: int = 0
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[AlertmanagerAlert]


# ============================================================================================= retraining


class RetrainPublisher:
    """One ``RetrainRequest`` per incident of a chosen cause, on ``settings.retrain_requests_topic``.

    One retrain per model at a time: an incident of a model that already has a request outstanding (published,
    no retrained version yet) joins that request instead of publishing its own — a drift and the performance
    drop it causes are one change, and two retrains of one model on the same data are one too many; the
    retrained version is then recorded on both incidents. A request stays outstanding when the incident that
    asked for it has resolved meanwhile (a drift verdict near its threshold flaps; the retrain it asked for is
    still coming), for at most ``outstanding_s``: a request nobody answered in that long blocks nothing.

    Idempotent by incident: the request id is ``retrain-<incident_id>``, and it is persisted on the incident
    right after the producer confirmed delivery. A crash between the two publishes the same request id again
    on restart, which consumers drop (they act at most once per request id); anything else never publishes
    twice. A broker that is down leaves the incident unpublished, retried on the next call.
    """

    def __init__(
        self,
        producer: Producer,
        *,
        topic: str,
        causes: Iterable[str] = RETRAIN_CAUSES,
        flush_timeout_s: float = 5.0,
        outstanding_s: float = 6 * 3600.0,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.causes = frozenset(causes)
        self.flush_timeout_s = flush_timeout_s
        self.outstanding_ms = round(outstanding_s * 1000)

    @classmethod
    def from_settings(
        cls, settings: MonitoringSettings, producer: Producer | None = None, policy: AlertPolicy | None = None
    ) -> RetrainPublisher:
        policy = policy or AlertPolicy.from_settings(settings)
        return cls(
            producer if producer is not None else make_producer(settings),
            topic=settings.retrain_requests_topic,
            causes=policy.retrain_causes,
        )

    def request_for(self, incident: Incident, now_ms: int) -> RetrainRequest:
        evidence: dict[str, Scalar] = {
            "cause": incident.cause,
            "signals": incident.signals,
            "subjects": ",".join(incident.subjects)[:500],
        }
        if incident.change_ts_ms is not None:
            evidence["change_ts_ms"] = incident.change_ts_ms
        evidence.update({k: v for k, v in incident.evidence.items() if k not in evidence})
        return RetrainRequest(
            request_id=f"retrain-{incident.incident_id}",
            incident_id=incident.incident_id,
            system=incident.system,
            model_name=incident.model_name,
            model_version=incident.model_version,
            reason=f"{incident.cause}: {incident.summary}"[:2000],
            severity=incident.severity,
            requested_ts_ms=now_ms,
            evidence=evidence,
        )

    def publish(self, book: IncidentBook, incident: Incident, now_ms: int | None = None) -> RetrainRequest | None:
        """Publish the incident's request if it is open, of a chosen cause, and not yet published."""
        now = _now_ms() if now_ms is None else now_ms
        if not incident.is_open or incident.cause not in self.causes or incident.retrain_request_id is not None:
            return None
        if book.open_incident(incident.system, incident.model_name, DATA_QUALITY) is not None:
            if not any(e["kind"] == "retrain_held" for e in incident.events):
                book.note(incident.incident_id, "retrain_held", "a data-quality incident of this model is open", now)
            return None
        same_model = [
            i
            for i in book.incidents()
            if (i.system, i.model_name) == (incident.system, incident.model_name) and i.retrain_request_id is not None
        ]
        answered = {i.retrain_request_id for i in same_model if i.retrained_version is not None}
        outstanding = next(
            (
                i
                for i in same_model
                if i.incident_id != incident.incident_id
                and i.retrain_request_id not in answered
                and now - (i.retrain_requested_ts_ms or 0) < self.outstanding_ms
            ),
            None,
        )
        if outstanding is not None:  # one retrain per model at a time: this incident waits on the same one
            book.record_retrain_request(incident.incident_id, cast(str, outstanding.retrain_request_id), now)
            book.note(incident.incident_id, "retrain_joined", f"the retrain asked for by {outstanding.incident_id}")
            return None
        request = self.request_for(incident, now)
        publish(self.producer, self.topic, request, key=f"{incident.system}:{incident.model_name}")
        self.producer.flush(self.flush_timeout_s)  # raises when not delivered: nothing is recorded then
        book.record_retrain_request(incident.incident_id, request.request_id, now)
        return request

    def publish_pending(self, book: IncidentBook, now_ms: int | None = None) -> list[RetrainRequest]:
        """Every open incident that is owed a request (also those held back earlier, or whose publish failed)."""
        sent = []
        for inc in book.incidents(status="open"):
            request = self.publish(book, inc, now_ms)
            if request is not None:
                sent.append(request)
        return sent


# ========================================================================================= retrain watch


def registry_lookup(settings: MonitoringSettings) -> Callable[[str, str], list[str]]:
    """``lookup(model_name, request_id)``: versions the registry of ``settings`` tags with ``request_id`` (how
    a consumer reports its retrain). The registry is configured first: MLflow's own default would be a
    ``mlflow.db`` in the working directory."""
    from systems.common import registry

    def lookup(model_name: str, request_id: str) -> list[str]:
        registry.configure(settings)
        return registry.versions_tagged(model_name, registry.RETRAIN_REQUEST_TAG, request_id)

    return lookup


class RetrainWatcher:
    """Closes the loop's last gap: which model version each published retrain request produced.

    Consumers of ``retrain.requests`` register the retrained version with the request id as a tag (see
    ``RetrainRequest``); :meth:`check` looks the pending ones up (``lookup``: :func:`registry_lookup` in the
    service)
    and records the version on the incident, from which point that version's windows decide ``recovered``.
    A registry that is down is logged and retried on the next check.
    """

    def __init__(self, loop: AlertLoop, lookup: Callable[[str, str], list[str]]) -> None:
        self.loop = loop
        self.lookup = lookup

    def check(self, now_ms: int | None = None) -> list[Incident]:
        with self.loop.lock:
            pending = [
                i
                for i in self.loop.book.incidents()
                if i.retrain_request_id is not None and i.retrained_version is None
            ]
        found: list[Incident] = []
        for inc in pending:
            try:
                versions = self.lookup(inc.model_name, cast(str, inc.retrain_request_id))
            except Exception as exc:  # the registry down: the next check retries
                log.warning("registry lookup for %s failed (%s: %s)", inc.retrain_request_id, type(exc).__name__, exc)
                return found
            if versions:
                with self.loop.lock:
                    found.append(
                        self.loop.book.record_retrain(inc.incident_id, model_version=versions[-1], ts_ms=now_ms)
                    )
        return found


# ================================================================================================= loop


class AlertLoop:
    """The monitoring service's entry point: ``on_window`` for its own ML alerts, the webhook for Prometheus's.

    One lock serialises the stream consumer (windows) and the HTTP webhook (Alertmanager), so both see one
    book. Retrain requests are published after each call; a broker failure is logged and retried next time,
    never raised into the consumer or the webhook (Alertmanager would retry and double-count notifications).
    """

    def __init__(
        self, book: IncidentBook, publisher: RetrainPublisher | None = None, policy: AlertPolicy | None = None
    ) -> None:
        self.book = book
        self.publisher = publisher
        self.policy = policy or AlertPolicy()
        self.lock = threading.Lock()
        self._streaks: dict[tuple[str, str, str, str, str], list[tuple[int, int]]] = {}

    @classmethod
    def from_settings(
        cls,
        settings: MonitoringSettings,
        *,
        producer: Producer | None = None,
        policy: AlertPolicy | None = None,
    ) -> AlertLoop:
        policy = policy or AlertPolicy.from_settings(settings)
        book = IncidentBook.from_settings(settings, policy)
        return cls(book, RetrainPublisher.from_settings(settings, producer, policy), policy)

    def _publish(self, now_ms: int | None) -> None:
        if self.publisher is None:
            return
        try:
            self.publisher.publish_pending(self.book, now_ms)
        except Exception as exc:  # broker down or slow: the window and the webhook must still be filed
            log.warning(
                "retrain request not published (%s: %s); retried after the next window or alert",
                type(exc).__name__,
                exc,
            )

    def _confirmed(self, result: WindowResult, signals: list[Signal], evaluated: set[str]) -> list[Signal]:
        """Hold back signals of causes in ``policy.confirm_windows`` until they fired in that many consecutive
        windows of the series (revisions of one window are one window)."""
        k = result.key
        window = (k.start_ms, k.end_ms)
        out = []
        fired: set[tuple[str, str]] = set()
        for s in signals:
            need = self.policy.confirm_windows.get(s.cause, 1)
            if need <= 1:
                out.append(s)
                continue
            streak_key = (k.system, k.model_name, k.model_version, s.cause, s.subject)
            fired.add((s.cause, s.subject))
            windows = self._streaks.setdefault(streak_key, [])
            if window not in windows:
                windows.append(window)
                del windows[:-need]
            if len(windows) >= need:
                out.append(s)
        for streak_key in list(self._streaks):  # a judged window without the signal breaks its streak
            system, model, version, cause, subject = streak_key
            same_series = (system, model, version) == (k.system, k.model_name, k.model_version)
            judged_clean = same_series and cause in evaluated and (cause, subject) not in fired
            if judged_clean and window not in self._streaks[streak_key]:  # a revision of a fired window keeps it
                del self._streaks[streak_key]
        return out

    def on_window(self, result: WindowResult, now_ms: int | None = None) -> list[Incident]:
        """Evaluate a closed window, file its signals, publish what is owed; returns the incidents it touched."""
        evaluated = evaluated_causes(result, self.policy)
        signals = self._confirmed(result, evaluate(result, self.policy), evaluated)
        evidence: dict[str, Scalar] = {f"realised.{m.name}": m.value for m in result.realised if m.value is not None}
        with self.lock:
            touched = self.book.observe_window(result.key, signals, evaluated, now_ms=now_ms, evidence=evidence)
            self._publish(now_ms)
        return touched

    def handle_alertmanager_webhook(
        self, payload: Mapping[str, Any] | AlertmanagerWebhook, now_ms: int | None = None
    ) -> list[Incident]:
        """Alertmanager's webhook JSON → incidents of the same book (raises ``ValidationError`` on a bad body)."""
        body = payload if isinstance(payload, AlertmanagerWebhook) else AlertmanagerWebhook.model_validate(payload)
        with self.lock:
            touched = self.book.apply_alertmanager(body, now_ms)
            self._publish(now_ms)
        return touched

    def incidents(self, **filters: Any) -> list[Incident]:
        with self.lock:
            return self.book.incidents(**filters)

    def close(self) -> None:
        with self.lock:
            self.book.close()
            if self.publisher is not None:
                try:
                    self.publisher.producer.close()
                except BrokerError as exc:
                    log.warning("retrain producer closed with undelivered messages: %s", exc)
