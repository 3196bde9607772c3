"""Monitoring ingest against a real tansu broker: delayed, early and re-delivered labels, dead letters, drift."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from systems.common.broker import (
    DeadLetter,
    LocalBroker,
    Producer,
    dead_letter_topic,
    make_consumer,
    make_producer,
)
from systems.common.predictions import encode_label, encode_prediction
from systems.monitoring.ingest import MonitorState, bench_ingest, run_ingest
from systems.monitoring.performance import metric_map
from systems.monitoring.results import WindowResult
from systems.monitoring.settings import MonitoringSettings
from systems.monitoring.windows import Reference

pytestmark = pytest.mark.integration

S = 1000
T0 = 1_700_000_000_000


@pytest.fixture()
def mon_settings(tmp_path: Path, broker: LocalBroker, make_settings: Callable[..., Any]) -> MonitoringSettings:
    s: MonitoringSettings = make_settings(
        MonitoringSettings,
        tmp_path,
        kafka_bootstrap=broker.bootstrap,
        window_s=10.0,
        allowed_lateness_s=1.0,
        label_wait_s=600.0,
        min_samples=1,
    ).scoped()
    # ``label_topics`` (a list, not a ``*_topic``) is not renamed by scoped(): make it private here.
    return s.model_copy(update={"label_topics": f"labels-{s.run_id},textclf.feedback-{s.run_id}"})


@pytest.fixture()
def producer(mon_settings: MonitoringSettings) -> Iterator[Producer]:
    p = make_producer(mon_settings)
    yield p
    p.close()


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def ingesting(settings: MonitoringSettings, state: MonitorState) -> Iterator[None]:
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run_ingest(settings, state, stop, on_ready=ready.set, commit_interval_s=0.2)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        assert ready.wait(30), "the ingest members were not assigned their partitions"
        yield
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors


def send(producer: Producer, topic: str, values: list[bytes]) -> None:
    for v in values:
        producer.send(topic, v)
    producer.flush()


def prediction(pid: str, ts_ms: int, score: float = 0.5, **kw: Any) -> bytes:
    return encode_prediction(
        system="fraud",
        model_name=kw.pop("model_name", "fraud-m"),
        model_version=kw.pop("model_version", "1"),
        prediction_id=pid,
        event_ts_ms=ts_ms,
        features=kw.pop("features", {"amount": 25.0}),
        output={"score": score, "decision": "block" if score >= 0.5 else "approve"},
        latency_ms=1.0,
    )


def chargeback(pid: str, fraud: int, ts_ms: int, event_ts_ms: int | None = None) -> bytes:
    return encode_label(system="fraud", prediction_id=pid, label=fraud, label_ts_ms=ts_ms, event_ts_ms=event_ts_ms)


def window(state: MonitorState, start_ms: int, version: str = "1") -> WindowResult | None:
    with state.lock:
        for r in state.latest.values():
            if r.key.start_ms == start_ms and r.key.model_version == version:
                return r
    return None


def test_delayed_early_and_redelivered_labels_join_once(mon_settings: MonitoringSettings, producer: Producer) -> None:
    s = mon_settings
    state = MonitorState.from_settings(s, references={}, update_interval_s=0.0)
    labels_a, labels_b = s.labels
    with ingesting(s, state):
        # A label can overtake its prediction (the label topic is small and caught up): it is held.
        send(producer, labels_a, [chargeback("early", 1, T0 + 86_400 * S, event_ts_ms=T0 + 500)])
        wait_for(lambda: state.join.held == 1, "the early label to be held")

        scores = [0.9 if i % 5 == 0 else 0.1 for i in range(50)]
        send(producer, s.predictions_topic, [prediction(f"tx{i}", T0 + i * 100, sc) for i, sc in enumerate(scores)])
        send(producer, s.predictions_topic, [prediction("early", T0 + 500, 0.8)])
        wait_for(lambda: state.join.stats.held_joined == 1, "the held label to meet its prediction")

        # The stream moves on: the window [T0, T0 + 10 s) closes with one label so far.
        send(producer, s.predictions_topic, [prediction("closer", T0 + 20 * S)])
        first = wait_for(lambda: window(state, T0), "the window to close")
        assert (first.count, first.labelled, first.revision) == (51, 1, 0)

        # Labels arrive a day later on two label topics; a batch of each is re-delivered.
        later = T0 + 86_400 * S
        fraud = [int(sc > 0.5) for sc in scores]
        send(producer, labels_a, [chargeback(f"tx{i}", fraud[i], later) for i in range(30)])
        send(producer, labels_b, [chargeback(f"tx{i}", fraud[i], later) for i in range(30, 50)])
        send(producer, labels_a, [chargeback(f"tx{i}", fraud[i], later) for i in range(10)])  # re-delivered
        send(producer, s.predictions_topic, [prediction(f"tx{i}", T0 + i * 100, scores[i]) for i in range(10)])
        wait_for(lambda: state.counters.labels == 61 and state.counters.predictions == 62, "every record")
        done = wait_for(lambda: (r := window(state, T0)) is not None and r.labelled == 51 and r, "all labels")
    js = state.join.stats
    assert (js.labels_joined, js.labels_duplicate, js.predictions_duplicate) == (51, 10, 10)
    assert done.count == 51 and done.revision >= 1
    m = metric_map(done.realised)
    assert m["precision"].value == 1.0 and m["recall"].value == 1.0  # decisions equal labels, counted once
    assert m["prevalence"].value == pytest.approx(11 / 51)
    assert done.label_delay_s_p50 == pytest.approx(86_397.6)  # the median of 51 delays, 86,395.1 .. 86,400 s


def _read_dead_letters(settings: MonitoringSettings, topic: str, n: int) -> list[DeadLetter]:
    consumer = make_consumer(settings, [dead_letter_topic(topic)], f"{settings.group_id}-dlq-{topic}")
    got: list[DeadLetter] = []
    deadline = time.monotonic() + 30
    try:
        while len(got) < n and time.monotonic() < deadline:
            got += [DeadLetter.model_validate_json(r.value) for r in consumer.poll(timeout_s=0.5)]
    finally:
        consumer.close()
    return got


def test_malformed_records_are_dead_lettered_and_the_next_record_is_processed(
    mon_settings: MonitoringSettings, producer: Producer
) -> None:
    s = mon_settings
    state = MonitorState.from_settings(s, references={})
    missing_output = prediction("bad", T0).replace(b'"output"', b'"outptu"')
    with ingesting(s, state):
        send(producer, s.predictions_topic, [prediction("p1", T0), b"\x00not json", missing_output])
        send(producer, s.predictions_topic, [prediction("p2", T0 + S)])
        send(producer, s.labels[0], [b"{", chargeback("p1", 1, T0 + 5 * S)])
        wait_for(lambda: state.counters.predictions == 2 and state.counters.labels == 1, "the good records")
        wait_for(lambda: state.counters.prediction_dead_letters == 2, "two dead predictions")
        wait_for(lambda: state.counters.label_dead_letters == 1, "one dead label")
    assert state.join.stats.labels_joined == 1 and state.join.pending == 1  # p1 graded, p2 (after the bad) waits
    letters = sorted(_read_dead_letters(s, s.predictions_topic, 2), key=lambda d: d.offset)
    assert [d.offset for d in letters] == [1, 2]
    assert letters[0].reason.startswith("invalid message: Invalid JSON")
    assert letters[1].reason.startswith("invalid output: Field required")
    assert letters[1].source_topic == s.predictions_topic and '"outptu"' in letters[1].value
    (bad_label,) = _read_dead_letters(s, s.labels[0], 1)
    assert bad_label.offset == 0 and "JSON" in bad_label.reason


def _records(n: int, *, seed: int, version: str, shift: float = 0.0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3.0, 1.0, n) * (1.0 + shift)
    channel = rng.choice(["web", "pos"], n, p=[0.6, 0.4])
    return [
        prediction(
            f"{version}-{i}",
            T0 + i * 4,  # 2,500 records in the first 10-s window
            float(rng.beta(1, 10)),
            model_version=version,
            features={"amount": float(amount[i]), "channel": str(channel[i])},
        )
        for i in range(n)
    ]


def test_a_shifted_stream_is_reported_as_drift_and_a_clean_one_is_not(
    mon_settings: MonitoringSettings, producer: Producer
) -> None:
    """Two versions of one model behind one reference: v2's inputs moved (amounts doubled), v1's did not."""
    s = mon_settings
    from systems.common.predictions import PredictionRecord

    reference = Reference.from_records(
        PredictionRecord.model_validate_json(r) for r in _records(5000, seed=0, version="0")
    )
    state = MonitorState.from_settings(s, references={("fraud", "fraud-m"): reference})
    with ingesting(s, state):
        send(producer, s.predictions_topic, _records(2500, seed=1, version="1"))
        send(producer, s.predictions_topic, _records(2500, seed=2, version="2", shift=1.0))
        send(producer, s.predictions_topic, [prediction("closer", T0 + 15 * S)])
        clean = wait_for(lambda: window(state, T0, "1"), "v1's window")
        shifted = wait_for(lambda: window(state, T0, "2"), "v2's window")
    assert clean.count == shifted.count == 2500
    assert clean.drift["drifted_columns"] == [] and not clean.drift["dataset_drift"]
    assert "amount" in shifted.drift["drifted_columns"] and "channel" not in shifted.drift["drifted_columns"]


@pytest.mark.slow
def test_bench_ingest_measures_records_per_second_through_the_broker(mon_settings: MonitoringSettings) -> None:
    out = bench_ingest(mon_settings, n=20_000)
    print(f"ingest: {out['records_per_s']:.0f} records/s, decode {out['decode_us']} (loadavg {out['loadavg_after']})")
    assert out["records"] == 20_000 and out["records_per_s"] > 1000
    assert out["decode_us"]["fast_us"] > 0 and out["windows_closed"] >= 1


def test_no_poison_message_stops_the_ingest_and_none_is_lost(
    mon_settings: MonitoringSettings, producer: Producer
) -> None:
    """The common poison corpus on both record topics: each is dead-lettered or ingested, the members stay up,
    and the good records after them are processed."""
    import json

    from systems.common.poison import PRODUCER_MAX_BYTES, poison_corpus

    s = mon_settings
    valid_prediction = json.loads(prediction("ok", T0))
    valid_label = json.loads(chargeback("ok", 1, T0 + S))
    poison = {
        s.predictions_topic: poison_corpus(valid_prediction),
        s.labels[0]: poison_corpus(valid_label),
    }
    big = make_producer(s, **{"message.max.bytes": PRODUCER_MAX_BYTES})  # to send the 3 MB one at all
    state = MonitorState.from_settings(s, references={})
    with ingesting(s, state):
        for topic, corpus in poison.items():
            send(big, topic, [value for _, value in corpus])
        send(producer, s.predictions_topic, [prediction("after-1", T0 + 2 * S), prediction("after-2", T0 + 3 * S)])
        n_pred, n_label = len(poison[s.predictions_topic]), len(poison[s.labels[0]])

        def accounted() -> bool:
            c = state.counters
            return (
                c.predictions + c.prediction_dead_letters == n_pred + 2 and c.labels + c.label_dead_letters == n_label
            )

        wait_for(accounted, "every poison message dead-lettered or ingested, and the good ones after", 60)
    big.close()
    c = state.counters
    assert c.prediction_dead_letters >= len(poison[s.predictions_topic]) // 2, c  # most of them are refused
    assert c.label_dead_letters >= len(poison[s.labels[0]]) // 2, c
    letters = _read_dead_letters(s, s.predictions_topic, c.prediction_dead_letters)
    assert len(letters) == c.prediction_dead_letters  # each one is on the dead-letter topic, with its reason
    assert all(d.reason and len(d.value) <= 16_384 for d in letters)  # bounded copies: dead-lettering never fails
