"""Training on the tiny corpus: reproducible to the bit, selected on the version's own rows, tracked in MLflow with
the data version and git sha; the embedding candidate's cache with a stand-in encoder (the real weights are a
``tests/model`` test)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from systems.common.errors import MlsdError
from systems.mlops_textclf.ingest import DatasetStore, load_golden
from systems.mlops_textclf.settings import TextclfSettings
from systems.mlops_textclf.train import (
    EmbeddingConfig,
    SentenceEmbedder,
    TextClassifier,
    TfidfConfig,
    best_threshold,
    ci_preset,
    fit_classifier,
    preset,
    validation_split,
)
from tests.unit.textclf.textclf_support import CONFIG

pytestmark = pytest.mark.unit

CLASSES = CONFIG.class_names  # ["bad", "good"]


def _head_rows(settings: TextclfSettings) -> pd.DataFrame:
    store = DatasetStore.of(settings)
    head = store.head()
    assert head is not None
    return store.load(head.version_id)


class CountingEncoder:
    """A stand-in sentence encoder: a seeded random vector per word, summed and L2-normalised; counts texts."""

    def __init__(self, dim: int = 32) -> None:
        self.dim = dim
        self.calls: list[int] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "big")
                out[i] += np.random.default_rng(seed).normal(size=self.dim).astype(np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_same_version_same_predictions_to_the_bit(ingested: TextclfSettings) -> None:
    rows, golden = _head_rows(ingested), load_golden(ingested)
    config = ci_preset("tfidf_linear")
    first, sel1 = fit_classifier(rows, config, classes=CLASSES)
    second, sel2 = fit_classifier(rows, config, classes=CLASSES)
    texts = golden["text"].tolist()
    p1, p2 = first.predict_proba(texts), second.predict_proba(texts)
    assert p1.tobytes() == p2.tobytes()  # bit-identical, not approximately equal
    assert sel1 == sel2 and first.threshold == second.threshold
    # and the model has learned the task: the tiny corpus's sentiment words are unambiguous
    accuracy = np.mean(first.predict(texts) == golden["label"].to_numpy())
    assert accuracy >= 0.9


def test_row_order_does_not_change_the_validation_split(ingested: TextclfSettings) -> None:
    rows = _head_rows(ingested)
    config = TfidfConfig(val_fraction=0.25)
    fit, val = validation_split(rows, config)
    shuffled = rows.sample(frac=1.0, random_state=3)
    _, val2 = validation_split(shuffled, config)
    assert set(val["example_id"]) == set(val2["example_id"])
    assert not set(fit["example_id"]) & set(val["example_id"])
    assert len(fit) + len(val) == len(rows)
    # stratified: both sides hold both classes, the validation share is near val_fraction
    assert set(val["label"]) == set(CLASSES) and abs(len(val) / len(rows) - 0.25) < 0.05
    # the golden set is never part of either side: selection cannot see it
    golden_ids = set(load_golden(ingested)["example_id"])
    assert not golden_ids & set(rows["example_id"])


def test_validation_rows_are_held_out_of_the_shipped_model(ingested: TextclfSettings) -> None:
    rows = _head_rows(ingested)
    config = ci_preset("tfidf_linear")
    model, _ = fit_classifier(rows, config, classes=CLASSES)
    _, val = validation_split(rows, config)
    assert model.heldout_ids == frozenset(val["example_id"])
    refit, _ = fit_classifier(rows, TfidfConfig(**{**config.__dict__, "refit": True}), classes=CLASSES)
    assert refit.heldout_ids == frozenset()


def test_best_threshold_maximises_macro_f1_on_a_hand_made_example() -> None:
    y = np.array([False, False, False, True, True, True])
    proba = np.array([0.55, 0.6, 0.65, 0.7, 0.8, 0.9])  # every score above 0.5: the 0.5 threshold says all True
    t = best_threshold(y, proba)
    assert 0.65 < t <= 0.7  # the midpoint 0.675 separates the classes perfectly
    assert best_threshold(np.array([False, True]), np.array([0.2, 0.8])) == 0.5  # ties go to the one nearest 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_threshold_equals_scikit_learns_macro_f1_search(seed: int) -> None:
    """The counting search picks the threshold a scan with ``f1_score`` at every candidate would pick."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(seed)
    y = rng.random(3000) < 0.85
    proba = np.clip(np.where(y, 0.7, 0.4) + rng.normal(0, 0.2, len(y)), 0, 1).round(3)  # ties on purpose
    t = best_threshold(y, proba)
    candidates = np.unique(np.concatenate([[0.5], np.quantile(proba, np.linspace(0.002, 0.998, 400))]))
    scores = [float(f1_score(y, proba >= c, average="macro", zero_division=0)) for c in candidates]
    top = max(scores)
    nearest = min((abs(c - 0.5), c) for c, f in zip(candidates, scores, strict=True) if f >= top - 1e-12)[1]
    assert t == pytest.approx(nearest)
    assert float(f1_score(y, proba >= t, average="macro")) == pytest.approx(top)


def test_presets_and_config_errors() -> None:
    assert isinstance(preset("tfidf_linear"), TfidfConfig) and isinstance(preset("embedding"), EmbeddingConfig)
    assert preset("embedding", "ci").c_grid == (4.0,)
    with pytest.raises(MlsdError, match="unknown model kind"):
        preset("bert")
    with pytest.raises(MlsdError, match="unknown preset"):
        preset("tfidf_linear", "huge")
    with pytest.raises(ValueError, match="val_fraction"):
        TfidfConfig(val_fraction=0.7)
    with pytest.raises(TypeError):
        TfidfConfig(0.1)  # type: ignore[misc]  # keyword-only
    with pytest.raises(MlsdError, match="binary"):
        fit_classifier(pd.DataFrame(columns=["example_id", "text", "label", "slice"]), ci_preset(), classes=["a"])


def test_embedding_cache_encodes_each_text_once(tmp_path: Path) -> None:
    encoder = CountingEncoder()
    cache = tmp_path / "embeddings"
    embedder = SentenceEmbedder(cache_dir=cache, encoder="stand-in", encode=encoder)
    first = embedder.embed(["a good shoe", "a bad shoe", "a good shoe"])
    assert encoder.calls == [2]  # the repeated text is encoded once
    assert embedder.misses == 3 and embedder.hits == 0
    again = embedder.embed(["a bad shoe", "a new phone"])
    assert encoder.calls == [2, 1]  # only the new text
    np.testing.assert_array_equal(again[0], first[1])
    assert len(list(cache.glob("*.npz"))) == 2 and not list(cache.glob(".*"))  # one chunk per call, no temp files
    # a new process (a new embedder) reads the cache from disk and encodes nothing
    fresh = SentenceEmbedder(cache_dir=cache, encoder="stand-in", encode=encoder)
    np.testing.assert_array_equal(fresh.embed(["a good shoe", "a new phone"]), np.stack([first[0], again[1]]))
    assert encoder.calls == [2, 1] and fresh.hits == 2 and fresh.misses == 0
    # another encoder name is another key space
    other = SentenceEmbedder(cache_dir=cache, encoder="other", encode=encoder)
    other.embed(["a good shoe"])
    assert encoder.calls == [2, 1, 1]


def test_embedding_candidate_trains_from_the_cache(ingested: TextclfSettings, tmp_path: Path) -> None:
    rows, golden = _head_rows(ingested), load_golden(ingested)
    config = EmbeddingConfig(c_grid=(4.0,), val_fraction=0.25)
    encoder = CountingEncoder()
    embedder = SentenceEmbedder(cache_dir=tmp_path / "emb", encoder="stand-in", encode=encoder)
    model, _ = fit_classifier(rows, config, classes=CLASSES, embedder=embedder)
    encoded = sum(encoder.calls)
    assert encoded == rows["text"].nunique()
    again = SentenceEmbedder(cache_dir=tmp_path / "emb", encoder="stand-in", encode=encoder)
    model2, _ = fit_classifier(rows, config, classes=CLASSES, embedder=again)
    assert sum(encoder.calls) == encoded and again.misses == 0  # the second training encoded nothing
    texts = golden["text"].tolist()
    np.testing.assert_allclose(model.predict_proba(texts), model2.predict_proba(texts), rtol=0, atol=1e-12)
    assert np.mean(model.predict(texts) == golden["label"].to_numpy()) >= 0.8
    # the serving copy has no cache; the pickled form carries neither cache nor index
    assert model.serving().embedder.cache_dir is None  # type: ignore[attr-defined]
    assert model.__getstate__()["embedder"].cache_dir is None  # type: ignore[attr-defined]


def test_train_tracks_data_version_git_sha_and_is_reproducible(
    ingested: TextclfSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from systems.common.bench import git_sha
    from systems.mlops_textclf.train import DATA_VERSION_TAG, GIT_SHA_TAG, load_run_model, train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", ingested.tracking_uri)  # restored after the test
    store = DatasetStore.of(ingested)
    first_version = store.versions()[0].version_id
    result = train(ingested, ci_preset("tfidf_linear"), version=first_version[:6])
    assert result.version_id == first_version
    run = mlflow.get_run(result.run_id)
    assert run.data.tags[DATA_VERSION_TAG] == first_version
    assert run.data.tags[GIT_SHA_TAG] == (git_sha() or "unknown")
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == first_version
    assert dataset_input.tags[0].value == "training"
    assert run.data.params["model_kind"] == "tfidf_linear" and run.data.params["selected_c"] == "4"
    for key in ("val_macro_f1", "golden_macro_f1", "golden_roc_auc", "golden_ece", "newest_accuracy", "train_s"):
        assert key in run.data.metrics
    assert run.data.metrics["train_s"] > 0
    # the logged model loads and predicts exactly what the trained object predicts
    loaded, tags = load_run_model(result.run_id, ingested)
    texts = load_golden(ingested)["text"].tolist()
    assert loaded.predict_proba(texts).tobytes() == result.model.predict_proba(texts).tobytes()
    assert tags[DATA_VERSION_TAG] == first_version
    # the newest batch of the model's own version is scored on its held-out rows only
    assert result.evaluation.newest.scope.startswith("held-out")
    # same version + config -> same metrics (timings aside)
    again = train(ingested, ci_preset("tfidf_linear"), version=first_version, log_model=False)
    quality = [k for k in result.metrics if not k.startswith("latency_") and k != "train_s"]
    assert {k: result.metrics[k] for k in quality} == {k: again.metrics[k] for k in quality}
    assert again.run_id != result.run_id


def test_train_without_a_version_says_what_to_run(textclf_settings: TextclfSettings) -> None:
    from systems.mlops_textclf.train import train

    with pytest.raises(MlsdError, match="no dataset version yet: run mlsd textclf ingest"):
        train(textclf_settings, ci_preset())


def test_cli_train_and_evaluate(ingested: TextclfSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """``train`` prints the metrics table and a run id; ``evaluate RUN --against RUN`` prints McNemar."""
    import re

    from typer.testing import CliRunner

    from systems.mlops_textclf.cli import app

    env = {
        "MLSD_DATA_DIR": str(ingested.data_dir),
        "MLSD_TEXTCLF_CORPUS": CONFIG.model_dump_json(),
        "MLSD_TEXTCLF_MIN_BATCH_ROWS": "10",
        "MLFLOW_TRACKING_URI": ingested.tracking_uri,
        "COLUMNS": "200",
    }
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ingested.tracking_uri)
    runner = CliRunner()
    bad = runner.invoke(app, ["train", "--model", "bert"], env=env)
    assert bad.exit_code != 0 and "unknown model kind" in str(bad.exception)
    done = runner.invoke(app, ["train", "--preset", "ci"], env=env)
    assert done.exit_code == 0, done.output
    assert "golden" in done.output and "macro-F1" in done.output and "behaviour invariance" in done.output
    run_id = re.search(r"run ([0-9a-f]{32})", done.output)
    assert run_id, done.output
    first = DatasetStore.of(ingested).versions()[0].version_id
    old = runner.invoke(app, ["train", "--preset", "ci", "--version", first], env=env)
    old_id = re.search(r"run ([0-9a-f]{32})", old.output)
    assert old.exit_code == 0 and old_id, old.output
    judged = runner.invoke(app, ["evaluate", run_id.group(1), "--against", old_id.group(1)], env=env)
    assert judged.exit_code == 0, judged.output
    assert "McNemar" in judged.output and "unseen batch" not in judged.output
    # the model trained on the first version meets HEAD's newest batch as unseen data
    prior = runner.invoke(app, ["evaluate", old_id.group(1)], env=env)
    assert prior.exit_code == 0 and "unseen batch" in prior.output, prior.output


def test_the_direct_single_text_path_equals_the_batch_path(ingested: TextclfSettings) -> None:
    import pickle

    from systems.mlops_textclf.train import TfidfClassifier, tfidf_default

    store = DatasetStore.of(ingested)
    head = store.head()
    assert head is not None
    # the default preset: word and character n-grams, sublinear tf, the path requests take
    model, _ = fit_classifier(store.load(head.version_id), tfidf_default(), classes=CLASSES)
    assert isinstance(model, TfidfClassifier)
    texts = [*load_golden(ingested)["text"].tolist(), "", "zzz unseen qqq"]
    batch = TextClassifier.predict_proba(model, texts)  # scikit-learn's sparse path
    direct = np.array([model.predict_proba([t])[0] for t in texts])  # one text at a time: the direct path
    np.testing.assert_allclose(direct, batch, rtol=0, atol=1e-12)
    again = pickle.loads(pickle.dumps(model))  # the cached tables are not pickled, and are rebuilt
    assert "_direct" not in again.__dict__ and again.predict_proba([texts[0]])[0] == pytest.approx(batch[0], abs=1e-12)


def test_a_pickled_tfidf_model_is_the_same_model_and_leaves_the_live_one_alone(ingested: TextclfSettings) -> None:
    import pickle

    model, _ = fit_classifier(_head_rows(ingested), ci_preset("tfidf_linear"), classes=CLASSES)
    model.VOCAB_CHUNK = 7  # type: ignore[misc]  # many chunks even on the tiny corpus's vocabulary
    texts = [*load_golden(ingested)["text"].tolist(), "naïve café — ünïcode", ""]
    before = [dict(vec.vocabulary_) for _, vec in model.vectorizer.transformer_list]
    again = pickle.loads(pickle.dumps(model))
    assert [vec.vocabulary_ for _, vec in model.vectorizer.transformer_list] == before  # untouched by pickling
    assert [vec.vocabulary_ for _, vec in again.vectorizer.transformer_list] == before
    assert [list(vec.vocabulary_) for _, vec in again.vectorizer.transformer_list] == [list(v) for v in before]
    assert again.predict_proba(texts).tobytes() == model.predict_proba(texts).tobytes()  # batch path
    assert again.predict_proba(texts[:3]).tobytes() == model.predict_proba(texts[:3]).tobytes()  # direct path
    # a wrapper carries what it shares with the wrapped model once, and is the same wrapper after the trip
    from systems.mlops_textclf.train import SabotagedClassifier

    bad = SabotagedClassifier(model, fraction=0.3, salt="t:")
    blob = pickle.dumps(bad)
    assert len(blob) < len(pickle.dumps(model)) + 2_000
    bad_again = pickle.loads(blob)
    assert bad_again.predict_proba(texts).tobytes() == bad.predict_proba(texts).tobytes()
    cache = {"_direct"}  # the direct path's tables: rebuilt on first use, never pickled
    assert set(bad_again.__dict__) - cache == set(bad.__dict__) - cache and bad_again.threshold == bad.threshold


def test_unpacking_a_vocabulary_lets_other_threads_run_where_unpickling_a_dict_does_not() -> None:
    import pickle
    import threading
    import time

    from systems.mlops_textclf.train import _pack_vocabulary, _unpack_vocabulary

    vocab = {f"term {i} ü": i for i in range(400_000)}
    blob, packed = pickle.dumps(vocab), _pack_vocabulary(vocab)

    def longest_wait(work: Callable[[], object]) -> float:
        """The longest a ticking thread waited for the GIL while ``work`` ran in this one."""
        gaps: list[float] = []
        done = threading.Event()

        def tick() -> None:
            last = time.perf_counter()
            while not done.is_set():
                time.sleep(0.0005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        t = threading.Thread(target=tick)
        t.start()
        time.sleep(0.02)
        work()
        done.set()
        t.join()
        return max(gaps)

    assert _unpack_vocabulary(*packed, chunk=1024) == vocab
    as_dict = min(longest_wait(lambda: pickle.loads(blob)) for _ in range(2))
    chunked = min(longest_wait(lambda: _unpack_vocabulary(*packed, chunk=1024)) for _ in range(3))
    assert as_dict > 0.03  # one C call holding the GIL: the ticker waits for all of it
    assert chunked < as_dict / 3, (chunked, as_dict)


def test_a_grid_of_c_gives_the_same_model_to_the_bit() -> None:
    """Several C on a corpus big enough for each fit to take a while: the fits must not disturb each other.
    (liblinear draws its coordinate order from the C library's one global rand(); fitted side by side on
    threads, the same rows gave other coefficients in every try.)"""
    import pandas as pd

    from systems.mlops_textclf.train import TfidfConfig

    rng = np.random.default_rng(0)
    weights = rng.normal(size=3000)
    docs = [rng.integers(0, 3000, 30) for _ in range(4000)]
    positive = np.array([weights[d].sum() + rng.normal(scale=3) > 0 for d in docs])
    rows = pd.DataFrame(
        {
            "example_id": [str(i) for i in range(len(docs))],
            "text": [" ".join(f"w{j}" for j in d) for d in docs],
            "label": np.where(positive, "pos", "neg"),
            "slice": "all",
        }
    )
    config = TfidfConfig(char_ngrams=None, min_df=1, max_features=None, c_grid=(0.5, 2.0, 8.0, 32.0))
    first, sel1 = fit_classifier(rows, config, classes=("neg", "pos"))
    second, sel2 = fit_classifier(rows, config, classes=("neg", "pos"))
    assert first.head.coef_.tobytes() == second.head.coef_.tobytes()
    assert sel1 == sel2
