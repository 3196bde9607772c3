"""Exact checks of the quality study's parts: ids, the split, metrics, intervals, peers, SASRec, the gate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from systems.recsys.dataset import IdMap, histories, log_from_frames, synthetic
from systems.recsys.peers import EASE, Trending, decayed_counts
from systems.recsys.protocol import leave_last_k, per_user_metrics, ratio_ci, serving_stage
from systems.recsys.study import PIPELINE, gate

pytestmark = pytest.mark.unit


def test_id_map_keeps_public_ids_and_maps_query_text() -> None:
    m = IdMap.from_values([np.int64(907), 12, 907, 3])
    assert m.ids == [907, 12, 3] and all(type(i) is int for i in m.ids)  # numpy ints become plain ints
    assert m.index_of(12) == 1 and m.index_of("12") == 1 and m.index_of(5) == -1  # query strings match int ids
    s = IdMap.from_values(["sku-9", "sku-1"])
    assert s.indices(["sku-1", "nope", "sku-9"]).tolist() == [1, -1, 0]
    with pytest.raises(ValueError):
        IdMap(["a", "a"])


def test_id_map_reads_only_ascii_integers_in_text_as_integer_ids() -> None:
    """Query and store text that ``str.isdigit`` calls digits but ``int`` refuses (a superscript, a doubled sign)
    is an unknown string id, not a crash of the request (found by fuzzing ``GET /recommend``)."""
    m = IdMap.from_values([36, 5, -5])
    assert m.indices(["³6", "--5", "５", "36", "-5", "9" * 40]).tolist() == [-1, -1, -1, 0, 2, -1]


def test_log_with_sparse_string_ids_and_no_user_features() -> None:
    events = pd.DataFrame(
        {"user_id": ["u-z", "u-a", "u-z"], "item_id": ["sku-900000", "sku-7", "sku-7"], "ts": [30, 10, 20]}
    )
    log = log_from_frames("t", events)
    # indices follow time (first appearance), never the ids' values
    assert log.users.ids == ["u-a", "u-z"] and log.items.ids == ["sku-7", "sku-900000"]
    assert log.interactions[["user_idx", "item_idx", "ts"]].values.tolist() == [[0, 0, 10], [1, 0, 20], [1, 1, 30]]
    assert log.user_features is None and log.category_matrix()[0].shape == (2, 0)
    assert log.title(1) == "sku-900000"  # no titles: the id is the name
    with pytest.raises(ValueError, match="lacks columns"):
        log_from_frames("t", events.drop(columns="ts"))


def test_synthetic_log_has_string_ids_a_long_span_and_no_user_features() -> None:
    log = synthetic(n_users=50, n_items=60, per_user=20)
    s = log.summary()
    assert s["span_days"] > 3 * 365 and not s["user_features"] and s["item_categories"]
    assert all(isinstance(i, str) and i.startswith("sku-") for i in log.items.ids)
    assert all(isinstance(u, str) for u in log.users.ids)


def test_leave_last_k_is_temporal_per_user_and_disjoint() -> None:
    log = synthetic(n_users=60, n_items=80, per_user=24, seed=3)
    k = 3
    p = leave_last_k(log.interactions, n_users=log.n_users, n_items=log.n_items, k=k)
    assert len(p.test.users) > 30 and len(p.val.users) > 30  # users whose held-out items are all repeats drop out
    hist_all = histories(log.interactions, log.n_users)
    inter = log.interactions
    for stage, drop in ((p.val, 2 * k), (p.test, k)):
        fit_hist = stage.histories
        for row, u in enumerate(stage.users):
            full = hist_all[int(u)]
            # the fit rows are the user's history minus the last `drop` interactions, in the same order
            assert fit_hist[int(u)].tolist() == full[:-drop].tolist()
            held = full[len(full) - drop : len(full) - drop + k]
            assert set(stage.truth[row].tolist()) <= set(held.tolist())
            assert not set(stage.truth[row].tolist()) & set(fit_hist[int(u)].tolist())
            # the request happens when the first held-out item was seen: every fit row of the user precedes it
            last_fit = inter[(inter.user_idx == u)].ts.to_numpy()[len(full) - drop - 1]
            assert last_fit <= stage.request_ts[row]
    # the test stage learns from exactly the validation rows more than the validation stage
    assert len(p.test.fit) - len(p.val.fit) == k * p.meta["eligible_users"]
    val_rows = set(map(tuple, p.val.fit[["user_idx", "item_idx", "ts"]].to_numpy().tolist()))
    assert val_rows <= set(map(tuple, p.test.fit[["user_idx", "item_idx", "ts"]].to_numpy().tolist()))


def test_metrics_are_exact_on_a_hand_example() -> None:
    ranked = np.array([[5, 1, 7, *range(100, 147)], [9, 8, *range(200, 248)]])
    out = per_user_metrics(ranked, [np.array([1, 3]), np.array([42])])
    d = 1.0 / np.log2(np.arange(2, 4))
    assert out["ndcg@10"][0] == pytest.approx(d[1] / (d[0] + d[1]))  # hit at rank 2 of 2 relevant
    assert out["recall@10"].tolist() == [0.5, 0.0] and out["mrr@50"].tolist() == [0.5, 0.0]


def test_paired_ratio_interval() -> None:
    rng = np.random.default_rng(0)
    b = rng.random(500)
    lo, hi = ratio_ci(1.2 * b, b, n_boot=400)
    assert lo == pytest.approx(1.2) and hi == pytest.approx(1.2)  # paired: the shared noise cancels exactly
    lo, hi = ratio_ci(b + rng.normal(0, 0.05, 500), b, n_boot=400)
    assert lo < 1.0 < hi


def test_decayed_counts_match_a_brute_force_sum() -> None:
    rng = np.random.default_rng(1)
    ts = np.sort(rng.integers(0, 100 * 86_400, size=300))
    items = rng.integers(0, 7, size=300)
    times = rng.integers(0, 110 * 86_400, size=20)
    got = decayed_counts(ts, items, 7, times, half_life_days=5.0)
    for r, t in enumerate(times):
        before = ts < t
        want = np.bincount(items[before], weights=0.5 ** ((t - ts[before]) / (5 * 86_400)), minlength=7)
        np.testing.assert_allclose(got[r], want, rtol=1e-9, atol=1e-12)
    # all-time popularity is the infinite half-life
    np.testing.assert_allclose(
        decayed_counts(ts, items, 7, times[:1], np.inf)[0], np.bincount(items[ts < times[0]], minlength=7)
    )


def test_trending_only_counts_what_happened_before_the_request() -> None:
    inter = pd.DataFrame({"user_idx": [0, 0, 1], "item_idx": [0, 1, 1], "ts": [10, 20, 5000], "weight": 1.0})
    t = Trending(half_life_days=1.0).fit(serving_stage(inter, n_users=2, n_items=2))
    s = t.score(np.array([0, 0]), np.array([15, 6000]))
    assert s[0].tolist()[1] == 0.0 and s[0][0] > 0  # at t=15 item 1 has not been seen yet
    assert s[1][1] > s[1][0]  # later, item 1's recent event outweighs item 0's old one


def test_ease_is_the_closed_form() -> None:
    rng = np.random.default_rng(2)
    x = (rng.random((30, 8)) < 0.3).astype(np.float64)
    inter = pd.DataFrame([(u, i, 0, 1.0) for u, i in zip(*np.nonzero(x), strict=True)],
                         columns=["user_idx", "item_idx", "ts", "weight"])  # fmt: skip
    e = EASE(l2=3.0).fit(serving_stage(inter, n_users=30, n_items=8))
    p = np.linalg.inv(x.T @ x + 3.0 * np.eye(8))
    b = np.eye(8) - p / np.diag(p)
    np.testing.assert_allclose(e.b, b, atol=1e-5)
    np.testing.assert_allclose(e.score(np.arange(30), np.zeros(30)), x @ b, atol=1e-4)


def test_sasrec_is_causal() -> None:
    from systems.recsys.model import SASRec, SASRecConfig

    torch.manual_seed(0)
    m = SASRec(SASRecConfig(n_items=20, max_len=6, dim=16, blocks=2, heads=2, dropout=0.0)).eval()
    a = torch.tensor([[0, 0, 3, 4, 5, 6]])
    b = torch.tensor([[0, 0, 3, 4, 9, 1]])  # differs only after position 3
    with torch.no_grad():
        ha, hb = m.hidden(a), m.hidden(b)
        torch.testing.assert_close(ha[:, :4], hb[:, :4])  # nothing at t <= 3 depends on later items
        assert not torch.allclose(ha[:, -1], hb[:, -1])
        assert torch.isfinite(m.next_item_scores(torch.zeros(1, 6, dtype=torch.long))).all()  # empty history


def test_gate_picks_the_best_validation_score_and_ties_go_to_the_simpler_model() -> None:
    assert gate({"trending": 0.12, "ease": 0.15, PIPELINE: 0.17}) == PIPELINE
    assert gate({"trending": 0.21, "ease": 0.15, PIPELINE: 0.19}) == "trending"  # losing to trending: not served
    assert gate({"covisit": 0.2, PIPELINE: 0.2}) == "covisit"
    with pytest.raises(ValueError):
        gate({})


def test_verdict_words_follow_the_interval() -> None:
    from systems.recsys.study import add_verdict

    def rep(ratio: float, ci: list[float], served: str = PIPELINE) -> dict:
        return {
            "ratio": ratio,
            "ratio_ci95": ci,
            "served": {"name": served},
            "best_peer": {"name": "covisit"},
            "best_peer_overall": {"name": "covisit"},
            "pipeline_vs_best_peer": {"ratio": ratio, "ci95": ci},
        }

    win = add_verdict(rep(1.15, [1.05, 1.25]))
    assert win["target_met"] and win["ratio_lower_above_1"] and win["verdict"].startswith("pipeline beats covisit")
    small = add_verdict(rep(1.05, [1.01, 1.09]))  # better, but not by the 10 % the target asks
    assert small["ratio_lower_above_1"] and not small["target_met"]
    tie = add_verdict(rep(1.12, [0.97, 1.3]))  # a big point estimate inside the noise is not a win
    assert not tie["target_met"] and "cannot be told apart" in tie["verdict"]
    loss = add_verdict(rep(0.9, [0.85, 0.95], served="ease"))
    assert "is worse than" in loss["verdict"] and "worse than the best tuned peer" in loss["pipeline_verdict"]
