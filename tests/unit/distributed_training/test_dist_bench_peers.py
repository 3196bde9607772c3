"""The Ray-vs-torchrun comparison compares like with like: one override set, one effective config record.

The bench once reported Ray Train a third faster than torchrun on the same loop. These tests guard the
parts of that comparison our code decides: both launchers get the same ``TrainConfig``, every run records
the config it actually ran with (threads, world size, batch, priority, data), and the bench notices when two
records differ. Whether the two launchers' records really agree is checked with real processes in
``tests/integration/distributed_training/test_dist_ray_vs_torchrun.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from systems.common.settings import MlsdSettings
from systems.distributed_training.bench import (
    RAY_PEER_PRESET,
    config_differences,
    ray_peer_overrides,
    step_stats,
    train_flags,
)
from systems.distributed_training.data import prepare_tokens
from systems.distributed_training.train import (
    config_from_args,
    get_preset,
    init_distributed,
    parse_args,
    read_metrics,
    run_training,
)

pytestmark = pytest.mark.unit


def test_torchrun_flags_and_ray_overrides_are_one_config() -> None:
    overrides = ray_peer_overrides(40)
    argv = ["--preset", RAY_PEER_PRESET, *train_flags(overrides)]
    assert config_from_args(parse_args(argv)) == get_preset(RAY_PEER_PRESET, **overrides)
    assert train_flags({"skip_grad_sync": True, "max_steps": 3}) == ["--skip-grad-sync", "--max-steps", "3"]


def test_config_differences_names_every_differing_key() -> None:
    a = {"world_size": 2, "intra_op_threads": 1, "nice": 0}
    assert config_differences(a, dict(a)) == {}
    assert config_differences(a, {**a, "nice": 15}) == {"nice": (0, 15)}
    assert config_differences(a, {"world_size": 2, "intra_op_threads": 1}) == {"nice": (0, None)}


def test_run_records_its_effective_config_and_cpu_per_step(tmp_path: Path, settings: MlsdSettings) -> None:
    tokens = prepare_tokens(tmp_path / "tok.npy", limit=300, settings=settings)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = get_preset("cpu_debug", max_steps=8, log_every=4)
        run_training(cfg, tokens_path=tokens, run_dir=tmp_path / "run", ctx=init_distributed())
    finally:
        torch.set_num_threads(before)
    start = next(r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["event"] == "start")
    config = start["config"]
    assert config["world_size"] == 1 and config["intra_op_threads"] == 1 and config["accum"] == 2
    assert config["global_batch_size"] == 8 and config["tokens_per_step"] == 8 * cfg.model.block_size
    assert config["tokens_file"] == "tok.npy" and config["tokens_bytes"] == tokens.stat().st_size
    assert isinstance(config["nice"], int)
    stats = step_stats(tmp_path / "run")
    # warm-up excluded: steps 5..7 are timed; wall, CPU and runqueue wait are per step
    assert stats["steps_timed"] == 3 and stats["first_step_timed"] == 5
    assert stats["cpu_s"] > 0 and stats["median_s"] > 0
    assert stats["rq_wait_s"] is None or stats["rq_wait_s"] >= 0
    assert stats["config"] == config
