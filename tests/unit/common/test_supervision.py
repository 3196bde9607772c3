"""A consumer loop never dies silently: a supervised loop that raises is down at once (readiness, metric), then
restarted with backoff, or handed to whoever stops the process; a worker without an HTTP API still answers
/readyz with the reason."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from prometheus_client import CollectorRegistry

from systems.common.broker import SupervisedLoop, serve_health
from systems.common.proc import free_port

pytestmark = pytest.mark.unit


def _wait(cond, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_loop_that_raises_is_down_then_restarted_with_backoff() -> None:
    stop, runs, go_on = threading.Event(), [], threading.Event()
    registry = CollectorRegistry()

    def target() -> None:
        runs.append(time.monotonic())
        if len(runs) <= 2:
            go_on.wait(5)
            raise ValueError(f"poison {len(runs)}")
        stop.wait()

    loop = SupervisedLoop("labels", target, stop=stop, backoff_s=0.1, registry=registry)
    loop.start()
    _wait(lambda: len(runs) == 1 and loop.healthy)
    assert registry.get_sample_value("mlsd_consumer_loop_up", {"loop": "labels"}) == 1
    go_on.set()  # both failing runs raise now
    _wait(lambda: len(runs) == 3 and loop.healthy)
    assert loop.deaths == 2 and loop.last_error == "ValueError: poison 2"
    assert registry.get_sample_value("mlsd_consumer_loop_deaths_total", {"loop": "labels"}) == 2
    assert runs[2] - runs[1] >= 0.2 - 0.01  # the backoff doubled: 0.1 s, then 0.2 s
    stop.set()
    loop.join(5)
    assert not loop.is_alive() and not loop.healthy
    assert registry.get_sample_value("mlsd_consumer_loop_up", {"loop": "labels"}) == 0


def test_a_loop_that_must_not_restart_hands_its_death_over() -> None:
    stop, died = threading.Event(), []

    def target() -> None:
        raise RuntimeError("bug")

    loop = SupervisedLoop("scoring", target, stop=stop, restart=False, on_death=died.append)
    loop.start()
    loop.join(5)
    assert not loop.healthy and loop.deaths == 1 and len(died) == 1 and isinstance(died[0], RuntimeError)


def test_health_endpoints_of_a_worker_say_why_it_is_not_ready() -> None:
    ready = {"ok": False}
    registry = CollectorRegistry()
    SupervisedLoop("x", lambda: None, stop=threading.Event(), registry=registry)  # registers the metrics
    port = free_port()
    server = serve_health(
        host="127.0.0.1", port=port, ready=lambda: ready["ok"], registry=registry, reason=lambda: "labels down"
    )
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz").status_code == 200
        r = httpx.get(f"{base}/readyz")
        assert r.status_code == 503 and r.json()["error"]["message"] == "labels down"
        ready["ok"] = True
        assert httpx.get(f"{base}/readyz").status_code == 200
        assert "mlsd_consumer_loop_up" in httpx.get(f"{base}/metrics").text
        assert httpx.get(f"{base}/nope").status_code == 404
    finally:
        server.shutdown()
