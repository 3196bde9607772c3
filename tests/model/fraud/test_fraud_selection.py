"""Model selection happens on validation only, and what is deployed is what is reported.

Issue #9 §2: the strategy and the model kind were once picked by test-period AP and the best-of-four
published, while the deployed champion was another configuration. These tests pin the fix: the choice
does not move when test labels do (and does when validation labels do), the registered champion is the
chosen configuration, and the bench headline is that champion's test numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from systems.fraud.data import SimulatorConfig, simulate
from systems.fraud.evaluate import evaluate_scores
from systems.fraud.features import FEATURES
from systems.fraud.settings import FraudSettings
from systems.fraud.train import (
    Selection,
    SplitConfig,
    StrategyTable,
    add_features,
    delayed_split,
    select_on_validation,
    train_one,
    validation_config,
)

pytestmark = pytest.mark.model

CFG = SplitConfig(start_day=31, train_days=9, calib_days=2, test_days=7)  # validation 33..39, test 47..53
MODELS = ("logreg", "xgboost")
STRATEGIES = ("none", "undersample")  # the fast ones: four candidates
FIT = {"xgboost": {"xgb_params": {"n_estimators": 100, "learning_rate": 0.1, "n_jobs": 1}}}


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    cfg = SimulatorConfig(
        n_customers=2000,
        n_terminals=4000,
        n_days=56,
        compromised_terminals_per_day=1,
        compromised_customers_per_day=1,
        seed=0,
    )
    return add_features(simulate(cfg).transactions)


def _select(frame: pd.DataFrame) -> Selection:
    return select_on_validation(frame, CFG, models=MODELS, strategies=STRATEGIES, fit_params=FIT)


def _scores(table: StrategyTable) -> dict[str, dict[str, dict[str, Any]]]:
    """The table without wall-clock fit times (the only field that legitimately differs between runs)."""
    return {
        k: {s: {m: v for m, v in row.items() if m != "fit_s"} for s, row in rows.items()} for k, rows in table.items()
    }


@pytest.fixture(scope="module")
def selection(frame: pd.DataFrame) -> Selection:
    return _select(frame)


def test_selection_never_reads_test_labels(frame: pd.DataFrame, selection: Selection) -> None:
    after_validation = frame["day"] > validation_config(CFG).periods()["scored"][1]
    assert after_validation.sum() and (frame.loc[frame["day"] >= CFG.scored_start, "fraud"] == 1).sum() > 50
    perturbed = frame.copy()
    # every label of the delay and test periods inverted, then shuffled: a test table would change completely
    flipped = 1 - perturbed.loc[after_validation, "fraud"].to_numpy()
    perturbed.loc[after_validation, "fraud"] = np.random.default_rng(0).permutation(flipped)
    again = _select(perturbed)
    assert (again.kind, again.strategy, again.per_model) == (selection.kind, selection.strategy, selection.per_model)
    assert _scores(again.table) == _scores(selection.table)


def test_selection_follows_validation_labels(frame: pd.DataFrame, selection: Selection) -> None:
    """Relabel the validation block so that a losing model kind ranks it perfectly: the choice must follow."""
    loser = next(k for k in MODELS if k != selection.kind)
    strategy = selection.per_model[loser]
    val = delayed_split(frame, validation_config(CFG))
    model, _ = train_one(val, loser, strategy, fit_params=FIT.get(loser))
    score = model.raw_scores(val.test[FEATURES].to_numpy(np.float64))
    n_fraud = int(val.test["fraud"].sum())
    top = val.test.index[np.argsort(-score, kind="stable")[:n_fraud]]
    perturbed = frame.copy()
    perturbed.loc[val.test.index, "fraud"] = 0
    perturbed.loc[top, "fraud"] = 1
    again = _select(perturbed)
    assert again.kind == loser != selection.kind
    assert again.table[loser][again.strategy]["ap"] == 1.0


@pytest.fixture(scope="module")
def quality(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory, make_settings: Any) -> dict[str, Any]:
    """The bench's quality section on the small world, with a real sqlite MLflow registry behind it."""
    from systems.fraud.bench import bench_quality

    settings = make_settings(FraudSettings, Path(tmp_path_factory.mktemp("fraud-selection")))
    section = bench_quality(settings, frame, CFG, models=MODELS, strategies=STRATEGIES, fit_params=FIT)
    return {"section": section, "settings": settings, "test": delayed_split(frame, CFG).test}


def _registered(settings: FraudSettings) -> tuple[Any, dict[str, str]]:
    """The model behind ``champion`` and the params its registry run recorded."""
    from mlflow import MlflowClient

    from systems.common import registry

    registry.configure(settings)
    client = MlflowClient()
    mv = client.get_model_version_by_alias(settings.model_name, registry.CHAMPION)
    assert mv.run_id is not None
    params = client.get_run(mv.run_id).data.params
    model = registry.load_by_alias(settings.model_name, registry.CHAMPION, "sklearn")
    return model, params


def test_registered_champion_is_the_validation_selected_config(quality: dict[str, Any], selection: Selection) -> None:
    model, params = _registered(quality["settings"])
    assert (params["kind"], params["strategy"]) == (selection.kind, selection.strategy)
    assert (model.kind, model.strategy) == (selection.kind, selection.strategy)
    assert params["selected_on"] == "validation days 33..39, max ap"
    assert _scores(quality["section"]["validation_table"]) == _scores(selection.table)
    assert params.get("fit_params") == selection.params().get("fit_params")


def test_bench_headline_is_the_deployed_champions_test_metrics(quality: dict[str, Any]) -> None:
    section = quality["section"]
    model, _ = _registered(quality["settings"])
    head = section["headline"]
    assert (head["kind"], head["strategy"]) == (model.kind, model.strategy)
    assert head["version"] == section["champion"]["version"]
    # the deployed model re-scored on the test days gives exactly the headline numbers
    split_test = quality["test"]
    m = evaluate_scores(split_test, model.raw_scores(split_test[FEATURES].to_numpy(np.float64))).as_dict()
    assert {k: head[k] for k in ("auc", "ap", "cp@100")} == {k: m[k] for k in ("auc", "ap", "cp@100")}
    assert section["champion"]["test"] == section["per_model"][head["kind"]]["test"]
    # the informational test table is kept, labelled as such, beside the validation table that chose
    assert set(section["test_table_not_used_for_selection"]) == set(section["validation_table"]) == set(MODELS)
