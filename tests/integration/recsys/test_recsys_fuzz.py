"""The recommendation API fuzzed from its own OpenAPI schema (schemathesis through ``common.fuzz``), serving the
registered synthetic shop: no request the schema allows or forbids may cause a server error, and every answer
must be one the schema documents (status, content type, body)."""

from __future__ import annotations

import pytest

from systems.common.fuzz import fuzz_api
from systems.common.http import ServerProcess
from tests.integration.recsys.conftest import Shop, api_env

pytestmark = [pytest.mark.integration]


def test_no_request_the_schema_allows_or_forbids_causes_a_server_error(shop: Shop) -> None:
    s = shop.settings
    with ServerProcess(
        "systems.recsys.serve:create_app", env=api_env(s), log_path=s.recsys_dir / "api-fuzz-test.log"
    ) as server:
        result = fuzz_api(server.url, max_examples=25)
    # GET and POST /recommend at least, each in a positive and a negative mode
    assert result.operations >= 2 and result.requests >= 100, result.as_dict()
    assert result.server_errors == 0, result.as_dict()
    assert result.failures == [], result.as_dict()["failures"]
