"""The monitoring service's API fuzzed from its own OpenAPI schema (schemathesis through ``common.fuzz``): no
request may cause a server error, every answer is one the schema documents, and the admin endpoints refuse a
caller without the token, including when the service has none configured (then they are off: 403)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from systems.common.fuzz import fuzz_api
from systems.common.http import ServerProcess

pytestmark = [pytest.mark.integration]

APP = "tests.integration.monitoring.dashboard_app:create_dashboard_app"


@pytest.mark.parametrize("token", ["s3cret", None], ids=["token configured", "no token configured"])
def test_fuzzing_finds_no_server_error_and_no_undocumented_answer(tmp_path: Path, token: str | None) -> None:
    env = {"MLSD_DATA_DIR": str(tmp_path), "MLSD_MONITORING_PROMETHEUS_URL": "http://127.0.0.1:9"}
    if token is not None:
        env["MLSD_MONITORING_ADMIN_TOKEN"] = token
    with ServerProcess(APP, env=env, log_path=tmp_path / "serve.log") as server:
        results = [fuzz_api(server.url, max_examples=25)]
        if token is not None:
            results.append(fuzz_api(server.url, max_examples=25, headers={"Authorization": f"Bearer {token}"}))
        refused = httpx.post(server.url + "/api/references/reload", headers={"Authorization": "Bearer guess"})
    for result in results:
        assert result.operations >= 5 and result.requests >= 100, result.as_dict()
        assert result.server_errors == 0, result.as_dict()
        assert result.failures == [], result.as_dict()["failures"]
    assert refused.status_code == (401 if token is not None else 403), refused.text
