"""Feast definitions only (Feast's CLI imports every .py of a repo dir; keep logic out of here).

Entities user and item; batch views over parquet files under ``<data_dir>/recsys/feast/data/``; one
push-fed view (``user_realtime``) that the stream processor writes through :meth:`FeatureStore.push`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float32, Int64

PUSH_SOURCE = "user_realtime_push"
USER_FEATURES = [
    "user_profile:age_bucket",
    "user_profile:gender_code",
    "user_profile:occupation_code",
    "user_activity:n_interactions",
    "user_activity:recent_items",
    "user_realtime:session_items",
    "user_realtime:last_event_ms",
    "user_realtime:session_vector",
]
ITEM_FEATURES = ["item_stats:pop_all", "item_stats:pop_7d", "item_stats:mean_rating"]


def definitions(data_dir: Path) -> list[Any]:
    """The objects to ``store.apply``; parquet paths live under ``data_dir``."""
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="shopper")
    item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64, description="product")

    def src(name: str) -> FileSource:
        return FileSource(
            name=f"{name}_source", path=str(data_dir / f"{name}.parquet"), timestamp_field="event_timestamp"
        )

    user_profile = FeatureView(
        name="user_profile",
        entities=[user],
        ttl=timedelta(days=0),  # 0 = never expires: demographics do not age
        schema=[
            Field(name="age_bucket", dtype=Int64),
            Field(name="gender_code", dtype=Int64),
            Field(name="occupation_code", dtype=Int64),
        ],
        source=src("user_profile"),
    )
    user_activity = FeatureView(
        name="user_activity",
        entities=[user],
        ttl=timedelta(days=0),
        schema=[Field(name="n_interactions", dtype=Int64), Field(name="recent_items", dtype=Array(Int64))],
        source=src("user_activity"),
    )
    item_stats = FeatureView(
        name="item_stats",
        entities=[item],
        ttl=timedelta(days=0),
        schema=[
            Field(name="pop_all", dtype=Float32),
            Field(name="pop_7d", dtype=Float32),
            Field(name="mean_rating", dtype=Float32),
        ],
        source=src("item_stats"),
    )
    push = PushSource(name=PUSH_SOURCE, batch_source=src("user_realtime"))
    user_realtime = FeatureView(
        name="user_realtime",
        entities=[user],
        ttl=timedelta(days=0),
        schema=[
            Field(name="session_items", dtype=Array(Int64)),
            Field(name="last_event_ms", dtype=Int64),
            Field(name="session_vector", dtype=Array(Float32)),
        ],
        source=push,
    )
    return [user, item, user_profile, user_activity, item_stats, push, user_realtime]
