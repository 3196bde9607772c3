"""Item text embeddings with all-MiniLM-L6-v2 (``systems.common.text``, offline).

Loading the model costs 9-17 s, so embeddings are computed once per catalogue text and cached as .npy
under a cache dir, keyed by the sha256 of the texts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from systems.common.text import DIM, encode

__all__ = ["DIM", "encode", "item_text_embeddings", "item_texts"]


def item_texts(items: pd.DataFrame) -> list[str]:
    """The text an item is known by: title plus genres (all MovieLens has; a shop would add descriptions)."""
    return [
        f"{t}. Genres: {', '.join(g) if len(g) else 'unknown'}."
        for t, g in zip(items["title"], items["genres"], strict=True)
    ]


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
