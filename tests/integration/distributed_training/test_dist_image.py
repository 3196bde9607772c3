"""The image-classification workload: torchrun DDP over the blocks image pipeline (real sklearn digits as PNGs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from systems.distributed_training.evaluate import max_abs_diff
from systems.distributed_training.image_workload import (
    ImageConfig,
    prepare_images,
    read_result,
    run_image_training,
)
from systems.distributed_training.launch import run_torchrun
from systems.distributed_training.train import init_distributed

pytestmark = pytest.mark.integration

MODULE = "systems.distributed_training.image_workload"


def _one_rank_in_process(images: Path, run_dir: Path) -> dict[str, object]:
    """The 1-rank reference without a torchrun start-up (one intra-op thread, as each torchrun rank)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = ImageConfig(size=16, epochs=1, global_batch_size=64)
        run_image_training(cfg, images=images, run_dir=run_dir, ctx=init_distributed())
    finally:
        torch.set_num_threads(threads)
    return read_result(run_dir)


def test_one_vs_two_ranks_same_losses_and_accuracy_floor(tmp_path: Path) -> None:
    images = prepare_images(tmp_path / "digits_png_16px", 16)
    assert len(list(images.glob("*/*.png"))) == 1797
    one = _one_rank_in_process(images, tmp_path / "one")
    args = ["--images", str(images), "--run-dir", str(tmp_path / "two"), "--size", "16", "--epochs", "1"]
    run_torchrun(MODULE, [*args, "--global-batch-size", "64"], nproc=2, log_path=tmp_path / "two.log")
    two = read_result(tmp_path / "two")
    # 1,438 training images (80 % of the sources), global batch 64, drop_last: 22 steps for both
    assert one["steps"] == two["steps"] == 22 and two["world_size"] == 2
    losses_1, losses_2 = one["losses"], two["losses"]
    assert isinstance(losses_1, dict) and isinstance(losses_2, dict)
    # 1 rank x 64 images == 2 ranks x 32 images of the same permutation: same loss, step for step
    assert max_abs_diff(losses_2, losses_1) <= 1e-5
    assert losses_2[21] < losses_2[0] - 1.5  # from ln(10) = 2.30 down (measured 2.32 -> 0.30)
    # quality floor on the 359 held-out digits after one epoch (measured 0.942 for both)
    assert two["n_val"] == 359
    assert float(two["val_accuracy"]) >= 0.88  # type: ignore[arg-type]
    assert two["val_accuracy"] == one["val_accuracy"]
    assert float(two["images_per_s"]) > 0 and two["threads"] == 1  # type: ignore[arg-type]


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="not a multiple"):
        ImageConfig(global_batch_size=63).micro_batch(2)
    with pytest.raises(ValueError, match="size"):
        ImageConfig(size=4)
