"""Drift statistics from summaries agree with the exact ones on raw rows, and the report decides as designed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from systems.common.predictions import PredictionRecord
from systems.monitoring.bench import sample_size_sensitivity
from systems.monitoring.drift import (
    CategoricalSummary,
    DriftConfig,
    EmbeddingSpec,
    EmbeddingSummary,
    NumericalSummary,
    chi_squared_p,
    detect_drift,
    fit_categorical,
    fit_numerical,
    fit_schema,
    frame_from_records,
    jensen_shannon,
    ks_binned,
    mmd_test,
    psi_numerical,
    wasserstein_normed,
)
from systems.monitoring.synthetic import make_drift_frames

pytestmark = pytest.mark.unit

W_TOLERANCE = 0.005
"""Binned minus exact normed Wasserstein, at most (5 % of the 0.1 threshold); binned is never above exact."""


def _pair(ref: np.ndarray, cur: np.ndarray) -> tuple[NumericalSummary, NumericalSummary]:
    spec = fit_numerical("x", ref)
    return NumericalSummary.build(spec, ref), NumericalSummary.build(spec, cur)


def _exact_w(ref: np.ndarray, cur: np.ndarray) -> float:
    return float(stats.wasserstein_distance(ref, cur) / max(np.std(ref), 0.001))  # Evidently's formula


CASES = {
    "same normal": (lambda r, n: r.normal(0, 1, n), lambda r, n: r.normal(0, 1, n)),
    "same lognormal": (lambda r, n: r.lognormal(0, 1, n), lambda r, n: r.lognormal(0, 1, n)),
    "shift 0.1": (lambda r, n: r.normal(0, 1, n), lambda r, n: r.normal(0.1, 1, n)),
    "scale 1.5": (lambda r, n: r.normal(0, 1, n), lambda r, n: r.normal(0, 1.5, n)),
    "bimodal": (
        lambda r, n: r.normal(0, 1, n),
        lambda r, n: np.r_[r.normal(-1, 0.5, n // 2), r.normal(1, 0.5, n // 2)],
    ),
    "far outside": (lambda r, n: r.normal(0, 1, n), lambda r, n: r.normal(8, 2, n)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_binned_wasserstein_is_a_tight_lower_bound_of_the_exact_one(case: str) -> None:
    make_ref, make_cur = CASES[case]
    rng = np.random.default_rng(1)
    ref, cur = make_ref(rng, 20_000), make_cur(rng, 20_000)
    a, b = _pair(ref, cur)
    exact = _exact_w(ref, cur)
    assert -1e-9 <= exact - wasserstein_normed(a, b) <= W_TOLERANCE


def test_wasserstein_is_exact_when_the_cdfs_never_cross() -> None:
    """A pure translation (and a window wholly beyond the reference's range) leaves no crossing bin."""
    ref = np.random.default_rng(2).exponential(1.0, 10_000)
    for delta in (0.3, 50.0):
        a, b = _pair(ref, ref + delta)
        assert wasserstein_normed(a, b) == pytest.approx(_exact_w(ref, ref + delta), rel=1e-9)


def test_binned_ks_is_close_to_scipy() -> None:
    rng = np.random.default_rng(3)
    ref, cur = rng.normal(0, 1, 20_000), rng.normal(0.05, 1, 20_000)
    d, p = ks_binned(*_pair(ref, cur))
    exact = stats.ks_2samp(ref, cur, method="asymp")
    assert exact.statistic - 0.005 <= d <= exact.statistic + 1e-12  # at the edges only: never above the sup
    assert abs(math.log10(p) - math.log10(exact.pvalue)) < 0.5  # ~3e-6 vs ~2e-6: same order of magnitude
    assert (p < 0.05) == (exact.pvalue < 0.05)


def test_psi_by_hand() -> None:
    ref = np.arange(1000, dtype=float)
    cur = np.r_[np.arange(500, dtype=float), np.full(500, 2000.0)]  # half stays, half leaves the range
    a, b = _pair(ref, cur)
    p = np.r_[1e-4, np.full(10, 0.1), 1e-4]  # reference deciles, empty overflow bins
    q = np.r_[1e-4, np.full(5, 0.1), np.full(5, 1e-4), 0.5]
    assert psi_numerical(a, b) == pytest.approx(float(np.sum((p - q) * np.log(p / q))), rel=1e-9)


def test_jensen_shannon_is_evidentlys_distance_and_lumping_unseen_categories_is_exact() -> None:
    ref = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    cur = ["a"] * 30 + ["b"] * 30 + ["x"] * 25 + ["y"] * 15  # x, y never seen: both land in __other__
    spec = fit_categorical("c", ref)
    r, c = CategoricalSummary.build(spec, ref), CategoricalSummary.build(spec, cur)
    keys = ["a", "b", "c", "x", "y"]
    p = np.array([ref.count(k) for k in keys]) / len(ref)
    q = np.array([cur.count(k) for k in keys]) / len(cur)
    assert jensen_shannon(r.counts, c.counts) == pytest.approx(float(jensenshannon(p, q)), abs=1e-12)
    assert c.unseen == 40
    # natural log: two disjoint distributions are sqrt(ln 2) apart, not 1 (base 2) and not ln 2 (divergence)
    assert jensen_shannon(np.array([1, 0]), np.array([0, 1])) == pytest.approx(math.sqrt(math.log(2)))


def test_chi_squared_matches_scipy_contingency() -> None:
    rng = np.random.default_rng(4)
    labels = np.array(list("abcd"), dtype=object)
    ref, cur = labels[rng.choice(4, 3000)], labels[rng.choice(4, 2000, p=[0.3, 0.3, 0.2, 0.2])]
    spec = fit_categorical("c", ref)
    r, c = CategoricalSummary.build(spec, ref), CategoricalSummary.build(spec, cur)
    table = [[int((ref == k).sum()) for k in "abcd"], [int((cur == k).sum()) for k in "abcd"]]
    assert chi_squared_p(r.counts, c.counts) == pytest.approx(stats.chi2_contingency(table, correction=False).pvalue)


def test_detect_drift_flags_the_designed_columns_and_is_json() -> None:
    frames = make_drift_frames(20_000, numeric=8, categorical=5, seed=0)
    schema = fit_schema(frames.reference, numerical=frames.numerical, categorical=frames.categorical)
    report = detect_drift(schema.summarize(frames.reference), schema.summarize(frames.current))
    assert sorted(report.drifted_columns) == sorted(frames.shifted)
    assert report["num_7"].method == "jensenshannon"  # 3 distinct values: Evidently's rule for numerical
    assert report["num_0"].method == "wasserstein" and report["cat_0"].method == "jensenshannon"
    assert report["num_4"].reference_null_share == pytest.approx(0.02, abs=0.005)
    assert report.share_of_drifted_columns == pytest.approx(6 / 13)
    assert report.dataset_drift is False  # 6 of 13 < 0.5
    doc = json.loads(report.to_json())
    assert doc["drifted_columns"] == report.drifted_columns and doc["columns"][0]["stats"]["ks"] is not None


def test_p_value_methods_decide_below_the_threshold_and_overrides_apply() -> None:
    frames = make_drift_frames(20_000, numeric=6, categorical=0, seed=0)
    schema = fit_schema(frames.reference, numerical=frames.numerical)
    ref, cur = schema.summarize(frames.reference), schema.summarize(frames.current)
    ks = detect_drift(ref, cur, DriftConfig(num_method="ks"))
    # the 0.04 σ shift of num_5 is "significant" at 20k rows: the p-value test flags it, the distance does not
    assert ks["num_5"].drifted and ks["num_5"].statistic is not None and ks["num_5"].statistic < 0.05
    assert not detect_drift(ref, cur)["num_5"].drifted
    tight = detect_drift(ref, cur, DriftConfig(per_column_threshold={"num_5": 0.03}, thresholds={"wasserstein": 0.6}))
    assert tight["num_5"].drifted and tight["num_5"].threshold == 0.03
    assert not tight["num_1"].drifted  # W ≈ 0.5 < 0.6


def test_p_values_flag_a_negligible_change_on_large_windows_distances_do_not() -> None:
    small, large = sample_size_sensitivity((2_000, 500_000), null_repeats=3)
    assert large["ks_p_value"] < 1e-3 and large["chisquare_p_value"] < 1e-3
    assert large["wasserstein_normed"] < 0.05 and large["jensenshannon"] < 0.05
    assert small["null_wasserstein_p95"] > large["null_wasserstein_p95"]  # the distance's noise shrinks with n


def test_prediction_drift_from_shared_records() -> None:
    rng = np.random.default_rng(5)

    def records(n: int, score_mean: float, p_fraud: float, version: str) -> list[PredictionRecord]:
        return [
            PredictionRecord(
                system="fraud",
                model_name="fraud-xgb",
                model_version=version,
                prediction_id=f"{version}-{i}",
                event_ts_ms=1_700_000_000_000 + i,
                features={"amount": float(rng.lognormal(3, 1)), "channel": str(rng.choice(["web", "pos"]))},
                output={
                    "score": float(rng.normal(score_mean, 0.1)),
                    "label": "fraud" if rng.random() < p_fraud else "ok",
                },
                latency_ms=1.0,
            )
            for i in range(n)
        ]

    ref_frame = frame_from_records(records(3000, 0.2, 0.05, "1"))
    cur_frame = frame_from_records(records(3000, 0.35, 0.30, "2"))
    schema = fit_schema(ref_frame)  # typed from dtypes; meta.* columns skipped
    assert {s.name: (s.kind, s.role) for s in schema.columns} == {
        "amount": ("numerical", "feature"),
        "channel": ("categorical", "feature"),
        "output.score": ("numerical", "prediction"),
        "output.label": ("categorical", "prediction"),
    }
    report = detect_drift(schema.summarize(ref_frame), schema.summarize(cur_frame))
    assert report.prediction_drift and set(report.drifted_columns) == {"output.score", "output.label"}
    assert report.number_of_columns == 2 and not report.dataset_drift  # the features did not move


def test_empty_current_column_is_reported_not_raised() -> None:
    spec = fit_numerical("x", np.arange(100.0))
    schema_ref = fit_schema({"x": np.arange(100.0)})
    ref = schema_ref.summarize({"x": np.arange(100.0)})
    cur = schema_ref.summarize({"x": np.full(10, np.nan)})
    col = detect_drift(ref, cur)["x"]
    assert col.statistic is None and not col.drifted and col.current_null_share == 1.0
    assert spec == schema_ref["x"]


def test_mmd_detects_a_shift_in_embedding_space_and_not_noise() -> None:
    rng = np.random.default_rng(6)
    dim = 32
    ref = rng.normal(size=(2000, dim))
    same = rng.normal(size=(2000, dim))
    shifted = rng.normal(size=(2000, dim))
    shifted[:, :4] += 1.0  # a new topic: the mean moves in a 4-dim subspace
    spec = EmbeddingSpec(name="emb", dim=dim, capacity=400)
    r = EmbeddingSummary.build(spec, ref, seed=0)
    for cur, drifted in ((same, False), (shifted, True)):
        mmd2, p, _ = mmd_test(r.vectors, EmbeddingSummary.build(spec, cur, seed=1).vectors, permutations=200)
        assert (p < 0.05) == drifted
        assert (mmd2 >= 0.015) == drifted
    schema = fit_schema({"emb": ref}, embedding_capacity=400)
    report = detect_drift(schema.summarize({"emb": ref}, seed=0), schema.summarize({"emb": shifted}, seed=1))
    assert report["emb"].drifted and report["emb"].stats["mmd_p_value"] == pytest.approx(1 / 201)
