"""Feast: point-in-time training features match the in-memory path; the Redis online store end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from systems.recsys.feature_store import HISTORY_KEEP, historical_features, online_user, open_store, push_realtime
from systems.recsys.features import DAY, ItemStatsSnapshots
from systems.recsys.settings import RecsysSettings
from tests.recsys_support import ci_split

pytestmark = pytest.mark.integration


def test_historical_features_are_point_in_time(recsys_settings: RecsysSettings) -> None:
    store = open_store(recsys_settings)
    stats = pd.read_parquet(recsys_settings.feast_dir / "data" / "item_stats.parquet")
    t0 = int(stats["event_timestamp"].min().timestamp())
    days = stats["event_timestamp"].nunique()
    values = stats.sort_values(["event_timestamp", "item_id"])[["pop_all", "pop_7d", "mean_rating"]].to_numpy()
    snaps = ItemStatsSnapshots(t0=t0, values=values.reshape(days, -1, 3))
    rng = np.random.default_rng(0)
    ts = rng.integers(t0 + 86400, t0 + days * 86400, 50)
    items = rng.integers(1, 1683, 50)
    entity = pd.DataFrame({"item_id": items, "event_timestamp": pd.to_datetime(ts, unit="s", utc=True)})
    got = historical_features(store, entity, ["item_stats:pop_all", "item_stats:pop_7d"])
    got = got.sort_values(["event_timestamp", "item_id"]).reset_index(drop=True)
    # Feast's join picks the snapshot valid at t (not the latest one) ...
    train = ci_split(recsys_settings).train  # the interactions the tables were built from, recomputed
    expect = pd.DataFrame({"item_id": items, "ts": ts})
    expect["pop_all"] = [snaps.at(int(t))[i - 1, 0] for t, i in zip(ts, items, strict=True)]
    # ... and that snapshot counts exactly the item's interactions before the start of t's day: none after t
    day_start = t0 + (ts - t0) // DAY * DAY
    by_item = train.groupby("item_idx")["ts"]
    expect["n_before"] = [
        int((by_item.get_group(i - 1) < d).sum()) if i - 1 in by_item.groups else 0
        for i, d in zip(items, day_start, strict=True)
    ]
    expect = expect.sort_values(["ts", "item_id"]).reset_index(drop=True)
    np.testing.assert_allclose(got["pop_all"].to_numpy(), expect["pop_all"].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.expm1(got["pop_all"].to_numpy()), expect["n_before"].to_numpy(), atol=1e-3)
    assert expect["n_before"].sum() > 0  # not a vacuous comparison of zeros
    # user_activity: the row valid from time t holds exactly the user's interactions before t (the latest
    # HISTORY_KEEP of them), so a training row never sees its future and the day's own clicks are included
    act = pd.read_parquet(recsys_settings.feast_dir / "data" / "user_activity.parquet")
    by_user = {int(u) + 1: g for u, g in train.groupby("user_idx")}
    assert set(act["user_id"]) == set(by_user)
    for row in act.itertuples():
        g = by_user[row.user_id]
        before = g[g["ts"] < row.event_timestamp.timestamp()]
        assert row.n_interactions == len(before), row
        assert list(row.recent_items) == (before["item_idx"].to_numpy()[-HISTORY_KEEP:] + 1).tolist(), row


def test_redis_online_store_end_to_end(recsys_redis_settings: RecsysSettings) -> None:
    s = recsys_redis_settings
    store = open_store(s)
    feats = online_user(store, 1)
    assert feats["age_bucket"] is not None and feats["recent_items"]
    with TestClient(__import__("systems.recsys.serve", fromlist=["create_app"]).create_app(s)) as client:
        before = client.get("/recommend", params={"user_id": 1, "k": 10}).json()
        top = before["items"][0]["item_id"]
        push_realtime(store, [{"user_id": 1, "session_items": [top], "last_event_ms": 1, "session_vector": [0.0] * 64}])
        after = client.get("/recommend", params={"user_id": 1, "k": 10}).json()
        assert top not in [i["item_id"] for i in after["items"]]
        assert client.get("/recommend", params={"user_id": 77_777_777}).json()["cold_start"] is True
        assert client.get("/recommend", params={"k": -1}).status_code == 422
