"""The peers: every baseline a careful reviewer would ask for, each with a search space tuned on validation.

All of them score the whole catalogue from what a user did (``score``) — and, except the matrix
factorisations, from a bare list of items (``score_history``), which is how an anonymous session is served.

- ``popularity``: all-time interaction counts.
- ``trending``: exponentially decayed counts **as of the request time** (half-life tuned).
- ``item_knn``: cosine item-item neighbours with shrinkage (neighbourhood size and shrink tuned).
- ``ease``: EASE (Steck, WWW 2019), the closed-form linear autoencoder B = I − P / diag(P),
  P = (XᵀX + λI)⁻¹ (λ tuned). Hard to beat on these data sets; cost O(items³) once.
- ``covisit``: "people who did A next did B" — co-visitation counts of items that follow each other within a
  window of a user's time-ordered history, summed over the last few items with a recency decay.
- ``als`` / ``bpr``: the ``implicit`` library's ALS and BPR; ALS over factors, regularisation, iterations,
  confidence α (1 included) and raw / BM25 / TF-IDF weighting.
- ``sasrec``: self-attention over the recent items (``model.SASRec``, built on ``blocks.attention``).

Tuning is a seeded random search with the same number of trials for every model (or the whole grid when it is
smaller), each trial fitted on the validation stage's fit rows and scored by NDCG@10 on its held-out items.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from systems.recsys.protocol import Holdout, per_user_metrics, rank_all

log = logging.getLogger(__name__)
DAY = 86_400


class Scorer:
    """Fit on a stage's rows; score (users, request times) -> (B, n_items)."""

    name = "scorer"
    history_based = True  # can score a bare item list (anonymous sessions)

    def __init__(self, **params: Any) -> None:
        self.params = params

    def fit(self, stage: Holdout) -> Scorer:
        raise NotImplementedError

    def score(self, users: np.ndarray, request_ts: np.ndarray) -> np.ndarray:
        hist = self._hist
        return self.score_history([hist[int(u)] for u in users], request_ts)

    def score_history(self, hists: Sequence[np.ndarray], request_ts: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score_one(self, hist: np.ndarray, t: int) -> np.ndarray:
        """One request's scores over the catalogue, (n_items,) float64, a new array the caller may change.

        The serving path: equal to ``score_history([hist], [t])[0]`` up to float rounding (tested), without
        the batch machinery (a sparse matrix built per request cost more than the product it fed).
        """
        return np.array(self.score_history([hist], np.array([t], dtype=np.int64))[0], dtype=np.float64)

    def _rows(self, hists: Sequence[np.ndarray], request_ts: np.ndarray) -> np.ndarray:
        """``score_history`` as one ``score_one`` per history: for scorers whose batch and request paths must
        give the same numbers to the last bit (the ranker's tree splits see every bit)."""
        if not len(hists):
            return np.zeros((0, self.n_items))
        return np.stack([self.score_one(h, int(t)) for h, t in zip(hists, request_ts, strict=True)])

    def _remember(self, stage: Holdout) -> None:
        self._hist = stage.histories
        self.n_items = stage.n_items


def csr_rows_sum(m: sp.csr_matrix, rows: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Σ_j weights[j] · m[rows[j]] as a dense float64 vector, straight from the CSR arrays (zeros for no rows).

    What ``(one-row sparse matrix) @ m`` computes, without building a matrix per request: the nonzeros of the
    chosen rows are gathered by index arithmetic and summed into their columns with one ``bincount``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    start = m.indptr[rows]
    lens = m.indptr[rows + 1] - start
    # position of every nonzero of the chosen rows in m.data: each row's start, then 0, 1, 2 … within the row
    pos = np.repeat(start - np.cumsum(lens) + lens, lens) + np.arange(int(lens.sum()))
    vals = m.data[pos].astype(np.float64)
    if weights is not None:
        vals *= np.repeat(np.asarray(weights, dtype=np.float64), lens)
    return np.bincount(m.indices[pos], weights=vals, minlength=m.shape[1]).astype(np.float64, copy=False)


class Popularity(Scorer):
    name = "popularity"

    def fit(self, stage: Holdout) -> Popularity:
        self._remember(stage)
        self.counts = np.bincount(stage.fit["item_idx"].to_numpy(), minlength=stage.n_items).astype(np.float64)
        return self

    def score_history(self, hists: Sequence[np.ndarray], request_ts: np.ndarray) -> np.ndarray:
        return np.tile(self.counts, (len(hists), 1))

    def score_one(self, hist: np.ndarray, t: int) -> np.ndarray:
        return self.counts.copy()


def decayed_counts(
    ev_ts: np.ndarray, ev_items: np.ndarray, n_items: int, times: np.ndarray, half_life_days: float
) -> np.ndarray:
    """(len(times), n_items): per request time t, Σ over events before t of 0.5^((t − ts)/half-life).

    One running vector, walked through the request times in order: memory is O(items), never days × items.
    ``ev_ts`` must be sorted.
    """
    out = np.zeros((len(times), n_items), dtype=np.float64)
    s = np.zeros(n_items, dtype=np.float64)
    hl = half_life_days * DAY
    j, t_prev = 0, None
    for r in np.argsort(times, kind="stable"):
        t = int(times[r])
        end = int(np.searchsorted(ev_ts, t, side="left"))
        if t_prev is not None and np.isfinite(hl) and t > t_prev:
            s *= 0.5 ** ((t - t_prev) / hl)
        if end > j:
            w = np.ones(end - j) if not np.isfinite(hl) else 0.5 ** ((t - ev_ts[j:end]) / hl)
            s += np.bincount(ev_items[j:end], weights=w, minlength=n_items)
            j = end
        t_prev = t
        out[r] = s
    return out


class Trending(Scorer):
    """Decayed popularity at each request's time (only events before it count)."""

    name = "trending"

    def fit(self, stage: Holdout) -> Trending:
        self._remember(stage)
        f = stage.fit.sort_values("ts", kind="mergesort")
        self.ev_ts, self.ev_items = f["ts"].to_numpy(np.int64), f["item_idx"].to_numpy(np.int64)
        return self

    def score_history(self, hists: Sequence[np.ndarray], request_ts: np.ndarray) -> np.ndarray:
        return decayed_counts(self.ev_ts, self.ev_items, self.n_items, request_ts, self.params["half_life_days"])

    def score_one(self, hist: np.ndarray, t: int) -> np.ndarray:
        """After the last event the counts only decay: s(t) = s(end) · 0.5^((t − end) / half-life), O(items)
        per request instead of a pass over every event (2 ms a request on ML-100k). Earlier times (a request
        inside the log's span) take the general path."""
        end = getattr(self, "_end", None)
        if end is None:
            anchor = int(self.ev_ts[-1]) + 1 if len(self.ev_ts) else 0  # every event counts at ``anchor``
            counts = decayed_counts(self.ev_ts, self.ev_items, self.n_items, np.array([anchor]), self.half_life)[0]
            end = self._end = (anchor, counts)
        anchor, counts = end
        if t < anchor:
            return super().score_one(hist, t)
        if not np.isfinite(self.half_life) or t == anchor:
            return counts.copy()
        return counts * 0.5 ** ((t - anchor) / (self.half_life * DAY))

    @property
    def half_life(self) -> float:
        return float(self.params["half_life_days"])

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_end"}


class ItemKNN(Scorer):
    """Cosine item similarity with shrinkage, the ``neighbours`` most similar kept per item."""

    name = "item_knn"

    def fit(self, stage: Holdout) -> ItemKNN:
        self._remember(stage)
        x = stage.seen
        co = (x.T @ x).toarray().astype(np.float64)
        n = np.diag(co).copy()
        sim = co / (np.sqrt(np.outer(n, n)) + self.params["shrink"] + 1e-9)
        np.fill_diagonal(sim, 0.0)
        k = min(self.params["neighbours"], sim.shape[0] - 1)
        if k < sim.shape[0] - 1:
            drop = np.argpartition(-sim, k, axis=1)[:, k:]
            np.put_along_axis(sim, drop, 0.0, axis=1)
        self.sim = sp.csr_matrix(sim.astype(np.float32))
        return self

    def score_history(self, hists: Sequence[np.ndarray], request_ts: np.ndarray) -> np.ndarray:
        return self._rows(hists, request_ts)

    def score_one(self, hist: np.ndarray, t: int) -> np.ndarray:
        return csr_rows_sum(self.sim, np.unique(np.asarray(hist, dtype=np.int64)))


class EASE(Scorer):
    """B = I − P·diag(1/diag(P)) with P = (XᵀX + λI)⁻¹; scores = x_u B (Steck 2019)."""

    name = "ease"

    def fit(self, stage: Holdout) -> EASE:
        self._remember(stage)
        x = stage.seen
        g = (x.T @ x).toarray().astype(np.float64)
        g[np.diag_indices_from(g)] += self.params["l2"]
        p = np.linalg.inv(g)
        b = -p / np.diag(p)[None, :]
        np.fill_diagonal(b, 0.0)
        self.b = b.astype(np.float32)
        return self

    def score_history(self, hists: Sequence[np.ndarray], request_ts: np.ndarray) -> np.ndarray:
        return self._rows(hists, request_ts)

    def score_one(self, hist: np.ndarray, t: int) -> np.ndarray:
        rows = self.b[np.unique(np.asarray(hist, dtype=np.int64))]  # (n_hist, n_items) float32
        return np.add.reduce(rows, axis=0).astype(np.float64)


class CoVisit(Scorer):
    """Item→next-item co-visitation within ``window`` steps; a history scores Σ decay^age · C[item]."""

    name = "covisit"

    def fit(self, stage: Holdout) -> CoVisit:
        self._remember(stage)
        f = stage.fit.sort_values(["user_idx", "ts"], kind="mergesort")
        u, i = f["user_idx"].to_numpy(), f["item_idx"].to_numpy()
        rows, cols, vals = [], [], []
        for d in range(1, self.params["window"] + 1):
            same = u[:-d] == u[d:]
            rows.append(i[:-d][same])
            cols.append(i[d:][same])
            vals.append(np.full(int(same.sum()), 1.0 / d))
            if self.params.get("both_ways", True):
                rows.append(i[d:][same])
                cols.append(i[:-d][same])
                vals.append(np.full(int(same.sum()), 0.5 / d))
        n = stage.n_items
        c = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
        c.sum_duplicates()
        # normalise by the source item's count so a blockbuster does not drown a niche session
        out_deg = np.asarray(c.sum(axis=1)).ravel()
        self.c = sp.csr_matrix(sp.diags(1.0 / np.maximum(out_deg, 1.0)) @ c, dtype=np.float32)
        return self

    def score_history(self, hists: Sequence[np.ndarray], request_ts: np.ndarray) -> np.ndarray:
        return self._rows(hists, request_ts)

    def score_one(self, hist: np.ndarray, t: int) -> np.ndarray:
        tail = np.asarray(hist[-self.params["last"] :], dtype=np.int64)
        return csr_rows_sum(self.c, tail, float(self.params["decay"]) ** np.arange(len(tail))[::-1])

    def next_row(self, item: int) -> np.ndarray:
        """(n_items,) co-visitation of ``item`` with every other item (row ``item`` of C, dense)."""
        row = np.zeros(self.c.shape[1], dtype=np.float64)
        lo, hi = self.c.indptr[item], self.c.indptr[item + 1]
        row[self.c.indices[lo:hi]] = self.c.data[lo:hi]
        return row


def weight_matrix(x: sp.csr_matrix, how: str) -> sp.csr_matrix:
    """Raw, BM25 or TF-IDF weighting of a (users, items) matrix (users as the documents' terms, as in implicit)."""
    from implicit.nearest_neighbours import bm25_weight, tfidf_weight

    if how == "bm25":
        return sp.csr_matrix(bm25_weight(x.T.tocsr(), K1=100, B=0.8).T, dtype=np.float32)
    if how == "tfidf":
        return sp.csr_matrix(tfidf_weight(x.T.tocsr()).T, dtype=np.float32)
    return sp.csr_matrix(x, dtype=np.float32)


class ImplicitMF(Scorer):
    """``implicit`` ALS or BPR; users outside training (sessions) are folded in by ridge regression."""

    history_based = True

    def __init__(self, kind: str, seed: int = 0, **params: Any) -> None:
        super().__init__(**params)
        self.kind, self.seed = kind, seed
        self.name = kind

    def fit(self, stage: Holdout) -> ImplicitMF:
        from implicit.als import AlternatingLeastSquares
        from implicit.bpr import BayesianPersonalizedRanking

        self._remember(stage)
        p = self.params
        model: Any
        if self.kind == "als":
            model = AlternatingLeastSquares(
                factors=p["factors"],
                regularization=p["reg"],
                alpha=p["alpha"],
                iterations=p["iterations"],
                random_state=self.seed,
                num_threads=1,
            )
            x = weight_matrix(stage.seen, p["weighting"])
        else:
            model = BayesianPersonalizedRanking(
                factors=p["factors"],
                learning_rate=p["lr"],
                regularization=p["reg"],
                iterations=p["iterations"],
                random_state=self.seed,
                num_threads=1,
            )
            x = stage.seen
        model.fit(x, show_progress=False)
        self.uf = np.asarray(model.user_factors, dtype=np.float32)
        self.itf = np.asarray(model.item_factors, dtype=np.float32)
        return self

    def score(self, users: np.ndarray, request_ts: np.ndarray) -> np.ndarray:
        return np.asarray(self.uf[users] @ self.itf.T)

    def score_history(self, hists: Sequence[np.ndarray], request_ts: np.ndarray) -> np.ndarray:
        y = self.itf
        gram = y.T @ y + np.eye(y.shape[1], dtype=np.float32) * max(float(self.params.get("reg", 0.01)), 1e-3)
        rhs = np.stack([y[np.asarray(h, dtype=np.int64)].sum(0) if len(h) else np.zeros(y.shape[1]) for h in hists])
        u = np.linalg.solve(gram, rhs.T).T
        return np.asarray(u @ y.T)


class SASRecScorer(Scorer):
    """Next-item self-attention (``model.SASRec``), full-softmax cross-entropy over the catalogue."""

    name = "sasrec"

    def __init__(self, seed: int = 0, **params: Any) -> None:
        super().__init__(**params)
        self.seed = seed
        self.checkpoint: Callable[[int, SASRecScorer], None] | None = None

    def fit(self, stage: Holdout) -> SASRecScorer:
        import torch

        from systems.recsys.model import SASRec, SASRecConfig

        self._remember(stage)
        p = self.params
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        cfg = SASRecConfig(
            n_items=stage.n_items,
            max_len=p["max_len"],
            dim=p["dim"],
            blocks=p["blocks"],
            heads=p["heads"],
            dropout=p["dropout"],
        )
        self.model = SASRec(cfg)
        seqs = [h for h in stage.histories if len(h) >= 2]
        inp = np.zeros((len(seqs), cfg.max_len), dtype=np.int64)  # 0 = padding, item + 1 otherwise
        tgt = np.zeros((len(seqs), cfg.max_len), dtype=np.int64)
        for r, h in enumerate(seqs):
            s = np.asarray(h[-(cfg.max_len + 1) :], dtype=np.int64) + 1
            inp[r, cfg.max_len - (len(s) - 1) :] = s[:-1]
            tgt[r, cfg.max_len - (len(s) - 1) :] = s[1:]
        t_inp, t_tgt = torch.from_numpy(inp), torch.from_numpy(tgt)
        gen = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.Adam(self.model.parameters(), lr=p["lr"], betas=(0.9, 0.98))
        for epoch in range(1, p["epochs"] + 1):
            self.model.train()
            perm = torch.from_numpy(rng.permutation(len(seqs)))
            total = 0.0
            for s0 in range(0, len(perm), p["batch"]):
                b = perm[s0 : s0 + p["batch"]]
                loss = self._sampled_softmax_loss(t_inp[b], t_tgt[b], p["negatives"], gen)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(b)
            log.info("sasrec epoch %d loss %.4f", epoch, total / max(len(seqs), 1))
            if self.checkpoint is not None:
                self.model.eval()
                self.checkpoint(epoch, self)
        self.model.eval()
        return self

    def _sampled_softmax_loss(self, inp: Any, tgt: Any, n_neg: int, gen: Any) -> Any:
        """Softmax over the true next item and ``n_neg`` uniformly drawn items shared by the batch.

        A full softmax over the catalogue costs (B·L·n_items·d) per step — minutes per epoch on two CPU cores
        at 3,700 items; a few hundred shared negatives keep most of its advantage over SASRec's original
        one-negative BCE at a tenth of the cost. A negative that equals the target is masked out.
        """
        import torch

        h = self.model.hidden(inp)  # (B, L, d)
        valid = tgt > 0
        hv, y = h[valid], tgt[valid]  # (N, d), (N,) item + 1
        emb = self.model.item.weight
        neg = torch.randint(1, self.model.cfg.n_items + 1, (n_neg,), generator=gen)  # (K,)
        pos_logit = (hv * emb[y]).sum(-1, keepdim=True)  # (N, 1)
        neg_logit = hv @ emb[neg].T  # (N, K)
        neg_logit = neg_logit.masked_fill(neg[None, :] == y[:, None], float("-inf"))
        logits = torch.cat([pos_logit, neg_logit], dim=1)
        return torch.nn.functional.cross_entropy(logits, torch.zeros(len(y), dtype=torch.long))

    def score_history(self, hists: Sequence[np.ndarray], request_ts: np.ndarray) -> np.ndarray:
        return self._rows(hists, request_ts)

    def score_one(self, hist: np.ndarray, t: int) -> np.ndarray:
        """Next-item logits in numpy over the history's real positions only (``model.SASRecInference``,
        equal to the torch forward pass to float rounding, tested): torch's per-operator overhead on a
        (1, 50) input was 1.5 ms a request. Training and scoring share the weights' memory, so the scores
        always use the current weights."""
        from systems.recsys.model import SASRecInference

        fast = self.__dict__.get("_inference")
        if fast is None or fast.source is not self.model:
            fast = self._inference = SASRecInference.from_model(self.model)
        return fast.next_item_scores(np.asarray(hist, dtype=np.int64))

    def __getstate__(self) -> dict[str, Any]:  # the fast path's views and a tuning callback are not state
        return {k: v for k, v in self.__dict__.items() if k not in ("_inference", "checkpoint")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.checkpoint = None


# ---------------------------------------------------------------------------------------------- tuning


@dataclass(kw_only=True)
class SearchSpace:
    """A peer's search space; ``trials`` settings are drawn from the grid (all of it when smaller)."""

    name: str
    make: Callable[..., Scorer]
    grid: dict[str, Sequence[Any]]
    fixed: dict[str, Any] = field(default_factory=dict)

    def settings(self, trials: int, seed: int) -> list[dict[str, Any]]:
        keys = list(self.grid)
        combos = [dict(zip(keys, v, strict=True)) for v in itertools.product(*(self.grid[k] for k in keys))]
        if len(combos) > trials:
            pick = np.random.default_rng(seed).choice(len(combos), size=trials, replace=False)
            combos = [combos[int(i)] for i in sorted(pick)]
        return [{**self.fixed, **c} for c in combos]


def default_spaces(*, quick: bool = False, seed: int = 0, n_interactions: int = 0) -> list[SearchSpace]:
    """The peers and their search spaces. ``quick`` = the CI preset (smaller grids, fewer epochs).

    SASRec is the one peer whose trials cost minutes each on two CPU cores, so it gets two architectures
    (dropout 0.2 / 0.5), each scored at four epoch checkpoints — eight evaluated settings — and half the epochs
    on logs of 200k+ interactions (more steps per epoch).
    """
    sas_epochs = 8 if quick else (40 if n_interactions < 200_000 else 20)
    return [
        SearchSpace(name="popularity", make=Popularity, grid={}),
        SearchSpace(name="trending", make=Trending, grid={"half_life_days": [1, 3, 7, 14, 30, 60, 180, 365]}),
        SearchSpace(
            name="item_knn", make=ItemKNN, grid={"neighbours": [20, 50, 100, 200, 400], "shrink": [0, 10, 50, 200]}
        ),
        SearchSpace(name="ease", make=EASE, grid={"l2": [10, 50, 100, 200, 500, 1000, 2000, 5000]}),
        SearchSpace(
            name="covisit",
            make=CoVisit,
            grid={"window": [1, 3, 10], "last": [1, 3, 10, 30], "decay": [0.5, 0.8, 1.0]},
        ),
        SearchSpace(
            name="als",
            make=lambda **p: ImplicitMF("als", seed=seed, **p),
            grid={
                "factors": [32, 64, 128],
                "reg": [0.01, 0.1, 1.0, 10.0],
                "alpha": [1.0, 5.0, 20.0],
                "iterations": [15, 30],
                "weighting": ["none", "bm25", "tfidf"],
            },
        ),
        SearchSpace(
            name="bpr",
            make=lambda **p: ImplicitMF("bpr", seed=seed, **p),
            grid={
                "factors": [32, 64, 128],
                "lr": [0.01, 0.05, 0.1],
                "reg": [0.001, 0.01, 0.1],
                "iterations": [100, 300],
            },
        ),
        SearchSpace(
            name="sasrec",
            make=lambda **p: SASRecScorer(seed=seed, **p),
            grid={"dropout": [0.2, 0.5]},
            fixed={
                "blocks": 2,
                "max_len": 50,
                "dim": 64,
                "heads": 2,
                "lr": 2e-3,
                "batch": 128,
                "epochs": sas_epochs,
                "negatives": 256,
            },
        ),
    ]


@dataclass
class TuneResult:
    name: str
    params: dict[str, Any]
    val_ndcg: float
    trials: list[dict[str, Any]]
    seconds: float
    scorer: Scorer | None = None
    """The best setting, fitted on the validation stage's rows (the ranker's source for that stage)."""
    val_per_user: np.ndarray | None = None


def val_ndcg(scorer: Scorer, stage: Holdout) -> tuple[float, np.ndarray]:
    ranked = rank_all(scorer.score, stage)
    per_user = per_user_metrics(ranked, stage.truth)["ndcg@10"]
    return float(per_user.mean()), per_user


def tune(space: SearchSpace, stage: Holdout, *, trials: int, seed: int = 0) -> TuneResult:
    """Fit every drawn setting on the validation stage, keep the best NDCG@10.

    SASRec's epochs are tuned inside each trial: the model is scored on validation at a few checkpoints
    (a quarter, half, three quarters and all of the epochs) and the best checkpoint's epoch count is kept.
    """
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    best: dict[str, Any] = {"v": -1.0}
    for params in space.settings(trials, seed):
        scorer = space.make(**params)
        if isinstance(scorer, SASRecScorer):
            total = params["epochs"]
            marks = sorted({max(1, total * q // 4) for q in (1, 2, 3, 4)})

            def checkpoint(
                epoch: int, s: SASRecScorer, params: dict[str, Any] = params, marks: list[int] = marks
            ) -> None:
                if epoch in marks:
                    v, per_user = val_ndcg(s, stage)
                    rows.append({**params, "epochs": epoch, "val_ndcg@10": v})
                    if v > best["v"]:
                        state = {k: t.detach().clone() for k, t in s.model.state_dict().items()}
                        best.update(v=v, params={**params, "epochs": epoch}, scorer=s, state=state, per_user=per_user)

            scorer.checkpoint = checkpoint
            scorer.fit(stage)
            scorer.checkpoint = None
        else:
            scorer.fit(stage)
            v, per_user = val_ndcg(scorer, stage)
            rows.append({**params, "val_ndcg@10": v})
            if v > best["v"]:
                best.update(v=v, params=params, scorer=scorer, state=None, per_user=per_user)
        log.info("%s %s", space.name, rows[-1])
    chosen = best["scorer"]
    if best.get("state") is not None:  # SASRec: back to the best checkpoint's weights
        chosen.model.load_state_dict(best["state"])
        chosen.params = best["params"]
    return TuneResult(space.name, best["params"], best["v"], rows, time.perf_counter() - t0, chosen, best["per_user"])
