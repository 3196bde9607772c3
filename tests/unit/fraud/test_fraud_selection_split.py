"""The validation block obeys the label-delay protocol: it precedes the test period by more than the delay."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from systems.fraud.data import SECONDS_PER_DAY
from systems.fraud.features import LABEL_DELAY_DAYS
from systems.fraud.train import SplitConfig, delayed_split, validation_config

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """Ten transactions a day for 160 days, random cards and labels: enough rows for every period."""
    rng = np.random.default_rng(0)
    n = 160 * 10
    day = np.repeat(np.arange(160), 10)
    ts = day * SECONDS_PER_DAY + rng.integers(0, SECONDS_PER_DAY, size=n)
    return pd.DataFrame(
        {
            "tx_id": np.arange(n),
            "day": day,
            "ts_s": ts,
            "customer_id": rng.integers(0, 5_000, size=n),
            "fraud": (rng.random(n) < 0.01).astype(np.int64),
        }
    )


@pytest.mark.parametrize(
    "cfg",
    [
        SplitConfig(),  # the handbook's periods
        SplitConfig(start_day=31, train_days=9, calib_days=2, test_days=7),  # the quick / test preset
        SplitConfig(start_day=60, train_days=12, calib_days=3, delay_days=3, test_days=5, val_days=4),
    ],
)
def test_validation_ends_at_least_delay_days_before_test(frame: pd.DataFrame, cfg: SplitConfig) -> None:
    val, test = delayed_split(frame, validation_config(cfg)), delayed_split(frame, cfg)
    assert len(val.test) and len(test.test)
    delay_s = cfg.delay_days * SECONDS_PER_DAY
    # every validation label has matured before the first test transaction ...
    assert int(val.test["ts_s"].max()) + delay_s <= int(test.test["ts_s"].min())
    # ... in whole days: the last validation day is more than delay_days before the first test day
    assert int(test.test["day"].min()) - int(val.test["day"].max()) > cfg.delay_days
    # the validation models themselves obey the delay towards the validation block
    assert int(val.train["ts_s"].max()) + delay_s <= int(val.test["ts_s"].min())
    assert int(val.test["day"].min()) - int(val.train["day"].max()) > cfg.delay_days
    # the validation block is the tail of the final training window: the refit uses those labels
    assert set(val.test["day"]) <= set(test.train["day"])
    assert val.test["day"].nunique() == cfg.val_days


def test_test_period_stays_the_handbooks(frame: pd.DataFrame) -> None:
    """Days 129..135 (2018-08-08 .. 08-14), so the published numbers remain comparable."""
    cfg = SplitConfig()
    assert cfg.periods()["scored"] == [129, 135]
    assert sorted(delayed_split(frame, cfg).test["day"].unique()) == list(range(129, 136))
    val = validation_config(cfg).periods()
    assert val["scored"] == [115, 121] and val["fit"][0] == 99
    assert cfg.delay_days == LABEL_DELAY_DAYS


def test_the_protocol_fits_the_data_or_says_how_many_days_it_needs() -> None:
    from systems.common.errors import MlsdError
    from systems.fraud.train import SplitConfig, split_for_days

    assert split_for_days(183) == SplitConfig()  # the handbook's days, as published
    small = split_for_days(60)  # the small preset: the same lengths, ending on the last day
    assert small.periods()["scored"][1] == 59 and small.train_days == SplitConfig().train_days
    with pytest.raises(MlsdError, match="needs at least 37"):
        split_for_days(20)
