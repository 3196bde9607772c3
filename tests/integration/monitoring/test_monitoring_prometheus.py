"""The rule file in a real Prometheus, routed by a real Alertmanager, into the incident book and onto Kafka.

- ``promtool`` accepts ``docker/alerts.yml`` and the generated configs, and its rule unit tests show each rule
  firing on the series it is about, after its ``for:``, and staying quiet on the healthy series beside it.
- End to end: a gauge over the ``DatasetDrift`` threshold, scraped at 1 s by Debian's ``prometheus``, fires
  the rule; ``prometheus-alertmanager`` delivers it (and its repeats) to a webhook on ``AlertLoop``; that is
  exactly one incident and exactly one ``RetrainRequest`` on a real broker topic; resolution closes it.

The binaries come from apt (``prometheus``, ``prometheus-alertmanager``): skipped where they are absent, a
failure in CI (``CI`` set), where ``.ci/run`` installs them.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from systems.common.broker import LocalBroker, TopicSpec, create_topics, make_consumer
from systems.common.http import ServerProcess
from systems.common.predictions import RetrainRequest
from systems.common.proc import pid_alive, port_open
from systems.monitoring import prometheus as prom
from systems.monitoring.settings import MonitoringSettings

pytestmark = pytest.mark.integration

APPS = "tests.integration.monitoring.alert_apps"


def require(names: tuple[str, ...], package: str) -> None:
    if any(shutil.which(n) for n in names):
        return
    if os.environ.get("CI"):
        pytest.fail(f"{names[0]} is not installed; .ci/run must apt-get install -y {package}")
    pytest.skip(f"{names[0]} not installed (apt-get install -y {package})")


@pytest.fixture()
def binaries() -> None:
    require(("prometheus",), "prometheus")
    require(("promtool",), "prometheus")
    require(("prometheus-alertmanager", "alertmanager"), "prometheus-alertmanager")
    require(("amtool",), "prometheus-alertmanager")


def wait_for(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy (readiness by observation, never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"{what} within {timeout_s:.0f} s")


# ------------------------------------------------------------------------------------------- promtool


def test_promtool_accepts_the_rule_file_and_the_configs(binaries, tmp_path: Path) -> None:
    report = prom.check_rules()
    assert "SUCCESS" in report and "15 rules found" in report
    local = prom.write_yaml(
        tmp_path / "prometheus.yml",
        prom.prometheus_config(
            targets=[prom.ScrapeTarget("app", ("127.0.0.1:8000",))], alertmanagers=["127.0.0.1:9093"]
        ),
    )
    assert "SUCCESS" in prom.check_prometheus_config(local)  # also re-checks the rule file it names
    root = prom.RULES_FILE.parent
    assert "SUCCESS" in prom.check_alertmanager_config(root / "alertmanager.yml")
    paged = prom.write_yaml(
        tmp_path / "am.yml", prom.alertmanager_config(webhook_url="http://h:1/alerts", pager_url="http://p:2/")
    )
    assert "SUCCESS" in prom.check_alertmanager_config(paged)


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _alert(name: str, at: str, *expected: dict[str, str]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": e} for e in expected]}


M = {"system": "fraud", "model_name": "m", "model_version": "1"}  # drifted / degraded
H = {"system": "fraud", "model_name": "h", "model_version": "1"}  # healthy, beside it
S = {"system": "fraud", "model_name": "s", "model_version": "1"}  # aggregate fine, one slice not


def _rule_tests(rule_file: Path) -> dict[str, Any]:
    """Each rule against the series it is about: fires on M (or S), quiet on H, and only after its ``for:``."""
    ap, low = {"metric": "ap"}, {"slice": "band=low", "metric": "ap"}
    series = [
        _series("mlsd_monitoring_drift_share", "0.75x40", **M),
        _series("mlsd_monitoring_drift_share", "0.25x40", **H),
        _series("mlsd_monitoring_feature_drift", "2x40", **M, feature="amount"),  # inside a dataset drift
        _series("mlsd_monitoring_feature_drift", "2x40", **H, feature="amount"),
        _series("mlsd_monitoring_feature_drift", "0.5x40", **H, feature="hour"),
        _series("mlsd_monitoring_prediction_drift", "3x40", **M, output="score"),
        _series("mlsd_monitoring_prediction_drift", "0.2x40", **H, output="score"),
        _series("mlsd_monitoring_metric_floor", "0.75x40", system="fraud", model_name="m", metric="ap"),
        _series("mlsd_monitoring_metric_floor", "0.75x40", system="fraud", model_name="h", metric="ap"),
        _series("mlsd_monitoring_metric_floor", "0.75x40", system="fraud", model_name="s", metric="ap"),
        _series("mlsd_monitoring_metric_ceiling", "0.03x40", system="fraud", model_name="h", metric="fpr"),
        _series("mlsd_monitoring_realised_metric_high", "0.74x40", **M, **ap),  # CI entirely below 0.75
        _series("mlsd_monitoring_realised_metric_high", "0.80x40", **H, **ap),  # CI reaches over the floor
        _series("mlsd_monitoring_realised_metric_low", "0.02x40", **H, metric="fpr"),
        _series("mlsd_monitoring_realised_metric_high", "0.82x40", **S, **ap),
        _series("mlsd_monitoring_slice_metric_high", "0.60x40", **S, **low),  # the fairness case
        _series("mlsd_monitoring_slice_metric_high", "0.60x40", **M, **low),  # aggregate down too: not a slice alert
        _series("mlsd_monitoring_slice_metric_high", "0.90x40", **H, **low),
        _series("mlsd_monitoring_estimated_metric", "0.70x40", **M, **ap),
        _series("mlsd_monitoring_estimated_metric", "0.78x40", **H, **ap),
        _series("mlsd_monitoring_null_share", "0.30x40", **M, feature="tx_count"),
        _series("mlsd_monitoring_null_share", "0.15x40", **H, feature="tx_count"),  # nullable by design
        _series("mlsd_monitoring_reference_null_share", "0.01x40", system="fraud", model_name="m", feature="tx_count"),
        _series("mlsd_monitoring_reference_null_share", "0.10x40", system="fraud", model_name="h", feature="tx_count"),
        _series("mlsd_monitoring_unseen_share", "0.10x40", **M, feature="channel"),
        _series("mlsd_monitoring_unseen_share", "0.01x40", **H, feature="channel"),
        _series("up", "0x40", job="fraud-api", instance="fraud-api:8002"),
        _series("up", "1x40", job="recsys-api", instance="recsys-api:8001"),
        # 20 req/s of which 2/s fail; half of the requests over 50 ms; 1 record dropped per 10 published
        _series("http_requests_total", "0+270x40", job="fraud-api", route="/score", method="POST", status="200"),
        _series("http_requests_total", "0+30x40", job="fraud-api", route="/score", method="POST", status="500"),
        _series("http_requests_total", "0+300x40", job="recsys-api", route="/recommend", method="POST", status="200"),
        _series("http_request_seconds_bucket", "0+150x40", job="fraud-api", route="/score", method="POST", le="0.05"),
        _series("http_request_seconds_bucket", "0+300x40", job="fraud-api", route="/score", method="POST", le="0.1"),
        _series("http_request_seconds_bucket", "0+300x40", job="fraud-api", route="/score", method="POST", le="+Inf"),
        _series("http_request_seconds_count", "0+300x40", job="fraud-api", route="/score", method="POST"),
        _series("mlsd_predictions_dropped_total", "0+15x40", job="fraud-api", system="fraud", reason="queue_full"),
        _series("mlsd_predictions_published_total", "0+150x40", job="fraud-api", system="fraud"),
        _series("mlsd_predictions_broker_up", "0x40", job="fraud-api", system="fraud"),
        _series("mlsd_monitoring_watermark_lag_seconds", "900x40", job="monitoring", system="fraud"),
        _series(
            "mlsd_monitoring_dead_letters_total", "0 0 0 1 2 3 3 3 3 3 3 3 3", job="monitoring", topic="predictions"
        ),
    ]

    def ml(alert: str, cause: str, severity: str, **labels: str) -> dict[str, str]:
        return {"alertname": alert, "cause": cause, "severity": severity, **labels}

    return {
        "rule_files": [str(rule_file)],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": series,
                "alert_rule_test": [
                    _alert("DatasetDrift", "15s", ml("DatasetDrift", "drift", "warning", **M)),
                    _alert("FeatureDrift", "15s", ml("FeatureDrift", "feature_drift", "info", **H, feature="amount")),
                    _alert(
                        "PredictionDrift",
                        "15s",
                        ml("PredictionDrift", "prediction_drift", "warning", **M, output="score"),
                    ),
                    _alert(
                        "RealisedPerformanceDrop",
                        "15s",
                        ml("RealisedPerformanceDrop", "performance_drop", "critical", **M, **ap),
                    ),
                    _alert(
                        "EstimatedPerformanceDrop",
                        "15s",
                        ml("EstimatedPerformanceDrop", "estimated_performance_drop", "warning", **M, **ap),
                    ),
                    _alert("SliceDegraded", "15s", ml("SliceDegraded", "slice_degraded", "warning", **S, **low)),
                    _alert("NullSpike", "15s", ml("NullSpike", "data_quality", "critical", **M, feature="tx_count")),
                    _alert(
                        "UnseenCategories",
                        "15s",
                        ml("UnseenCategories", "data_quality", "critical", **M, feature="channel"),
                    ),
                    # ops rules: quiet before their `for:`, firing after it
                    _alert("ServiceDown", "45s"),
                    _alert(
                        "ServiceDown",
                        "2m",
                        ml("ServiceDown", "target_down", "critical", job="fraud-api", instance="fraud-api:8002"),
                    ),
                    _alert("HighErrorRate", "2m"),
                    _alert("HighErrorRate", "9m", ml("HighErrorRate", "errors", "critical", job="fraud-api")),
                    _alert("HighP99Latency", "4m"),
                    _alert(
                        "HighP99Latency",
                        "9m",
                        ml("HighP99Latency", "latency", "warning", job="fraud-api", route="/score"),
                    ),
                    _alert(
                        "PredictionRecordsDropped",
                        "9m",
                        ml(
                            "PredictionRecordsDropped",
                            "dropped_predictions",
                            "warning",
                            job="fraud-api",
                            system="fraud",
                        ),
                    ),
                    _alert(
                        "PredictionBrokerDown",
                        "3m",
                        ml("PredictionBrokerDown", "broker_down", "warning", job="fraud-api", system="fraud"),
                    ),
                    _alert(
                        "MonitoringLagging",
                        "6m",
                        ml("MonitoringLagging", "monitoring_lag", "warning", job="monitoring", system="fraud"),
                    ),
                    _alert(
                        "MalformedRecords",
                        "2m",
                        ml("MalformedRecords", "malformed_records", "warning", job="monitoring", topic="predictions"),
                    ),
                ],
            }
        ],
    }


def test_promtool_rule_unit_tests(binaries, tmp_path: Path) -> None:
    """The rules' logic (annotations stripped: they are checked against the real file below)."""
    doc = yaml.safe_load(prom.RULES_FILE.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    bare = prom.write_yaml(tmp_path / "alerts.yml", doc)
    tests = prom.write_yaml(tmp_path / "alerts_test.yml", _rule_tests(bare))
    assert "SUCCESS" in prom.run_rule_tests(tests)


def test_promtool_renders_the_annotations_of_the_real_rule_file(binaries, tmp_path: Path) -> None:
    spec = {
        "rule_files": [str(prom.RULES_FILE)],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": [_series("mlsd_monitoring_drift_share", "0.75x4", **M)],
                "alert_rule_test": [
                    {
                        "eval_time": "15s",
                        "alertname": "DatasetDrift",
                        "exp_alerts": [
                            {
                                "exp_labels": {"cause": "drift", "severity": "warning", **M},
                                "exp_annotations": {
                                    "summary": "fraud/m v1: 75% of features drifted",
                                    "description": "Inputs no longer look like the reference. "
                                    "A retrain is requested once per incident.",
                                },
                            }
                        ],
                    }
                ],
            }
        ],
    }
    assert "SUCCESS" in prom.run_rule_tests(prom.write_yaml(tmp_path / "annotations_test.yml", spec))


# ---------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_a_rule_fires_in_prometheus_and_reaches_the_webhook_through_alertmanager(
    binaries,
    tmp_path: Path,
    broker: LocalBroker,
    make_settings: Callable[..., Any],
    record_property: Callable[[str, Any], None],
) -> None:
    settings: MonitoringSettings = make_settings(
        MonitoringSettings, tmp_path, kafka_bootstrap=broker.bootstrap
    ).scoped()
    topic = settings.retrain_requests_topic
    create_topics(settings, [TopicSpec(topic)])
    consumer = make_consumer(settings, [topic], f"{settings.group_id}-check")

    with (
        ServerProcess(f"{APPS}:create_webhook_app", env=settings.to_env(), log_path=tmp_path / "webhook.log") as hook,
        ServerProcess(f"{APPS}:create_gauge_app", log_path=tmp_path / "gauge.log") as app,
        prom.LocalAlertmanager(
            tmp_path / "alertmanager",
            webhook_url=hook.url + "/alerts",
            group_wait_s=1,
            group_interval_s=1,
            repeat_interval_s=2,  # repeats within the test, to show the book de-duplicates them
        ) as am,
        prom.LocalPrometheus(
            tmp_path / "prometheus",
            targets=[prom.ScrapeTarget("itest", (f"127.0.0.1:{app.port}",))],
            scrape_interval_s=1,
            alertmanagers=[am.address],
        ) as prometheus,
    ):
        # Ready: the target is up, its gauge scraped, and the rules loaded from docker/alerts.yml itself.
        wait_for(lambda: prometheus.query('mlsd_monitoring_drift_share{job="itest"} == 0'), 30, "gauge not scraped")
        files = {g["file"] for g in prometheus.client.rules()}
        assert files == {str(prom.RULES_FILE)}
        assert prometheus.query('up{job="itest"}')[0].value == 1.0
        wait_for(lambda: consumer.poll(timeout_s=0.2) == [] and consumer.assigned.is_set(), 30, "consumer not assigned")
        assert httpx.get(hook.url + "/received").json() == []

        set_at = time.time()
        httpx.post(app.url + "/gauge", json={"value": 0.8}).raise_for_status()

        def firing() -> list[dict[str, Any]]:
            return [r for r in httpx.get(hook.url + "/received").json() if r["status"] == "firing"]

        first = wait_for(firing, 60, "no firing alert reached the webhook", every_s=0.02)[0]
        latency_s = first["ts"] - set_at
        record_property("alert_latency_s", round(latency_s, 2))
        print(f"alert latency (gauge set -> webhook received): {latency_s:.2f} s")
        assert latency_s < 15  # 1 s scrape + 1 s evaluation + 1 s group_wait, with slack for a busy machine

        alerts = prometheus.client.alerts()
        assert [(a["labels"]["alertname"], a["state"]) for a in alerts] == [("DatasetDrift", "firing")]
        wait_for(lambda: len(firing()) >= 3, 30, "Alertmanager did not repeat the notification")

        (incident,) = httpx.get(hook.url + "/incidents").json()
        assert (incident["system"], incident["model_name"], incident["cause"]) == ("itest", "m", "drift")
        assert incident["severity"] == "warning" and incident["sources"] == ["alertmanager"]
        assert incident["signals"] == 1 and incident["notifications"] >= 3 and len(incident["firing"]) == 1
        assert incident["retrain_request_id"] == f"retrain-{incident['incident_id']}"

        # Exactly one request on the topic, despite the repeats (read until 3 s after the last one arrived).
        requests: list[RetrainRequest] = []
        quiet_until = time.monotonic() + 10
        while time.monotonic() < quiet_until:
            batch = consumer.poll(timeout_s=0.2)
            if batch:
                requests += [RetrainRequest.model_validate_json(r.value) for r in batch]
                quiet_until = time.monotonic() + 3
        consumer.commit()
        assert len(requests) == 1
        (request,) = requests
        assert (request.incident_id, request.system, request.model_name) == (incident["incident_id"], "itest", "m")
        assert request.model_version == "1" and request.evidence["alertname"] == "DatasetDrift"

        # Back under the threshold: Prometheus resolves, Alertmanager says so, the incident closes.
        httpx.post(app.url + "/gauge", json={"value": 0.1}).raise_for_status()

        def resolved() -> bool:
            (inc,) = httpx.get(hook.url + "/incidents").json()
            return bool(inc["status"] == "resolved")

        wait_for(resolved, 60, "the incident was not resolved")
        assert consumer.poll(timeout_s=0.5) == []  # resolving publishes nothing
        assert prometheus.process is not None and am.process is not None
        pids = [prometheus.process.pid, am.process.pid]
        prom_port, am_port = prometheus.port, am.port
    consumer.close()
    assert not any(pid_alive(p) for p in pids)  # stopped by PID on exit
    assert not port_open("127.0.0.1", prom_port) and not port_open("127.0.0.1", am_port)
