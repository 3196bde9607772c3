"""Trees vs deep networks (quick form): the README's claims, checked on fraud, reviews, digits and text."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = [pytest.mark.model, pytest.mark.slow]


@pytest.fixture(scope="module")
def result(run_quick) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return run_quick("trees_vs_dnn")[0]


def test_boosting_beats_the_mlp_on_fraud_features(result: dict[str, Any]) -> None:
    fraud = result["datasets"]["fraud"]
    diff = fraud["gbm_minus_best_net"]
    assert diff["ci"][0] > 0, diff  # the paired interval excludes a tie
    assert fraud["winner"] == "gbm"


def test_convolutions_beat_the_mlp_on_pixels(result: dict[str, Any]) -> None:
    models = result["datasets"]["digits"]["models"]
    assert models["cnn"]["test"] > models["mlp"]["test"]


def test_tree_shap_is_exact_and_gives_noise_columns_less_than_their_share(result: dict[str, Any]) -> None:
    for name in ("fraud", "reviews"):
        ds = result["datasets"][name]
        assert ds["shap"]["additivity_max_abs_error"] < 1e-3  # contributions + bias == margin, row by row
        noise = ds["noise_columns"]
        share_of_columns = noise["added_columns"][-1] / (noise["added_columns"][-1] + ds["features"])
        assert noise["gbm_shap_share_on_noise"] < share_of_columns, name


def test_more_rows_help_boosting_on_fraud(result: dict[str, Any]) -> None:
    lc = result["datasets"]["fraud"]["learning_curve"]
    assert lc["train_rows"] == sorted(lc["train_rows"])
    assert lc["gbm"][-1] > lc["gbm"][0]


def test_every_model_is_timed_and_chosen_on_validation(result: dict[str, Any]) -> None:
    for ds in result["datasets"].values():
        for m in ds["models"].values():
            assert m["fit_s"] > 0 and m["single_row_us"] > 0 and m["batched_per_row_us"] > 0
            assert m["val"] == max(c["val"] for c in m["val_candidates"])
            assert m["test_ci"][0] <= m["test"] <= m["test_ci"][1]
