"""Stream processor: browse events (Kafka) → each shopper's live session in the online store.

    mlsd recsys up        # runs it inside the API process (supervised: readiness follows it)
    python -m systems.recsys.stream

Consumes ``recsys.browse-events`` (view / click / add_to_cart), keeps each shopper's session (the last
``session_keep`` distinct items, most recent last) and writes it through Feast's push source. The next
``/recommend`` of that shopper reads it (``serve.SessionStore``): the session items join the history the model
ranks from, and are left out of the answer. The processor knows no model and no catalogue: ids are opaque
text, and an item the model does not know is ignored by the API.

Validation at the edge: an event is a bounded pydantic model (ids within the signed 64-bit range or printable
text ≤ 128 characters, a known event type, a timestamp within ``[now − event_max_age_s, now +
event_max_future_s]`` of this processor's clock). Anything else — malformed JSON, NUL bytes, a 3 MB message, an
id of 2^63, a timestamp of 1e30 — goes to ``recsys.browse-events.dlq`` with the reason (a bounded record:
``common.broker.send_to_dead_letter``), and the events after it are processed: bad *data* never stops the
processor. A failure of the store or a bug does stop the loop; :class:`StreamSupervisor` then takes readiness
down (``mlsd_consumer_loop_up`` 0, ``mlsd_consumer_loop_deaths_total`` + 1) and restarts it with a backoff.

Delivery is at-least-once (commit after the push). Applying an event is idempotent: re-applying a batch moves
the same items to the end of the same list, so a redelivered batch leaves the same state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from systems.common.broker import Record
from systems.recsys.dataset import MAX_INT_ID, PublicId
from systems.recsys.settings import RecsysSettings

log = logging.getLogger(__name__)
GROUP_ID = "recsys-stream"
LOOP_NAME = "recsys-stream"


class BrowseEvent(BaseModel):
    """A shopper interacting with a product page."""

    model_config = ConfigDict(extra="forbid")
    user_id: PublicId
    item_id: PublicId
    event_type: Literal["view", "click", "add_to_cart"]
    ts_ms: int = Field(ge=0, le=MAX_INT_ID, description="when it happened (unix ms)")


class SessionState:
    """Per-shopper live sessions (keys and items as text), initialised lazily from the online store, so a
    restarted processor continues each session where the store has it."""

    def __init__(self, *, keep: int, read: Callable[[str], list[str]] | None = None) -> None:
        self.keep = keep
        self.read = read
        self.sessions: dict[str, OrderedDict[str, None]] = {}
        self.last_ms: dict[str, int] = {}

    def _session(self, user: str) -> OrderedDict[str, None]:
        if user not in self.sessions:
            items = self.read(user) if self.read is not None else []
            self.sessions[user] = OrderedDict((i, None) for i in items)
        return self.sessions[user]

    def apply(self, events: list[BrowseEvent]) -> list[dict[str, Any]]:
        """Fold events into the sessions (in time order); returns one online-store row per touched shopper."""
        touched: set[str] = set()
        for e in sorted(events, key=lambda e: e.ts_ms):
            user, item = str(e.user_id), str(e.item_id)
            s = self._session(user)
            s.pop(item, None)
            s[item] = None  # most recent last
            while len(s) > self.keep:
                s.popitem(last=False)
            self.last_ms[user] = max(self.last_ms.get(user, 0), e.ts_ms)
            touched.add(user)
        return [
            {"user_id": u, "session_items": list(self.sessions[u]), "last_event_ms": self.last_ms[u]}
            for u in sorted(touched)
        ]


def outside_window(event: BrowseEvent, now_ms: float, settings: RecsysSettings) -> str | None:
    """Why an event's time is not one this processor accepts (None when it is)."""
    lo, hi = now_ms - settings.event_max_age_s * 1e3, now_ms + settings.event_max_future_s * 1e3
    if event.ts_ms < lo:
        return f"ts_ms {event.ts_ms} is more than {settings.event_max_age_s:.0f} s before the processor's clock"
    if event.ts_ms > hi:
        return f"ts_ms {event.ts_ms} is more than {settings.event_max_future_s:.0f} s after the processor's clock"
    return None


def run_stream_processor(
    settings: RecsysSettings,
    stop: threading.Event,
    *,
    client: str | None = None,
    on_ready: Callable[[], None] | None = None,
    on_tick: Callable[[], None] | None = None,
) -> None:
    """Consume until ``stop`` is set; raises when the store (or the code) fails — bad events never do.

    ``on_ready`` is called once the consumer group has assigned this processor its partitions: an event sent
    after that is applied without waiting for a group join (callers wait on it instead of sleeping).
    ``on_tick`` is called after every poll whose records (if any) were handled and committed.
    """
    from systems.common.broker import (
        TopicSpec,
        create_topics,
        dead_letter_topic,
        make_consumer,
        make_producer,
        run_consumer_loop,
        send_to_dead_letter,
    )
    from systems.recsys.feature_store import SessionReader, ensure_store, push_sessions

    store = ensure_store(settings)
    state = SessionState(keep=settings.session_keep, read=SessionReader(store).read)
    create_topics(settings, [TopicSpec(settings.events_topic), TopicSpec(dead_letter_topic(settings.events_topic))])
    consumer = make_consumer(settings, [settings.events_topic], group_id=GROUP_ID, client=client)
    producer = make_producer(settings, client=client)

    def handle(batch: list[tuple[Record, BrowseEvent]]) -> None:
        now_ms = time.time() * 1e3
        good = []
        for record, event in batch:
            if (why := outside_window(event, now_ms, settings)) is not None:
                send_to_dead_letter(producer, record, why)
            elif len(record.value) > settings.event_max_bytes:
                send_to_dead_letter(producer, record, f"{len(record.value)} bytes, over {settings.event_max_bytes}")
            else:
                good.append(event)
        rows = state.apply(good)
        if rows:
            push_sessions(store, rows)

    try:
        run_consumer_loop(
            consumer,
            producer,
            BrowseEvent,
            handle,
            stop=stop,
            poll_timeout_s=0.05,
            on_ready=on_ready,
            tick=on_tick,
        )
    finally:
        consumer.close()
        producer.close()


class StreamSupervisor(threading.Thread):
    """The stream processor in a thread that never dies silently.

    The processor is ``healthy`` (and ``mlsd_consumer_loop_up{loop="recsys-stream"}`` is 1) once it has joined its
    group and completed a poll — with whatever that poll brought handled and committed: a restarted loop that
    would die again on the same batch never looks ready in between. When it raises, both drop at once (a
    service whose readiness includes ``healthy`` answers 503), ``mlsd_consumer_loop_deaths_total`` goes up, the
    traceback is logged, and the processor is restarted after a backoff that doubles up to ``max_backoff_s``.
    ``ready`` is set the first time it is healthy.
    """

    def __init__(
        self,
        settings: RecsysSettings,
        *,
        registry: Any = None,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        run: Callable[..., None] = run_stream_processor,
    ) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        super().__init__(name=LOOP_NAME, daemon=True)
        self.settings = settings
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.healthy = False
        self.deaths = 0
        self.last_error = ""
        self.backoff_s, self.max_backoff_s, self._run = backoff_s, max_backoff_s, run
        registry = registry if registry is not None else CollectorRegistry()
        self._up = Gauge("mlsd_consumer_loop_up", "1 while the consumer loop runs", ["loop"], registry=registry)
        self._deaths = Counter(
            "mlsd_consumer_loop_deaths", "consumer loops that raised (then restarted)", ["loop"], registry=registry
        )
        self._up.labels(LOOP_NAME).set(0)
        self._deaths.labels(LOOP_NAME)

    def run(self) -> None:
        backoff = self.backoff_s
        while not self.stop_event.is_set():
            started = time.monotonic()
            joined = threading.Event()

            def tick(joined: threading.Event = joined) -> None:
                if joined.is_set() and not self.healthy:
                    self.healthy = True
                    self._up.labels(LOOP_NAME).set(1)
                    self.ready.set()

            try:
                self._run(self.settings, self.stop_event, on_ready=joined.set, on_tick=tick)
                return  # stopped cleanly
            except Exception as exc:
                self.deaths += 1
                self._deaths.labels(LOOP_NAME).inc()
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                if time.monotonic() - started > 60.0:
                    backoff = self.backoff_s  # it had been running for a while: not a crash loop
                log.exception("stream processor died (%d so far); restarting in %.1f s", self.deaths, backoff)
            finally:
                self.healthy = False
                self._up.labels(LOOP_NAME).set(0)
            self.stop_event.wait(backoff)
            backoff = min(2 * backoff, self.max_backoff_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stop_event.set()
        self.join(timeout_s)


def main() -> None:
    """Run until interrupted; a failure exits non-zero (the orchestrator restarts the process). With
    ``stream_health_port`` set, ``/readyz`` answers 200 once the group has assigned this processor its partitions
    and a poll has been handled, 503 with the reason before."""
    import signal

    from systems.common.broker import serve_health

    logging.basicConfig(level=logging.INFO)
    settings = RecsysSettings()
    settings.ensure_dirs()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    joined, handled = threading.Event(), threading.Event()
    server = None
    if settings.stream_health_port is not None:

        def reason() -> str:
            if not joined.is_set():
                return "waiting for the consumer group to assign partitions"
            return "" if handled.is_set() else "first poll not handled yet"

        server = serve_health(
            host=settings.host, port=settings.stream_health_port, ready=lambda: not reason(), reason=reason
        )

    def tick() -> None:
        if joined.is_set():
            handled.set()

    try:
        run_stream_processor(settings, stop, on_ready=joined.set, on_tick=tick)
    except KeyboardInterrupt:
        stop.set()
    finally:
        if server is not None:
            server.shutdown()


if __name__ == "__main__":
    main()
