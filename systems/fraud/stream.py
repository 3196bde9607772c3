"""The streaming scorer: a Kafka consumer-group member that turns transactions into decisions.

Run: ``python -m systems.fraud.stream --history .mlsd/datasets/fraud/transactions.parquet --warm-until-s T``
(or ``mlsd fraud up --scorer-only``); start it twice to scale out (same group, partitions split).

Per poll batch (at most ``max_records`` transactions):

1. decode each record (bad JSON / schema / over ``max_message_bytes`` -> ``transactions.dlq`` with the reason;
   an event time outside the window around the stream's clock too: never crash, never let one message move
   the clock or cost a table rebuild);
2. online features per event from O(1) state (``features.OnlineFeatures``), in partition order;
3. one vectorised model call for the whole batch (calibrated probability, threshold -> decision);
4. every ``commit_interval_s`` or when idle, ``persist``: **one store transaction** holding the decisions
   (``INSERT OR IGNORE`` by tx_id), the state of every customer they changed and, per partition, the next
   offset to apply; *then* the decisions and prediction records are produced, flushed, and the partitions
   marked published in the store; last, the offsets are committed to Kafka (asynchronously: the store, not
   Kafka, is the record of what was applied).

State that follows the partition. Customer state lives in the same database as the decisions, written in the
same transaction, so a decision, the state after it and the offset it came from can never disagree. When the
group gives this scorer a partition -- at start, after another scorer crashed, at a rebalance -- it loads that
partition's customers and offsets from the store before it sees a record (``on_assign``): a record below the
partition's *applied* offset was already decided (its state is in what was loaded), so it is skipped; one
between *published* and *applied* was stored but maybe never published (a crash between the two), so its
*stored* decision is published again -- the same score, never a second opinion. The store is the decision
database we already have (sqlite here, Postgres in compose): no new component, atomic with the decisions,
and a partition's state is one indexed read (a changelog topic would need broker transactions, which tansu
does not honour for readers -- aborted records stay visible -- and compaction to bound its replay).

Delivery. After any number of SIGKILLs every transaction has exactly one stored decision and every decision
reaches the ``decisions`` topic. The topic can hold a repeat of a decision whose publication had completed
but not yet been marked (a kill in the ~1 ms between flush and mark): always the identical stored decision,
so a reader that keeps the first message per tx_id sees each decision exactly once.

Terminal risk comes from the ``labels`` topic, which every scorer reads in full without a consumer group
(``make_reader``), so terminal state is global even though transactions are partitioned by customer. At
start the scorer reads the label topic to its end before it scores, so a restarted scorer's terminal risk is
the one the batch features compute. The label reader runs supervised: if it dies it is restarted with
backoff, and the scorer's ``/readyz`` (``--health-port``) says so meanwhile. A watcher thread polls the
registry and swaps in a new ``champion`` between two batches: no restart, no dropped event.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from systems.common.broker import (
    Partitions,
    Producer,
    Record,
    SupervisedLoop,
    TopicSpec,
    create_topics,
    dead_letter_topic,
    make_consumer,
    make_producer,
    make_reader,
    run_consumer_loop,
    send_to_dead_letter,
    serve_health,
)
from systems.common.errors import MlsdError
from systems.common.predictions import encode_json, encode_prediction
from systems.fraud.features import FEATURES, LABEL_DELAY_DAYS, SECONDS_PER_DAY, OnlineFeatures, replay_history
from systems.fraud.model import FraudModel
from systems.fraud.replay import day_start_s
from systems.fraud.schemas import Chargeback, Transaction
from systems.fraud.settings import FraudSettings
from systems.fraud.store import DecisionStore, ScoredRow

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


def score_store_url(settings: FraudSettings) -> str:
    if settings.score_store_url:
        return settings.score_store_url
    return f"sqlite:///{(settings.system_dir('fraud') / 'scores.db').resolve()}"


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


def decision_message(
    *,
    tx_id: int,
    customer_id: int,
    score: float,
    decision: str,
    threshold: float,
    model_version: str,
    latency_ms: float | None,
    decided_ms: int,
) -> bytes:
    """A ``schemas.Decision`` as JSON, by the fast encoder (the stream tests validate it against the model)."""
    return encode_json(
        {
            "tx_id": tx_id,
            "customer_id": customer_id,
            "score": score,
            "decision": decision,
            "threshold": threshold,
            "model_version": model_version,
            "latency_ms": latency_ms,
            "decided_ms": decided_ms,
        }
    )


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
        self.state_lock = threading.Lock()  # the label reader and the scoring loop share terminal state
        self.store = store
        self.producer = producer
        self.scored = 0
        self.swaps = 0
        self.dead_letters = 0
        self.restored = 0  # customer states loaded from the store at partition assignments
        self.republished = 0  # stored decisions published again after a crash between store write and mark
        self.skipped = 0  # re-delivered records already decided and published
        # decided since the last persist: the rows (latency filled in at persist time) and what to publish
        self._decided: list[tuple[Transaction, float, str, str, float, bytes, list[float]]] = []
        self._touched: dict[int, int] = {}  # customer id -> partition, changed since the last persist
        self._republish: list[int] = []  # tx ids re-delivered below `applied`: their stored decision goes out
        self.applied: dict[tuple[str, int], int] = {}  # next offset to apply, per partition (store + this process)
        self.published: dict[tuple[str, int], int] = {}  # below this offset, every decision reached the topic
        self._seen: dict[tuple[str, int], int] = {}  # next offset after the records handled since the last persist
        self._dirty = False
        self.label_clock_s = 0  # the newest label_ts accepted (labels have their own clock)
        # next label offset per partition, applied or dead-lettered: where a restarted label reader resumes
        self.label_positions: dict[tuple[str, int], int] = {}

    def swap_model(self, model: FraudModel) -> None:
        self.model = model
        self.swaps += 1

    # ---- partition ownership --------------------------------------------------------------------------
    def on_assign(self, partitions: Partitions) -> None:
        """Restore the partitions' customers and offsets from the store (runs inside poll, before any of their
        records is returned)."""
        parts = [p for t, p in partitions if t == self.settings.transactions_topic]
        t0 = time.perf_counter()
        states, offsets = self.store.load_partitions(self.settings.transactions_topic, parts)
        with self.state_lock:
            self.restored += self.state.import_customers(states)
        for p in parts:
            applied, published = offsets.get(p, (0, 0))
            key = (self.settings.transactions_topic, p)
            self.applied[key], self.published[key] = applied, published
        log.info(
            "assigned partitions %s: %d customer states restored in %.1f ms",
            parts,
            len(states),
            1000 * (time.perf_counter() - t0),
        )

    # ---- the loop's handler and commit ---------------------------------------------------------------
    def handle(self, batch: list[tuple[Record, Transaction]]) -> None:
        model = self.model  # one model per batch, even if a swap lands meanwhile
        lead, lag = self.settings.max_event_lead_s, self.settings.max_event_lag_s
        applied, published = self.applied, self.published
        kept: list[Transaction] = []
        feats: list[list[float]] = []
        seen = self._seen
        with self.state_lock:
            state = self.state
            for record, t in batch:
                key = (record.topic, record.partition)
                seen[key] = record.offset + 1
                done = applied.get(key, 0)
                if record.offset < done:  # decided before a crash: its state is in what on_assign restored
                    if record.offset >= published.get(key, 0):
                        self._republish.append(t.tx_id)
                    else:
                        self.skipped += 1
                    continue
                applied[key] = record.offset + 1
                why = state.check_time(t.ts_s, max_lead_s=lead, max_lag_s=lag)
                if why is not None:
                    send_to_dead_letter(self.producer, record, why)
                    self.dead_letters += 1
                    continue
                feats.append(state.update(t.customer_id, t.terminal_id, t.ts_s, t.amount))
                kept.append(t)
                self._touched[t.customer_id] = record.partition
        self._dirty = True
        if not kept:
            return
        X = np.asarray(feats, dtype=np.float64)  # (B, F)
        proba = model.predict_proba(X).tolist()  # (B,) one vectorised call
        thr, version = model.threshold, model.version
        decided = self._decided
        for i, t in enumerate(kept):
            p = proba[i]
            decided.append((t, p, "block" if p >= thr else "approve", version, thr, X[i].tobytes(), feats[i]))
        self.scored += len(kept)

    def persist(self) -> None:
        """The commit point: store, then publish, then mark published (see the module docstring)."""
        if not self._dirty:
            return
        now_ms = time.time() * 1000.0
        decided_ms = int(now_ms)
        rows: list[ScoredRow] = []
        messages: list[tuple[bytes, bytes, bytes | None]] = []  # (key, decision, prediction record)
        publish, model_name = self.settings.publish_predictions, self.settings.model_name
        for t, p, decision, version, thr, xbytes, f in self._decided:
            # event -> decision: from the producer's send to this commit, which makes the decision durable
            # and visible (the store write and the publication below follow within a few ms)
            latency = now_ms - t.sent_ms if t.sent_ms is not None else None
            rows.append(
                (
                    t.tx_id,
                    t.customer_id,
                    t.terminal_id,
                    t.ts_s,
                    t.amount,
                    p,
                    decision,
                    version,
                    latency,
                    decided_ms,
                    xbytes,
                    thr,
                )
            )
            record = None
            if publish:
                record = encode_prediction(
                    system="fraud",
                    model_name=model_name,
                    model_version=version,
                    prediction_id=str(t.tx_id),
                    entity_key=str(t.customer_id),
                    event_ts_ms=t.ts_s * 1000,
                    features=dict(zip(FEATURES, f, strict=True)),
                    output={"score": p, "decision": decision},
                    latency_ms=0.0 if latency is None else latency,
                )
            msg = decision_message(
                tx_id=t.tx_id,
                customer_id=t.customer_id,
                score=p,
                decision=decision,
                threshold=thr,
                model_version=version,
                latency_ms=latency,
                decided_ms=decided_ms,
            )
            messages.append((str(t.customer_id).encode(), msg, record))
        states = [(cid, self._touched[cid], blob) for cid, blob in self.state.export_customers(self._touched)]
        offsets = dict(self.applied)
        self.store.commit_batch(rows, states, offsets)
        # only now is anything published: a decision on the topic is always a stored one
        send, topic, ptopic = self.producer.send, self.settings.decisions_topic, self.settings.predictions_topic
        for key, msg, record in messages:
            send(topic, msg, key=key)
            if record is not None:
                send(ptopic, record, key=key)
        if self._republish:
            for row in self.store.get_many(self._republish).values():
                msg = decision_message(
                    tx_id=int(row["tx_id"]),
                    customer_id=int(row["customer_id"]),
                    score=float(row["score"]),
                    decision=str(row["decision"]),
                    threshold=float(row["threshold"] if row["threshold"] is not None else self.model.threshold),
                    model_version=str(row["model_version"]),
                    latency_ms=row["latency_ms"],
                    decided_ms=int(row["decided_ms"]),
                )
                send(topic, msg, key=str(row["customer_id"]).encode())
                self.republished += 1
        self.producer.flush()
        # published up to what this process has read: during a re-delivery that is below `applied`, and the
        # records between the two still get their stored decision published when they come
        self.store.mark_published(self._seen)
        self.published.update(self._seen)
        self._decided, self._touched, self._republish, self._seen, self._dirty = [], {}, [], {}, False

    # ---- labels ---------------------------------------------------------------------------------------
    def observe_labels(self, batch: list[tuple[Record, Chargeback]]) -> None:
        """Labels into the terminal state; one whose time is far ahead of the label stream's clock goes to
        ``labels.dlq`` (a far-future label would occupy a terminal's day bucket for good)."""
        lead = self.settings.max_event_lead_s
        positions = self.label_positions
        with self.state_lock:
            for record, lab in batch:
                clock = max(self.label_clock_s, self.state.clock_s or 0)
                ts = lab.label_ts_s
                if clock and ts > clock + lead:
                    send_to_dead_letter(
                        self.producer,
                        record,
                        f"label_ts {ts} is {ts - clock} s ahead of the label clock {clock} (max {lead} s)",
                    )
                    self.dead_letters += 1
                else:
                    self.label_clock_s = max(self.label_clock_s, ts)
                    self.state.observe_label(lab.terminal_id, lab.ts_s, lab.fraud)
                positions[(record.topic, record.partition)] = record.offset + 1  # each label counts once


def run_label_follower(
    settings: FraudSettings,
    scorer: Scorer,
    stop: threading.Event,
    producer: Producer,
    *,
    caught_up: threading.Event | None = None,
) -> None:
    """Feed every label into the scorer's terminal state: all partitions from the start, no consumer group (each
    scorer sees all labels). ``caught_up`` is set once the reader has reached the end of the topic.

    Through the common consumer loop, so a malformed label goes to ``labels.dlq`` with its reason. Restarted
    after a death (its supervisor does that), it resumes after the last label the state took in, not from the
    beginning: terminal counts are sums, and a label read twice would count twice.
    """
    reader = make_reader(settings, [settings.labels_topic], positions=scorer.label_positions)

    def note_caught_up() -> None:
        if caught_up is not None and reader.caught_up.is_set():
            caught_up.set()

    try:
        run_consumer_loop(
            reader,
            producer,
            Chargeback,
            scorer.observe_labels,
            stop=stop,
            max_records=5000,
            poll_timeout_s=0.05,
            commit_interval_s=1.0,
            max_message_bytes=settings.max_message_bytes,
            tick=note_caught_up,
        )
    finally:
        reader.close()


def warm_state(history: pd.DataFrame, *, until_s: int, days: int) -> OnlineFeatures:
    """Online state as of ``until_s``: replay the last ``days`` of history (and labels matured by then)."""
    state = OnlineFeatures()
    recent = history[(history["ts_s"] < until_s) & (history["ts_s"] >= until_s - days * SECONDS_PER_DAY)]
    if len(recent):
        replay_history(state, recent, label_delay_s=LABEL_DELAY_S, until_s=until_s - 1)
    state.clock_s = until_s - 1  # the stream's clock: what the history covers
    return state


class ScorerHealth:
    """What the scorer process's ``/readyz`` answers: the group has assigned it, its label reader is up and
    has caught up, and its scoring loop runs."""

    def __init__(self) -> None:
        self.assigned = False
        self.labels: SupervisedLoop | None = None
        self.labels_caught_up = threading.Event()
        self.scoring = True

    def reason(self) -> str:
        if not self.scoring:
            return "the scoring loop stopped"
        if self.labels is None or not self.labels.healthy:
            last = self.labels.last_error if self.labels is not None else ""
            return f"the label reader is down ({last}); restarting it" if last else "the label reader is starting"
        if not self.labels_caught_up.is_set():
            return "reading the label topic to its end"
        if not self.assigned:
            return "waiting for the consumer group to assign partitions"
        return ""

    def ready(self) -> bool:
        return self.reason() == ""


def run_scorer(
    settings: FraudSettings,
    *,
    history: Path | None,
    warm_until_s: int | None,
    stop: threading.Event,
    max_records: int = 500,
    wait_for_model_s: float = 60.0,
    on_ready: Callable[[Scorer], Any] | None = None,
    health: ScorerHealth | None = None,
    registry: Any = None,
    freeze_gc: bool = False,
) -> Scorer:
    """Warm state, load the champion, read the labels to the end, then consume until ``stop`` is set. Returns
    the scorer (stats).

    ``on_ready`` runs once the consumer group has assigned this scorer its partitions: from then on a sent
    transaction is scored without waiting for a group join (callers wait on it instead of sleeping).
    ``freeze_gc`` (a scorer process, not a test thread): the warmed state is moved out of the garbage
    collector's sight and collections are made rarer -- the state is hundreds of thousands of long-lived
    objects that every full collection would traverse again (~1 us per event, 20 % of the feature time).
    """
    health = health or ScorerHealth()
    state = OnlineFeatures()
    if history is not None:
        tx = pd.read_parquet(history, columns=["tx_id", "ts_s", "customer_id", "terminal_id", "amount", "fraud"])
        until = warm_until_s or settings.warm_until_s or day_start_s(tx, settings.replay_start_day)
        state = warm_state(tx, until_s=until, days=settings.warm_days)
        del tx
    if freeze_gc:
        gc.collect()
        gc.freeze()
        gc.set_threshold(100_000, 50, 1000)
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
    label_stop = threading.Event()
    health.labels = SupervisedLoop(
        "fraud-label-reader",
        lambda: run_label_follower(settings, scorer, label_stop, producer, caught_up=health.labels_caught_up),
        stop=label_stop,
        registry=registry,
    )
    health.labels.start()
    watcher = ChampionWatcher(settings, model.version, scorer.swap_model, label_stop)
    watcher.start()
    # Terminal risk must include every label already on the topic before the first decision (a restarted
    # scorer would otherwise score its backlog against a half-read label topic): wait, bounded.
    if not health.labels_caught_up.wait(settings.label_catch_up_s):
        log.warning("label topic not read to its end within %.0f s; scoring anyway", settings.label_catch_up_s)
    consumer = make_consumer(settings, [settings.transactions_topic], settings.group_id)
    consumer.on_assign = scorer.on_assign

    def ready() -> None:
        health.assigned = True
        if on_ready is not None:
            on_ready(scorer)

    try:
        # Short poll timeout: confluent's consume() waits the whole timeout for a full batch, so at low rates the
        # timeout *is* the latency. Commit every 50 ms (not per batch): one store transaction, flush and offset
        # commit per interval; a crash re-delivers at most that much, and the store's offsets skip it.
        run_consumer_loop(
            consumer,
            producer,
            Transaction,
            scorer.handle,
            stop=stop,
            max_records=max_records,
            poll_timeout_s=0.01,
            commit_interval_s=settings.commit_interval_s,
            commit_max_records=settings.commit_max_records,
            before_commit=scorer.persist,
            on_ready=ready,
            max_message_bytes=settings.max_message_bytes,
            commit_async=True,
        )
    finally:
        health.scoring = False
        label_stop.set()
        consumer.close()
        producer.flush()
        health.labels.join(timeout=5)
        store.close()
    return scorer


def main(argv: list[str] | None = None) -> None:
    """Entry point of one scorer process (SIGTERM/SIGINT stop it cleanly; SIGKILL is what the tests use). A
    scoring loop that raises ends the process with a non-zero exit, for its supervisor to restart."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=Path, default=None, help="transactions parquet to warm the state")
    parser.add_argument("--warm-until-s", type=int, default=None, help="replay start (unix s); default: end")
    parser.add_argument("--max-records", type=int, default=500)
    parser.add_argument(
        "--ready-file", type=Path, default=None, help="touched once the group has assigned this scorer's partitions"
    )
    parser.add_argument("--health-port", type=int, default=None, help="serve /healthz, /readyz, /metrics here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = FraudSettings()
    settings.ensure_dirs()
    settings.system_dir("fraud").mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    health = ScorerHealth()
    port = args.health_port if args.health_port is not None else settings.health_port
    server = None
    if port is not None:
        server = serve_health(
            host=settings.host, port=port, ready=health.ready, registry=registry, reason=health.reason
        )

    def ready(_: Scorer) -> None:
        if args.ready_file is not None:
            args.ready_file.touch()

    try:
        scorer = run_scorer(
            settings,
            history=args.history,
            warm_until_s=args.warm_until_s,
            stop=stop,
            max_records=args.max_records,
            on_ready=ready,
            health=health,
            registry=registry,
            freeze_gc=True,
        )
        log.info(
            "stopped: %d scored, %d dead-lettered, %d customer states restored, %d re-delivered decisions "
            "published again, %d re-delivered records skipped",
            scorer.scored,
            scorer.dead_letters,
            scorer.restored,
            scorer.republished,
            scorer.skipped,
        )
    except MlsdError as exc:
        log.error("%s", exc)
        sys.exit(2)
    finally:
        if server is not None:
            server.shutdown()


if __name__ == "__main__":
    main()
