"""POST /score over real HTTP (uvicorn subprocess): decision + score + reasons, 422 on bad input, and every
decision published as a prediction record through the real broker — and, with the broker stopped, /score keeps
answering within its budget while the dropped-record counter rises."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest

from systems.common.broker import LocalBroker, create_topics, make_consumer
from systems.common.http import ServerProcess
from systems.common.predictions import PredictionRecord
from systems.common.proc import free_port
from systems.fraud.stream import fraud_topics
from tests.http_support import dropped_records, quantile, timed_requests

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
    env = settings.to_env()
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
        assert p.model_name == settings.model_name and p.model_version == ans["model_version"]
        assert p.entity_key is not None and p.event_ts_ms > 0
        assert "cust_amount_ratio" in p.features and p.latency_ms > 0
    assert re.search(r'^mlsd_predictions_published_total\{system="fraud"\} 22\.0$', metrics, re.M), metrics
    assert dropped_records(metrics) == 0


def test_score_answers_within_budget_when_the_broker_stops(fraud_world, kit, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The broker goes away under a running API: answers stay fast, lost records are counted, none wait."""
    own = LocalBroker(free_port(), log_path=tmp_path / "tansu.log")
    own.start()
    settings = kit.make_settings(
        fraud_world,
        own,
        history_path=fraud_world.tx_path,
        warm_until_s=fraud_world.replay_start_s,
        predictions_queue_size=50,  # small buffers so a short test fills them
        predictions_delivery_timeout_ms=2000,
    )
    create_topics(settings, fraud_topics(settings))
    try:
        with (
            ServerProcess(
                "systems.fraud.serve:create_app", env=settings.to_env(), log_path=tmp_path / "api.log"
            ) as srv,
            httpx.Client(base_url=srv.url, timeout=5) as client,
        ):
            for i in range(20):  # broker up: published, nothing dropped
                assert client.post("/score", json=_body(fraud_world, i)).status_code == 200
            kit.wait_for(
                lambda: re.search(r'published_total\{system="fraud"\} 20\.0', client.get("/metrics").text) is not None,
                20,
                "20 records published",
            )
            assert dropped_records(client.get("/metrics").text) == 0

            def body(offset: int) -> Callable[[int], dict[str, object]]:
                return lambda i: {"method": "POST", "json": {**_body(fraud_world, i % 50), "tx_id": offset + i}}

            up = timed_requests(client, "/score", n=300, request=body(10**9))  # the same load, broker up: noise
            # a 50-record buffer may drop a few even with the broker up on a busy machine: that is the bound working
            dropped_up = dropped_records(client.get("/metrics").text)
            own.stop()
            down = timed_requests(client, "/score", n=300, request=body(2 * 10**9))  # >> the 50 + 50 buffered
            # the budget (README: ~10 ms of model time in a 100 ms end-to-end allowance), and no worse than up
            assert quantile(down, 0.5) < max(20.0, 2 * quantile(up, 0.5)), (up[150], down[150])
            assert quantile(down, 0.99) < max(100.0, 3 * quantile(up, 0.99)), (up[-3:], down[-3:])
            kit.wait_for(
                lambda: dropped_records(client.get("/metrics").text) >= dropped_up + 200, 30, "dropped records counted"
            )
    finally:
        own.stop()


def test_score_rejects_what_it_cannot_score_and_answers_a_retry_with_the_first_answer(
    fraud_world, broker, kit, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """4xx with a message for ids beyond 64 bits and times outside the window (a 1e30 timestamp was a plain-text
    500; a far-future one rebuilt every feature table); the same tx_id three times is one decision, across a
    restart of the server too; a tx_id reused for another transaction is a 409."""
    settings = kit.make_settings(
        fraud_world, broker, history_path=fraud_world.tx_path, warm_until_s=fraud_world.replay_start_s
    )
    create_topics(settings, fraud_topics(settings))
    body = _body(fraud_world, 3)
    with (
        ServerProcess("systems.fraud.serve:create_app", env=settings.to_env(), log_path=tmp_path / "api.log") as srv,
        httpx.Client(base_url=srv.url, timeout=10) as client,
    ):
        cases = {
            "ts_s": {**body, "ts_s": 1e30},
            "tx_id": {**body, "tx_id": 2**63},
            "customer_id": {**body, "customer_id": -1},
            "amount": {**body, "amount": 1e300},
        }
        for field, bad in cases.items():
            r = client.post("/score", json=bad)
            assert r.status_code == 422 and field in r.json()["error"]["message"], (field, r.text)
        ahead = client.post("/score", json={**body, "tx_id": 1, "ts_s": int(body["ts_s"]) + 10 * 86_400})  # type: ignore[call-overload]
        assert ahead.status_code == 422 and "ahead of the stream clock" in ahead.json()["error"]["message"]
        behind = client.post("/score", json={**body, "tx_id": 2, "ts_s": int(body["ts_s"]) - 60 * 86_400})  # type: ignore[call-overload]
        assert behind.status_code == 422 and "behind" in behind.json()["error"]["message"]

        answers = [client.post("/score", json=body) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert answers[0].content == answers[1].content == answers[2].content
        other = client.post("/score", json={**body, "amount": float(body["amount"]) + 1})  # type: ignore[arg-type]
        assert other.status_code == 409 and other.json()["error"]["message"].startswith(f"tx_id {body['tx_id']}")
        kit.wait_for(
            lambda: (
                re.search(r'published_total\{system="fraud"\} 1\.0$', client.get("/metrics").text, re.M) is not None
            ),
            20,
            "one prediction record for the three requests",
        )
        # the rejected far-future time did not move the clock: the next transaction of the stream is scored
        assert client.post("/score", json=_body(fraud_world, 4)).status_code == 200
    with ServerProcess("systems.fraud.serve:create_app", env=settings.to_env(), log_path=tmp_path / "api.log") as srv:
        again = httpx.post(f"{srv.url}/score", json=body, timeout=10)
        assert again.status_code == 200 and again.content == answers[0].content  # from the store, after a restart
