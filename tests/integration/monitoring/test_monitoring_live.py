"""``mlsd monitoring up`` as a user runs it: a real broker, the service's ingest in its own process, a scenario
injected into the topics → the drift incident opens on the live service, one retrain request is published,
and admin actions need the token."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from systems.common.broker import LocalBroker, TopicSpec, create_topics, make_consumer
from systems.common.http import wait_http_ok
from systems.common.predictions import RetrainRequest
from systems.common.proc import free_port, stop_pid
from systems.monitoring.scenarios import MODEL, SYSTEM, inject_live
from systems.monitoring.settings import MonitoringSettings

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token"


def wait_for(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s: {what}")


def _register(settings: MonitoringSettings, request: RetrainRequest | None = None) -> str:
    """Register a version of the scenario model; with ``request``, tagged as a retrain consumer does when done."""
    from sklearn.dummy import DummyClassifier

    from systems.common import registry

    model = DummyClassifier().fit([[0.0], [1.0]], [0, 1])
    registry.configure(settings)
    tags = {}
    if request is not None:
        tags = {registry.RETRAIN_REQUEST_TAG: request.request_id, registry.RETRAIN_INCIDENT_TAG: request.incident_id}
    return registry.log_and_register(model, flavor="sklearn", name=MODEL, settings=settings, version_tags=tags)


def test_monitoring_up_detects_a_shift_asks_for_one_retrain_and_sees_the_retrained_version_recover(
    tmp_path: Path, broker: LocalBroker, make_settings: Callable[..., Any]
) -> None:
    settings: MonitoringSettings = make_settings(
        MonitoringSettings,
        tmp_path,
        kafka_bootstrap=broker.bootstrap,
        window_s=5.0,
        allowed_lateness_s=1.0,
        admin_token=TOKEN,
        api_port=free_port(),
    ).scoped()
    topic = settings.retrain_requests_topic
    create_topics(settings, [TopicSpec(topic)])
    consumer = make_consumer(settings, [topic], f"{settings.group_id}-check")
    env = {**os.environ, **settings.to_env()}
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "systems.cli", "monitoring", "up", "--no-prometheus"],
        env=env,
        cwd=tmp_path,  # a stray ./mlflow.db would show up here
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://{settings.host}:{settings.api_port}"
    try:
        wait_http_ok(url + "/readyz", 90, proc)  # ready = both ingest members have their partitions
        wait_for(lambda: consumer.poll(timeout_s=0.2) == [] and consumer.assigned.is_set(), 30, "check consumer")

        # admin actions need the token
        assert httpx.post(url + "/api/references/reload", timeout=10).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.post(url + "/api/references/reload", headers=wrong, timeout=10).status_code == 401

        deployed = _register(settings)  # the version serving when the shift comes
        started = time.time()
        result = inject_live(
            settings,
            "covariate_shift",
            service_url=url,
            clean_windows=3,
            changed_windows=3,
            rate_per_s=300,
            speed=2.0,
            model_version=deployed,
        )
        assert result["predictions"] == 6 * 5 * 300
        print(f"inject took {time.time() - started:.1f} s ({result['seconds']:.1f} s publishing)")

        def incidents() -> list[dict[str, Any]]:
            return httpx.get(url + "/api/summary", timeout=10).json()["incidents"]

        drift = wait_for(lambda: [i for i in incidents() if i["cause"] == "drift"], 30, "no drift incident")
        (inc,) = drift
        assert (inc["system"], inc["model_name"], inc["model_version"]) == (SYSTEM, MODEL, deployed)
        assert inc["retrain_request_id"] == f"retrain-{inc['incident_id']}"
        assert inc["signals"] >= 1
        # nothing else fired on the clean windows (prediction drift may accompany the shift)
        assert {i["cause"] for i in incidents()} <= {"drift", "prediction_drift"}

        summary = httpx.get(url + "/api/summary", timeout=10).json()
        (series,) = [s for s in summary["series"] if s["model_name"] == MODEL]
        assert series["drift_share"] >= 0.5 and series["count"] >= 1000
        assert summary["ingest"]["ingest"]["predictions"] == result["predictions"]
        metrics = httpx.get(url + "/metrics", timeout=10).text
        assert f'mlsd_monitoring_incidents_open{{cause="drift",model_name="{MODEL}"' in metrics

        # exactly one retrain request on the topic for this incident, although every shifted window signalled
        requests: list[RetrainRequest] = []
        quiet_until = time.monotonic() + 6
        while time.monotonic() < quiet_until:
            batch = consumer.poll(timeout_s=0.2)
            if batch:
                requests += [RetrainRequest.model_validate_json(r.value) for r in batch]
                quiet_until = time.monotonic() + 3
        assert [r.incident_id for r in requests] == [inc["incident_id"]]

        # re-baselining a version is an admin action too; asking twice starts nothing new
        body = {"system": SYSTEM, "model_name": MODEL, "model_version": deployed}
        assert httpx.post(url + "/api/references/rebaseline", json=body, timeout=10).status_code == 401
        admin = {"Authorization": f"Bearer {TOKEN}"}
        bad = httpx.post(url + "/api/references/rebaseline", json={**body, "windows": 0}, headers=admin, timeout=10)
        assert bad.status_code == 422 and "windows" in bad.text
        first = httpx.post(url + "/api/references/rebaseline", json=body, headers=admin, timeout=10)
        assert first.status_code == 200 and first.json()["started"] is True
        again = httpx.post(url + "/api/references/rebaseline", json=body, headers=admin, timeout=10)
        assert again.json()["started"] is False
        assert (requests[0].system, requests[0].model_name) == (SYSTEM, MODEL)
        print(f"injected {result['predictions']:,} records; incident after {time.time() - started:.1f} s wall")

        # The consumer of the request (fraud's listener in production) registers the retrained version with the
        # request id as a tag; the service finds it in the registry and records it on the incident ...
        version = _register(settings, requests[0])
        assert version != deployed
        retrained = wait_for(
            lambda: [i for i in incidents() if i["retrained_version"] == version], 30, "retrain not recorded"
        )
        assert retrained[0]["incident_id"] == inc["incident_id"]
        # ... and clean windows of that version resolve the incident as recovered.
        inject_live(
            settings,
            None,
            service_url=url,
            clean_windows=5,
            changed_windows=0,
            rate_per_s=300,
            speed=2.0,
            model_version=version,
        )
        done = wait_for(
            lambda: [i for i in incidents() if i["incident_id"] == inc["incident_id"] and i["status"] == "resolved"],
            30,
            "the incident did not resolve on the retrained version",
        )
        assert done[0]["recovered"] is True and done[0]["recovery_evidence"]["model_version"] == version
        assert not (tmp_path / "mlflow.db").exists(), "the registry lookup must use the configured tracking URI"
    finally:
        consumer.close()
        stop_pid(proc.pid)
        proc.wait(timeout=30)
        log.close()
        print((tmp_path / "up.log").read_text()[-3000:])
