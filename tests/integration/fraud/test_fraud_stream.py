"""The scorer through the real broker: every transaction gets one decision, bad input is dead-lettered,
SIGKILL + restart loses and duplicates nothing, and a new champion is picked up without a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from systems.common.broker import LocalBroker, create_topics, dead_letter_topic, make_consumer, make_producer
from systems.fraud.replay import replay
from systems.fraud.schemas import Decision, PredictionRecord
from systems.fraud.store import DecisionStore
from systems.fraud.stream import decision_store_url, fraud_topics, run_scorer

pytestmark = pytest.mark.integration

DAY = 86_400


def _drain(kit, settings, topic: str, expect: int, timeout_s: float = 30.0) -> list[bytes]:  # type: ignore[no-untyped-def]
    consumer = make_consumer(settings, [topic], f"check-{topic}")
    out: list[bytes] = []
    try:
        kit.wait_for(
            lambda: bool(out.extend(r.value for r in consumer.poll(0.2, 5000))) or len(out) >= expect,
            timeout_s,
            f"{expect} records on {topic}",
            interval_s=0,
        )
    finally:
        consumer.close()
    return out


def test_scorer_end_to_end_with_dead_letters(fraud_world, broker: LocalBroker, stop_event, kit) -> None:  # type: ignore[no-untyped-def]
    settings = kit.make_settings(fraud_world, broker)
    create_topics(settings, fraud_topics(settings))
    ready = threading.Event()
    result: dict[str, object] = {}

    def target() -> None:
        try:
            result["scorer"] = run_scorer(
                settings,
                history=fraud_world.tx_path,
                warm_until_s=fraud_world.replay_start_s,
                stop=stop_event,
                on_ready=lambda _: ready.set(),
            )
        except BaseException as exc:  # surfaced by the asserts below
            result["error"] = exc
            ready.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert ready.wait(60), "scorer did not start"
    assert "error" not in result, result.get("error")

    producer = make_producer(settings)
    bad = [b"{not json", b'{"tx_id": 1}', b'{"tx_id":5,"customer_id":1,"terminal_id":2,"ts_s":1,"amount":-3}']
    for value in bad[:2]:
        producer.send(settings.transactions_topic, value, key=b"1")
    sent = replay(
        settings, producer, fraud_world.tx, start_s=fraud_world.replay_start_s, end_s=fraud_world.replay_start_s + DAY
    )
    producer.send(settings.transactions_topic, bad[2], key=b"1")
    producer.flush()

    store = DecisionStore(decision_store_url(settings))
    kit.wait_for(lambda: store.count()[0] >= sent.transactions, 60, "all decisions stored")
    rows, distinct = store.count()
    assert rows == distinct == sent.transactions > 300
    raw = _drain(kit, settings, settings.decisions_topic, sent.transactions)
    # the scorer formats messages by hand for speed: they must still be valid schema instances
    for v in raw[:50]:
        Decision.model_validate_json(v)
    decisions = [json.loads(v) for v in raw]
    assert {d["tx_id"] for d in decisions} == set(store.frame()["tx_id"])
    assert all(d["decision"] in ("approve", "block") and 0.0 <= d["score"] <= 1.0 for d in decisions)
    raw_preds = _drain(kit, settings, settings.predictions_topic, sent.transactions)
    for v in raw_preds[:50]:
        PredictionRecord.model_validate_json(v)
    preds = [json.loads(v) for v in raw_preds]
    assert preds[0]["system"] == "fraud" and "cust_amount_ratio" in preds[0]["features"]

    letters = [json.loads(v) for v in _drain(kit, settings, dead_letter_topic(settings.transactions_topic), 3)]
    assert len(letters) == 3
    assert all(letter["reason"] and letter["source_topic"] == settings.transactions_topic for letter in letters)
    assert any("amount" in letter["reason"] for letter in letters)
    assert thread.is_alive(), "the scorer must survive bad input"
    stop_event.set()
    thread.join(15)
    store.close()
    producer.close()


def _start_scorer(kit, world, settings, log: Path) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    env = {**os.environ, **kit.settings_env(settings)}
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


def test_sigkill_and_restart_leaves_exactly_one_decision(fraud_world, broker: LocalBroker, tmp_path, kit) -> None:  # type: ignore[no-untyped-def]
    settings = kit.make_settings(fraud_world, broker, publish_predictions=False)
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
        # give re-deliveries a moment to (not) add anything
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        rows, distinct = store.count()
        assert rows == distinct == sent.transactions, log.read_text()[-3000:]
        stored = set(store.frame()["tx_id"])
        window = fraud_world.tx[
            (fraud_world.tx["ts_s"] >= fraud_world.replay_start_s)
            & (fraud_world.tx["ts_s"] < fraud_world.replay_start_s + 8 * DAY)
        ]
        assert stored == set(window["tx_id"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        store.close()
        producer.close()
