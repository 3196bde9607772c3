"""The scorer through the real broker: every transaction gets one decision, bad transactions and bad labels are
dead-lettered, and SIGKILL + restart loses nothing — duplicates are counted on the decisions topic, where they can
occur, while the idempotent store keeps exactly one decision per transaction."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from systems.common.broker import LocalBroker, create_topics, dead_letter_topic, make_consumer, make_producer
from systems.common.predictions import PredictionRecord
from systems.fraud.replay import replay, tx_json
from systems.fraud.schemas import Chargeback, Decision, chargeback_json
from systems.fraud.store import DecisionStore
from systems.fraud.stream import ScorerHealth, decision_store_url, fraud_topics, run_scorer

pytestmark = pytest.mark.integration

DAY = 86_400


def _drain(kit, settings, topic: str, expect: int, timeout_s: float = 30.0) -> list[bytes]:  # type: ignore[no-untyped-def]
    """Every record on ``topic``: at least ``expect``, and then until a poll finds nothing more. Stopping at
    ``expect`` would cut off the tail whenever the topic holds re-published duplicates (at-least-once)."""
    consumer = make_consumer(settings, [topic], f"check-{topic}")
    out: list[bytes] = []

    def drained() -> bool:
        got = consumer.poll(0.2, 5000)
        out.extend(r.value for r in got)
        return not got and len(out) >= expect

    try:
        kit.wait_for(drained, timeout_s, f"{expect} records on {topic}", interval_s=0)
    finally:
        consumer.close()
    return out


def test_scorer_end_to_end_with_dead_letters(fraud_world, broker: LocalBroker, stop_event, kit) -> None:  # type: ignore[no-untyped-def]
    settings = kit.make_settings(fraud_world, broker)
    create_topics(settings, fraud_topics(settings))
    ready = threading.Event()
    result: dict[str, object] = {}
    health = ScorerHealth()

    def target() -> None:
        try:
            result["scorer"] = run_scorer(
                settings,
                history=fraud_world.tx_path,
                warm_until_s=fraud_world.replay_start_s,
                stop=stop_event,
                on_ready=lambda scorer: (result.__setitem__("live", scorer), ready.set()),
                health=health,
            )
        except BaseException as exc:  # surfaced by the asserts below
            result["error"] = exc
            ready.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert ready.wait(60), "scorer did not start"
    assert "error" not in result, result.get("error")

    producer = make_producer(settings)
    store = DecisionStore(decision_store_url(settings))
    # ready means the group has assigned the partitions: the first transaction is decided at once, not after
    # the ~3 s group join that a "ready" signalled before assignment would leave it waiting for
    first = fraud_world.tx[fraud_world.tx["ts_s"] >= fraud_world.replay_start_s].iloc[0]
    t0 = time.monotonic()
    producer.send(
        settings.transactions_topic,
        tx_json(
            int(first.tx_id),
            int(first.customer_id),
            int(first.terminal_id),
            int(first.ts_s),
            float(first.amount),
            time.time() * 1000,
        ),
        key=str(int(first.customer_id)).encode(),
    )
    producer.flush()
    kit.wait_for(lambda: store.count()[0] >= 1, 30, "the first decision", interval_s=0.01)
    assert time.monotonic() - t0 < 1.5, f"first decision after {time.monotonic() - t0:.2f} s: ready before joined?"

    # The poison corpus: each one used to stop the scorer (and stop it again on every restart) or to cost a
    # rebuild of every feature table; each must land in the dead-letter topic with its reason, and the stream
    # after it must be scored.
    start = fraud_world.replay_start_s
    poison = {
        b"{not json": "json",
        b'{"tx_id": 1}': "customer_id",
        b'{"tx_id":5,"customer_id":1,"terminal_id":2,"ts_s":1,"amount":-3}': "amount",
        tx_json(2**63, 1, 2, start, 5.0, 0.0): "tx_id",  # sqlite OverflowError in the store write
        tx_json(7, 2**63 + 5, 2, start, 5.0, 0.0): "customer_id",
        b'{"tx_id":8,"customer_id":1,"terminal_id":2,"ts_s":1e30,"amount":5.0}': "ts_s",
        tx_json(9, 1, 2, start + 10 * DAY, 5.0, 0.0): "ahead of the stream clock",  # a table rebuild per message
        tx_json(10, 1, 2, start - 40 * DAY, 5.0, 0.0): "behind the stream clock",
        b'{"tx_id":11,"customer_id":1,"terminal_id":2,"ts_s":5,"amount":NaN}': "amount",
        b"\x00" * 200_000: "over the",  # its escaped copy would exceed the producer's 1 MB limit
        b'{"tx_id":12,"pad":"' + b"x" * 3_000_000 + b'"}': "over the",
    }
    big = make_producer(settings, **{"message.max.bytes": 5_000_000})
    for value in poison:
        big.send(settings.transactions_topic, value, key=b"1")
    big.close()
    sent = replay(settings, producer, fraud_world.tx, start_s=start, end_s=start + DAY)
    producer.flush()

    kit.wait_for(lambda: store.count()[0] >= sent.transactions, 60, "all decisions stored")
    rows, distinct = store.count()
    assert rows == distinct == sent.transactions > 300
    raw = _drain(kit, settings, settings.decisions_topic, sent.transactions)
    # the scorer writes through the fast encoder, not pydantic: every message must still be a valid instance
    for v in raw:
        Decision.model_validate_json(v)
    decisions = [json.loads(v) for v in raw]
    assert {d["tx_id"] for d in decisions} == set(store.frame()["tx_id"])
    assert all(d["decision"] in ("approve", "block") and 0.0 <= d["score"] <= 1.0 for d in decisions)
    preds = [
        PredictionRecord.model_validate_json(v)
        for v in _drain(kit, settings, settings.predictions_topic, sent.transactions)
    ]
    assert {p.prediction_id for p in preds} == {str(d["tx_id"]) for d in decisions}
    assert all(p.system == "fraud" and p.model_name == settings.model_name for p in preds)
    assert "cust_amount_ratio" in preds[0].features and preds[0].entity_key is not None

    letters = [
        json.loads(v) for v in _drain(kit, settings, dead_letter_topic(settings.transactions_topic), len(poison))
    ]
    assert len(letters) == len(poison)
    assert all(letter["source_topic"] == settings.transactions_topic for letter in letters)
    by_hash = {letter["value_sha256"]: letter for letter in letters}
    for value, why in poison.items():
        letter = by_hash[hashlib.sha256(value).hexdigest()]
        assert why in letter["reason"].lower() and letter["value_bytes"] == len(value), (why, letter["reason"])
    assert max(len(json.dumps(letter)) for letter in letters) < 100_000  # bounded, whatever the payload

    # labels go through the same consumer loop: a bad one is dead-lettered with its reason, a good one after
    # it still reaches the terminal-risk state
    row = fraud_world.tx[fraud_world.tx["ts_s"] < start - 7 * DAY].iloc[-1]  # its label matures at the start
    good = chargeback_json(int(row.tx_id), int(row.customer_id), 987_654, int(row.ts_s), 1, int(row.ts_s) + 7 * DAY)
    far = 10**12  # ~year 33,700, inside the shared LabelRecord's bounds, far ahead of the stream
    bad_labels = {
        b"{not json": "json",
        chargeback_json(2**63, 1, 2, 1_600_000_000, 1, 1_600_600_000): "64-bit",  # id beyond int64
        good.replace(b'"label":1', b'"label":7'): "0 or 1",
        chargeback_json(13, 1, 2, far, 1, far + 7 * DAY): "ahead of the label clock",  # would hold a day bucket
        chargeback_json(14, 1, 2, start, 1, start - DAY): "after label_ts",
        b"\x00" * 200_000: "over the",
    }
    for value in [*bad_labels, good]:
        producer.send(settings.labels_topic, value, key=b"1")
    producer.flush()
    label_letters = [
        json.loads(v) for v in _drain(kit, settings, dead_letter_topic(settings.labels_topic), len(bad_labels))
    ]
    assert len(label_letters) == len(bad_labels)
    assert all(x["source_topic"] == settings.labels_topic for x in label_letters)
    reasons = sorted(x["reason"].lower() for x in label_letters)
    for why in bad_labels.values():
        assert any(why in r for r in reasons), (why, reasons)
    Chargeback.model_validate_json(good)
    live = result["live"]
    kit.wait_for(lambda: 987_654 in live.state.terminals, 30, "the good label after the bad ones")  # type: ignore[attr-defined]
    assert thread.is_alive(), "the scorer must survive bad input"
    assert health.ready() and health.labels is not None and health.labels.deaths == 0, health.reason()
    stop_event.set()
    thread.join(15)
    store.close()
    producer.close()


def _start_scorer(kit, world, settings, log: Path) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    env = {**os.environ, **settings.to_env()}
    cmd = [
        sys.executable,
        "-m",
        "systems.fraud.stream",
        "--history",
        str(world.tx_path),
        "--warm-until-s",
        str(world.replay_start_s),
        "--max-records",
        "200",
    ]
    return subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def test_sigkill_and_restart_loses_nothing_and_stores_each_decision_once(
    fraud_world, broker: LocalBroker, tmp_path, kit
) -> None:  # type: ignore[no-untyped-def]
    """Exactly one stored decision per transaction and every decision on the topic after a SIGKILL mid-stream;
    a repeat on the topic (a kill between publication and its mark) is the identical stored decision, and
    there are at most one commit's worth of them."""
    most = 400
    settings = kit.make_settings(fraud_world, broker, publish_predictions=False, commit_max_records=most)
    create_topics(settings, fraud_topics(settings))
    producer = make_producer(settings)
    sent = replay(
        settings,
        producer,
        fraud_world.tx,
        start_s=fraud_world.replay_start_s,
        end_s=fraud_world.replay_start_s + 8 * DAY,
    )
    assert sent.transactions > 4000
    log = tmp_path / "scorer.log"
    store = DecisionStore(decision_store_url(settings))
    proc = _start_scorer(kit, fraud_world, settings, log)
    try:
        kit.wait_for(lambda: store.count()[0] >= 300, 90, "the first decisions", interval_s=0.01)
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: no cleanup, no final commit
        proc.wait(10)
        killed_at = store.count()[0]
        assert killed_at < sent.transactions, "kill came too late to test anything"
        proc = _start_scorer(kit, fraud_world, settings, log)
        kit.wait_for(lambda: store.count()[0] >= sent.transactions, 120, "all decisions after restart")
        proc.send_signal(signal.SIGTERM)  # a clean stop: every re-delivery has happened by now
        proc.wait(20)
        stored = store.frame()
        window = fraud_world.tx[
            (fraud_world.tx["ts_s"] >= fraud_world.replay_start_s)
            & (fraud_world.tx["ts_s"] < fraud_world.replay_start_s + 8 * DAY)
        ]
        # the store: one row per transaction of the window, none missing (its key forbids a second row, so
        # the meaningful checks are "every transaction is there" and "nothing else is")
        assert len(stored) == sent.transactions, log.read_text()[-3000:]
        assert set(stored["tx_id"]) == set(window["tx_id"])
        # the topic: every transaction's decision, and a repeat only of the stored decision itself
        on_topic = [json.loads(v) for v in _drain(kit, settings, settings.decisions_topic, sent.transactions)]
        assert {d["tx_id"] for d in on_topic} == set(window["tx_id"])
        score = stored.set_index("tx_id")["score"]
        assert all(d["score"] == score[d["tx_id"]] for d in on_topic)
        repeats = len(on_topic) - len({d["tx_id"] for d in on_topic})
        print(f"decisions topic: {len(on_topic)} messages, {repeats} repeated after the SIGKILL")
        assert repeats < most + 200, f"{repeats} repeats: more than one commit's worth"
        assert "re-delivered decisions published again" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        store.close()
        producer.close()
