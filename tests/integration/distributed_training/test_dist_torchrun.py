"""Real torchrun jobs on gloo: 1-vs-2-process equivalence, a SIGKILLed rank, two simulated nodes,
the parameter server, the all-reduce microbenchmark."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from systems.common.settings import MlsdSettings
from systems.distributed_training.chaos import run_chaos
from systems.distributed_training.data import prepare_tokens
from systems.distributed_training.evaluate import GOLDEN_ATOL, GOLDEN_REVIEWS, load_golden, max_abs_diff
from systems.distributed_training.launch import TRAIN_MODULE, run_torchrun, run_two_nodes
from systems.distributed_training.train import cpu_debug, init_distributed, read_losses, run_training

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path) -> Path:
    """The golden corpus: the first 2,000 reviews as bytes (the reviews come from the session's data dir)."""
    settings = MlsdSettings(data_dir=shared_data_dir)
    return prepare_tokens(tmp_path_factory.mktemp("tok") / "reviews.npy", limit=GOLDEN_REVIEWS, settings=settings)


def _args(tokens: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["--preset", "cpu_debug", "--tokens", str(tokens), "--run-dir", str(run_dir), *extra]


def test_one_vs_two_processes_same_losses(tokens: Path, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = run_training(cpu_debug(), tokens_path=tokens, run_dir=tmp_path / "one", ctx=init_distributed()).losses
    finally:
        torch.set_num_threads(threads)
    run_torchrun(TRAIN_MODULE, _args(tokens, tmp_path / "two"), nproc=2, log_path=tmp_path / "two.log")
    two = read_losses(tmp_path / "two" / "metrics.jsonl")
    assert sorted(two) == list(range(50))
    assert max_abs_diff(two, one) <= 1e-5  # 2 ranks x micro 4 == 1 rank x micro 4 x accum 2
    assert max_abs_diff(two, load_golden()) <= GOLDEN_ATOL


def test_killed_rank_restarts_and_finishes_with_the_same_losses(tokens: Path, tmp_path: Path) -> None:
    rep = run_chaos(run_dir=tmp_path / "chaos", train_args=_args(tokens, tmp_path / "unused")[:4], kill_step=25)
    assert rep.returncode == 0 and rep.restarts == 1
    assert rep.resumed_from in (20, 30)  # the newest complete checkpoint at the time of the kill
    assert 0 <= rep.steps_lost <= cpu_debug().ckpt_every
    assert rep.recovery_s <= 30.0
    assert rep.final_step == 49
    # the recomputed steps and everything after them match the uninterrupted golden run
    assert max_abs_diff(rep.losses, load_golden()) <= GOLDEN_ATOL


def test_two_nodes_rendezvous_over_c10d(tokens: Path, tmp_path: Path) -> None:
    codes = run_two_nodes(TRAIN_MODULE, _args(tokens, tmp_path / "run"), log_dir=tmp_path)
    assert codes == [0, 0]
    assert "world=2" in (tmp_path / "node0.log").read_text() + (tmp_path / "node1.log").read_text()
    losses = read_losses(tmp_path / "run" / "metrics.jsonl")
    assert sorted(losses) == list(range(50))
    # two "nodes" x 1 rank == one node x 2 ranks == one rank: the golden losses
    assert max_abs_diff(losses, load_golden()) <= GOLDEN_ATOL


def test_sync_parameter_server_matches_ddp_and_converges(tokens: Path, tmp_path: Path) -> None:
    args = ["--preset", "cpu_debug", "--mode", "sync", "--max-steps", "50"]
    args += ["--tokens", str(tokens), "--run-dir", str(tmp_path / "ps")]
    run_torchrun("systems.distributed_training.ps", args, nproc=3, log_path=tmp_path / "ps.log")
    res = json.loads((tmp_path / "ps" / "ps_result.json").read_text())
    losses = {int(k): v for k, v in res["losses"].items()}
    assert res["updates"] == 50 and res["dropped_stale"] == 0
    # synchronous PS = same averaged gradient as DDP's all-reduce -> the DDP golden losses
    assert max_abs_diff(losses, load_golden()) <= GOLDEN_ATOL
    assert res["final_eval_loss"] < math.log(256) - 2.0
    # every step moves P floats up and P floats down per worker: 2 * N * P * 4 bytes through the server
    # (plus each worker's initial pull of the weights, amortised over the 50 steps)
    p_bytes = res["n_params"] * 4
    assert res["bytes_per_step"] == (50 * 2 * 2 * p_bytes + 2 * p_bytes) // 50


def test_allreduce_bench_small_sizes(tmp_path: Path) -> None:
    out = tmp_path / "ar.json"
    run_torchrun(
        "systems.distributed_training.allreduce_bench",
        ["--out", str(out), "--max-bytes", str(64 << 10)],
        nproc=2,
        log_path=tmp_path / "ar.log",
    )
    data = json.loads(out.read_text())
    assert data["world_size"] == 2 and [r["bytes"] for r in data["rows"]] == [1024, 4096, 16384, 65536]
    for r in data["rows"]:
        assert r["time_us"] > 0
        assert r["busbw_GBps"] == pytest.approx(r["algbw_GBps"])  # 2(N-1)/N = 1 for N = 2
