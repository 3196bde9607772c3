"""The evaluation protocol: temporal leave-last-k-out with a validation window before the test window.

For every user with enough history, in time order::

    |------------------- fit --------------------|-- val (k) --|-- test (k) --|

*test* is the user's last ``k`` interactions, *val* the ``k`` before them. Every model is tuned on val while
fitted on ``fit`` only, then refitted with the chosen settings on ``fit + val`` and scored once on test. A
request is made at the time of the first held-out interaction, so time-aware models (trending, recency
features) see only what happened before it.

Why not one global time cut: MovieLens users rate in bursts, so a cut at the 80th time percentile leaves ~110
ML-100k users active on both sides — too few to separate models (run-to-run noise was as large as the gaps).
Leave-last-k gives every user a test case (943 on ML-100k, 6,040 on ML-1M). The price: collaborative models
also learn from *other* users' interactions that happened after a test user's request time (the leakage of
leave-one-out studies, Ji et al. 2023); every model, ours and the peers, sees the same training rows, so the
comparison stays fair, and the time-aware signals are computed strictly at the request time.

Metrics rank the whole catalogue (items the user already has are masked, nothing is sampled): NDCG@10,
Recall@10/50, MRR@50 per user, plus coverage@10 and novelty@10 of the lists. Every number gets a 95 %
bootstrap interval over users; a ratio of two models on the same users gets a *paired* interval.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from systems.common.bench import bootstrap_ci
from systems.recsys.dataset import histories, matrix

K_MAX = 50
N_BOOT = 1000


@dataclass
class Holdout:
    """One evaluation stage: the rows models may learn from, and each evaluated user's held-out items."""

    fit: pd.DataFrame  # time-sorted user_idx, item_idx, ts, weight
    users: np.ndarray  # (U,) user_idx evaluated
    truth: list[np.ndarray]  # per evaluated user, the held-out item_idx (not already in the user's fit rows)
    request_ts: np.ndarray  # (U,) time of the user's first held-out interaction
    n_users: int
    n_items: int
    _matrix: sp.csr_matrix | None = field(default=None, repr=False)
    _hist: list[np.ndarray] | None = field(default=None, repr=False)

    @property
    def seen(self) -> sp.csr_matrix:
        if self._matrix is None:
            self._matrix = matrix(self.fit, self.n_users, self.n_items)
        return self._matrix

    @property
    def histories(self) -> list[np.ndarray]:
        if self._hist is None:
            self._hist = histories(self.fit, self.n_users)
        return self._hist


def serving_stage(inter: pd.DataFrame, *, n_users: int, n_items: int) -> Holdout:
    """The whole log as fit rows and no evaluated users: what the served model is refitted on."""
    z = np.zeros(0, dtype=np.int64)
    return Holdout(fit=inter.reset_index(drop=True), users=z, truth=[], request_ts=z, n_users=n_users, n_items=n_items)


def request_stage(stage: Holdout, users: np.ndarray, request_ts: np.ndarray) -> Holdout:
    """Requests against a fitted stage (same rows and caches), with nothing held out."""
    out = Holdout(
        fit=stage.fit,
        users=np.asarray(users, dtype=np.int64),
        truth=[np.zeros(0, dtype=np.int64) for _ in users],
        request_ts=np.asarray(request_ts, dtype=np.int64),
        n_users=stage.n_users,
        n_items=stage.n_items,
        _matrix=stage._matrix,
        _hist=stage._hist,
    )
    for attr in ("_rank_cache", "_last_ts"):
        if hasattr(stage, attr):
            setattr(out, attr, getattr(stage, attr))
    return out


@dataclass
class Protocol:
    val: Holdout
    test: Holdout
    k: int
    meta: dict[str, float]


def leave_last_k(
    inter: pd.DataFrame,
    *,
    n_users: int,
    n_items: int,
    k: int = 5,
    min_fit: int = 5,
    max_users: int | None = None,
    seed: int = 0,
) -> Protocol:
    """Split a time-sorted log into (fit → val) and (fit + val → test), see the module docstring.

    Users with fewer than ``2k + min_fit`` interactions are never evaluated (they stay in every fit set).
    ``max_users`` evaluates a seeded random subset (the same users in val and test) to bound the cost.
    """
    df = inter.reset_index(drop=True)
    pos_from_end = df.groupby("user_idx").cumcount(ascending=False).to_numpy()  # 0 = the user's last row
    size = df.groupby("user_idx")["item_idx"].transform("size").to_numpy()
    eligible = size >= 2 * k + min_fit
    is_test = eligible & (pos_from_end < k)
    is_val = eligible & (pos_from_end >= k) & (pos_from_end < 2 * k)
    users = np.unique(df.loc[eligible, "user_idx"].to_numpy())
    if max_users is not None and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))
    test_rows, val_rows = df[is_test], df[is_val]
    fit_test = df[~is_test].reset_index(drop=True)
    fit_val = df[~is_test & ~is_val].reset_index(drop=True)
    val = _holdout(fit_val, val_rows, users, n_users, n_items)
    test = _holdout(fit_test, test_rows, users, n_users, n_items)
    meta = {
        "k": float(k),
        "eligible_users": float(len(np.unique(df.loc[eligible, "user_idx"]))),
        "val_users": float(len(val.users)),
        "test_users": float(len(test.users)),
        "fit_rows_val": float(len(fit_val)),
        "fit_rows_test": float(len(fit_test)),
        "test_rows": float(sum(len(t) for t in test.truth)),
    }
    return Protocol(val=val, test=test, k=k, meta=meta)


def _holdout(fit: pd.DataFrame, held: pd.DataFrame, users: np.ndarray, n_users: int, n_items: int) -> Holdout:
    seen = matrix(fit, n_users, n_items)
    held = held[held["user_idx"].isin(set(users.tolist()))]
    by_user = {int(u): g for u, g in held.groupby("user_idx")}
    keep_u, truth, req = [], [], []
    for u in users:
        g = by_user.get(int(u))
        if g is None:
            continue
        have = set(seen[int(u)].indices.tolist())
        items = np.unique([i for i in g["item_idx"].tolist() if i not in have])
        if len(items) == 0:  # only repeats of known items: nothing a seen-masked ranking could find
            continue
        keep_u.append(int(u))
        truth.append(items.astype(np.int64))
        req.append(int(g["ts"].min()))
    return Holdout(
        fit=fit,
        users=np.asarray(keep_u, dtype=np.int64),
        truth=truth,
        request_ts=np.asarray(req, dtype=np.int64),
        n_users=n_users,
        n_items=n_items,
        _matrix=seen,
    )


# ---------------------------------------------------------------------------------------------- ranking


def mask_and_topk(scores: np.ndarray, users: np.ndarray, seen: sp.csr_matrix, k: int = K_MAX) -> np.ndarray:
    """Top-k item indices per row (best first) after masking each user's seen items: (U, k)."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    sub = seen[users]
    rows = np.repeat(np.arange(len(users)), np.diff(sub.indptr))
    scores[rows, sub.indices] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def rank_all(
    score_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], stage: Holdout, *, batch: int = 512
) -> np.ndarray:
    """(U, K_MAX) top lists of ``score_fn(user_idx, request_ts) -> (B, n_items)`` over the stage's users."""
    out = []
    for s in range(0, len(stage.users), batch):
        u, t = stage.users[s : s + batch], stage.request_ts[s : s + batch]
        out.append(mask_and_topk(score_fn(u, t), u, stage.seen))
    return np.concatenate(out) if out else np.zeros((0, K_MAX), dtype=np.int64)


# ---------------------------------------------------------------------------------------------- metrics

_DISCOUNT = 1.0 / np.log2(np.arange(2, K_MAX + 2))


def per_user_metrics(ranked: np.ndarray, truth: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-user NDCG@10, Recall@10, Recall@50 and MRR@50 (binary relevance) of (U, >=50) ranked lists."""
    n = len(truth)
    ndcg10, r10, r50, mrr = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    for row, (top, rel) in enumerate(zip(ranked, truth, strict=True)):
        hits = np.isin(top[:K_MAX], rel)
        n_rel = len(rel)
        ideal = _DISCOUNT[: min(n_rel, 10)].sum()
        ndcg10[row] = _DISCOUNT[:10][hits[:10]].sum() / ideal
        r10[row] = hits[:10].sum() / n_rel
        r50[row] = hits.sum() / n_rel
        first = np.flatnonzero(hits)
        mrr[row] = 1.0 / (first[0] + 1) if len(first) else 0.0
    return {"ndcg@10": ndcg10, "recall@10": r10, "recall@50": r50, "mrr@50": mrr}


def list_metrics(ranked: np.ndarray, *, n_items: int, item_pop: np.ndarray) -> dict[str, float]:
    """Coverage@10 (share of the catalogue in anyone's top 10) and novelty@10 (mean self-information of the
    recommended items, -log2 of their share of training interactions: higher = less obvious items)."""
    top = ranked[:, :10]
    share = np.maximum(item_pop, 1.0) / max(float(item_pop.sum()), 1.0)
    return {
        "coverage@10": float(len(np.unique(top[top >= 0])) / n_items),
        "novelty@10": float(np.mean(-np.log2(share[np.clip(top, 0, None)]))) if top.size else 0.0,
    }


def mean_ci(values: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0) -> list[float]:
    """95 % percentile bootstrap interval of the mean of per-user values (``common.bench.bootstrap_ci``).

    Every call with the same seed resamples the same user rows, so intervals of different models are
    computed on the same resamples.
    """
    return list(bootstrap_ci(np.mean, values, n_boot=n_boot, seed=seed))


def ratio_ci(a: np.ndarray, b: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0) -> list[float]:
    """95 % paired bootstrap interval of mean(a) / mean(b): the same users resampled for both."""

    def ratio(x: np.ndarray, y: np.ndarray) -> float:
        return float(x.mean() / max(float(y.mean()), 1e-12))

    return list(bootstrap_ci(ratio, a, b, n_boot=n_boot, seed=seed))


def coverage_ci(ranked: np.ndarray, n_items: int, *, n_boot: int = 200, seed: int = 0) -> list[float]:
    """Coverage depends on the set of users, so it is recomputed on (fewer) resamples of the lists."""

    def coverage(rows: np.ndarray) -> float:
        return len(np.unique(rows[:, :10])) / n_items

    return list(bootstrap_ci(coverage, ranked, n_boot=n_boot, seed=seed))


def summarise(
    ranked: np.ndarray, stage: Holdout, *, item_pop: np.ndarray, n_boot: int | None = None, seed: int = 0
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Means (and, when ``n_boot`` is given, 95 % CIs) of every metric; also returns the per-user arrays."""
    per_user = per_user_metrics(ranked, stage.truth)
    out: dict[str, Any] = {m: float(v.mean()) for m, v in per_user.items()}
    out.update(list_metrics(ranked, n_items=stage.n_items, item_pop=item_pop))
    out["users"] = len(stage.users)
    if n_boot is not None:
        out["ci95"] = {m: mean_ci(v, n_boot=n_boot, seed=seed) for m, v in per_user.items()}
        out["ci95"]["novelty@10"] = mean_ci(_novelty_per_user(ranked, item_pop), n_boot=n_boot, seed=seed)
        out["ci95"]["coverage@10"] = coverage_ci(ranked, stage.n_items, seed=seed)
    return out, per_user


def _novelty_per_user(ranked: np.ndarray, item_pop: np.ndarray) -> np.ndarray:
    share = np.maximum(item_pop, 1.0) / max(float(item_pop.sum()), 1.0)
    return np.asarray(-np.log2(share[np.clip(ranked[:, :10], 0, None)])).mean(axis=1)
