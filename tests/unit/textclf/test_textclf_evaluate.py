"""Evaluation: metrics on hand-computable arrays, the slice guard, McNemar on a known table, behavioural tests that
fail on broken models and pass on a sensible one, and the golden / newest-batch evaluation of a trained model."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from systems.mlops_textclf.evaluate import (
    ScoreCache,
    behavioural_tests,
    classification_metrics,
    evaluate_frame,
    evaluate_model,
    expected_calibration_error,
    mcnemar,
    measure_latency,
    paired_mcnemar,
    slice_metrics,
)
from systems.mlops_textclf.ingest import DatasetStore
from systems.mlops_textclf.settings import TextclfSettings
from systems.mlops_textclf.train import ci_preset, fit_classifier
from tests.unit.textclf.textclf_support import CONFIG

pytestmark = pytest.mark.unit

POSITIVE = {"love", "great", "perfect", "perfectly", "beautiful", "gorgeous", "comfortable", "comfy", "recommend"}
POSITIVE |= {"happy", "soft", "warm", "flattering", "compliments", "keep"}
NEGATIVE = {"terrible", "cheap", "ripped", "disappointed", "dissapointed", "returned", "return", "awful", "small"}
NEGATIVE |= {"scratchy", "poorly", "apart", "nothing"}


class LexiconModel:
    """A sensible stand-in: +1 per positive word, -1 per negative word, -2 per "not"; P = sigmoid(score)."""

    classes = ("negative", "positive")
    threshold = 0.5

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        scores = []
        for text in texts:
            words = re.findall(r"[a-z]+", text.lower())
            scores.append(sum((w in POSITIVE) - (w in NEGATIVE) - 2 * (w == "not") for w in words))
        return 1.0 / (1.0 + np.exp(-np.asarray(scores, dtype=np.float64) + 1e-3))


class ConstantModel(LexiconModel):
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return np.full(len(texts), 0.9)


class InvertedModel(LexiconModel):
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return 1.0 - super().predict_proba(texts)


# ---------------------------------------------------------------------------------------------- metrics


def test_ece_on_hand_computed_bins() -> None:
    y = np.array([0, 0, 1, 1])
    # one row per bin: mean of |y - p| = (0.1 + 0.2 + 0.3 + 0.1) / 4
    assert expected_calibration_error(y, np.array([0.1, 0.2, 0.7, 0.9])) == pytest.approx(0.175)
    # one bin [0.1, 0.2) holding all four rows: |1/4 - 0.15|
    assert expected_calibration_error(np.array([1, 0, 0, 0]), np.full(4, 0.15)) == pytest.approx(0.1)
    # p = 1.0 falls in the last bin [0.9, 1.0] with p = 0.9: |1 - 0.95| * 2/2
    assert expected_calibration_error(np.array([1, 1]), np.array([1.0, 0.9])) == pytest.approx(0.05)
    # perfectly calibrated: half of the 0.5s are positive
    assert expected_calibration_error(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.0)


def test_accuracy_macro_f1_auc_on_tiny_arrays() -> None:
    y = np.array([True, True, True, False])
    proba = np.array([0.9, 0.8, 0.4, 0.1])  # at 0.5: predicted T, T, F, F
    m = classification_metrics(y, proba, 0.5)
    assert m["accuracy"] == pytest.approx(0.75)
    # positive class: P 1, R 2/3 -> F1 0.8; negative class: P 1/2, R 1 -> F1 2/3
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert m["roc_auc"] == pytest.approx(1.0)  # every positive outranks the negative
    assert m["n"] == 4 and m["positive_share"] == pytest.approx(0.75)
    assert classification_metrics(np.array([True, True]), np.array([0.6, 0.7]), 0.5)["roc_auc"] is None


def test_slice_metrics_guard_small_slices() -> None:
    y = np.array([True] * 20 + [False] * 20 + [True] * 5)
    proba = np.where(y, 0.8, 0.2)
    slices = np.array(["big"] * 40 + ["tiny"] * 5)
    out = slice_metrics(y, proba, slices, 0.5, min_rows=30)
    assert out["tiny"] == {"n": 5, "too_few": True}
    assert out["big"]["accuracy"] == 1.0 and out["big"]["too_few"] is False and out["big"]["n"] == 40
    assert slice_metrics(y, proba, slices, 0.5, min_rows=5)["tiny"]["roc_auc"] is None  # one class: no AUC


def test_latency_reports_batch_and_single_row_percentiles() -> None:
    lat = measure_latency(LexiconModel(), ["I love it", "awful"] * 10, n_single=50)
    assert set(lat) == {"batch_us_per_row", "batch_rows", "single_p50_us", "single_p99_us"}
    assert lat["batch_rows"] == 20 and 0 < lat["single_p50_us"] <= lat["single_p99_us"]


# ---------------------------------------------------------------------------------------------- McNemar


def _table(both_right: int, only_champion: int, only_challenger: int, both_wrong: int) -> tuple[np.ndarray, ...]:
    champion = [True] * both_right + [True] * only_champion + [False] * only_challenger + [False] * both_wrong
    challenger = [True] * both_right + [False] * only_champion + [True] * only_challenger + [False] * both_wrong
    return np.array(champion), np.array(challenger)


def test_mcnemar_on_a_known_table() -> None:
    champion, challenger = _table(50, 2, 10, 5)  # b = 2, c = 10
    exact = mcnemar(champion, challenger)
    assert (exact.b, exact.c, exact.method) == (2, 10, "exact")
    # two-sided binomial: 2 * P(X <= 2 | n = 12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert exact.p_value == pytest.approx(158 / 4096)
    assert exact.statistic == 2 and exact.challenger_better
    chi2 = mcnemar(champion, challenger, exact=False)
    assert chi2.statistic == pytest.approx((10 - 2 - 1) ** 2 / 12)
    # chi-square with 1 d.o.f.: P(X > x) = erfc(sqrt(x / 2))
    assert chi2.p_value == pytest.approx(math.erfc(math.sqrt(chi2.statistic / 2)))
    # the both-right and both-wrong cells carry no information
    assert mcnemar(*_table(0, 2, 10, 0)).p_value == exact.p_value


def test_mcnemar_edge_cases() -> None:
    assert mcnemar(*_table(10, 5, 5, 1)).p_value == 1.0  # balanced disagreement
    none = mcnemar(*_table(10, 0, 0, 3))
    assert (none.b, none.c, none.p_value) == (0, 0, 1.0)
    assert mcnemar(*_table(0, 20, 30, 0)).method == "chi2-corrected"  # 50 discordant rows: large-sample form
    with pytest.raises(ValueError, match="align"):
        mcnemar(np.array([True]), np.array([True, False]))


def test_paired_mcnemar_aligns_rows_by_id() -> None:
    frame = pd.DataFrame(
        {
            "example_id": [f"r{i}" for i in range(6)],
            "text": ["love it", "awful", "great", "cheap", "love", "nothing"],
            "label": ["positive", "negative", "positive", "negative", "positive", "positive"],
            "slice": "all",
        }
    )
    champion = evaluate_frame(LexiconModel(), frame, name="golden")
    challenger = evaluate_frame(ConstantModel(), frame.iloc[::-1], name="golden")  # other row order
    result = paired_mcnemar(champion, challenger)
    # lexicon is right on all but "nothing"; the constant (always positive) is right on the 4 positives
    assert (result.b, result.c) == (2, 1)


# ------------------------------------------------------------------------------------ behavioural tests


def test_behavioural_tests_pass_on_a_sensible_model() -> None:
    report = behavioural_tests(LexiconModel())
    assert report.passed, report.failing()
    assert [r.kind for r in report.results] == ["minimum_functionality", "invariance", "directional"]


def test_behavioural_tests_fail_on_a_constant_model() -> None:
    report = behavioural_tests(ConstantModel())
    assert not report.passed
    by_kind = {r.kind: r for r in report.results}
    assert not by_kind["minimum_functionality"].passed
    assert all(f["expected"] == "negative" for f in by_kind["minimum_functionality"].failures)
    assert by_kind["invariance"].passed  # a constant never flips: invariance alone cannot catch it
    assert len(by_kind["directional"].failures) == by_kind["directional"].n  # negation never lowers P


def test_behavioural_tests_fail_on_an_inverted_model() -> None:
    report = behavioural_tests(InvertedModel())
    by_kind = {r.kind: r for r in report.results}
    assert by_kind["minimum_functionality"].pass_rate == 0.0
    assert by_kind["directional"].pass_rate == 0.0
    failing = report.failing()
    assert {f["kind"] for f in failing} == {"minimum_functionality", "directional"}
    assert all("negated" in f for f in failing if f["kind"] == "directional")


def test_behavioural_tolerance() -> None:
    class OneTypoBlind(LexiconModel):
        def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
            return super().predict_proba([t.replace("dissapointed", "great") for t in texts])

    strict = behavioural_tests(OneTypoBlind())
    assert not strict.passed and len(strict.failing()) == 1
    assert behavioural_tests(OneTypoBlind(), max_failure_rate=0.2).passed


# ------------------------------------------------------------------------------ a model on the datasets


def test_evaluate_model_scores_golden_and_the_newest_batch_out_of_sample(ingested: TextclfSettings) -> None:
    store = DatasetStore.of(ingested)
    versions = store.versions()
    first, head = versions[0].version_id, versions[-1].version_id
    model, _ = fit_classifier(store.load(first), ci_preset(), classes=CONFIG.class_names)
    model.data_version = first

    own = evaluate_model(model, settings=ingested, version=first, latency_rows=10)
    assert own.golden.scope == "fixed golden set" and own.golden.metrics["n"] == len(own.golden.correct)
    assert own.newest.scope.startswith("held-out")
    assert set(own.newest.example_ids) <= model.heldout_ids  # never a row it trained on
    later = evaluate_model(model, settings=ingested, version=head, latency_rows=10)
    assert later.newest.scope == "unseen batch"
    assert later.newest.metrics["n"] == versions[-1].batches[-1].rows
    assert later.golden.correct.tobytes() == own.golden.correct.tobytes()  # the golden set is fixed
    flat = later.flat_metrics()
    assert {"golden_macro_f1", "newest_ece", "latency_single_p99_us", "behaviour_passed"} <= set(flat)


class _Counting:
    """P(positive) = text length / 100, with a fingerprint, counting the texts it scored."""

    classes = ("bad", "good")
    threshold = 0.5

    def __init__(self, fingerprint: str | None, shift: float = 0.0) -> None:
        self.fingerprint, self.shift, self.scored = fingerprint, shift, 0

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        self.scored += len(texts)
        return np.array([min(len(t), 100) / 100 + self.shift for t in texts])


def test_kept_scores_are_read_back_checked_and_recomputed_when_they_disagree(tmp_path) -> None:
    texts = [f"text {'x' * (i % 90)}" for i in range(500)]
    cache = ScoreCache(tmp_path / "scores")
    first = _Counting("fp-1")
    expected = first.predict_proba(texts)
    first.scored = 0
    assert np.array_equal(cache.predict_proba(first, texts), expected) and first.scored == len(texts)
    again = _Counting("fp-1")  # the same model loaded again (another process): read back, spot-checked
    assert np.array_equal(cache.predict_proba(again, texts), expected)
    assert 0 < again.scored <= ScoreCache.SPOT_ROWS and cache.hits == 1
    changed = _Counting("fp-1", shift=0.01)  # same fingerprint, other scores: the check sees it
    assert np.allclose(cache.predict_proba(changed, texts), expected + 0.01)
    assert changed.scored == len(texts) + ScoreCache.SPOT_ROWS and cache.hits == 1
    other = _Counting("fp-2")  # another model never reads the first one's scores
    cache.predict_proba(other, texts)
    assert other.scored == len(texts)
    unkeyed = _Counting(None)
    cache.predict_proba(unkeyed, texts)
    cache.predict_proba(unkeyed, texts)
    assert unkeyed.scored == 2 * len(texts)  # no fingerprint: always scored
    assert ScoreCache.key("fp", ["ab", "c"]) != ScoreCache.key("fp", ["a", "bc"])


def test_quality_intervals_are_paired_and_agree_with_the_point_metrics(ingested: TextclfSettings) -> None:
    import copy

    from systems.mlops_textclf.bench import quality_intervals
    from systems.mlops_textclf.ingest import load_golden

    store = DatasetStore.of(ingested)
    head = store.head()
    assert head is not None
    model, _ = fit_classifier(store.load(head.version_id), ci_preset(), classes=CONFIG.class_names)
    worse = copy.copy(model)
    worse.threshold = 0.99  # most positives called negative: truly worse on the same rows
    out = quality_intervals(ingested, {"model": model, "worse": worse}, n_boot=300)
    golden = load_golden(ingested)
    y = (golden["label"] == CONFIG.class_names[1]).to_numpy()
    assert out["rows"] == len(y)
    assert out["model"]["accuracy"] == pytest.approx(
        np.mean((model.predict_proba(golden["text"].tolist()) >= model.threshold) == y)
    )
    for kind in ("model", "worse"):
        for metric in ("accuracy", "macro_f1"):
            lo, hi = out[kind][f"{metric}_ci"]
            assert lo <= out[kind][metric] <= hi
    assert out["worse"]["accuracy_ci"][1] - out["worse"]["accuracy_ci"][0] > 0  # it errs: the rows disagree
    diff = out["model_minus_worse"]
    assert diff["accuracy"] > 0 and diff["accuracy_ci"][0] > 0  # a real gap, seen as one
    same = quality_intervals(ingested, {"a": model, "b": copy.copy(model)}, n_boot=50)["a_minus_b"]
    assert same["accuracy"] == 0 and same["accuracy_ci"] == (0.0, 0.0)  # paired: identical answers, no width
