"""LR schedule, config validation, atomic checkpoints, exact in-process resume."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from systems.common.settings import MlsdSettings
from systems.distributed_training import checkpoint as ckpt
from systems.distributed_training.data import prepare_tokens
from systems.distributed_training.train import (
    TrainResult,
    amp_settings,
    cpu_debug,
    get_preset,
    init_distributed,
    lr_at,
    run_training,
)

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """One intra-op thread, as torchrun gives each rank: on 2 shared cores more threads only thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_lr_warmup_then_cosine_to_min() -> None:
    cfg = get_preset("cpu_debug", max_steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(100, cfg) == pytest.approx(1e-4)
    decay = [lr_at(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(decay))


def test_config_errors_are_loud() -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("cpu_huge")
    with pytest.raises(ValueError, match="unknown TrainConfig"):
        get_preset("cpu_debug", learning_rate=1.0)
    with pytest.raises(ValueError, match="not a multiple"):
        cpu_debug().accum_steps(world_size=3)
    assert cpu_debug().accum_steps(world_size=1) == 2
    assert cpu_debug().accum_steps(world_size=2) == 1


def test_amp_is_off_on_cpu_unless_asked() -> None:
    assert amp_settings("auto", torch.device("cpu")) == (None, False)
    assert amp_settings("bf16", torch.device("cpu")) == (torch.bfloat16, False)


def test_checkpoint_is_atomic_and_pruned(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    for step in (10, 20, 30):
        ckpt.save_checkpoint(root, step, {"step": step}, rank=0)
    assert sorted(p.name for p in root.glob("step_*")) == ["step_000020", "step_000030"]
    # a half-written checkpoint (a crash inside torch.save) is never picked
    (root / "step_000040.tmp").mkdir()
    latest = ckpt.latest_checkpoint(root)
    assert latest is not None and latest.name == "step_000030"
    state, rng = ckpt.load_checkpoint(latest, rank=0)
    assert state["step"] == 30 and rng is not None
    assert ckpt.load_checkpoint(latest, rank=1)[1] is None


class _Stop(Exception):
    pass


def test_interrupted_then_resumed_run_gives_identical_losses(tmp_path: Path, settings: MlsdSettings) -> None:
    tokens = prepare_tokens(tmp_path / "tok.npy", limit=300, settings=settings)
    cfg = get_preset("cpu_debug", max_steps=30, ckpt_every=10)
    ctx = init_distributed()
    full = run_training(cfg, tokens_path=tokens, run_dir=tmp_path / "full", ctx=ctx)

    def stop_at_25(step: int, metrics: dict[str, float]) -> None:
        if step == 24:
            raise _Stop

    with pytest.raises(_Stop):
        run_training(cfg, tokens_path=tokens, run_dir=tmp_path / "cut", ctx=ctx, on_step=stop_at_25)
    resumed: TrainResult = run_training(cfg, tokens_path=tokens, run_dir=tmp_path / "cut", ctx=ctx, resume=True)
    assert resumed.start_step == 20  # newest complete checkpoint
    assert sorted(resumed.losses) == list(range(20, 30))
    assert max(abs(resumed.losses[s] - full.losses[s]) for s in resumed.losses) <= 1e-6
    # and the run did learn something
    assert full.losses[29] < full.losses[0] - 1.0
