"""Interactions and the temporal split.

MovieLens-100k ratings are treated as implicit interactions (a rating = the user engaged with the item).
The split is by **time**: one global cut, so nothing after the cut can leak into training features, and a
second, earlier cut inside training gives the window the ranker learns from::

    |------------- base -------------|---- label ----|------ test ------|
                                  val_cut         test_cut

Ids: ``user_idx = user_id - 1`` and ``item_idx = item_id - 1`` (MovieLens ids are contiguous from 1), so
arrays indexed by ``item_idx`` line up with the catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from systems.common.data import load_movielens
from systems.common.settings import MlsdSettings


@dataclass
class Catalogue:
    """Items and users with dense attributes, indexed by item_idx / user_idx."""

    items: pd.DataFrame  # item_idx, item_id, title, year, genres (list), genre flags
    users: pd.DataFrame  # user_idx, user_id, age, gender_code, occupation_code
    genre_names: list[str]
    genre_matrix: np.ndarray  # (n_items, n_genres) float32 multi-hot

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_users(self) -> int:
        return len(self.users)


@dataclass
class Split:
    """A temporal split of interactions (columns user_idx, item_idx, ts)."""

    train: pd.DataFrame
    test: pd.DataFrame
    cut_ts: int
    n_users: int
    n_items: int
    meta: dict[str, float] = field(default_factory=dict)

    def train_matrix(self) -> sp.csr_matrix:
        """(n_users, n_items) binary CSR of training interactions."""
        return interactions_matrix(self.train, self.n_users, self.n_items)

    def test_truth(self) -> dict[int, set[int]]:
        """user_idx -> held-out items, for users that have training history (warm users)."""
        warm = set(self.train["user_idx"].unique())
        test = self.test[self.test["user_idx"].isin(warm)]
        return {int(u): set(g["item_idx"].tolist()) for u, g in test.groupby("user_idx")}


def load_catalogue_and_interactions(settings: MlsdSettings | None = None) -> tuple[Catalogue, pd.DataFrame]:
    """The MovieLens catalogue and its interactions (user_idx, item_idx, ts, rating), sorted by time."""
    ml = load_movielens(settings)
    genre_names = [c for c in ml.items.columns if c not in ("item_id", "title", "release_date", "genres")]
    items = ml.items.sort_values("item_id").reset_index(drop=True)
    items.insert(0, "item_idx", items["item_id"] - 1)
    items["year"] = items["release_date"].dt.year.fillna(1990).astype("int64")
    users = ml.users.sort_values("user_id").reset_index(drop=True)
    users.insert(0, "user_idx", users["user_id"] - 1)
    users["gender_code"] = users["gender"].cat.codes.astype("int64")
    users["occupation_code"] = users["occupation"].cat.codes.astype("int64")
    catalogue = Catalogue(
        items=items,
        users=users,
        genre_names=genre_names,
        genre_matrix=items[genre_names].to_numpy(dtype=np.float32),
    )
    r = ml.ratings
    inter = pd.DataFrame(
        {
            "user_idx": r["user_id"].to_numpy() - 1,
            "item_idx": r["item_id"].to_numpy() - 1,
            "ts": r["timestamp"].to_numpy(),
            "rating": r["rating"].to_numpy(),
        }
    )
    # Stable sort on (ts, user, item): ties in the timestamp get a fixed order, so runs are reproducible.
    inter = inter.sort_values(["ts", "user_idx", "item_idx"], kind="mergesort").reset_index(drop=True)
    return catalogue, inter


def temporal_split(inter: pd.DataFrame, *, test_fraction: float, n_users: int, n_items: int) -> Split:
    """Global time cut: the last ``test_fraction`` of interactions (by timestamp) are the test set.

    Test rows whose (user, item) pair already occurs in training are dropped: a seen item is not a
    recommendation target (and the recommenders filter it anyway).
    """
    cut = int(np.quantile(inter["ts"].to_numpy(), 1.0 - test_fraction))
    train = inter[inter["ts"] < cut].reset_index(drop=True)
    test = inter[inter["ts"] >= cut]
    seen = set(zip(train["user_idx"].to_numpy(), train["item_idx"].to_numpy(), strict=True))
    keep = [(u, i) not in seen for u, i in zip(test["user_idx"], test["item_idx"], strict=True)]
    test = test[np.asarray(keep, dtype=bool)].reset_index(drop=True)
    warm = test["user_idx"].isin(set(train["user_idx"].unique()))
    meta = {
        "cut_ts": float(cut),
        "train_rows": float(len(train)),
        "test_rows": float(len(test)),
        "test_users_warm": float(test.loc[warm, "user_idx"].nunique()),
        "test_users_cold": float(test.loc[~warm, "user_idx"].nunique()),
    }
    return Split(train=train, test=test, cut_ts=cut, n_users=n_users, n_items=n_items, meta=meta)


def interactions_matrix(df: pd.DataFrame, n_users: int, n_items: int) -> sp.csr_matrix:
    """Binary (n_users, n_items) CSR from (user_idx, item_idx) rows; duplicates count once."""
    m = sp.csr_matrix(
        (np.ones(len(df), dtype=np.float32), (df["user_idx"].to_numpy(), df["item_idx"].to_numpy())),
        shape=(n_users, n_items),
    )
    m.data[:] = 1.0
    return m


def user_histories(df: pd.DataFrame, n_users: int) -> list[list[int]]:
    """Per user_idx, its item_idx in time order (df must be time-sorted)."""
    hist: list[list[int]] = [[] for _ in range(n_users)]
    for u, i in zip(df["user_idx"].to_numpy(), df["item_idx"].to_numpy(), strict=True):
        hist[int(u)].append(int(i))
    return hist


def pad_histories(hists: list[list[int]], max_len: int, pad: int) -> np.ndarray:
    """Last ``max_len`` items of each history, right-aligned, left-padded with ``pad``: (N, max_len) int64."""
    out = np.full((len(hists), max_len), pad, dtype=np.int64)
    for r, h in enumerate(hists):
        tail = h[-max_len:]
        if tail:
            out[r, max_len - len(tail) :] = tail
    return out


def slice_users(inter: pd.DataFrame, n_users: int, seed: int = 0) -> pd.DataFrame:
    """Interactions of a random subset of ``n_users`` users (the small CI slice); ids are kept."""
    rng = np.random.default_rng(seed)
    users = np.sort(rng.choice(inter["user_idx"].unique(), size=n_users, replace=False))
    return inter[inter["user_idx"].isin(users)].reset_index(drop=True)
