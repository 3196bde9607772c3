"""Fault injection for ``mlsd fraud bench``: poison messages, seeded ``kill -9`` of the scorer and the API, and a
probe of what the broker's transactions really do.

Run: ``mlsd fraud bench --parts chaos,poison`` (the ``chaos`` and ``poison`` sections of the bench JSON).

Chaos. A stream at a fixed rate (transactions and their labels) runs into one scorer while a sequential client
retries ``POST /score`` until each transaction is answered; at seeded random moments the scorer or the API
gets ``SIGKILL`` and is started again at once, as a supervisor would. Then, against what was sent:

- ``lost``: transactions with no stored decision (stream) or never answered (API);
- ``duplicates_store``: stored rows beyond one per transaction;
- ``duplicates_topic``: messages beyond one per transaction on the ``decisions`` and ``predictions`` topics
  (every repeat is also checked to carry the stored decision's score);
- ``feature_mismatch``: decisions made on features that differ from the uninterrupted reference -- the same
  transactions through a scorer (an API) that was never killed, reading the same topics (requests);
- ``feature_mismatch_without_kills``: the same comparison for a stream run at the same rate with no kill, in
  the same bench run. The reference reads topics that are already complete, so every label is there before
  the transaction it affects; a live scorer reads labels on their own thread as they arrive, next to the
  transactions of the same event time, so some decisions are made before a just-due label is applied. That
  race exists without any fault: the kill run's figure means something only next to this control.
- ``recovery_s``: from the kill to the first decision (answer) of the restarted process;
- ``catchup_tps``: how fast the restarted scorer decides the backlog the outage left, until it decides
  transactions sent after it came back.

Poison. The messages that used to stop a consumer for good (and stop it again after every restart): each must
land in its dead-letter topic while the consumers stay up, and the good message after them must be decided.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from systems.common.broker import create_topics, dead_letter_topic, make_producer
from systems.common.errors import MlsdError
from systems.common.proc import free_port
from systems.fraud.bench import _day_start, _read_topic, _scoped, _start_scorers, _stop, _wait_count
from systems.fraud.features import FEATURES
from systems.fraud.replay import replay, tx_json
from systems.fraud.schemas import chargeback_json
from systems.fraud.settings import FraudSettings
from systems.fraud.store import DecisionStore, ScoreStore, features_matrix
from systems.fraud.stream import decision_store_url, fraud_topics

DAY = 86_400


# ------------------------------------------------------------------------------------------------ poison


def poison_transactions(start_s: int) -> dict[bytes, str]:
    """Transactions that must be dead-lettered, each with a word its reason contains."""
    return {
        b"{not json": "json",
        b'{"tx_id": 1}': "customer_id",
        b'{"tx_id":5,"customer_id":1,"terminal_id":2,"ts_s":1,"amount":-3}': "amount",
        tx_json(2**63, 1, 2, start_s, 5.0, 0.0): "tx_id",  # sqlite OverflowError in the store write
        tx_json(7, 2**63 + 5, 2, start_s, 5.0, 0.0): "customer_id",
        b'{"tx_id":8,"customer_id":1,"terminal_id":2,"ts_s":1e30,"amount":5.0}': "ts_s",
        tx_json(9, 1, 2, start_s + 10 * DAY, 5.0, 0.0): "ahead of the stream clock",
        tx_json(10, 1, 2, start_s - 40 * DAY, 5.0, 0.0): "behind the stream clock",
        b'{"tx_id":11,"customer_id":1,"terminal_id":2,"ts_s":5,"amount":NaN}': "amount",
        b"\x00" * 200_000: "over the",  # its escaped copy would exceed the producer's 1 MB limit
        b'{"tx_id":12,"pad":"' + b"x" * 3_000_000 + b'"}': "over the",
    }


def poison_labels(start_s: int) -> dict[bytes, str]:
    """Labels that must be dead-lettered (a label is a ``Chargeback``), each with a word of its reason."""
    far = 10**12  # ~year 33,700: inside the shared LabelRecord's bounds, far ahead of any stream
    good = chargeback_json(1, 2, 3, start_s - 7 * DAY, 1, start_s)
    return {
        b"{not json": "json",
        chargeback_json(2**63, 1, 2, 1_600_000_000, 1, 1_600_600_000): "64-bit",
        good.replace(b'"label":1', b'"label":7'): "0 or 1",
        chargeback_json(13, 1, 2, far, 1, far + 7 * DAY): "ahead of the label clock",
        chargeback_json(14, 1, 2, start_s, 1, start_s - DAY): "after label_ts",
        b"\x00" * 200_000: "over the",
        b'{"pad":"' + b"x" * 3_000_000 + b'"}': "over the",
    }


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def bench_poison(base: FraudSettings, tx: pd.DataFrame, *, start_day: int, log: Path) -> dict[str, Any]:
    """Every poison message into a running scorer (transactions and labels), then good transactions: count the
    dead letters, the consumer loops that died (``mlsd_consumer_loop_deaths_total`` + a scorer exit), and
    whether the good transactions after the poison were decided."""
    health = free_port()
    s = _scoped(base, "poison").model_copy(update={"health_port": health, "publish_predictions": False})
    create_topics(s, fraud_topics(s))
    start = _day_start(tx, start_day)
    procs = _start_scorers(s, 1, log, start)
    store = DecisionStore(decision_store_url(s))
    big = make_producer(s, None, **{"message.max.bytes": 5_000_000})
    try:
        tx_poison, label_poison = poison_transactions(start), poison_labels(start)
        for value in tx_poison:
            big.send(s.transactions_topic, value, key=b"1")
        for value in label_poison:
            big.send(s.labels_topic, value, key=b"1")
        big.flush()
        good = replay(s, big, tx, start_s=start, end_s=start + DAY, send_labels=False, limit=200)
        decided = _wait_count(store, good.transactions, 120, procs)
        tx_letters = _read_topic(s, dead_letter_topic(s.transactions_topic))
        label_letters = _read_topic(s, dead_letter_topic(s.labels_topic))
        metrics = httpx.get(f"http://127.0.0.1:{health}/metrics", timeout=5).text
        ready = httpx.get(f"http://127.0.0.1:{health}/readyz", timeout=5).status_code == 200
        exited = sum(p.poll() is not None for p in procs)
    finally:
        _stop(procs)
        store.close()
        big.close()

    def explained(letters: list[dict[str, Any]], corpus: dict[bytes, str]) -> int:
        import hashlib

        by_hash = {x["value_sha256"]: x["reason"].lower() for x in letters}
        return sum(why in by_hash.get(hashlib.sha256(v).hexdigest(), "") for v, why in corpus.items())

    return {
        "messages": len(tx_poison) + len(label_poison),
        "transactions": len(tx_poison),
        "labels": len(label_poison),
        "dead_lettered": len(tx_letters) + len(label_letters),
        "dead_lettered_with_the_expected_reason": explained(tx_letters, tx_poison)
        + explained(label_letters, label_poison),
        "consumer_deaths": int(_metric(metrics, "mlsd_consumer_loop_deaths_total")) + exited,
        "scorer_ready_after": ready,
        "good_after_poison": good.transactions,
        "good_after_poison_decided": decided,
        "largest_dead_letter_bytes": max(len(json.dumps(x)) for x in tx_letters + label_letters),
    }


# ------------------------------------------------------------------------------------------------- chaos


def _kill_times(rng: np.random.Generator, n: int, duration_s: float) -> list[float]:
    """``n`` moments in the middle 70 % of the run, at least 12 s apart (a restart has to finish first)."""
    if n == 0:
        return []
    gap = 12.0
    slots = rng.uniform(0.15, 0.85, size=n * 20) * duration_s
    chosen: list[float] = []
    for t in slots:
        if all(abs(t - c) >= gap for c in chosen):
            chosen.append(float(t))
        if len(chosen) == n:
            break
    return sorted(chosen)


def _spawn_scorer(settings: FraudSettings, log: Path, warm_until_s: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "systems.fraud.stream", "--history", str(settings.history)]
    cmd += ["--warm-until-s", str(warm_until_s)]
    env = {**os.environ, **settings.to_env()}
    return subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def chaos_scorer(
    base: FraudSettings,
    tx: pd.DataFrame,
    *,
    start_day: int,
    rate: float,
    duration_s: float,
    kills: int,
    seed: int,
    log: Path,
) -> dict[str, Any]:
    """The stream half of the chaos run (see the module docstring)."""
    s = _scoped(base, "chaos")
    create_topics(s, fraud_topics(s))
    start = _day_start(tx, start_day)
    rows = tx[tx["ts_s"] >= start].sort_values(["ts_s", "tx_id"]).head(int(rate * duration_s))
    end = int(rows["ts_s"].max()) + 1
    expected = set(rows["tx_id"].tolist())
    store = DecisionStore(decision_store_url(s))
    procs = _start_scorers(s, 1, log, start)
    producer = make_producer(s)
    sent: dict[str, Any] = {}
    sender = threading.Thread(
        target=lambda: sent.setdefault("r", replay(s, producer, tx, start_s=start, end_s=end, rate=rate)), daemon=True
    )
    t0 = time.monotonic()
    sender.start()
    events = []
    try:
        for at in _kill_times(np.random.default_rng(seed), kills, duration_s):
            time.sleep(max(0.0, at - (time.monotonic() - t0)))
            proc = procs[0]
            os.kill(proc.pid, signal.SIGKILL)
            killed_ms = time.time() * 1000
            proc.wait(10)
            procs[0] = _spawn_scorer(s, log, start)  # at once, as a supervisor would
            events.append({"at_s": round(at, 2), "killed_ms": killed_ms})
        sender.join()
        got = _wait_count(store, len(expected), 300, procs)
        if got < len(expected):
            raise MlsdError(f"chaos: {got} of {len(expected)} decided within 300 s; see {log}")
        _stop(procs)  # a clean stop: every re-delivery has happened by now
        stored = store.frame(with_features=True)
        decisions = _read_topic(s, s.decisions_topic)
        predictions = _read_topic(s, s.predictions_topic)
    finally:
        _stop(procs)
        store.close()

    # the uninterrupted reference: the same topics through a scorer that is never killed (own group and store)
    ref = s.model_copy(
        update={
            "group_id": f"{s.group_id}-reference",
            "decisions_topic": f"{s.decisions_topic}-reference",
            "predictions_topic": f"{s.predictions_topic}-reference",
            "decision_store_url": f"sqlite:///{(base.data_dir / 'fraud' / f'bench-{s.run_id}-ref.db').resolve()}",
            "publish_predictions": False,
        }
    )
    create_topics(ref, fraud_topics(ref))
    ref_store = DecisionStore(decision_store_url(ref))
    ref_procs = _start_scorers(ref, 1, log, start)
    try:
        _wait_count(ref_store, len(expected), 300, ref_procs)
        reference = ref_store.frame(with_features=True)
    finally:
        _stop(ref_procs)
        ref_store.close()
    producer.close()

    ids = set(stored["tx_id"].tolist())
    a = stored.set_index("tx_id").sort_index()
    b = reference.set_index("tx_id").loc[a.index.intersection(reference["tx_id"])]
    fa = features_matrix(a.loc[b.index, "features"].tolist(), len(FEATURES))
    fb = features_matrix(b["features"].tolist(), len(FEATURES))
    mismatch = int((~np.isclose(fa, fb, rtol=1e-9, atol=1e-9).all(axis=1)).sum())
    score = a["score"]
    topic_ids = [int(d["tx_id"]) for d in decisions]
    other_score = sum(1 for d in decisions if int(d["tx_id"]) in score.index and d["score"] != score[int(d["tx_id"])])
    pred_ids = [p["prediction_id"] for p in predictions]

    # per kill: recovery (kill -> first decision of the restarted scorer) and the catch-up that follows
    decided_ms = stored["decided_ms"].to_numpy(np.float64)
    sent_ms = decided_ms - stored["latency_ms"].to_numpy(np.float64)
    per_kill = []
    for e in events:
        after = np.sort(np.unique(decided_ms[decided_ms > e["killed_ms"]]))
        if not len(after):
            continue
        first = after[0]
        # caught up: the first commit that decides a transaction sent after the restarted scorer's first decision
        fresh = decided_ms[(decided_ms >= first) & (sent_ms >= first)]
        caught = float(fresh.min()) if len(fresh) else float(after[-1])
        backlog = int(((decided_ms >= first) & (decided_ms <= caught)).sum())
        per_kill.append(
            {
                "at_s": e["at_s"],
                "recovery_s": round((first - e["killed_ms"]) / 1000, 2),
                "backlog": backlog,
                "catchup_s": round((caught - first) / 1000, 3),
                "catchup_tps": round(backlog / max((caught - first) / 1000, 1e-3), 1),
            }
        )
    return {
        "rate_tps": rate,
        "duration_s": duration_s,
        "sent": len(expected),
        "stored": len(stored),
        "lost": len(expected - ids),
        "duplicates_store": len(stored) - len(ids),
        "decisions_topic_messages": len(decisions),
        "decisions_topic_lost": len(expected - set(topic_ids)),
        "duplicates_decisions_topic": len(topic_ids) - len(set(topic_ids)),
        "decisions_topic_repeats_with_another_score": other_score,
        "duplicates_predictions_topic": len(pred_ids) - len(set(pred_ids)),
        "feature_mismatch": mismatch,
        "compared_with_reference": len(b),
        "kills": per_kill,
    }


def _api_proc(settings: FraudSettings, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "systems.fraud.serve:create_app", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    env = {**os.environ, **settings.to_env()}
    return subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MlsdError(f"the API exited with code {proc.returncode} while starting")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise MlsdError(f"the API was not ready within {timeout_s:.0f} s")


def _send_all(
    url: str, bodies: list[dict[str, Any]], rate: float, answered: dict[int, float], stop: threading.Event
) -> int:
    """A sequential client: each transaction in order, paced at ``rate``, retried until answered (a client
    times out and retries; the API is idempotent by tx_id). Returns the retries made."""
    retries = 0
    with httpx.Client(timeout=5) as client:
        t0 = time.monotonic()
        for i, body in enumerate(bodies):
            ahead = t0 + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            while not stop.is_set():
                try:
                    r = client.post(f"{url}/score", json=body)
                    if r.status_code == 200:
                        answered[int(body["tx_id"])] = time.time() * 1000
                        break
                except httpx.HTTPError:
                    pass
                retries += 1
                time.sleep(0.05)
    return retries


def chaos_api(
    base: FraudSettings,
    tx: pd.DataFrame,
    *,
    start_day: int,
    rate: float,
    duration_s: float,
    kills: int,
    seed: int,
    log: Path,
) -> dict[str, Any]:
    """The API half of the chaos run (see the module docstring)."""
    start = _day_start(tx, start_day)
    s = _scoped(base, "chaos-api").model_copy(update={"warm_until_s": start})
    create_topics(s, fraud_topics(s))
    runs = base.data_dir / "fraud" / "bench-runs"
    runs.mkdir(parents=True, exist_ok=True)
    s = s.model_copy(update={"score_store_url": f"sqlite:///{(runs / f'scores-{s.run_id}.db').resolve()}"})
    rows = tx[tx["ts_s"] >= start].sort_values(["ts_s", "tx_id"]).head(int(rate * duration_s))
    bodies = [
        {
            "tx_id": int(r.tx_id),
            "customer_id": int(r.customer_id),
            "terminal_id": int(r.terminal_id),
            "ts_s": int(r.ts_s),
            "amount": float(r.amount),
        }
        for r in rows.itertuples()
    ]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _api_proc(s, port, log)
    _wait_ready(url, proc)
    answered: dict[int, float] = {}
    stop = threading.Event()
    out: dict[str, Any] = {}
    client = threading.Thread(target=lambda: out.setdefault("retries", _send_all(url, bodies, rate, answered, stop)))
    t0 = time.monotonic()
    client.start()
    events = []
    try:
        for at in _kill_times(np.random.default_rng(seed + 1), kills, duration_s):
            time.sleep(max(0.0, at - (time.monotonic() - t0)))
            os.kill(proc.pid, signal.SIGKILL)
            killed_ms = time.time() * 1000
            proc.wait(10)
            proc = _api_proc(s, port, log)  # at once, as a supervisor would
            _wait_ready(url, proc)
            events.append({"at_s": round(at, 2), "killed_ms": killed_ms})
        client.join(timeout=duration_s + 300)
    finally:
        stop.set()
        client.join(10)
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    chaos_store = ScoreStore(str(s.score_store_url))
    chaos_features = chaos_store.features()
    chaos_store.close()
    predictions = _read_topic(s, s.predictions_topic)

    # the uninterrupted reference: the same requests, in the same order, to an API that is never killed
    ref = s.model_copy(
        update={
            "score_store_url": f"sqlite:///{(runs / f'scores-{s.run_id}-ref.db').resolve()}",
            "publish_predictions": False,
        }
    )
    ref_port = free_port()
    ref_proc = _api_proc(ref, ref_port, log)
    try:
        _wait_ready(f"http://127.0.0.1:{ref_port}", ref_proc)
        _send_all(f"http://127.0.0.1:{ref_port}", bodies, 10_000.0, {}, threading.Event())
    finally:
        ref_proc.send_signal(signal.SIGTERM)
        ref_proc.wait(20)
    ref_store = ScoreStore(str(ref.score_store_url))
    ref_features = ref_store.features()
    ref_store.close()

    a = chaos_features.set_index("tx_id")
    b = ref_features.set_index("tx_id").loc[a.index.intersection(ref_features["tx_id"])]
    fa = features_matrix(a.loc[b.index, "features"].tolist(), len(FEATURES))
    fb = features_matrix(b["features"].tolist(), len(FEATURES))
    mismatch = int((~np.isclose(fa, fb, rtol=1e-9, atol=1e-9).all(axis=1)).sum())
    sent = {int(b_["tx_id"]) for b_ in bodies}
    pred_ids = [p["prediction_id"] for p in predictions]
    recoveries = []
    times = np.sort(np.array(list(answered.values())))
    for e in events:
        later = times[times > e["killed_ms"]]
        if len(later):
            recoveries.append({"at_s": e["at_s"], "recovery_s": round((later[0] - e["killed_ms"]) / 1000, 2)})
    return {
        "rate_rps": rate,
        "sent": len(sent),
        "answered": len(answered),
        "stored": len(chaos_features),
        "lost": len(sent - set(answered)),
        "duplicates_store": len(chaos_features) - chaos_features["tx_id"].nunique(),
        "client_retries": out.get("retries", 0),
        "predictions_topic_messages": len(pred_ids),
        "duplicates_predictions_topic": len(pred_ids) - len(set(pred_ids)),
        "predictions_lost_in_kills": len(sent) - len(set(pred_ids)),
        "feature_mismatch": mismatch,
        "compared_with_reference": len(b),
        "kills": recoveries,
    }


def bench_chaos(
    base: FraudSettings,
    tx: pd.DataFrame,
    *,
    start_day: int,
    stream_rate: float,
    api_rate: float,
    duration_s: float,
    kills: int,
    seed: int,
    log: Path,
) -> dict[str, Any]:
    """Both halves, and the totals the issue names (each counts a loss, a duplicate or a mismatch: target 0)."""
    scorer = chaos_scorer(
        base, tx, start_day=start_day, rate=stream_rate, duration_s=duration_s, kills=kills, seed=seed, log=log
    )
    control = chaos_scorer(
        base, tx, start_day=start_day, rate=stream_rate, duration_s=duration_s, kills=0, seed=seed, log=log
    )
    api = chaos_api(
        base, tx, start_day=start_day, rate=api_rate, duration_s=duration_s, kills=kills, seed=seed, log=log
    )
    recoveries = [k["recovery_s"] for k in scorer["kills"]] + [k["recovery_s"] for k in api["kills"]]
    catchups = [k["catchup_tps"] for k in scorer["kills"] if k["backlog"] > 0]
    return {
        "seed": seed,
        "kills_per_process": kills,
        "lost": scorer["lost"] + api["lost"],
        "duplicates_store": scorer["duplicates_store"] + api["duplicates_store"],
        "duplicates_topic": scorer["duplicates_decisions_topic"]
        + scorer["duplicates_predictions_topic"]
        + api["duplicates_predictions_topic"],
        "feature_mismatch": scorer["feature_mismatch"] + api["feature_mismatch"],
        "feature_mismatch_without_kills": control["feature_mismatch"],
        "feature_mismatch_compared": scorer["compared_with_reference"] + api["compared_with_reference"],
        "recovery_s": max(recoveries) if recoveries else None,
        "recovery_s_median": float(np.median(recoveries)) if recoveries else None,
        "catchup_tps": float(np.median(catchups)) if catchups else None,
        "scorer": scorer,
        "scorer_without_kills": {k: v for k, v in control.items() if k != "kills"},
        "api": api,
    }


# ------------------------------------------------------------------------------------------ transactions


def probe_transactions(settings: FraudSettings) -> dict[str, Any]:
    """What the broker does with Kafka transactions (read-process-write with the offsets in the transaction):
    whether they commit, whether a reader with ``isolation.level=read_committed`` is spared records of an
    aborted transaction and of one left open by a crashed producer (fenced when it restarts)."""
    from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

    run = uuid.uuid4().hex[:6]
    src, dst = f"txn-in-{run}", f"txn-out-{run}"
    from systems.common.broker import TopicSpec

    create_topics(settings, [TopicSpec(src, 1), TopicSpec(dst, 1)])
    plain = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for i in range(10):
        plain.produce(src, str(i).encode())
    plain.flush()
    group = f"txn-group-{run}"
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "session.timeout.ms": settings.kafka_session_timeout_ms,
            "heartbeat.interval.ms": settings.kafka_heartbeat_interval_ms,
        }
    )
    consumer.subscribe([src])
    got: list[Any] = []
    deadline = time.monotonic() + 30
    while len(got) < 10 and time.monotonic() < deadline:
        got += [m for m in consumer.consume(10, 0.5) if m.error() is None]
    out: dict[str, Any] = {}
    txp = Producer({"bootstrap.servers": settings.kafka_bootstrap, "transactional.id": f"probe-{run}"})
    txp.init_transactions(10)
    t = time.perf_counter()
    txp.begin_transaction()
    for m in got:
        txp.produce(dst, b"committed", key=m.value())
    txp.send_offsets_to_transaction([TopicPartition(src, 0, got[-1].offset() + 1)], consumer.consumer_group_metadata())
    txp.commit_transaction(10)
    out["commit_ms"] = round(1000 * (time.perf_counter() - t), 2)
    committed = consumer.committed([TopicPartition(src, 0)], timeout=5)[0].offset
    out["offsets_committed_in_transaction"] = committed == got[-1].offset() + 1
    txp.begin_transaction()
    for _ in range(5):
        txp.produce(dst, b"aborted")
    txp.flush()
    txp.abort_transaction(10)
    crashed = Producer({"bootstrap.servers": settings.kafka_bootstrap, "transactional.id": f"probe-crash-{run}"})
    crashed.init_transactions(10)
    crashed.begin_transaction()
    for _ in range(3):
        crashed.produce(dst, b"open")
    crashed.flush()  # and never committed: what a SIGKILL leaves

    def read() -> list[bytes]:
        reader = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"txn-read-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                "session.timeout.ms": settings.kafka_session_timeout_ms,
                "heartbeat.interval.ms": settings.kafka_heartbeat_interval_ms,
            }
        )
        reader.subscribe([dst])
        values: list[bytes] = []
        end = time.monotonic() + 20
        while time.monotonic() < end:
            msgs = reader.consume(100, 0.5)
            if any((e := m.error()) is not None and e.code() == KafkaError._PARTITION_EOF for m in msgs):
                values += [m.value() or b"" for m in msgs if m.error() is None]
                break
            values += [m.value() or b"" for m in msgs if m.error() is None]
        reader.close()
        return values

    before = read()
    restarted = Producer({"bootstrap.servers": settings.kafka_bootstrap, "transactional.id": f"probe-crash-{run}"})
    restarted.init_transactions(10)  # fences the crashed producer and aborts its open transaction
    after = read()
    consumer.close()
    out.update(
        {
            "committed_records_visible": before.count(b"committed"),
            "aborted_records_visible_to_read_committed": before.count(b"aborted"),
            "open_transaction_hidden_while_open": before.count(b"open") == 0,
            "fenced_transaction_records_visible_to_read_committed": after.count(b"open"),
        }
    )
    out["exactly_once_output_possible"] = (
        out["offsets_committed_in_transaction"]
        and out["aborted_records_visible_to_read_committed"] == 0
        and out["fenced_transaction_records_visible_to_read_committed"] == 0
    )
    return out
