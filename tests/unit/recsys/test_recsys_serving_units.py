"""The request path gives the numbers the study measured: each fast path against the batch path, bit for bit
where the ranker's tree splits would see the difference, and to float rounding where torch is the reference."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from systems.recsys.dataset import IdMap, synthetic
from systems.recsys.peers import EASE, CoVisit, ItemKNN, Popularity, SASRecScorer, Trending, csr_rows_sum
from systems.recsys.protocol import Holdout, request_stage, serving_stage
from systems.recsys.ranking import (
    Candidates,
    ItemClock,
    StackedRanker,
    mmr_lists,
    mmr_order,
    prepare_stage,
    ranked_lists,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def fitted() -> tuple[Holdout, dict, StackedRanker]:
    torch.manual_seed(0)
    log = synthetic(n_users=120, n_items=80, per_user=20, seed=3)
    stage = prepare_stage(serving_stage(log.interactions, n_users=log.n_users, n_items=log.n_items))
    sources = {
        "ease": EASE(l2=10.0).fit(stage),
        "sasrec": SASRecScorer(
            seed=0, max_len=10, dim=16, blocks=2, heads=2, dropout=0.2, lr=1e-2, batch=64, epochs=1, negatives=20
        ).fit(stage),
        "covisit": CoVisit(window=3, last=3, decay=0.8).fit(stage),
        "item_knn": ItemKNN(neighbours=20, shrink=10).fit(stage),
        "trending": Trending(half_life_days=7).fit(stage),
    }
    cats, _ = log.category_matrix()
    uf = np.full((log.n_users, 2), -1, dtype=np.int64)
    uf[::3] = [4, 1]  # some users with features, the rest "unknown"
    ranker = StackedRanker(per_source=15, categories=cats, user_features=uf)
    return stage, sources, ranker


def _histories(stage: Holdout) -> list[np.ndarray]:
    h = stage.histories
    return [h[0], h[5][:2], np.zeros(0, dtype=np.int64), np.concatenate([h[7], h[7][:3]]), h[9][-1:]]


def test_each_source_scores_one_request_as_its_batch_path(fitted: tuple) -> None:
    stage, sources, _ = fitted
    hists = _histories(stage)
    t_end = int(stage.fit["ts"].max()) + 1
    for name, src in sources.items():
        batch = np.asarray(src.score_history(hists, np.full(len(hists), t_end)), dtype=np.float64)
        for h, row in zip(hists, batch, strict=True):
            np.testing.assert_array_equal(src.score_one(h, t_end), row, err_msg=name)
    # trending after the log only decays (and equals the batch path's exact sum up to rounding)
    tr = sources["trending"]
    later = t_end + 10 * 86_400
    np.testing.assert_allclose(tr.score_one(hists[0], later), tr.score_history(hists[:1], np.array([later]))[0])
    pop = Popularity().fit(stage)
    np.testing.assert_array_equal(pop.score_one(hists[0], 0), pop.score_history(hists[:1], np.array([0]))[0])


def test_numpy_sasrec_equals_the_torch_model(fitted: tuple) -> None:
    stage, sources, _ = fitted
    sas = sources["sasrec"]
    L = sas.model.cfg.max_len
    for h in [*_histories(stage), np.arange(25) % 80]:  # longer than max_len too
        inp = np.zeros((1, L), dtype=np.int64)
        tail = np.asarray(h[-L:], dtype=np.int64) + 1
        if len(tail):
            inp[0, L - len(tail) :] = tail
        with torch.inference_mode():
            ref = sas.model.next_item_scores(torch.from_numpy(inp)).numpy()[0]
        np.testing.assert_allclose(sas.score_one(h, 0), ref, rtol=1e-4, atol=1e-5)


def test_a_request_gets_the_candidates_and_feature_rows_of_the_batch_path(fitted: tuple) -> None:
    stage, sources, ranker = fitted
    hists = _histories(stage)
    users = np.array([0, 3, -1, 7, 9])
    t_end = int(stage.fit["ts"].max()) + 1
    req = request_stage(stage, users, np.full(len(users), t_end))
    batch = ranker.build(sources, req, histories=hists)
    for g, (u, h) in enumerate(zip(users, hists, strict=True)):
        cand, x = ranker.build_one(sources, stage, user=int(u), t=t_end, hist=h)
        rows = batch.group == g
        np.testing.assert_array_equal(cand, batch.items[rows])
        np.testing.assert_array_equal(x, batch.features[rows])  # every bit: tree splits see them all
        assert not np.isin(cand, h).any()  # nothing the shopper already has


def test_served_ordering_and_mmr_equal_the_studys_lists() -> None:
    rng = np.random.default_rng(0)
    items = np.sort(rng.choice(500, 120, replace=False))
    scores = np.round(rng.normal(size=120), 1)  # ties on purpose
    cands = Candidates(
        users=np.zeros(1, dtype=np.int64),
        items=items,
        group=np.zeros(120, dtype=np.int64),
        features=np.zeros((120, 1), dtype=np.float32),
        label=np.zeros(120, dtype=np.float32),
    )
    order = np.argsort(-scores, kind="stable")
    np.testing.assert_array_equal(items[order[:50]], ranked_lists(cands, scores, 1, k=50)[0])
    vecs = rng.normal(size=(500, 8))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    served = mmr_order(items[order[:50]], vecs, 0.9)
    np.testing.assert_array_equal(served[:10], mmr_lists(cands, scores, 1, vecs, 0.9, k=10)[0])
    assert set(served) == set(items[order[:50]])


def test_csr_row_sums_and_the_item_clock_fast_path() -> None:
    rng = np.random.default_rng(1)
    m = sp.random(40, 30, density=0.2, format="csr", random_state=1, dtype=np.float32)
    rows = np.array([3, 3, 7, 0])
    w = rng.random(4)
    np.testing.assert_allclose(csr_rows_sum(m, rows, w), w @ m.toarray()[rows], rtol=1e-6)
    np.testing.assert_allclose(csr_rows_sum(m, np.zeros(0, dtype=np.int64)), np.zeros(30))
    log = synthetic(n_users=30, n_items=20, per_user=10, seed=2)
    stage = serving_stage(log.interactions, n_users=log.n_users, n_items=log.n_items)
    clock = ItemClock.build(stage)
    f = stage.fit
    items = np.arange(20)
    for t in (clock.end + 5 * 86_400, clock.end, int(f["ts"].median())):  # after the log (fast path) and inside
        got = clock.days_since_last(items, np.full(20, t))
        for i in items:
            before = f.loc[(f["item_idx"] == i) & (f["ts"] < t), "ts"]
            assert got[i] == pytest.approx((t - before.max()) / 86_400 if len(before) else 3650.0)


def test_query_text_finds_integer_and_string_ids() -> None:
    m = IdMap.from_values([5, "sku-9", "42"])
    assert m.index_of("5") == 0 and m.index_of(42) == 2 and m.index_of("sku-9") == 1 and m.index_of(7) == -1
