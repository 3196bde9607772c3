"""Our summaries + ``detect_drift`` decide like Evidently 0.7's ``DataDriftPreset`` on the same data.

20k reference + 20k current rows, 8 numerical and 3 categorical columns (seeded; 5 designed to drift, one
numerical column with 3 distinct values that both sides test with Jensen–Shannon). Evidently is imported
inside the test (~5 s) so collection stays fast.
"""

from __future__ import annotations

import pytest

from systems.monitoring.bench import compare, run_evidently, run_ours
from systems.monitoring.synthetic import make_drift_frames

pytestmark = [
    pytest.mark.model,
    pytest.mark.slow,
    # raised while importing Evidently 0.7.23 (its legacy test utils, its bundled litestar UI): not ours to fix
    pytest.mark.filterwarnings(r"ignore:\s*numpy.core is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings(r"ignore:\s*(Call to|Use of) deprecated .* litestar:DeprecationWarning"),
]

W_TOLERANCE = 0.005
"""Evidently's exact normed Wasserstein minus ours, at most: 5 % of the 0.1 threshold.

Ours is a lower bound of the exact distance (per bin it takes |∫(F_ref - F_cur)| ≤ ∫|F_ref - F_cur|), equal
to it wherever the CDFs do not cross inside a bin. Measured over 40 seeds x 6 shapes at 20k rows: at most
0.0033 (an undrifted lognormal, whose CDFs cross in many wide tail bins), at most 0.001 for columns near the
threshold. So a decision can only differ for a column within 0.005 below the threshold.
"""


def test_same_columns_flagged_and_statistics_within_tolerance() -> None:
    frames = make_drift_frames(20_000, numeric=8, categorical=3, seed=0)
    ours = run_ours(frames)
    theirs = run_evidently(frames)
    cmp = compare(ours, theirs)

    assert cmp["agreement"] == 1.0, cmp["disagreeing_columns"]
    assert cmp["same_methods"]
    flagged = sorted(c for c, v in theirs["columns"].items() if v["drifted"])
    assert flagged == sorted(frames.shifted) == sorted(c for c, v in ours["columns"].items() if v["drifted"])
    assert ours["dataset_drift"] == theirs["dataset_drift"]
    assert ours["share_of_drifted_columns"] == pytest.approx(theirs["share_of_drifted_columns"])
    for name, mine in ours["columns"].items():
        exact = theirs["columns"][name]["statistic"]
        if mine["method"] == "wasserstein":
            assert -1e-9 <= exact - mine["statistic"] <= W_TOLERANCE, name
        else:  # Jensen–Shannon over the same buckets: the same number
            assert mine["statistic"] == pytest.approx(exact, abs=1e-9), name
