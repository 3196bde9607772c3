"""Text corpus for the language model: review texts, byte-level tokens, a resumable sharded batch stream.

Tokenisation is byte-level UTF-8 (vocab 256): nothing is downloaded or trained at run time, and every
string round-trips exactly. The corpus is tokenised once, offline, into ``<data_dir>/distributed_training/
reviews_bytes.npy`` (``mlsd dist train`` does it on first use).

Sharding uses ``torch.utils.data.DistributedSampler`` with a fixed seed and ``set_epoch(epoch)``, so every
rank sees a disjoint slice of one permutation that changes per epoch. The stream's position is a pair
(epoch, micro-batches consumed) that goes into every checkpoint; a resumed run skips exactly that many.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from systems.common.settings import MlsdSettings

SEPARATOR = "\n\n"  # between reviews: the model learns where one review ends


def encode(text: str) -> np.ndarray:
    """UTF-8 bytes as a uint8 array (token ids 0..255)."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


def decode(tokens: np.ndarray | torch.Tensor | list[int]) -> str:
    """Inverse of :func:`encode`; invalid byte sequences (from sampling) become U+FFFD."""
    arr = tokens.cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
    return bytes(arr.astype(np.uint8).tolist()).decode("utf-8", errors="replace")


def review_texts(limit: int | None = None, settings: MlsdSettings | None = None) -> list[str]:
    """Non-empty review texts (title + body) of the Women's Clothing E-Commerce reviews, in file order."""
    from systems.common.data import load_clothing_reviews

    df = load_clothing_reviews(settings)
    texts: list[str] = []
    for title, body in zip(df["title"].fillna("").astype(str), df["review_text"].fillna("").astype(str), strict=True):
        body = body.strip()
        if not body:
            continue
        texts.append(f"{title.strip()}\n{body}" if title.strip() else body)
        if limit is not None and len(texts) >= limit:
            break
    return texts


def write_tokens(texts: list[str], path: Path) -> Path:
    """Tokenise ``texts`` into ``path`` (.npy, uint8), atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens = encode(SEPARATOR.join(texts))
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with tmp.open("wb") as f:
        np.save(f, tokens)
    os.replace(tmp, path)
    return path


def prepare_tokens(path: Path, *, limit: int | None = None, settings: MlsdSettings | None = None) -> Path:
    """Tokenise the review corpus (first ``limit`` reviews) into ``path`` unless it exists; returns ``path``."""
    if path.exists():
        return path
    return write_tokens(review_texts(limit, settings), path)


def load_tokens(path: Path) -> np.ndarray:
    """The token array, memory-mapped (ranks share the page cache instead of copying)."""
    arr = np.load(path, mmap_mode="r")
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise ValueError(f"{path}: expected a 1-D uint8 token array, got {arr.dtype} {arr.shape}")
    return arr


class TokenBlocks(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Non-overlapping windows of ``block_size`` tokens: item i is (x, y) with y = x shifted by one."""

    def __init__(self, tokens: np.ndarray, block_size: int) -> None:
        if len(tokens) < block_size + 1:
            raise ValueError(f"corpus of {len(tokens)} tokens is shorter than one block ({block_size + 1})")
        self.tokens = tokens
        self.block_size = block_size

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.block_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = i * self.block_size
        chunk = torch.from_numpy(np.asarray(self.tokens[start : start + self.block_size + 1], dtype=np.int64))
        return chunk[:-1], chunk[1:]

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack items into (B, T) int64 inputs and targets."""
        xs, ys = zip(*(self[i] for i in indices), strict=True)
        return torch.stack(xs), torch.stack(ys)


def split_tokens(tokens: np.ndarray, val_fraction: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Train / validation split by position (the tail is validation): no window straddles both."""
    cut = int(len(tokens) * (1.0 - val_fraction))
    return tokens[:cut], tokens[cut:]


@dataclass
class StreamState:
    """Position of a rank's batch stream: the epoch and how many micro-batches of it were consumed."""

    epoch: int = 0
    micro_batches: int = 0


class BatchStream:
    """Endless stream of this rank's micro-batches, sharded by ``DistributedSampler``.

    Rank r of W takes indices ``perm[r::W]`` of the epoch's seeded permutation, so W ranks with micro-batch
    b consume exactly the indices one rank with micro-batch W*b would: the global batch is identical.
    """

    def __init__(
        self,
        dataset: TokenBlocks,
        *,
        micro_batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        state: StreamState | None = None,
    ) -> None:
        self.dataset = dataset
        self.micro_batch_size = micro_batch_size
        # drop_last=True: no padding with repeated samples, so 1 and N ranks see the same prefix.
        self.sampler: DistributedSampler[int] = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.per_epoch = len(self.sampler) // micro_batch_size
        if self.per_epoch == 0:
            raise ValueError(f"corpus too small: {len(self.sampler)} samples per rank < micro batch {micro_batch_size}")
        self.state = state or StreamState()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            self.sampler.set_epoch(self.state.epoch)  # a new permutation per epoch, same on every rank
            indices = list(iter(self.sampler))
            while self.state.micro_batches < self.per_epoch:
                k = self.state.micro_batches * self.micro_batch_size
                self.state.micro_batches += 1
                yield self.dataset.batch(indices[k : k + self.micro_batch_size])
            self.state = StreamState(epoch=self.state.epoch + 1, micro_batches=0)
