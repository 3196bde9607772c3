"""One loader interface for any interaction log: public ids mapped to indices once, here and in the API.

An :class:`InteractionLog` is (user, item, timestamp, optional weight) rows plus optional item metadata (title,
categories) and optional user features. Public ids are whatever the source uses — sparse integers, strings —
and are turned into dense indices by an :class:`IdMap` exactly once, when the log is loaded; the API maps them
back with the same table. Nothing downstream knows a dataset's sizes or columns: they come from the data.

Adapters: ``movielens-100k`` (integer ids, user demographics), ``movielens-1m`` (string ids, no user features,
~3 years of activity) and ``synthetic`` (sparse string ids, no user features, a 10-year span; made here, for
tests). ``load_log(name)`` picks one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import BeforeValidator, Field

from systems.common.settings import MlsdSettings

DAY = 86_400

# Public ids at the edges (API requests, browse events): an integer in the signed 64-bit range (what stores and
# Kafka keys can hold) or printable text up to 128 characters (MovieLens-1M's ids are titles such as
# "American President, The (1995)"). Anything else is refused where it enters, with a message.
MAX_INT_ID = 2**63 - 1
ID_PATTERN = r"^[^\x00-\x1f\x7f]{1,128}$"
_INT_TEXT = re.compile(r"-?[0-9]{1,19}")
"""Text that is an integer id: ASCII digits only (``str.isdigit`` also accepts "³" or "٣", which ``int`` refuses
or reads as another number), at most 19 of them (a 64-bit id)."""


def _a_number(value: Any) -> Any:
    """The integer branch takes numbers only: JSON ``true`` is not the id 1 (lax validation reads a boolean as an
    integer; strict would refuse ``5.0``, which JSON Schema calls an integer), and JSON text stays a text id —
    else a text of 129 zeros, too long for the text branch, would be read as the integer 0. (``IdMap`` maps the
    text "42" to the integer id 42; a query string's digits are made integers where the query is read.)"""
    if isinstance(value, bool):
        raise ValueError("a boolean is not an id")
    if isinstance(value, str):
        raise ValueError("text is a text id")
    return value


PublicId = (
    Annotated[int, Field(ge=0, le=MAX_INT_ID), BeforeValidator(_a_number)]
    | Annotated[str, Field(pattern=ID_PATTERN, max_length=128)]
)


class UnknownDataset(ValueError):
    """A dataset name with no adapter."""


@dataclass
class IdMap:
    """Public id <-> dense index. ``ids[idx]`` is the public id; :meth:`index_of` the way back (-1 = unknown).

    Ids keep their type (int or str): an API answer carries the id exactly as the data has it.
    """

    ids: list[Any]
    _index: dict[Any, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {v: i for i, v in enumerate(self.ids)}
        if len(self._index) != len(self.ids):
            raise ValueError("IdMap ids must be unique")

    @classmethod
    def from_values(cls, values: Iterable[Any]) -> IdMap:
        """Indices in order of first appearance (the log is time-sorted, so index order is arrival order)."""
        return cls([_plain(v) for v in dict.fromkeys(values)])

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, value: Any) -> int:
        """Index of a public id, -1 when unknown. A numeric string matches an int id and an int a numeric string
        id (query strings and store keys are text)."""
        i = self._index.get(value, -1)
        if i < 0 and isinstance(value, str) and _INT_TEXT.fullmatch(value):
            i = self._index.get(int(value), -1)
        elif i < 0 and isinstance(value, int):
            i = self._index.get(str(value), -1)
        return i

    def indices(self, values: Iterable[Any]) -> np.ndarray:
        return np.fromiter((self.index_of(v) for v in values), dtype=np.int64)


def _plain(v: Any) -> Any:
    """numpy scalars -> Python ints/strs, so ids serialise to JSON and compare equal to request values."""
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.str_):
        return str(v)
    return v


@dataclass
class InteractionLog:
    """A time-sorted interaction log with dense indices and optional metadata.

    interactions: user_idx int64, item_idx int64, ts int64 (unix seconds), weight float32 (1.0 when the source
    has none), sorted by (ts, user_idx, item_idx) so every run sees the same order.
    """

    name: str
    interactions: pd.DataFrame
    users: IdMap
    items: IdMap
    item_titles: list[str] | None = None
    item_categories: list[list[str]] | None = None
    user_features: pd.DataFrame | None = None
    """Index user_idx, integer-coded categorical columns; users without a row are "unknown" (None = none at all)."""

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def title(self, item_idx: int) -> str:
        if self.item_titles is not None:
            return self.item_titles[item_idx]
        return str(self.items.ids[item_idx])

    def category_matrix(self) -> tuple[sp.csr_matrix, list[str]]:
        """(n_items, n_categories) binary CSR and the category names; zero columns when there is no metadata."""
        if not self.item_categories:
            return sp.csr_matrix((self.n_items, 0), dtype=np.float32), []
        names = sorted({c for cats in self.item_categories for c in cats})
        col = {c: j for j, c in enumerate(names)}
        rows = [i for i, cats in enumerate(self.item_categories) for _ in cats]
        cols = [col[c] for cats in self.item_categories for c in cats]
        m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(self.n_items, len(names)))
        return m, names

    def summary(self) -> dict[str, Any]:
        ts = self.interactions["ts"].to_numpy()
        per_user = np.bincount(self.interactions["user_idx"].to_numpy(), minlength=self.n_users)
        return {
            "users": self.n_users,
            "items": self.n_items,
            "interactions": len(self.interactions),
            "span_days": float((ts.max() - ts.min()) / DAY) if len(ts) else 0.0,
            "median_per_user": float(np.median(per_user)) if len(per_user) else 0.0,
            "density": len(self.interactions) / max(self.n_users * self.n_items, 1),
            "user_features": self.user_features is not None,
            "item_categories": bool(self.item_categories),
        }


def log_from_frames(
    name: str,
    events: pd.DataFrame,
    *,
    items: pd.DataFrame | None = None,
    users: pd.DataFrame | None = None,
) -> InteractionLog:
    """Build a log from public-id frames — the one place ids become indices.

    events: user_id, item_id, ts (unix seconds) [, weight]. items (optional): item_id [, title] [, categories
    (list of str)]; items without events are dropped (nothing to learn about them offline). users (optional):
    user_id plus categorical columns, integer-coded here; a user without a row gets no features.
    """
    missing = {"user_id", "item_id", "ts"} - set(events.columns)
    if missing:
        raise ValueError(f"interaction log {name!r} lacks columns {sorted(missing)}")
    ev = events.sort_values(["ts"], kind="mergesort").reset_index(drop=True)
    umap = IdMap.from_values(ev["user_id"].tolist())
    imap = IdMap.from_values(ev["item_id"].tolist())
    inter = pd.DataFrame(
        {
            "user_idx": umap.indices(ev["user_id"].tolist()),
            "item_idx": imap.indices(ev["item_id"].tolist()),
            "ts": ev["ts"].to_numpy(dtype=np.int64),
            "weight": (ev["weight"].to_numpy(dtype=np.float32) if "weight" in ev else np.ones(len(ev), np.float32)),
        }
    )
    inter = inter.sort_values(["ts", "user_idx", "item_idx"], kind="mergesort").reset_index(drop=True)
    titles: list[str] | None = None
    cats: list[list[str]] | None = None
    if items is not None:
        meta = items.drop_duplicates("item_id").set_index("item_id")
        sub = meta.reindex(imap.ids)
        if "title" in meta:
            titles = [str(t) if isinstance(t, str) else str(i) for i, t in zip(imap.ids, sub["title"], strict=True)]
        if "categories" in meta:
            cats = [list(c) if isinstance(c, list | tuple | np.ndarray) else [] for c in sub["categories"]]
    ufeat: pd.DataFrame | None = None
    if users is not None:
        u = users.drop_duplicates("user_id")
        u = u[u["user_id"].isin(set(umap.ids))]
        coded = {c: pd.Categorical(u[c]).codes.astype(np.int64) for c in u.columns if c != "user_id"}
        ufeat = pd.DataFrame(coded, index=pd.Index(umap.indices(u["user_id"].tolist()), name="user_idx"))
    return InteractionLog(
        name=name,
        interactions=inter,
        users=umap,
        items=imap,
        item_titles=titles,
        item_categories=cats,
        user_features=ufeat,
    )


# ---------------------------------------------------------------------------------------------- adapters


def movielens_100k(settings: MlsdSettings | None = None) -> InteractionLog:
    from systems.common.data import load_movielens

    ml = load_movielens(settings)
    r = ml.ratings
    events = pd.DataFrame(
        {"user_id": r["user_id"], "item_id": r["item_id"], "ts": r["timestamp"], "weight": r["rating"]}
    )
    items = pd.DataFrame({"item_id": ml.items["item_id"], "title": ml.items["title"], "categories": ml.items["genres"]})
    users = ml.users[["user_id", "gender", "occupation"]].copy()
    users["age_bucket"] = (ml.users["age"] // 10).clip(0, 7)
    return log_from_frames("movielens-100k", events, items=items, users=users)


def movielens_1m(settings: MlsdSettings | None = None) -> InteractionLog:
    from systems.common.data import load_movielens_1m

    ml = load_movielens_1m(settings)
    r = ml.ratings
    events = pd.DataFrame(
        {"user_id": r["user_id"], "item_id": r["item_id"], "ts": r["timestamp"], "weight": r["rating"]}
    )
    items = pd.DataFrame({"item_id": ml.items["item_id"], "title": ml.items["title"], "categories": ml.items["genres"]})
    return log_from_frames("movielens-1m", events, items=items)


def synthetic_events(
    *, n_users: int = 400, n_items: int = 300, per_user: int = 40, span_days: int = 3650, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A shop-like log with structure a recommender can learn, and ids that no arithmetic can recover.

    Items belong to 10 categories and form chains (``sku`` i is usually followed by i+1 within its category);
    each user prefers two categories and walks along their chains, so both co-visitation and collaborative
    signals exist. User ids are random hex strings, item ids sparse strings (``sku-<random>``); timestamps
    spread over ``span_days`` (users arrive throughout, each active for a few weeks). No user features.
    """
    rng = np.random.default_rng(seed)
    n_cat = 10
    cat_of = np.arange(n_items) % n_cat
    by_cat = [np.flatnonzero(cat_of == c) for c in range(n_cat)]
    item_ids = [f"sku-{x}" for x in rng.choice(10**9, size=n_items, replace=False)]
    user_ids = [f"u{x:012x}" for x in rng.choice(2**47, size=n_users, replace=False)]
    popularity = rng.zipf(1.6, size=n_items).astype(float)
    rows: list[tuple[str, str, int]] = []
    t_start = 1_300_000_000
    for u in range(n_users):
        favs = rng.choice(n_cat, size=2, replace=False)
        t = t_start + int(rng.uniform(0, span_days - 30) * DAY)
        pos = {int(c): int(rng.integers(len(by_cat[c]))) for c in favs}
        n = int(rng.integers(per_user // 2, per_user * 3 // 2))
        for _ in range(n):
            if rng.random() < 0.15:  # a popular item from anywhere
                i = int(rng.choice(n_items, p=popularity / popularity.sum()))
            else:
                c = int(rng.choice(favs))
                pos[c] = (pos[c] + int(rng.integers(1, 3))) % len(by_cat[c])  # next in the chain (or skip one)
                i = int(by_cat[c][pos[c]])
            t += int(rng.exponential(0.5 * DAY)) + 1
            rows.append((user_ids[u], item_ids[i], t))
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "ts"])
    items = pd.DataFrame(
        {
            "item_id": item_ids,
            "title": [f"product {x}" for x in item_ids],
            "categories": [[f"cat-{c}"] for c in cat_of],
        }
    )
    return events, items


def synthetic(settings: MlsdSettings | None = None, *, seed: int = 0, **kwargs: Any) -> InteractionLog:
    del settings
    events, items = synthetic_events(seed=seed, **kwargs)
    return log_from_frames("synthetic", events, items=items)


ADAPTERS = {"movielens-100k": movielens_100k, "movielens-1m": movielens_1m, "synthetic": synthetic}


def load_log(name: str, settings: MlsdSettings | None = None) -> InteractionLog:
    try:
        adapter = ADAPTERS[name]
    except KeyError:
        raise UnknownDataset(f"unknown interaction log {name!r}; known: {', '.join(ADAPTERS)}") from None
    return adapter(settings)


def histories(inter: pd.DataFrame, n_users: int) -> list[np.ndarray]:
    """Per user_idx, item_idx in time order (``inter`` must be time-sorted)."""
    order = np.argsort(inter["user_idx"].to_numpy(), kind="stable")
    u = inter["user_idx"].to_numpy()[order]
    i = inter["item_idx"].to_numpy()[order]
    bounds = np.searchsorted(u, np.arange(n_users + 1))
    return [i[bounds[k] : bounds[k + 1]] for k in range(n_users)]


def matrix(inter: pd.DataFrame, n_users: int, n_items: int) -> sp.csr_matrix:
    """Binary (n_users, n_items) CSR; repeated (user, item) pairs count once."""
    m = sp.csr_matrix(
        (np.ones(len(inter), dtype=np.float32), (inter["user_idx"].to_numpy(), inter["item_idx"].to_numpy())),
        shape=(n_users, n_items),
    )
    m.data[:] = 1.0
    return m


def subsample_users(log: InteractionLog, n_users: int, *, seed: int = 0) -> InteractionLog:
    """The same log restricted to a random subset of users (ids and metadata kept; indices re-made)."""
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(log.n_users, size=min(n_users, log.n_users), replace=False))
    inter = log.interactions[log.interactions["user_idx"].isin(keep)]
    events = pd.DataFrame(
        {
            "user_id": [log.users.ids[u] for u in inter["user_idx"]],
            "item_id": [log.items.ids[i] for i in inter["item_idx"]],
            "ts": inter["ts"].to_numpy(),
            "weight": inter["weight"].to_numpy(),
        }
    )
    items = pd.DataFrame({"item_id": log.items.ids})
    if log.item_titles is not None:
        items["title"] = log.item_titles
    if log.item_categories is not None:
        items["categories"] = log.item_categories
    users = None
    if log.user_features is not None:
        uf = log.user_features.loc[log.user_features.index.isin(keep)]
        users = uf.assign(user_id=[log.users.ids[u] for u in uf.index]).reset_index(drop=True)
    return log_from_frames(log.name, events, items=items, users=users)
