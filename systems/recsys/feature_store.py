"""The Feast feature store: offline parquet tables, the online store (sqlite or Redis), reads and pushes.

Programmatic config (no feature_store.yaml): registry, sqlite file and parquet tables all live under
``<data_dir>/recsys/feast``. Feast imports slowly (5-7 s), so this module imports it inside functions.

Public ids (``user_id``, ``item_id``) are the MovieLens ids; internally ``*_idx = id - 1``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from systems.recsys.data import Catalogue
from systems.recsys.features import DAY, ItemStatsSnapshots, age_bucket
from systems.recsys.settings import RecsysSettings

HISTORY_KEEP = 200  # items kept in user_activity.recent_items (also the seen-filter of the API)


def data_path(settings: RecsysSettings) -> Path:
    return settings.feast_dir.resolve() / "data"


def redis_connection_string(url: str) -> str:
    """redis://host:port/db -> Feast's 'host:port,db=N'."""
    rest = url.split("://", 1)[-1]
    hostport, _, db = rest.partition("/")
    return f"{hostport},db={db or '0'}"


def repo_config(settings: RecsysSettings) -> Any:
    from feast import RepoConfig

    root = settings.feast_dir.resolve()  # absolute: Feast resolves relative paths against repo_path
    online: dict[str, Any]
    if settings.online_store == "redis":
        online = {"type": "redis", "connection_string": redis_connection_string(settings.redis_url)}
    else:
        online = {"type": "sqlite", "path": str(root / "online.db")}
    return RepoConfig(
        project="recsys",
        provider="local",
        registry=str(root / "registry.db"),
        online_store=online,
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
        repo_path=str(root),
    )


def open_store(settings: RecsysSettings) -> Any:
    from feast import FeatureStore

    return FeatureStore(config=repo_config(settings))


def write_offline_tables(
    settings: RecsysSettings, cat: Catalogue, train: pd.DataFrame, stats: ItemStatsSnapshots
) -> dict[str, int]:
    """Parquet sources: user_profile (static), user_activity and item_stats (daily snapshots), user_realtime (empty)."""
    out = data_path(settings)
    out.mkdir(parents=True, exist_ok=True)
    epoch = pd.Timestamp("1997-01-01", tz="UTC")
    users = cat.users
    profile = pd.DataFrame(
        {
            "user_id": users["user_id"].astype("int64"),
            "age_bucket": age_bucket(users["age"].to_numpy()),
            "gender_code": users["gender_code"].astype("int64"),
            "occupation_code": users["occupation_code"].astype("int64"),
            "event_timestamp": epoch,
        }
    )
    profile.to_parquet(out / "user_profile.parquet")
    # user_activity: one row per (user, active day), valid from the start of the next day (PIT: a row never
    # contains an interaction later than its own timestamp).
    rows = []
    for u, g in train.groupby("user_idx"):
        items = g["item_idx"].to_numpy() + 1
        days = g["ts"].to_numpy() // DAY
        last_of_day = np.flatnonzero(np.r_[days[1:] != days[:-1], True])
        for p in last_of_day:
            rows.append(
                (int(u) + 1, int(p) + 1, items[max(0, p + 1 - HISTORY_KEEP) : p + 1].tolist(), int(days[p] + 1) * DAY)
            )
    activity = pd.DataFrame(rows, columns=["user_id", "n_interactions", "recent_items", "event_timestamp"])
    activity["event_timestamp"] = pd.to_datetime(activity["event_timestamp"], unit="s", utc=True)
    activity.to_parquet(out / "user_activity.parquet")
    stats.to_frame().to_parquet(out / "item_stats.parquet")
    realtime = pd.DataFrame(
        {
            "user_id": pd.Series([], dtype="int64"),
            "session_items": pd.Series([], dtype="object"),
            "last_event_ms": pd.Series([], dtype="int64"),
            "session_vector": pd.Series([], dtype="object"),
            "event_timestamp": pd.Series([], dtype="datetime64[ns, UTC]"),
        }
    )
    realtime.to_parquet(out / "user_realtime.parquet")
    return {
        "user_profile": len(profile),
        "user_activity": len(activity),
        "item_stats": len(stats.values) * stats.values.shape[1],
    }


def apply_and_materialize(settings: RecsysSettings, *, end: datetime | None = None) -> float:
    """Register the definitions and load the latest batch values into the online store; returns seconds."""
    from systems.recsys.feature_repo import definitions

    t = time.perf_counter()
    store = open_store(settings)
    store.apply(definitions(data_path(settings)))
    store.materialize(
        start_date=datetime(1997, 1, 1, tzinfo=UTC),
        end_date=end or datetime.now(tz=UTC),
        feature_views=["user_profile", "user_activity", "item_stats"],
    )
    return time.perf_counter() - t


def online_user(store: Any, user_id: int) -> dict[str, Any]:
    """One user's online features (None values when the user is unknown)."""
    from systems.recsys.feature_repo import USER_FEATURES

    resp = store.get_online_features(features=USER_FEATURES, entity_rows=[{"user_id": int(user_id)}]).to_dict()
    return {k: v[0] for k, v in resp.items()}


def push_realtime(store: Any, rows: list[dict[str, Any]]) -> None:
    """Write user_realtime rows (user_id, session_items, last_event_ms, session_vector) through the PushSource."""
    from feast.data_source import PushMode

    from systems.recsys.feature_repo import PUSH_SOURCE

    df = pd.DataFrame(
        {
            "user_id": [int(r["user_id"]) for r in rows],
            "session_items": [list(map(int, r["session_items"])) for r in rows],
            "last_event_ms": [int(r["last_event_ms"]) for r in rows],
            "session_vector": [[float(x) for x in r["session_vector"]] for r in rows],
            "event_timestamp": [pd.Timestamp(int(r["last_event_ms"]), unit="ms", tz="UTC") for r in rows],
        }
    )
    store.push(PUSH_SOURCE, df, to=PushMode.ONLINE)


def historical_features(store: Any, entity_df: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """Point-in-time join: for each row (entity ids, event_timestamp) the latest feature row at or before it."""
    return store.get_historical_features(entity_df=entity_df, features=features).to_df()
