"""The same training loop (``train.run_training``) under Ray Train's ``TorchTrainer``.

    mlsd dist ray --preset cpu_debug --workers 2 [--fail-at-step 25]

Ray starts the workers and the gloo/NCCL process group; each worker calls ``run_training`` unchanged.
Every checkpoint the loop writes is reported with ``ray.train.report(..., checkpoint=...)`` (rank 0 passes
the folder, the others ``None``: report is a barrier that all ranks must reach). With
``FailureConfig(max_failures=1)`` a dead worker makes Ray restart the whole group, and the new workers
resume from the newest complete checkpoint: ``ray.train.get_checkpoint()`` (the last report the controller
*registered*) or, when every rank sees a newer one in the shared run dir, that one (see ``_resume_source``).

Threads and priority: each worker runs ``torch.set_num_threads(threads)`` (default 1, what torchrun's
``OMP_NUM_THREADS=1`` gives every rank), and a Ray started here keeps its workers at the launcher's
priority (``start_local_ray``), so the Ray-vs-torchrun comparison runs the same arithmetic on the same
threads at the same nice; the ``start`` record of ``metrics.jsonl`` logs the effective config on both sides
(``train.effective_config``) and the bench refuses to compare runs whose configs differ.

Ray's own costs (cluster start, actor creation, process-group set-up) are start-up, reported apart from the
steady-state step time (median over steps, from the same ``metrics.jsonl`` torchrun runs write).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from systems.distributed_training.train import read_metrics


@dataclass
class RayRunReport:
    workers: int
    fit_s: float  # trainer.fit() wall time
    startup_s: float  # fit() call -> first finished step (cluster already up)
    ray_init_s: float
    median_step_s: float  # steady state: steps after the first 5 (warm-up excluded)
    steps: int
    final_loss: float | None
    checkpoint: str | None  # Ray's copy of the last reported checkpoint
    restarts: int
    recovery_s: float | None  # kill -> first finished step after the restart (when fail_at_step was set)
    steps_lost: int | None
    resume: dict[str, Any] | None = None  # on a restart: Ray's registered step, the step resumed, from where

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker. Imports here: the worker process is fresh."""
    import ray.train
    import torch

    from systems.distributed_training.train import get_preset, init_distributed, run_training

    if config.get("threads") is not None:
        torch.set_num_threads(int(config["threads"]))  # as torchrun ranks (OMP_NUM_THREADS=1)
    cfg = get_preset(config["preset"], **config["overrides"])
    run_dir = Path(config["run_dir"])
    ctx = init_distributed()  # Ray already created the process group: this only reads rank / world
    fail_at = config.get("fail_at_step")
    marker = run_dir / "killed_at"

    def on_step(step: int, metrics: dict[str, float]) -> None:
        # fault injection: rank 1 dies by SIGKILL once (the marker survives the restart, so only once)
        if fail_at is not None and step == fail_at and ctx.rank == 1 and not marker.exists():
            marker.write_text(str(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)

    def on_checkpoint(step: int, path: Path | None, metrics: dict[str, float]) -> None:
        ckpt = None
        if path is not None:
            ckpt = ray.train.Checkpoint.from_directory(str(path))
            ckpt.set_metadata({"step": step})  # read back on restore without loading the weights
        ray.train.report({"step": step, **metrics}, checkpoint=ckpt)

    tokens = Path(config["tokens"])
    checkpoint = ray.train.get_checkpoint()
    # only on a restore: a fresh fit() never picks up checkpoints a previous run left in the run dir
    local = None
    if checkpoint is not None:
        ray_step = int(checkpoint.get_metadata().get("step", 0))
        local = _resume_source(run_dir, ray_step)
        if ctx.is_main:  # which copy the restart used, for the report
            source = {"ray_registered_step": ray_step, "resumed_from": "run_dir" if local else "ray"}
            source["resumed_step"] = int(local.name.removeprefix("step_")) if local else ray_step
            (run_dir / "resume_source.json").write_text(json.dumps(source))
    if local is not None:
        run_training(
            cfg,
            tokens_path=tokens,
            run_dir=run_dir,
            ctx=ctx,
            resume_from=local,
            on_step=on_step,
            on_checkpoint=on_checkpoint,
        )
    elif checkpoint is not None:
        with checkpoint.as_directory() as d:
            run_training(
                cfg,
                tokens_path=tokens,
                run_dir=run_dir,
                ctx=ctx,
                resume_from=Path(d),
                on_step=on_step,
                on_checkpoint=on_checkpoint,
            )
    else:
        run_training(cfg, tokens_path=tokens, run_dir=run_dir, ctx=ctx, on_step=on_step, on_checkpoint=on_checkpoint)


def _resume_source(run_dir: Path, ray_step: int) -> Path | None:
    """The run dir's newest complete checkpoint if *every* rank sees it and it is newer than Ray's; else None.

    Why: ``ray.train.report`` returns once the checkpoint is uploaded, but the controller registers it
    asynchronously; a worker killed in between is restored from the previous registered report (we lost
    16 steps with a 10-step interval that way). Our loop writes the same checkpoint atomically into the run
    dir *before* reporting it, so on storage every rank shares, that copy is never older. The ranks agree
    through an all-reduce (MIN and MAX of the step each sees), so a run dir that is not shared (a node with
    its own local disk) falls back to Ray's registered checkpoint on every rank, never to a mix.
    """
    import torch
    import torch.distributed as dist

    from systems.distributed_training import checkpoint as ckpt

    path = ckpt.latest_checkpoint(run_dir / "checkpoints")
    step = int(path.name.removeprefix("step_")) if path is not None else -1
    seen = torch.tensor([step, -step], dtype=torch.int64)  # MIN of both = (min step, -max step)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(seen, op=dist.ReduceOp.MIN)
    lo, hi = int(seen[0]), -int(seen[1])
    # the same decision on every rank: all see the same step, and it is newer than Ray's
    return path if lo == hi and lo > ray_step else None


def start_local_ray(*, num_cpus: int) -> float:
    """``ray.init`` of a one-machine Ray whose workers run at the launcher's priority; returns its seconds.

    Why: Ray renices every worker process by +15 (``RAY_worker_niceness``, so that raylet and GCS stay
    responsive), while torchrun ranks inherit the launcher's nice. Training at a lower priority than the
    torchrun peer is a different experiment, so a Ray started here keeps the increment at 0; an explicit
    ``RAY_worker_niceness`` in the environment still wins.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_worker_niceness", "0")
    import ray

    t0 = time.perf_counter()
    # logical CPUs: the workers at 1 CPU each plus Ray's controller; the OS shares the real cores
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return time.perf_counter() - t0


def run_ray_training(
    *,
    preset: str,
    tokens: Path,
    run_dir: Path,
    workers: int = 2,
    overrides: dict[str, Any] | None = None,
    fail_at_step: int | None = None,
    max_failures: int = 1,
    threads: int | None = 1,
) -> RayRunReport:
    """Start a local Ray (if none is running), fit, shut Ray down again, report.

    ``threads``: intra-op threads per worker (None leaves whatever Ray's worker environment gives).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    import ray
    import ray.train
    import torch
    from ray.train.torch import TorchConfig, TorchTrainer

    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here and os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)  # a real cluster (compose, k8s)
    elif started_here:
        start_local_ray(num_cpus=max(4, workers + 2))
    ray_init_s = time.perf_counter() - t0
    try:
        trainer = TorchTrainer(
            _train_loop_per_worker,
            train_loop_config={
                "preset": preset,
                "overrides": overrides or {},
                "run_dir": str(run_dir),
                "tokens": str(tokens.resolve()),
                "fail_at_step": fail_at_step,
                "threads": threads,
            },
            torch_config=TorchConfig(backend="nccl" if torch.cuda.is_available() else "gloo"),
            scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=torch.cuda.is_available()),
            run_config=ray.train.RunConfig(
                name="ray_train",
                storage_path=str(run_dir / "ray_results"),
                failure_config=ray.train.FailureConfig(max_failures=max_failures),
            ),
        )
        t_fit = time.time()
        t1 = time.perf_counter()
        result = trainer.fit()
        fit_s = time.perf_counter() - t1
    finally:
        if started_here:
            ray.shutdown()
    return _report(run_dir, result=result, fit_s=fit_s, t_fit=t_fit, ray_init_s=ray_init_s, workers=workers)


def _report(run_dir: Path, *, result: Any, fit_s: float, t_fit: float, ray_init_s: float, workers: int) -> RayRunReport:
    records = read_metrics(run_dir / "metrics.jsonl")
    steps = [r for r in records if r["event"] == "step"]
    starts = [r for r in records if r["event"] == "start"]
    killed = run_dir / "killed_at"
    recovery_s = steps_lost = None
    if killed.exists() and len(starts) > 1:
        t_kill = float(killed.read_text())
        restart = starts[1]
        after = [r for r in steps if r["time"] > restart["time"]]
        before = [r["step"] for r in steps if r["time"] < restart["time"]]
        recovery_s = after[0]["time"] - t_kill if after else None
        steps_lost = max(0, (max(before) + 1 if before else 0) - int(restart["step"]))
    # steady state of the first attempt only (a restart's first steps are warm-up again)
    first_end = starts[1]["time"] if len(starts) > 1 else float("inf")
    first = [r["step_s"] for r in steps if r["time"] < first_end][5:]
    losses = [r["loss"] for r in steps if "loss" in r]
    ckpt = getattr(result, "checkpoint", None)
    return RayRunReport(
        workers=workers,
        fit_s=fit_s,
        startup_s=(steps[0]["time"] - t_fit) if steps else float("nan"),
        ray_init_s=ray_init_s,
        median_step_s=statistics.median(first) if first else float("nan"),
        steps=max((r["step"] for r in steps), default=-1) + 1,
        final_loss=losses[-1] if losses else None,
        checkpoint=str(ckpt.path) if ckpt is not None else None,
        restarts=len(starts) - 1,
        recovery_s=recovery_s,
        steps_lost=steps_lost,
        resume=json.loads((run_dir / "resume_source.json").read_text())
        if (run_dir / "resume_source.json").exists()
        else None,
    )
