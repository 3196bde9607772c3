"""Ray Train and torchrun run the same thing in the bench's comparison, read back from each run's own record.

A Ray-vs-torchrun overhead is only a Ray overhead if both sides ran the same config on the same threads at
the same priority. Ray renices its workers by +15 unless told otherwise, which this test catches (it fails
with ``nice: (0, 15)`` when ``RAY_worker_niceness`` is left at Ray's default)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from systems.common.settings import MlsdSettings
from systems.distributed_training.bench import (
    config_differences,
    ray_peer_overrides,
    run_peer_ray,
    run_peer_torchrun,
    step_stats,
)
from systems.distributed_training.data import prepare_tokens
from systems.distributed_training.evaluate import GOLDEN_REVIEWS
from systems.distributed_training.train import read_losses

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_ray_and_torchrun_record_the_same_effective_config(tmp_path: Path, settings: MlsdSettings) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    tokens = prepare_tokens(tmp_path / "tok.npy", limit=GOLDEN_REVIEWS, settings=settings)
    overrides = ray_peer_overrides(8)
    torchrun_dir = run_peer_torchrun(tmp_path, tokens, overrides)
    ray_dir, _ = run_peer_ray(tmp_path, tokens, overrides)
    torchrun, ray = step_stats(torchrun_dir), step_stats(ray_dir)
    assert config_differences(torchrun["config"], ray["config"]) == {}
    assert torchrun["config"]["world_size"] == 2 and torchrun["config"]["intra_op_threads"] == 1
    # the same steps are timed on both sides (warm-up excluded), and the same arithmetic ran
    assert (torchrun["steps_timed"], torchrun["first_step_timed"]) == (ray["steps_timed"], ray["first_step_timed"])
    a, b = read_losses(torchrun_dir / "metrics.jsonl"), read_losses(ray_dir / "metrics.jsonl")
    assert a.keys() == b.keys() and max(abs(a[k] - b[k]) for k in a) <= 1e-6
