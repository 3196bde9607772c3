"""Fraud acts on monitoring's retrain requests: a real tansu broker, a real MLflow sqlite registry.

Each case counts the versions tagged with a request id (``registry.versions_tagged``), which is what monitoring
reads: a second retrain for the same request would show up as a second tagged version.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from systems.common import registry
from systems.common.broker import DeadLetter, LocalBroker, dead_letter_topic, make_consumer, make_producer, publish
from systems.common.predictions import RetrainRequest
from systems.fraud.features import FEATURES, LABEL_DELAY_DAYS
from systems.fraud.feedback import RetrainOutcome, run_retrain_listener
from systems.fraud.settings import FraudSettings
from systems.fraud.store import DecisionStore, LabelStore

pytestmark = pytest.mark.integration

FAST_RETRAIN = {"kind": "logreg", "train_days": 12, "eval_days": 3}
# tansu holds a JoinGroup for session/2: 2000 ms joins in ~1 s (tansu only; real Kafka's minimum is 6000)
FAST_JOIN = {"kafka_session_timeout_ms": 2000, "kafka_heartbeat_interval_ms": 500}


@dataclass(frozen=True)
class Stores:
    decision_store_url: str
    label_store_path: str


@pytest.fixture(scope="module")
def matured_stores(fraud_world, tmp_path_factory: pytest.TempPathFactory) -> Stores:  # type: ignore[no-untyped-def]
    """Served decisions (features = what the scorer saw) and their matured labels, as the loop leaves them."""
    base = tmp_path_factory.mktemp("retrain-listener")
    stores = Stores(f"sqlite:///{base / 'decisions.db'}", f"sqlite:///{base / 'labels.db'}")
    frame = fraud_world.frame[fraud_world.frame["day"] >= 25]
    X = frame[FEATURES].to_numpy(np.float64)
    decisions = DecisionStore(stores.decision_store_url)
    rows = frame[["tx_id", "customer_id", "terminal_id", "ts_s", "amount"]].to_numpy().tolist()
    decisions.put_many(
        [
            (int(t), int(c), int(m), int(s), a, 0.0, "approve", "0", None, 0, X[i].tobytes())
            for i, (t, c, m, s, a) in enumerate(rows)
        ]
    )
    labels = LabelStore(stores.label_store_path)
    delay = LABEL_DELAY_DAYS * 86_400
    labels.put_many(
        [
            (int(r.tx_id), int(r.customer_id), int(r.terminal_id), int(r.ts_s), int(r.fraud), int(r.ts_s) + delay)
            for r in frame.itertuples()
        ]
    )
    decisions.close()
    labels.close()
    return stores


def _settings(kit, fraud_world, broker: LocalBroker, stores: Stores) -> FraudSettings:  # type: ignore[no-untyped-def]
    settings: FraudSettings = kit.make_settings(
        fraud_world,
        broker,
        model_name=f"fraud-listen-{uuid.uuid4().hex[:8]}",
        decision_store_url=stores.decision_store_url,
        label_store_path=stores.label_store_path,
        **FAST_JOIN,
    )
    return settings


def _request(settings: FraudSettings, request_id: str, **overrides: object) -> RetrainRequest:
    fields: dict[str, object] = {
        "request_id": request_id,
        "incident_id": f"inc-{request_id}",
        "system": "fraud",
        "model_name": settings.model_name,
        "model_version": "1",
        "reason": "drift: 3 features",
        "severity": "warning",
        "requested_ts_ms": 1_700_000_000_000,
        "evidence": {"drifted": 3},
    }
    fields.update(overrides)
    return RetrainRequest.model_validate(fields)


def _send(settings: FraudSettings, *messages: RetrainRequest | bytes) -> None:
    producer = make_producer(settings)
    for m in messages:
        if isinstance(m, bytes):
            producer.send(settings.retrain_requests_topic, m, key=b"bad")
        else:
            publish(producer, settings.retrain_requests_topic, m, key=f"{m.system}:{m.model_name}")
    producer.close()  # flushes: every message is on the topic when this returns


@dataclass
class Listener:
    outcomes: list[RetrainOutcome] = field(default_factory=list)
    returned: list[RetrainOutcome] | None = None
    error: BaseException | None = None
    thread: threading.Thread | None = None


@contextmanager
def listening(settings: FraudSettings, kit, *, group_id: str | None = None) -> Iterator[Listener]:  # type: ignore[no-untyped-def]
    """The listener in a thread, returned once its group has assigned it the topic; stopped cleanly on exit."""
    stop, ready = threading.Event(), threading.Event()
    state = Listener()

    def target() -> None:
        try:
            state.returned = run_retrain_listener(
                settings,
                stop,
                group_id=group_id,
                on_ready=ready.set,
                on_outcome=state.outcomes.append,
                retrain_kwargs=FAST_RETRAIN,
            )
        except BaseException as exc:
            state.error = exc
            ready.set()

    state.thread = threading.Thread(target=target, daemon=True)
    state.thread.start()
    assert ready.wait(30), "the listener did not join its consumer group"
    try:
        yield state
    finally:
        stop.set()
        state.thread.join(60)
    assert state.error is None, state.error
    assert state.returned == state.outcomes  # the return value is the same record, in order


def _wait_outcomes(kit, state: Listener, n: int, timeout_s: float = 60) -> list[RetrainOutcome]:  # type: ignore[no-untyped-def]
    kit.wait_for(lambda: len(state.outcomes) >= n or state.error is not None, timeout_s, f"{n} outcomes")
    assert state.error is None, state.error
    return list(state.outcomes)


def _read_dead_letters(settings: FraudSettings, n: int, timeout_s: float = 30) -> list[DeadLetter]:
    topic = dead_letter_topic(settings.retrain_requests_topic)
    consumer = make_consumer(settings, [topic], f"{settings.group_id}-dlq-reader")
    letters: list[DeadLetter] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(letters) < n and time.monotonic() < deadline:
            letters += [DeadLetter.model_validate_json(r.value) for r in consumer.poll(timeout_s=0.5)]
    finally:
        consumer.close()
    assert len(letters) == n, letters
    return letters


def _tagged(settings: FraudSettings, request_id: str) -> list[str]:
    return registry.versions_tagged(settings.model_name, registry.RETRAIN_REQUEST_TAG, request_id)


def _all_versions(settings: FraudSettings) -> list[str]:
    from mlflow import MlflowClient

    versions = MlflowClient().search_model_versions(f"name='{settings.model_name}'")
    return [str(v) for v in sorted(int(v.version) for v in versions)]  # MLflow 3 types it as int


def test_a_fraud_request_retrains_once_and_tags_the_version(fraud_world, broker, kit, matured_stores) -> None:  # type: ignore[no-untyped-def]
    settings = _settings(kit, fraud_world, broker, matured_stores)
    with listening(settings, kit) as state:
        _send(settings, _request(settings, "req-a"))
        (outcome,) = _wait_outcomes(kit, state, 1)
    assert outcome.status == "retrained" and outcome.request_id == "req-a", outcome
    assert _tagged(settings, "req-a") == [outcome.version] == _all_versions(settings)
    from mlflow import MlflowClient

    tags = MlflowClient().get_model_version(settings.model_name, str(outcome.version)).tags
    assert tags[registry.RETRAIN_REQUEST_TAG] == "req-a"
    assert tags[registry.RETRAIN_INCIDENT_TAG] == "inc-req-a"
    # no champion before: the gate promotes the candidate, and the tag says so
    assert outcome.promoted is True and tags[registry.RETRAIN_PROMOTED_TAG] == "true"
    assert registry.get_alias_version(settings.model_name, registry.CHAMPION) == outcome.version


def test_b_duplicates_and_restarts_retrain_once(fraud_world, broker, kit, matured_stores) -> None:  # type: ignore[no-untyped-def]
    settings = _settings(kit, fraud_world, broker, matured_stores)
    request = _request(settings, "req-b")
    _send(settings, request, request)  # delivered twice before the listener starts: likely one batch
    with listening(settings, kit) as state:
        first, second = _wait_outcomes(kit, state, 2)
    assert (first.status, second.status) == ("retrained", "duplicate"), state.outcomes
    assert _tagged(settings, "req-b") == [first.version]

    # restart in the same group and publish it again: only the new message arrives (the old ones were
    # committed), and a fresh process has no memory of it: the registry tag is what stops a second retrain
    _send(settings, request)
    with listening(settings, kit) as state:
        (again,) = _wait_outcomes(kit, state, 1)
    assert again.status == "duplicate" and again.version == first.version, again

    # a consumer whose offsets were lost (a new group) re-reads all three: still no second retrain
    with listening(settings, kit, group_id=f"{settings.group_id}-lost-offsets") as state:
        replayed = _wait_outcomes(kit, state, 3)
    assert [o.status for o in replayed] == ["duplicate"] * 3, replayed
    assert _tagged(settings, "req-b") == [first.version] == _all_versions(settings)


def test_c_requests_for_other_systems_or_models_are_ignored(fraud_world, broker, kit, matured_stores) -> None:  # type: ignore[no-untyped-def]
    settings = _settings(kit, fraud_world, broker, matured_stores)
    other_system = _request(settings, "req-c1", system="recsys")
    other_model = _request(settings, "req-c2", model_name=f"{settings.model_name}-other")
    with listening(settings, kit) as state:
        _send(settings, other_system, other_model)
        outcomes = _wait_outcomes(kit, state, 2)
    assert [(o.request_id, o.status) for o in outcomes] == [("req-c1", "ignored"), ("req-c2", "ignored")]
    assert _all_versions(settings) == []  # nothing registered at all
    assert _tagged(settings, "req-c1") == [] and _tagged(settings, "req-c2") == []


def test_d_malformed_requests_are_dead_lettered_and_the_next_is_handled(  # type: ignore[no-untyped-def]
    fraud_world, broker, kit, matured_stores
) -> None:
    settings = _settings(kit, fraud_world, broker, matured_stores)
    missing_fields = b'{"request_id": "req-d-bad", "system": "fraud"}'
    with listening(settings, kit) as state:
        _send(settings, b"not json {", missing_fields, _request(settings, "req-d"))
        (outcome,) = _wait_outcomes(kit, state, 1)
    assert outcome.status == "retrained" and _tagged(settings, "req-d") == [outcome.version]

    letters = _read_dead_letters(settings, 2)
    assert [letter.value for letter in letters] == ["not json {", missing_fields.decode()]
    assert all(letter.source_topic == settings.retrain_requests_topic for letter in letters)
    assert "invalid" in letters[0].reason and "incident_id" in letters[1].reason, [x.reason for x in letters]


def test_e_a_request_that_cannot_be_served_is_not_tagged_and_can_be_re_requested(  # type: ignore[no-untyped-def]
    fraud_world, broker, kit, matured_stores, tmp_path: Path
) -> None:
    settings = _settings(kit, fraud_world, broker, matured_stores)
    # decisions served, but no label has come in yet
    empty = settings.model_copy(update={"label_store_path": f"sqlite:///{tmp_path / 'no-labels-yet.db'}"})
    request = _request(settings, "req-e")
    with listening(empty, kit) as state:
        _send(settings, request)
        (failed,) = _wait_outcomes(kit, state, 1)
        assert state.thread is not None and state.thread.is_alive()  # the consumer did not crash
    assert failed.status == "failed" and "no matured labels" in failed.detail, failed
    assert _tagged(settings, "req-e") == [] and _all_versions(settings) == []

    # once labels have matured, the same request id again is served; the failed one was committed
    _send(settings, request)
    with listening(settings, kit) as state:
        (served,) = _wait_outcomes(kit, state, 1)
    assert served.status == "retrained" and _tagged(settings, "req-e") == [served.version]


def test_cli_listen_in_a_fresh_process_finds_the_tag_in_the_configured_registry(  # type: ignore[no-untyped-def]
    fraud_world, broker, kit, matured_stores, tmp_path: Path
) -> None:
    """``mlsd fraud retrain --listen`` as a user runs it: a new process, whose only memory of a request handled
    before it started is the registry's tag (and which must ask the configured registry, not ./mlflow.db)."""
    settings = _settings(kit, fraud_world, broker, matured_stores)
    request = _request(settings, "req-cli")
    with listening(settings, kit) as state:
        _send(settings, request)
        (first,) = _wait_outcomes(kit, state, 1)
    assert first.status == "retrained"

    mlsd = Path(sys.executable).parent / "mlsd"
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: drop it, so the child has only its settings to go by
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    proc = subprocess.Popen(
        [str(mlsd), "fraud", "retrain", "--listen", "--kind", "logreg"],
        env={**env, **settings.to_env(), "COLUMNS": "200"},  # rich wraps at the terminal width
        cwd=tmp_path,  # where a registry falling back to MLflow's default would write mlflow.db
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        kit.wait_for(lambda: any("listening on" in x for x in lines) or proc.poll() is not None, 60, "the CLI")
        assert proc.poll() is None, "".join(lines)
        _send(settings, request)  # the same request again, to the same consumer group
        kit.wait_for(lambda: any(x.startswith(("duplicate", "retrained")) for x in lines), 60, "an outcome")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        reader.join(5)
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert f"duplicate req-cli v{first.version}" in out, out
    assert _tagged(settings, "req-cli") == [first.version] == _all_versions(settings)
    assert not (tmp_path / "mlflow.db").exists()


def test_f_a_request_naming_a_change_waits_for_labels_after_it_across_a_restart(  # type: ignore[no-untyped-def]
    fraud_world, broker, kit, tmp_path: Path
) -> None:
    """Monitoring names where the change began (``evidence.change_ts_ms``); a retrain right after the alert would
    learn last week's world, so the request is deferred until enough labels after the change have matured —
    and a restart in between keeps it (``retrain_deferred.json``), still retraining once."""
    frame = fraud_world.frame[fraud_world.frame["day"] >= 25]
    abs_day = (frame["ts_s"] // 86_400).astype(int)
    first = int(abs_day.min())
    change_day = first + 8  # the retrain needs change_day .. change_day + 14 (12 train + 3 eval days)
    decisions = DecisionStore(f"sqlite:///{tmp_path / 'decisions.db'}")
    X = frame[FEATURES].to_numpy(np.float64)
    rows = frame[["tx_id", "customer_id", "terminal_id", "ts_s", "amount"]].to_numpy().tolist()
    decisions.put_many(
        [
            (int(t), int(c), int(m), int(s), a, 0.0, "approve", "0", None, 0, X[i].tobytes())
            for i, (t, c, m, s, a) in enumerate(rows)
        ]
    )
    decisions.close()
    labels = LabelStore(f"sqlite:///{tmp_path / 'labels.db'}")
    delay = LABEL_DELAY_DAYS * 86_400

    def mature(mask: np.ndarray) -> None:
        labels.put_many(
            [
                (int(r.tx_id), int(r.customer_id), int(r.terminal_id), int(r.ts_s), int(r.fraud), int(r.ts_s) + delay)
                for r in frame[mask].itertuples()
            ]
        )

    mature((abs_day <= change_day + 11).to_numpy())  # 12 days after the change have matured: 3 short
    stores = Stores(f"sqlite:///{tmp_path / 'decisions.db'}", f"sqlite:///{tmp_path / 'labels.db'}")
    settings = _settings(kit, fraud_world, broker, stores)
    request = _request(settings, "req-f", evidence={"change_ts_ms": change_day * 86_400_000})
    with listening(settings, kit) as state:
        _send(settings, request)
        (deferred,) = _wait_outcomes(kit, state, 1)
        assert deferred.status == "deferred" and f"day {change_day}" in deferred.detail, deferred
        time.sleep(0.5)  # retries run (every 2 s by default); nothing is registered, nothing reported twice
        assert len(state.outcomes) == 1
    assert _all_versions(settings) == []
    assert (settings.run_dir("fraud") / "retrain_deferred.json").is_file()

    mature((abs_day > change_day + 11).to_numpy())  # the rest matures while the listener is down
    labels.close()
    with listening(settings, kit) as state:  # a new listener: the request is not on the topic any more
        (served,) = _wait_outcomes(kit, state, 1)
    assert served.status == "retrained" and _tagged(settings, "req-f") == [served.version] == _all_versions(settings)
    from mlflow import MlflowClient

    run_id = MlflowClient().get_model_version(settings.model_name, served.version).run_id
    eval_days = MlflowClient().get_run(run_id).data.params["eval_days"]
    train_lo = int(eval_days.split("..")[0]) - FAST_RETRAIN["train_days"]
    assert train_lo >= change_day, "the retrain learned from before the change"
