"""Exact behaviour of the recsys building blocks on tiny inputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from systems.recsys.abtest import Experiment, analyze, delta_ratio, synthetic_exposures
from systems.recsys.candidates import AnnIndex, merge_candidates, popularity_scores, recall_at_k, top_items
from systems.recsys.data import interactions_matrix, pad_histories, temporal_split
from systems.recsys.evaluate import evaluate_scorer, mask_seen, ranking_metrics, topk
from systems.recsys.features import DAY, context_features, item_stats_snapshots
from systems.recsys.model import DeepRanker, RankerConfig, TowerConfig, TwoTower
from systems.recsys.stream import BrowseEvent, SessionState

pytestmark = pytest.mark.unit


def _inter(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["user_idx", "item_idx", "ts"])
    df["rating"] = 4
    return df.sort_values("ts", kind="mergesort").reset_index(drop=True)


def test_temporal_split_cuts_by_time_and_drops_seen_pairs() -> None:
    rng = np.random.default_rng(0)
    rows = [
        (int(u), int(i), int(t))
        for u, i, t in zip(rng.integers(0, 20, 500), rng.integers(0, 50, 500), rng.permutation(500), strict=True)
    ]
    split = temporal_split(_inter(rows), test_fraction=0.2, n_users=20, n_items=50)
    assert split.train["ts"].max() < split.cut_ts <= split.test["ts"].min()
    train_pairs = set(zip(split.train["user_idx"], split.train["item_idx"], strict=True))
    assert not train_pairs & set(zip(split.test["user_idx"], split.test["item_idx"], strict=True))
    assert abs(len(split.train) - 400) <= 1
    # truth only for users with training history
    assert set(split.test_truth()) <= set(split.train["user_idx"])


def test_ranking_metrics_exact() -> None:
    ranked = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    truth = [{1, 9}, {8}]
    m = ranking_metrics(ranked, truth, n_items=10, ks=(2, 4))
    assert m["recall@2"] == pytest.approx((1 / 2 + 0) / 2)
    ndcg_u0 = 1.0 / (1.0 + 1 / np.log2(3))  # hit at rank 1, ideal has 2 relevant
    ndcg_u1 = (1 / np.log2(5)) / 1.0  # hit at rank 4
    assert m["ndcg@4"] == pytest.approx((ndcg_u0 + ndcg_u1) / 2)
    assert m["coverage@10"] == pytest.approx(8 / 10)


def test_full_ranking_masks_training_items() -> None:
    seen = interactions_matrix(pd.DataFrame({"user_idx": [0, 0], "item_idx": [0, 1]}), 1, 5)
    scores = np.array([[9.0, 8.0, 1.0, 2.0, 3.0]])
    assert topk(mask_seen(scores, np.array([0]), seen), 2).tolist() == [[4, 3]]
    m = evaluate_scorer(lambda u: np.tile([9.0, 8.0, 1.0, 2.0, 3.0], (len(u), 1)), {0: {4}}, seen, n_items=5, k_max=4)
    assert m["recall@10"] == 1.0 and m["ndcg@10"] == 1.0


def test_item_stats_are_point_in_time() -> None:
    t0 = 1000 * DAY
    inter = _inter([(0, 0, t0 + 10), (1, 0, t0 + DAY + 5), (2, 1, t0 + 2 * DAY + 5)])
    snaps = item_stats_snapshots(inter, 2, until=t0 + 3 * DAY)
    # a request during day 1 sees only day-0 interactions
    assert np.expm1(snaps.at(t0 + DAY + 100)[0, 0]) == pytest.approx(1.0)
    assert np.expm1(snaps.at(t0 + 3 * DAY)[:, 0]).tolist() == pytest.approx([2.0, 1.0])
    assert np.expm1(snaps.at(t0)[:, 0]).tolist() == pytest.approx([0.0, 0.0])
    frame = snaps.to_frame()
    assert set(frame.columns) >= {"item_id", "event_timestamp", "pop_all", "pop_7d", "mean_rating"}


def test_popularity_decay_and_top_items() -> None:
    items = np.array([0, 0, 1])
    ts = np.array([0, 0, 10 * DAY])
    allt = popularity_scores(items, ts, 3, now=11 * DAY, half_life_days=np.inf)
    trend = popularity_scores(items, ts, 3, now=11 * DAY, half_life_days=1.0)
    assert allt.tolist() == [2.0, 1.0, 0.0]
    assert trend[1] > trend[0]
    ids, _ = top_items(allt, 2, exclude={0})
    assert ids.tolist() == [1, 2]


def test_merge_candidates_round_robin_dedup_exclude() -> None:
    a = ("two_tower", np.array([1, 2, 3]), np.zeros(3))
    b = ("content", np.array([2, 4, 5]), np.zeros(3))
    c = ("popularity", np.array([9, 1]), np.zeros(2))
    items, origin, _ = merge_candidates([a, b, c], exclude={3}, limit=10)
    assert items.tolist() == [1, 2, 9, 4, 5]
    assert origin == ["two_tower", "content", "popularity", "content", "content"]
    items, _, _ = merge_candidates([a, b, c], exclude=set(), limit=2)
    assert len(items) == 2


def test_hnsw_recall_against_exact() -> None:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((200, 32))
    x = centers[rng.integers(0, 200, 10_000)] + 0.3 * rng.standard_normal((10_000, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    q = x[rng.integers(0, len(x), 200)] + 0.05 * rng.standard_normal((200, 32)).astype(np.float32)
    exact = AnnIndex.build(x, kind="exact")
    hnsw = AnnIndex.build(x, kind="hnsw", m=16, ef_construction=40, ef_search=64)
    _, e = exact.search(q, 10)
    _, a = hnsw.search(q, 10)
    assert recall_at_k(a, e, 10) >= 0.95
    assert recall_at_k(e, e, 10) == 1.0


def test_ivf_pq_refine_recall_and_reload(tmp_path: Path) -> None:
    """The serving index type: IVF + 4-bit PQ fast scan + exact re-rank; nprobe survives save/load via ann.json."""
    from systems.recsys.scale import save_operating_point

    rng = np.random.default_rng(1)
    x = rng.standard_normal((20_000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.integers(0, len(x), 100)] + 0.3 * rng.standard_normal((100, 32)).astype(np.float32)
    _, e = AnnIndex.build(x, kind="exact").search(q, 10)
    ivf = AnnIndex.build(x, kind="ivf", factory="IVF64,PQ32x4fs,RFlat", nprobe=1)
    _, low = ivf.search(q, 10)
    ivf.set_search_param(32)
    _, a = ivf.search(q, 10)
    assert ivf.search_param == 32
    assert recall_at_k(a, e, 10) >= 0.93 > 0.3 > recall_at_k(low, e, 10)  # nprobe is the recall knob (0.96, 0.15)
    ivf.save(str(tmp_path / "ann.faiss"))
    save_operating_point(tmp_path, ivf)
    op = json.loads((tmp_path / "ann.json").read_text())
    back = AnnIndex.load(str(tmp_path / "ann.faiss"), kind=op["kind"], factory=op["factory"])
    back.set_search_param(op["search_param"])
    assert op == {"kind": "ivf", "factory": "IVF64,PQ32x4fs,RFlat", "search_param": 32}
    assert np.array_equal(back.search(q, 10)[1], a)


def test_deep_ranker_shared_history_path_matches_forward() -> None:
    """score_candidates (history projected once, broadcast) == forward with the history repeated per row."""
    torch.manual_seed(0)
    cfg = RankerConfig(n_items=30, n_occupations=3, n_dense=5, dim=8, heads=2, hidden=16)
    ranker = DeepRanker(cfg).eval()
    ids = torch.randint(0, 30, (7,))
    dense = torch.randn(7, 5)
    cats = torch.tensor([[1, 0, 2]])
    for hist in (torch.tensor([[31] * 3 + [4, 5, 6]]), torch.full((1, 6), 31)):  # some padding / all padding
        with torch.inference_mode():
            ref = ranker(ids, hist.expand(7, -1), cats.expand(7, -1), dense)
            fast = ranker.score_candidates(ids, hist, cats, dense)
        torch.testing.assert_close(fast, ref)


def _tower() -> TwoTower:
    cfg = TowerConfig(n_items=6, n_genres=2, content_dim=4, n_occupations=3, dim=8, hidden=16)
    return TwoTower(cfg, torch.eye(6)[:, :2], torch.ones(6, 4))


def _reference_loss(u: torch.Tensor, v: torch.Tensor, ids: list[int], log_q: list[float], tau: float) -> float:
    """The sampled softmax by hand: logit (i, j) = u_i.v_j / tau - log q_j; row i's negatives are the other rows'
    items except copies of its own item; the loss is the mean over rows of -log softmax at the diagonal."""
    logits = (u @ v.T).numpy().astype(np.float64) / tau - np.asarray(log_q)[None, :]
    losses = []
    for i in range(len(ids)):
        row = logits[i, [j for j in range(len(ids)) if j == i or ids[j] != ids[i]]]
        losses.append(np.log(np.exp(row - row.max()).sum()) + row.max() - logits[i, i])
    return float(np.mean(losses))


def test_log_q_correction_and_duplicate_masking() -> None:
    torch.manual_seed(0)
    m = _tower()
    tau = m.cfg.temperature
    u = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    ids = torch.tensor([0, 1, 2, 3])
    same = m.in_batch_loss(u, v, ids, torch.zeros(4))
    assert float(same) == pytest.approx(_reference_loss(u, v, [0, 1, 2, 3], [0.0] * 4, tau), rel=1e-5)
    # a constant log q shifts every logit equally: softmax unchanged
    assert torch.allclose(same, m.in_batch_loss(u, v, ids, torch.full((4,), -3.0)))
    # log q_j comes off column j (not row i): a popular item (high q) weighs less as every other row's negative
    log_q = [0.0, 0.0, 0.0, 2.0]
    corrected = float(m.in_batch_loss(u, v, ids, torch.tensor(log_q)))
    assert corrected == pytest.approx(_reference_loss(u, v, [0, 1, 2, 3], log_q, tau), rel=1e-5)
    assert corrected != pytest.approx(float(same), rel=1e-3)  # a per-row shift would leave the loss unchanged
    # the same item twice (same id, same vector): the copy is masked, it is not a negative for its twin
    v_dup = v.clone()
    v_dup[1] = v_dup[0]
    masked = float(m.in_batch_loss(u, v_dup, torch.tensor([0, 0, 2, 3]), torch.zeros(4)))
    assert masked == pytest.approx(_reference_loss(u, v_dup, [0, 0, 2, 3], [0.0] * 4, tau), rel=1e-5)
    # unmasked, rows 0 and 1 would each compete with a logit equal to their own positive: a finite, lower loss
    assert np.isfinite(masked) and masked < _reference_loss(u, v_dup, [0, 1, 2, 3], [0.0] * 4, tau)


def test_user_tower_has_no_user_id_and_moves_with_history() -> None:
    """A user is what they did: no per-user parameters; the vector is a function of the history items (padding
    carries nothing) and the demographics, so a new click moves it and an empty history still embeds."""
    m = _tower().eval()
    pad = 7
    table_rows = {e.num_embeddings for e in m.modules() if isinstance(e, torch.nn.Embedding)}
    assert table_rows == {6 + 2, 9, 3, 3 + 1}  # item tables (+unknown, +pad) and the categoricals, no user table
    cats = torch.tensor([[8, 2, 3], [8, 2, 3]])
    hist = torch.tensor([[pad, pad, 1], [pad, pad, 2]])
    u = m.user_embed(hist, cats)
    assert u.shape == (2, 8) and not torch.allclose(u[0], u[1])
    assert torch.allclose(u.norm(dim=-1), torch.ones(2))
    longer_padding = m.user_embed(torch.tensor([[pad, pad, pad, pad, 1]]), cats[:1])
    torch.testing.assert_close(longer_padding[0], u[0])
    empty = m.user_embed(torch.full((1, 3), pad), cats[:1])
    assert torch.isfinite(empty).all()


def test_pad_histories_and_context() -> None:
    assert pad_histories([[1, 2, 3], []], 2, pad=9).tolist() == [[2, 3], [9, 9]]
    c = context_features(np.array([0, 6 * 3600]))
    assert c.shape == (2, 4) and c[0, 0] == pytest.approx(0.0) and c[1, 0] == pytest.approx(1.0)


def test_experiment_assignment_is_deterministic_and_balanced() -> None:
    exp = Experiment("e1", ("a", "b"), (0.5, 0.5))
    assert [exp.assign(u) for u in range(50)] == [exp.assign(u) for u in range(50)]
    # deterministic across processes and restarts, not just within one: a pure function of sha256("e1:<user>")
    # (Python's salted hash() would pass the line above and reshuffle users at every deploy)
    by_hash = ["a" if int(hashlib.sha256(f"e1:{u}".encode()).hexdigest()[:16], 16) < 2**63 else "b" for u in range(50)]
    assert [Experiment("e1", ("a", "b"), (0.5, 0.5)).assign(u) for u in range(50)] == by_hash
    share = np.mean([exp.assign(u) == "b" for u in range(20_000)])
    assert share == pytest.approx(0.5, abs=0.015)
    other = Experiment("e2", ("a", "b"), (0.5, 0.5))
    agree = np.mean([exp.assign(u) == other.assign(u) for u in range(5000)])
    assert agree == pytest.approx(0.5, abs=0.03)  # experiments are independent (salted hash)


def test_analysis_detects_known_effect_and_not_an_aa() -> None:
    exp = Experiment("known", ("control", "treatment"), (0.5, 0.5))
    log = synthetic_exposures(
        exp, {"control": 0.05, "treatment": 0.065}, {"control": 10, "treatment": 10}, n_users=8000
    )
    res = analyze(log, exp)
    t = res["tests"]["treatment"]
    assert t["significant"] and t["diff"] > 0
    assert t["diff_ci"][0] < 0.015 < t["diff_ci"][1]
    assert not res["srm"]["mismatch"]
    aa = analyze(
        synthetic_exposures(
            exp, {"control": 0.05, "treatment": 0.05}, {"control": 10, "treatment": 10}, n_users=8000, seed=3
        ),
        exp,
    )
    assert not aa["tests"]["treatment"]["significant"]


def test_srm_is_flagged() -> None:
    exp = Experiment("srm", ("control", "treatment"), (0.5, 0.5))
    log = synthetic_exposures(exp, {"control": 0.05, "treatment": 0.05}, {"control": 10, "treatment": 10}, n_users=6000)
    drop = log[(log["variant"] == "treatment")].sample(frac=0.15, random_state=0).index
    assert analyze(log.drop(drop), exp)["srm"]["mismatch"]


def test_latency_guardrail_stops_slow_variant() -> None:
    exp = Experiment("g", ("control", "slow"), (0.5, 0.5), latency_guardrail_ms=30.0)
    for _ in range(300):
        exp.record_latency("control", 5.0)
        exp.record_latency("slow", 80.0)
    assert exp.stopped == {"slow"}
    users = [u for u in range(200) if exp.assigned(u) == "slow"]
    assert users and all(exp.assign(u) == "control" for u in users)


def test_delta_method_matches_binomial_when_one_impression() -> None:
    rng = np.random.default_rng(0)
    clicks = rng.binomial(1, 0.1, 20_000).astype(float)
    r, var = delta_ratio(clicks, np.ones_like(clicks))
    assert var == pytest.approx(r * (1 - r) / len(clicks), rel=0.01)


def test_session_state_is_idempotent_under_redelivery() -> None:
    vecs = np.eye(5, dtype=np.float32)
    events = [BrowseEvent(user_id=1, item_id=i, event_type="view", ts_ms=t) for t, i in enumerate([2, 3, 2])]
    s = SessionState(vecs)
    first = s.apply(events)
    again = s.apply(events)  # the same batch delivered twice (crash before commit)
    assert first == again
    assert first[0]["session_items"] == [3, 2]
    assert s.apply([BrowseEvent(user_id=1, item_id=99, event_type="click", ts_ms=9)]) == []  # unknown item


def test_browse_event_schema_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        BrowseEvent.model_validate({"user_id": 1, "item_id": 2, "event_type": "buy", "ts_ms": 0})
    with pytest.raises(ValueError):
        BrowseEvent.model_validate({"user_id": 0, "item_id": 2, "event_type": "view", "ts_ms": 0})


def test_interactions_matrix_binary() -> None:
    m = interactions_matrix(pd.DataFrame({"user_idx": [0, 0, 1], "item_idx": [1, 1, 2]}), 2, 3)
    assert isinstance(m, sp.csr_matrix) and m.toarray().tolist() == [[0, 1, 0], [0, 0, 1]]


def test_guardrail_ignores_a_machine_wide_slowdown() -> None:
    exp = Experiment("g2", ("control", "treatment"), (0.5, 0.5), latency_guardrail_ms=30.0)
    for _ in range(300):
        exp.record_latency("control", 80.0)  # everything is slow (shared box), both arms alike
        exp.record_latency("treatment", 85.0)
    assert exp.stopped == set()
