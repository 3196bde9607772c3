"""Image classification under DDP, fed by the shared image pipeline (``systems/blocks/image_pipeline.py``).

    torchrun --standalone --nproc_per_node=2 -m systems.distributed_training.image_workload --size 16 --epochs 2
    mlsd dist image --nproc 2

The second workload of this system, next to the language model: the real scikit-learn digits written once
as PNG files (``write_digits_images``), decoded / resized / normalised by ``make_dataloader(..., rank=,
world_size=, distributed=True)`` (a ``DistributedSampler`` shard per rank), and a two-layer
``FeedForwardClassifier`` (``systems/blocks/feedforward.py``) on the flattened ``size x size`` pixels,
wrapped in DDP. Rank 0 logs loss, held-out accuracy and images/s and writes ``image_result.json``.

Same global batch, same numbers: each rank takes ``global_batch / world`` images of one seeded permutation
(rank r: ``perm[r::W]``), its loss is the mean over its images and DDP averages the gradients, so every
optimiser step sees the gradient of the global-batch mean whatever the number of ranks (checked in
``tests/integration/distributed_training/test_dist_image.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

from systems.blocks.feedforward import FeedForwardClassifier
from systems.blocks.image_pipeline import compute_mean_std, list_images, make_dataloader, split_samples
from systems.distributed_training.train import DistContext, MetricsLog, init_distributed

log = logging.getLogger("systems.distributed_training.image_workload")

RESULT_FILE = "image_result.json"


@dataclass(frozen=True, kw_only=True)
class ImageConfig:
    """Everything that decides the numbers of an image run."""

    size: int = 16  # images are written and read at size x size pixels (1 channel)
    hidden: int = 128  # width of the feed-forward classifier's hidden layer
    global_batch_size: int = 64  # images per optimiser step, summed over ranks
    epochs: int = 2
    lr: float = 3e-3  # Adam
    seed: int = 0  # model init and the shuffle (the train/validation split has its own fixed seed)
    num_workers: int = 0  # DataLoader processes per rank (0: decode in the training process)
    skip_steps: int = 3  # steps left out of the steady-state images/s (first batches, allocator warm-up)

    def __post_init__(self) -> None:
        for name in ("size", "hidden", "global_batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.size < 8:
            raise ValueError("size must be >= 8 (the digits are 8 x 8)")
        if self.lr <= 0 or self.num_workers < 0:
            raise ValueError("lr > 0 and num_workers >= 0 are required")

    def micro_batch(self, world_size: int) -> int:
        """Images per rank per step; the global batch must split evenly over the ranks."""
        if self.global_batch_size % world_size != 0:
            raise ValueError(f"global_batch_size={self.global_batch_size} is not a multiple of world={world_size}")
        return self.global_batch_size // world_size


@dataclass
class ImageResult:
    world_size: int
    global_batch_size: int
    steps: int = 0
    losses: dict[int, float] = field(default_factory=dict)  # step -> global-batch mean loss (rank 0)
    step_times_s: list[float] = field(default_factory=list)  # data loading + forward/backward + step
    images_per_s: float = 0.0  # global images / median steady-state step time
    val_loss: float = float("nan")
    val_accuracy: float = float("nan")
    n_val: int = 0
    threads: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def digits_dir(root: Path, size: int) -> Path:
    """Where the digits PNGs of one size live (written once, shared by every run)."""
    return root / f"digits_png_{size}px"


def prepare_images(out_dir: Path, size: int) -> Path:
    """Write the 1,797 real digits as ``size`` px PNGs unless they exist (idempotent: a manifest)."""
    from systems.blocks.image_pipeline import write_digits_images

    return write_digits_images(out_dir, size=size)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader[tuple[torch.Tensor, int]]) -> tuple[float, float, int]:
    """(mean cross-entropy, accuracy, n) over ``loader`` (the held-out split, unsharded)."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in loader:
        logits = model(x.flatten(1))  # (B, 1, S, S) -> (B, S*S) -> (B, 10)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(dim=1) == y).sum())
        n += int(y.numel())
    model.train()
    return loss_sum / max(n, 1), correct / max(n, 1), n


def run_image_training(cfg: ImageConfig, *, images: Path, run_dir: Path, ctx: DistContext) -> ImageResult:
    """Train the classifier on the PNGs under ``images``. Collective: every rank calls it.

    Returns what rank 0 saw (losses and timings; the held-out metrics only on rank 0).
    """
    micro = cfg.micro_batch(ctx.world_size)
    mlog = MetricsLog(run_dir / "metrics.jsonl" if ctx.is_main else None)
    # Normalisation statistics of the training split: every rank computes the same numbers (a few
    # hundred ms at 16 px) instead of waiting for rank 0 to broadcast them.
    train_s, _ = split_samples(list_images(images))
    mean, std = compute_mean_std(train_s, size=cfg.size)
    common: dict[str, Any] = {"size": cfg.size, "mean": mean, "std": std, "seed": cfg.seed}
    train_dl = make_dataloader(
        images,
        batch_size=micro,
        num_workers=cfg.num_workers,
        rank=ctx.rank,
        world_size=ctx.world_size,
        distributed=True,  # the same permutation for 1 and N ranks: losses independent of N
        **common,
    )
    torch.manual_seed(cfg.seed)  # identical init on every rank (DDP also broadcasts rank 0's weights)
    model = FeedForwardClassifier(cfg.size * cfg.size, cfg.hidden, 10).to(ctx.device)
    ddp: nn.Module = model
    if ctx.backend is not None:
        ddp = DDP(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, foreach=False)
    result = ImageResult(world_size=ctx.world_size, global_batch_size=cfg.global_batch_size)
    result.threads = torch.get_num_threads()
    mlog.write("start", world_size=ctx.world_size, micro_batch=micro, threads=result.threads, config=asdict(cfg))
    if ctx.is_main:
        log.info("image workload: world=%d micro=%d train=%d images", ctx.world_size, micro, len(train_s))

    step = 0
    for epoch in range(cfg.epochs):
        sampler = train_dl.sampler
        assert isinstance(sampler, DistributedSampler)
        sampler.set_epoch(epoch)  # a new permutation per epoch, the same on every rank
        t0 = time.perf_counter()
        for x, y in train_dl:  # x (b, 1, S, S) normalised, y (b,)
            x, y = x.to(ctx.device), y.to(ctx.device)
            loss = F.cross_entropy(ddp(x.flatten(1)), y)  # mean over this rank's b images
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP all-reduces (averages) the gradients: the global-batch mean's gradient
            optimizer.step()
            report = loss.detach().clone()
            if ctx.backend is not None:
                dist.all_reduce(report)  # one extra tiny all-reduce per step, only for the log
                report /= ctx.world_size
            dt = time.perf_counter() - t0
            result.step_times_s.append(dt)
            result.losses[step] = float(report)
            mlog.write("step", step=step, epoch=epoch, loss=result.losses[step], step_s=dt)
            step += 1
            t0 = time.perf_counter()  # the next step's time includes loading its batch
    result.steps = step
    steady = result.step_times_s[cfg.skip_steps :] or result.step_times_s
    result.images_per_s = cfg.global_batch_size / statistics.median(steady) if steady else 0.0
    if ctx.is_main:
        val_dl = make_dataloader(images, batch_size=256, num_workers=0, train=False, **common)
        result.val_loss, result.val_accuracy, result.n_val = evaluate(model, val_dl)
        mlog.write("end", **{k: v for k, v in result.to_dict().items() if k not in ("losses", "step_times_s")})
        (run_dir / RESULT_FILE).write_text(json.dumps(result.to_dict(), indent=2))
        log.info(
            "steps=%d final loss %.4f val acc %.3f %.0f images/s",
            step,
            result.losses.get(step - 1, float("nan")),
            result.val_accuracy,
            result.images_per_s,
        )
    return result


def read_result(run_dir: Path) -> dict[str, Any]:
    """``image_result.json`` with the step keys turned back into ints."""
    res: dict[str, Any] = json.loads((run_dir / RESULT_FILE).read_text())
    res["losses"] = {int(k): v for k, v in res["losses"].items()}
    return res


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=None, help="PNG root (default: <data_dir>/distributed_training/)")
    p.add_argument("--run-dir", type=Path, default=None, help="default: <data_dir>/distributed_training/runs/image")
    p.add_argument("--size", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--global-batch-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--num-workers", type=int)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Setup -> build -> run -> teardown."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    overrides = {k: getattr(args, k) for k in ("size", "hidden", "global_batch_size", "epochs", "lr", "seed")}
    overrides["num_workers"] = args.num_workers
    cfg = replace(ImageConfig(), **{k: v for k, v in overrides.items() if v is not None})
    from systems.distributed_training.settings import DistSettings

    settings = DistSettings()
    run_dir = args.run_dir or settings.runs_dir / "image"
    images = args.images or digits_dir(settings.root, cfg.size)
    ctx = init_distributed()
    try:
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
            prepare_images(images, cfg.size)
        if ctx.backend is not None:
            dist.barrier()  # the PNGs exist before any rank lists them
        run_image_training(cfg, images=images, run_dir=run_dir, ctx=ctx)
        if ctx.backend is not None:
            dist.barrier()  # rank 0 evaluates; the others wait so the job ends together
    finally:
        if ctx.backend is not None:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
