"""Regularisation (quick form): the claims of the README's regularisation section, checked on digits."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def result(run_quick) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return run_quick("regularization")[0]


def _sweep(result: dict[str, Any], tech: str) -> list[dict[str, Any]]:
    return result["sweep"][tech]


def test_unregularised_network_overfits_300_images(result: dict[str, Any]) -> None:
    none = result["techniques"]["none"]
    assert none["train_acc"] >= 0.98
    assert none["gap_acc"] >= 0.03  # train accuracy well above validation accuracy
    assert result["data"]["train"] == 300


def test_l1_zeroes_weights_and_l2_does_not(result: dict[str, Any]) -> None:
    sp = result["sparsity"]
    assert sp["l1_zero_fraction"] >= 0.10
    assert sp["l2_zero_fraction"] == 0.0 and sp["none_zero_fraction"] == 0.0


def test_l2_and_dropout_shrink_the_generalisation_gap(result: dict[str, Any]) -> None:
    none_gap = _sweep(result, "none")[0]["gap_loss"]
    for tech in ("l2", "dropout"):
        assert max(r["gap_loss"] for r in _sweep(result, tech)) < none_gap, tech


def test_weight_decay_shrinks_the_layer_batchnorm_makes_scale_invariant(result: dict[str, Any]) -> None:
    bd = result["batchnorm_decay"]
    assert bd["fc1_norm_with"] < 0.85 * bd["fc1_norm_without"]
    assert bd["effective_lr_ratio"] > 1.3
    assert bd["val_acc_with"] >= bd["val_acc_without"] - 0.02  # and the function barely changes


def test_strengths_are_chosen_on_validation(result: dict[str, Any]) -> None:
    for tech, rows in result["sweep"].items():
        best_val = max(r["val_acc"] for r in rows)
        chosen = next(r for r in rows if r["strength"] == result["chosen"][tech])
        assert chosen["val_acc"] == best_val, tech
    for tech in result["techniques"].values():
        ci = tech["test_acc_minus_none"]
        assert ci["lo"] <= ci["mean"] <= ci["hi"]
