"""Our pipeline: candidates from the tuned peers → a LightGBM LambdaRank ranker → (optional) MMR re-rank.

Candidates are the union of each source's top ``per_source`` items (EASE, SASRec, co-visitation, item-kNN,
trending), so the ranker starts from everything the strongest peers would have shown. It then uses what no
single peer combines: every source's score and rank, the recent session (co-visitation with the last item),
freshness (days since the item was last and first seen, trending at the request time), content (category
overlap with the user's recent items, when the log has categories), the user's activity and, when the log
has them, user features.

The ranker learns on the validation stage: sources fitted on the validation fit rows produce candidates and
features for each user's validation window, labelled by what the user did there. Its validation score is
2-fold cross-fitted over users (trained on one half, scored on the other), so the gate compares it to the
peers on users it was not trained on. For the test stage the same ranker scores candidates of the sources
refitted on fit + validation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from systems.recsys.peers import CoVisit, Scorer
from systems.recsys.protocol import K_MAX, Holdout, per_user_metrics

log = logging.getLogger(__name__)
DAY = 86_400
SOURCES = ("ease", "sasrec", "covisit", "item_knn", "trending")


@dataclass
class ItemClock:
    """When each item was seen, for freshness features at any request time (O(events), not days × items)."""

    keys: np.ndarray  # sorted item_idx * 2^40 + ts
    first_ts: np.ndarray  # (n_items,) first interaction, int64 max when never seen
    last_ts: np.ndarray  # (n_items,) last interaction, -1 when never seen
    end: int  # the last interaction of all

    @classmethod
    def build(cls, stage: Holdout) -> ItemClock:
        items = stage.fit["item_idx"].to_numpy(np.int64)
        ts = stage.fit["ts"].to_numpy(np.int64)
        keys = np.sort(items * (1 << 40) + ts)
        first = np.full(stage.n_items, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, items, ts)
        last = np.full(stage.n_items, -1, dtype=np.int64)
        np.maximum.at(last, items, ts)
        return cls(keys=keys, first_ts=first, last_ts=last, end=int(ts.max()) if len(ts) else -1)

    def days_since_last(self, items: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Days between each request time and the item's last interaction before it (365·10 if none)."""
        if len(t) and int(t.min()) > self.end:  # after the log (every request when serving): the last of all
            last = self.last_ts[items]
            return np.where(last >= 0, (t - last) / DAY, 3650.0)
        q = items * (1 << 40) + t
        pos = np.searchsorted(self.keys, q, side="left") - 1
        ok = pos >= 0
        prev = self.keys[np.clip(pos, 0, None)]
        ok &= (prev >> 40) == items
        last = prev & ((1 << 40) - 1)
        return np.where(ok, (t - last) / DAY, 3650.0)

    def age_days(self, items: np.ndarray, t: np.ndarray) -> np.ndarray:
        first = self.first_ts[items]
        return np.where(first <= t, (t - first) / DAY, -1.0)


@dataclass
class Candidates:
    """One stage's candidates, flattened: row r of the features belongs to user ``group[r]``."""

    users: np.ndarray  # (U,) user rows of the stage (positions in stage.users)
    items: np.ndarray  # (N,)
    group: np.ndarray  # (N,) position in ``users``
    features: np.ndarray  # (N, F)
    label: np.ndarray  # (N,) 1 = in the user's held-out items
    group_user: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # user_idx of each group
    source_recall: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def concat(parts: Sequence[Candidates]) -> Candidates:
        """Several windows' candidates as one training set (groups renumbered, users kept for the folds)."""
        offsets = np.cumsum([0] + [len(c.group_user) for c in parts[:-1]])
        return Candidates(
            users=np.concatenate([c.users for c in parts]),
            items=np.concatenate([c.items for c in parts]),
            group=np.concatenate([c.group + o for c, o in zip(parts, offsets, strict=True)]),
            features=np.concatenate([c.features for c in parts]),
            label=np.concatenate([c.label for c in parts]),
            group_user=np.concatenate([c.group_user for c in parts]),
        )


class StackedRanker:
    """Candidate sources (fitted peers) + item clock + features; ``booster`` is the trained LightGBM."""

    def __init__(
        self,
        *,
        per_source: int = 100,
        categories: sp.csr_matrix | None = None,
        user_features: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        self.per_source = per_source
        self.categories = categories if categories is not None and categories.shape[1] > 0 else None
        self.user_features = user_features  # (n_users, F) int, -1 = unknown
        self.seed = seed
        self.booster: Any = None
        self.rounds = 0
        self.lgb_params: dict[str, Any] = {}

    # ---- candidates + features ----------------------------------------------------------------------
    def build(
        self,
        sources: dict[str, Scorer],
        stage: Holdout,
        rows: np.ndarray | None = None,
        *,
        histories: Sequence[np.ndarray] | None = None,
        batch: int = 256,
    ) -> Candidates:
        """Candidates and features for the stage's users (``rows`` of it; all by default), with labels.

        Sources score a batch of users at once; each user's candidates and features then come from
        :meth:`_one` — the function the serving path (:meth:`build_one`) calls too, so a request's feature rows
        are the ones the ranker was trained and tested on, bit for bit (the parity test checks it).
        """
        rows = np.arange(len(stage.users)) if rows is None else rows
        hist_all = stage.histories
        names = [s for s in SOURCES if s in sources]
        out_items, out_group, out_feat, out_label = [], [], [], []
        found: dict[str, list[float]] = {s: [] for s in [*names, "union"]}
        for s0 in range(0, len(rows), batch):
            r = rows[s0 : s0 + batch]
            users, ts = stage.users[r], stage.request_ts[r]
            # ``histories`` (one per row) serves requests whose history is not the stage's (live sessions)
            hists = [histories[int(x)] for x in r] if histories is not None else [hist_all[int(u)] for u in users]
            scores = {n: np.asarray(sources[n].score_history(hists, ts), dtype=np.float64) for n in names}
            for j, (u_row, u, t, h) in enumerate(zip(r, users, ts, hists, strict=True)):
                row_scores = {n: scores[n][j] for n in names}
                cand, feats, tops = self._one(sources, stage, row_scores, user=int(u), t=int(t), hist=h)
                truth = stage.truth[int(u_row)]
                if len(truth):
                    for n in names:
                        found[n].append(np.isin(truth, tops[n]).mean())
                    found["union"].append(np.isin(truth, cand).mean())
                out_items.append(cand)
                out_group.append(np.full(len(cand), s0 + j))
                out_feat.append(feats)
                out_label.append(np.isin(cand, truth).astype(np.float32))
        return Candidates(
            users=rows,
            items=np.concatenate(out_items),
            group=np.concatenate(out_group),
            features=np.concatenate(out_feat) if out_feat else np.zeros((0, 0), dtype=np.float32),
            label=np.concatenate(out_label),
            group_user=stage.users[rows].astype(np.int64),
            source_recall={k: float(np.mean(v)) for k, v in found.items() if v},
        )

    def build_one(
        self, sources: dict[str, Scorer], stage: Holdout, *, user: int, t: int, hist: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One request's candidates and their feature rows (float32): the serving path.

        Each source scores the one history with ``score_one`` (the same numbers as its batch ``score_history``,
        without the batch machinery), then :meth:`_one` makes the rows exactly as :meth:`build` does; the
        stage's caches are built once (:func:`prepare_stage`), never per request.
        """
        h = np.asarray(hist, dtype=np.int64)
        scores = {n: sources[n].score_one(h, t) for n in SOURCES if n in sources}
        cand, feats, _ = self._one(sources, stage, scores, user=user, t=t, hist=h)
        return cand, feats

    def _one(
        self,
        sources: dict[str, Scorer],
        stage: Holdout,
        scores: dict[str, np.ndarray],
        *,
        user: int,
        t: int,
        hist: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """One user's candidates (item_idx, ascending), feature rows (float32) and each source's top items.

        ``scores`` holds each source's (n_items,) float64 scores for this user; items in ``hist`` are masked
        here (in place). Feature columns: every source's score, every source's rank among the candidates,
        log popularity, days since last / first seen, co-visitation with the last item, log history length,
        days since the user's last interaction, category overlap with the last 10 items, user features.
        """
        clock, pop = _stage_cache(stage)
        h = np.asarray(hist, dtype=np.int64)
        names = list(scores)
        for sc in scores.values():
            sc[h] = -np.inf
        tops = {n: np.argpartition(-scores[n], self.per_source - 1)[: self.per_source] for n in names}
        cand = np.unique(np.concatenate(list(tops.values()))) if tops else np.zeros(0, dtype=np.int64)
        cand = cand[np.isfinite(scores[names[0]][cand])] if names else cand
        feats = [scores[n][cand] for n in names]
        for n in names:  # rank of the candidate in this source's ordering, among candidates
            rank = np.empty(len(cand))
            rank[np.argsort(-scores[n][cand], kind="stable")] = np.arange(len(cand))
            feats.append(rank)
        covis = sources.get("covisit")
        last_item = np.zeros(len(cand))
        if isinstance(covis, CoVisit) and len(h):
            last_item = covis.next_row(int(h[-1]))[cand]
        t_vec = np.full(len(cand), int(t), dtype=np.int64)
        feats += [
            pop[cand],
            clock.days_since_last(cand, t_vec),
            clock.age_days(cand, t_vec),
            last_item,
            np.full(len(cand), np.log1p(len(h))),
            np.full(len(cand), _idle_days(stage, int(user), int(t))),
        ]
        if self.categories is not None:
            dense = self._dense_categories()
            recent = h[-10:]
            feats.append(dense[cand] @ dense[recent].mean(axis=0) if len(recent) else np.zeros(len(cand)))
        if self.user_features is not None:
            uf = self.user_features[int(user)] if 0 <= int(user) < len(self.user_features) else None
            for c in range(self.user_features.shape[1]):
                feats.append(np.full(len(cand), -1 if uf is None else uf[c], dtype=np.float64))
        x = np.stack(feats, axis=1) if feats else np.zeros((len(cand), 0))
        x[~np.isfinite(x)] = -1e9
        return cand, x.astype(np.float32), tops

    def _dense_categories(self) -> np.ndarray:
        """(n_items, n_categories) float64 copy of the category matrix (small: items × a few dozen)."""
        dense = getattr(self, "_dense_cats", None)
        if dense is None:
            assert self.categories is not None
            dense = self._dense_cats = np.asarray(self.categories.todense(), dtype=np.float64)
        return dense

    # ---- training --------------------------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        return {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [10],
            "learning_rate": 0.05,
            "num_leaves": 31,
            "min_data_in_leaf": 50,
            "feature_fraction": 0.8,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "lambdarank_truncation_level": 20,
            "num_threads": 1,
            "seed": self.seed,
            "verbose": -1,
        } | self.lgb_params

    def fit_rounds(self, train: Candidates, valid: Candidates | None, rounds: int) -> tuple[Any, int]:
        import lightgbm

        def ds(c: Candidates) -> Any:
            keep = _groups_with_positive(c)
            _, sizes = np.unique(c.group[keep], return_counts=True)
            return lightgbm.Dataset(c.features[keep], label=c.label[keep], group=sizes, free_raw_data=False)

        dtrain = ds(train)
        if valid is None:
            return lightgbm.train(self._params(), dtrain, num_boost_round=rounds), rounds
        dvalid = ds(valid)
        booster = lightgbm.train(
            self._params(),
            dtrain,
            num_boost_round=rounds,
            valid_sets=[dvalid],
            callbacks=[lightgbm.early_stopping(30, verbose=False)],
        )
        return booster, int(booster.best_iteration or rounds)

    def cross_fit(self, cands: Candidates, *, max_rounds: int = 500) -> np.ndarray:
        """2-fold over *users* (all of a user's windows in one fold): each half scored by a model trained on
        the other; returns out-of-fold scores, then trains the final booster on everything with the mean best
        round count."""
        rng = np.random.default_rng(self.seed)
        user_fold = rng.integers(0, 2, size=int(cands.group_user.max()) + 1)
        row_fold = user_fold[cands.group_user[cands.group]]
        pred = np.zeros(len(cands.items))
        best_rounds = []
        for f in (0, 1):
            tr, va = _take(cands, row_fold != f), _take(cands, row_fold == f)
            booster, rounds = self.fit_rounds(tr, va, max_rounds)
            best_rounds.append(rounds)
            pred[row_fold == f] = booster.predict(va.features, num_iteration=rounds, num_threads=1)
        self.rounds = max(10, int(np.mean(best_rounds)))
        self.booster, _ = self.fit_rounds(cands, None, self.rounds)
        return pred

    def predict(self, cands: Candidates) -> np.ndarray:
        return self.predict_rows(cands.features)

    def predict_rows(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(features, num_threads=1), dtype=np.float64)


def ranked_lists(cands: Candidates, scores: np.ndarray, n_groups: int, *, k: int = K_MAX) -> np.ndarray:
    """(n_groups, k) item lists from per-candidate scores, -1 padded."""
    out = np.full((n_groups, k), -1, dtype=np.int64)
    order = np.lexsort((-scores, cands.group))
    g_sorted = cands.group[order]
    starts = np.searchsorted(g_sorted, np.arange(n_groups))
    ends = np.searchsorted(g_sorted, np.arange(n_groups), side="right")
    for g in range(n_groups):
        top = cands.items[order[starts[g] : ends[g]]][:k]
        out[g, : len(top)] = top
    return out


MMR_POOL = 50
"""MMR re-orders the ranker's top 50 (the visible top 10 diversified, the rest in ranker order)."""


def mmr_lists(
    cands: Candidates, scores: np.ndarray, n_groups: int, item_vecs: np.ndarray, lam: float, *, k: int = K_MAX
) -> np.ndarray:
    """Maximal marginal relevance over the ranker's top 50: λ·relevance − (1−λ)·max similarity to chosen."""
    base = ranked_lists(cands, scores, n_groups, k=min(MMR_POOL, 5 * k))
    if lam >= 1.0:
        return base[:, :k]
    out = np.full((n_groups, k), -1, dtype=np.int64)
    for g in range(n_groups):
        order = mmr_order(base[g][base[g] >= 0], item_vecs, lam)[:k]
        out[g, : len(order)] = order
    return out


def mmr_order(pool: np.ndarray, item_vecs: np.ndarray, lam: float) -> np.ndarray:
    """``pool`` (items, best first) with its first 10 chosen greedily by λ·relevance − (1−λ)·max similarity to
    the items already chosen; relevance is the rank in the pool, similarity the dot product of unit vectors."""
    if len(pool) == 0 or lam >= 1.0:
        return pool
    rel = 1.0 - np.arange(len(pool)) / len(pool)
    v = item_vecs[pool]
    chosen: list[int] = []
    max_sim = np.zeros(len(pool))
    free = np.ones(len(pool), dtype=bool)
    for _ in range(min(10, len(pool))):  # diversify the visible top 10; the rest keeps the ranker order
        m = np.where(free, lam * rel - (1 - lam) * max_sim, -np.inf)
        j = int(np.argmax(m))
        chosen.append(j)
        free[j] = False
        max_sim = np.maximum(max_sim, v @ v[j])
    rest = [j for j in range(len(pool)) if free[j]]
    return pool[np.asarray(chosen + rest, dtype=np.int64)]


def ndcg_of(lists: np.ndarray, stage: Holdout, rows: np.ndarray) -> np.ndarray:
    return per_user_metrics(lists, [stage.truth[int(r)] for r in rows])["ndcg@10"]


def _take(c: Candidates, mask: np.ndarray) -> Candidates:
    return Candidates(
        users=c.users,
        items=c.items[mask],
        group=c.group[mask],
        features=c.features[mask],
        label=c.label[mask],
        group_user=c.group_user,
    )


def _groups_with_positive(c: Candidates) -> np.ndarray:
    pos = np.zeros(int(c.group.max()) + 1, dtype=bool)
    pos[c.group[c.label > 0]] = True
    return pos[c.group]


def prepare_stage(stage: Holdout) -> Holdout:
    """Build a stage's request-independent caches now (item clock, popularity, each user's last time), so that
    requests against it (:func:`protocol.request_stage` copies them) never rebuild them — rebuilding the clock
    sorts every interaction, 4 ms a request on ML-100k."""
    _stage_cache(stage)
    _idle_days(stage, -1, 0)
    return stage


def _stage_cache(stage: Holdout) -> tuple[ItemClock, np.ndarray]:
    """Item clock and popularity of a stage's fit rows, built once per stage (serving reuses them)."""
    cached = getattr(stage, "_rank_cache", None)
    if cached is None:
        pop = np.log1p(np.bincount(stage.fit["item_idx"].to_numpy(), minlength=stage.n_items))
        cached = (ItemClock.build(stage), pop)
        stage._rank_cache = cached  # type: ignore[attr-defined]
    return cached


def _idle_days(stage: Holdout, user: int, t: int) -> float:
    last = getattr(stage, "_last_ts", None)
    if last is None:
        f = stage.fit
        last = np.full(stage.n_users, -1, dtype=np.int64)
        np.maximum.at(last, f["user_idx"].to_numpy(), f["ts"].to_numpy(np.int64))
        stage._last_ts = last  # type: ignore[attr-defined]
    return float((t - last[user]) / DAY) if 0 <= user < len(last) and last[user] >= 0 else -1.0
