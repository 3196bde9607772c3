"""The feedback loop: labels topic -> label store; retrain gate on the same window; hot swap in a running scorer."""

from __future__ import annotations

import threading
import uuid

import numpy as np
import pytest

from systems.common import registry
from systems.common.broker import LocalBroker, create_topics, make_producer
from systems.fraud.features import FEATURES
from systems.fraud.feedback import retrain, run_label_sink
from systems.fraud.model import fit_model
from systems.fraud.replay import LABEL_DELAY_S, replay
from systems.fraud.store import DecisionStore, LabelStore
from systems.fraud.stream import decision_store_url, fraud_topics, label_store_url, run_scorer
from systems.fraud.train import register_model

pytestmark = pytest.mark.integration

DAY = 86_400
SMALL_XGB = {"xgb_params": {"n_estimators": 40, "n_jobs": 1}}


def test_label_sink_and_retrain_gate(fraud_world, broker: LocalBroker, kit, stop_event) -> None:  # type: ignore[no-untyped-def]
    settings = kit.make_settings(fraud_world, broker, model_name=f"fraud-gate-{uuid.uuid4().hex[:8]}")
    create_topics(settings, fraud_topics(settings))
    frame = fraud_world.frame[fraud_world.frame["day"] >= 20]
    # decisions as the scorers would have stored them (features served = batch features: parity)
    X = frame[FEATURES].to_numpy(np.float64)
    store = DecisionStore(decision_store_url(settings))
    store.put_many(
        [
            (
                int(r.tx_id),
                int(r.customer_id),
                int(r.terminal_id),
                int(r.ts_s),
                float(r.amount),
                0.0,
                "approve",
                "0",
                None,
                0,
                X[i].tobytes(),
            )
            for i, r in enumerate(frame.itertuples())
        ]
    )
    # the labels arrive through the topic into the label store, idempotently
    producer = make_producer(settings)
    first, last = int(frame["ts_s"].min()), int(frame["ts_s"].max())
    replay(
        settings,
        producer,
        fraud_world.tx[fraud_world.tx["ts_s"] >= first],
        start_s=first + LABEL_DELAY_S,
        end_s=last + LABEL_DELAY_S + 1,
        rate=0,
    )
    sink = threading.Thread(target=run_label_sink, args=(settings, stop_event), daemon=True)
    sink.start()
    labels = LabelStore(label_store_url(settings))
    kit.wait_for(lambda: labels.count() >= len(frame), 60, "labels in the store")
    assert labels.count() == len(frame)
    # what landed is each transaction's true label, joined to its served decision
    stored = labels.matured_with_decisions(decision_store_url(settings), as_of_s=last + 2 * LABEL_DELAY_S)
    assert dict(zip(stored["tx_id"], stored["fraud"], strict=True)) == dict(
        zip(frame["tx_id"].astype(int), frame["fraud"].astype(int), strict=True)
    )

    # a weak champion: trained on shuffled labels
    y_shuffled = np.random.default_rng(0).permutation(frame["fraud"].to_numpy())
    weak = fit_model("logreg", "none", X, y_shuffled, features=FEATURES)
    weak_v = register_model(settings, weak, params={"kind": "weak"}, metrics={})
    registry.set_alias(settings.model_name, registry.CHAMPION, weak_v)

    res = retrain(settings, train_days=12, eval_days=3, fit_params=SMALL_XGB)
    assert res.promoted and res.candidate_ap > (res.champion_ap or 0)
    assert registry.get_alias_version(settings.model_name, registry.CHAMPION) == res.candidate_version
    # the same candidate again: it does not beat the champion on the same window -> alias stays
    res2 = retrain(settings, train_days=12, eval_days=3, fit_params=SMALL_XGB)
    assert not res2.promoted and res2.candidate_ap == pytest.approx(res2.champion_ap)
    assert registry.get_alias_version(settings.model_name, registry.CHAMPION) == res.candidate_version
    assert registry.get_alias_version(settings.model_name, registry.CHALLENGER) == res2.candidate_version
    labels.close()
    store.close()
    producer.close()


def test_running_scorer_picks_up_new_champion(fraud_world, broker: LocalBroker, kit, stop_event) -> None:  # type: ignore[no-untyped-def]
    settings = kit.make_settings(fraud_world, broker, model_name=f"fraud-swap-{uuid.uuid4().hex[:8]}")
    create_topics(settings, fraud_topics(settings))
    frame = fraud_world.frame[fraud_world.frame["day"] < 38]
    X, y = frame[FEATURES].to_numpy(np.float64), frame["fraud"].to_numpy()
    v1 = register_model(settings, fit_model("logreg", "none", X, y, features=FEATURES), params={}, metrics={})
    registry.set_alias(settings.model_name, registry.CHAMPION, v1)

    holder: dict[str, object] = {}
    ready = threading.Event()

    def target() -> None:
        def on_ready(scorer: object) -> None:
            holder["scorer"] = scorer
            ready.set()

        run_scorer(
            settings,
            history=fraud_world.tx_path,
            warm_until_s=fraud_world.replay_start_s,
            stop=stop_event,
            on_ready=on_ready,
        )

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert ready.wait(60)
    scorer = holder["scorer"]
    producer = make_producer(settings)
    start = fraud_world.replay_start_s
    a = replay(settings, producer, fraud_world.tx, start_s=start, end_s=start + DAY)
    store = DecisionStore(decision_store_url(settings))
    kit.wait_for(lambda: store.count()[0] >= a.transactions, 60, "day A decisions")

    v2 = register_model(
        settings,
        fit_model("xgboost", "none", X, y, features=FEATURES, xgb_params={"n_estimators": 20}),
        params={},
        metrics={},
    )
    registry.set_alias(settings.model_name, registry.CHAMPION, v2)
    kit.wait_for(lambda: scorer.swaps >= 1, 30, "the scorer to load the new champion")  # type: ignore[attr-defined]
    b = replay(settings, producer, fraud_world.tx, start_s=start + DAY, end_s=start + 2 * DAY)
    kit.wait_for(lambda: store.count()[0] >= a.transactions + b.transactions, 60, "day B decisions")
    df = store.frame()
    assert len(df) == a.transactions + b.transactions  # no transaction lost across the hot swap
    day_b = df[df["ts_s"] >= start + DAY]
    assert set(day_b["model_version"]) == {v2}
    assert set(df[df["ts_s"] < start + DAY]["model_version"]) == {v1}
    assert thread.is_alive()
    stop_event.set()
    thread.join(15)
    store.close()
    producer.close()
