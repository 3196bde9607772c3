"""Atomic, resumable checkpoints: model, optimiser, scheduler, RNG states and data position.

Layout of a run's checkpoint folder::

    checkpoints/
      step_000040/            one finished checkpoint (renamed into place only when complete)
        state.pt              model, optimiser, scheduler, step, data position, config (rank 0)
        rng_rank0.pt ...      torch / numpy / python RNG states of every rank
      latest                  text file naming the newest complete checkpoint (replaced atomically)

Why a folder renamed into place: a rank killed half-way through ``torch.save`` leaves a ``*.tmp`` folder
that nothing ever reads, never a truncated ``state.pt`` that a restart would try to load.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

LATEST = "latest"


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file + ``os.replace`` (atomic on POSIX)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckpt_root: Path, step: int, state: dict[str, Any], *, rank: int, keep: int = 2) -> Path:
    """Collective: every rank calls it. Rank 0 writes ``state``; each rank writes its RNG state.

    ``step`` is the number of optimiser steps completed (the step a resumed run starts at).
    """
    final = ckpt_root / f"step_{step:06d}"
    tmp = ckpt_root / f"step_{step:06d}.tmp"
    if rank == 0:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()  # the temp folder exists before anyone writes into it
    torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    _barrier()  # every rank's RNG file is on disk before rank 0 publishes the folder
    if rank == 0:
        torch.save(state, tmp / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        atomic_write_text(ckpt_root / LATEST, final.name)
        _prune(ckpt_root, keep=keep)
    return final


def _prune(ckpt_root: Path, *, keep: int) -> None:
    done = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    pointer = ckpt_root / LATEST
    if not pointer.exists():
        return None
    path = ckpt_root / pointer.read_text().strip()
    return path if (path / "state.pt").exists() else None


def load_checkpoint(path: Path, *, rank: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(state, this rank's RNG state or None if the checkpoint came from a smaller world)."""
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    rng_file = path / f"rng_rank{rank}.pt"
    rng = torch.load(rng_file, map_location="cpu", weights_only=False) if rng_file.exists() else None
    return state, rng
