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


def test_a_chunked_body_over_the_limit_is_cut_off_with_a_413(server) -> None:
    sent = 0

    def chunks():  # no Content-Length: the server can only tell by counting what arrives
        nonlocal sent
        yield b'{"text": "'
        for _ in range(2_000):  # 2 MB offered against a 4 KB limit
            sent += 1
            yield b"x" * 1_000

    r = httpx.post(server.url + "/echo", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["type"] == "payload_too_large"
    assert httpx.post(server.url + "/echo", json={"text": "still serving", "k": 1}).status_code == 200


def test_405_says_which_methods_are_allowed(server) -> None:
    r = httpx.get(server.url + "/echo")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"]["type"] == "method_not_allowed"


def test_a_bug_in_a_handler_is_a_json_500(server) -> None:
    r = httpx.get(server.url + "/boom")
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.json()["error"]["type"] == "internal_error"
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_every_operation_documents_the_error_bodies_it_can_send(server) -> None:
    spec = httpx.get(server.url + "/openapi.json").json()
    echo = spec["paths"]["/echo"]["post"]["responses"]
    for status in ("400", "413", "422", "500", "503"):
        ref = echo[status]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorBody"), (status, ref)
    assert set(spec["components"]["schemas"]["ErrorBody"]["properties"]) == {"error"}
