"""The golden-loss file: a seeded 1-process cpu_debug run must reproduce it within GOLDEN_ATOL."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from systems.common.settings import MlsdSettings
from systems.distributed_training.data import load_tokens, prepare_tokens, split_tokens
from systems.distributed_training.evaluate import (
    GOLDEN_ATOL,
    GOLDEN_REVIEWS,
    eval_loss,
    load_golden,
    max_abs_diff,
)
from systems.distributed_training.model import GPT
from systems.distributed_training.train import cpu_debug, init_distributed, run_training

pytestmark = pytest.mark.model


def test_cpu_debug_reproduces_the_golden_losses_and_learns(tmp_path: Path, settings: MlsdSettings) -> None:
    tokens = prepare_tokens(tmp_path / "tok.npy", limit=GOLDEN_REVIEWS, settings=settings)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        fresh = eval_loss(GPT(cpu_debug().model), split_tokens(load_tokens(tokens))[1])
        res = run_training(cpu_debug(), tokens_path=tokens, run_dir=tmp_path / "run", ctx=init_distributed())
    finally:
        torch.set_num_threads(threads)
    golden = load_golden()
    assert sorted(golden) == list(range(50))
    assert max_abs_diff(res.losses, golden) <= GOLDEN_ATOL
    # quality floor: from uniform over 256 bytes (5.55 nats) to < 3.3 nats in 50 steps of 256 tokens
    assert abs(fresh - math.log(256)) < 0.1
    assert golden[49] < 3.3
