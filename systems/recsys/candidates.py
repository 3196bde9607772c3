"""Candidate generation: two-tower ANN, content (text) similarity, popularity/trending; merged and de-duplicated.

Each source answers ``(item_idx array, score array)`` for one user; :func:`merge_candidates` keeps the first
source that produced an item (sources are ordered by trust) and records which source it came from, which the
API returns so a reader can see where every recommendation came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SOURCES = ("two_tower", "content", "popularity")


# The serving default at 1 M items, chosen by the ANN sweep in ``bench.py`` (see the README's "ANN choice"):
# IVF with 1,024 lists, 4-bit PQ codes (one 16-level code per dimension, SIMD "fast scan"), then the top
# k x REFINE_K_FACTOR candidates re-scored with the exact float vectors.
DEFAULT_IVF_FACTORY = "IVF1024,PQ64x4fs,RFlat"
DEFAULT_NPROBE = 40
REFINE_K_FACTOR = 8


@dataclass
class AnnIndex:
    """Inner-product search over L2-normalised item vectors with faiss.

    ``kind="ivf"``: any faiss index-factory string with an inverted file (``factory``, e.g.
    ``"IVF1024,PQ64x4fs,RFlat"``); k-means training, then a query scans the ``nprobe`` nearest lists.
    ``kind="hnsw"``: HNSW graph (M links per node, efSearch beam), no training step, incremental adds.
    ``kind="exact"``: brute force (IndexFlatIP), the ground truth for recall.
    ``search_param`` is the recall/speed knob of each: nprobe (ivf) or efSearch (hnsw).
    """

    index: Any
    kind: str
    dim: int
    factory: str = ""

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        *,
        kind: str = "hnsw",
        m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 64,
        factory: str = DEFAULT_IVF_FACTORY,
        nprobe: int = DEFAULT_NPROBE,
        build_threads: int = 1,
    ) -> AnnIndex:
        import faiss

        faiss.omp_set_num_threads(build_threads)
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        d = x.shape[1]
        index: Any
        if kind == "exact":
            index = faiss.IndexFlatIP(d)
            factory = "Flat"
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = ef_search
            factory = f"HNSW{m},efConstruction={ef_construction}"
        elif kind == "ivf":
            index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
            index.train(x)  # k-means for the lists (+ PQ codebooks): seconds to a minute at 1 M x 64
        else:
            raise ValueError(f"unknown index kind {kind!r}")
        index.add(x)
        # One query per request: OpenMP threads only add wake-up cost, and spin-wait badly on shared cores.
        faiss.omp_set_num_threads(1)
        out = cls(index=index, kind=kind, dim=d, factory=factory)
        if kind == "ivf":
            out.set_search_param(nprobe)
        return out

    def set_search_param(self, value: int) -> None:
        """efSearch (hnsw) or nprobe (ivf); a no-op for exact search."""
        import faiss

        if self.kind == "hnsw":
            self.index.hnsw.efSearch = value
        elif self.kind == "ivf":
            faiss.extract_index_ivf(self.index).nprobe = value
            if isinstance(self.index, faiss.IndexRefine):
                self.index.k_factor = REFINE_K_FACTOR  # re-score 8k PQ candidates exactly (not saved by faiss)

    @property
    def search_param(self) -> int:
        import faiss

        if self.kind == "hnsw":
            return int(self.index.hnsw.efSearch)
        if self.kind == "ivf":
            return int(faiss.extract_index_ivf(self.index).nprobe)
        return 0

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries (Q, d) -> (scores (Q, k), item_idx (Q, k)); -1 ids when fewer than k exist."""
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        scores, ids = self.index.search(q, k)
        return scores, ids

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def save(self, path: str) -> None:
        import faiss

        faiss.write_index(self.index, path)

    @classmethod
    def load(cls, path: str, kind: str, factory: str = "") -> AnnIndex:
        import faiss

        faiss.omp_set_num_threads(1)
        index = faiss.read_index(path)  # already the concrete class (never downcast_index it: that drops ownership)
        return cls(index=index, kind=kind, dim=int(index.d), factory=factory)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean |approx top-k ∩ exact top-k| / k over queries."""
    hits = [len(set(a[:k].tolist()) & set(e[:k].tolist())) for a, e in zip(approx_ids, exact_ids, strict=True)]
    return float(np.mean(hits) / k)


def popularity_scores(
    item_idx: np.ndarray, ts: np.ndarray, n_items: int, *, now: int, half_life_days: float
) -> np.ndarray:
    """Trending score per item: interactions before ``now`` with exponential time decay (half-life in days).

    half_life_days = inf gives all-time popularity.
    """
    before = ts < now
    age_days = (now - ts[before]) / 86400.0
    w = np.ones_like(age_days) if np.isinf(half_life_days) else 0.5 ** (age_days / half_life_days)
    return np.bincount(item_idx[before], weights=w, minlength=n_items).astype(np.float64)


def top_items(scores: np.ndarray, k: int, exclude: set[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Best-k items of a score vector, skipping ``exclude``."""
    k_extra = min(len(scores), k + (len(exclude) if exclude else 0))
    idx = np.argpartition(-scores, k_extra - 1)[:k_extra]
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    if exclude:
        idx = np.array([i for i in idx if int(i) not in exclude], dtype=np.int64)
    idx = idx[:k]
    return idx, scores[idx]


def content_profile(history: list[int], content: np.ndarray, max_len: int = 20) -> np.ndarray | None:
    """Mean text embedding of the recent history, normalised; None for an empty history."""
    if not history:
        return None
    v = content[np.asarray(history[-max_len:], dtype=np.int64)].mean(0)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else None


def merge_candidates(
    sources: list[tuple[str, np.ndarray, np.ndarray]], *, exclude: set[int], limit: int
) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
    """Round-robin merge of ranked source lists, de-duplicated, without ``exclude``, up to ``limit`` items.

    Round-robin (not concatenation) so that every source gets a share of the ranker's budget even when the
    first source alone could fill it. Returns (items, source of each item, per-source score lookup).
    """
    seen: set[int] = set(exclude)
    items: list[int] = []
    origin: list[str] = []
    lists = [(name, ids.tolist()) for name, ids, _ in sources]
    pos = [0] * len(lists)
    while len(items) < limit and any(p < len(lst) for p, (_, lst) in zip(pos, lists, strict=True)):
        for j, (name, lst) in enumerate(lists):
            while pos[j] < len(lst):
                i = int(lst[pos[j]])
                pos[j] += 1
                if i >= 0 and i not in seen:
                    seen.add(i)
                    items.append(i)
                    origin.append(name)
                    break
            if len(items) >= limit:
                break
    scores = {name: s for name, _, s in sources}
    return np.asarray(items, dtype=np.int64), origin, scores
