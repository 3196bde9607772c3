"""The stream processor and ``mlsd recsys up`` under faults (issue 13): poison messages, a dying consumer loop, and
``kill -9`` of the whole command — each on the real broker, store and processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from systems.common.broker import make_producer, publish
from systems.common.http import ServerProcess, wait_http_ok
from systems.common.proc import free_port, pid_alive, port_open
from systems.recsys.faults import poison_corpus, poison_run
from systems.recsys.stream import BrowseEvent
from tests.integration.recsys.conftest import Shop, api_env, start_redis

pytestmark = pytest.mark.integration


def test_poison_messages_go_to_the_dead_letter_topic_and_the_next_event_is_processed(shop: Shop) -> None:
    """A 3 MB message, 200 KB of NUL bytes, an id of 2^63, ts_ms 1e30 … each killed (or froze) the processor
    before; now each is dead-lettered with its reason, bounded, and the good event after it is applied."""
    res = poison_run(shop.settings.scoped(), timeout_s=60)
    n = len(poison_corpus(0))
    assert res["consumer_deaths"] == 0
    assert res["good_after_each_processed"] is True
    assert res["messages"] == res["dead_lettered"] == n, res["reasons"]
    assert res["largest_dead_letter_bytes"] < 100_000  # 3 MB in, a bounded record out
    reasons = " | ".join(res["reasons"])
    for expected in (
        "Invalid JSON",
        "less than or equal to 9223372036854775807",
        "exceeded maximum size",
        "before the",
    ):
        assert expected in reasons, reasons


def test_readiness_goes_down_when_the_stream_processor_dies_and_comes_back_with_it(shop: Shop, tmp_path: Path) -> None:
    """``mlsd recsys up`` runs the processor inside the API: when its loop dies (here: the Redis store goes away
    under it), /readyz is 503 and the metric says why; when the store is back, the loop restarts and /readyz is
    200 again."""
    port = free_port()
    redis = start_redis(port, tmp_path)
    s = shop.settings.scoped().model_copy(
        update={"online_store": "redis", "redis_url": f"redis://127.0.0.1:{port}/0", "stream_in_api": True}
    )
    server = ServerProcess("systems.recsys.serve:create_app", env=api_env(s), log_path=tmp_path / "api.log")
    producer = make_producer(s)
    try:
        with server as srv, httpx.Client(base_url=srv.url, timeout=5) as client:
            assert client.get("/readyz").status_code == 200  # ready only once the processor has joined
            assert 'mlsd_consumer_loop_up{loop="recsys-stream"} 1.0' in client.get("/metrics").text
            redis.terminate()
            redis.wait(10)
            event = BrowseEvent(user_id="u1", item_id="sku-1", event_type="view", ts_ms=int(time.time() * 1000))
            publish(producer, s.events_topic, event, key="u1")
            producer.flush(10)
            deadline = time.monotonic() + 30
            while client.get("/readyz").status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            down = client.get("/readyz")
            metrics = client.get("/metrics").text
            assert down.status_code == 503
            assert 'mlsd_consumer_loop_up{loop="recsys-stream"} 0.0' in metrics
            assert float(re.search(r'mlsd_consumer_loop_deaths_total\{loop="recsys-stream"\} (\S+)', metrics)[1]) >= 1
            redis = start_redis(port, tmp_path)
            wait_http_ok(srv.url + "/readyz", timeout_s=60)  # restarted with a backoff, joined again
    finally:
        producer.close()
        redis.terminate()
        redis.wait(10)


def _up(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "systems.cli", "recsys", "up"], env=env, stdout=out, stderr=subprocess.STDOUT
    )


def _broker_pids(port: int) -> list[int]:
    """tansu processes listening on ``port`` (by their command line)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"tansu") and any(f":{port}".encode() in a for a in args):
            found.append(int(cmdline.parent.name))
    return found


def test_up_runs_again_after_kill_9(shop: Shop, tmp_path: Path) -> None:
    """``kill -9`` of ``mlsd recsys up`` takes its broker down with it (before: the broker outlived it and the next
    run failed with "port already in use"); the next run starts cleanly, and reuses a broker it finds."""
    bport, aport = free_port(), free_port()
    env = {
        **os.environ,
        **api_env(shop.settings.scoped()),
        "MLSD_RECSYS_KAFKA_BOOTSTRAP": f"127.0.0.1:{bport}",
        "MLSD_RECSYS_API_PORT": str(aport),
    }
    first = _up(env, tmp_path / "up1.log")
    try:
        wait_http_ok(f"http://127.0.0.1:{aport}/readyz", timeout_s=120, proc=first)
        brokers = _broker_pids(bport)
        assert len(brokers) == 1
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        deadline = time.monotonic() + 10
        while (pid_alive(brokers[0]) or port_open("127.0.0.1", bport)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(brokers[0]) and not port_open("127.0.0.1", bport)  # died with its parent
        second = _up(env, tmp_path / "up2.log")
        try:
            wait_http_ok(f"http://127.0.0.1:{aport}/readyz", timeout_s=120, proc=second)
            assert httpx.get(
                f"http://127.0.0.1:{aport}/recommend", params={"user_id": shop.log.users.ids[0]}
            ).is_success
        finally:
            second.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop takes the broker down too
            second.wait(30)
        assert not port_open("127.0.0.1", bport)
    finally:
        for proc in (first,):
            if proc.poll() is None:
                proc.kill()
        for pid in _broker_pids(bport):
            os.kill(pid, signal.SIGKILL)


def test_the_standalone_processor_answers_readyz_once_assigned_and_a_sent_event_lands(
    shop: Shop, tmp_path: Path
) -> None:
    """``python -m systems.recsys.stream`` (compose's recsys-stream) serves /readyz on its health port: 200 only
    once its group has assigned it and a poll was handled — and then an event sent is in the store; SIGTERM stops
    it cleanly (exit 0)."""
    from systems.recsys.feature_store import SessionReader, ensure_store

    s = shop.settings.scoped()
    port = free_port()
    env = {**os.environ, **api_env(s), "MLSD_RECSYS_STREAM_HEALTH_PORT": str(port)}
    with (tmp_path / "stream.log").open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "systems.recsys.stream"], env=env, stdout=out, stderr=out)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/readyz", timeout_s=120, proc=proc)
        user = "readyz-shopper"
        item = shop.log.items.ids[0]
        producer = make_producer(s)
        publish(
            producer,
            s.events_topic,
            BrowseEvent(user_id=user, item_id=item, event_type="view", ts_ms=int(time.time() * 1000)),
            key=user,
        )
        producer.flush(10)
        reader = SessionReader(ensure_store(s))
        deadline = time.monotonic() + 30
        while str(item) not in reader.read(user) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert str(item) in reader.read(user)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
