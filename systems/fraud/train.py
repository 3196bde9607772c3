"""Training on the handbook's delayed protocol: train period, delay period, test period.

```
day:  | start ........ train_days | delay (7 d) | test_days |
      |  fit (labels all matured)  |  unused     |  scored   |
```

A model deployed at the start of the test period could not have the delay period's labels (a
chargeback takes up to 7 days), so those days are skipped; training on them is the classic leakage
that makes offline numbers look better than production. As in the handbook, test transactions of
cards already known to be compromised (a fraud in the training period, or a fraud in the delay
period whose label has matured by that test day) are removed: they would be blocked anyway.

Calibration and the decision threshold come from the last ``calib_days`` of the training period,
held out from the fit (chronological, never random: a random split leaks a card's own future).

Run: ``mlsd fraud train`` (trains the champion model and registers it in MLflow).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from systems.fraud.evaluate import evaluate_scores, threshold_for_fpr
from systems.fraud.features import FEATURES, LABEL_DELAY_DAYS, compute_batch_features
from systems.fraud.model import FraudModel, fit_model, fit_platt, strategies_for

HANDBOOK_START_DAY = 115  # 2018-07-25, the handbook's start_date_training
HANDBOOK_PUBLISHED = {
    # Le Borgne et al., the handbook's reported test performance on its simulated data
    "xgboost": {"auc": 0.869, "ap": 0.687, "cp@100": 0.303},
    "logreg": {"auc": 0.868, "ap": 0.623, "cp@100": 0.297},
}


@dataclass(kw_only=True, frozen=True)
class SplitConfig:
    # Defaults reproduce the handbook's periods: the model is fit on 7 days (2018-07-23 .. 07-29), the
    # next 2 days calibrate it, then the 7-day delay, and the test days are the handbook's
    # (2018-08-08 .. 08-14, days 129..135).
    start_day: int = HANDBOOK_START_DAY - 2
    train_days: int = 9
    delay_days: int = LABEL_DELAY_DAYS
    test_days: int = 7
    calib_days: int = 2  # tail of the training period held out for calibration + threshold


@dataclass
class Split:
    fit: pd.DataFrame  # rows of tx + FEATURES used to fit the model
    calib: pd.DataFrame  # held-out tail of the training period
    test: pd.DataFrame  # test period minus known-compromised cards
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
    """Fit, calibrate (Platt on the calibration days), pick the threshold, evaluate on test."""
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


def compare_strategies(
    split: Split,
    models: tuple[str, ...] = ("logreg", "xgboost", "mlp"),
    *,
    seed: int = 0,
    fit_params: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """The model x imbalance-strategy table on one split: {model: {strategy: metrics}}."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for kind in models:
        table[kind] = {}
        for strategy in strategies_for(kind):
            _, m = train_one(split, kind, strategy, seed=seed, fit_params=(fit_params or {}).get(kind))
            table[kind][strategy] = m
    return table


def best_by_ap(table: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each model's best strategy by Average Precision: {model: {strategy, auc, ap, cp@100}}."""
    best: dict[str, dict[str, Any]] = {}
    for kind, rows in table.items():
        strategy, m = max(rows.items(), key=lambda kv: kv[1]["ap"])
        best[kind] = {"strategy": strategy, "auc": m["auc"], "ap": m["ap"], "cp@100": m["cp@100"]}
    return best


PIP_REQUIREMENTS = ["xgboost-cpu==3.2.0", "scikit-learn==1.9.1", "torch==2.13.0", "numpy", "pandas"]


def register_model(settings: Any, model: FraudModel, *, params: dict[str, Any], metrics: dict[str, float]) -> str:
    """Log the FraudModel to MLflow (sklearn flavor, cloudpickle) and register it; returns the version."""
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
    )
    model.version = version
    return version


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
    """Train on the delayed split, register, and point ``champion`` at it (first model, or ``promote``)."""
    from systems.common import registry

    split = delayed_split(frame, split_config)
    model, metrics = train_one(split, kind, strategy, fit_params=fit_params)
    params = {"kind": kind, "strategy": strategy, **{f"split.{k}": v for k, v in vars(split_config).items()}}
    version = register_model(settings, model, params=params, metrics=metrics)
    if promote or registry.get_alias_version(settings.model_name, registry.CHAMPION) is None:
        registry.set_alias(settings.model_name, registry.CHAMPION, version)
    return model, version, metrics
