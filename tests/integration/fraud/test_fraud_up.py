"""``mlsd fraud up`` as an operator meets it: ``kill -9`` of its API does not stop its scorer (the API comes back,
the scorer keeps deciding), ``/readyz`` says what is down meanwhile, and ``kill -9`` of ``up`` itself takes its
children with it (no scorer left consuming, no API left holding its port)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from systems.common.broker import create_topics, make_producer
from systems.common.proc import free_port, pid_alive, port_open
from systems.fraud.replay import tx_json
from systems.fraud.store import DecisionStore
from systems.fraud.stream import decision_store_url, fraud_topics

pytestmark = pytest.mark.integration


def _children(pid: int) -> dict[int, str]:
    """Child pid -> command line (from /proc)."""
    out: dict[int, str] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            out[int(child)] = cmdline
    return out


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def test_up_restarts_a_killed_api_without_touching_the_scorer_and_its_children_die_with_it(
    fraud_world, broker, kit, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    health, api = free_port(), free_port()
    settings = kit.make_settings(
        fraud_world,
        broker,
        history_path=fraud_world.tx_path,
        warm_until_s=fraud_world.replay_start_s,
        health_port=health,
        api_port=api,
        publish_predictions=False,
    )
    create_topics(settings, fraud_topics(settings))
    log = (tmp_path / "up.log").open("wb")
    cmd = [sys.executable, "-m", "systems.cli", "fraud", "up", "--scorers", "1", "--api", "--no-retrain-listener"]
    up = subprocess.Popen(cmd, env={**os.environ, **settings.to_env()}, stdout=log, stderr=subprocess.STDOUT)
    store = DecisionStore(decision_store_url(settings))
    producer = make_producer(settings)
    rows = fraud_world.tx[fraud_world.tx["ts_s"] >= fraud_world.replay_start_s].head(40)

    def send(part: int) -> None:
        for r in rows.iloc[part * 20 : (part + 1) * 20].itertuples():
            value = tx_json(int(r.tx_id), int(r.customer_id), int(r.terminal_id), int(r.ts_s), float(r.amount), 0.0)
            producer.send(settings.transactions_topic, value, key=str(int(r.customer_id)).encode())
        producer.flush()

    try:
        kit.wait_for(lambda: _status(f"http://127.0.0.1:{health}/readyz") == 200, 120, "up ready")
        kit.wait_for(lambda: _status(f"http://127.0.0.1:{api}/readyz") == 200, 60, "the API ready")
        children = _children(up.pid)
        (api_pid,) = [p for p, c in children.items() if "uvicorn" in c]
        (scorer_pid,) = [p for p, c in children.items() if "systems.fraud.stream" in c]
        send(0)
        kit.wait_for(lambda: store.count()[0] >= 20, 60, "decisions from the scorer")

        os.kill(api_pid, signal.SIGKILL)
        kit.wait_for(
            lambda: _status(f"http://127.0.0.1:{health}/readyz") == 503, 10, "up unready while the API is down"
        )
        reason = httpx.get(f"http://127.0.0.1:{health}/readyz").json()["error"]["message"]
        assert "API" in reason
        send(1)  # the scorer never stopped
        kit.wait_for(lambda: store.count()[0] >= 40, 60, "decisions while the API is down")
        assert pid_alive(scorer_pid)
        kit.wait_for(lambda: _status(f"http://127.0.0.1:{api}/readyz") == 200, 60, "the API restarted")
        kit.wait_for(lambda: _status(f"http://127.0.0.1:{health}/readyz") == 200, 10, "up ready again")
        assert pid_alive(scorer_pid) and scorer_pid in _children(up.pid)

        children = _children(up.pid)
        os.kill(up.pid, signal.SIGKILL)
        up.wait(10)
        kit.wait_for(lambda: not any(pid_alive(p) for p in children), 30, "the children to die with their parent")
        assert not port_open("127.0.0.1", api)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
        for p in _children(up.pid) if up.poll() is None else []:
            os.kill(p, signal.SIGKILL)
        store.close()
        producer.close()
        log.close()
    text = (tmp_path / "up.log").read_text()
    assert "API exited with code -9; restarting" in text and "API restarted" in text
