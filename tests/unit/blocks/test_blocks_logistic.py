"""Logistic regression: from-scratch NumPy vs scikit-learn, and the leak-free workflow."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from systems.blocks.logistic import NumpyLogisticRegression, build_pipeline, run_workflow

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def scaled() -> tuple[np.ndarray, np.ndarray]:
    data = load_breast_cancer()
    return StandardScaler().fit_transform(data.data), data.target


@pytest.mark.parametrize("C", [0.01, 0.3, 1.0, 10.0])
@pytest.mark.parametrize("solver", ["lbfgs", "newton-cholesky"])
def test_numpy_coefficients_match_sklearn(scaled: tuple[np.ndarray, np.ndarray], C: float, solver: str) -> None:
    X, y = scaled
    ref = LogisticRegression(C=C, solver=solver, tol=1e-10, max_iter=100_000).fit(X, y)
    mine = NumpyLogisticRegression(C=C).fit(X, y)
    np.testing.assert_allclose(mine.coef_, ref.coef_, rtol=0, atol=1e-4)
    np.testing.assert_allclose(mine.intercept_, ref.intercept_, rtol=0, atol=1e-4)
    np.testing.assert_allclose(mine.predict_proba(X), ref.predict_proba(X), rtol=0, atol=1e-5)
    assert (mine.predict(X) == ref.predict(X)).all()


def test_no_intercept_matches_sklearn(scaled: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = scaled
    ref = LogisticRegression(C=0.5, fit_intercept=False, tol=1e-10, max_iter=100_000).fit(X, y)
    mine = NumpyLogisticRegression(C=0.5, fit_intercept=False).fit(X, y)
    np.testing.assert_allclose(mine.coef_, ref.coef_, rtol=0, atol=1e-4)
    assert mine.intercept_[0] == 0.0


def test_regularisation_shrinks_and_intercept_is_free() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = (X @ [2.0, -1.0, 0.0] + 1.5 + rng.logistic(size=400) > 0).astype(int)
    strong = NumpyLogisticRegression(C=1e-4).fit(X, y)
    weak = NumpyLogisticRegression(C=1e4).fit(X, y)
    assert np.abs(strong.coef_).max() < 0.05 < np.abs(weak.coef_).max()
    # the intercept is not penalised: with w ~ 0 it still fits the base rate
    base = y.mean()
    assert strong.intercept_[0] == pytest.approx(np.log(base / (1 - base)), abs=0.05)
    np.testing.assert_allclose(weak.coef_[0][:2], [2.0, -1.0], atol=0.4)


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError):
        NumpyLogisticRegression(C=0.0)
    with pytest.raises(ValueError):
        NumpyLogisticRegression().fit(np.zeros((3, 1)), [0, 1, 2])


def test_pipeline_scales_inside_fit() -> None:
    data = load_breast_cancer()
    X_tr, _, y_tr, _ = train_test_split(data.data, data.target, test_size=0.3, stratify=data.target, random_state=0)
    pipe = build_pipeline(C=0.5).fit(X_tr, y_tr)
    assert [name for name, _ in pipe.steps] == ["scale", "clf"]
    scaler = pipe.named_steps["scale"]
    np.testing.assert_allclose(scaler.mean_, X_tr.mean(0))  # training statistics only
    assert not np.allclose(scaler.mean_, data.data.mean(0))
    assert pipe.named_steps["clf"].C == 0.5
    assert build_pipeline(class_weight="balanced").named_steps["clf"].class_weight == "balanced"


def test_workflow_metrics() -> None:
    m = run_workflow(seed=0)
    assert (m["n_train"], m["n_test"]) == (455, 114)
    (tn, fp), (fn, tp) = m["confusion_matrix"]
    assert tn + fp + fn + tp == 114 and fn + tp == 42  # stratified: 42 of 114 malignant (37%)
    assert m["accuracy"] == pytest.approx((tn + tp) / 114)
    assert m["precision"] == pytest.approx(tp / (tp + fp))
    assert m["recall"] == pytest.approx(tp / (tp + fn))
    # floors on real data (measured: accuracy 0.974, ROC-AUC 0.992, F1 0.964)
    assert m["accuracy"] >= 0.95 and m["roc_auc"] >= 0.98 and m["f1"] >= 0.93
    assert 1e-3 <= m["best_C"] <= 1e3
    assert m["scratch_max_abs_coef_diff"] < 1e-4


def test_warns_when_max_iter_is_hit(scaled: tuple[np.ndarray, np.ndarray]) -> None:
    """Like scikit-learn: stopping at max_iter warns, since the coefficients are not the optimum."""
    X, y = scaled
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        short = NumpyLogisticRegression(C=1.0, max_iter=2).fit(X, y)
    assert short.n_iter_ == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # a converged fit stays silent
        full = NumpyLogisticRegression(C=1.0).fit(X, y)
    assert full.n_iter_ < full.max_iter
    assert np.abs(short.coef_ - full.coef_).max() > 1e-3


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_rejects_non_finite_features(bad: float) -> None:
    X = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 1.0], [3.0, 0.0]])
    X[2, 1] = bad
    with pytest.raises(ValueError, match="X must be finite"):
        NumpyLogisticRegression().fit(X, [0, 1, 0, 1])


@pytest.mark.parametrize("C", [math.inf, math.nan, 0.0, -1.0])
def test_rejects_c_outside_positive_finite(C: float) -> None:
    with pytest.raises(ValueError, match="C must be a positive finite number"):
        NumpyLogisticRegression(C=C)


@pytest.mark.parametrize("label", [0, 1])
def test_rejects_single_class(label: int) -> None:
    """One class only: the unpenalised intercept has no finite optimum (scikit-learn refuses too)."""
    X = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match=rf"both classes 0 and 1, got classes \[{label}\]"):
        NumpyLogisticRegression().fit(X, np.full(20, label))
    with pytest.raises(ValueError, match="2 classes"):  # the reference agrees
        LogisticRegression().fit(X, np.full(20, label))
