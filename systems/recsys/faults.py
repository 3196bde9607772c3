"""Faults, on purpose: poison messages, ``kill -9`` mid-stream, a fuzzed API — and what each one cost.

    mlsd recsys bench --only poison,chaos,fuzz

- :func:`poison_run`: a fixed corpus of bad browse events (a 3 MB message, 200 KB of NUL bytes, an id of 2^63,
  a timestamp of 1e30, …), each followed by a good one, sent to a running stream processor. Every bad one must
  land in the dead-letter topic with its reason, every good one in the online store, and the processor must not
  die (``poison.messages``, ``poison.consumer_deaths``).
- :func:`chaos_run`: the stream processor as its own process, fed a steady stream of events, killed with
  ``kill -9`` at a seeded random moment and restarted after the events of a few seconds have piled up. The
  sessions it leaves in the store are compared with an uninterrupted reference (the same events through
  :class:`SessionState`): ``chaos.lost``, ``chaos.feature_mismatch``, ``chaos.duplicates_store``, the recovery
  time and the catch-up rate against the steady-state rate. The API is killed and restarted too
  (``chaos.api_recovery_s``: it holds no state, so recovery is its start-up).
- :func:`fuzz_run`: ``common.fuzz.fuzz_api`` against the real API (``fuzz.requests``, ``fuzz.server_errors``).

``chaos.duplicates_topic`` does not apply: the recsys stream writes no output topic (a session is state in the
store, an upsert), so there is nothing on a topic to duplicate; the key is reported as None with that reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np

from systems.recsys.settings import RecsysSettings
from systems.recsys.stream import BrowseEvent, SessionState


def _run_tag(settings: RecsysSettings) -> str:
    """What makes a fault run's shopper ids its own: the online store outlives a run, and a session an earlier
    run left would look applied at once (a recovery of 0 s) or differ from this run's reference."""
    return settings.run_id or f"{time.time_ns():x}"


def poison_corpus(now_ms: int) -> list[tuple[str, bytes]]:
    """(what it is, the message value): each must be dead-lettered, none may stop the processor."""

    def event(**over: Any) -> bytes:
        e = {"user_id": 1, "item_id": 2, "event_type": "view", "ts_ms": now_ms} | over
        return json.dumps(e).encode()

    return [
        ("3 MB message", event(user_id="u" * 3_000_000)),
        ("200 KB of NUL bytes", b"\x00" * 200_000),
        ("an id of 2^63", event(user_id=2**63)),
        ("an item id of -1", event(item_id=-1)),
        ("ts_ms of 1e30", event(ts_ms=1e30).replace(b"1e+30", b"1e30")),
        ("a timestamp a year old", event(ts_ms=now_ms - 365 * 86_400_000)),
        ("a timestamp a day ahead", event(ts_ms=now_ms + 86_400_000)),
        ("not JSON", b'{"user_id": 1, "item_id": '),
        ("an unknown event type", event(event_type="purchase-refund")),
        ("an extra field", event(colour="red")),
        ("a control character in an id", event(item_id="sku\n1")),
    ]


def _read_topic(settings: RecsysSettings, topic: str, want: int, timeout_s: float) -> list[dict[str, Any]]:
    from systems.common.broker import make_reader

    reader = make_reader(settings, [topic], start="beginning")
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < want and time.monotonic() < deadline:
            found += [json.loads(r.value) for r in reader.poll(timeout_s=0.2)]
    finally:
        reader.close()
    return found


def _wait_sessions(
    reader: Any, expected: dict[str, list[str]], timeout_s: float, poll_s: float = 0.05
) -> tuple[bool, float]:
    """Until every user's stored session equals ``expected`` (True, seconds) or the timeout (False, seconds)."""
    t0 = time.monotonic()
    pending = dict(expected)
    while time.monotonic() - t0 < timeout_s:
        pending = {u: s for u, s in pending.items() if reader.read(u) != s}
        if not pending:
            return True, time.monotonic() - t0
        time.sleep(poll_s)
    return False, time.monotonic() - t0


def poison_run(settings: RecsysSettings, *, timeout_s: float = 60.0) -> dict[str, Any]:
    """The poison corpus through a supervised stream processor (a thread here); see the module docstring."""
    from systems.common.broker import TopicSpec, create_topics, dead_letter_topic, make_producer
    from systems.recsys.bench import start_stream_thread
    from systems.recsys.feature_store import SessionReader, ensure_store

    s = settings
    create_topics(s, [TopicSpec(s.events_topic), TopicSpec(dead_letter_topic(s.events_topic))])
    sup = start_stream_thread(s)
    reader = SessionReader(ensure_store(s))
    big: dict[str, Any] = {"message.max.bytes": 4_000_000} if s.kafka_client == "confluent" else {}
    producer = make_producer(s, None, **big)  # the producer's own 1 MB limit would refuse the 3 MB message
    now_ms = int(time.time() * 1000)
    corpus = poison_corpus(now_ms)
    expected: dict[str, list[str]] = {}
    run = _run_tag(s)
    try:
        for n, (_what, value) in enumerate(corpus):
            producer.send(s.events_topic, value, key=b"poison")
            good = BrowseEvent(user_id=f"after-poison-{run}-{n}", item_id=f"item-{n}", event_type="view", ts_ms=now_ms)
            producer.send(s.events_topic, good.model_dump_json().encode(), key=good.user_id.encode())  # type: ignore[union-attr]
            expected[str(good.user_id)] = [str(good.item_id)]
        producer.flush(30)
        processed, took = _wait_sessions(reader, expected, timeout_s)
        letters = _read_topic(s, dead_letter_topic(s.events_topic), len(corpus), timeout_s)
    finally:
        producer.close()
        sup.stop()
    reasons = [d["reason"] for d in letters]
    return {
        "messages": len(corpus),
        "kinds": [w for w, _ in corpus],
        "dead_lettered": len(letters),
        "reasons": reasons,
        "largest_dead_letter_bytes": max((len(json.dumps(d)) for d in letters), default=0),
        "good_after_each_processed": processed,
        "seconds": took,
        "consumer_deaths": sup.deaths,
    }


# ------------------------------------------------------------------------------------------------- chaos


class _Processor:
    """``python -m systems.recsys.stream`` as a child process (so it can be killed with SIGKILL)."""

    def __init__(self, settings: RecsysSettings) -> None:
        self.env = {**os.environ, **settings.to_env(), "MLSD_DATA_DIR": str(settings.data_dir.resolve())}
        self.log = settings.recsys_dir / "stream-chaos.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "systems.recsys.stream"], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def chaos_run(
    settings: RecsysSettings,
    *,
    users: int = 200,
    events: int = 12_000,
    rate: float = 400.0,
    down_s: float = 10.0,
    seed: int = 0,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Steady events → ``kill -9`` at a seeded moment → ``down_s`` of backlog → restart → compare with the
    uninterrupted reference (see the module docstring).

    ``recovery_s``: restart → the first event of the backlog is in the store (process start, group join, first
    batch). ``catchup_tps``: backlog events per second from then until its last event is in the store, against
    ``steady_tps``, a burst through the processor running normally.
    """
    from systems.common.broker import TopicSpec, create_topics, dead_letter_topic, make_producer, publish
    from systems.recsys.feature_store import SessionReader, ensure_store

    s = settings
    run = _run_tag(s)
    rng = np.random.default_rng(seed)
    create_topics(s, [TopicSpec(s.events_topic), TopicSpec(dead_letter_topic(s.events_topic))])
    reader = SessionReader(ensure_store(s))
    now_ms = int(time.time() * 1000)
    stream = [
        BrowseEvent(
            user_id=f"chaos-{run}-{int(rng.integers(users))}", item_id=int(i), event_type="view", ts_ms=now_ms + i
        )
        for i in range(events)
    ]
    reference = SessionState(keep=s.session_keep)
    reference.apply(stream)
    expected = {u: list(items) for u, items in reference.sessions.items()}
    kill_at = int(rng.integers(events // 4, events // 2))  # a seeded random moment in the first half
    backlog_end = min(kill_at + int(down_s * rate), events - 1)
    proc = _Processor(s)
    producer = make_producer(s)
    out: dict[str, Any] = {"events": events, "users": users, "rate": rate, "kill_after_events": kill_at + 1}

    def send(part: list[BrowseEvent]) -> None:
        t0 = time.monotonic()
        for n, e in enumerate(part):
            publish(producer, s.events_topic, e, key=str(e.user_id))
            if (delay := t0 + (n + 1) / rate - time.monotonic()) > 0:
                time.sleep(delay)
        producer.flush(30)

    try:
        proc.start()
        # steady state: a burst through the running processor (after it has joined and applied a first event)
        warm = [
            BrowseEvent(user_id=f"warm-{run}-{i % 50}", item_id=i, event_type="view", ts_ms=now_ms) for i in range(2000)
        ]
        publish(producer, s.events_topic, warm[0], key=str(warm[0].user_id))
        producer.flush(30)
        _visible(reader, warm[0], 120.0)
        t0 = time.monotonic()
        for e in warm:
            publish(producer, s.events_topic, e, key=str(e.user_id))
        producer.flush(30)
        out["steady_tps"] = len(warm) / _visible(reader, warm[-1], 60.0, since=t0)
        send(stream[: kill_at + 1])
        proc.kill()
        send(stream[kill_at + 1 : backlog_end + 1])  # sent while the processor is down
        proc.start()
        t_restart = time.monotonic()
        first = _visible(reader, stream[kill_at + 1], 120.0, since=t_restart)
        last = _visible(reader, stream[backlog_end], 120.0, since=t_restart)
        send(stream[backlog_end + 1 :])
        caught_up, _ = _wait_sessions(reader, expected, timeout_s, poll_s=0.02)
        stored = {u: reader.read(u) for u in expected}
    finally:
        producer.close()
        proc.stop()
    backlog = backlog_end - kill_at
    out.update(
        {
            "backlog_events": backlog,
            "recovery_s": first,
            "catchup_tps": backlog / max(last - first, 1e-3),
            "lost": sum(len(set(v) - set(stored.get(u, []))) for u, v in expected.items()),
            "feature_mismatch": sum(stored.get(u) != v for u, v in expected.items()),
            "duplicates_store": sum(len(v) - len(set(v)) for v in stored.values()),
            "duplicates_topic": None,
            "duplicates_topic_why": "the stream writes no output topic: a session is an upsert in the store",
            "caught_up": caught_up,
        }
    )
    out["api_recovery_s"] = api_restart_s(s)
    out["targets"] = {
        "recovery_s": RECOVERY_TARGET_S,
        "recovery_met": bool(out["recovery_s"] <= RECOVERY_TARGET_S and out["api_recovery_s"] <= RECOVERY_TARGET_S),
        "catchup_met": bool(out["catchup_tps"] >= out["steady_tps"]),
    }
    return out


RECOVERY_TARGET_S = 10.0
"""Restart → serving again (the first backlog event applied; the API answering /readyz)."""


def _visible(reader: Any, event: BrowseEvent, timeout_s: float, *, since: float | None = None) -> float:
    """Seconds (from ``since``, default now) until ``event``'s item is in its user's stored session."""
    t0 = time.monotonic() if since is None else since
    while time.monotonic() - t0 < timeout_s:
        if str(event.item_id) in reader.read(str(event.user_id)):
            return time.monotonic() - t0
        time.sleep(0.01)
    raise TimeoutError(f"event {event} not applied within {timeout_s:.0f} s")


def api_restart_s(settings: RecsysSettings) -> float:
    """``kill -9`` of a running API, then the seconds until a new one answers ``/readyz`` (it holds no state: a
    session lives in the online store, the model in the registry)."""
    from systems.common.http import ServerProcess

    env = {**settings.to_env(), "MLSD_DATA_DIR": str(settings.data_dir.resolve()), "OPENBLAS_NUM_THREADS": "1"}
    server = ServerProcess("systems.recsys.serve:create_app", env=env, log_path=settings.recsys_dir / "api-chaos.log")
    server.start()
    assert server.process is not None
    os.killpg(server.process.pid, signal.SIGKILL)  # its own session: the whole group
    server.process.wait(10)
    server.process = None
    t0 = time.monotonic()
    again = ServerProcess(
        "systems.recsys.serve:create_app", port=server.port, env=env, log_path=settings.recsys_dir / "api-chaos.log"
    )
    again.start()
    took = time.monotonic() - t0
    again.stop()
    return took


def fuzz_run(settings: RecsysSettings, *, max_examples: int = 50) -> dict[str, Any]:
    """The API fuzzed from its own OpenAPI schema (``common.fuzz``): every answer checked against the schema."""
    from systems.common.fuzz import fuzz_api
    from systems.common.http import ServerProcess

    env = {**settings.to_env(), "MLSD_DATA_DIR": str(settings.data_dir.resolve()), "OPENBLAS_NUM_THREADS": "1"}
    with ServerProcess(
        "systems.recsys.serve:create_app", env=env, log_path=settings.recsys_dir / "api-fuzz.log"
    ) as server:
        t0 = time.monotonic()
        res = fuzz_api(server.url, max_examples=max_examples)
        took = time.monotonic() - t0
    return {**res.as_dict(), "max_examples": max_examples, "seconds": took}
