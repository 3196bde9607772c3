"""Train and evaluate every recommender on the temporal split.

    mlsd recsys train            # full ML-100k, ~4-10 min on 2 shared cores
    python -m systems.recsys.train

Stages: load → temporal split (test = last 20% by time) → inside training, a label window (the last 20% of
training time) that the ranker learns from, with a retriever trained only on what came before → peers
(popularity, implicit ALS/BPR, tuned on the same label window) → two-tower on all training data →
candidates + ranker features → deep and LightGBM rankers → full-ranking metrics → artefacts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from systems.recsys.candidates import popularity_scores
from systems.recsys.data import (
    Catalogue,
    Split,
    interactions_matrix,
    load_catalogue_and_interactions,
    pad_histories,
    slice_users,
    temporal_split,
    user_histories,
)
from systems.recsys.evaluate import evaluate_scorer, ranking_metrics
from systems.recsys.features import ItemStatsSnapshots, item_stats_snapshots
from systems.recsys.model import DeepRanker, RankerConfig, TowerConfig, TwoTower
from systems.recsys.pipeline import HIST_LEN, Artifacts, Recommender, UserContext, user_cats_table
from systems.recsys.settings import RecsysSettings
from systems.recsys.text import item_text_embeddings

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class TrainConfig:
    seed: int = 0
    test_fraction: float = 0.2
    label_fraction: float = 0.2
    """Size of the ranker's label window (the end of the training period)."""
    label_split: str = "global"
    """"global": the last fraction of training *time* (mirrors the test split: returning users, weeks ahead);
    "per_user": the last fraction of each user's own interactions (more users, mostly within one session)."""
    n_users: int | None = None
    """Train on a random slice of users (CI); None = all 943."""
    tower_epochs: int = 12
    tower_batch: int = 512
    tower_lr: float = 3e-3
    log_q: bool = True
    ranker_epochs: int = 6
    ranker_batch: int = 512
    n_candidates: int = 200
    n_tower: int = 100
    n_content: int = 50
    n_popular: int = 50
    trending_half_life_days: float = 14.0
    als_grid: tuple[tuple[int, float, float], ...] = (
        (32, 0.05, 10.0),
        (64, 0.05, 10.0),
        (64, 0.5, 20.0),
        (128, 0.1, 10.0),
    )
    bpr_grid: tuple[tuple[int, float, int], ...] = ((64, 0.01, 100), (64, 0.05, 200), (128, 0.01, 200))
    lgbm_rounds: int = 200


def cpu_debug() -> TrainConfig:
    """The CI preset: 300 users, few epochs, one peer setting each."""
    return TrainConfig(
        n_users=300,
        tower_epochs=4,
        ranker_epochs=2,
        als_grid=((32, 0.05, 10.0),),
        bpr_grid=((32, 0.05, 100),),
        lgbm_rounds=50,
    )


@dataclass
class TrainResult:
    artifacts: Artifacts
    quality: dict[str, dict[str, float]]
    split_meta: dict[str, float]
    catalogue: Catalogue
    split: Split
    item_stats: ItemStatsSnapshots
    timings_s: dict[str, float] = field(default_factory=dict)


# ---- peers ---------------------------------------------------------------------------------------------
def fit_implicit(
    kind: str, params: tuple[Any, ...], user_items: sp.csr_matrix, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """implicit ALS or BPR on a (users, items) matrix; returns (user_factors, item_factors)."""
    from implicit.als import AlternatingLeastSquares
    from implicit.bpr import BayesianPersonalizedRanking

    model: Any
    if kind == "als":
        factors, reg, alpha = params
        model = AlternatingLeastSquares(
            factors=factors, regularization=reg, alpha=alpha, iterations=15, random_state=seed, num_threads=1
        )
    else:
        factors, lr, iters = params
        model = BayesianPersonalizedRanking(
            factors=factors, learning_rate=lr, regularization=0.01, iterations=iters, random_state=seed, num_threads=1
        )
    model.fit(user_items.tocsr().astype(np.float32), show_progress=False)
    return np.asarray(model.user_factors), np.asarray(model.item_factors)


def _factor_scorer(uf: np.ndarray, itf: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def score(u: np.ndarray) -> np.ndarray:
        return np.asarray(uf[u] @ itf.T)

    return score


def _constant_scorer(scores: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def score(u: np.ndarray) -> np.ndarray:
        return np.tile(scores, (len(u), 1))

    return score


def tune_and_eval_implicit(
    kind: str,
    grid: tuple[tuple[Any, ...], ...],
    split: Split,
    base: pd.DataFrame,
    label_truth: dict[int, set[int]],
    seed: int,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Pick the grid point with the best NDCG@10 on the label window, refit on all training data, test."""
    base_m = interactions_matrix(base, split.n_users, split.n_items)
    best: tuple[float, tuple[Any, ...]] = (-1.0, grid[0])
    for params in grid:
        uf, itf = fit_implicit(kind, params, base_m, seed)
        m = evaluate_scorer(_factor_scorer(uf, itf), label_truth, base_m, n_items=split.n_items)
        log.info("%s %s val ndcg@10 %.4f", kind, params, m["ndcg@10"])
        if m["ndcg@10"] > best[0]:
            best = (m["ndcg@10"], params)
    train_m = split.train_matrix()
    uf, itf = fit_implicit(kind, best[1], train_m, seed)
    metrics = evaluate_scorer(lambda u: uf[u] @ itf.T, split.test_truth(), train_m, n_items=split.n_items)
    return metrics, {"params": list(best[1]), "val_ndcg@10": best[0]}


# ---- two-tower -----------------------------------------------------------------------------------------
def tower_examples(df: pd.DataFrame, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One example per interaction: (user_idx, target item, padded history of what came before) (N, L)."""
    users = df["user_idx"].to_numpy()
    items = df["item_idx"].to_numpy()
    hist_rows: list[list[int]] = []
    running: list[list[int]] = [[] for _ in range(n_users)]
    for u, i in zip(users, items, strict=True):
        hist_rows.append(running[u][-HIST_LEN:])
        running[u].append(int(i))
    return users, items, pad_histories(hist_rows, HIST_LEN, pad=n_items + 1)


def train_tower(
    df: pd.DataFrame, cat: Catalogue, content: np.ndarray, user_cats: np.ndarray, cfg: TrainConfig
) -> TwoTower:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    n_items = cat.n_items
    tcfg = TowerConfig(
        n_items=n_items,
        n_genres=len(cat.genre_names),
        content_dim=content.shape[1],
        n_occupations=int(user_cats[:, 2].max()) + 1,
    )
    model = TwoTower(tcfg, torch.from_numpy(cat.genre_matrix), torch.from_numpy(content))
    users, items, hist = tower_examples(df, cat.n_users, n_items)
    counts = np.bincount(items, minlength=n_items).astype(np.float64)
    log_q = np.log(np.maximum(counts, 1.0) / counts.sum()).astype(np.float32)
    if not cfg.log_q:
        log_q[:] = 0.0
    opt = torch.optim.Adam(model.parameters(), lr=cfg.tower_lr)
    t_items, t_hist = torch.from_numpy(items), torch.from_numpy(hist)
    t_cats, t_logq = torch.from_numpy(user_cats[users]), torch.from_numpy(log_q)
    model.train()
    for epoch in range(cfg.tower_epochs):
        perm = torch.from_numpy(rng.permutation(len(items)))
        total = 0.0
        for s in range(0, len(perm), cfg.tower_batch):
            b = perm[s : s + cfg.tower_batch]
            u = model.user_embed(t_hist[b], t_cats[b])
            v = model.item_embed(t_items[b], drop_ids=True)
            loss = model.in_batch_loss(u, v, t_items[b], t_logq[t_items[b]])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        log.info("tower epoch %d loss %.4f", epoch, total / len(perm))
    model.eval()
    return model


@torch.inference_mode()
def tower_item_vectors(model: TwoTower) -> np.ndarray:
    idx = torch.arange(model.cfg.n_items)
    return model.item_embed(idx).numpy()


@torch.inference_mode()
def tower_user_vectors(model: TwoTower, histories: list[list[int]], user_cats: np.ndarray) -> np.ndarray:
    hist = pad_histories(histories, HIST_LEN, pad=model.cfg.n_items + 1)
    return model.user_embed(torch.from_numpy(hist), torch.from_numpy(user_cats)).numpy()


# ---- rankers -------------------------------------------------------------------------------------------
@dataclass
class RankData:
    items: np.ndarray  # (N,)
    hist: np.ndarray  # (N, L)
    cats: np.ndarray  # (N, 3)
    dense: np.ndarray  # (N, F)
    label: np.ndarray  # (N,)
    group: np.ndarray  # (N,) request id


def build_rank_data(
    rec: Recommender, histories: list[list[int]], truth: dict[int, set[int]], request_ts: dict[int, int], stats: Any
) -> RankData:
    """Candidates of each (user, request time) with PIT features and labels = item appears in the window."""
    a = rec.art
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("items", "hist", "cats", "dense", "label", "group")}
    for g, u in enumerate(sorted(truth)):
        ctx = UserContext(u, list(histories[u]), a.user_cats[u], request_ts[u])
        items, origin, tt, csim = rec.candidates(ctx, set(ctx.history))
        dense = rec.features(ctx, items, origin, tt, csim, item_stats=stats.at(ctx.request_ts))
        n = len(items)
        rows["items"].append(items)
        rows["hist"].append(np.repeat(pad_histories([ctx.history], HIST_LEN, a.n_real_items + 1), n, axis=0))
        rows["cats"].append(np.repeat(ctx.cats[None], n, axis=0))
        rows["dense"].append(dense)
        rows["label"].append(np.isin(items, list(truth[u])).astype(np.float32))
        rows["group"].append(np.full(n, g))
    c = {k: np.concatenate(v) for k, v in rows.items()}
    return RankData(c["items"], c["hist"], c["cats"].astype(np.int64), c["dense"], c["label"], c["group"])


def train_deep_ranker(data: RankData, n_items: int, n_occupations: int, cfg: TrainConfig) -> DeepRanker:
    """Listwise training: a softmax over each request's candidates, the positives as targets.

    The serving metric is a ranking of one request's candidates, so the loss compares candidates of the same
    request with each other (like LambdaRank for the GBDT) instead of scoring rows independently (BCE).
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = DeepRanker(RankerConfig(n_items=n_items, n_occupations=n_occupations, n_dense=data.dense.shape[1]))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-5)
    t = {k: torch.from_numpy(getattr(data, k)) for k in ("items", "hist", "cats", "dense", "label")}
    # (n_groups, max_size) row index of each request's candidates, -1 = padding
    _, starts, sizes = np.unique(data.group, return_index=True, return_counts=True)
    rows = np.full((len(starts), int(sizes.max())), -1, dtype=np.int64)
    for g, (s0, n) in enumerate(zip(starts, sizes, strict=True)):
        rows[g, :n] = np.arange(s0, s0 + n)
    has_pos = np.array([data.label[r[r >= 0]].sum() > 0 for r in rows])
    rows = rows[has_pos]
    groups_per_batch = max(1, cfg.ranker_batch // int(sizes.max()) * 4)
    model.train()
    for epoch in range(cfg.ranker_epochs):
        perm = rng.permutation(len(rows))
        total = 0.0
        for s in range(0, len(perm), groups_per_batch):
            r = torch.from_numpy(rows[perm[s : s + groups_per_batch]])  # (G, N)
            valid = r >= 0
            flat = r[valid]
            logits = torch.full(r.shape, float("-inf"))
            logits[valid] = model(t["items"][flat], t["hist"][flat], t["cats"][flat], t["dense"][flat])
            labels = torch.zeros(r.shape)
            labels[valid] = t["label"][flat]
            logp = torch.log_softmax(logits, dim=1).masked_fill(~valid, 0.0)
            loss = -((logp * labels).sum(1) / labels.sum(1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(r)
        log.info("ranker epoch %d listwise loss %.4f", epoch, total / max(len(rows), 1))
    model.eval()
    return model


def train_lgbm_ranker(data: RankData, cfg: TrainConfig) -> Any:
    """LambdaRank on the same dense features (+ user categoricals as columns), grouped by request."""
    import lightgbm

    features = np.concatenate([data.dense, data.cats.astype(np.float32)], axis=1)  # == pipeline.lgbm_matrix
    _, sizes = np.unique(data.group, return_counts=True)
    ds = lightgbm.Dataset(features, label=data.label, group=sizes)
    params = {
        "objective": "lambdarank",
        "metric": "ndcg",
        "ndcg_eval_at": [10],
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_data_in_leaf": 50,
        "feature_fraction": 0.8,
        "num_threads": 1,
        "seed": cfg.seed,
        "verbose": -1,
    }
    return lightgbm.train(params, ds, num_boost_round=cfg.lgbm_rounds)


# ---- evaluation of a pipeline --------------------------------------------------------------------------
def evaluate_pipeline(
    rec: Recommender,
    truth: dict[int, set[int]],
    histories: list[list[int]],
    request_ts: dict[int, int],
    *,
    ranker: str,
    rerank: bool,
    k: int = 50,
) -> dict[str, float]:
    """Full pipeline metrics; the candidate set is retrieved from the whole catalogue, then ranked."""
    a = rec.art
    ranked = []
    users = sorted(truth)
    for u in users:
        ctx = UserContext(u, list(histories[u]), a.user_cats[u], request_ts[u])
        out = rec.recommend(ctx, k=k, ranker=ranker, rerank=rerank)
        row = np.full(k, -1, dtype=np.int64)
        row[: len(out.items)] = out.items[:k]
        ranked.append(row)
    return ranking_metrics(np.stack(ranked), [truth[u] for u in users], n_items=a.n_items)


def label_window(train: pd.DataFrame, fraction: float, how: str = "per_user") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split training into (base, label): the ranker learns to predict ``label`` from features of ``base``.

    per_user: the last ``fraction`` of each user's interactions (at least 1, only users with >= 5).
    global: a time cut at the (1 - fraction) quantile of training timestamps.
    """
    if how == "global":
        cut = int(np.quantile(train["ts"].to_numpy(), 1.0 - fraction))
        return train[train["ts"] < cut].reset_index(drop=True), train[train["ts"] >= cut].reset_index(drop=True)
    pos = train.groupby("user_idx").cumcount()
    size = train.groupby("user_idx")["item_idx"].transform("size")
    n_label = np.maximum(1, (size * fraction).astype(int))
    is_label = (pos >= size - n_label) & (size >= 5)
    return train[~is_label].reset_index(drop=True), train[is_label].reset_index(drop=True)


def first_ts(df: pd.DataFrame) -> dict[int, int]:
    return {int(u): int(t) for u, t in df.groupby("user_idx")["ts"].min().items()}


def run_training(
    settings: RecsysSettings, cfg: TrainConfig | None = None, *, content: np.ndarray | None = None
) -> TrainResult:
    """The whole offline pipeline; returns artefacts and quality metrics (nothing written)."""
    from threadpoolctl import threadpool_limits

    cfg = cfg or TrainConfig()
    # BLAS threads spin-wait on a shared 2-core box: small matmuls get 5x slower with 2 threads than with 1.
    with threadpool_limits(1):
        return _run_training(settings, cfg, content)


def _run_training(settings: RecsysSettings, cfg: TrainConfig, content: np.ndarray | None) -> TrainResult:
    timings: dict[str, float] = {}
    t = time.perf_counter()
    cat, inter = load_catalogue_and_interactions(settings)
    if cfg.n_users is not None:
        inter = slice_users(inter, cfg.n_users, cfg.seed)
    split = temporal_split(inter, test_fraction=cfg.test_fraction, n_users=cat.n_users, n_items=cat.n_items)
    base, label = label_window(split.train, cfg.label_fraction, cfg.label_split)
    label_truth = {int(u): set(g["item_idx"].tolist()) for u, g in label.groupby("user_idx")}
    label_truth = {u: s for u, s in label_truth.items() if u in set(base["user_idx"])}
    test_truth = split.test_truth()
    if content is None:
        content = item_text_embeddings(cat.items, settings.cache_dir / "recsys")
    user_cats = user_cats_table(cat.users)
    n_occ = int(user_cats[:, 2].max()) + 1
    timings["data"] = time.perf_counter() - t

    quality: dict[str, dict[str, float]] = {}
    train_m = split.train_matrix()
    # popularity: all-time and trending (decayed), scored at the test cut
    t = time.perf_counter()
    tr_items, tr_ts = split.train["item_idx"].to_numpy(), split.train["ts"].to_numpy()
    for name, hl in (("popularity", np.inf), ("trending", cfg.trending_half_life_days)):
        pop = popularity_scores(tr_items, tr_ts, cat.n_items, now=split.cut_ts, half_life_days=hl)
        quality[name] = evaluate_scorer(_constant_scorer(pop), test_truth, train_m, n_items=cat.n_items)
    trending = popularity_scores(
        tr_items, tr_ts, cat.n_items, now=split.cut_ts, half_life_days=cfg.trending_half_life_days
    )
    timings["popularity"] = time.perf_counter() - t

    t = time.perf_counter()
    peer_info = {}
    for kind, grid in (("als", cfg.als_grid), ("bpr", cfg.bpr_grid)):
        quality[f"implicit_{kind}"], peer_info[kind] = tune_and_eval_implicit(
            kind, grid, split, base, label_truth, cfg.seed
        )
    timings["implicit"] = time.perf_counter() - t

    # Ranker training data: a retriever that has only seen `base`, candidates for the label window.
    t = time.perf_counter()
    base_hist = user_histories(base, cat.n_users)
    stats_all = item_stats_snapshots(split.train, cat.n_items, until=split.cut_ts)
    tower_base = train_tower(base, cat, content, user_cats, cfg)
    art_base = _artifacts(cat, content, tower_base, trending, stats_all.latest(), user_cats, base_hist, n_occ, "base")
    rec_base = Recommender(
        art_base, n_candidates=cfg.n_candidates, n_tower=cfg.n_tower, n_content=cfg.n_content, n_popular=cfg.n_popular
    )
    rank_data = build_rank_data(rec_base, base_hist, label_truth, first_ts(label), stats_all)
    timings["ranker_data"] = time.perf_counter() - t
    t = time.perf_counter()
    deep = train_deep_ranker(rank_data, cat.n_items, n_occ, cfg)
    timings["deep_ranker"] = time.perf_counter() - t
    t = time.perf_counter()
    lgbm = train_lgbm_ranker(rank_data, cfg)
    timings["lgbm_ranker"] = time.perf_counter() - t

    # Serving retriever: all training data.
    t = time.perf_counter()
    tower = train_tower(split.train, cat, content, user_cats, cfg)
    timings["two_tower"] = time.perf_counter() - t
    hist = user_histories(split.train, cat.n_users)
    version = f"recsys-{int(time.time())}"
    art = _artifacts(cat, content, tower, trending, stats_all.latest(), user_cats, hist, n_occ, version)
    art.deep, art.lgbm = deep, lgbm
    item_vecs = art.item_vecs
    quality["two_tower"] = evaluate_scorer(
        lambda u: tower_user_vectors(tower, [hist[i] for i in u], user_cats[u]) @ item_vecs.T,
        test_truth,
        train_m,
        n_items=cat.n_items,
    )
    t = time.perf_counter()
    rec = Recommender(
        art, n_candidates=cfg.n_candidates, n_tower=cfg.n_tower, n_content=cfg.n_content, n_popular=cfg.n_popular
    )
    test_ts = first_ts(split.test)
    quality["full_pipeline"] = evaluate_pipeline(rec, test_truth, hist, test_ts, ranker="deep", rerank=True)
    quality["full_pipeline_no_rerank"] = evaluate_pipeline(rec, test_truth, hist, test_ts, ranker="deep", rerank=False)
    quality["lgbm_pipeline"] = evaluate_pipeline(rec, test_truth, hist, test_ts, ranker="lgbm", rerank=True)
    quality["candidates_only"] = evaluate_pipeline(rec, test_truth, hist, test_ts, ranker="none", rerank=False)
    timings["evaluate_pipeline"] = time.perf_counter() - t
    meta = dict(split.meta)
    meta.update({"ranker_rows": float(len(rank_data.label)), "ranker_positives": float(rank_data.label.sum())})
    meta.update({f"{k}_params": str(v["params"]) for k, v in peer_info.items()})  # type: ignore[misc]
    return TrainResult(
        artifacts=art,
        quality=quality,
        split_meta=meta,
        catalogue=cat,
        split=split,
        item_stats=stats_all,
        timings_s=timings,
    )


def _artifacts(
    cat: Catalogue,
    content: np.ndarray,
    tower: TwoTower,
    pop: np.ndarray,
    stats: np.ndarray,
    user_cats: np.ndarray,
    hist: list[list[int]],
    n_occ: int,
    version: str,
) -> Artifacts:
    return Artifacts(
        n_real_items=cat.n_items,
        item_ids=cat.items["item_id"].to_numpy(),
        titles=cat.items["title"].tolist(),
        genres=cat.genre_matrix,
        year=cat.items["year"].to_numpy(),
        content=content,
        item_vecs=tower_item_vectors(tower),
        pop_scores=pop,
        item_stats=stats,
        user_cats=user_cats,
        histories=hist,
        tower=tower,
        deep=None,
        lgbm=None,
        n_occupations=n_occ,
        model_version=version,
    )


def train_and_publish(
    settings: RecsysSettings, cfg: TrainConfig | None = None, *, content: np.ndarray | None = None
) -> TrainResult:
    """Train, save the artefacts, write the Feast offline tables, apply + materialize the online store."""
    import json

    from systems.recsys.feature_store import apply_and_materialize, write_offline_tables

    settings.ensure_dirs()
    res = run_training(settings, cfg, content=content)
    res.artifacts.save(settings.model_dir)
    (settings.model_dir / "quality.json").write_text(
        json.dumps({"quality": res.quality, "split": res.split_meta, "timings_s": res.timings_s}, indent=2)
    )
    write_offline_tables(settings, res.catalogue, res.split.train, res.item_stats)
    res.timings_s["feast_apply_materialize"] = apply_and_materialize(settings)
    return res


def publish_features(settings: RecsysSettings, cfg: TrainConfig | None = None) -> float:
    """Rebuild the Feast tables from the data (same split as training) and apply + materialize them."""
    from systems.recsys.feature_store import apply_and_materialize, write_offline_tables

    cfg = cfg or TrainConfig()
    settings.ensure_dirs()
    cat, inter = load_catalogue_and_interactions(settings)
    if cfg.n_users is not None:
        inter = slice_users(inter, cfg.n_users, cfg.seed)
    split = temporal_split(inter, test_fraction=cfg.test_fraction, n_users=cat.n_users, n_items=cat.n_items)
    stats = item_stats_snapshots(split.train, cat.n_items, until=split.cut_ts)
    write_offline_tables(settings, cat, split.train, stats)
    return apply_and_materialize(settings)


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    res = train_and_publish(RecsysSettings())
    for k, v in res.quality.items():
        log.info("%s %s", k, {m: round(x, 4) for m, x in v.items()})


if __name__ == "__main__":
    main()
