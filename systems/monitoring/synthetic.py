"""Synthetic reference/current frames with known drift, for the Evidently agreement test and the bench.

Each column has a designed change whose normed Wasserstein distance (numerical) or Jensen–Shannon distance
(categorical) sits far from the 0.1 threshold, so that "drifted" is a property of the design, not of the
sampling noise, and any disagreement with Evidently is a disagreement of method. Column ``i`` takes pattern
``i % len(pattern)``; the expected distances are in the comments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

Gen = Callable[[np.random.Generator, int], np.ndarray]


@dataclass(frozen=True)
class _Numeric:
    reference: Gen
    current: Gen
    shifted: bool
    null_share: float = 0.0


def _discrete(p: list[float]) -> Gen:
    return lambda rng, n: rng.choice(np.array([0.0, 1.0, 2.0]), size=n, p=p)


NUMERIC_PATTERNS: tuple[_Numeric, ...] = (
    _Numeric(lambda r, n: r.normal(0, 1, n), lambda r, n: r.normal(0, 1, n), False),  # W ≈ 0
    _Numeric(lambda r, n: r.normal(0, 1, n), lambda r, n: r.normal(0.5, 1, n), True),  # W ≈ 0.5
    _Numeric(lambda r, n: r.lognormal(0, 1, n), lambda r, n: r.lognormal(0, 1, n), False),  # W ≈ 0
    _Numeric(lambda r, n: r.normal(10, 2, n), lambda r, n: r.normal(10, 3, n), True),  # W ≈ 0.40 (scale ×1.5)
    _Numeric(lambda r, n: r.exponential(1, n), lambda r, n: r.exponential(1, n), False, 0.02),  # W ≈ 0, 2 % NaN
    _Numeric(lambda r, n: r.normal(0, 1, n), lambda r, n: r.normal(0.04, 1, n), False),  # W ≈ 0.04: below 0.1
    _Numeric(lambda r, n: r.uniform(0, 1, n), lambda r, n: r.uniform(0.1, 1.1, n), True),  # W ≈ 0.35
    _Numeric(_discrete([0.5, 0.3, 0.2]), _discrete([0.3, 0.3, 0.4]), True),  # 3 values: JS ≈ 0.17
)


@dataclass(frozen=True)
class _Categorical:
    k: int  # categories in the reference
    shifted: bool
    change: str  # "none", "mix" (re-weighted), "new" (unseen categories appear), "small"


CATEGORICAL_PATTERNS: tuple[_Categorical, ...] = (
    _Categorical(10, False, "none"),  # JS ≈ 0
    _Categorical(10, True, "mix"),  # JS ≈ 0.25: the Zipf order reversed
    _Categorical(50, True, "new"),  # JS ≈ 0.39: 25 % of the current in 10 categories the reference never had
    _Categorical(4, False, "none"),
    _Categorical(20, False, "small"),  # JS ≈ 0.03: a mild re-weighting, below 0.1
)


def _zipf(k: int) -> np.ndarray:
    w = 1.0 / np.arange(1, k + 1)
    return w / w.sum()


def _categories(rng: np.random.Generator, n: int, labels: np.ndarray, p: np.ndarray) -> np.ndarray:
    # An object array whose cells share the few label objects: memory like a real column of repeated strings.
    return labels[rng.choice(len(labels), size=n, p=p)]


@dataclass(frozen=True)
class DriftFrames:
    """A reference and a current frame with the same columns, and which columns were designed to drift."""

    reference: pd.DataFrame
    current: pd.DataFrame
    numerical: list[str]
    categorical: list[str]
    shifted: list[str]


def make_drift_frames(
    rows: int, *, numeric: int = 8, categorical: int = 3, seed: int = 0, current_rows: int | None = None
) -> DriftFrames:
    """``rows`` reference rows and ``current_rows`` (default ``rows``) current rows, seeded."""
    rng = np.random.default_rng(seed)
    n_cur = rows if current_rows is None else current_rows
    ref: dict[str, np.ndarray] = {}
    cur: dict[str, np.ndarray] = {}
    shifted: list[str] = []
    num_names = [f"num_{i}" for i in range(numeric)]
    cat_names = [f"cat_{j}" for j in range(categorical)]
    for i, name in enumerate(num_names):
        pat = NUMERIC_PATTERNS[i % len(NUMERIC_PATTERNS)]
        r, c = pat.reference(rng, rows), pat.current(rng, n_cur)
        if pat.null_share:
            r[rng.random(rows) < pat.null_share] = np.nan
            c[rng.random(n_cur) < pat.null_share] = np.nan
        ref[name], cur[name] = r, c
        if pat.shifted:
            shifted.append(name)
    for j, name in enumerate(cat_names):
        cp = CATEGORICAL_PATTERNS[j % len(CATEGORICAL_PATTERNS)]
        labels = np.array([f"{name}_v{v}" for v in range(cp.k + 10)], dtype=object)
        p_ref = np.r_[_zipf(cp.k), np.zeros(10)]
        if cp.change == "mix":
            p_cur = np.r_[_zipf(cp.k)[::-1], np.zeros(10)]
        elif cp.change == "new":
            p_cur = np.r_[0.75 * _zipf(cp.k), np.full(10, 0.025)]
        elif cp.change == "small":
            w = _zipf(cp.k) * np.linspace(0.8, 1.2, cp.k)
            p_cur = np.r_[w / w.sum(), np.zeros(10)]
        else:
            p_cur = p_ref
        ref[name] = _categories(rng, rows, labels, p_ref)
        cur[name] = _categories(rng, n_cur, labels, p_cur)
        if cp.shifted:
            shifted.append(name)
    return DriftFrames(
        reference=pd.DataFrame(ref),
        current=pd.DataFrame(cur),
        numerical=num_names,
        categorical=cat_names,
        shifted=shifted,
    )
