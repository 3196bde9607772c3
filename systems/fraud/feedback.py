"""The feedback loop: late labels -> label store -> retrain on matured labels -> gated promotion.

Run: ``mlsd fraud retrain`` (scheduled), or ``mlsd fraud retrain --if-ap-below 0.5`` (only when the
champion's Average Precision on the most recent matured day has dropped below the floor).

- ``run_label_sink`` consumes ``labels`` in its own consumer group and writes them idempotently to the
  label store (a chargeback re-delivered is still one label).
- ``retrain`` joins matured labels to the *served* feature vectors kept in the decision store (so
  the model learns from exactly what production computed: no training/serving skew), trains a
  candidate on the older window, and evaluates candidate and champion on the same most-recent window.
  The candidate is registered either way; ``champion`` moves only if it wins on Average Precision.
  Running scorers notice the alias move within ``alias_poll_s`` and swap between two batches.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from systems.common.broker import Consumer, Record, make_consumer, make_producer, run_consumer_loop
from systems.common.errors import MlsdError
from systems.fraud.evaluate import evaluate_scores
from systems.fraud.features import FEATURES, SECONDS_PER_DAY
from systems.fraud.schemas import Chargeback
from systems.fraud.settings import FraudSettings
from systems.fraud.store import LabelStore, features_matrix
from systems.fraud.stream import decision_store_url, label_store_url, load_champion
from systems.fraud.train import Split, SplitConfig, register_model, train_one

log = logging.getLogger(__name__)


def run_label_sink(settings: FraudSettings, stop: threading.Event, *, group_id: str | None = None) -> int:
    """Consume labels into the label store until ``stop``; returns labels newly stored.

    Through the common consumer loop: the store write comes before the offset commit (at-least-once; the
    store ignores a re-delivered label), and a malformed label goes to ``labels.dlq`` with its reason.
    """
    store = LabelStore(label_store_url(settings))
    consumer: Consumer = make_consumer(
        settings, [settings.labels_topic], group_id or f"{settings.group_id}-label-store"
    )
    producer = make_producer(settings)
    stored = 0

    def handle(batch: list[tuple[Record, Chargeback]]) -> None:
        nonlocal stored
        rows = [(c.tx_id, c.customer_id, c.terminal_id, c.ts_s, c.fraud, c.label_ts_s) for _, c in batch]
        stored += store.put_many(rows)

    try:
        run_consumer_loop(consumer, producer, Chargeback, handle, stop=stop, max_records=5000)
    finally:
        consumer.close()
        producer.close()
        store.close()
    return stored


def matured_frame(settings: FraudSettings, *, as_of_s: int | None = None) -> pd.DataFrame:
    """Served decisions with matured labels: tx columns + FEATURES + fraud + the served score."""
    labels = LabelStore(label_store_url(settings))
    try:
        as_of = as_of_s if as_of_s is not None else 2**62
        df = labels.matured_with_decisions(decision_store_url(settings), as_of_s=as_of)
    finally:
        labels.close()
    if df.empty:
        return df
    X = features_matrix(df["features"].tolist(), len(FEATURES))
    out = df.drop(columns=["features"]).reset_index(drop=True)
    out = pd.concat([out, pd.DataFrame(X, columns=FEATURES).drop(columns=["amount"])], axis=1)
    out["day"] = out["ts_s"] // SECONDS_PER_DAY
    return out


@dataclass
class RetrainResult:
    candidate_version: str
    champion_version: str | None
    candidate_ap: float
    champion_ap: float | None
    promoted: bool
    train_rows: int
    eval_rows: int
    eval_days: tuple[int, int]

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def recent_ap(settings: FraudSettings, *, days: int = 1) -> float | None:
    """Average Precision of the *served* scores over the last ``days`` of matured labels."""
    df = matured_frame(settings)
    if df.empty:
        return None
    recent = df[df["day"] > df["day"].max() - days]
    if recent["fraud"].nunique() < 2:
        return None
    return evaluate_scores(recent, recent["score"].to_numpy()).ap


def retrain(
    settings: FraudSettings,
    *,
    kind: str = "xgboost",
    strategy: str = "none",
    train_days: int = 7,
    calib_days: int = 2,
    eval_days: int = 2,
    fit_params: dict[str, Any] | None = None,
) -> RetrainResult:
    """Train a candidate on matured labels and promote it only if it beats the champion (same window)."""
    from systems.common import registry

    df = matured_frame(settings)
    if df.empty:
        raise MlsdError("no matured labels joined to decisions yet: let the scorers and label sink run")
    last = int(df["day"].max())
    eval_lo = last - eval_days + 1
    train_lo = eval_lo - train_days
    train = df[(df["day"] >= train_lo) & (df["day"] < eval_lo)]
    test = df[df["day"] >= eval_lo]
    split = Split(
        fit=train[train["day"] < eval_lo - calib_days],
        calib=train[train["day"] >= eval_lo - calib_days],
        test=test,
        config=SplitConfig(
            start_day=train_lo, train_days=train_days, delay_days=0, test_days=eval_days, calib_days=calib_days
        ),
    )
    for name, part in (("fit", split.fit), ("calib", split.calib), ("eval", split.test)):
        if part["fraud"].nunique() < 2:
            raise MlsdError(f"the {name} window has a single class; wait for more matured labels")
    candidate, metrics = train_one(split, kind, strategy, fit_params=fit_params)
    version = register_model(
        settings,
        candidate,
        params={"kind": kind, "strategy": strategy, "source": "retrain", "eval_days": f"{eval_lo}..{last}"},
        metrics=metrics,
    )
    registry.set_alias(settings.model_name, registry.CHALLENGER, version)
    # both models scored by the same code on the same rows (unrounded), so "better" means better
    X = test[FEATURES].to_numpy(np.float64)
    candidate_ap = evaluate_scores(test, candidate.raw_scores(X)).ap
    champion = load_champion(settings)
    champion_ap = None if champion is None else evaluate_scores(test, champion.raw_scores(X)).ap
    promoted = registry.promote_if_better(
        settings.model_name, version, metric="ap", candidate_value=candidate_ap, champion_value=champion_ap
    )
    return RetrainResult(
        candidate_version=version,
        champion_version=None if champion is None else champion.version,
        candidate_ap=candidate_ap,
        champion_ap=champion_ap,
        promoted=promoted,
        train_rows=len(train),
        eval_rows=len(test),
        eval_days=(eval_lo, last),
    )
