"""Bias-variance (quick form): the trends the README claims, checked on the diabetes bootstrap decomposition."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def result(run_quick) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return run_quick("bias_variance")[0]


def _col(result: dict[str, Any], sweep: str, key: str) -> list[float]:
    return [r[key] for r in result["sweeps"][sweep]]


def test_decomposition_adds_up(result: dict[str, Any]) -> None:
    for name, rows in result["sweeps"].items():
        for r in rows:
            assert math.isclose(r["error"], r["bias2_noise"] + r["variance"], rel_tol=1e-3, abs_tol=1e-5), (name, r)


def test_deeper_trees_trade_bias_for_variance(result: dict[str, Any]) -> None:
    t = result["trends"]
    assert t["tree_variance_ratio_deep_vs_stump"] > 2.0
    assert t["tree_bias_ratio_deep_vs_stump"] < 1.0


def test_knn_test_error_is_u_shaped_in_k(result: dict[str, Any]) -> None:
    err = _col(result, "knn_k", "error")
    best = err.index(min(err))
    assert 0 < best < len(err) - 1, err  # neither the most flexible (k=1) nor the stiffest k is best
    var = _col(result, "knn_k", "variance")
    assert var[0] > 10 * var[-1]


def test_ridge_penalty_cuts_variance_monotonically(result: dict[str, Any]) -> None:
    var = _col(result, "ridge_alpha", "variance")
    assert all(a > b for a, b in itertools.pairwise(var)), var


def test_bagging_cuts_variance_and_boosting_cuts_bias(result: dict[str, Any]) -> None:
    t = result["trends"]
    assert t["bagging_variance_ratio_many_vs_one"] < 0.5
    assert 0.85 < t["bagging_bias_ratio_many_vs_one"] < 1.15  # averaging leaves the bias where it was
    assert t["boosting_bias_ratio_many_vs_one"] < 0.9
    assert t["boosting_variance_ratio_many_vs_one"] > 1.0


def test_random_features_show_a_peak_at_the_interpolation_threshold(result: dict[str, Any]) -> None:
    dd = result["double_descent"]
    rf = dd["random_features"]
    assert rf["appears"] is True
    assert 0.5 * dd["interpolation_threshold_rows"] <= rf["peak_at"] <= 1.5 * dd["interpolation_threshold_rows"]
    assert isinstance(dd["mlp_width"]["appears"], bool)  # reported either way
    assert dd["mlp_train_mse_widest"] < 0.1  # the widest MLP (nearly) interpolates its training rows


def test_cross_validation_choice_is_recorded_with_its_test_error(result: dict[str, Any]) -> None:
    for name, sel in result["selection"].items():
        params = [r["param"] for r in result["sweeps"][name]]
        assert sel["cv_choice"] in params
        assert sel["error_at_cv_choice"] >= sel["test_best_error_not_used_for_selection"]
