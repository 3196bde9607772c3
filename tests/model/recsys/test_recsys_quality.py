"""Quality floors and behaviour of the models trained on a 200-user slice of MovieLens (temporal split)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from systems.common.data import GENRES
from systems.recsys.candidates import popularity_scores
from systems.recsys.data import Split, user_histories
from systems.recsys.evaluate import evaluate_scorer
from systems.recsys.features import item_stats_snapshots
from systems.recsys.pipeline import Recommender
from systems.recsys.train import tower_user_vectors
from tests.recsys_support import ci_preset

pytestmark = pytest.mark.model

N_ITEMS = 1682
PEERS = ("popularity", "implicit_als", "implicit_bpr", "two_tower", "full_pipeline")


def test_split_has_no_leakage_and_eval_is_full_ranking(
    small_quality: dict[str, Any], small_split: Split, small_recommender: Recommender
) -> None:
    split, meta = small_split, small_quality["split"]
    # the split recomputed from the raw data is the one the model was trained and scored on
    for key in ("cut_ts", "train_rows", "test_rows", "test_users_warm"):
        assert split.meta[key] == meta[key], key
    assert meta["test_users_warm"] >= 10
    # no leakage through time: every training interaction precedes the cut, every test interaction follows it
    assert split.train["ts"].max() < split.cut_ts <= split.test["ts"].min()
    # ... nor through pairs: no (user, item) of the test set is in training
    train_pairs = set(zip(split.train["user_idx"], split.train["item_idx"], strict=True))
    assert not train_pairs & set(zip(split.test["user_idx"], split.test["item_idx"], strict=True))
    # ... nor through the trained artefacts: histories, item stats and trending come from training rows only
    art = small_recommender.art
    assert art.histories == user_histories(split.train, split.n_users)
    stats = item_stats_snapshots(split.train, split.n_items, until=split.cut_ts)
    np.testing.assert_array_equal(art.item_stats, stats.latest())
    trending = popularity_scores(
        split.train["item_idx"].to_numpy(),
        split.train["ts"].to_numpy(),
        split.n_items,
        now=split.cut_ts,
        half_life_days=ci_preset().trending_half_life_days,
    )
    np.testing.assert_allclose(art.pop_scores, trending, rtol=1e-6)

    # full ranking: the evaluator gets a score for every catalogue item for every warm test user, and doing
    # that with the saved two-tower reproduces the stored metrics (so they were computed the same way)
    truth = split.test_truth()
    shapes: list[tuple[int, int]] = []

    def score(users: np.ndarray) -> np.ndarray:
        s = tower_user_vectors(art.tower, [art.histories[u] for u in users], art.user_cats[users]) @ art.item_vecs.T
        shapes.append(s.shape)
        return s

    again = evaluate_scorer(score, truth, split.train_matrix(), n_items=split.n_items)
    assert {cols for _, cols in shapes} == {N_ITEMS} and sum(rows for rows, _ in shapes) == len(truth)
    assert again == pytest.approx(small_quality["quality"]["two_tower"], rel=1e-6)
    for model in PEERS:
        assert small_quality["quality"][model]["users"] == len(truth) == meta["test_users_warm"]


def _random_ranking_expectation(split: Split) -> tuple[float, float]:
    """Exact expected recall@50 and NDCG@10 of a uniformly random full ranking (seen items masked), per user
    averaged: recall@K = K / n_unseen; E[DCG@10] = (|truth| / n_unseen) * sum of the 10 discounts."""
    seen = split.train_matrix()
    discounts = 1.0 / np.log2(np.arange(2, 12))
    recall50, ndcg10 = [], []
    for u, items in split.test_truth().items():
        n_unseen = split.n_items - seen[u].nnz
        recall50.append(50 / n_unseen)
        ndcg10.append(len(items) / n_unseen * discounts.sum() / discounts[: min(len(items), 10)].sum())
    return float(np.mean(recall50)), float(np.mean(ndcg10))


def test_models_beat_random_by_a_wide_margin(small_quality: dict[str, Any], small_split: Split) -> None:
    q = small_quality["quality"]
    random_recall50, random_ndcg10 = _random_ranking_expectation(small_split)  # ~0.032, ~0.012
    assert random_recall50 >= 50 / N_ITEMS  # masking seen items only helps a random ranking
    for model in ("popularity", "implicit_als", "two_tower", "full_pipeline", "lgbm_pipeline"):
        assert q[model]["recall@50"] > 3 * random_recall50, (model, q[model])
        assert 3 * random_ndcg10 < q[model]["ndcg@10"] <= 1.0, (model, q[model])
    # personalised retrieval covers more of the catalogue than one global list
    assert q["two_tower"]["coverage@10"] > 2 * q["popularity"]["coverage@10"]


def test_session_steers_recommendations_by_genre(small_recommender: Recommender) -> None:
    rec = small_recommender
    a = rec.art
    horror, child = GENRES.index("Horror"), GENRES.index("Children's")
    horror_items = [int(i) for i in np.flatnonzero(a.genres[:, horror])[:15]]
    child_items = [int(i) for i in np.flatnonzero(a.genres[:, child])[:15]]

    def share(session: list[int], g: int) -> float:
        # retrieval stage: the two-tower and content candidates of an anonymous session
        ctx = rec.user_context(None, session_items=session)
        items, origin, _, _ = rec.candidates(ctx, set(session))
        personal = items[[o != "popularity" for o in origin]][:50]
        return float(a.genres[personal, g].mean())

    assert share(horror_items, horror) > share(child_items, horror) + 0.1
    assert share(child_items, child) > share(horror_items, child) + 0.1


def test_new_item_without_interactions_gets_a_content_vector(small_recommender: Recommender) -> None:
    """Item-id dropout: an item embedded with the *unknown* id is still near its own trained vector."""
    a = small_recommender.art
    tower = a.tower
    idx = torch.arange(200)
    with torch.inference_mode():
        cold = tower.item_features(
            torch.full_like(idx, tower.cfg.n_items), tower.genres[idx], tower.content[idx]
        ).numpy()  # type: ignore[index]
    warm = a.item_vecs[:200]
    own = (cold * warm).sum(1)
    other = (cold @ warm.T).mean(1)
    assert float(np.mean(own > other)) > 0.8


def test_unknown_user_and_empty_history_are_served(small_recommender: Recommender) -> None:
    rec = small_recommender
    out = rec.recommend(rec.user_context(None), k=10)
    assert len(out.items) == 10 and len(set(out.items.tolist())) == 10
    assert "popularity" in out.sources
    assert np.isfinite(out.scores).all()


@pytest.mark.xfail(
    strict=True,
    reason="known defect: at mmr_lambda 0.9 with rank-step relevance (1/50 per step) MMR never reorders slates whose "
    "items are ~0.92 similar, so it does not diversify on the CI model; the re-rank is to be tuned on validation "
    "(and switched off where it costs NDCG)",
)
def test_rankers_order_candidates_differently_and_rerank_diversifies(small_recommender: Recommender) -> None:
    rec = small_recommender
    ctx = rec.user_context(0)
    deep = rec.recommend(ctx, k=10, ranker="deep", rerank=False).items.tolist()
    lgbm = rec.recommend(ctx, k=10, ranker="lgbm", rerank=False).items.tolist()
    assert deep != lgbm
    v = rec.art.item_vecs

    def mean_sim(items: np.ndarray) -> float:
        s = v[items] @ v[items].T
        return float((s.sum() - np.trace(s)) / (len(items) * (len(items) - 1)))

    # MMR must lower the slates' intra-list similarity, strictly: a no-op re-rank would pass a "<="
    users = [u for u in range(len(rec.art.histories)) if rec.art.histories[u]][:20]
    changed, plain_sim, mmr_sim = 0, [], []
    for u in users:
        ctx = rec.user_context(u)
        plain = rec.recommend(ctx, k=10, rerank=False).items
        mmr = rec.recommend(ctx, k=10, rerank=True).items
        changed += not np.array_equal(plain, mmr)
        plain_sim.append(mean_sim(plain))
        mmr_sim.append(mean_sim(mmr))
    assert np.mean(mmr_sim) < np.mean(plain_sim), f"MMR changed {changed} of {len(users)} slates"
