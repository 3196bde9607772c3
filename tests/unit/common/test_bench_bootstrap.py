"""The bootstrap interval: it covers the truth about as often as it says, and pairing cancels shared noise."""

from __future__ import annotations

import numpy as np
import pytest

from systems.common.bench import bootstrap_ci


def test_a_95_percent_interval_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(1)
    truth, covered, trials = 0.8, 0, 200
    for t in range(trials):
        sample = (rng.random(300) < truth).astype(float)
        lo, hi = bootstrap_ci(np.mean, sample, n_boot=400, seed=t)
        covered += lo <= truth <= hi
    assert 0.89 <= covered / trials <= 0.99  # a binomial(200, 0.95) lands here with probability > 0.999


def test_a_paired_interval_sees_a_small_real_difference_that_an_unpaired_one_cannot() -> None:
    # two models right on the same rows except 15 of 2,000 where only the first is right: +0.75 points
    rng = np.random.default_rng(2)
    a = rng.random(2000) < 0.9
    b = a.copy()
    b[np.flatnonzero(a)[:15]] = False
    lo, hi = bootstrap_ci(lambda x, y: x.mean() - y.mean(), a.astype(float), b.astype(float))
    assert 0 < lo < 0.0075 < hi  # paired: the shared rows cancel, the gain is clearly above zero
    a_lo, _ = bootstrap_ci(np.mean, a.astype(float), seed=1)
    _, b_hi = bootstrap_ci(np.mean, b.astype(float), seed=2)
    assert a_lo < b_hi  # unpaired: the two single-model intervals overlap


def test_columns_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="one non-zero length"):
        bootstrap_ci(lambda x, y: 0.0, np.zeros(3), np.zeros(4))
