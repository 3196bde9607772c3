"""Data-parallel training of the GPT with DDP, launched by torchrun (CPU/gloo here, GPU/NCCL when present).

    torchrun --standalone --nproc_per_node=2 -m systems.distributed_training.train --preset cpu_debug
    torchrun --standalone --nproc_per_node=2 -m systems.distributed_training.train --preset cpu_debug --resume

One optimiser step = ``accum`` micro-steps per rank, ``accum = global_batch / (micro_batch * world)``; the
gradient all-reduce runs only on the last micro-step (``no_sync()`` on the others). Rank 0 alone logs and
writes ``metrics.jsonl``. Checkpoints (``checkpoint.py``) hold model, optimiser, scheduler, RNG and the data
position, so ``--resume`` continues with exactly the losses an uninterrupted run would have produced.

The loop is a function (``run_training``) so Ray Train workers run the very same code (``ray_train.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from systems.distributed_training import checkpoint as ckpt
from systems.distributed_training.data import BatchStream, StreamState, TokenBlocks, load_tokens, split_tokens
from systems.distributed_training.model import GPT, MODEL_PRESETS, ModelConfig, flops_per_token

log = logging.getLogger("systems.distributed_training.train")

AmpMode = Literal["auto", "bf16", "fp16", "off"]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that decides the numbers a run produces (plus logging/checkpoint cadence)."""

    preset: str
    model: ModelConfig
    global_batch_size: int  # sequences per optimiser step, summed over ranks and micro-steps
    micro_batch_size: int  # sequences per rank per forward/backward
    max_steps: int  # optimiser steps
    lr: float  # peak learning rate after warm-up
    min_lr: float  # floor of the cosine decay
    warmup_steps: int  # linear warm-up from lr/warmup_steps to lr
    weight_decay: float = 0.1  # on matrices only (not biases / LayerNorm)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global L2 norm of the gradient; 0 disables
    ckpt_every: int = 10  # optimiser steps between checkpoints
    log_every: int = 1  # optimiser steps between loss logs (a log is an all-reduce: a sync point)
    seed: int = 1337
    amp: AmpMode = "auto"  # auto: bf16 on CUDA with bf16 support, fp16+GradScaler on older GPUs, off on CPU
    skip_grad_sync: bool = False  # benchmark only: no all-reduce at all (measures the communication share)
    peak_tflops: float = 312.0  # per-GPU dense bf16 peak for MFU (A100: 312, H100 SXM: 989)

    def __post_init__(self) -> None:
        for name in ("global_batch_size", "micro_batch_size", "max_steps", "ckpt_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.lr <= 0 or self.min_lr < 0:
            raise ValueError("lr > 0, min_lr >= 0 and warmup_steps >= 0 are required")

    def accum_steps(self, world_size: int) -> int:
        """Micro-steps per optimiser step on each rank; the global batch must split evenly."""
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step != 0:
            raise ValueError(
                f"global_batch_size={self.global_batch_size} is not a multiple of "
                f"micro_batch_size*world_size={per_step}"
            )
        return self.global_batch_size // per_step

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_debug() -> TrainConfig:
    """Tiny and fast: CI equivalence, resume, golden losses and chaos runs (global batch 8 x 32 tokens)."""
    return TrainConfig(
        preset="cpu_debug",
        model=MODEL_PRESETS["cpu_debug"](),
        global_batch_size=8,
        micro_batch_size=4,
        max_steps=50,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=5,
        ckpt_every=10,
    )


def cpu_small() -> TrainConfig:
    """Compute-bound enough on a CPU core to measure scaling (global batch 16 x 128 tokens)."""
    return TrainConfig(
        preset="cpu_small",
        model=MODEL_PRESETS["cpu_small"](),
        global_batch_size=16,
        micro_batch_size=8,
        max_steps=200,
        lr=2e-3,
        min_lr=2e-4,
        warmup_steps=20,
        ckpt_every=50,
        log_every=10,
    )


def gpu_124m() -> TrainConfig:
    """GPT-2 small on 8 GPUs: 480 x 1024 = 491,520 tokens per step (micro 12, accum 5 on 8 ranks)."""
    return TrainConfig(
        preset="gpu_124m",
        model=MODEL_PRESETS["gpu_124m"](),
        global_batch_size=480,
        micro_batch_size=12,
        max_steps=5000,
        lr=6e-4,
        min_lr=6e-5,
        warmup_steps=700,
        ckpt_every=500,
        log_every=10,
    )


PRESETS: dict[str, Callable[[], TrainConfig]] = {"cpu_debug": cpu_debug, "cpu_small": cpu_small, "gpu_124m": gpu_124m}


def get_preset(name: str, **overrides: Any) -> TrainConfig:
    """A named preset with validated overrides (``None`` values are ignored; unknown keys are errors)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    cfg = PRESETS[name]()
    clean = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(clean) - set(cfg.to_dict())
    if unknown:
        raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
    return replace(cfg, **clean)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` then cosine decay to ``min_lr`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


# --------------------------------------------------------------------------------------------------------
# process group


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: a single process without a process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(timeout_s: float = 120.0) -> DistContext:
    """Join the process group torchrun (RANK/WORLD_SIZE/MASTER_ADDR env) or Ray Train set up.

    NCCL on CUDA, gloo on CPU. Without torchrun's env this is a plain single process (no group).
    """
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if dist.is_available() and not dist.is_initialized() and "RANK" in os.environ:
        timeout = timedelta(seconds=timeout_s)
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun's agent store outlives a restart. Without a per-attempt prefix a restarted rank can
            # read its dead peer's gloo address (still in the store) and fail with "connection refused"
            # (we hit this under load in the chaos run). One key space per restart attempt avoids it.
            base = dist.TCPStore(
                os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout
            )
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            dist.init_process_group(
                backend=backend,
                store=dist.PrefixStore(f"mlsd/attempt_{attempt}", base),
                rank=int(os.environ["RANK"]),
                world_size=int(os.environ["WORLD_SIZE"]),
                timeout=timeout,
            )
        else:
            dist.init_process_group(backend=backend, timeout=timeout)
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        backend = str(dist.get_backend())
    else:
        rank, world, local_rank, backend = 0, 1, 0, None  # type: ignore[assignment]
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend)


def amp_settings(mode: AmpMode, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use GradScaler). bf16 keeps fp32's exponent range, so no loss scaling;
    fp16 underflows small gradients without a scaler."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None, False
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16, False
    return torch.float16, device.type == "cuda"


# --------------------------------------------------------------------------------------------------------
# the loop


@dataclass
class TrainResult:
    losses: dict[int, float] = field(default_factory=dict)  # step -> global mean loss (rank 0; logged steps)
    step_times_s: list[float] = field(default_factory=list)  # wall time per optimiser step
    start_step: int = 0
    final_step: int = 0
    tokens_per_step: int = 0
    n_params: int = 0


# on_checkpoint(step, checkpoint folder or None on ranks != 0, metrics); on_step(step, metrics)
CheckpointHook = Callable[[int, Path | None, dict[str, float]], None]
StepHook = Callable[[int, dict[str, float]], None]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on >=2-D tensors only (decaying LayerNorm gains and biases hurts)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=False)


def effective_config(cfg: TrainConfig, ctx: DistContext, tokens_path: Path) -> dict[str, Any]:
    """What decides a step's arithmetic and its CPU budget, read from the running process itself.

    Why: two launchers (torchrun, Ray Train) can be handed the same ``TrainConfig`` and still run different
    things: another world size, thread count, priority or data file. Each run writes this into its ``start``
    record, so a comparison of launchers can check it compares like with like instead of trusting the flags.
    """
    return {
        "preset": cfg.preset,
        "world_size": ctx.world_size,
        "backend": ctx.backend,
        "micro_batch_size": cfg.micro_batch_size,
        "global_batch_size": cfg.global_batch_size,
        "accum": cfg.accum_steps(ctx.world_size),
        "tokens_per_step": cfg.global_batch_size * cfg.model.block_size,
        "max_steps": cfg.max_steps,
        "log_every": cfg.log_every,
        "ckpt_every": cfg.ckpt_every,
        "seed": cfg.seed,
        "amp": cfg.amp,
        "skip_grad_sync": cfg.skip_grad_sync,
        "intra_op_threads": torch.get_num_threads(),
        "inter_op_threads": torch.get_num_interop_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "mkl_num_threads_env": os.environ.get("MKL_NUM_THREADS"),
        # nice of the calling (training) thread; on Linux a priority is per thread
        "nice": os.nice(0) if hasattr(os, "nice") else None,
        "tokens_file": tokens_path.name,
        "tokens_bytes": tokens_path.stat().st_size,
    }


def process_layout() -> dict[str, Any]:
    """Where the scheduler puts this rank; recorded, not equalised (a launcher decides it, not our code).

    torchrun starts every rank in a session of its own (``start_new_session=True``), and with Linux's
    ``sched_autogroup`` each session is one scheduling group with an equal share of the CPUs. Ray Train runs
    the loop on a thread of an actor process that lives in the session of whoever started Ray. On a shared
    machine that changes how long a runnable rank waits for a core (``rq_wait_s`` of the step records).
    """
    autogroup = Path("/proc/self/autogroup")
    return {
        "own_session": os.getsid(0) == os.getpid() if hasattr(os, "getsid") else None,
        "training_thread_is_main": threading.current_thread() is threading.main_thread(),
        "autogroup": autogroup.read_text().strip() if autogroup.exists() else None,
    }


def runqueue_wait_s() -> float | None:
    """Seconds the calling thread has been runnable but waiting for a CPU (Linux schedstat), else None.

    Why: on a shared machine a step's wall time is its CPU time plus the time other processes held the
    cores. Logging both per step tells a slower launcher from a busier minute.
    """
    try:
        return int(_SCHEDSTAT.read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


_SCHEDSTAT = Path("/proc/thread-self/schedstat")


class MetricsLog:
    """Append-only JSON-lines log written by rank 0 (one record per event, flushed at once)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields: Any) -> None:
        if self.path is None:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")


def run_training(
    cfg: TrainConfig,
    *,
    tokens_path: Path,
    run_dir: Path,
    ctx: DistContext,
    resume: bool = False,
    resume_from: Path | None = None,
    on_step: StepHook | None = None,
    on_checkpoint: CheckpointHook | None = None,
) -> TrainResult:
    """Train ``cfg`` on ``tokens_path``; state under ``run_dir``. Collective: every rank calls it.

    ``resume`` picks the newest checkpoint under ``run_dir/checkpoints``; ``resume_from`` names one folder
    (Ray hands us its own copy). Returns the losses rank 0 saw (empty on other ranks).
    """
    accum = cfg.accum_steps(ctx.world_size)
    ckpt_root = run_dir / "checkpoints"
    mlog = MetricsLog(run_dir / "metrics.jsonl" if ctx.is_main else None)
    (run_dir / "pids").mkdir(parents=True, exist_ok=True)
    # pid files let `mlsd dist chaos` SIGKILL one chosen rank from outside.
    (run_dir / "pids" / f"rank{ctx.rank}.pid").write_text(str(os.getpid()))

    torch.manual_seed(cfg.seed)  # identical init everywhere (DDP also broadcasts rank 0's weights)
    model = GPT(cfg.model).to(ctx.device)
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, cfg) / cfg.lr)
    amp_dtype, use_scaler = amp_settings(cfg.amp, ctx.device)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=use_scaler)

    start_step, stream_state = 0, StreamState()
    src = resume_from if resume_from is not None else (ckpt.latest_checkpoint(ckpt_root) if resume else None)
    if src is not None:
        state, rng = ckpt.load_checkpoint(src, rank=ctx.rank)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_step = int(state["step"])
        # The data position is stored as global samples into the epoch, so a restart may change world size.
        per_micro = cfg.micro_batch_size * ctx.world_size
        stream_state = StreamState(epoch=int(state["epoch"]), micro_batches=int(state["epoch_samples"]) // per_micro)
        if rng is not None:
            ckpt.set_rng_state(rng)

    ddp: nn.Module = model
    if ctx.backend is not None:
        # bucket_cap_mb=25 (default): gradients are all-reduced bucket by bucket while backward continues
        ddp = DDP(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
    train_tokens, _ = split_tokens(load_tokens(tokens_path))  # the tail is held out for eval_loss
    dataset = TokenBlocks(train_tokens, cfg.model.block_size)
    stream = BatchStream(
        dataset,
        micro_batch_size=cfg.micro_batch_size,
        rank=ctx.rank,
        world_size=ctx.world_size,
        seed=cfg.seed,
        state=stream_state,
    )
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = iter(stream)
    tokens_per_step = cfg.global_batch_size * cfg.model.block_size
    n_params = model.num_params()
    flops_tok = flops_per_token(cfg.model, n_params)
    result = TrainResult(start_step=start_step, tokens_per_step=tokens_per_step, n_params=n_params)
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    mlog.write(
        "start",
        step=start_step,
        world_size=ctx.world_size,
        accum=accum,
        restart=restart,
        pid=os.getpid(),
        threads=torch.get_num_threads(),
        config=effective_config(cfg, ctx, tokens_path),
        layout=process_layout(),
    )
    if ctx.is_main:
        log.info(
            "preset=%s params=%.2fM world=%d accum=%d backend=%s amp=%s start_step=%d",
            cfg.preset,
            n_params / 1e6,
            ctx.world_size,
            accum,
            ctx.backend,
            amp_dtype,
            start_step,
        )

    for step in range(start_step, cfg.max_steps):
        t0 = time.perf_counter()
        cpu0, wait0 = time.process_time(), runqueue_wait_s()  # CPU of all this rank's threads; rq wait
        loss_sum = torch.zeros((), device=ctx.device)
        for micro in range(accum):
            x, y = next(batches)
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            last = micro == accum - 1
            # no_sync(): accumulate locally, all-reduce once on the last micro-step (accum x less traffic).
            sync_ctx = (
                ddp.no_sync() if isinstance(ddp, DDP) and (not last or cfg.skip_grad_sync) else contextlib.nullcontext()
            )
            with sync_ctx:
                with torch.autocast(ctx.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    _, loss = ddp(x, y)
                    assert loss is not None
                    loss = loss / accum  # mean over the rank's micro-steps
                scaler.scale(loss).backward()
            loss_sum += loss.detach()
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)  # clip the true gradient, not the scaled one
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        metrics: dict[str, float] = {}
        if (step + 1) % cfg.log_every == 0 or step == start_step or step + 1 == cfg.max_steps:
            if ctx.backend is not None:
                dist.all_reduce(loss_sum, op=dist.ReduceOp.SUM)  # a sync point: only on log steps
                loss_sum /= ctx.world_size
            metrics["loss"] = float(loss_sum.item())
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        result.step_times_s.append(dt)
        metrics.update(step_s=dt, tokens_per_s=tokens_per_step / dt, lr=float(scheduler.get_last_lr()[0]))
        # wall = CPU + waiting for a core + waiting for the peer: the first two apart, per step
        metrics["cpu_s"] = time.process_time() - cpu0
        wait1 = runqueue_wait_s()
        if wait0 is not None and wait1 is not None:
            metrics["rq_wait_s"] = wait1 - wait0
        if ctx.device.type == "cuda":
            # model FLOPs utilisation: achieved FLOP/s over the peak of all GPUs
            metrics["mfu"] = flops_tok * tokens_per_step / dt / (cfg.peak_tflops * 1e12 * ctx.world_size)
        if ctx.is_main:
            if "loss" in metrics:
                result.losses[step] = metrics["loss"]
            mlog.write("step", step=step, **metrics)
            if "loss" in metrics:
                log.info(
                    "step %d loss %.4f lr %.2e %.0f tok/s %.1f ms%s",
                    step,
                    metrics["loss"],
                    metrics["lr"],
                    metrics["tokens_per_s"],
                    dt * 1e3,
                    f" mfu {metrics['mfu']:.1%}" if "mfu" in metrics else "",
                )
        done = step + 1
        if done % cfg.ckpt_every == 0 or done == cfg.max_steps:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "step": done,
                "epoch": stream.state.epoch,
                "epoch_samples": stream.state.micro_batches * cfg.micro_batch_size * ctx.world_size,
                "config": cfg.to_dict(),
            }
            path = ckpt.save_checkpoint(ckpt_root, done, state, rank=ctx.rank)
            mlog.write("checkpoint", step=done, path=str(path))
            if on_checkpoint is not None:
                on_checkpoint(done, path if ctx.is_main else None, metrics)
        if on_step is not None:
            on_step(step, metrics)  # after the checkpoint: a hook that stops the run keeps this step's state
    result.final_step = cfg.max_steps
    mlog.write("end", step=cfg.max_steps)
    return result


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_losses(path: Path) -> dict[int, float]:
    """step -> loss from a ``metrics.jsonl``; a step logged twice (after a restart) keeps the last value."""
    return {int(r["step"]): float(r["loss"]) for r in read_metrics(path) if r["event"] == "step" and "loss" in r}


# --------------------------------------------------------------------------------------------------------
# entry point


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu_debug", choices=sorted(PRESETS))
    p.add_argument("--run-dir", type=Path, default=None, help="default: <data_dir>/distributed_training/runs/<preset>")
    p.add_argument("--tokens", type=Path, default=None, help="token .npy (default: the review corpus, built once)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run dir")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--global-batch-size", type=int)
    p.add_argument("--micro-batch-size", type=int)
    p.add_argument("--ckpt-every", type=int)
    p.add_argument("--log-every", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"])
    p.add_argument("--skip-grad-sync", action="store_true", default=None, help="benchmark only: no all-reduce")
    p.add_argument(
        "--stop-after", type=int, default=None, help="exit cleanly after this many steps (simulates a preemption)"
    )
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The ``TrainConfig`` a command line asks for: the preset with the flags that were given."""
    return get_preset(
        args.preset,
        max_steps=args.max_steps,
        global_batch_size=args.global_batch_size,
        micro_batch_size=args.micro_batch_size,
        ckpt_every=args.ckpt_every,
        log_every=args.log_every,
        lr=args.lr,
        seed=args.seed,
        amp=args.amp,
        skip_grad_sync=args.skip_grad_sync,
    )


def main(argv: list[str] | None = None) -> None:
    """Setup -> build -> run -> teardown."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = config_from_args(args)
    from systems.distributed_training.settings import DistSettings

    settings = DistSettings()
    run_dir = args.run_dir or settings.runs_dir / cfg.preset
    tokens_path = args.tokens
    ctx = init_distributed()
    if tokens_path is None:
        tokens_path = settings.tokens_path
        if ctx.is_main:
            settings.ensure_dirs()
            from systems.distributed_training.data import prepare_tokens

            prepare_tokens(tokens_path, settings=settings)
        if ctx.backend is not None:
            dist.barrier()  # the token file exists before any rank maps it
    if ctx.is_main and not args.resume:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # a fresh run starts a fresh log
    on_step: StepHook | None = None
    if args.stop_after is not None:
        stop_at = args.stop_after

        def on_step(step: int, metrics: dict[str, float]) -> None:
            if step + 1 >= stop_at:
                raise _Stop

    try:
        run_training(cfg, tokens_path=tokens_path, run_dir=run_dir, ctx=ctx, resume=args.resume, on_step=on_step)
    except _Stop:
        pass
    finally:
        if ctx.backend is not None:
            dist.destroy_process_group()


class _Stop(Exception):
    """Raised by --stop-after to end a run early (its last checkpoint is what a resume starts from)."""


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # torchrun's SIGTERM -> clean teardown
    main()
