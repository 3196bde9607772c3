"""The online recommendation path, in process: candidates → rank → re-rank, with per-stage timings.

:class:`Recommender` holds every trained artefact (see ``train.py``) and answers one request at a time.
The API (``serve.py``), the A/B simulator (``abtest.py``) and the offline evaluation of the full pipeline
(``train.py``) all call the same :meth:`Recommender.recommend`, so what is measured offline is what is served.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from systems.recsys.candidates import AnnIndex, content_profile, merge_candidates, top_items
from systems.recsys.features import age_bucket, rank_features
from systems.recsys.model import DeepRanker, RankerConfig, TowerConfig, TwoTower

SOURCE_CODE = {"two_tower": 0, "session": 0, "content": 1, "popularity": 2}  # session = same ANN index
HIST_LEN = 20
TT_COL = 9  # position of tt_score in features.dense_feature_names


@dataclass
class UserContext:
    """What the features stage knows about the user at request time."""

    user_idx: int | None  # None = unknown user
    history: list[int]  # item_idx, oldest first (batch history + live session)
    cats: np.ndarray  # (3,) [age_bucket, gender, occupation]; unknown = last row of each table
    request_ts: int
    session_vec: np.ndarray | None = None  # (d,) mean two-tower vector of the live session (stream processor)


@dataclass
class Recommendation:
    items: np.ndarray  # item_idx
    scores: np.ndarray
    sources: list[str]
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class Artifacts:
    """Everything needed to serve; arrays are indexed by item_idx (real items first, then synthetic ones)."""

    n_real_items: int
    item_ids: np.ndarray  # (n,) public ids
    titles: list[str]
    genres: np.ndarray  # (n, G) float32
    year: np.ndarray  # (n,) int
    content: np.ndarray  # (n_real, 384) text embeddings (synthetic items have no text)
    item_vecs: np.ndarray  # (n, d) two-tower item vectors
    pop_scores: np.ndarray  # (n,) trending score
    item_stats: np.ndarray  # (n, 3) latest daily item stats
    user_cats: np.ndarray  # (n_users, 3)
    histories: list[list[int]]  # batch history per user_idx (the offline fallback of the feature store)
    tower: TwoTower
    deep: DeepRanker | None
    lgbm: Any | None  # lightgbm.Booster
    n_occupations: int
    model_version: str
    index: AnnIndex | None = None

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def unknown_cats(self) -> np.ndarray:
        return np.array([8, 2, self.n_occupations], dtype=np.int64)

    # ---- persistence -------------------------------------------------------------------------------
    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        np.savez(
            out / "arrays.npz",
            item_ids=self.item_ids,
            genres=self.genres,
            year=self.year,
            content=self.content,
            item_vecs=self.item_vecs,
            pop_scores=self.pop_scores,
            item_stats=self.item_stats,
            user_cats=self.user_cats,
        )
        meta = {
            "n_real_items": self.n_real_items,
            "titles": self.titles,
            "histories": self.histories,
            "n_occupations": self.n_occupations,
            "model_version": self.model_version,
            "tower_cfg": vars(self.tower.cfg),
            "ranker_cfg": vars(self.deep.cfg) if self.deep is not None else None,
        }
        (out / "meta.json").write_text(json.dumps(meta))
        torch.save(self.tower.state_dict(), out / "tower.pt")
        if self.deep is not None:
            torch.save(self.deep.state_dict(), out / "deep_ranker.pt")
        if self.lgbm is not None:
            self.lgbm.save_model(str(out / "lgbm_ranker.txt"))

    @classmethod
    def load(cls, path: Path) -> Artifacts:
        arr = np.load(path / "arrays.npz")
        meta = json.loads((path / "meta.json").read_text())
        n_real = int(meta["n_real_items"])
        tower = TwoTower(
            TowerConfig(**meta["tower_cfg"]),
            torch.from_numpy(arr["genres"][:n_real]),
            torch.from_numpy(arr["content"]),
        )
        tower.load_state_dict(torch.load(path / "tower.pt"))
        tower.eval()
        deep = None
        if meta["ranker_cfg"] is not None:
            deep = DeepRanker(RankerConfig(**meta["ranker_cfg"]))
            deep.load_state_dict(torch.load(path / "deep_ranker.pt"))
            deep.eval()
        lgbm = None
        if (path / "lgbm_ranker.txt").exists():
            import lightgbm

            lgbm = lightgbm.Booster(model_file=str(path / "lgbm_ranker.txt"))
        return cls(
            n_real_items=n_real,
            item_ids=arr["item_ids"],
            titles=meta["titles"],
            genres=arr["genres"],
            year=arr["year"],
            content=arr["content"],
            item_vecs=arr["item_vecs"],
            pop_scores=arr["pop_scores"],
            item_stats=arr["item_stats"],
            user_cats=arr["user_cats"],
            histories=[list(h) for h in meta["histories"]],
            tower=tower,
            deep=deep,
            lgbm=lgbm,
            n_occupations=int(meta["n_occupations"]),
            model_version=str(meta["model_version"]),
        )


class Recommender:
    """candidates (two-tower ANN + content + trending) → rank (deep or LightGBM) → MMR re-rank."""

    def __init__(
        self,
        art: Artifacts,
        *,
        n_candidates: int = 200,
        n_tower: int = 100,
        n_content: int = 50,
        n_popular: int = 50,
        mmr_lambda: float = 0.9,
    ) -> None:
        self.art = art
        if art.index is None:
            art.index = AnnIndex.build(art.item_vecs, kind="hnsw" if art.n_items > 20_000 else "exact")
        self.n_candidates = n_candidates
        self.n_tower, self.n_content, self.n_popular = n_tower, n_content, n_popular
        self.mmr_lambda = mmr_lambda
        order = np.argsort(-art.pop_scores, kind="stable")
        self._pop_order = order[: n_popular + 500]  # pre-sorted: the trending list is the same for everyone
        self._pop_norm = art.pop_scores / max(float(art.pop_scores.max()), 1e-9)

    def popular_items(self) -> np.ndarray:
        """The trending list (item_idx, best first): the same for everyone, pre-sorted at start."""
        return self._pop_order

    def user_context(
        self, user_idx: int | None, *, session_items: list[int] | None = None, request_ts: int | None = None
    ) -> UserContext:
        """Offline-fallback features (batch history from the artefacts); the API uses the feature store."""
        a = self.art
        known = user_idx is not None and 0 <= user_idx < len(a.user_cats)
        hist = list(a.histories[user_idx]) if known and user_idx is not None else []
        hist += [i for i in (session_items or []) if 0 <= i < a.n_items]
        cats = a.user_cats[user_idx] if known and user_idx is not None else a.unknown_cats()
        return UserContext(user_idx if known else None, hist, cats, int(request_ts or time.time()))

    # ---- stages ------------------------------------------------------------------------------------
    def user_vector(self, ctx: UserContext) -> np.ndarray:
        a = self.art
        pad = a.tower.cfg.n_items + 1
        recent = [i if i < a.n_real_items else a.n_real_items for i in ctx.history[-HIST_LEN:]]
        hist = np.full((1, HIST_LEN), pad, dtype=np.int64)
        if recent:
            hist[0, HIST_LEN - len(recent) :] = recent
        with torch.inference_mode():
            u = a.tower.user_embed(torch.from_numpy(hist), torch.from_numpy(ctx.cats[None].astype(np.int64)))
        return u.numpy()[0]

    def candidates(self, ctx: UserContext, exclude: set[int]) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
        """Merged candidates with their source, two-tower score and content similarity."""
        a = self.art
        assert a.index is not None
        u = self.user_vector(ctx)
        extra = min(len(exclude), 200)
        tt_s, tt_i = a.index.search(u[None], self.n_tower + extra)
        sources: list[tuple[str, np.ndarray, np.ndarray]] = [("two_tower", tt_i[0], tt_s[0])]
        if ctx.session_vec is not None:
            # "More like what you are browsing now": the live session alone as a query.
            s_s, s_i = a.index.search(ctx.session_vec[None].astype(np.float32), self.n_content + extra)
            sources.append(("session", s_i[0], s_s[0]))
        prof = content_profile(ctx.history, a.content)
        if prof is not None:
            c_scores = a.content @ prof  # (n_real,)
            ci, cs = top_items(c_scores, self.n_content, exclude)
            sources.append(("content", ci, cs))
        pop = self._pop_order[: self.n_popular + extra]
        sources.append(("popularity", pop, a.pop_scores[pop]))
        items, origin, _ = merge_candidates(sources, exclude=exclude, limit=self.n_candidates)
        tt = a.item_vecs[items] @ u
        real = items < a.n_real_items
        csim = np.zeros(len(items), dtype=np.float32)
        if prof is not None and real.any():
            csim[real] = a.content[items[real]] @ prof
        return items, origin, tt.astype(np.float32), csim

    def features(
        self,
        ctx: UserContext,
        items: np.ndarray,
        origin: list[str],
        tt: np.ndarray,
        csim: np.ndarray,
        item_stats: np.ndarray | None = None,
    ) -> np.ndarray:
        a = self.art
        return rank_features(
            items=items,
            history=ctx.history,
            request_ts=ctx.request_ts,
            item_stats=a.item_stats if item_stats is None else item_stats,
            item_year=a.year,
            genres=a.genres,
            tt_score=tt,
            content_sim=csim,
            source_code=np.array([SOURCE_CODE[s] for s in origin], dtype=np.int64),
        )

    def score(self, ctx: UserContext, items: np.ndarray, dense: np.ndarray, ranker: str) -> np.ndarray:
        a = self.art
        if ranker == "deep" and a.deep is not None:
            n_real = a.n_real_items
            pad = n_real + 1
            ids = np.where(items < n_real, items, n_real)
            recent = [i if i < n_real else n_real for i in ctx.history[-HIST_LEN:]]
            hist = np.full((1, HIST_LEN), pad, dtype=np.int64)
            if recent:
                hist[0, HIST_LEN - len(recent) :] = recent
            with torch.inference_mode():
                # one history for all candidates: keys/values computed once (see DeepRanker.score_candidates)
                logits = a.deep.score_candidates(
                    torch.from_numpy(ids),
                    torch.from_numpy(hist),
                    torch.from_numpy(ctx.cats[None].astype(np.int64)),
                    torch.from_numpy(dense),
                )
            return logits.numpy().astype(np.float64)
        if ranker == "lgbm" and a.lgbm is not None:
            return np.asarray(a.lgbm.predict(lgbm_matrix(dense, ctx.cats), num_threads=1), dtype=np.float64)
        # No ranker: the two-tower score column orders the candidates.
        return dense[:, TT_COL].astype(np.float64)

    def rerank(self, items: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
        """MMR over two-tower item vectors: positions of the chosen items, in order.

        Greedy: next = argmax λ·relevance − (1−λ)·max similarity to what is already chosen. Relevance is the
        rank-normalised ranker score so that λ means the same for any ranker's score scale.
        """
        n = len(items)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        order = np.argsort(-scores, kind="stable")
        pool = order[: min(n, 5 * k)]
        rel = 1.0 - np.arange(len(pool)) / max(len(pool), 1)
        vecs = self.art.item_vecs[items[pool]]
        chosen: list[int] = []
        max_sim = np.full(len(pool), -1.0)
        available = np.ones(len(pool), dtype=bool)
        for _ in range(min(k, len(pool))):
            mmr = self.mmr_lambda * rel - (1 - self.mmr_lambda) * np.maximum(max_sim, 0.0)
            mmr[~available] = -np.inf
            j = int(np.argmax(mmr))
            chosen.append(j)
            available[j] = False
            max_sim = np.maximum(max_sim, vecs @ vecs[j])
        return pool[np.asarray(chosen, dtype=np.int64)]

    def recommend(
        self,
        ctx: UserContext,
        k: int = 10,
        *,
        ranker: str = "deep",
        rerank: bool = True,
        item_stats: np.ndarray | None = None,
    ) -> Recommendation:
        t0 = time.perf_counter()
        exclude = set(ctx.history)
        items, origin, tt, csim = self.candidates(ctx, exclude)
        t1 = time.perf_counter()
        dense = self.features(ctx, items, origin, tt, csim, item_stats)
        scores = self.score(ctx, items, dense, ranker)
        t2 = time.perf_counter()
        pos = self.rerank(items, scores, k) if rerank else np.argsort(-scores, kind="stable")[:k]
        t3 = time.perf_counter()
        return Recommendation(
            items=items[pos],
            scores=scores[pos],
            sources=[origin[int(p)] for p in pos],
            timings_ms={
                "candidates": (t1 - t0) * 1e3,
                "rank": (t2 - t1) * 1e3,
                "rerank": (t3 - t2) * 1e3,
            },
        )


def lgbm_matrix(dense: np.ndarray, cats: np.ndarray) -> np.ndarray:
    """LightGBM sees the same dense features plus the user categoricals as columns."""
    return np.concatenate([dense, np.repeat(cats[None].astype(np.float32), len(dense), axis=0)], axis=1)


def user_cats_table(users: Any) -> np.ndarray:
    """(n_users, 3) [age_bucket, gender_code, occupation_code] from the catalogue's users frame."""
    return np.stack(
        [age_bucket(users["age"].to_numpy()), users["gender_code"].to_numpy(), users["occupation_code"].to_numpy()],
        axis=-1,
    ).astype(np.int64)
