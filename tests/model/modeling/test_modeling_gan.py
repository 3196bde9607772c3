"""GANs (quick form): coverage measured by a real classifier, collapse detected, fraud oversampling compared."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = [pytest.mark.model, pytest.mark.slow]


@pytest.fixture(scope="module")
def result(run_quick) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return run_quick("gan")[0]


def test_the_judge_is_a_good_digit_classifier(result: dict[str, Any]) -> None:
    assert result["digits_setup"]["evaluator_accuracy"] >= 0.95


def test_collapse_rule_passes_real_digits_and_flags_an_untrained_generator(result: dict[str, Any]) -> None:
    real, untrained = result["reference"]["real_held_out"], result["reference"]["untrained_generator"]
    assert real["coverage"] == 10 and not real["collapsed"]
    assert untrained["collapsed"]


def test_training_moves_the_generator_towards_the_data(result: dict[str, Any]) -> None:
    untrained_fd = result["reference"]["untrained_generator"]["fd"]
    for variant, r in result["digits"].items():
        assert r["fd"]["mean"] < untrained_fd / 2, variant
        assert 0 <= r["coverage"]["mean"] <= 10
        assert len(r["log"]["coverage"]) == len(r["log"]["step"]) >= 3  # coverage tracked during training


def test_fraud_oversamplers_are_compared_on_the_fraud_protocol(result: dict[str, Any]) -> None:
    f = result["fraud"]
    base_rate = f["protocol"]["test_frauds"] / f["protocol"]["test_rows"]
    for strategy in ("none", "smote", "cgan"):
        assert f["summary"][strategy]["ap"]["mean"] > 5 * base_rate, strategy
    lo, hi = f["cgan_minus_smote"]["ap_ci_seed_averaged_ranks"]
    assert lo <= hi
    assert 0.5 <= f["two_sample_auc"]["smote"]["mean"] <= 1.0
