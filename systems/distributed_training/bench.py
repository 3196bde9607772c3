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
* ``image``: the image workload (blocks image pipeline + feed-forward classifier, digits at 16 px), 1 vs 2
  ranks at the same global batch -> ``images_per_s.<ranks>`` (medians), held-out accuracy, loss difference.

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
SECTIONS = ("equivalence", "resume", "throughput", "ps_vs_allreduce", "allreduce_bench", "chaos", "ray", "image")


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


def step_stats(run_dir: Path, *, skip: int = 5, until: float = float("inf")) -> dict[str, float]:
    """Median and 10th percentile of the steady-state step time, and the intra-op threads rank 0 ran with.

    On a shared machine the median moves with other people's load; the 10th percentile (the steps that
    got a core to themselves) is the steadier estimate of what the code path itself costs.
    """
    recs = read_metrics(run_dir / "metrics.jsonl")
    times = [r["step_s"] for r in recs if r["event"] == "step" and r["time"] < until]
    times = times[skip:] if len(times) > skip else times
    starts = [r for r in recs if r["event"] == "start"]
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]]
    return {"median_s": statistics.median(times), "p10_s": q[0], "threads": starts[0].get("threads", -1)}


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
    """Ray Train vs torchrun on the same 2-rank cpu_small config, interleaved in alternating order (torchrun
    then Ray, Ray then torchrun, ...) so both see the same background load on average; both at one intra-op
    thread per rank (torchrun: OMP_NUM_THREADS=1; Ray: ``threads=1``), checked from each run's log. Then
    one Ray run with a SIGKILLed worker."""
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
    torchrun_runs: list[dict[str, float]] = []
    ray_runs: list[dict[str, float]] = []
    startup: list[float] = []
    last: dict[str, Any] = {}

    def torchrun_once() -> None:
        load = os.getloadavg()[0]
        tr = _train(work, "ray_peer_torchrun", 2, tokens, "cpu_small", *flags, "--ckpt-every", "100000")
        torchrun_runs.append({**step_stats(tr), "load_1min": load})

    def ray_once() -> None:
        shutil.rmtree(work / "ray", ignore_errors=True)
        load = os.getloadavg()[0]
        rep = run_ray_training(
            preset="cpu_small",
            tokens=tokens,
            run_dir=work / "ray",
            overrides={**overrides, "ckpt_every": 100000},
            threads=1,
        )
        ray_runs.append({**step_stats(work / "ray"), "load_1min": load})
        startup.append(rep.startup_s)
        last.update(rep.to_dict())

    try:
        for i in range(repeats):
            for fn in (torchrun_once, ray_once) if i % 2 == 0 else (ray_once, torchrun_once):
                fn()
        shutil.rmtree(work / "ray_chaos", ignore_errors=True)
        chaos = run_ray_training(
            preset="cpu_debug", tokens=small, run_dir=work / "ray_chaos", overrides={"max_steps": 60}, fail_at_step=25
        )
    finally:
        ray.shutdown()
    ray_s = [r["median_s"] for r in ray_runs]
    torchrun_s = [r["median_s"] for r in torchrun_runs]
    pairs = [100.0 * (r / t - 1.0) for r, t in zip(ray_s, torchrun_s, strict=True)]
    p10_ray = statistics.median(r["p10_s"] for r in ray_runs)
    p10_torchrun = statistics.median(r["p10_s"] for r in torchrun_runs)
    return {
        "preset": "cpu_small",
        "workers": 2,
        "repeats": repeats,
        "threads": {"ray": [r["threads"] for r in ray_runs], "torchrun": [r["threads"] for r in torchrun_runs]},
        "ray_runs": ray_runs,
        "torchrun_runs": torchrun_runs,
        "ray_median_step_s": ray_s,
        "torchrun_median_step_s": torchrun_s,
        "overhead_pct_per_pair": pairs,
        "overhead_pct": statistics.median(pairs),
        # the same comparison on the fast steps (10th percentile): less sensitive to others' load
        "overhead_pct_p10": 100.0 * (p10_ray / p10_torchrun - 1.0),
        "ray_init_s": ray_init_s,
        "startup_s": statistics.median(startup),  # fit() -> first finished step, Ray already running
        "last_run": last,
        "chaos": chaos.to_dict(),
        "target_overhead_pct": 5.0,
    }


def bench_image(work: Path, images: Path, *, repeats: int = 3, epochs: int = 2) -> dict[str, Any]:
    """Image workload, 1 vs 2 ranks (global batch 64, 16 px), interleaved ``repeats`` times; medians."""
    from systems.distributed_training.image_workload import prepare_images, read_result

    prepare_images(images, 16)
    rates: dict[str, list[float]] = {"1": [], "2": []}
    last: dict[str, dict[str, Any]] = {}
    for _ in range(repeats):
        for nproc in (1, 2):
            run_dir = work / f"image_{nproc}"
            shutil.rmtree(run_dir, ignore_errors=True)
            args = ["--images", str(images), "--run-dir", str(run_dir), "--size", "16", "--epochs", str(epochs)]
            args += ["--global-batch-size", "64", "--num-workers", "0"]
            run_torchrun(
                "systems.distributed_training.image_workload", args, nproc=nproc, log_path=work / f"image_{nproc}.log"
            )
            last[str(nproc)] = read_result(run_dir)
            rates[str(nproc)].append(last[str(nproc)]["images_per_s"])
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "size": 16,
        "epochs": epochs,
        "global_batch_size": 64,
        "num_workers": 0,
        "repeats": repeats,
        "images_per_s": med,
        "images_per_s_runs": rates,
        "scaling_efficiency": med["2"] / (2 * med["1"]),
        "max_loss_diff_1_vs_2": _max_diff(last["1"]["losses"], last["2"]["losses"]),
        "val_accuracy": {k: v["val_accuracy"] for k, v in last.items()},
        "steps": last["2"]["steps"],
    }


def plot_report(report: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(21, 4.5))
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
    img = report.get("image", {})
    if "images_per_s" in img:
        ax = axes[3]
        ranks = sorted(img["images_per_s"])
        ax.bar([f"{k} rank(s)" for k in ranks], [img["images_per_s"][k] for k in ranks])
        ax.set_ylabel("images/s")
        ax.set_title(f"image workload ({img['size']} px digits, global batch {img['global_batch_size']})")
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
    images: Path | None = None,
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
    section(
        "image",
        f"image workload (blocks image pipeline): 1 vs 2 ranks x {repeats}",
        lambda: bench_image(work, images or work / "digits_png_16px", repeats=repeats),
    )
    write_report(report, out, plot=lambda png: plot_report(report, png))
    return report
