"""The text classifier's pipeline acts on monitoring's retrain requests: a real tansu broker, the real DVC
pipeline (``ci`` preset) and a real MLflow sqlite registry.

A request delivered twice retrains once (one new MLflow run, one version tagged with its id); a listener
restarted in a fresh consumer group (which re-reads the topic from the start, as a re-delivery after a crash
would) finds the tag in the registry and retrains nothing; another system's request is ignored. The restarted
listener runs inside ``watch(listen=True)``, as ``mlsd textclf pipeline --watch --listen`` runs it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from systems.common import registry
from systems.common.broker import LocalBroker, make_producer, publish
from systems.common.predictions import RetrainRequest
from systems.mlops_textclf.ingest import make_batches, write_split
from systems.mlops_textclf.pipeline import RetrainOutcome, run_retrain_listener, watch
from systems.mlops_textclf.settings import TextclfSettings
from systems.mlops_textclf.train import EXPERIMENT
from tests.unit.textclf.textclf_support import CONFIG, make_textclf_settings, tiny_corpus

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# tansu holds a JoinGroup for session/2: 2000 ms joins in ~1 s (tansu only; real Kafka's minimum is 6000)
FAST_JOIN = {"kafka_session_timeout_ms": 2000, "kafka_heartbeat_interval_ms": 500}


@pytest.fixture()
def textclf_broker_settings(
    tmp_path: Path, broker: LocalBroker, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> TextclfSettings:
    """The tiny corpus's golden set and batches in the inbox; no pipeline run yet; private topic and model name."""
    s = make_textclf_settings(
        tmp_path / ".mlsd",
        kafka_bootstrap=broker.bootstrap,
        retrain_requests_topic=f"retrain-{unique_name}",
        model_name=f"textclf-{uuid.uuid4().hex[:8]}",
        **FAST_JOIN,
    )
    write_split(make_batches(tiny_corpus(), CONFIG, golden_fraction=0.1, seed=0), s)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s.tracking_uri)
    return s


def _request(settings: TextclfSettings, request_id: str, system: str = "textclf") -> RetrainRequest:
    return RetrainRequest(
        request_id=request_id,
        incident_id=f"inc-{request_id}",
        system=system,
        model_name=settings.model_name,
        model_version="1",
        reason="drift: vocabulary",
        requested_ts_ms=1_700_000_000_000,
    )


@contextmanager
def listening(settings: TextclfSettings, group_id: str, *, via_watch: bool = False) -> Iterator[list[RetrainOutcome]]:
    """The listener in a thread (alone, or as ``watch --listen`` runs it), yielded once its group has assigned it
    the topic; stopped cleanly on exit."""
    stop, ready = threading.Event(), threading.Event()
    outcomes: list[RetrainOutcome] = []
    errors: list[BaseException] = []
    hooks: dict[str, Any] = {"group_id": group_id, "on_ready": ready.set, "on_outcome": outcomes.append}

    def target() -> None:
        try:
            if via_watch:  # no start run and no polling: only the listener's trigger
                watch(settings, stop, preset="ci", listen=True, run_on_start=False, poll_s=3600, listener_kwargs=hooks)
            else:
                run_retrain_listener(settings, stop, preset="ci", **hooks)
        except BaseException as exc:
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert ready.wait(30), "the listener did not join its consumer group"
    try:
        yield outcomes
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive() and not errors, errors


def _wait(outcomes: list[RetrainOutcome], n: int, timeout_s: float) -> list[RetrainOutcome]:
    deadline = time.monotonic() + timeout_s
    while len(outcomes) < n:
        assert time.monotonic() < deadline, f"{len(outcomes)} of {n} outcomes after {timeout_s} s: {outcomes}"
        time.sleep(0.1)
    return list(outcomes)


def _runs(settings: TextclfSettings) -> int:
    from mlflow import MlflowClient

    registry.configure(settings)
    experiment = MlflowClient().get_experiment_by_name(EXPERIMENT)
    return 0 if experiment is None else len(MlflowClient().search_runs([experiment.experiment_id]))


def test_a_request_sent_twice_retrains_once_even_across_a_restart(textclf_broker_settings: TextclfSettings) -> None:
    settings = textclf_broker_settings
    producer = make_producer(settings)
    for request in (_request(settings, "req-1"), _request(settings, "req-1"), _request(settings, "req-9", "fraud")):
        publish(producer, settings.retrain_requests_topic, request, key=f"{request.system}:{request.model_name}")
    producer.close()  # flushes

    with listening(settings, f"g1-{uuid.uuid4().hex[:6]}") as outcomes:
        first = _wait(outcomes, 3, timeout_s=240)
    # one key, one partition: the two copies of req-1 arrive in order (req-9, another key, may come first)
    assert [o.status for o in first if o.request_id == "req-1"] == ["retrained", "duplicate"], first
    assert [o.status for o in first if o.request_id == "req-9"] == ["ignored"], first
    retrained = next(o for o in first if o.status == "retrained")
    assert retrained.result is not None and retrained.result.ran == ["ingest", "train", "gate"]
    tagged = registry.versions_tagged(settings.model_name, registry.RETRAIN_REQUEST_TAG, "req-1")
    assert tagged == [retrained.version] and retrained.passed in (True, False)
    assert _runs(settings) == 1

    # a fresh group re-reads the topic from the start: the registry's tag answers, nothing is retrained
    with listening(settings, f"g2-{uuid.uuid4().hex[:6]}", via_watch=True) as outcomes:
        again = _wait(outcomes, 3, timeout_s=60)
    again_1 = [o for o in again if o.request_id == "req-1"]
    assert [o.status for o in again_1] == ["duplicate", "duplicate"], again
    assert again_1[0].version == retrained.version and "tag" in again_1[0].detail
    assert registry.versions_tagged(settings.model_name, registry.RETRAIN_REQUEST_TAG, "req-1") == tagged
    assert _runs(settings) == 1
