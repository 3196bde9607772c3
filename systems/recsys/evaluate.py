"""Offline evaluation by full ranking over the whole catalogue (no sampled negatives).

Every model produces a score for every item; items the user interacted with in training are masked to
-inf; the top-K of what remains is compared with the user's held-out future items.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp


def mask_seen(scores: np.ndarray, users: np.ndarray, seen: sp.csr_matrix) -> np.ndarray:
    """Set scores of already-seen items to -inf in place. scores (U, n_items), users (U,) user_idx."""
    sub = seen[users]
    rows = np.repeat(np.arange(len(users)), np.diff(sub.indptr))
    scores[rows, sub.indices] = -np.inf
    return scores


def topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores per row, best first: (U, k)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def ranking_metrics(
    ranked: np.ndarray, truth: list[set[int]], *, n_items: int, ks: tuple[int, ...] = (10, 50)
) -> dict[str, float]:
    """Recall@K, NDCG@K (binary relevance) and catalogue coverage@10 of ranked lists.

    ranked (U, >=max(ks)) item indices best first; truth[u] the held-out items of row u.
    Recall@K = |top-K ∩ truth| / |truth|  (the usual definition; it is < 1 when |truth| > K).
    """
    out: dict[str, float] = {}
    discounts = 1.0 / np.log2(np.arange(2, max(ks) + 2))
    for k in ks:
        recalls, ndcgs = [], []
        for row, rel in zip(ranked[:, :k], truth, strict=True):
            hits = np.fromiter((i in rel for i in row), dtype=bool, count=len(row))
            recalls.append(hits.sum() / len(rel))
            ideal = discounts[: min(len(rel), k)].sum()
            ndcgs.append((discounts[: len(row)][hits]).sum() / ideal)
        out[f"recall@{k}"] = float(np.mean(recalls))
        out[f"ndcg@{k}"] = float(np.mean(ndcgs))
    out["coverage@10"] = float(len(np.unique(ranked[:, :10])) / n_items)
    out["users"] = float(len(truth))
    return out


def evaluate_scorer(
    score_fn: Callable[[np.ndarray], np.ndarray],
    truth: dict[int, set[int]],
    seen: sp.csr_matrix,
    *,
    n_items: int,
    k_max: int = 50,
    batch: int = 256,
) -> dict[str, float]:
    """Full-ranking metrics of ``score_fn(user_idx array) -> (U, n_items) scores`` over the test users."""
    users = np.array(sorted(truth), dtype=np.int64)
    ranked = []
    for s in range(0, len(users), batch):
        ub = users[s : s + batch]
        scores = np.asarray(score_fn(ub), dtype=np.float64).copy()
        ranked.append(topk(mask_seen(scores, ub, seen), k_max))
    return ranking_metrics(np.concatenate(ranked), [truth[int(u)] for u in users], n_items=n_items)
