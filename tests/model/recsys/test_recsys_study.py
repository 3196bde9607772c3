"""The README's quality claim, re-checked on the CI preset: the same protocol on ML-100k with smaller grids.

The committed bench JSON (``systems/recsys/bench/recsys.json``, from ``mlsd recsys bench --only quality``) says
which model the gate serves and whether our pipeline beats the best tuned peer; the README's words are
generated from it. This test runs the CI preset and asserts the same conclusion on fresh numbers — the
claim, not a floor. The CI preset has 3 trials per peer, 8 SASRec epochs, and leaves out BPR (minutes per
trial, far below the best peer on validation in the committed run — asserted below, so the shortcut stays
honest). Measured: the preset gives our pipeline 1.07× the best peer, 95 % CI 1.02–1.12 (the full run:
1.09×, 1.04–1.14); without SASRec as a source the lower end fell to 1.002, too close to call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from systems.recsys.dataset import load_log
from systems.recsys.settings import RecsysSettings
from systems.recsys.study import PIPELINE, StudyConfig, run_study

pytestmark = [pytest.mark.model, pytest.mark.slow]

BENCH = Path(__file__).resolve().parents[3] / "systems" / "recsys" / "bench" / "recsys.json"
CI_PEERS = ("popularity", "trending", "item_knn", "ease", "covisit", "als", "sasrec")
DATASET = "movielens-100k"


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    rep: dict[str, Any] = json.loads(BENCH.read_text())["quality"][DATASET]
    return rep


@pytest.fixture(scope="module")
def ci_run(shared_data_dir: Path) -> dict[str, Any]:
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    log = load_log(DATASET, RecsysSettings(data_dir=shared_data_dir))
    with threadpool_limits(1):
        res = run_study(log, StudyConfig(trials=3, quick=True, n_boot=500, peers=CI_PEERS))
    return res.report


def test_the_left_out_peer_is_far_behind_in_the_committed_run(committed: dict[str, Any]) -> None:
    best_val = max(committed["gate"]["val_ndcg@10"].values())
    assert committed["gate"]["val_ndcg@10"]["bpr"] < 0.8 * best_val


def test_gate_serves_the_best_validation_model(ci_run: dict[str, Any]) -> None:
    scores = ci_run["gate"]["val_ndcg@10"]
    assert ci_run["served"]["name"] == max(scores, key=lambda n: scores[n])
    assert ci_run["test_users"] == 943  # every ML-100k user has a test window


def test_ci_preset_reproduces_the_readme_claim(ci_run: dict[str, Any], committed: dict[str, Any]) -> None:
    """Same served model as the committed run; the pipeline's standing against the best tuned peer (above,
    inside or below 1 for the CI of the NDCG@10 ratio) is the README's, on fresh numbers."""
    assert ci_run["served"]["name"] == committed["served"]["name"]
    lo, hi = ci_run["pipeline_vs_best_peer"]["ci95"]
    c_lo, c_hi = committed["pipeline_vs_best_peer"]["ci95"]
    if c_lo > 1.0:  # README: our pipeline beats the best tuned peer
        assert lo > 1.0, (lo, hi, ci_run["best_peer_overall"])
    elif c_hi < 1.0:  # README: our pipeline loses to it
        assert hi < 1.0, (lo, hi)
    else:  # README: cannot be told apart
        assert lo <= 1.0 <= hi, (lo, hi)
    if committed["served"]["name"] == PIPELINE:
        assert ci_run["ratio_lower_above_1"] == committed["ratio_lower_above_1"]


def test_the_served_model_is_personal_and_session_aware(ci_run: dict[str, Any]) -> None:
    """A one-item anonymous session changes the list (away from the popular one), and two users rarely share
    one: the failure the first version had (the same popular titles for everyone)."""
    p = ci_run["personalisation"]
    assert p["model"] == ci_run["served"]["name"]
    assert p["session_changes_list"] >= 0.95 and p["jaccard_session_vs_popular"] < 0.3, p
    assert p["jaccard_between_users"] < 0.3, p
