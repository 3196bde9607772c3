"""The text classifier's API fuzzed from its own OpenAPI schema (schemathesis through ``common.fuzz``), with
and without the admin token: no request may cause a server error, and every answer must be one the schema
documents (status, content type, body)."""

from __future__ import annotations

from pathlib import Path

import pytest

from systems.common.fuzz import fuzz_api
from systems.common.http import ServerProcess
from systems.mlops_textclf.settings import TextclfSettings
from tests.integration.textclf.conftest import TOKEN

pytestmark = [pytest.mark.integration]


def test_no_request_the_schema_allows_or_forbids_causes_a_server_error(served: TextclfSettings, tmp_path: Path) -> None:
    env = served.to_env() | {"MLSD_DATA_DIR": str(served.data_dir)}
    with ServerProcess("systems.mlops_textclf.serve:create_app", env=env, log_path=tmp_path / "serve.log") as server:
        anonymous = fuzz_api(server.url, max_examples=25, semantic_422=("POST /admin/rollout",))
        admin = fuzz_api(
            server.url,
            max_examples=25,
            headers={"Authorization": f"Bearer {TOKEN}"},
            semantic_422=("POST /admin/rollout",),
        )
    for result in (anonymous, admin):
        assert result.operations >= 6 and result.requests >= 200, result.as_dict()
        assert result.server_errors == 0, result.as_dict()
        assert result.failures == [], result.as_dict()["failures"]
