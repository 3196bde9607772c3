"""POST /score over real HTTP (uvicorn subprocess): decision + score + reasons, 422 on bad input."""

from __future__ import annotations

import httpx
import pytest

from systems.common.http import ServerProcess

pytestmark = pytest.mark.integration


def test_score_endpoint(fraud_world, broker, kit, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = kit.make_settings(
        fraud_world, broker, history_path=fraud_world.tx_path, warm_until_s=fraud_world.replay_start_s
    )
    env = kit.settings_env(settings)
    row = fraud_world.tx[fraud_world.tx["ts_s"] >= fraud_world.replay_start_s].iloc[0]
    body = {
        "tx_id": int(row.tx_id),
        "customer_id": int(row.customer_id),
        "terminal_id": int(row.terminal_id),
        "ts_s": int(row.ts_s),
        "amount": float(row.amount),
    }
    with ServerProcess("systems.fraud.serve:create_app", env=env, log_path=tmp_path / "api.log") as server:
        r = httpx.post(f"{server.url}/score", json=body, timeout=10)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["decision"] in ("approve", "block") and 0 <= out["score"] <= 1
        assert len(out["reasons"]) == 3 and all("feature" in x for x in out["reasons"])
        assert out["model_version"]
        # a 5x amount for the same customer scores higher than the ordinary one
        hot = httpx.post(
            f"{server.url}/score",
            json={**body, "tx_id": body["tx_id"] + 10**9, "amount": 6 * body["amount"] + 300},
            timeout=10,
        )
        assert hot.json()["score"] > out["score"]
        bad = httpx.post(f"{server.url}/score", json={**body, "amount": -5}, timeout=10)
        assert bad.status_code == 422
        assert "amount" in bad.json()["error"]["message"]
        missing = httpx.post(f"{server.url}/score", json={"tx_id": 1}, timeout=10)
        assert missing.status_code == 422 and missing.json()["error"]["type"] == "validation_error"
