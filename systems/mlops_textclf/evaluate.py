"""Evaluate: what a text classifier gets right, where, how fast, and whether a challenger is really better.

    mlsd textclf evaluate RUN_ID                     # golden set + newest batch + behaviour + latency
    mlsd textclf evaluate RUN_ID --against OTHER_RUN  # ... and McNemar's test against another run's model

**Two evaluation sets.** The **golden test set** is fixed for the life of the dataset and covers every slice from
the start, so models trained on different versions are compared on the same rows: it is what the promotion gate
reads. The **newest batch** of a version is the domain that just arrived: scored by a model that has not trained
on it, it says how the deployed model does on the new data (the number that triggers retraining); for a model
trained on that version, only the batch's validation rows (held out from its training, see ``train``) are
scored, so the figure is never in-sample. :attr:`SetEvaluation.scope` says which.

**Metrics.** Accuracy; macro-F1 (each class counts equally: with ~12 % negatives, accuracy rewards ignoring
them); ROC AUC of P(positive) (threshold-free ranking quality); ECE, the expected calibration error of
P(positive) over 10 equal-width bins ``[0, .1), …, [.9, 1]``: ``Σ_b n_b/N · |mean(y)_b − mean(p)_b|``, so a
model that says 0.8 is right 80 % of the time. Per-slice metrics (department) with a minimum-sample guard: a
slice with fewer than ``min_slice_rows`` rows reports its size and no metrics, because an accuracy over nine
reviews is noise that a gate must not act on; AUC is None for a slice with one class. Latency: the median µs per
prediction over repeated batch calls, and p50/p99 of single-row calls (what one request costs), measured on the
serving form of the model (no training-time embedding cache).

**McNemar, not a difference of accuracies.** Champion and challenger are scored on the *same* golden rows, so
their errors are paired; only the rows where they disagree carry information. With ``b`` = champion right and
challenger wrong, ``c`` = the reverse, under "equally good" each discordant row is a fair coin: the exact test
is a two-sided binomial test of ``min(b, c)`` in ``b + c`` trials, and the continuity-corrected chi-square
``(|b − c| − 1)² / (b + c)`` (1 d.o.f.) is its large-sample form. Two accuracies that differ by 0.5 % on 2,000
rows may be 10 rows of luck or a real gain; McNemar says which. (An unpaired two-proportion test ignores the
pairing and is far too conservative.)

**Behavioural tests** (Ribeiro et al.'s CheckList, as Made-With-ML uses it) guard what aggregate metrics hide: a
model can gain accuracy by learning department words or review length rather than sentiment. *Minimum
functionality*: obvious positive and negative sentences must be right. *Invariance*: a typo or a synonym must not
flip the label. *Directional*: negating a clearly positive review must lower P(positive) (flipping it is
reported too). The sentences are the small data lists below; :func:`behavioural_tests` returns pass/fail per
kind with every failing case, for the gate to refuse a model that is accurate for the wrong reasons.

**Scores are kept** (:class:`ScoreCache`). A fitted model never changes, so its P(positive) on a list of texts
is computed once: the training run scores the golden set and the newest batch, and the gate, which evaluates
the same model on the same rows (and the champion on the golden set it was scored on when it was gated), reads
them back instead of featurising thousands of texts again (in the pipeline that is most of the gate's time).
The key is the model's ``fingerprint`` (a random id given when it is trained, pickled with it) and the sha256 of
the texts; every hit is checked by scoring a spread of its rows again, which must agree to 1e-9, and is
recomputed if not (a model whose code changed under it). Models without a fingerprint are always scored.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd

from systems.common.errors import MlsdError
from systems.mlops_textclf.ingest import DatasetStore, load_golden
from systems.mlops_textclf.settings import TextclfSettings

log = logging.getLogger(__name__)

ECE_BINS = 10
MIN_SLICE_ROWS = 30


class TextModel(Protocol):
    """What evaluation needs of a model: P(positive) per text, a threshold, (negative, positive) class names."""

    classes: tuple[str, str]
    threshold: float

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray: ...


# ------------------------------------------------------------------------------------------------ metrics


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, *, n_bins: int = ECE_BINS) -> float:
    """ECE of P(positive): ``n_bins`` equal-width bins on [0, 1] (the last one closed), weighted by size."""
    y, proba = np.asarray(y, dtype=np.float64), np.asarray(proba, dtype=np.float64)
    if len(y) == 0:
        return float("nan")
    bins = np.minimum((proba * n_bins).astype(np.int64), n_bins - 1)  # p = 1.0 falls in the last bin
    ece = 0.0
    for b in np.unique(bins):
        mask = bins == b
        ece += mask.mean() * abs(y[mask].mean() - proba[mask].mean())
    return float(ece)


def classification_metrics(y: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, float | None]:
    """accuracy, macro_f1, roc_auc (None with one class), ece, n and positive share of boolean labels ``y``."""
    from sklearn.metrics import f1_score, roc_auc_score

    y = np.asarray(y, dtype=bool)
    pred = np.asarray(proba) >= threshold
    both = 0 < y.sum() < len(y)
    return {
        "n": float(len(y)),
        "positive_share": float(y.mean()) if len(y) else float("nan"),
        "accuracy": float(np.mean(pred == y)) if len(y) else float("nan"),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=[False, True], zero_division=0)),
        "roc_auc": float(roc_auc_score(y, proba)) if both else None,
        "ece": expected_calibration_error(y, proba),
    }


def slice_metrics(
    y: np.ndarray, proba: np.ndarray, slices: np.ndarray, threshold: float, *, min_rows: int = MIN_SLICE_ROWS
) -> dict[str, dict[str, Any]]:
    """Metrics per slice value; a slice with fewer than ``min_rows`` rows gets ``{"n": …, "too_few": True}``."""
    out: dict[str, dict[str, Any]] = {}
    for value in sorted(set(slices.tolist())):
        mask = slices == value
        n = int(mask.sum())
        out[str(value)] = (
            {"n": n, "too_few": True}
            if n < min_rows
            else classification_metrics(y[mask], proba[mask], threshold) | {"too_few": False}
        )
    return out


def measure_latency(
    model: TextModel, texts: Sequence[str], *, repeats: int = 3, n_single: int = 200
) -> dict[str, float]:
    """µs per prediction: median over ``repeats`` batch calls on ``texts``, and p50/p99 of single-row calls."""
    texts = list(texts)
    if not texts:
        return {}
    model.predict_proba(texts[:2])  # warm-up: lazy imports, first allocation
    per_row = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.predict_proba(texts)
        per_row.append((time.perf_counter() - t) / len(texts) * 1e6)
    single = []
    for i in range(n_single):
        one = [texts[i % len(texts)]]
        t = time.perf_counter()
        model.predict_proba(one)
        single.append((time.perf_counter() - t) * 1e6)
    single.sort()
    return {
        "batch_us_per_row": round(statistics.median(per_row), 2),
        "batch_rows": float(len(texts)),
        "single_p50_us": round(float(np.percentile(single, 50)), 1),
        "single_p99_us": round(float(np.percentile(single, 99)), 1),
    }


# ---------------------------------------------------------------------------------------- evaluations


@dataclass(frozen=True)
class SetEvaluation:
    """A model on one labelled frame: overall and per-slice metrics, and which rows it got right."""

    name: str
    scope: str
    """``fixed golden set``, ``unseen batch``, or ``held-out rows of a batch it trained on``."""
    metrics: dict[str, float | None]
    slices: dict[str, dict[str, Any]]
    example_ids: np.ndarray = field(repr=False)
    correct: np.ndarray = field(repr=False)
    """(N,) bool, aligned with ``example_ids``: for McNemar against another model on the same rows."""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "scope": self.scope, "metrics": self.metrics, "slices": self.slices}


class ScoreCache:
    """P(positive) of a fingerprinted model on a list of texts, kept as ``<root>/<key>.npy`` (see the module doc)."""

    MIN_ROWS = 64
    """Fewer texts are scored directly: cheaper than a file."""
    SPOT_ROWS = 16

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hits = 0

    @classmethod
    def of(cls, settings: TextclfSettings) -> ScoreCache:
        return cls(settings.textclf_dir / "scores")

    @staticmethod
    def key(fingerprint: str, texts: Sequence[str]) -> str:
        digest = hashlib.sha256(fingerprint.encode())
        for text in texts:
            raw = text.encode()
            digest.update(len(raw).to_bytes(8, "little"))
            digest.update(raw)
        return digest.hexdigest()

    def predict_proba(self, model: TextModel, texts: Sequence[str]) -> np.ndarray:
        fingerprint = getattr(model, "fingerprint", None)
        if not fingerprint or len(texts) < self.MIN_ROWS:
            return model.predict_proba(texts)
        path = self.root / f"{self.key(fingerprint, texts)}.npy"
        if path.exists():
            cached = np.load(path)
            spot = np.unique(np.linspace(0, len(texts) - 1, self.SPOT_ROWS).astype(np.int64))
            if cached.shape == (len(texts),):
                fresh = model.predict_proba([texts[i] for i in spot])
                if np.allclose(fresh, cached[spot], rtol=0.0, atol=1e-9):
                    self.hits += 1
                    return cached
            log.warning("kept scores %s disagree with the model: scoring again", path.name)
        proba = np.asarray(model.predict_proba(texts), dtype=np.float64)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.npy")
        np.save(tmp, proba)
        os.replace(tmp, path)
        return proba


def evaluate_frame(
    model: TextModel,
    frame: pd.DataFrame,
    *,
    name: str,
    scope: str = "",
    min_slice_rows: int = MIN_SLICE_ROWS,
    cache: ScoreCache | None = None,
) -> SetEvaluation:
    """Metrics of ``model`` on rows ``(example_id, text, label, slice)``; the positive class is ``classes[1]``."""
    if frame.empty:
        raise MlsdError(f"nothing to evaluate in {name}: it has no rows")
    texts = frame["text"].astype(str).tolist()
    proba = cache.predict_proba(model, texts) if cache is not None else model.predict_proba(texts)
    y = (frame["label"] == model.classes[1]).to_numpy()
    return SetEvaluation(
        name=name,
        scope=scope,
        metrics=classification_metrics(y, proba, model.threshold),
        slices=slice_metrics(y, proba, frame["slice"].astype(str).to_numpy(), model.threshold, min_rows=min_slice_rows),
        example_ids=frame["example_id"].astype(str).to_numpy(),
        correct=(proba >= model.threshold) == y,
    )


def newest_batch(
    model: Any, settings: TextclfSettings, version: str, *, store: DatasetStore | None = None
) -> tuple[pd.DataFrame, str, str]:
    """The newest batch of ``version`` as the model may be scored on it: (rows, batch name, scope).

    All rows if the model's training version does not contain the batch; only its held-out (validation) rows if
    it does. Raises when the model trained on all of the batch (``refit``): there is nothing out of sample.
    """
    store = store or DatasetStore.of(settings)
    manifest = store.manifest(version)
    last = manifest.batches[-1]
    rows = store.load(manifest.version_id).iloc[last.offset : last.offset + last.rows]
    trained_on = getattr(model, "data_version", None)
    seen = trained_on is not None and any(b.digest == last.digest for b in store.manifest(trained_on).batches)
    if not seen:
        return rows.reset_index(drop=True), last.name, "unseen batch"
    held = rows[rows["example_id"].astype(str).isin(getattr(model, "heldout_ids", frozenset()))]
    if held.empty:
        raise MlsdError(f"the model trained on every row of batch {last.name}: score it on a newer version's batch")
    return held.reset_index(drop=True), last.name, "held-out rows of a batch it trained on"


@dataclass(frozen=True)
class ModelEvaluation:
    golden: SetEvaluation
    newest: SetEvaluation
    latency: dict[str, float]
    behaviour: BehaviourReport

    def flat_metrics(self) -> dict[str, float]:
        """``golden_*``, ``newest_*``, ``latency_*`` and ``behaviour_*`` numbers for MLflow (None dropped)."""
        out: dict[str, float] = {}
        for prefix, values in (("golden", self.golden.metrics), ("newest", self.newest.metrics)):
            out |= {f"{prefix}_{k}": float(v) for k, v in values.items() if v is not None and not math.isnan(v)}
        out |= {f"latency_{k}": v for k, v in self.latency.items()}
        out |= {f"behaviour_{r.kind}_pass_rate": r.pass_rate for r in self.behaviour.results}
        out["behaviour_passed"] = float(self.behaviour.passed)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "golden": self.golden.as_dict(),
            "newest": self.newest.as_dict(),
            "latency": self.latency,
            "behaviour": self.behaviour.as_dict(),
        }


def evaluate_model(
    model: Any,
    *,
    settings: TextclfSettings,
    version: str,
    golden: pd.DataFrame | None = None,
    min_slice_rows: int = MIN_SLICE_ROWS,
    latency_rows: int = 500,
) -> ModelEvaluation:
    """The golden set, the newest batch of ``version``, behaviour and latency of one model."""
    golden = load_golden(settings) if golden is None else golden
    cache = ScoreCache.of(settings)
    g = evaluate_frame(
        model, golden, name="golden", scope="fixed golden set", min_slice_rows=min_slice_rows, cache=cache
    )
    rows, batch, scope = newest_batch(model, settings, version)
    n = evaluate_frame(
        model, rows, name=f"newest batch {batch}", scope=scope, min_slice_rows=min_slice_rows, cache=cache
    )
    serving = model.serving() if hasattr(model, "serving") else model
    latency = measure_latency(serving, golden["text"].astype(str).tolist()[:latency_rows])
    return ModelEvaluation(golden=g, newest=n, latency=latency, behaviour=behavioural_tests(model))


# ---------------------------------------------------------------------------------------------- McNemar


@dataclass(frozen=True)
class McNemarResult:
    b: int
    """Rows the champion got right and the challenger wrong."""
    c: int
    """Rows the challenger got right and the champion wrong."""
    statistic: float
    """``min(b, c)`` for the exact test; the corrected chi-square for the asymptotic one."""
    p_value: float
    method: Literal["exact", "chi2-corrected"]

    @property
    def challenger_better(self) -> bool:
        return self.c > self.b


def mcnemar(
    champion_correct: np.ndarray, challenger_correct: np.ndarray, *, exact: bool | None = None
) -> McNemarResult:
    """McNemar's paired test of two models' right/wrong decisions on the same rows (two-sided).

    ``exact=None`` picks the exact binomial test when there are fewer than 25 discordant rows (where the
    chi-square approximation is poor) and the continuity-corrected chi-square otherwise. No discordant rows:
    p = 1 (the models never disagree).
    """
    from scipy import stats

    a, b_ = np.asarray(champion_correct, dtype=bool), np.asarray(challenger_correct, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError(f"paired decisions must align: {a.shape} vs {b_.shape}")
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    n = b + c
    use_exact = n < 25 if exact is None else exact
    if n == 0:
        return McNemarResult(b=0, c=0, statistic=0.0, p_value=1.0, method="exact" if use_exact else "chi2-corrected")
    if use_exact:
        p = min(1.0, 2.0 * float(stats.binom.cdf(min(b, c), n, 0.5)))
        return McNemarResult(b=b, c=c, statistic=float(min(b, c)), p_value=p, method="exact")
    chi2 = (abs(b - c) - 1) ** 2 / n
    return McNemarResult(
        b=b, c=c, statistic=float(chi2), p_value=float(stats.chi2.sf(chi2, 1)), method="chi2-corrected"
    )


def paired_mcnemar(champion: SetEvaluation, challenger: SetEvaluation, *, exact: bool | None = None) -> McNemarResult:
    """McNemar on two evaluations of the same rows (aligned by example id; raises if the rows differ)."""
    if set(champion.example_ids.tolist()) != set(challenger.example_ids.tolist()):
        raise MlsdError(f"McNemar needs the same rows: {champion.name} and {challenger.name} differ")
    order = pd.Series(np.arange(len(challenger.example_ids)), index=challenger.example_ids)
    aligned = challenger.correct[order.loc[champion.example_ids].to_numpy()]
    return mcnemar(champion.correct, aligned, exact=exact)


# ------------------------------------------------------------------------------------ behavioural tests

BehaviourKind = Literal["minimum_functionality", "invariance", "directional"]

MINIMUM_FUNCTIONALITY: list[tuple[str, bool]] = [
    # (text, is positive): sentences no sentiment model may get wrong
    ("I love this dress, it fits perfectly and the fabric is beautiful.", True),
    ("Great quality, so comfortable, I bought it in two colors!", True),
    ("Absolutely gorgeous top, I get compliments every time I wear it.", True),
    ("Perfect fit and very flattering. Highly recommend.", True),
    ("Terrible quality, the fabric is cheap and it ripped after one wash.", False),
    ("Very disappointed, it looked nothing like the picture. Returned it.", False),
    ("Awful fit, way too small and the material is scratchy.", False),
    ("Poorly made, the seams came apart. Do not buy.", False),
]

INVARIANCE: list[tuple[str, str]] = [
    # (original, perturbed by a typo or a synonym): the label must not change
    ("I love this dress, it fits perfectly.", "I lvoe this dress, it fits perfectly."),
    ("Beautiful sweater, soft and warm.", "Gorgeous sweater, soft and warm."),
    ("The quality is terrible and it ripped.", "The quality is awful and it ripped."),
    ("Very disappointed with this purchase.", "Very dissapointed with this purchase."),
    ("Comfortable pants that fit great.", "Comfy pants that fit great."),
    ("Cheap fabric, returned it the next day.", "Cheap material, returned it the next day."),
]

DIRECTIONAL: list[tuple[str, str]] = [
    # (clearly positive, the same review negated): P(positive) must go down
    ("I love this dress, it fits perfectly.", "I do not love this dress, it does not fit."),
    ("Great quality and very comfortable.", "Not great quality and not comfortable at all."),
    ("I would definitely recommend this top.", "I would definitely not recommend this top."),
    ("The fabric is beautiful and soft.", "The fabric is not beautiful and not soft."),
    ("Happy with this purchase, will keep it.", "Not happy with this purchase, will return it."),
]


@dataclass(frozen=True)
class BehaviourResult:
    kind: BehaviourKind
    n: int
    failures: list[dict[str, Any]]
    """Every failing case with the texts and the model's probabilities."""
    max_failure_rate: float = 0.0

    @property
    def pass_rate(self) -> float:
        return 1.0 - len(self.failures) / self.n if self.n else 1.0

    @property
    def passed(self) -> bool:
        return len(self.failures) <= self.max_failure_rate * self.n


@dataclass(frozen=True)
class BehaviourReport:
    results: list[BehaviourResult]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def failing(self) -> list[dict[str, Any]]:
        return [f | {"kind": r.kind} for r in self.results for f in r.failures]

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "results": [asdict(r) | {"passed": r.passed} for r in self.results]}


def behavioural_tests(
    model: TextModel,
    *,
    minimum: Sequence[tuple[str, bool]] = MINIMUM_FUNCTIONALITY,
    invariance: Sequence[tuple[str, str]] = INVARIANCE,
    directional: Sequence[tuple[str, str]] = DIRECTIONAL,
    max_failure_rate: float = 0.0,
) -> BehaviourReport:
    """Run the three kinds of behavioural test; each passes when at most ``max_failure_rate`` of its cases fail."""
    texts = [t for t, _ in minimum] + [t for pair in [*invariance, *directional] for t in pair]
    proba = dict(zip(texts, model.predict_proba(texts).tolist(), strict=True))

    def positive(text: str) -> bool:
        return proba[text] >= model.threshold

    mft = [
        {"text": t, "expected": model.classes[int(want)], "p_positive": round(proba[t], 4)}
        for t, want in minimum
        if positive(t) != want
    ]
    inv = [
        {"text": a, "perturbed": b, "p_positive": round(proba[a], 4), "p_positive_perturbed": round(proba[b], 4)}
        for a, b in invariance
        if positive(a) != positive(b)
    ]
    dirn = [
        {
            "text": a,
            "negated": b,
            "p_positive": round(proba[a], 4),
            "p_positive_negated": round(proba[b], 4),
        }
        for a, b in directional
        if not proba[b] < proba[a]
    ]
    return BehaviourReport(
        results=[
            BehaviourResult(
                kind="minimum_functionality", n=len(minimum), failures=mft, max_failure_rate=max_failure_rate
            ),
            BehaviourResult(kind="invariance", n=len(invariance), failures=inv, max_failure_rate=max_failure_rate),
            BehaviourResult(kind="directional", n=len(directional), failures=dirn, max_failure_rate=max_failure_rate),
        ]
    )
