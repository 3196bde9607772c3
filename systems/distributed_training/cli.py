"""``mlsd dist``: distributed training of a small GPT (DDP, parameter server, Ray Train, chaos, benchmarks).

    mlsd dist train --nproc 2 --preset cpu_debug          # torchrun DDP (gloo on CPU, NCCL on GPU)
    mlsd dist train --nproc 2 --preset cpu_debug --resume
    mlsd dist chaos --kill-step 25                        # SIGKILL rank 1, watch torchrun restart + resume
    mlsd dist two-node                                     # two torchrun "nodes" via c10d on 127.0.0.1
    mlsd dist ps --mode sync|async                         # parameter server over torch.distributed.rpc
    mlsd dist image --nproc 2                              # image classification on the blocks image pipeline
    mlsd dist allreduce-bench --out ar.json
    mlsd dist ray --workers 2 [--fail-at-step 25]          # Ray Train TorchTrainer
    mlsd dist bench [--only ray,image]                     # -> systems/distributed_training/bench/
    mlsd dist golden [--write]

Heavy imports (torch, ray) happen inside the commands so ``mlsd --help`` stays fast.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from systems.distributed_training.settings import DistSettings

app = typer.Typer(no_args_is_help=True, help="Distributed training: DDP with torchrun, parameter server, Ray Train.")
console = Console()

PresetOpt = Annotated[str, typer.Option(help="cpu_debug | cpu_small | gpu_124m")]
TokensOpt = Annotated[Path | None, typer.Option(help="token .npy (default: the whole review corpus, built once)")]


def _settings() -> DistSettings:
    from systems.distributed_training.settings import DistSettings

    s = DistSettings()
    s.ensure_dirs()
    return s


def _tokens(tokens: Path | None, settings: DistSettings, *, limit: int | None = None) -> Path:
    """The given token file, or the review corpus tokenised once under the data dir."""
    if tokens is not None:
        return tokens
    from systems.distributed_training.data import prepare_tokens

    if limit is not None:
        return prepare_tokens(settings.root / f"reviews_{limit}_bytes.npy", limit=limit, settings=settings)
    return prepare_tokens(settings.tokens_path, settings=settings)


def _loss_table(losses: dict[int, float], title: str, every: int = 10) -> Table:
    t = Table(title=title)
    t.add_column("step", justify="right")
    t.add_column("loss", justify="right")
    for k in sorted(losses):
        if k % every == 0 or k == max(losses):
            t.add_row(str(k), f"{losses[k]:.4f}")
    return t


@app.command()
def train(
    nproc: Annotated[int, typer.Option(help="processes (ranks) on this machine")] = 2,
    preset: PresetOpt = "cpu_debug",
    max_steps: Annotated[int | None, typer.Option(help="override the preset's optimiser steps")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the newest checkpoint")] = False,
    run_dir: Annotated[Path | None, typer.Option(help="default: <data_dir>/distributed_training/runs/<preset>")] = None,
    tokens: TokensOpt = None,
) -> None:
    """DDP training under torchrun --standalone; prints the command and the losses."""
    from systems.distributed_training.launch import TRAIN_MODULE, run_torchrun, torchrun_cmd
    from systems.distributed_training.train import read_losses

    s = _settings()
    tok = _tokens(tokens, s)
    rd = run_dir or s.runs_dir / preset
    args = ["--preset", preset, "--tokens", str(tok), "--run-dir", str(rd)]
    if max_steps is not None:
        args += ["--max-steps", str(max_steps)]
    if resume:
        args.append("--resume")
    elif rd.exists():
        shutil.rmtree(rd)  # a fresh run: old checkpoints/metrics would be mixed in
    console.print("[bold]$[/bold] " + " ".join(torchrun_cmd(TRAIN_MODULE, args, nproc=nproc)))
    run_torchrun(TRAIN_MODULE, args, nproc=nproc, log_path=rd.parent / f"{rd.name}.log")
    console.print(_loss_table(read_losses(rd / "metrics.jsonl"), f"{preset}, {nproc} rank(s)"))


@app.command()
def chaos(
    kill_step: Annotated[int, typer.Option(help="SIGKILL once rank 0 has logged this step")] = 25,
    kill_rank: Annotated[int, typer.Option(help="rank to kill")] = 1,
    nproc: Annotated[int, typer.Option()] = 2,
    preset: PresetOpt = "cpu_debug",
    max_steps: Annotated[int, typer.Option()] = 60,
    tokens: TokensOpt = None,
) -> None:
    """Kill one rank of a torchrun job (--max-restarts=1); report steps lost and seconds to recover."""
    from systems.distributed_training.chaos import run_chaos

    s = _settings()
    tok = _tokens(tokens, s)
    rd = s.runs_dir / "chaos"
    shutil.rmtree(rd, ignore_errors=True)
    rep = run_chaos(
        run_dir=rd,
        train_args=["--preset", preset, "--tokens", str(tok), "--max-steps", str(max_steps)],
        nproc=nproc,
        kill_step=kill_step,
        kill_rank=kill_rank,
    )
    d = rep.to_dict()
    d.pop("losses")
    console.print_json(json.dumps(d))


@app.command("two-node")
def two_node(
    preset: PresetOpt = "cpu_debug",
    nproc_per_node: Annotated[int, typer.Option()] = 1,
    tokens: TokensOpt = None,
) -> None:
    """Two torchrun agents (--nnodes=2, c10d rendezvous on 127.0.0.1) acting as two machines."""
    from systems.distributed_training.launch import TRAIN_MODULE, run_two_nodes
    from systems.distributed_training.train import read_losses

    s = _settings()
    tok = _tokens(tokens, s)
    rd = s.runs_dir / "two_node"
    shutil.rmtree(rd, ignore_errors=True)
    codes = run_two_nodes(
        TRAIN_MODULE,
        ["--preset", preset, "--tokens", str(tok), "--run-dir", str(rd)],
        log_dir=rd.parent / "two_node_logs",
        nproc_per_node=nproc_per_node,
    )
    console.print(f"node exit codes: {codes}")
    console.print(_loss_table(read_losses(rd / "metrics.jsonl"), f"two nodes x {nproc_per_node} process(es)"))


@app.command()
def ps(
    mode: Annotated[str, typer.Option(help="sync | async")] = "sync",
    workers: Annotated[int, typer.Option(help="worker processes (plus one server)")] = 2,
    staleness: Annotated[int, typer.Option(help="async: max versions a gradient may lag")] = 2,
    preset: PresetOpt = "cpu_debug",
    max_steps: Annotated[int | None, typer.Option()] = None,
    tokens: TokensOpt = None,
) -> None:
    """Parameter-server training (1 server + N workers over torch.distributed.rpc)."""
    from systems.distributed_training.launch import run_torchrun

    s = _settings()
    tok = _tokens(tokens, s)
    rd = s.runs_dir / f"ps_{mode}"
    args = ["--preset", preset, "--mode", mode, "--staleness", str(staleness), "--tokens", str(tok)]
    args += ["--run-dir", str(rd)]
    if max_steps is not None:
        args += ["--max-steps", str(max_steps)]
    run_torchrun("systems.distributed_training.ps", args, nproc=workers + 1, log_path=rd.parent / f"ps_{mode}.log")
    res = json.loads((rd / "ps_result.json").read_text())
    res.pop("losses")
    console.print_json(json.dumps(res))


@app.command()
def image(
    nproc: Annotated[int, typer.Option(help="processes (ranks) on this machine")] = 2,
    size: Annotated[int, typer.Option(help="image side in pixels (written and read at this size)")] = 16,
    epochs: Annotated[int, typer.Option()] = 2,
    global_batch_size: Annotated[int, typer.Option(help="images per optimiser step over all ranks")] = 64,
    num_workers: Annotated[int, typer.Option(help="DataLoader worker processes per rank")] = 0,
) -> None:
    """Image classification (sklearn digits as PNGs, blocks image pipeline, feed-forward classifier) under DDP."""
    from systems.distributed_training.image_workload import digits_dir, prepare_images, read_result
    from systems.distributed_training.launch import run_torchrun, torchrun_cmd

    s = _settings()
    images = prepare_images(digits_dir(s.root, size), size)
    rd = s.runs_dir / "image"
    shutil.rmtree(rd, ignore_errors=True)
    args = ["--images", str(images), "--run-dir", str(rd), "--size", str(size), "--epochs", str(epochs)]
    args += ["--global-batch-size", str(global_batch_size), "--num-workers", str(num_workers)]
    module = "systems.distributed_training.image_workload"
    console.print("[bold]$[/bold] " + " ".join(torchrun_cmd(module, args, nproc=nproc)))
    run_torchrun(module, args, nproc=nproc, log_path=rd.parent / "image.log")
    res = read_result(rd)
    every = max(1, res["steps"] // 6)
    console.print(
        _loss_table(res["losses"], f"digits {size}px, {nproc} rank(s), global batch {global_batch_size}", every)
    )
    console.print(
        f"held-out accuracy {res['val_accuracy']:.3f} on {res['n_val']} images; "
        f"{res['images_per_s']:.0f} images/s (steady state, data loading included)"
    )


@app.command("allreduce-bench")
def allreduce_bench(
    out: Annotated[Path, typer.Option(help="JSON output")] = Path(".mlsd/bench/allreduce.json"),
    nproc: Annotated[int, typer.Option()] = 2,
    max_bytes: Annotated[int, typer.Option()] = 64 << 20,
) -> None:
    """gloo all-reduce: time, algbw and busbw = algbw * 2(N-1)/N from 1 KiB to max_bytes."""
    from systems.distributed_training.launch import run_torchrun

    run_torchrun(
        "systems.distributed_training.allreduce_bench",
        ["--out", str(out), "--max-bytes", str(max_bytes)],
        nproc=nproc,
        log_path=out.with_suffix(".log"),
    )
    data = json.loads(out.read_text())
    t = Table(title=f"all-reduce, {data['backend']}, {data['world_size']} ranks")
    for col in ("bytes", "time (us)", "algbw GB/s", "busbw GB/s"):
        t.add_column(col, justify="right")
    for r in data["rows"]:
        t.add_row(str(r["bytes"]), f"{r['time_us']:.0f}", f"{r['algbw_GBps']:.3f}", f"{r['busbw_GBps']:.3f}")
    console.print(t)


@app.command()
def ray(
    workers: Annotated[int, typer.Option()] = 2,
    preset: PresetOpt = "cpu_debug",
    max_steps: Annotated[int | None, typer.Option()] = None,
    fail_at_step: Annotated[int | None, typer.Option(help="SIGKILL worker rank 1 at this step (once)")] = None,
    tokens: TokensOpt = None,
) -> None:
    """The same loop under Ray Train's TorchTrainer (ScalingConfig, FailureConfig, reported checkpoints)."""
    from systems.distributed_training.ray_train import run_ray_training

    s = _settings()
    tok = _tokens(tokens, s)
    rd = s.runs_dir / "ray"
    shutil.rmtree(rd, ignore_errors=True)
    overrides = {"max_steps": max_steps} if max_steps else {}
    rep = run_ray_training(
        preset=preset, tokens=tok, run_dir=rd, workers=workers, overrides=overrides, fail_at_step=fail_at_step
    )
    console.print_json(json.dumps(rep.to_dict()))


@app.command()
def golden(
    write: Annotated[bool, typer.Option(help="overwrite the stored golden file (only on purpose)")] = False,
) -> None:
    """Re-run the seeded 1-process cpu_debug job and compare with (or write) the golden loss file."""
    import tempfile

    import torch

    from systems.distributed_training.evaluate import (
        GOLDEN_ATOL,
        GOLDEN_PATH,
        GOLDEN_REVIEWS,
        load_golden,
        max_abs_diff,
        write_golden,
    )
    from systems.distributed_training.train import cpu_debug, init_distributed, run_training

    torch.set_num_threads(1)  # as each torchrun rank runs (OMP_NUM_THREADS=1)
    s = _settings()
    tok = _tokens(None, s, limit=GOLDEN_REVIEWS)
    with tempfile.TemporaryDirectory() as d:
        res = run_training(cpu_debug(), tokens_path=tok, run_dir=Path(d), ctx=init_distributed())
    if write:
        write_golden(res.losses)
        console.print(f"wrote {GOLDEN_PATH} ({len(res.losses)} steps)")
        return
    diff = max_abs_diff(res.losses, load_golden())
    ok = diff <= GOLDEN_ATOL
    console.print(f"max |loss - golden| = {diff:.2e} (atol {GOLDEN_ATOL:.0e}): {'OK' if ok else 'FAIL'}")
    if not ok:
        raise typer.Exit(1)


@app.command()
def bench(
    out: Annotated[
        Path | None,
        typer.Option(help="JSON report, PNG beside it (default: systems/distributed_training/bench/...json)"),
    ] = None,
    steps: Annotated[int, typer.Option(help="optimiser steps per throughput / PS / Ray run")] = 40,
    repeats: Annotated[int, typer.Option(help="repeats of the throughput and image runs (medians reported)")] = 3,
    ray_pairs: Annotated[int, typer.Option(help="alternating torchrun/Ray pairs (median of the pairs)")] = 5,
    only: Annotated[
        str | None,
        typer.Option(
            help="comma list of: equivalence,resume,throughput,ps_vs_allreduce,allreduce_bench,chaos,ray,image"
        ),
    ] = None,
) -> None:
    """Run every measurement once with small presets; write JSON + PNG (each section with its provenance)."""
    from systems.common.bench import default_bench_path
    from systems.distributed_training.bench import SECTIONS, run_bench
    from systems.distributed_training.image_workload import digits_dir

    s = _settings()
    tok = _tokens(None, s, limit=None)
    golden_tok = _tokens(None, s, limit=2000)
    sections = tuple(only.split(",")) if only else SECTIONS
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise typer.BadParameter(f"unknown sections {sorted(unknown)}; known: {','.join(SECTIONS)}")
    t0 = time.perf_counter()
    report = run_bench(
        out,
        work=s.root / "bench",
        tokens=tok,
        steps=steps,
        repeats=repeats,
        ray_pairs=ray_pairs,
        progress=lambda m: console.print(f"[cyan]{m}[/cyan]"),
        equivalence_tokens=golden_tok,
        images=digits_dir(s.root, 16),
        sections=sections,
    )
    path = out or default_bench_path("distributed_training")
    console.print_json(json.dumps(_headline(report)))
    console.print(f"wrote {path} and {path.with_suffix('.png')} in {time.perf_counter() - t0:.0f} s")


def _headline(report: dict[str, object]) -> dict[str, object]:
    """The numbers the README quotes, flattened to dotted keys."""
    keys = {
        "equivalence.max_loss_diff": ("equivalence", "max_loss_diff"),
        "resume.max_loss_diff": ("resume", "max_loss_diff"),
        "throughput.tokens_per_s_1proc": ("throughput", "tokens_per_s_1proc"),
        "throughput.tokens_per_s_2proc": ("throughput", "tokens_per_s_2proc"),
        "scaling.efficiency": ("scaling", "efficiency"),
        "scaling.comm_share": ("scaling", "comm_share"),
        "ps.steps_per_s": ("ps_vs_allreduce", "ps.steps_per_s"),
        "allreduce.steps_per_s": ("ps_vs_allreduce", "allreduce.steps_per_s"),
        "ray.overhead_pct": ("ray", "overhead_pct"),
        "ray.overhead_pct_p10": ("ray", "overhead_pct_p10"),
        "ray.cpu_overhead_pct": ("ray", "cpu_overhead_pct"),
        "chaos.steps_lost": ("chaos", "steps_lost"),
        "chaos.recovery_s": ("chaos", "recovery_s"),
        "image.images_per_s": ("image", "images_per_s"),
        "image.max_loss_diff_1_vs_2": ("image", "max_loss_diff_1_vs_2"),
    }
    flat: dict[str, object] = {}
    for name, (sec, key) in keys.items():
        section = report.get(sec)
        if isinstance(section, dict) and key in section:
            flat[name] = section[key]
    return flat


@app.command()
def demo(
    steps: Annotated[int, typer.Option(help="optimiser steps of the 2-process cpu_debug run")] = 30,
) -> None:
    """Two-process DDP on the review corpus, then a sample from the trained model."""
    import torch

    from systems.distributed_training.checkpoint import latest_checkpoint
    from systems.distributed_training.data import decode, encode
    from systems.distributed_training.launch import TRAIN_MODULE, run_torchrun
    from systems.distributed_training.model import GPT, ModelConfig, generate
    from systems.distributed_training.train import read_losses

    s = _settings()
    tok = _tokens(None, s, limit=2000)
    rd = s.runs_dir / "demo"
    shutil.rmtree(rd, ignore_errors=True)
    args = ["--preset", "cpu_debug", "--tokens", str(tok), "--run-dir", str(rd), "--max-steps", str(steps)]
    console.print("[bold]torchrun --standalone --nproc_per_node=2 -m systems.distributed_training.train[/bold] ...")
    run_torchrun(TRAIN_MODULE, args, nproc=2, log_path=rd.parent / "demo.log")
    console.print(_loss_table(read_losses(rd / "metrics.jsonl"), "cpu_debug, 2 processes (gloo)"))
    path = latest_checkpoint(rd / "checkpoints")
    assert path is not None
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    model = GPT(ModelConfig(**state["config"]["model"]))
    model.load_state_dict(state["model"])
    torch.manual_seed(0)
    prompt = torch.from_numpy(encode("This dress ")).long()[None]
    console.print(f"sample: {decode(generate(model, prompt, 60, temperature=0.8)[0])!r}")
