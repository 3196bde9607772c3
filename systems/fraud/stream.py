"""The streaming scorer: a Kafka consumer-group member that turns transactions into decisions.

Run: ``python -m systems.fraud.stream --history .mlsd/datasets/fraud/transactions.parquet --warm-until-s T``
(or ``mlsd fraud up --scorer-only``); start it twice to scale out (same group, partitions split).

Per poll batch (at most ``max_records`` transactions):

1. decode each record (bad JSON / schema -> ``transactions.dlq`` with the reason; never crash);
2. online features per event from O(1) state (``features.OnlineFeatures``), in partition order;
3. one vectorised model call for the whole batch (calibrated probability, threshold -> decision);
4. produce to ``decisions`` and ``predictions`` (asynchronous: librdkafka batches and sends; the prediction
   record is the shared ``systems.common.predictions`` one, encoded by its encoder);
5. every ``commit_interval_s`` (50 ms) or when idle: one sqlite/Postgres transaction ``INSERT OR IGNORE``
   of every decision since the last commit (keyed by tx_id), flush the producer, and only then commit
   offsets.

A batch is bounded by size (``max_records``) *and* time: ``consume`` returns after ``poll_timeout_s``
(10 ms) with whatever arrived, so at low rates an event waits at most that long for company, and at high
rates batches grow (up to ``max_records``) and amortise the per-call costs (model ~0.5 ms, store
transaction ~0.5 ms) over more events instead of falling behind.

A crash anywhere before the offset commit re-delivers everything since the last commit to whoever owns
the partition next; step 5 ignores the duplicates, so after any number of SIGKILLs every transaction has
exactly one stored decision (the ``decisions`` *topic* is at-least-once: its readers de-duplicate by
tx_id).

Terminal risk comes from the ``labels`` topic, which every scorer reads in full (its own group), so
terminal state is global even though transactions are partitioned by customer. A watcher thread polls
the registry and swaps in a new ``champion`` between two batches: no restart, no dropped event.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from systems.common.broker import (
    Consumer,
    Producer,
    Record,
    TopicSpec,
    create_topics,
    dead_letter_topic,
    make_consumer,
    make_producer,
    run_consumer_loop,
)
from systems.common.errors import MlsdError
from systems.common.predictions import encode_json, encode_prediction
from systems.fraud.features import FEATURES, LABEL_DELAY_DAYS, SECONDS_PER_DAY, OnlineFeatures, replay_history
from systems.fraud.model import FraudModel
from systems.fraud.replay import day_start_s
from systems.fraud.schemas import Chargeback, Transaction
from systems.fraud.settings import FraudSettings
from systems.fraud.store import DecisionRow, DecisionStore

log = logging.getLogger(__name__)

LABEL_DELAY_S = LABEL_DELAY_DAYS * SECONDS_PER_DAY


def decision_store_url(settings: FraudSettings) -> str:
    if settings.decision_store_url:
        return settings.decision_store_url
    return f"sqlite:///{(settings.system_dir('fraud') / 'decisions.db').resolve()}"


def label_store_url(settings: FraudSettings) -> str:
    if settings.label_store_path:
        return settings.label_store_path
    return f"sqlite:///{(settings.system_dir('fraud') / 'labels.db').resolve()}"


def fraud_topics(settings: FraudSettings) -> list[TopicSpec]:
    """All topics, created with their partitions up front (tansu cannot add partitions later)."""
    p = settings.partitions
    return [
        TopicSpec(settings.transactions_topic, p),
        TopicSpec(dead_letter_topic(settings.transactions_topic), 1),
        TopicSpec(settings.decisions_topic, p),
        TopicSpec(settings.labels_topic, p),
        TopicSpec(dead_letter_topic(settings.labels_topic), 1),
        TopicSpec(settings.predictions_topic, p),
    ]


def load_champion(settings: FraudSettings) -> FraudModel | None:
    """The model behind ``<model_name>@champion`` with its version set, or None if there is none."""
    from systems.common import registry

    registry.configure(settings)
    version = registry.get_alias_version(settings.model_name, registry.CHAMPION)
    if version is None:
        return None
    model: FraudModel = registry.load_by_alias(settings.model_name, registry.CHAMPION, "sklearn")
    model.version = version
    return model.for_serving()


class ChampionWatcher(threading.Thread):
    """Polls the registry; when ``champion`` moves, loads the new model and hands it to ``on_change``."""

    def __init__(
        self,
        settings: FraudSettings,
        current: str | None,
        on_change: Callable[[FraudModel], None],
        stop: threading.Event,
    ) -> None:
        super().__init__(name="champion-watcher", daemon=True)
        self.settings, self.current, self.on_change, self.stop = settings, current, on_change, stop

    def run(self) -> None:
        from systems.common import registry

        while not self.stop.wait(self.settings.alias_poll_s):
            try:
                version = registry.get_alias_version(self.settings.model_name, registry.CHAMPION)
                if version is not None and version != self.current:
                    model = load_champion(self.settings)
                    if model is not None:
                        self.on_change(model)
                        self.current = model.version
                        log.info("hot-swapped champion -> v%s", model.version)
            except Exception:  # a registry hiccup must not kill scoring; retry next tick
                log.exception("champion poll failed")


class Scorer:
    """Scores poll batches of transactions; see the module docstring for the delivery contract."""

    def __init__(
        self,
        settings: FraudSettings,
        model: FraudModel,
        state: OnlineFeatures,
        store: DecisionStore,
        producer: Producer,
    ) -> None:
        self.settings = settings
        self.model = model  # replaced atomically by the watcher; read once per batch
        self.state = state
        self.state_lock = threading.Lock()  # the labels thread and the scoring loop share terminal state
        self.store = store
        self.producer = producer
        self.scored = 0
        self.swaps = 0
        self.unstored: list[DecisionRow] = []  # decided since the last offset commit; stored before it

    def swap_model(self, model: FraudModel) -> None:
        self.model = model
        self.swaps += 1

    def handle(self, batch: list[tuple[Record, Transaction]]) -> None:
        model = self.model  # one model per batch, even if a swap lands meanwhile
        with self.state_lock:
            feats = [self.state.update(t.customer_id, t.terminal_id, t.ts_s, t.amount) for _, t in batch]
        X = np.asarray(feats, dtype=np.float64)  # (B, F)
        proba = model.predict_proba(X).tolist()  # (B,) one vectorised call
        thr, version = model.threshold, model.version
        now_ms = time.time() * 1000.0
        decided = int(now_ms)
        rows: list[DecisionRow] = []
        for i, (_, t) in enumerate(batch):
            latency = now_ms - t.sent_ms if t.sent_ms is not None else None
            rows.append(
                (
                    t.tx_id,
                    t.customer_id,
                    t.terminal_id,
                    t.ts_s,
                    t.amount,
                    proba[i],
                    "block" if proba[i] >= thr else "approve",
                    version,
                    latency,
                    decided,
                    X[i].tobytes(),
                )
            )
        self.unstored += rows  # stored in one transaction per commit interval, before the offsets (persist)
        topic, ptopic = self.settings.decisions_topic, self.settings.predictions_topic
        send, publish = self.producer.send, self.settings.publish_predictions
        model_name = self.settings.model_name
        for i, r in enumerate(rows):
            key = str(r[1]).encode()
            decision = {
                "tx_id": r[0],
                "customer_id": r[1],
                "score": r[5],
                "decision": r[6],
                "threshold": thr,
                "model_version": version,
                "latency_ms": r[8],
                "decided_ms": decided,
            }
            send(topic, encode_json(decision), key=key)
            if publish:
                record = encode_prediction(
                    system="fraud",
                    model_name=model_name,
                    model_version=version,
                    prediction_id=str(r[0]),
                    entity_key=str(r[1]),
                    event_ts_ms=r[3] * 1000,
                    features=dict(zip(FEATURES, feats[i], strict=True)),
                    output={"score": r[5], "decision": r[6]},
                    latency_ms=0.0 if r[8] is None else r[8],
                )
                send(ptopic, record, key=key)
        self.scored += len(batch)

    def persist(self) -> None:
        """The durable step: one store transaction for everything decided since the last commit."""
        if self.unstored:
            self.store.put_many(self.unstored)
            self.unstored = []

    def observe_labels(self, batch: list[tuple[Record, Chargeback]]) -> None:
        with self.state_lock:
            for _, lab in batch:
                self.state.observe_label(lab.terminal_id, lab.ts_s, lab.fraud)


def run_label_follower(
    settings: FraudSettings, scorer: Scorer, stop: threading.Event, group_id: str, producer: Producer
) -> None:
    """Feed every label into the scorer's terminal state (own consumer group: each scorer sees all).

    Through the common consumer loop, so a malformed label goes to ``labels.dlq`` with its reason.
    """
    consumer: Consumer = make_consumer(settings, [settings.labels_topic], group_id)
    try:
        run_consumer_loop(
            consumer, producer, Chargeback, scorer.observe_labels, stop=stop, max_records=2000, commit_interval_s=1.0
        )
    finally:
        consumer.close()


def warm_state(history: pd.DataFrame, *, until_s: int, days: int) -> OnlineFeatures:
    """Online state as of ``until_s``: replay the last ``days`` of history (and labels matured by then)."""
    state = OnlineFeatures()
    recent = history[(history["ts_s"] < until_s) & (history["ts_s"] >= until_s - days * SECONDS_PER_DAY)]
    if len(recent):
        replay_history(state, recent, label_delay_s=LABEL_DELAY_S, until_s=until_s - 1)
    return state


def run_scorer(
    settings: FraudSettings,
    *,
    history: Path | None,
    warm_until_s: int | None,
    stop: threading.Event,
    max_records: int = 500,
    wait_for_model_s: float = 60.0,
    on_ready: Callable[[Scorer], Any] | None = None,
) -> Scorer:
    """Warm state, load the champion, then consume until ``stop`` is set. Returns the scorer (stats).

    ``on_ready`` runs once the consumer group has assigned this scorer its partitions: from then on a sent
    transaction is scored without waiting for a group join (callers wait on it instead of sleeping).
    """
    state = OnlineFeatures()
    if history is not None:
        tx = pd.read_parquet(history, columns=["tx_id", "ts_s", "customer_id", "terminal_id", "amount", "fraud"])
        until = warm_until_s or settings.warm_until_s or day_start_s(tx, settings.replay_start_day)
        state = warm_state(tx, until_s=until, days=settings.warm_days)
    deadline = time.monotonic() + wait_for_model_s
    model = load_champion(settings)
    while model is None and time.monotonic() < deadline and not stop.is_set():
        time.sleep(1.0)
        model = load_champion(settings)
    if model is None:
        raise MlsdError(f"no {settings.model_name}@champion in the registry: run `mlsd fraud train` first")
    create_topics(settings, fraud_topics(settings))
    store = DecisionStore(decision_store_url(settings))
    producer = make_producer(settings)
    scorer = Scorer(settings, model, state, store, producer)
    consumer = make_consumer(settings, [settings.transactions_topic], settings.group_id)
    label_stop = threading.Event()
    follower = threading.Thread(
        target=run_label_follower,
        args=(settings, scorer, label_stop, f"{settings.group_id}-labels-{uuid.uuid4().hex[:8]}", producer),
        name="label-follower",
        daemon=True,
    )
    follower.start()
    watcher = ChampionWatcher(settings, model.version, scorer.swap_model, label_stop)
    watcher.start()
    try:
        # Short poll timeout: confluent's consume() waits the whole timeout for a full batch, so at low rates the
        # timeout *is* the latency. Commit every 50 ms (not per batch): one store transaction, flush and offset
        # commit per interval; a crash re-delivers at most that much, and the idempotent store ignores repeats.
        run_consumer_loop(
            consumer,
            producer,
            Transaction,
            scorer.handle,
            stop=stop,
            max_records=max_records,
            poll_timeout_s=0.01,
            commit_interval_s=0.05,
            before_commit=scorer.persist,
            on_ready=None if on_ready is None else lambda: on_ready(scorer),
        )
    finally:
        label_stop.set()
        consumer.close()
        producer.flush()
        follower.join(timeout=5)
        store.close()
    return scorer


def main(argv: list[str] | None = None) -> None:
    """Entry point of one scorer process (SIGTERM/SIGINT stop it cleanly; SIGKILL is what the test uses)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=Path, default=None, help="transactions parquet to warm the state")
    parser.add_argument("--warm-until-s", type=int, default=None, help="replay start (unix s); default: end")
    parser.add_argument("--max-records", type=int, default=500)
    parser.add_argument(
        "--ready-file", type=Path, default=None, help="touched once the group has assigned this scorer's partitions"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = FraudSettings()
    settings.ensure_dirs()
    settings.system_dir("fraud").mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def ready(_: Scorer) -> None:
        if args.ready_file is not None:
            args.ready_file.touch()

    run_scorer(
        settings,
        history=args.history,
        warm_until_s=args.warm_until_s,
        stop=stop,
        max_records=args.max_records,
        on_ready=ready,
    )


if __name__ == "__main__":
    main()
