"""Realised metrics with intervals and a sample guard; CBPE estimates that match on calibrated scores and
show the gap on miscalibrated ones."""

from __future__ import annotations

import math

import numpy as np
import pytest

from systems.monitoring.performance import (
    ClassProbabilitySums,
    MetricConfig,
    average_precision,
    binary_metrics,
    decision_code,
    estimate_binary,
    estimate_gaps,
    estimate_multiclass,
    expected_average_precision,
    infer_kind,
    is_positive,
    macro_f1,
    metric_map,
    multiclass_metrics,
    ranked_metrics,
    wilson,
)

pytestmark = pytest.mark.unit

TINY = MetricConfig(min_samples=1, alert_budget=0.25, bootstrap_resamples=50)


def test_wilson_interval_matches_the_textbook_values() -> None:
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson(0, 10)  # never below 0, unlike the normal interval
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)


def test_average_precision_and_macro_f1_agree_with_sklearn_including_ties_and_weights() -> None:
    from sklearn.metrics import average_precision_score, f1_score

    rng = np.random.default_rng(3)
    score = rng.integers(0, 20, 500) / 20.0  # many ties
    y = (rng.random(500) < score * 0.8).astype(int)
    w = rng.integers(0, 4, 500).astype(float)
    assert average_precision(score, y) == pytest.approx(average_precision_score(y, score), abs=1e-12)
    weighted = average_precision_score(y, score, sample_weight=w)
    assert average_precision(score, y, w) == pytest.approx(weighted, abs=1e-12)
    pred, true = rng.integers(0, 4, 400), rng.integers(0, 5, 400)  # class 4 is never predicted
    assert macro_f1(pred, true) == pytest.approx(f1_score(true, pred, average="macro"), abs=1e-12)


def test_binary_metrics_exact_on_a_tiny_window() -> None:
    score = np.array([0.9, 0.8, 0.3, 0.1])
    y = np.array([1, 0, 1, 0])
    decision = np.array([1, 1, 0, 0])
    m = metric_map(binary_metrics(score, y, decision, TINY))
    assert m["ap"].value == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3))
    assert m["ap"].low is not None and m["ap"].high is not None
    assert m["precision_at_budget"].value == 1.0 and m["precision_at_budget"].n == 1  # top 25 % = 1 row
    assert (m["fpr"].value, m["precision"].value, m["recall"].value, m["accuracy"].value) == (0.5, 0.5, 0.5, 0.5)
    assert m["prevalence"].value == 0.5 and m["fpr"].n == 2


def test_the_minimum_sample_guard_withholds_every_value() -> None:
    cfg = MetricConfig(min_samples=200)
    rng = np.random.default_rng(0)
    score, y = rng.random(50), rng.integers(0, 2, 50)
    metrics = binary_metrics(score, y, (score > 0.5).astype(int), cfg)
    assert metrics and all(m.value is None for m in metrics)
    assert all(m.value is None for m in multiclass_metrics(y, y, cfg))
    assert all(m.value is None for m in ranked_metrics(y, cfg))
    assert all(m.value is None for m in estimate_binary(score, None, cfg))


def test_bootstrap_intervals_are_seeded_and_contain_the_value() -> None:
    rng = np.random.default_rng(1)
    score = rng.random(2000)
    y = (rng.random(2000) < score).astype(int)
    cfg = MetricConfig(min_samples=10, bootstrap_resamples=100, seed=7)
    a, b = metric_map(binary_metrics(score, y, None, cfg)), metric_map(binary_metrics(score, y, None, cfg))
    assert (a["ap"].low, a["ap"].high) == (b["ap"].low, b["ap"].high)
    assert a["ap"].low is not None and a["ap"].high is not None and a["ap"].value is not None
    assert a["ap"].low < a["ap"].value < a["ap"].high
    pred = np.where(rng.random(2000) < 0.8, y, 1 - y)
    f1 = metric_map(multiclass_metrics(pred, y, cfg))["macro_f1"]
    assert f1.low is not None and f1.high is not None and f1.value is not None
    assert f1.low < f1.value < f1.high


# Tolerances: three times the worst |estimate - realised| over 8 seeds of this design (n = 20,000, Beta(1, 6)
# scores, so ~14 % positives and ~700 rows flagged at 0.5); precision is on those few flagged rows.
TOLERANCE = {"ap": 0.02, "accuracy": 0.011, "recall": 0.015, "fpr": 0.0025, "prevalence": 0.01, "precision": 0.13}


def _calibrated(seed: int, n: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.beta(1, 6, n)
    return p, (rng.random(n) < p).astype(int)


def test_cbpe_estimate_matches_the_realised_value_on_calibrated_scores() -> None:
    cfg = MetricConfig(min_samples=100, bootstrap_resamples=20)
    p, y = _calibrated(11)
    decision = (p >= 0.5).astype(int)
    realised = metric_map(binary_metrics(p, y, decision, cfg))
    estimated = metric_map(estimate_binary(p, decision, cfg))
    for name, tol in TOLERANCE.items():
        r, e = realised[name].value, estimated[name].value
        assert r is not None and e is not None
        assert abs(e - r) <= tol, (name, e, r)


def test_cbpe_estimate_shows_the_gap_on_a_miscalibrated_model() -> None:
    """sqrt(p) ranks like p (the realised AP does not move) but claims far more confidence than it has."""
    cfg = MetricConfig(min_samples=100, bootstrap_resamples=20)
    p, y = _calibrated(11)
    q = np.sqrt(p)
    decision = (q >= 0.5).astype(int)
    realised = metric_map(binary_metrics(q, y, decision, cfg))
    estimated = metric_map(estimate_binary(q, decision, cfg))
    assert realised["ap"].value == pytest.approx(metric_map(binary_metrics(p, y, None, cfg))["ap"].value)
    for name in ("ap", "precision", "prevalence"):
        r, e = realised[name].value, estimated[name].value
        assert r is not None and e is not None
        assert e - r > 0.15, (name, e, r)
    gaps = estimate_gaps(realised.values(), estimated.values())
    assert set(gaps) == set(estimated) and gaps["ap"] == pytest.approx(estimated["ap"].value - realised["ap"].value)


def test_expected_average_precision_is_exact_for_certain_scores() -> None:
    # Scores of exactly 1 and 0: the positives are known and ranked first, so E[AP] = AP = 1.
    assert expected_average_precision(np.array([1.0, 1.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert math.isnan(expected_average_precision(np.zeros(3)))


def test_multiclass_cbpe_expected_accuracy_is_the_mean_max_probability() -> None:
    rng = np.random.default_rng(5)
    n, k = 20_000, 4
    logits = rng.normal(0, 1.5, (n, k))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    true = (probs.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)  # a draw from each row's distribution
    pred = probs.argmax(axis=1)
    sums = ClassProbabilitySums()
    for i in range(n):
        sums.add(str(pred[i]), list(range(k)), probs[i].tolist())
    cfg = MetricConfig(min_samples=100, bootstrap_resamples=10)
    est = metric_map(estimate_multiclass(probs.max(axis=1), sums, cfg))
    real = metric_map(multiclass_metrics(pred, true, cfg))
    assert est["accuracy"].value == pytest.approx(float(probs.max(axis=1).mean()))
    for name in ("accuracy", "macro_f1"):
        e, r = est[name].value, real[name].value
        assert e is not None and r is not None and abs(e - r) < 0.02, (name, e, r)


def test_the_output_decides_the_metrics_not_the_system_name() -> None:
    assert infer_kind({"score": 0.3, "decision": "block"}) == "binary"
    assert infer_kind({"label": "positive", "probs": [0.2, 0.8], "classes": ["negative", "positive"]}) == "multiclass"
    assert infer_kind({"item_ids": [3, 1, 2], "scores": [0.9, 0.5, 0.1]}) == "ranked"
    assert infer_kind({"something": "else"}) is None
    assert decision_code({"decision": "block"}, 0.9) == 1 and decision_code({"decision": "approve"}, 0.9) == 0
    assert decision_code({"threshold": 0.5}, 0.7) == 1 and decision_code({}, 0.7) == -1
    assert is_positive(1) and is_positive("fraud") and not is_positive(0) and not is_positive("0")
