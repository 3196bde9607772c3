"""The same loop under Ray Train: TorchTrainer with 2 workers, one SIGKILLed, FailureConfig restarts it.

The one Ray test of this system (Ray start + two worker-group starts: ~60 s on 2 busy cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from systems.common.settings import MlsdSettings
from systems.distributed_training.data import prepare_tokens
from systems.distributed_training.evaluate import GOLDEN_ATOL, GOLDEN_REVIEWS, load_golden, max_abs_diff
from systems.distributed_training.train import read_losses, read_metrics

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_ray_train_recovers_from_a_killed_worker(tmp_path: Path, settings: MlsdSettings) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from systems.distributed_training.ray_train import run_ray_training

    tokens = prepare_tokens(tmp_path / "tok.npy", limit=GOLDEN_REVIEWS, settings=settings)
    rep = run_ray_training(preset="cpu_debug", tokens=tokens, run_dir=tmp_path / "ray", fail_at_step=25)
    assert rep.restarts == 1 and rep.steps == 50  # FailureConfig(max_failures=1) restarted the group
    assert rep.checkpoint is not None and (Path(rep.checkpoint) / "state.pt").exists()  # Ray's copy
    assert rep.recovery_s is not None and rep.steps_lost is not None
    # killed at step 25: resumed from step 20, the newest complete checkpoint in the shared run dir, even
    # when Ray's controller had not registered that report yet (it then hands back step 10)
    assert 0 < rep.steps_lost <= 10
    records = read_metrics(tmp_path / "ray" / "metrics.jsonl")
    starts = [r for r in records if r["event"] == "start"]
    assert [r["step"] for r in starts] == [0, 20]
    assert all(r["threads"] == 1 for r in starts)  # one intra-op thread per worker, as under torchrun
    # the recovered run's losses are those of the uninterrupted golden run, step for step
    losses = read_losses(tmp_path / "ray" / "metrics.jsonl")
    assert max_abs_diff(losses, load_golden()) <= GOLDEN_ATOL
