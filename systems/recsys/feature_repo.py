"""Feast definitions only (Feast's CLI imports every .py of a repo dir; keep logic out of here).

One entity, the shopper, keyed by the public user id *as text* (ids are opaque: integers in one log, strings in
another), and one push-fed view, ``user_session``: the items the shopper browsed most recently, written by the
stream processor through :meth:`FeatureStore.push` and read by the API at each request. The batch history the
model learned from travels with the registered model; the online store holds only what happened since.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Int64, String

PUSH_SOURCE = "user_session_push"
SESSION_VIEW = "user_session"
SESSION_FEATURES = [f"{SESSION_VIEW}:session_items", f"{SESSION_VIEW}:last_event_ms"]


def definitions(data_dir: Path) -> list[Any]:
    """The objects to ``store.apply``; the push source's (empty) parquet file lives under ``data_dir``."""
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="shopper")
    batch = FileSource(
        name=f"{SESSION_VIEW}_source", path=str(data_dir / f"{SESSION_VIEW}.parquet"), timestamp_field="event_timestamp"
    )
    push = PushSource(name=PUSH_SOURCE, batch_source=batch)
    session = FeatureView(
        name=SESSION_VIEW,
        entities=[user],
        ttl=timedelta(days=0),  # 0 = never expires: the stream processor bounds a session's length itself
        schema=[Field(name="session_items", dtype=Array(String)), Field(name="last_event_ms", dtype=Int64)],
        source=push,
    )
    return [user, push, session]
