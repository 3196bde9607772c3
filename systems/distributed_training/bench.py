"""``mlsd dist bench --out FILE.json``: every claim of the walkthrough, measured once on this machine.

Sections (keys of the JSON):

* ``equivalence``: cpu_debug, 1 vs 2 processes at the same global batch (torchrun) -> ``max_loss_diff``;
  also the 1-process run against the golden file.
* ``resume``: 2 processes stopped after step 25, resumed, vs uninterrupted -> ``max_loss_diff``.
* ``throughput`` / ``scaling``: cpu_small, same micro-batch per rank (weak scaling), 1 vs 2 processes,
  tokens/s from the median steady-state step time; ``scaling.efficiency = tps(2) / (2 * tps(1))``;
  ``comm_share`` = 1 - t(2 procs, no all-reduce) / t(2 procs): the exposed communication.
* ``ps_vs_allreduce``: the same model, data and samples through DDP and a parameter server (sync, async).
* ``allreduce_bench``: gloo all-reduce, 1 KiB .. 64 MiB, algbw and busbw.
* ``ray``: the same loop under Ray Train vs torchrun (steady-state step time; start-up apart), plus a
  SIGKILLed worker under ``FailureConfig``.
* ``chaos``: SIGKILL one torchrun rank -> ``steps_lost``, ``recovery_s``.

Peers: throughput's baseline is the 1-process run, PS's is DDP, Ray's is torchrun. Repeated measurements
report medians (``repeats``); the machine is shared, so spreads are reported too.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from systems.distributed_training.launch import TRAIN_MODULE, run_torchrun
from systems.distributed_training.train import read_losses, read_metrics

log = logging.getLogger("systems.distributed_training.bench")

Progress = Callable[[str], None]
SECTIONS = ("equivalence", "resume", "throughput", "ps_vs_allreduce", "allreduce_bench", "chaos", "ray")


def _train(work: Path, name: str, nproc: int, tokens: Path, preset: str, *extra: str, fresh: bool = True) -> Path:
    run_dir = work / name
    if fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
    args = ["--preset", preset, "--tokens", str(tokens), "--run-dir", str(run_dir), *extra]
    run_torchrun(TRAIN_MODULE, args, nproc=nproc, log_path=work / f"{name}.log")
    return run_dir


def _max_diff(a: dict[int, float], b: dict[int, float]) -> float:
    return max(abs(a[k] - b[k]) for k in b)


def steady_step_s(run_dir: Path, *, skip: int = 5) -> float:
    """Median step time after the first ``skip`` steps (allocator warm-up, first-touch of the data)."""
    times = [r["step_s"] for r in read_metrics(run_dir / "metrics.jsonl") if r["event"] == "step"]
    return statistics.median(times[skip:] if len(times) > skip else times)


def bench_equivalence(work: Path, tokens: Path) -> dict[str, Any]:
    from systems.distributed_training.evaluate import GOLDEN_ATOL, load_golden, max_abs_diff

    one = read_losses(_train(work, "eq_1", 1, tokens, "cpu_debug") / "metrics.jsonl")
    two = read_losses(_train(work, "eq_2", 2, tokens, "cpu_debug") / "metrics.jsonl")
    return {
        "preset": "cpu_debug",
        "steps": len(one),
        "max_loss_diff": _max_diff(one, two),
        "golden_max_diff": max_abs_diff(one, load_golden()),
        "golden_atol": GOLDEN_ATOL,
        "target": 1e-5,
    }


def bench_resume(work: Path, tokens: Path) -> dict[str, Any]:
    full = read_losses(_train(work, "res_full", 2, tokens, "cpu_debug") / "metrics.jsonl")
    _train(work, "res_cut", 2, tokens, "cpu_debug", "--stop-after", "25")
    cut = read_losses(_train(work, "res_cut", 2, tokens, "cpu_debug", "--resume", fresh=False) / "metrics.jsonl")
    return {"preset": "cpu_debug", "stopped_after": 25, "resumed_from": 20, "max_loss_diff": _max_diff(cut, full)}


def bench_throughput(work: Path, tokens: Path, *, steps: int, repeats: int) -> dict[str, Any]:
    """Weak scaling on cpu_small: micro-batch 8 per rank, no accumulation."""
    common = ["--max-steps", str(steps), "--micro-batch-size", "8", "--log-every", "10", "--ckpt-every", "100000"]
    t1, t2, t2_nosync = [], [], []
    for _ in range(repeats):
        t1.append(steady_step_s(_train(work, "tp_1", 1, tokens, "cpu_small", "--global-batch-size", "8", *common)))
        t2.append(steady_step_s(_train(work, "tp_2", 2, tokens, "cpu_small", "--global-batch-size", "16", *common)))
        t2_nosync.append(
            steady_step_s(
                _train(work, "tp_2ns", 2, tokens, "cpu_small", "--global-batch-size", "16", "--skip-grad-sync", *common)
            )
        )
    from systems.distributed_training.model import MODEL_PRESETS

    block = MODEL_PRESETS["cpu_small"]().block_size
    s1, s2, s2n = statistics.median(t1), statistics.median(t2), statistics.median(t2_nosync)
    tps1, tps2 = 8 * block / s1, 16 * block / s2
    return {
        "preset": "cpu_small",
        "repeats": repeats,
        "step_s": {"p1": t1, "p2": t2, "p2_no_allreduce": t2_nosync},
        "tokens_per_s_1proc": tps1,
        "tokens_per_s_2proc": tps2,
        "efficiency": tps2 / (2 * tps1),
        "comm_share": max(0.0, 1.0 - s2n / s2),
        "torchrun_median_step_s_2proc": s2,
    }


def _ddp_eval_loss(run_dir: Path, tokens: Path) -> float:
    import torch

    from systems.distributed_training.checkpoint import latest_checkpoint
    from systems.distributed_training.data import load_tokens, split_tokens
    from systems.distributed_training.evaluate import eval_loss
    from systems.distributed_training.model import GPT, ModelConfig

    path = latest_checkpoint(run_dir / "checkpoints")
    assert path is not None
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    model = GPT(ModelConfig(**state["config"]["model"]))
    model.load_state_dict(state["model"])
    return eval_loss(model, split_tokens(load_tokens(tokens))[1])


def bench_ps(work: Path, tokens: Path, *, steps: int) -> dict[str, Any]:
    """cpu_small, global batch 16 over 2 workers (8 each): DDP 2 ranks vs PS 1 server + 2 workers."""
    from systems.distributed_training.ps import PSResult  # noqa: F401  (documents the JSON shape)

    ddp_dir = _train(
        work,
        "ps_ddp",
        2,
        tokens,
        "cpu_small",
        "--max-steps",
        str(steps),
        "--global-batch-size",
        "16",
        "--micro-batch-size",
        "8",
        "--log-every",
        "1",
        "--ckpt-every",
        "100000",
    )
    recs = [r for r in read_metrics(ddp_dir / "metrics.jsonl") if r["event"] == "step"]
    ddp_wall = sum(r["step_s"] for r in recs)
    from systems.distributed_training.model import GPT, MODEL_PRESETS

    n_params = sum(p.numel() for p in GPT(MODEL_PRESETS["cpu_small"]()).parameters())
    world = 2
    out: dict[str, Any] = {
        "preset": "cpu_small",
        "workers": 2,
        "steps": steps,
        "samples": steps * 16,
        "n_params": n_params,
        "allreduce": {
            "steps_per_s": len(recs) / ddp_wall,
            # ring: each rank sends (and receives) 2(N-1)/N * P * 4 bytes
            "bytes_per_step_per_rank": int(2 * (world - 1) / world * n_params * 4),
            "bytes_per_step_total": int(2 * (world - 1) * n_params * 4),
            "final_eval_loss": _ddp_eval_loss(ddp_dir, tokens),
            "final_train_loss": recs[-1]["loss"],
        },
    }
    for mode in ("sync", "async"):
        run_dir = work / f"ps_{mode}"
        shutil.rmtree(run_dir, ignore_errors=True)
        args = ["--preset", "cpu_small", "--mode", mode, "--max-steps", str(steps), "--global-batch-size", "16"]
        args += ["--tokens", str(tokens), "--run-dir", str(run_dir)]
        run_torchrun("systems.distributed_training.ps", args, nproc=3, log_path=work / f"ps_{mode}.log")
        res = json.loads((run_dir / "ps_result.json").read_text())
        losses = list(res.pop("losses").values())
        res["final_train_loss"] = losses[-1] if losses else None
        res["bytes_per_step_total"] = res["bytes_per_step"]
        out["ps" if mode == "sync" else "ps_async"] = res
    out["ps.steps_per_s"] = out["ps"]["steps_per_s"]
    out["allreduce.steps_per_s"] = out["allreduce"]["steps_per_s"]
    return out


def bench_allreduce(work: Path, *, max_bytes: int = 64 << 20) -> dict[str, Any]:
    out = work / "allreduce.json"
    run_torchrun(
        "systems.distributed_training.allreduce_bench",
        ["--out", str(out), "--max-bytes", str(max_bytes)],
        nproc=2,
        log_path=work / "allreduce.log",
    )
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def bench_chaos(work: Path, tokens: Path) -> dict[str, Any]:
    from systems.distributed_training.chaos import run_chaos

    run_dir = work / "chaos"
    shutil.rmtree(run_dir, ignore_errors=True)
    rep = run_chaos(
        run_dir=run_dir,
        train_args=["--preset", "cpu_debug", "--tokens", str(tokens), "--max-steps", "60"],
        kill_step=25,
    )
    d = rep.to_dict()
    d.pop("losses")
    d["ckpt_every"] = 10
    return d


def bench_ray(work: Path, tokens: Path, small: Path, *, steps: int, repeats: int = 3) -> dict[str, Any]:
    """Ray Train vs torchrun on the same 2-rank cpu_small config, interleaved (torchrun, Ray, torchrun, ...)
    so both see the same background load; then one Ray run with a SIGKILLed worker."""
    import os
    import time

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from systems.distributed_training.ray_train import run_ray_training

    overrides = {"max_steps": steps, "micro_batch_size": 8, "global_batch_size": 16, "log_every": 10}
    flags = ["--max-steps", str(steps), "--micro-batch-size", "8", "--global-batch-size", "16", "--log-every", "10"]
    t0 = time.perf_counter()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - t0
    torchrun_s, ray_s, startup = [], [], []
    try:
        for _ in range(repeats):
            tr = _train(work, "ray_peer_torchrun", 2, tokens, "cpu_small", *flags, "--ckpt-every", "100000")
            torchrun_s.append(steady_step_s(tr))
            shutil.rmtree(work / "ray", ignore_errors=True)
            rep = run_ray_training(
                preset="cpu_small", tokens=tokens, run_dir=work / "ray", overrides={**overrides, "ckpt_every": 100000}
            )
            ray_s.append(rep.median_step_s)
            startup.append(rep.startup_s)
        shutil.rmtree(work / "ray_chaos", ignore_errors=True)
        chaos = run_ray_training(
            preset="cpu_debug", tokens=small, run_dir=work / "ray_chaos", overrides={"max_steps": 60}, fail_at_step=25
        )
    finally:
        ray.shutdown()
    pairs = [100.0 * (r / t - 1.0) for r, t in zip(ray_s, torchrun_s, strict=True)]
    return {
        "preset": "cpu_small",
        "workers": 2,
        "repeats": repeats,
        "ray_median_step_s": ray_s,
        "torchrun_median_step_s": torchrun_s,
        "overhead_pct_per_pair": pairs,
        "overhead_pct": statistics.median(pairs),
        "ray_init_s": ray_init_s,
        "startup_s": statistics.median(startup),  # fit() -> first finished step, Ray already running
        "last_run": rep.to_dict(),
        "chaos": chaos.to_dict(),
        "target_overhead_pct": 5.0,
    }


def plot_report(report: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ar = report.get("allreduce_bench", {}).get("rows", [])  # sections that failed hold only "error"
    if ar:
        ax = axes[0]
        ax.plot([r["bytes"] for r in ar], [r["busbw_GBps"] for r in ar], "o-", label="busbw")
        ax.plot([r["bytes"] for r in ar], [r["algbw_GBps"] for r in ar], "x--", label="algbw")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("message size (bytes)")
        ax.set_ylabel("GB/s")
        ax.set_title("gloo all-reduce, 2 ranks, loopback")
        ax.legend()
    tp = report.get("throughput", {})
    if "efficiency" in tp:
        ax = axes[1]
        ax.bar(["1 proc", "2 procs"], [tp["tokens_per_s_1proc"], tp["tokens_per_s_2proc"]])
        ax.set_ylabel("tokens/s")
        ax.set_title(f"cpu_small DDP: efficiency {tp['efficiency']:.0%}, comm share {tp['comm_share']:.0%}")
    ps = report.get("ps_vs_allreduce", {})
    if "ps_async" in ps:
        ax = axes[2]
        names = ["all-reduce (DDP)", "PS sync", "PS async"]
        vals = [ps["allreduce"]["steps_per_s"], ps["ps"]["steps_per_s"], ps["ps_async"]["steps_per_s"]]
        ax.bar(names, vals)
        ax.set_ylabel("global steps/s")
        ax.set_title("parameter server vs ring all-reduce (cpu_small, 2 workers)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def run_bench(
    out: Path,
    *,
    work: Path,
    tokens: Path,
    steps: int = 40,
    repeats: int = 3,
    sections: tuple[str, ...] = SECTIONS,
    progress: Progress | None = None,
    equivalence_tokens: Path | None = None,
) -> dict[str, Any]:
    """Run the chosen sections, write ``out`` (JSON) and a PNG beside it; returns the report."""
    from systems.common.bench import write_report

    say = progress or (lambda msg: log.info(msg))
    work.mkdir(parents=True, exist_ok=True)
    small = equivalence_tokens or tokens  # cpu_debug runs: the golden corpus (first 2,000 reviews)
    report: dict[str, Any] = {}
    if out.exists():  # re-running some sections keeps the others' numbers
        report = json.loads(out.read_text())
        report.pop("machine", None)
    report.update({"system": "distributed_training", "backend": "gloo (CPU)", "tokens": str(tokens)})

    def section(name: str, msg: str, fn: Callable[[], Any]) -> None:
        if name not in sections:
            return
        say(msg)
        try:
            report[name] = fn()
        except Exception as exc:  # one failed section must not throw away the others' numbers
            log.exception("bench section %s failed", name)
            report[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        report.pop("machine", None)
        write_report(report, out)  # after every section: a crash later keeps what was measured

    section("equivalence", "equivalence: cpu_debug 1 vs 2 processes", lambda: bench_equivalence(work, small))
    section("resume", "resume: stop after 25 steps, resume, compare", lambda: bench_resume(work, small))
    section(
        "throughput",
        f"throughput: cpu_small 1 vs 2 processes x {repeats}",
        lambda: bench_throughput(work, tokens, steps=steps, repeats=repeats),
    )
    tp = report.get("throughput", {})
    if "efficiency" in tp:
        report["scaling"] = {"efficiency": tp["efficiency"], "comm_share": tp["comm_share"]}
    section(
        "ps_vs_allreduce",
        "parameter server (sync, async) vs DDP all-reduce",
        lambda: bench_ps(work, tokens, steps=steps),
    )
    section("allreduce_bench", "all-reduce microbenchmark 1 KiB .. 64 MiB", lambda: bench_allreduce(work))
    section("chaos", "chaos: SIGKILL rank 1 of a torchrun job at step 25", lambda: bench_chaos(work, small))
    section(
        "ray",
        f"Ray Train vs torchrun x {repeats} (interleaved), then a SIGKILLed worker under FailureConfig",
        lambda: bench_ray(work, tokens, small, steps=steps, repeats=repeats),
    )
    write_report(report, out, plot=lambda png: plot_report(report, png))
    return report
