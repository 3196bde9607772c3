"""Performance of a deployed model: realised on matured labels, estimated from calibrated scores before them.

The label-delay problem. A fraud chargeback arrives days or weeks after the transaction, a text classifier's
feedback when a human gets to it, a recommendation's click within minutes or never. Realised metrics of a
window are therefore only known long after the window closed, and are computed on whatever subset has been
labelled so far (``Metric.n`` says how many). Until then the only signal is the model's own scores: if they
are calibrated (a score of 0.3 is right 30 % of the time), the expected confusion matrix follows from the
scores alone. That is the idea of NannyML's confidence-based performance estimation (CBPE), written here
from the definitions:

- binary score ``p`` and a decision: expected TP = Σ p over flagged rows, FP = Σ (1 - p) over flagged rows,
  FN = Σ p over passed rows, TN = Σ (1 - p) over passed rows; accuracy, precision, recall and FPR follow;
- expected precision at the alert budget: the mean ``p`` of the top-k rows by score;
- expected average precision: with rows sorted by descending ``p`` and ``S_k = Σ_{j≤k} p_j``,
  ``E[AP · N⁺] = Σ_k p_k (1 + S_{k-1}) / k`` exactly under independent Bernoulli labels (``E[y_k y_j] = p_k p_j``),
  and ``E[N⁺] = S_n``; the estimate is their ratio (bias O(1 / S_n), small once there are a few dozen expected
  positives, which the minimum-sample guard ensures);
- multiclass with the served class's probability: expected accuracy = mean max-probability; with every class's
  probability, expected per-class TP/FP/FN sums and from them the expected macro-F1.

A miscalibrated model breaks the estimate, not the metric: a monotone distortion of the scores leaves the
realised AP unchanged and moves the estimate, which is why the estimate is compared with the realised value
once labels mature (``cbpe.mae`` in the bench) instead of being trusted on its own.

What a model answered decides which metrics apply, not the system's name (:func:`infer_kind`): a numeric
``score`` is a binary score (fraud: AP, precision at the alert budget, FPR at the served decision), a
``label`` is a class (textclf: accuracy, macro-F1), a list of ``item_ids`` is a ranking (recsys: hit rate,
which is the CTR of the list when labels are clicks).

Uncertainty. Proportions get Wilson intervals (right at small n and near 0 or 1, where the normal interval
leaves [0, 1]); AP and macro-F1 get percentile bootstrap intervals with a fixed seed and a bounded number of
resamples on at most ``max_bootstrap_n`` rows. Under ``min_samples`` labelled rows a metric's ``value`` is
None: a window with 12 labels has no precision worth alerting on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from systems.monitoring.results import Metric

OutputKind = Literal["binary", "multiclass", "ranked"]

Z95 = 1.959963984540054
"""The standard normal 97.5 % quantile: two-sided 95 % intervals."""


@dataclass(frozen=True, kw_only=True)
class OutputSpec:
    """Where a prediction record's ``output`` keeps what the metrics need (the shared record's conventions).

    A served decision counts as positive when its string form (lower-cased) is in ``positive_decisions``
    (fraud answers ``"block"``); without a decision, ``score >= output[threshold_key]`` when the record
    carries its threshold. Class probabilities are two parallel lists, ``classes`` and ``probs`` (the record
    format allows lists of scalars, not nested objects).
    """

    score_key: str = "score"
    decision_key: str = "decision"
    threshold_key: str = "threshold"
    class_key: str = "label"
    confidence_key: str = "confidence"
    classes_key: str = "classes"
    probs_key: str = "probs"
    items_key: str = "item_ids"
    positive_decisions: frozenset[str] = frozenset(
        {"1", "true", "yes", "block", "alert", "flag", "flagged", "reject", "decline", "positive", "fraud"}
    )
    positive_labels: frozenset[str] = frozenset({"1", "true", "yes", "fraud", "positive", "pos", "click", "clicked"})


DEFAULT_OUTPUT = OutputSpec()


def infer_kind(output: Mapping[str, Any], spec: OutputSpec = DEFAULT_OUTPUT) -> OutputKind | None:
    """What kind of answer this is: a ranked list, a class, or a binary score (None: none of these)."""
    if isinstance(output.get(spec.items_key), list):
        return "ranked"
    if output.get(spec.class_key) is not None:
        return "multiclass"
    score = output.get(spec.score_key)
    if isinstance(score, int | float) and not isinstance(score, bool):
        return "binary"
    return None


def label_key(value: Any) -> str:
    """A class or item id as a string, with integral floats written as ints (JSON may turn 3 into 3.0)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def is_positive(label: Any, spec: OutputSpec = DEFAULT_OUTPUT) -> bool:
    """A binary label: non-zero numbers and true-ish strings (``"fraud"``, ``"1"``, ``"yes"`` …) are positive."""
    if isinstance(label, bool):
        return label
    if isinstance(label, int | float):
        return label != 0 and not math.isnan(label)
    return str(label).strip().lower() in spec.positive_labels


def decision_code(output: Mapping[str, Any], score: float, spec: OutputSpec = DEFAULT_OUTPUT) -> int:
    """The served decision as 1 (flagged) / 0 (passed), or -1 when the output carries none."""
    d = output.get(spec.decision_key)
    if type(d) is str and d in spec.positive_decisions:
        return 1
    if d is not None:
        if isinstance(d, bool):
            return int(d)
        if isinstance(d, int | float):
            return int(d != 0)
        return int(str(d).strip().lower() in spec.positive_decisions)
    thr = output.get(spec.threshold_key)
    if isinstance(thr, int | float) and not isinstance(thr, bool) and not math.isnan(score):
        return int(score >= thr)
    return -1


# ============================================================================================= intervals


def wilson(successes: float, trials: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (``trials`` > 0)."""
    if trials <= 0:
        return (math.nan, math.nan)
    p = successes / trials
    z2 = z * z
    denom = 1.0 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(name: str, successes: int, trials: int, *, guard_n: int, min_samples: int) -> Metric:
    """A proportion with its Wilson interval; ``value`` None when ``guard_n`` (the labelled rows of the window)
    is under ``min_samples`` or there are no trials."""
    if guard_n < min_samples or trials <= 0:
        return Metric(name, None, n=trials)
    lo, hi = wilson(successes, trials)
    return Metric(name, successes / trials, lo, hi, n=trials)


# ======================================================================================== realised metrics


def average_precision(score: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> float:
    """AP = Σ (R_t - R_{t-1}) P_t over distinct score thresholds, as ``sklearn.metrics.average_precision_score``
    (tied scores form one threshold); ``weights`` are per-row multiplicities (the bootstrap's resample counts).
    NaN without positives."""
    order = np.argsort(-score, kind="stable")
    return _ap_sorted(score[order], y[order].astype(np.float64), None if weights is None else weights[order])


def _ap_sorted(s: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> float:
    wy = y if w is None else y * w  # (n,) weighted positives
    tp = np.cumsum(wy)
    seen = np.arange(1, s.size + 1, dtype=np.float64) if w is None else np.cumsum(w)
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # the last row of each tie group
    tp_t, seen_t = tp[last], seen[last]
    total = tp_t[-1] if tp_t.size else 0.0
    if total <= 0:
        return math.nan
    precision = np.divide(tp_t, seen_t, out=np.zeros_like(tp_t), where=seen_t > 0)
    recall_step = np.diff(np.r_[0.0, tp_t]) / total
    return float(np.sum(recall_step * precision))


def _bootstrap_weights(n: int, resamples: int, seed: int) -> Iterable[np.ndarray]:
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)  # (n,) multiplicities


def _subsample(n: int, cap: int, seed: int) -> np.ndarray | None:
    if n <= cap:
        return None
    return np.sort(np.random.default_rng(seed + 1).choice(n, cap, replace=False))


def _percentile_ci(values: list[float]) -> tuple[float | None, float | None]:
    v = np.asarray([x for x in values if not math.isnan(x)])
    if v.size == 0:
        return None, None
    lo, hi = np.quantile(v, [0.025, 0.975])
    return float(lo), float(hi)


@dataclass(frozen=True, kw_only=True)
class MetricConfig:
    """How realised and estimated metrics are computed (shared by every window)."""

    min_samples: int = 200
    alert_budget: float = 0.005
    """Fraud's alert budget: the share of transactions investigators can review (top-k % by score)."""
    bootstrap_resamples: int = 200
    max_bootstrap_n: int = 50_000
    """Above this many labelled rows the bootstrap runs on a fixed random subsample (the interval is then
    slightly conservative; the point value is always on every row)."""
    seed: int = 0


def _budget_k(n: int, budget: float) -> int:
    return max(1, math.ceil(budget * n))


def binary_metrics(
    score: np.ndarray, y: np.ndarray, decision: np.ndarray | None, cfg: MetricConfig = MetricConfig()
) -> list[Metric]:
    """Realised AP (bootstrap CI), precision at the alert budget, prevalence, and, where the output carried a
    decision, FPR / precision / recall at the served threshold (Wilson CIs)."""
    n = int(score.size)
    y = y.astype(np.int8, copy=False)
    guard = cfg.min_samples
    out: list[Metric] = []
    if n < guard or not np.any(y):
        out.append(Metric("ap", None, n=n))
    else:
        order = np.argsort(-score, kind="stable")
        s, yy = score[order], y[order].astype(np.float64)
        ap = _ap_sorted(s, yy, None)
        sub = _subsample(n, cfg.max_bootstrap_n, cfg.seed)
        bs, by = (s, yy) if sub is None else (s[sub], yy[sub])
        draws = [_ap_sorted(bs, by, w) for w in _bootstrap_weights(bs.size, cfg.bootstrap_resamples, cfg.seed)]
        lo, hi = _percentile_ci(draws)
        out.append(Metric("ap", ap, lo, hi, n=n))
    k = _budget_k(n, cfg.alert_budget) if n else 0
    top = np.argsort(-score, kind="stable")[:k]
    out.append(proportion("precision_at_budget", int(y[top].sum()), k, guard_n=n, min_samples=guard))
    out.append(proportion("prevalence", int(y.sum()), n, guard_n=n, min_samples=guard))
    if decision is not None:
        known = decision >= 0
        if np.any(known):
            d, t = decision[known].astype(bool), y[known].astype(bool)
            tp, fp = int(np.sum(d & t)), int(np.sum(d & ~t))
            fn, tn = int(np.sum(~d & t)), int(np.sum(~d & ~t))
            m = int(known.sum())
            out.append(proportion("fpr", fp, fp + tn, guard_n=m, min_samples=guard))
            out.append(proportion("precision", tp, tp + fp, guard_n=m, min_samples=guard))
            out.append(proportion("recall", tp, tp + fn, guard_n=m, min_samples=guard))
            out.append(proportion("accuracy", tp + tn, m, guard_n=m, min_samples=guard))
    return out


def _macro_f1_from_counts(conf: np.ndarray) -> float:
    """Macro-F1 over the classes that occur as a prediction or a label (sklearn's default label set)."""
    tp = np.diag(conf)
    pred, true = conf.sum(axis=0), conf.sum(axis=1)  # rows: true class, columns: predicted class
    present = (pred + true) > 0
    if not np.any(present):
        return math.nan
    denom = pred + true
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp, dtype=np.float64), where=denom > 0)
    return float(f1[present].mean())


def macro_f1(pred: np.ndarray, true: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Macro-F1 of integer class codes (``sklearn.metrics.f1_score(average="macro")``)."""
    k = int(max(pred.max(initial=-1), true.max(initial=-1))) + 1
    conf = np.bincount(true * k + pred, weights=weights, minlength=k * k).reshape(k, k)
    return _macro_f1_from_counts(conf)


def multiclass_metrics(pred: np.ndarray, true: np.ndarray, cfg: MetricConfig = MetricConfig()) -> list[Metric]:
    """Realised accuracy (Wilson CI) and macro-F1 (bootstrap CI) of class codes."""
    n = int(pred.size)
    acc = proportion("accuracy", int(np.sum(pred == true)), n, guard_n=n, min_samples=cfg.min_samples)
    if n < cfg.min_samples:
        return [acc, Metric("macro_f1", None, n=n)]
    p, t = pred.astype(np.int64), true.astype(np.int64)
    value = macro_f1(p, t)
    sub = _subsample(n, cfg.max_bootstrap_n, cfg.seed)
    bp, bt = (p, t) if sub is None else (p[sub], t[sub])
    draws = [macro_f1(bp, bt, w) for w in _bootstrap_weights(bp.size, cfg.bootstrap_resamples, cfg.seed)]
    lo, hi = _percentile_ci(draws)
    return [acc, Metric("macro_f1", value, lo, hi, n=n)]


def ranked_metrics(hit: np.ndarray, cfg: MetricConfig = MetricConfig()) -> list[Metric]:
    """Hit rate of ranked lists (a list is a hit when the labelled item is in it, or the label says so);
    with click labels this is the list's CTR."""
    n = int(hit.size)
    return [proportion("hit_rate", int(np.sum(hit > 0)), n, guard_n=n, min_samples=cfg.min_samples)]


@dataclass
class Outcomes:
    """Labelled predictions of one window (or one slice of it), as parallel arrays.

    ``score``: the binary score or the served class's probability (NaN when absent); ``y``: 0/1 for binary
    labels, the true class code for multiclass, the hit for rankings; ``pred``: the served decision (-1 none)
    for binary, the served class code for multiclass.
    """

    kind: OutputKind
    score: np.ndarray = field(default_factory=lambda: np.zeros(0))
    y: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pred: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return int(self.y.size)

    def take(self, mask: np.ndarray) -> Outcomes:
        return Outcomes(self.kind, self.score[mask], self.y[mask], self.pred[mask])


def realised_metrics(o: Outcomes, cfg: MetricConfig = MetricConfig()) -> list[Metric]:
    """The realised metrics that apply to this kind of output."""
    if o.kind == "binary":
        decision = o.pred if np.any(o.pred >= 0) else None
        return binary_metrics(o.score, o.y, decision, cfg)
    if o.kind == "multiclass":
        return multiclass_metrics(o.pred, o.y, cfg)
    return ranked_metrics(o.y, cfg)


# ====================================================================================== estimated (CBPE)


def expected_average_precision(p: np.ndarray) -> float:
    """E[AP] of calibrated scores, the ratio ``Σ_k p_k (1 + S_{k-1}) / k  /  S_n`` (module docstring)."""
    s = np.sort(np.asarray(p, np.float64))[::-1]
    total = float(s.sum())
    if total <= 0:
        return math.nan
    before = np.r_[0.0, np.cumsum(s)[:-1]]  # S_{k-1}
    k = np.arange(1, s.size + 1, dtype=np.float64)
    return float(np.sum(s * (1.0 + before) / k) / total)


def estimate_binary(score: np.ndarray, decision: np.ndarray | None, cfg: MetricConfig = MetricConfig()) -> list[Metric]:
    """CBPE for a calibrated binary score: expected AP, precision at the alert budget, prevalence, and at the
    served decision expected FPR / precision / recall / accuracy. No labels needed; the guard is on rows."""
    p = np.clip(np.asarray(score, np.float64), 0.0, 1.0)
    p = p[~np.isnan(p)]
    n = int(p.size)
    if n < cfg.min_samples:
        names = ["ap", "precision_at_budget", "prevalence"]
        if decision is not None and np.any(decision >= 0):
            names += ["fpr", "precision", "recall", "accuracy"]
        return [Metric(name, None, n=n) for name in names]
    k = _budget_k(n, cfg.alert_budget)
    out = [
        Metric("ap", expected_average_precision(p), n=n),
        Metric("precision_at_budget", float(np.sort(p)[::-1][:k].mean()), n=k),
        Metric("prevalence", float(p.mean()), n=n),
    ]
    if decision is not None:
        d = np.asarray(decision)[~np.isnan(np.asarray(score, np.float64))]
        known = d >= 0
        if np.any(known):
            pk, flagged = p[known], d[known] == 1
            tp, fp = float(pk[flagged].sum()), float((1 - pk[flagged]).sum())
            fn, tn = float(pk[~flagged].sum()), float((1 - pk[~flagged]).sum())
            m = int(known.sum())
            out += [
                Metric("fpr", fp / (fp + tn) if fp + tn > 0 else None, n=m),
                Metric("precision", tp / (tp + fp) if tp + fp > 0 else None, n=int(flagged.sum())),
                Metric("recall", tp / (tp + fn) if tp + fn > 0 else None, n=m),
                Metric("accuracy", (tp + tn) / m, n=m),
            ]
    return out


@dataclass
class ClassProbabilitySums:
    """Mergeable sums for the expected per-class confusion of a multiclass model (CBPE for macro-F1).

    Per class ``c``: ``predicted[c]`` rows served as ``c``, ``p_when_predicted[c]`` Σ p_c over those rows
    (expected TP), ``p_total[c]`` Σ p_c over every row (expected TP + FN).
    """

    predicted: dict[str, int] = field(default_factory=dict)
    p_when_predicted: dict[str, float] = field(default_factory=dict)
    p_total: dict[str, float] = field(default_factory=dict)
    rows: int = 0

    def add(self, predicted: str, classes: Sequence[Any], probs: Sequence[Any]) -> None:
        self.rows += 1
        self.predicted[predicted] = self.predicted.get(predicted, 0) + 1
        for c, pr in zip(classes, probs, strict=False):
            if not isinstance(pr, int | float) or isinstance(pr, bool):
                continue
            key = label_key(c)
            self.p_total[key] = self.p_total.get(key, 0.0) + float(pr)
            if key == predicted:
                self.p_when_predicted[key] = self.p_when_predicted.get(key, 0.0) + float(pr)

    def merge(self, other: ClassProbabilitySums) -> ClassProbabilitySums:
        out = ClassProbabilitySums(dict(self.predicted), dict(self.p_when_predicted), dict(self.p_total), self.rows)
        for src, dst in (
            (other.predicted, out.predicted),
            (other.p_when_predicted, out.p_when_predicted),
            (other.p_total, out.p_total),
        ):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v  # type: ignore[assignment]
        out.rows += other.rows
        return out

    def expected_macro_f1(self) -> float:
        classes = set(self.predicted) | {c for c, v in self.p_total.items() if v > 0}
        f1s: list[float] = []
        for c in classes:
            tp = self.p_when_predicted.get(c, 0.0)
            fp = self.predicted.get(c, 0) - tp
            fn = self.p_total.get(c, 0.0) - tp
            denom = 2 * tp + fp + fn
            f1s.append(2 * tp / denom if denom > 0 else 0.0)
        return float(np.mean(f1s)) if f1s else math.nan


def estimate_multiclass(
    confidence: np.ndarray, sums: ClassProbabilitySums | None = None, cfg: MetricConfig = MetricConfig()
) -> list[Metric]:
    """CBPE for a classifier: expected accuracy = mean probability of the served class; expected macro-F1 from
    the per-class probability sums when the outputs carried every class's probability."""
    c = np.asarray(confidence, np.float64)
    c = c[~np.isnan(c)]
    n = int(c.size)
    if n < cfg.min_samples:
        return [Metric("accuracy", None, n=n), Metric("macro_f1", None, n=n)]
    out = [Metric("accuracy", float(np.clip(c, 0, 1).mean()), n=n)]
    if sums is not None and sums.rows >= cfg.min_samples and sums.p_total:
        out.append(Metric("macro_f1", sums.expected_macro_f1(), n=sums.rows))
    return out


def metric_map(metrics: Iterable[Metric]) -> dict[str, Metric]:
    """Metrics by name (for comparing an estimate with the realised value)."""
    return {m.name: m for m in metrics}


def estimate_gaps(realised: Iterable[Metric], estimated: Iterable[Metric]) -> dict[str, float]:
    """|estimate - realised| per metric both sides have a value for: what ``cbpe.mae`` averages over windows
    once their labels have matured (a large gap says the scores are no longer calibrated)."""
    real = metric_map(realised)
    out: dict[str, float] = {}
    for m in estimated:
        r = real.get(m.name)
        if m.value is not None and r is not None and r.value is not None:
            out[m.name] = abs(m.value - r.value)
    return out
