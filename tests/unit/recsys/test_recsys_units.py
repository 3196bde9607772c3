"""Exact behaviour of the recsys serving parts on tiny inputs: the A/B analysis, the stream's sessions and
schema, the supervisor, and the serving path's parity with the path the study measured."""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError

from systems.recsys.abtest import Experiment, analyze, delta_ratio, synthetic_exposures
from systems.recsys.stream import BrowseEvent, SessionState, StreamSupervisor, outside_window

pytestmark = pytest.mark.unit


def test_experiment_assignment_is_deterministic_and_balanced() -> None:
    exp = Experiment("e1", ("a", "b"), (0.5, 0.5))
    assert [exp.assign(u) for u in range(50)] == [exp.assign(u) for u in range(50)]
    # deterministic across processes and restarts, not just within one: a pure function of sha256("e1:<user>")
    # (Python's salted hash() would pass the line above and reshuffle users at every deploy)
    by_hash = ["a" if int(hashlib.sha256(f"e1:{u}".encode()).hexdigest()[:16], 16) < 2**63 else "b" for u in range(50)]
    assert [Experiment("e1", ("a", "b"), (0.5, 0.5)).assign(u) for u in range(50)] == by_hash
    share = np.mean([exp.assign(u) == "b" for u in range(20_000)])
    assert share == pytest.approx(0.5, abs=0.015)
    other = Experiment("e2", ("a", "b"), (0.5, 0.5))
    agree = np.mean([exp.assign(u) == other.assign(u) for u in range(5000)])
    assert agree == pytest.approx(0.5, abs=0.03)  # experiments are independent (salted hash)


def test_analysis_detects_known_effect_and_not_an_aa() -> None:
    exp = Experiment("known", ("control", "treatment"), (0.5, 0.5))
    log = synthetic_exposures(
        exp, {"control": 0.05, "treatment": 0.065}, {"control": 10, "treatment": 10}, n_users=8000
    )
    res = analyze(log, exp)
    t = res["tests"]["treatment"]
    assert t["significant"] and t["diff"] > 0
    assert t["diff_ci"][0] < 0.015 < t["diff_ci"][1]
    assert not res["srm"]["mismatch"]
    aa = analyze(
        synthetic_exposures(
            exp, {"control": 0.05, "treatment": 0.05}, {"control": 10, "treatment": 10}, n_users=8000, seed=3
        ),
        exp,
    )
    assert not aa["tests"]["treatment"]["significant"]


def test_srm_is_flagged() -> None:
    exp = Experiment("srm", ("control", "treatment"), (0.5, 0.5))
    log = synthetic_exposures(exp, {"control": 0.05, "treatment": 0.05}, {"control": 10, "treatment": 10}, n_users=6000)
    drop = log[(log["variant"] == "treatment")].sample(frac=0.15, random_state=0).index
    assert analyze(log.drop(drop), exp)["srm"]["mismatch"]


def test_latency_guardrail_stops_slow_variant() -> None:
    exp = Experiment("g", ("control", "slow"), (0.5, 0.5), latency_guardrail_ms=30.0)
    for _ in range(300):
        exp.record_latency("control", 5.0)
        exp.record_latency("slow", 80.0)
    assert exp.stopped == {"slow"}
    users = [u for u in range(200) if exp.assigned(u) == "slow"]
    assert users and all(exp.assign(u) == "control" for u in users)


def test_delta_method_matches_binomial_when_one_impression() -> None:
    rng = np.random.default_rng(0)
    clicks = rng.binomial(1, 0.1, 20_000).astype(float)
    r, var = delta_ratio(clicks, np.ones_like(clicks))
    assert var == pytest.approx(r * (1 - r) / len(clicks), rel=0.01)


def test_session_state_is_idempotent_under_redelivery() -> None:
    events = [BrowseEvent(user_id=1, item_id=i, event_type="view", ts_ms=t) for t, i in enumerate([2, "sku-3", 2])]
    s = SessionState(keep=50)
    first = s.apply(events)
    again = s.apply(events)  # the same batch delivered twice (crash before commit)
    assert first == again
    assert first == [{"user_id": "1", "session_items": ["sku-3", "2"], "last_event_ms": 2}]  # most recent last
    stored = {"7": ["a", "b"]}  # a restarted processor continues the session the store has
    s2 = SessionState(keep=3, read=lambda u: stored.get(u, []))
    rows = s2.apply([BrowseEvent(user_id=7, item_id=i, event_type="click", ts_ms=5) for i in ("c", "d")])
    assert rows[0]["session_items"] == ["b", "c", "d"]  # bounded: the oldest goes


def test_browse_event_schema_bounds_what_it_accepts() -> None:
    ok = {"user_id": 1, "item_id": "Toy Story (1995)", "event_type": "view", "ts_ms": 0}
    assert BrowseEvent.model_validate(ok).item_id == "Toy Story (1995)"  # ids are opaque text or integers
    for bad in (
        {"event_type": "buy"},
        {"user_id": 2**63},  # beyond signed 64 bits: a store or a Kafka key could not hold it
        {"user_id": -1},
        {"user_id": True},  # JSON true is not the id 1
        {"item_id": "a\x00b"},
        {"item_id": "x" * 129},
        {"item_id": "0" * 129},  # too long for a text id, and text is never read as the integer 0
        {"ts_ms": 10**30},
        {"colour": "red"},
    ):
        with pytest.raises(ValidationError):
            BrowseEvent.model_validate(ok | bad)
    with pytest.raises(ValidationError):
        BrowseEvent.model_validate_json(b'{"user_id": 1, "item_id": 2, "event_type": "view", "ts_ms": 1e30}')
    assert BrowseEvent.model_validate(ok | {"user_id": "42"}).user_id == "42"  # JSON text stays a text id


def test_event_times_outside_the_window_are_refused() -> None:
    from systems.recsys.settings import RecsysSettings

    s = RecsysSettings(event_max_age_s=60, event_max_future_s=5)
    now = 1_700_000_000_000

    def at(ms: int) -> BrowseEvent:
        return BrowseEvent(user_id=1, item_id=1, event_type="view", ts_ms=ms)

    assert outside_window(at(now - 59_000), now, s) is None and outside_window(at(now + 4_000), now, s) is None
    assert "before" in (outside_window(at(now - 61_000), now, s) or "")
    assert "after" in (outside_window(at(now + 6_000), now, s) or "")


def test_supervisor_takes_readiness_down_when_the_loop_dies_and_restarts_it() -> None:
    from systems.recsys.settings import RecsysSettings

    runs: list[int] = []
    release = threading.Event()

    def run(settings: RecsysSettings, stop: threading.Event, *, on_ready: Any, on_tick: Any) -> None:
        runs.append(1)
        on_tick()  # a poll before the group join: not healthy yet
        assert not sup.healthy
        on_ready()
        on_tick()
        if len(runs) == 1:
            release.wait(5)
            raise RuntimeError("store down")  # the first run dies after it was ready
        while not stop.is_set():
            on_tick()
            stop.wait(0.01)

    registry = CollectorRegistry()
    sup = StreamSupervisor(RecsysSettings(), registry=registry, backoff_s=0.2, run=run)
    sup.start()
    assert sup.ready.wait(5) and sup.healthy
    assert 'mlsd_consumer_loop_up{loop="recsys-stream"} 1.0' in generate_latest(registry).decode()
    release.set()
    deadline = time.monotonic() + 5
    while sup.deaths == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    metrics = generate_latest(registry).decode()
    assert sup.deaths == 1 and "store down" in sup.last_error
    assert 'mlsd_consumer_loop_deaths_total{loop="recsys-stream"} 1.0' in metrics
    while len(runs) < 2 and time.monotonic() < deadline:  # restarted after the backoff, healthy again
        time.sleep(0.01)
    while not sup.healthy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(runs) == 2 and sup.healthy
    sup.stop()
    assert not sup.is_alive() and not sup.healthy


def test_guardrail_ignores_a_machine_wide_slowdown() -> None:
    exp = Experiment("g2", ("control", "treatment"), (0.5, 0.5), latency_guardrail_ms=30.0)
    for _ in range(300):
        exp.record_latency("control", 80.0)  # everything is slow (shared box), both arms alike
        exp.record_latency("treatment", 85.0)
    assert exp.stopped == set()
