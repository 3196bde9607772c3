"""POST /score over real HTTP (uvicorn subprocess): decision + score + reasons, 422 on bad input, and every
decision published as a prediction record through the real broker (or counted as lost when it is down)."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from systems.common.broker import create_topics, make_consumer
from systems.common.http import ServerProcess
from systems.common.proc import free_port
from systems.fraud.schemas import PredictionRecord
from systems.fraud.stream import fraud_topics

pytestmark = pytest.mark.integration


def _body(world, i: int = 0) -> dict[str, object]:  # type: ignore[no-untyped-def]
    row = world.tx[world.tx["ts_s"] >= world.replay_start_s].iloc[i]
    return {
        "tx_id": int(row.tx_id),
        "customer_id": int(row.customer_id),
        "terminal_id": int(row.terminal_id),
        "ts_s": int(row.ts_s),
        "amount": float(row.amount),
    }


def test_score_endpoint_publishes_prediction_records(fraud_world, broker, kit, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = kit.make_settings(
        fraud_world, broker, history_path=fraud_world.tx_path, warm_until_s=fraud_world.replay_start_s
    )
    create_topics(settings, fraud_topics(settings))
    env = kit.settings_env(settings)
    body = _body(fraud_world)
    answers: dict[str, dict[str, object]] = {}
    with ServerProcess("systems.fraud.serve:create_app", env=env, log_path=tmp_path / "api.log") as server:
        r = httpx.post(f"{server.url}/score", json=body, timeout=10)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["decision"] in ("approve", "block") and 0 <= out["score"] <= 1
        assert len(out["reasons"]) == 3 and all("feature" in x for x in out["reasons"])
        assert out["model_version"]
        answers[str(body["tx_id"])] = out
        # a 5x amount for the same customer scores higher than the ordinary one
        hot_body = {**body, "tx_id": int(body["tx_id"]) + 10**9, "amount": 6 * float(body["amount"]) + 300}  # type: ignore[arg-type]
        hot = httpx.post(f"{server.url}/score", json=hot_body, timeout=10)
        assert hot.json()["score"] > out["score"]
        answers[str(hot_body["tx_id"])] = hot.json()
        for i in range(1, 21):
            b = _body(fraud_world, i)
            answers[str(b["tx_id"])] = httpx.post(f"{server.url}/score", json=b, timeout=10).json()
        bad = httpx.post(f"{server.url}/score", json={**body, "amount": -5}, timeout=10)
        assert bad.status_code == 422
        assert "amount" in bad.json()["error"]["message"]
        missing = httpx.post(f"{server.url}/score", json={"tx_id": 1}, timeout=10)
        assert missing.status_code == 422 and missing.json()["error"]["type"] == "validation_error"
        # published by the background sender (not flushed yet necessarily): read them back from the broker
        consumer = make_consumer(settings, [settings.predictions_topic], f"check-{settings.predictions_topic}")
        got: list[PredictionRecord] = []
        try:
            kit.wait_for(
                lambda: (
                    bool(got.extend(PredictionRecord.model_validate_json(x.value) for x in consumer.poll(0.2, 500)))
                    or len(got) >= len(answers)
                ),
                30,
                "prediction records from the API",
                interval_s=0,
            )
        finally:
            consumer.close()
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    # every decision once (the 422s are not decisions), with the answer the client got
    assert sorted(p.prediction_id for p in got) == sorted(answers)
    for p in got:
        ans = answers[p.prediction_id]
        assert p.system == "fraud" and p.output["decision"] == ans["decision"]
        assert p.output["score"] == pytest.approx(ans["score"])
        assert p.model_version == f"{settings.model_name}/{ans['model_version']}"
        assert "cust_amount_ratio" in p.features and p.latency_ms > 0
    assert re.search(r"^fraud_predictions_published_total 22\.0$", metrics, re.M), metrics
    assert re.search(r"^fraud_predictions_dropped_total 0\.0$", metrics, re.M)


def test_score_answers_when_the_broker_is_down(fraud_world, broker, kit, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = kit.make_settings(
        fraud_world, broker, history_path=fraud_world.tx_path, warm_until_s=fraud_world.replay_start_s
    )
    env = {**kit.settings_env(settings), "MLSD_FRAUD_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}  # nobody there
    with ServerProcess("systems.fraud.serve:create_app", env=env, log_path=tmp_path / "api.log") as server:
        for i in range(20):
            r = httpx.post(f"{server.url}/score", json=_body(fraud_world, i), timeout=5)
            assert r.status_code == 200, r.text
            assert json.loads(r.text)["latency_ms"] < 1000

        def errors_counted() -> bool:
            text = httpx.get(f"{server.url}/metrics", timeout=5).text
            m = re.search(r"^fraud_prediction_publish_errors_total (\S+)$", text, re.M)
            return m is not None and float(m.group(1)) > 0

        kit.wait_for(errors_counted, 20, "the broker errors to be counted", interval_s=0.3)
        assert httpx.post(f"{server.url}/score", json=_body(fraud_world, 30), timeout=5).status_code == 200
