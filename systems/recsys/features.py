"""Ranker features, computed point-in-time correct from interactions (the same values Feast serves).

Feature groups (names match the Feast feature views in ``feature_repo.py``):

- user_profile: age_bucket, gender_code, occupation_code (static)
- user_activity: n_interactions, recent_items (last 20 item_idx) — batch, daily snapshots; plus the
  user_realtime view that the stream processor pushes (recent items of the live session)
- item_stats: pop_all, pop_7d, mean_rating — daily snapshots: the value at day d uses only interactions
  strictly before the start of day d, so a training row at time t never sees its own future.
- context: hour of day and day of week of the request (cyclic)
- pair: two-tower score, content similarity to the history, genre affinity, candidate source
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

DAY = 86400
RECENT = 20
PRIOR_N, PRIOR_MEAN = 5.0, 3.5  # Bayesian smoothing of an item's mean rating
ITEM_STAT_NAMES = ("pop_all", "pop_7d", "mean_rating")
N_SOURCES = 3


def age_bucket(age: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(age) // 10, 0, 7).astype(np.int64)


@dataclass
class ItemStatsSnapshots:
    """Daily item statistics: values[d] (n_items, 3) are valid from day_start(d) on."""

    t0: int
    values: np.ndarray  # (n_days, n_items, 3) float32: log1p(pop_all), log1p(pop_7d), smoothed mean rating

    def day_of(self, ts: np.ndarray | int) -> np.ndarray:
        d = (np.asarray(ts, dtype=np.int64) - self.t0) // DAY
        return np.clip(d, 0, len(self.values) - 1)

    def at(self, ts: int) -> np.ndarray:
        """(n_items, 3) stats as of time ts."""
        return self.values[int(self.day_of(ts))]

    def latest(self) -> np.ndarray:
        return self.values[-1]

    def to_frame(self) -> pd.DataFrame:
        """Long table for the Feast offline store: item_id, event_timestamp, pop_all, pop_7d, mean_rating."""
        n_days, n_items, _ = self.values.shape
        day = np.repeat(np.arange(n_days), n_items)
        item = np.tile(np.arange(n_items), n_days)
        flat = self.values.reshape(-1, 3)
        return pd.DataFrame(
            {
                "item_id": item + 1,
                "event_timestamp": pd.to_datetime(self.t0 + day * DAY, unit="s", utc=True),
                "pop_all": flat[:, 0],
                "pop_7d": flat[:, 1],
                "mean_rating": flat[:, 2],
            }
        )


def item_stats_snapshots(inter: pd.DataFrame, n_items: int, *, until: int) -> ItemStatsSnapshots:
    """Daily snapshots from the first interaction's day up to ``until`` (inclusive of the day containing it)."""
    ts = inter["ts"].to_numpy()
    t0 = int(ts.min() // DAY * DAY)
    n_days = int((until - t0) // DAY) + 1
    day = (ts - t0) // DAY
    item = inter["item_idx"].to_numpy()
    rating = inter["rating"].to_numpy().astype(np.float64)
    keep = day < n_days
    counts = np.zeros((n_days + 1, n_items))
    sums = np.zeros((n_days + 1, n_items))
    np.add.at(counts, (day[keep] + 1, item[keep]), 1.0)
    np.add.at(sums, (day[keep] + 1, item[keep]), rating[keep])
    # cum[d] = interactions strictly before day d starts
    cum_c = np.cumsum(counts, axis=0)[:n_days]
    cum_s = np.cumsum(sums, axis=0)[:n_days]
    week = cum_c - np.vstack([np.zeros((7, n_items)), cum_c[:-7]])[:n_days] if n_days > 7 else cum_c
    out = np.stack(
        [np.log1p(cum_c), np.log1p(week), (cum_s + PRIOR_N * PRIOR_MEAN) / (cum_c + PRIOR_N)], axis=-1
    ).astype(np.float32)
    return ItemStatsSnapshots(t0=t0, values=out)


def context_features(ts: np.ndarray) -> np.ndarray:
    """(N, 4) cyclic hour-of-day and day-of-week of request times (UTC)."""
    ts = np.asarray(ts, dtype=np.float64)
    hour = (ts % DAY) / 3600.0
    dow = ((ts // DAY) + 4) % 7  # 1970-01-01 was a Thursday
    return np.stack(
        [
            np.sin(2 * np.pi * hour / 24),
            np.cos(2 * np.pi * hour / 24),
            np.sin(2 * np.pi * dow / 7),
            np.cos(2 * np.pi * dow / 7),
        ],
        axis=-1,
    ).astype(np.float32)


def dense_feature_names(genre_names: list[str]) -> list[str]:
    return (
        ["user_log_n"]
        + list(ITEM_STAT_NAMES)
        + ["year"]
        + ["hour_sin", "hour_cos", "dow_sin", "dow_cos"]
        + ["tt_score", "content_sim", "genre_affinity"]
        + [f"src_{s}" for s in ("two_tower", "content", "popularity")]
        + [f"genre_{g}" for g in genre_names]
    )


def rank_features(
    *,
    items: np.ndarray,
    history: list[int],
    request_ts: int,
    item_stats: np.ndarray,
    item_year: np.ndarray,
    genres: np.ndarray,
    tt_score: np.ndarray,
    content_sim: np.ndarray,
    source_code: np.ndarray,
) -> np.ndarray:
    """Dense features (n_candidates, n_dense) of one request's candidates, in ``dense_feature_names`` order.

    items (n,) item_idx; item_stats (n_catalogue, 3) as of the request; genres (n_catalogue, G).
    """
    n = len(items)
    g = genres[items]  # (n, G)
    if history:
        hist_g = genres[np.asarray(history[-50:], dtype=np.int64)].mean(0)
        affinity = g @ hist_g / np.maximum(g.sum(1), 1.0)
    else:
        affinity = np.zeros(n, dtype=np.float32)
    src = np.zeros((n, N_SOURCES), dtype=np.float32)
    src[np.arange(n), source_code] = 1.0
    cols = [
        np.full((n, 1), np.log1p(len(history)), dtype=np.float32),
        item_stats[items],
        ((item_year[items] - 1990) / 10.0)[:, None],
        np.repeat(context_features(np.array([request_ts])), n, axis=0),
        np.stack([tt_score, content_sim, affinity], axis=-1),
        src,
        g,
    ]
    return np.concatenate([np.asarray(c, dtype=np.float32) for c in cols], axis=1)
