"""Training on the handbook's delayed protocol: choose on a validation block, report on the test block.

```
day:        99 ......... 107  108 ... 114  115 ........ 121  122 ... 128  129 ........ 135
selection:  | fit    | calib |   delay    |   validation   |
final:                                    | fit    | calib  |    delay   |     test      |
                                           113 ......... 121
```

A model deployed at the start of a scored period could not have the labels of the 7 days before it
(a chargeback takes up to 7 days), so those days are skipped; training on them is the classic leakage
that makes offline numbers look better than production. As in the handbook, scored transactions of
cards already known to be compromised (a fraud in the training period, or a fraud in the delay period
whose label has matured by that day) are removed: they would be blocked anyway.

Choosing among configurations (model kind, imbalance strategy, and any hyper-parameter) is fitting
too: the maximum of 13 test scores is an optimistic estimate of the one model that gets deployed. So
the choice is made on a **validation block** by the same protocol moved back ``delay_days +
val_days`` days (the handbook's hold-out validation): the validation models are fit on days whose
labels matured before the validation block, and the validation block ends ``delay_days + 1`` days
before the test period, so every validation label is known when the test period starts. The chosen
configuration is then refit on the final training window (which contains the validation days: their
labels are known at deployment) and scored **once** on the handbook's test days 129..135, so the
published comparison still applies. The full model x strategy table on test is informational only.

Calibration and the decision threshold come from the last ``calib_days`` of each training period,
held out from the fit (chronological, never random: a random split leaks a card's own future).

Run: ``mlsd fraud train`` (selects on validation, refits, registers the champion in MLflow).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from systems.fraud.evaluate import evaluate_scores, threshold_for_fpr
from systems.fraud.features import FEATURES, LABEL_DELAY_DAYS, compute_batch_features
from systems.fraud.model import MODELS, FraudModel, fit_model, fit_platt, strategies_for

HANDBOOK_START_DAY = 115  # 2018-07-25, the handbook's start_date_training
HANDBOOK_PUBLISHED = {
    # Le Borgne et al., the handbook's reported test performance on its simulated data
    "xgboost": {"auc": 0.869, "ap": 0.687, "cp@100": 0.303},
    "logreg": {"auc": 0.868, "ap": 0.623, "cp@100": 0.297},
}
SELECTION_METRIC = "ap"  # Average Precision on the validation block: moves with what investigators see

# {model kind: {strategy: metrics}}
StrategyTable = dict[str, dict[str, dict[str, Any]]]


@dataclass(kw_only=True, frozen=True)
class SplitConfig:
    # Defaults reproduce the handbook's periods: the model is fit on 7 days (2018-07-23 .. 07-29), the
    # next 2 days calibrate it, then the 7-day delay, and the test days are the handbook's
    # (2018-08-08 .. 08-14, days 129..135). Selection uses the same periods moved back
    # delay_days + val_days (see ``validation_config``).
    start_day: int = HANDBOOK_START_DAY - 2
    train_days: int = 9
    delay_days: int = LABEL_DELAY_DAYS
    test_days: int = 7
    calib_days: int = 2  # tail of the training period held out for calibration + threshold
    val_days: int = 7  # validation block used to choose the configuration

    def __post_init__(self) -> None:
        if not 0 < self.calib_days < self.train_days:
            raise ValueError(f"calib_days {self.calib_days} must be in 1..train_days-1 ({self.train_days - 1})")
        if self.delay_days < 0 or self.test_days < 1 or self.val_days < 1:
            raise ValueError(f"bad periods: delay {self.delay_days}, test {self.test_days}, val {self.val_days}")

    @property
    def scored_start(self) -> int:
        """First day of the scored period (the test days, or the validation days of a validation config)."""
        return self.start_day + self.train_days + self.delay_days

    def periods(self) -> dict[str, list[int]]:
        """First and last day (inclusive) of each period: fit, calib, delay, scored."""
        train_end = self.start_day + self.train_days
        return {
            "fit": [self.start_day, train_end - self.calib_days - 1],
            "calib": [train_end - self.calib_days, train_end - 1],
            "delay": [train_end, self.scored_start - 1],
            "scored": [self.scored_start, self.scored_start + self.test_days - 1],
        }


def split_for_days(n_days: int, config: SplitConfig | None = None) -> SplitConfig:
    """``config`` (default: the handbook's periods) if the data covers it, validation block included; else the
    same period lengths moved to the end of the data. Raises :class:`MlsdError` when the data is too short for
    the protocol at all (the message says how many days it needs)."""
    from dataclasses import replace

    from systems.common.errors import MlsdError

    config = config or SplitConfig()
    shift = config.delay_days + config.val_days  # the validation block sits this much earlier
    span = config.train_days + config.delay_days + config.test_days
    if config.start_day - shift >= 0 and config.start_day + span <= n_days:
        return config
    if span + shift > n_days:
        raise MlsdError(
            f"the dataset covers {n_days} days; training, validating and testing on it needs at least "
            f"{span + shift} (simulate more days)"
        )
    return replace(config, start_day=n_days - span)


def validation_config(config: SplitConfig) -> SplitConfig:
    """The protocol moved back ``delay_days + val_days`` days; its scored period is the validation block.

    The validation block is then the last ``val_days`` of ``config``'s training period, and it ends
    ``delay_days + 1`` days before ``config``'s test period: its labels have all matured by then.
    """
    shift = config.delay_days + config.val_days
    return replace(config, start_day=config.start_day - shift, test_days=config.val_days)


@dataclass
class Split:
    fit: pd.DataFrame  # rows of tx + FEATURES used to fit the model
    calib: pd.DataFrame  # held-out tail of the training period
    test: pd.DataFrame  # scored period minus known-compromised cards (validation block for a validation config)
    config: SplitConfig

    @property
    def train(self) -> pd.DataFrame:
        return pd.concat([self.fit, self.calib])


def add_features(tx: pd.DataFrame) -> pd.DataFrame:
    """``tx`` with the FEATURES columns appended (batch path, point-in-time correct)."""
    feats = compute_batch_features(tx)
    return pd.concat([tx, feats.drop(columns=[c for c in feats.columns if c in tx.columns])], axis=1)


def delayed_split(frame: pd.DataFrame, config: SplitConfig) -> Split:
    """Handbook split on a frame holding tx columns (day, customer_id, fraud) and FEATURES."""
    c = config
    train_end = c.start_day + c.train_days
    test_start = train_end + c.delay_days
    train = frame[(frame["day"] >= c.start_day) & (frame["day"] < train_end)]
    fit = train[train["day"] < train_end - c.calib_days]
    calib = train[train["day"] >= train_end - c.calib_days]
    known = set(train.loc[train["fraud"] == 1, "customer_id"].tolist())
    parts = []
    for k in range(c.test_days):
        # a fraud on delay day k-1 has matured (7 days) by test day k: that card is known and blocked
        matured = frame[(frame["day"] == train_end + k - 1) & (frame["fraud"] == 1)]
        known |= set(matured["customer_id"].tolist())
        day_rows = frame[frame["day"] == test_start + k]
        parts.append(day_rows[~day_rows["customer_id"].isin(known)])
    return Split(fit=fit, calib=calib, test=pd.concat(parts), config=c)


def _xy(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return df[FEATURES].to_numpy(np.float64), df["fraud"].to_numpy(np.int64)


def train_one(
    split: Split,
    kind: str,
    strategy: str,
    *,
    target_fpr: float = 0.001,
    seed: int = 0,
    fit_params: dict[str, Any] | None = None,
) -> tuple[FraudModel, dict[str, Any]]:
    """Fit, calibrate (Platt on the calibration days), pick the threshold, evaluate on the scored period."""
    t0 = time.perf_counter()
    X, y = _xy(split.fit)
    kw: dict[str, Any] = dict(fit_params or {})
    model = fit_model(kind, strategy, X, y, features=FEATURES, seed=seed, **kw)
    fit_s = time.perf_counter() - t0
    Xc, yc = _xy(split.calib)
    raw_c = model.raw_scores(Xc)
    model.platt = fit_platt(raw_c, yc)
    model.target_fpr = target_fpr
    model.threshold = threshold_for_fpr(yc, model.predict_proba(Xc), target_fpr)
    Xt, _ = _xy(split.test)
    proba = model.predict_proba(Xt)
    m = evaluate_scores(split.test, model.raw_scores(Xt)).as_dict()
    yt = split.test["fraud"].to_numpy()
    alert = proba >= model.threshold
    m["fpr@threshold"] = round(float(np.mean(alert[yt == 0])), 5)
    m["recall@threshold"] = round(float(np.mean(alert[yt == 1])) if yt.sum() else 0.0, 4)
    # Brier score of the calibrated probability: lower = better calibrated
    m["brier"] = round(float(np.mean((proba - yt) ** 2)), 6)
    m["fit_s"] = round(fit_s, 2)
    model.metrics = {k: float(v) for k, v in m.items()}
    return model, m


def candidate_strategies(kind: str, strategies: Sequence[str] | None = None) -> tuple[str, ...]:
    """The strategies tried for ``kind``: those that apply to it, restricted to ``strategies`` if given."""
    applicable = strategies_for(kind)
    chosen = applicable if strategies is None else tuple(s for s in applicable if s in strategies)
    if not chosen:
        raise ValueError(f"none of the strategies {list(strategies or [])} applies to {kind!r} ({applicable})")
    return chosen


def compare_strategies(
    split: Split,
    models: Sequence[str] = MODELS,
    *,
    strategies: Sequence[str] | None = None,
    seed: int = 0,
    fit_params: dict[str, dict[str, Any]] | None = None,
) -> StrategyTable:
    """The model x imbalance-strategy table on one split's scored period: {model: {strategy: metrics}}."""
    table: StrategyTable = {}
    for kind in models:
        table[kind] = {}
        for strategy in candidate_strategies(kind, strategies):
            _, m = train_one(split, kind, strategy, seed=seed, fit_params=(fit_params or {}).get(kind))
            table[kind][strategy] = m
    return table


def best_by_ap(table: StrategyTable) -> dict[str, dict[str, Any]]:
    """Each model's best strategy by Average Precision: {model: {strategy, auc, ap, cp@100}}.

    Ties go to the strategy listed first (``STRATEGIES`` order: the simpler one).
    """
    best: dict[str, dict[str, Any]] = {}
    for kind, rows in table.items():
        strategy, m = max(rows.items(), key=lambda kv: kv[1][SELECTION_METRIC])
        best[kind] = {"strategy": strategy, "auc": m["auc"], "ap": m["ap"], "cp@100": m["cp@100"]}
    return best


@dataclass(kw_only=True, frozen=True)
class Selection:
    """The configuration chosen on the validation block, and the evidence it was chosen on."""

    kind: str  # the champion's model kind
    strategy: str  # the champion's imbalance strategy
    per_model: dict[str, str]  # each model kind's best strategy on validation
    table: StrategyTable  # the validation model x strategy table the choice was made on
    config: SplitConfig  # the validation protocol (its scored period is the validation block)
    fit_params: dict[str, Any] | None = None  # the champion kind's fixed hyper-parameters (none are searched)

    def params(self) -> dict[str, Any]:
        """What the registry records for a model trained from this selection."""
        first, last = self.config.periods()["scored"]
        out: dict[str, Any] = {
            "kind": self.kind,
            "strategy": self.strategy,
            "selected_on": f"validation days {first}..{last}, max {SELECTION_METRIC}",
        }
        if self.fit_params:
            out["fit_params"] = json.dumps(self.fit_params, default=repr, sort_keys=True)
        return out


def select_on_validation(
    frame: pd.DataFrame,
    config: SplitConfig,
    *,
    models: Sequence[str] = MODELS,
    strategies: Sequence[str] | None = None,
    seed: int = 0,
    fit_params: dict[str, dict[str, Any]] | None = None,
) -> Selection:
    """Choose each model's strategy and the champion kind by validation AP; test labels are never read.

    ``frame`` is cut after the validation block before anything else, so no row of the delay or test
    period (label or feature) can reach the choice, by construction rather than by care.
    """
    vcfg = validation_config(config)
    first_unseen = vcfg.scored_start + vcfg.test_days
    visible = frame[frame["day"] < first_unseen]
    table = compare_strategies(
        delayed_split(visible, vcfg), models, strategies=strategies, seed=seed, fit_params=fit_params
    )
    best = best_by_ap(table)
    # across kinds too: the highest validation AP; a tie goes to the kind listed first
    kind = max(best, key=lambda k: best[k][SELECTION_METRIC])
    return Selection(
        kind=kind,
        strategy=best[kind]["strategy"],
        per_model={k: v["strategy"] for k, v in best.items()},
        table=table,
        config=vcfg,
        fit_params=(fit_params or {}).get(kind),
    )


@dataclass(kw_only=True)
class ChampionRun:
    """The validation-selected configuration refit on the training window and scored once on test."""

    selection: Selection
    model: FraudModel  # the champion, as registered
    test: dict[str, Any]  # the champion's test metrics: the headline numbers
    per_model_test: dict[str, dict[str, Any]]  # each kind with its validation-chosen strategy, on test
    config: SplitConfig  # the final protocol (its scored period is the test period)
    version: str | None = None  # registry version, once registered


def fit_selected(
    frame: pd.DataFrame,
    config: SplitConfig,
    selection: Selection,
    *,
    seed: int = 0,
    fit_params: dict[str, dict[str, Any]] | None = None,
) -> ChampionRun:
    """Refit each kind's validation-chosen strategy on the final training window; score each once on test."""
    split = delayed_split(frame, config)
    per_model: dict[str, dict[str, Any]] = {}
    champion: tuple[FraudModel, dict[str, Any]] | None = None
    for kind, strategy in selection.per_model.items():
        model, m = train_one(split, kind, strategy, seed=seed, fit_params=(fit_params or {}).get(kind))
        per_model[kind] = m
        if kind == selection.kind:
            champion = (model, m)
    assert champion is not None, "the selected kind is one of per_model's kinds"
    return ChampionRun(
        selection=selection, model=champion[0], test=champion[1], per_model_test=per_model, config=config
    )


PIP_REQUIREMENTS = ["xgboost-cpu==3.2.0", "scikit-learn==1.9.1", "torch==2.13.0", "numpy", "pandas"]


def register_model(
    settings: Any,
    model: FraudModel,
    *,
    params: dict[str, Any],
    metrics: dict[str, float],
    version_tags: dict[str, str] | None = None,
) -> str:
    """Log the FraudModel to MLflow (sklearn flavor, cloudpickle) and register it; returns the version.

    ``version_tags`` are written by the call that creates the version (``registry.log_and_register``)."""
    from systems.common import registry

    version = registry.log_and_register(
        model,
        flavor="sklearn",
        name=settings.model_name,
        params=params,
        metrics={k.replace("@", "_at_"): float(v) for k, v in metrics.items()},
        pip_requirements=PIP_REQUIREMENTS,
        settings=settings,
        serialization_format="cloudpickle",
        version_tags=version_tags,
    )
    model.version = version
    return version


def _register_champion(
    settings: Any,
    model: FraudModel,
    *,
    params: dict[str, Any],
    metrics: dict[str, Any],
    split_config: SplitConfig,
    promote: bool,
) -> str:
    from systems.common import registry

    params = {**params, **{f"split.{k}": v for k, v in vars(split_config).items()}}
    version = register_model(settings, model, params=params, metrics=metrics)
    if promote or registry.get_alias_version(settings.model_name, registry.CHAMPION) is None:
        registry.set_alias(settings.model_name, registry.CHAMPION, version)
    return version


def select_and_register(
    settings: Any,
    frame: pd.DataFrame,
    split_config: SplitConfig,
    *,
    models: Sequence[str] = MODELS,
    strategies: Sequence[str] | None = None,
    seed: int = 0,
    fit_params: dict[str, dict[str, Any]] | None = None,
    promote: bool = True,
) -> ChampionRun:
    """``mlsd fraud train``: choose on validation, refit, score once on test, register and alias the champion."""
    selection = select_on_validation(
        frame, split_config, models=models, strategies=strategies, seed=seed, fit_params=fit_params
    )
    run = fit_selected(frame, split_config, selection, seed=seed, fit_params=fit_params)
    run.version = _register_champion(
        settings, run.model, params=selection.params(), metrics=run.test, split_config=split_config, promote=promote
    )
    return run


def train_champion(
    settings: Any,
    frame: pd.DataFrame,
    split_config: SplitConfig,
    *,
    kind: str = "xgboost",
    strategy: str = "none",
    fit_params: dict[str, Any] | None = None,
    promote: bool = True,
) -> tuple[FraudModel, str, dict[str, Any]]:
    """Train a *given* configuration on the delayed split and register it (demo, tests, a pinned deploy).

    Nothing is selected here, and the registry says so (``selected_on = pinned``); the champion of
    ``mlsd fraud train`` comes from ``select_and_register``.
    """
    split = delayed_split(frame, split_config)
    model, metrics = train_one(split, kind, strategy, fit_params=fit_params)
    params = {"kind": kind, "strategy": strategy, "selected_on": "pinned"}
    if fit_params:
        params["fit_params"] = json.dumps(fit_params, default=repr, sort_keys=True)
    version = _register_champion(
        settings, model, params=params, metrics=metrics, split_config=split_config, promote=promote
    )
    return model, version, metrics
