"""The shared FastAPI factory served by a real uvicorn process on 127.0.0.1."""

import httpx
import pytest

from systems.common.http import ServerProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server():
    with ServerProcess("tests.integration.common.http_app:create_test_app") as s:
        yield s


def test_health_ready_metrics(server) -> None:
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").status_code == 200
    httpx.post(server.url + "/echo", json={"text": "hi", "k": 3})
    metrics = httpx.get(server.url + "/metrics").text
    assert 'http_request_seconds_count{method="POST",route="/echo"}' in metrics


def test_validation_errors_are_422_with_a_message(server) -> None:
    r = httpx.post(server.url + "/echo", json={"text": "hi", "k": 0})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["type"] == "validation_error"
    assert "k" in err["message"] and "greater than" in err["message"]
    r = httpx.post(server.url + "/echo", content=b"{broken", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["type"] == "validation_error"


def test_unknown_route_and_large_body(server) -> None:
    r = httpx.get(server.url + "/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    r = httpx.post(server.url + "/echo", content=b"x" * 5_000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "bytes" in r.json()["error"]["message"]
