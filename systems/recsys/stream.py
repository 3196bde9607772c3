"""Stream processor: browse events (Kafka) → the user's live-session features in the online store.

    mlsd recsys up        # runs it next to the API
    python -m systems.recsys.stream

Consumes ``recsys.browse-events`` (view / click / add_to_cart), keeps each user's session (last
``SESSION_KEEP`` distinct items, most recent last) and its session vector (mean two-tower vector of those
items), and writes them through Feast's push source ``user_realtime_push``. The next ``/recommend`` of that
user reads them: the session items join the history (they move the two-tower user vector and are filtered
from the answer) and the session vector is an extra ANN query.

Delivery is at-least-once (commit after the push). ``handle`` is idempotent: re-applying a batch moves the
same items to the end of the same list, so a redelivered batch leaves the same state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from systems.common.broker import Record
from systems.recsys.settings import RecsysSettings

log = logging.getLogger(__name__)
SESSION_KEEP = 50
GROUP_ID = "recsys-stream"


class BrowseEvent(BaseModel):
    """A shopper interacting with a product page."""

    model_config = ConfigDict(extra="forbid")
    user_id: int = Field(ge=1)
    item_id: int = Field(ge=1)
    event_type: Literal["view", "click", "add_to_cart"]
    ts_ms: int = Field(ge=0)


class SessionState:
    """Per-user live sessions, initialised lazily from the online store (survives a processor restart)."""

    def __init__(self, item_vecs: np.ndarray, store: Any | None = None) -> None:
        self.item_vecs = item_vecs
        self.store = store
        self.sessions: dict[int, OrderedDict[int, None]] = {}
        self.last_ms: dict[int, int] = {}

    def _session(self, user_id: int) -> OrderedDict[int, None]:
        if user_id not in self.sessions:
            items: list[int] = []
            if self.store is not None:
                from systems.recsys.feature_store import online_user

                items = list(online_user(self.store, user_id).get("session_items") or [])
            self.sessions[user_id] = OrderedDict((i, None) for i in items)
        return self.sessions[user_id]

    def apply(self, events: list[BrowseEvent]) -> list[dict[str, Any]]:
        """Fold events into the sessions; returns one online-store row per touched user."""
        touched: set[int] = set()
        n_items = len(self.item_vecs)
        for e in sorted(events, key=lambda e: e.ts_ms):
            if e.item_id > n_items:
                continue  # unknown product: nothing to learn from it
            s = self._session(e.user_id)
            s.pop(e.item_id, None)
            s[e.item_id] = None  # most recent last
            while len(s) > SESSION_KEEP:
                s.popitem(last=False)
            self.last_ms[e.user_id] = max(self.last_ms.get(e.user_id, 0), e.ts_ms)
            touched.add(e.user_id)
        rows = []
        for u in sorted(touched):
            items = list(self.sessions[u])
            v = self.item_vecs[np.asarray(items[-10:], dtype=np.int64) - 1].mean(0)
            v = v / max(float(np.linalg.norm(v)), 1e-9)
            rows.append(
                {"user_id": u, "session_items": items, "last_event_ms": self.last_ms[u], "session_vector": v.tolist()}
            )
        return rows


def run_stream_processor(
    settings: RecsysSettings,
    stop: threading.Event,
    *,
    client: str | None = None,
    ready: threading.Event | None = None,
) -> None:
    """Consume until ``stop`` is set. Needs trained artefacts (item vectors) and an applied feature store.

    ``ready`` is set once the consumer group has assigned this processor its partitions: an event sent after
    that is applied without waiting for a group join (callers wait on it instead of sleeping).
    """
    from systems.common.broker import TopicSpec, create_topics, make_consumer, make_producer, run_consumer_loop
    from systems.recsys.feature_store import open_store, push_realtime

    item_vecs = np.load(settings.model_dir / "arrays.npz")["item_vecs"]
    store = open_store(settings)
    state = SessionState(item_vecs, store)
    create_topics(settings, [TopicSpec(settings.events_topic)])
    consumer = make_consumer(settings, [settings.events_topic], group_id=GROUP_ID, client=client)
    producer = make_producer(settings, client=client)

    def handle(batch: list[tuple[Record, BrowseEvent]]) -> None:
        rows = state.apply([e for _, e in batch])
        if rows:
            push_realtime(store, rows)
            log.debug("pushed %d users at %d", len(rows), int(time.time() * 1000))

    try:
        run_consumer_loop(
            consumer,
            producer,
            BrowseEvent,
            handle,
            stop=stop,
            poll_timeout_s=0.05,
            on_ready=None if ready is None else ready.set,
        )
    finally:
        consumer.close()
        producer.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    settings = RecsysSettings()
    stop = threading.Event()
    try:
        run_stream_processor(settings, stop)
    except KeyboardInterrupt:
        stop.set()


if __name__ == "__main__":
    main()
