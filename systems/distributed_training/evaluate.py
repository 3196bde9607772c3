"""Held-out loss and the golden-loss file.

The golden file ``golden/cpu_debug_losses.json`` holds the 50 per-step losses of a seeded 1-process
``cpu_debug`` run on the first ``GOLDEN_REVIEWS`` reviews. CI re-runs it and compares with
``GOLDEN_ATOL``: tight enough that any change to the model, data order, optimiser or schedule fails
(those move the loss by >1e-3 within a few steps), loose enough for different CPU kernels (AVX2 vs
AVX-512 reductions differ by ~1e-6). Regenerate (only on purpose) with ``mlsd dist golden --write``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from systems.distributed_training.data import TokenBlocks
from systems.distributed_training.model import GPT

GOLDEN_PATH = Path(__file__).with_name("golden") / "cpu_debug_losses.json"
GOLDEN_REVIEWS = 2000  # corpus of the golden run: the first 2,000 non-empty reviews (~660 k bytes)
GOLDEN_ATOL = 1e-4


def load_golden(path: Path = GOLDEN_PATH) -> dict[int, float]:
    data = json.loads(path.read_text())
    return {int(k): float(v) for k, v in data["losses"].items()}


def write_golden(losses: dict[int, float], path: Path = GOLDEN_PATH) -> None:
    payload = {
        "preset": "cpu_debug",
        "corpus": f"first {GOLDEN_REVIEWS} non-empty clothing reviews, byte tokens",
        "processes": 1,
        "atol": GOLDEN_ATOL,
        "regenerate": "mlsd dist golden --write",
        "losses": {str(k): v for k, v in sorted(losses.items())},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")


def max_abs_diff(a: dict[int, float], b: dict[int, float]) -> float:
    """Max |a[s] - b[s]| over the steps of ``b``; a step missing from ``a`` is an error."""
    missing = sorted(set(b) - set(a))
    if missing:
        raise KeyError(f"steps missing from the run: {missing[:10]}")
    return max(abs(a[k] - b[k]) for k in b)


@torch.no_grad()
def eval_loss(model: GPT, tokens: np.ndarray, *, n_batches: int = 8, batch_size: int = 16) -> float:
    """Mean loss over the first ``n_batches * batch_size`` windows of ``tokens`` (fixed, so comparable)."""
    ds = TokenBlocks(tokens, model.cfg.block_size)
    n = min(len(ds), n_batches * batch_size)
    was_training = model.training
    model.eval()
    losses = []
    for start in range(0, n, batch_size):
        x, y = ds.batch(list(range(start, min(n, start + batch_size))))
        _, loss = model(x, y)
        assert loss is not None
        losses.append(float(loss))
    model.train(was_training)
    return float(np.mean(losses))
