"""``mlsd dist bench``: every claim of the walkthrough, measured once on this machine.

Writes ``systems/distributed_training/bench/distributed_training.json`` (and ``.png``) through
``systems.common.bench.BenchReport``: every section carries its own provenance (command, git sha, machine,
load average), and ``--only`` re-runs replace those sections and keep the others.

Sections (keys of the JSON):

* ``equivalence``: cpu_debug, 1 vs 2 processes at the same global batch (torchrun) -> ``max_loss_diff``;
  also the 1-process run against the golden file.
* ``resume``: 2 processes stopped after step 25, resumed, vs uninterrupted -> ``max_loss_diff``.
* ``throughput`` / ``scaling``: cpu_small, same micro-batch per rank (weak scaling), 1 vs 2 processes,
  tokens/s from the median steady-state step time; ``scaling.efficiency = tps(2) / (2 * tps(1))``;
  ``comm_share`` = 1 - t(2 procs, no all-reduce) / t(2 procs): the exposed communication.
* ``ps_vs_allreduce``: the same model, data and samples through DDP and a parameter server (sync, async).
* ``allreduce_bench``: gloo all-reduce, 1 KiB .. 64 MiB, algbw and busbw.
* ``ray``: the same loop, config, data and threads under Ray Train vs torchrun, alternating pairs;
  steady-state wall time *and* CPU time per step (start-up apart), each side's effective config checked
  equal; plus a SIGKILLed worker under ``FailureConfig``.
* ``chaos``: SIGKILL one torchrun rank -> ``steps_lost``, ``recovery_s``.
* ``image``: the image workload (blocks image pipeline + feed-forward classifier, digits at 16 px), 1 vs 2
  ranks at the same global batch -> ``images_per_s.<ranks>`` (medians), held-out accuracy, loss difference.

Peers: throughput's baseline is the 1-process run, PS's is DDP, Ray's is torchrun. Repeated measurements
report medians (``repeats``); the machine is shared, so spreads are reported too.
"""

from __future__ import annotations

import json
import logging
import os
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


def step_stats(run_dir: Path, *, skip: int = 5) -> dict[str, Any]:
    """Steady-state step statistics of one run (rank 0's records after ``skip`` warm-up steps).

    ``median_s`` / ``p10_s``: wall time per step (the 10th percentile: the steps that got a core to
    themselves). ``cpu_s``: median CPU seconds per step over all of rank 0's threads: what the code path
    costs, whoever else wants the cores. ``rq_wait_s``: median seconds per step the training thread was
    runnable but waited for a core: what the machine's other load cost. Wall ~ CPU + runqueue wait (+ waits
    on the peer rank). ``config`` / ``layout``: the ``start`` record's effective config and process layout.
    """
    recs = read_metrics(run_dir / "metrics.jsonl")
    steps = [r for r in recs if r["event"] == "step"]
    steps = steps[skip:] if len(steps) > skip else steps
    times = [r["step_s"] for r in steps]
    start = next(r for r in recs if r["event"] == "start")
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]]
    waits = [r["rq_wait_s"] for r in steps if "rq_wait_s" in r]
    return {
        "median_s": statistics.median(times),
        "p10_s": q[0],
        "cpu_s": statistics.median(r["cpu_s"] for r in steps),
        "rq_wait_s": statistics.median(waits) if waits else None,
        "steps_timed": len(times),
        "first_step_timed": steps[0]["step"],
        "threads": start.get("threads", -1),
        "config": start.get("config", {}),
        "layout": start.get("layout", {}),
    }


def bench_equivalence(work: Path, tokens: Path) -> dict[str, Any]:
    from systems.distributed_training.evaluate import GOLDEN_ATOL, load_golden, max_abs_diff

    one = read_losses(_train(work, "eq_1", 1, tokens, "cpu_debug") / "metrics.jsonl")
    two = read_losses(_train(work, "eq_2", 2, tokens, "cpu_debug") / "metrics.jsonl")
    return {
        "preset": "cpu_debug",
        "steps": len(one),
        # the 2-rank run's losses every 10 steps and at the end: what `mlsd dist train` prints on this corpus
        "losses_2proc": {str(k): v for k, v in two.items() if k % 10 == 0 or k == max(two)},
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
    ddp_losses = {int(r["step"]): float(r["loss"]) for r in recs}
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
        by_step = {int(k): float(v) for k, v in res["losses"].items()}
        if mode == "sync":  # the same arithmetic as DDP, step for step (async applies 2x as many updates)
            res["max_loss_diff_vs_ddp"] = max(abs(by_step[k] - ddp_losses[k]) for k in ddp_losses)
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


RAY_PEER_PRESET = "cpu_small"


def ray_peer_overrides(steps: int) -> dict[str, Any]:
    """The one ``TrainConfig`` override set both launchers get in the Ray comparison: 2 ranks x micro-batch
    8 = global batch 16, loss logged every 10 steps, no checkpoint before the last step."""
    return {"max_steps": steps, "micro_batch_size": 8, "global_batch_size": 16, "log_every": 10, "ckpt_every": 100000}


def train_flags(overrides: dict[str, Any]) -> list[str]:
    """``overrides`` as ``train.py`` flags (``max_steps=40`` -> ``--max-steps 40``): derived, never retyped,
    so the torchrun side cannot drift from the Ray side's overrides."""
    flags: list[str] = []
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags += [flag] if value else []
        else:
            flags += [flag, str(value)]
    return flags


# in the effective config but not a property of the comparison: nothing here may differ between the sides
_CONFIG_DIFF_IGNORED: frozenset[str] = frozenset()


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two runs' effective configs (a key missing on one side differs)."""
    keys = (set(a) | set(b)) - _CONFIG_DIFF_IGNORED
    return {k: (a.get(k), b.get(k)) for k in sorted(keys) if a.get(k) != b.get(k)}


def run_peer_torchrun(work: Path, tokens: Path, overrides: dict[str, Any], *, name: str = "ray_peer_torchrun") -> Path:
    """The torchrun side of the comparison: 2 ranks of ``train.py`` with ``overrides`` as flags."""
    return _train(work, name, 2, tokens, RAY_PEER_PRESET, *train_flags(overrides))


def run_peer_ray(work: Path, tokens: Path, overrides: dict[str, Any], *, name: str = "ray") -> tuple[Path, Any]:
    """The Ray side: the same loop and ``overrides`` in 2 ``TorchTrainer`` workers at 1 thread each."""
    from systems.distributed_training.ray_train import run_ray_training

    run_dir = work / name
    shutil.rmtree(run_dir, ignore_errors=True)
    rep = run_ray_training(preset=RAY_PEER_PRESET, tokens=tokens, run_dir=run_dir, overrides=overrides, threads=1)
    return run_dir, rep


def _pct(a: float, b: float) -> float:
    return 100.0 * (a / b - 1.0)


def bench_ray(work: Path, tokens: Path, small: Path, *, steps: int, pairs: int = 5) -> dict[str, Any]:
    """Ray Train vs torchrun: the same loop, overrides, data and thread count, ``pairs`` alternating pairs
    (torchrun then Ray, Ray then torchrun, ...) so both sides see the same background load on average.
    Warm-up (first 5 steps) and start-up are excluded on both sides; each run's effective config is read
    back from its own ``start`` record and a pair whose configs differ is an error, not a number. Then one
    Ray run with a SIGKILLed worker.

    Two overheads per pair: wall time per step (what a user sees on this machine) and CPU seconds per step
    (what the code path costs). On a shared machine the first also measures how the OS scheduler treats
    each launcher's processes (``rq_wait_s``: time runnable but without a core); the second does not.
    """
    from systems.distributed_training.ray_train import run_ray_training, start_local_ray

    overrides = ray_peer_overrides(steps)
    ray_init_s = start_local_ray(num_cpus=4)
    import ray  # after start_local_ray: it sets Ray's environment first

    torchrun_runs: list[dict[str, Any]] = []
    ray_runs: list[dict[str, Any]] = []
    startup: list[float] = []
    last: dict[str, Any] = {}

    def torchrun_once() -> None:
        load = os.getloadavg()[0]
        torchrun_runs.append({**step_stats(run_peer_torchrun(work, tokens, overrides)), "load_1min": load})

    def ray_once() -> None:
        load = os.getloadavg()[0]
        run_dir, rep = run_peer_ray(work, tokens, overrides)
        ray_runs.append({**step_stats(run_dir), "load_1min": load})
        startup.append(rep.startup_s)
        last.update(rep.to_dict())

    try:
        for i in range(pairs):
            for fn in (torchrun_once, ray_once) if i % 2 == 0 else (ray_once, torchrun_once):
                fn()
            diff = config_differences(torchrun_runs[-1]["config"], ray_runs[-1]["config"])
            if diff:
                raise RuntimeError(f"torchrun and Ray ran different configs (torchrun, ray): {diff}")
        shutil.rmtree(work / "ray_chaos", ignore_errors=True)
        chaos = run_ray_training(
            preset="cpu_debug", tokens=small, run_dir=work / "ray_chaos", overrides={"max_steps": 60}, fail_at_step=25
        )
    finally:
        ray.shutdown()
    wall = [_pct(r["median_s"], t["median_s"]) for r, t in zip(ray_runs, torchrun_runs, strict=True)]
    cpu = [_pct(r["cpu_s"], t["cpu_s"]) for r, t in zip(ray_runs, torchrun_runs, strict=True)]
    p10 = [_pct(r["p10_s"], t["p10_s"]) for r, t in zip(ray_runs, torchrun_runs, strict=True)]

    def side(runs: list[dict[str, Any]]) -> dict[str, Any]:
        """Per-run numbers of one launcher (config and layout once: equal across its runs)."""
        keys = ("median_s", "p10_s", "cpu_s", "rq_wait_s", "load_1min", "steps_timed", "first_step_timed")
        return {
            "runs": [{k: r[k] for k in keys} for r in runs],
            "median_step_s": statistics.median(r["median_s"] for r in runs),
            "cpu_step_s": statistics.median(r["cpu_s"] for r in runs),
            "rq_wait_step_s": statistics.median(r["rq_wait_s"] for r in runs if r["rq_wait_s"] is not None),
            "layout": runs[0]["layout"],
        }

    return {
        "preset": RAY_PEER_PRESET,
        "workers": 2,
        "pairs": pairs,
        "config": torchrun_runs[0]["config"],  # checked equal on both sides, pair by pair
        "torchrun": side(torchrun_runs),
        "ray": side(ray_runs),
        "overhead_pct_per_pair": wall,
        "overhead_pct": statistics.median(wall),  # wall time per steady-state step, Ray vs torchrun
        "cpu_overhead_pct_per_pair": cpu,
        "cpu_overhead_pct": statistics.median(cpu),  # CPU seconds per step: the code path's own cost
        "overhead_pct_p10": statistics.median(p10),  # the same on the fastest steps of each run
        "load_1min": [r["load_1min"] for pair in zip(torchrun_runs, ray_runs, strict=True) for r in pair],
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

    fig, axes = plt.subplots(1, 5, figsize=(26, 4.5))
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
    rs = report.get("ray", {})
    if "cpu_overhead_pct" in rs:
        ax = axes[4]
        sides = ("torchrun", "ray")
        parts = [("median_step_s", "wall"), ("cpu_step_s", "CPU"), ("rq_wait_step_s", "waiting for a core")]
        for i, (key, label) in enumerate(parts):
            ax.bar([j + 0.27 * (i - 1) for j in range(2)], [rs[k][key] for k in sides], width=0.27, label=label)
        ax.set_xticks(range(2), ["torchrun", "Ray Train"])
        ax.set_ylabel("seconds per step (median of runs)")
        ax.set_title(f"cpu_small, 2 ranks x 1 thread, {rs['pairs']} alternating pairs")
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def run_bench(
    out: Path | None = None,
    *,
    work: Path,
    tokens: Path,
    steps: int = 40,
    repeats: int = 3,
    ray_pairs: int = 5,
    sections: tuple[str, ...] = SECTIONS,
    progress: Progress | None = None,
    equivalence_tokens: Path | None = None,
    images: Path | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Run the chosen sections into ``out`` (default ``systems/distributed_training/bench/
    distributed_training.json``, PNG beside it); sections not run keep their stored numbers. Returns the
    report."""
    from systems.common.bench import BenchReport

    say = progress or (lambda msg: log.info(msg))
    work.mkdir(parents=True, exist_ok=True)
    small = equivalence_tokens or tokens  # cpu_debug runs: the golden corpus (first 2,000 reviews)
    from importlib.metadata import version

    report = BenchReport("distributed_training", out=out, command=command)
    versions = {name: version(name) for name in ("torch", "ray")}
    report.section("versions", {**versions, "backend": "gloo (CPU)", "tokens": tokens.name})

    def section(name: str, msg: str, fn: Callable[[], Any]) -> None:
        if name not in sections:
            return
        say(msg)
        try:
            data = fn()
        except Exception as exc:  # one failed section must not throw away the others' numbers
            log.exception("bench section %s failed", name)
            data = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        report.section(name, data)  # written at once: a crash later keeps what was measured

    section("equivalence", "equivalence: cpu_debug 1 vs 2 processes", lambda: bench_equivalence(work, small))
    section("resume", "resume: stop after 25 steps, resume, compare", lambda: bench_resume(work, small))
    section(
        "throughput",
        f"throughput: cpu_small 1 vs 2 processes x {repeats}",
        lambda: bench_throughput(work, tokens, steps=steps, repeats=repeats),
    )
    tp = report.data.get("throughput", {})
    if "throughput" in sections and "efficiency" in tp:
        report.section("scaling", {"efficiency": tp["efficiency"], "comm_share": tp["comm_share"]})
    section(
        "ps_vs_allreduce",
        "parameter server (sync, async) vs DDP all-reduce",
        lambda: bench_ps(work, tokens, steps=steps),
    )
    section("allreduce_bench", "all-reduce microbenchmark 1 KiB .. 64 MiB", lambda: bench_allreduce(work))
    section("chaos", "chaos: SIGKILL rank 1 of a torchrun job at step 25", lambda: bench_chaos(work, small))
    section(
        "ray",
        f"Ray Train vs torchrun x {ray_pairs} alternating pairs, then a SIGKILLed worker under FailureConfig",
        lambda: bench_ray(work, tokens, small, steps=steps, pairs=ray_pairs),
    )
    section(
        "image",
        f"image workload (blocks image pipeline): 1 vs 2 ranks x {repeats}",
        lambda: bench_image(work, images or work / "digits_png_16px", repeats=repeats),
    )
    report.plot(lambda png: plot_report(report.data, png))
    return report.data
