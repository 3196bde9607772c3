"""An image data pipeline: files on disk -> resized, normalised, batched tensors.

The question
------------
    "Given a large dataset of images, write a function to load, preprocess
    (resize, normalize), and create batches … using PyTorch DataLoader."

What the interviewer tests
--------------------------
* ``Dataset`` vs ``DataLoader``: the dataset maps an index to one sample and
  must be cheap to pickle (paths and labels, never decoded images, so each
  worker process opens files itself and memory does not grow with the dataset).
* Preprocessing order and where statistics come from: decode -> resize ->
  ``[0, 1]`` float -> ``(x - mean) / std`` with mean/std computed on the
  *training* split only (computing them on all data leaks the test set).
* The knobs that make loading keep up with the model: ``num_workers`` (decode
  in parallel processes), ``pin_memory`` (page-locked host buffers for async
  host-to-GPU copies; only meaningful with an accelerator), ``prefetch_factor``
  (batches queued per worker), ``persistent_workers`` (no process start-up per
  epoch), and ``drop_last`` for steady batch shapes.
* Reproducibility: a seeded ``torch.Generator`` for the shuffle order and a
  ``worker_init_fn`` that seeds NumPy/``random`` per worker (otherwise forked
  workers share the same NumPy RNG state and any augmentation repeats).
* Splitting without leakage: augmented copies of an image stay on the same
  side of the train/validation split.

Approach
--------
``write_digits_images`` writes the real scikit-learn digits (1,797 8x8 images)
as upscaled PNG files in class folders; ``copies`` adds deterministically
shifted copies so the on-disk dataset can be made as large as wanted.
``ImageFolderDataset`` decodes with PIL and converts with NumPy (no
torchvision): 16-bit greyscale is scaled by 1/65535 (PIL's own conversion to
8 bits clips everything above 255 to white), images with transparency are
composited onto a ``background`` colour (PIL's conversion drops alpha, so a
transparent pixel shows whatever colour it happens to store), and a file that
fails to decode raises ``OSError`` naming it. ``list_images`` takes class
folders named by integer labels and image extensions in any case.
``compute_mean_std`` streams the training files once through a
``DataLoader`` and accumulates float64 per-channel sums. ``make_dataloader``
assembles it all; ``measure_throughput`` reports images/s per ``num_workers``.

Verified in ``tests/unit/blocks/test_blocks_image_pipeline.py`` (shapes, value
ranges, normalised mean ~0 / std ~1 on the training split, deterministic
shuffles, no train/validation overlap).

Used by: the image-classification workload of distributed training
(``systems/distributed_training/image_workload.py``: DDP over ``make_dataloader(..., rank=, world_size=)``).
"""

from __future__ import annotations

import json
import random
import time
import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "Sample",
    "compute_mean_std",
    "list_images",
    "make_dataloader",
    "measure_throughput",
    "split_samples",
    "write_digits_images",
]

_MANIFEST = "manifest.json"
# Suffixes ``list_images`` picks up (compared lower-case): the formats PIL decodes without plugins.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_GREY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")  # PIL's modes for 16-bit greyscale
_ALPHA_MODES = ("RGBA", "LA", "PA")  # PIL modes with an alpha channel
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Sample:
    """One image file and its label; ``source`` groups copies of the same original image."""

    path: Path
    label: int
    source: int


def write_digits_images(out_dir: Path, *, size: int = 64, copies: int = 1, limit: int | None = None) -> Path:
    """Write the scikit-learn digits as ``size``x``size`` grayscale PNGs under ``out_dir/<label>/``.

    ``copies > 1`` adds deterministic variants (shifted by one source pixel, and dimmed
    by 5% per further round of the nine shifts), so the dataset holds ``1797 * copies``
    distinct files. ``limit`` keeps only the first N digits
    (small test fixtures). Idempotent: a manifest records the parameters and a
    second call with the same ones returns at once.
    """
    from sklearn.datasets import load_digits  # bundled with scikit-learn: offline

    if size < 8 or copies < 1:
        raise ValueError("size must be >= 8 and copies >= 1")
    out_dir = Path(out_dir)
    manifest = out_dir / _MANIFEST
    params = {"dataset": "sklearn-digits", "size": size, "copies": copies, "limit": limit}
    if manifest.exists():
        if json.loads(manifest.read_text()).get("params") == params:
            return out_dir
        for stale in out_dir.glob("*/*.png"):  # written with other parameters
            stale.unlink()
        manifest.unlink()
    digits = load_digits()
    images = (digits.images[:limit] * (255.0 / 16.0)).round().astype(np.uint8)  # (N, 8, 8), 0..16 -> 0..255
    labels = digits.target[:limit]
    shifts = [(0, 0), (0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (-1, -1), (1, -1), (-1, 1)]
    for label in range(10):
        (out_dir / str(label)).mkdir(parents=True, exist_ok=True)
    count = 0
    for idx, (img, label) in enumerate(zip(images, labels, strict=True)):
        for c in range(copies):
            dy, dx = shifts[c % len(shifts)]
            dim = max(0.5, 1.0 - 0.05 * (c // len(shifts)))
            variant = (np.roll(img, (dy, dx), axis=(0, 1)) * dim).round().astype(np.uint8)
            pil = Image.fromarray(variant).resize((size, size), Image.Resampling.BILINEAR)  # 2-D uint8 -> "L"
            pil.save(out_dir / str(label) / f"{idx:05d}_{c:03d}.png", optimize=False)
            count += 1
    manifest.write_text(json.dumps({"params": params, "count": count}))
    return out_dir


def list_images(root: Path, *, extensions: Collection[str] = IMAGE_EXTENSIONS) -> list[Sample]:
    """All ``root/<int label>/<source>_<copy>.<ext>`` files, in a sorted (stable) order.

    Extensions match case-insensitively (cameras and Windows tools write ``.JPG`` and
    ``.PNG``). The class folder's name *is* the label, a non-negative integer: a
    mapping from sorted folder names to indices would make the labels depend on
    which folders happen to exist (drop one class and every later label shifts
    between a training run and the data a model is later scored on), so any other
    name raises ``ValueError`` naming the folder.
    """
    wanted = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    samples = []
    for path in sorted(Path(root).glob("*/*")):
        if path.suffix.lower() not in wanted or not path.is_file():
            continue
        name = path.parent.name
        if not (name.isascii() and name.isdigit()):
            raise ValueError(
                f"class folder {path.parent} must be named by a non-negative integer label "
                f"(root/<label>/<image>, e.g. {root}/0/), got {name!r}"
            )
        stem = path.stem.split("_")[0]
        samples.append(Sample(path, int(name), int(stem) if stem.isdigit() else zlib.crc32(stem.encode())))
    if not samples:
        raise FileNotFoundError(f"no images ({', '.join(sorted(wanted))}) under {root}/<label>/")
    return samples


def split_samples(
    samples: Sequence[Sample], *, val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Split by ``source`` (never by file) so shifted copies do not leak into validation."""
    sources = sorted({s.source for s in samples})
    rng = np.random.default_rng(seed)
    n_val = round(len(sources) * val_fraction)
    val_sources = set(rng.permutation(sources)[:n_val].tolist())
    train = [s for s in samples if s.source not in val_sources]
    val = [s for s in samples if s.source in val_sources]
    return train, val


class ImageFolderDataset(Dataset[tuple[Tensor, int]]):
    """Decode, resize and normalise one image per index: ``(C, size, size)`` float32, label.

    Holds only paths and labels (cheap to pickle into worker processes). Pixels with
    transparency are composited onto ``background`` (RGB, 0..255; white by default, the
    page most scanned and exported images were drawn on) before the conversion to
    ``mode``; 16-bit greyscale keeps its full range (``v / 65535``).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        size: int = 32,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        mode: str = "L",
        background: tuple[int, int, int] = WHITE,
    ) -> None:
        if mode not in ("L", "RGB"):
            raise ValueError("mode must be 'L' (1 channel) or 'RGB' (3 channels)")
        if len(background) != 3 or not all(isinstance(v, int | np.integer) and 0 <= v <= 255 for v in background):
            raise ValueError(f"background must be 3 integers in 0..255 (R, G, B), got {background!r}")
        channels = 1 if mode == "L" else 3
        self.samples = list(samples)
        self.size = size
        self.mode = mode
        self.background = background
        # (C, 1, 1) so they broadcast over (C, H, W); identity when no statistics are given.
        self.mean = torch.tensor(mean if mean is not None else [0.0] * channels).view(-1, 1, 1)
        self.std = torch.tensor(std if std is not None else [1.0] * channels).view(-1, 1, 1)
        if self.mean.numel() != channels or self.std.numel() != channels or (self.std <= 0).any():
            raise ValueError(f"mean/std need {channels} values and std > 0")

    def __len__(self) -> int:
        return len(self.samples)

    def _convert(self, img: Image.Image) -> Image.Image:
        """``img`` in ``self.mode`` (8 bits per channel), or mode ``F`` in [0, 1] for 16-bit grey.

        PIL's ``convert`` gets both of these wrong for the pipeline: ``I;16 -> L`` clips
        (any value above 255 of 65535 becomes white) and ``RGBA -> RGB`` drops alpha.
        """
        if img.mode in _GREY16_MODES or (img.mode == "I" and img.format == "PNG"):  # "I": older PIL's 16-bit PNG
            return Image.fromarray(np.asarray(img, dtype=np.float32) / np.float32(65535.0))
        if img.mode in _ALPHA_MODES or "transparency" in img.info:  # the latter: palette / tRNS transparency
            rgba = np.asarray(img.convert("RGBA"), dtype=np.int32)  # (H, W, 4)
            alpha = rgba[..., 3:]
            bg = np.array(self.background, dtype=np.int32)
            # a·x + (1 - a)·bg in integers, rounded to nearest: (x·A + bg·(255 - A) + 127) // 255
            rgb = (rgba[..., :3] * alpha + bg * (255 - alpha) + 127) // 255
            img = Image.fromarray(rgb.astype(np.uint8))  # (H, W, 3) uint8 -> "RGB"
        return img.convert(self.mode)

    def load(self, index: int) -> Tensor:
        """Decoded and resized image in [0, 1], (C, size, size) float32, not normalised.

        A file PIL cannot decode (truncated, corrupt, not an image) raises ``OSError``
        with its path: PIL's own message ("image file is truncated") does not say
        which of a million files it was, least of all from inside a worker process.
        """
        path = self.samples[index].path
        try:
            with Image.open(path) as img:
                resized = self._convert(img).resize((self.size, self.size), Image.Resampling.BILINEAR)
                arr = np.array(resized, dtype=np.float32)  # (H, W) or (H, W, C); a writable copy
        except FileNotFoundError:
            raise  # already names the path
        except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as exc:
            raise OSError(f"cannot decode image {path}: {type(exc).__name__}: {exc}") from exc
        if resized.mode == "F":  # 16-bit grey, already in [0, 1]
            if self.mode == "RGB":
                arr = np.repeat(arr[..., None], 3, axis=2)  # grey -> RGB replicates the channel
        else:
            arr = arr / 255.0
        # (H, W) -> (1, H, W); HWC -> CHW, the layout conv layers expect
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(arr))

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return (self.load(index) - self.mean) / self.std, self.samples[index].label


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker with base_seed + worker_id (base_seed drawn from the loader's
    # generator); derive NumPy/random from it so augmentations are reproducible per worker.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def compute_mean_std(
    samples: Sequence[Sample],
    *,
    size: int = 32,
    mode: str = "L",
    num_workers: int = 0,
    batch_size: int = 256,
    background: tuple[int, int, int] = WHITE,
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the images in [0, 1] (pass the *training* samples only).

    One pass, float64 sums of x and x²: the variance ``E[x²] - E[x]²`` is exact
    enough in float64 for values in [0, 1].
    """
    ds = ImageFolderDataset(samples, size=size, mode=mode, background=background)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers)
    total = sq = None
    n = 0
    for x, _ in loader:  # x (B, C, H, W)
        x64 = x.double()
        s, q = x64.sum(dim=(0, 2, 3)), (x64 * x64).sum(dim=(0, 2, 3))
        total, sq = (s, q) if total is None or sq is None else (total + s, sq + q)
        n += x.shape[0] * x.shape[2] * x.shape[3]
    if total is None or sq is None:
        raise ValueError("no samples")
    mean = total / n
    std = (sq / n - mean * mean).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()


def make_dataloader(
    root: Path,
    *,
    batch_size: int,
    num_workers: int,
    seed: int,
    train: bool = True,
    size: int = 32,
    mode: str = "L",
    val_fraction: float = 0.2,
    split_seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    pin_memory: bool | None = None,
    prefetch_factor: int = 4,
    persistent_workers: bool = True,
    drop_last: bool | None = None,
    rank: int = 0,
    world_size: int = 1,
    distributed: bool | None = None,
    background: tuple[int, int, int] = WHITE,
) -> DataLoader[tuple[Tensor, int]]:
    """A DataLoader over the train (or validation) split of the images under ``root``.

    Normalisation statistics default to those of the *training* split (computed here
    if not passed). The shuffle order is a function of ``seed`` alone (and the epoch).
    ``pin_memory=None`` pins only when an accelerator exists: on a CPU-only host pinned
    memory buys nothing and torch warns about it. With ``world_size > 1`` each rank
    gets a disjoint shard through a ``DistributedSampler`` (call
    ``loader.sampler.set_epoch(e)`` each epoch for a new order, as with any DDP loader).
    ``distributed=True`` uses that sampler even for ``world_size == 1``: a 1-rank DDP run then
    draws the same permutation as an N-rank run (rank r takes ``perm[r::N]``), so the global
    batches, and the losses, do not depend on N. Training shards drop the tail instead of padding
    it with repeated images (``drop_last``), so no image counts twice in an epoch.
    ``background`` is the colour transparent pixels are composited onto, for the statistics
    and the batches alike.
    """
    train_s, val_s = split_samples(list_images(root), val_fraction=val_fraction, seed=split_seed)
    if mean is None or std is None:
        mean, std = compute_mean_std(train_s, size=size, mode=mode, num_workers=num_workers, background=background)
    ds = ImageFolderDataset(
        train_s if train else val_s, size=size, mean=mean, std=std, mode=mode, background=background
    )
    # Two generators: the sampler's alone decides the order (epoch e is the e-th permutation
    # drawn from it). The loader's own draws a base seed per iterator for the workers; with
    # persistent workers that happens once instead of per epoch, so sharing one generator
    # would make the epoch-2 order depend on num_workers.
    order_gen = torch.Generator().manual_seed(seed)
    worker_gen = torch.Generator().manual_seed(seed + 1)
    sampler: Sampler[int]
    drop = train if drop_last is None else drop_last  # steady shapes when training
    if world_size > 1 or distributed:
        sampler = DistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=train, seed=seed, drop_last=drop)
    elif train:
        sampler = RandomSampler(ds, generator=order_gen)
    else:
        sampler = SequentialSampler(ds)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        # only legal with worker processes
        kwargs.update(prefetch_factor=prefetch_factor, persistent_workers=persistent_workers)
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop,
        generator=worker_gen,
        worker_init_fn=_seed_worker,
        **kwargs,
    )


def measure_throughput(
    root: Path,
    *,
    num_workers: Sequence[int] = (0, 1, 2),
    batch_size: int = 128,
    size: int = 32,
    repeats: int = 3,
) -> dict[int, float]:
    """Median images/s of a full pass over the training split, per ``num_workers``.

    Workers are persistent, and one warm-up epoch runs first, so worker start-up is
    excluded: this is the steady-state rate a training loop sees.
    """
    train_s, _ = split_samples(list_images(root))
    mean, std = compute_mean_std(train_s[:512], size=size)
    out: dict[int, float] = {}
    for w in num_workers:
        loader = make_dataloader(
            root, batch_size=batch_size, num_workers=w, seed=0, size=size, mean=mean, std=std, drop_last=False
        )
        rates = []
        for epoch in range(repeats + 1):
            t0 = time.perf_counter()
            n = sum(x.shape[0] for x, _ in loader)
            if epoch > 0:
                rates.append(n / (time.perf_counter() - t0))
        out[w] = float(np.median(rates))
        del loader  # shuts the persistent workers down
    return out
