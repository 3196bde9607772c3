"""The fraud API fuzzed from its own OpenAPI schema (schemathesis through ``common.fuzz``): no request may cause a
server error and every answer is one the schema documents. ``POST /score`` has rules a JSON schema cannot state
(a time within the window around the stream clock, a tx_id not reused for another transaction), so a
schema-valid body may get its documented 422 or 409; after the fuzzing the service still scores."""

from __future__ import annotations

import httpx
import pytest

from systems.common.broker import create_topics
from systems.common.fuzz import fuzz_api
from systems.common.http import ServerProcess
from systems.fraud.stream import fraud_topics

pytestmark = pytest.mark.integration


def test_fuzzing_finds_no_server_error_and_no_undocumented_answer(fraud_world, broker, kit, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = kit.make_settings(
        fraud_world, broker, history_path=fraud_world.tx_path, warm_until_s=fraud_world.replay_start_s
    )
    create_topics(settings, fraud_topics(settings))
    row = fraud_world.tx[fraud_world.tx["ts_s"] >= fraud_world.replay_start_s].iloc[0]
    good = {k: int(row[k]) for k in ("tx_id", "customer_id", "terminal_id", "ts_s")} | {"amount": float(row.amount)}
    with ServerProcess("systems.fraud.serve:create_app", env=settings.to_env(), log_path=tmp_path / "api.log") as srv:
        result = fuzz_api(srv.url, max_examples=40, semantic_422=("POST /score",))
        after = httpx.post(f"{srv.url}/score", json=good, timeout=10)
    assert result.operations >= 1 and result.requests >= 60, result.as_dict()  # /score, valid and invalid bodies
    assert result.server_errors == 0, result.as_dict()
    assert result.failures == [], result.as_dict()["failures"]
    assert after.status_code in (200, 409), after.text  # 409: the fuzzer happened to use this tx_id first
