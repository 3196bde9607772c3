"""One feature definition: the streaming path equals the batch path, and no feature sees an immature label."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from systems.fraud.data import SECONDS_PER_DAY, SimulatorConfig, simulate
from systems.fraud.features import (
    CUSTOMER_STATE_BYTES,
    FEATURES,
    LABEL_DELAY_DAYS,
    TERMINAL_WINDOWS,
    OnlineFeatures,
    compute_batch_features,
    replay_history,
)
from systems.fraud.train import SplitConfig, add_features, delayed_split

pytestmark = pytest.mark.unit

DELAY_S = LABEL_DELAY_DAYS * SECONDS_PER_DAY


@pytest.fixture(scope="module")
def tx() -> pd.DataFrame:
    cfg = SimulatorConfig(
        n_customers=200,
        n_terminals=400,
        n_days=45,
        compromised_terminals_per_day=1,
        compromised_customers_per_day=1,
        seed=3,
    )
    return simulate(cfg).transactions


def test_stream_equals_batch_on_every_transaction(tx: pd.DataFrame) -> None:
    batch = compute_batch_features(tx).to_numpy()
    stream = replay_history(OnlineFeatures(), tx, label_delay_s=DELAY_S)
    assert batch.shape == stream.shape == (len(tx), len(FEATURES))
    np.testing.assert_allclose(stream, batch, rtol=1e-9, atol=1e-9)
    # the windows are non-trivial: terminal risk is non-zero somewhere, counts exceed one
    assert batch[:, FEATURES.index("term_risk_30d")].max() > 0
    assert batch[:, FEATURES.index("cust_nb_tx_30d")].max() > 10


def test_one_day_replayed_event_by_event(tx: pd.DataFrame) -> None:
    """Warm the state on the history before day D, then replay day D one call at a time."""
    d = int(tx["day"].max()) - 1
    history, today = tx[tx["day"] < d], tx[tx["day"] == d]
    state = OnlineFeatures()
    cutoff = int(today["ts_s"].min())
    replay_history(state, history, label_delay_s=DELAY_S, until_s=cutoff - 1)
    labels_due = tx[(tx["ts_s"] + DELAY_S >= cutoff) & (tx["ts_s"] + DELAY_S <= int(today["ts_s"].max()))]
    due = sorted(
        zip(
            (labels_due["ts_s"] + DELAY_S).tolist(), labels_due["tx_id"].tolist(), labels_due.itertuples(), strict=True
        ),
    )
    streamed = []
    i = 0
    for row in today.sort_values(["ts_s", "tx_id"]).itertuples():
        while i < len(due) and due[i][0] <= row.ts_s:  # labels that arrived before this transaction
            lab = due[i][2]
            state.observe_label(int(lab.terminal_id), int(lab.ts_s), int(lab.fraud))
            i += 1
        streamed.append(state.update(int(row.customer_id), int(row.terminal_id), int(row.ts_s), float(row.amount)))
    batch = compute_batch_features(tx).loc[today.sort_values(["ts_s", "tx_id"]).index]
    np.testing.assert_allclose(np.array(streamed), batch.to_numpy(), rtol=1e-9, atol=1e-9)


def test_terminal_risk_ignores_labels_younger_than_the_delay(tx: pd.DataFrame) -> None:
    """Flip every label of the last delay+1 days: no feature of day D may change."""
    d = int(tx["day"].max())
    flipped = tx.copy()
    recent = flipped["day"] >= d - LABEL_DELAY_DAYS
    flipped.loc[recent, "fraud"] = 1 - flipped.loc[recent, "fraud"]
    a = compute_batch_features(tx)[tx["day"] == d]
    b = compute_batch_features(flipped)[tx["day"] == d]
    pd.testing.assert_frame_equal(a, b)
    # ...while flipping a label just old enough does move the risk of that terminal
    old = flipped.copy()
    old["fraud"] = tx["fraud"]
    mature = old["day"] == d - LABEL_DELAY_DAYS - 1
    old.loc[mature, "fraud"] = 1 - old.loc[mature, "fraud"]
    c = compute_batch_features(old)[tx["day"] == d]
    assert not c["term_risk_1d"].equals(a["term_risk_1d"])


def test_delayed_split_has_no_leakage(tx: pd.DataFrame) -> None:
    frame = add_features(tx)
    cfg = SplitConfig(start_day=5, train_days=9, calib_days=2, delay_days=LABEL_DELAY_DAYS, test_days=7)
    split = delayed_split(frame, cfg)
    test_start = int(split.test["ts_s"].min())
    # every training label has matured before the first test transaction
    assert int(split.train["ts_s"].max()) + DELAY_S <= test_start
    assert split.fit["day"].max() < split.calib["day"].min()
    assert split.test["day"].min() == cfg.start_day + cfg.train_days + cfg.delay_days
    # known-compromised cards are gone from the test days (the handbook's rule)
    known = set(split.train.loc[split.train["fraud"] == 1, "customer_id"])
    assert not known & set(split.test["customer_id"])
    assert not set(split.test["tx_id"]) & set(split.train["tx_id"])


def test_out_of_order_event_is_clamped_not_fatal() -> None:
    state = OnlineFeatures()
    t = 1_530_000_000
    state.update(1, 7, t, 10.0)
    late = state.update(1, 7, t - 3 * SECONDS_PER_DAY, 20.0)  # older than the customer's last event
    assert late[FEATURES.index("cust_nb_tx_1d")] == 2  # counted in the customer's current day
    assert np.isfinite(late).all()


def test_partitions_crossing_midnight_out_of_step_give_the_same_features(tx: pd.DataFrame) -> None:
    """One scorer reads several partitions (keyed by customer): across midnight it interleaves "yesterday"
    events of one partition with "today" events of another. Per-customer order is all Kafka keeps, and all
    the features need: the result must equal the time-ordered replay (no labels here: their timing is
    separate)."""
    start_day = int(tx["day"].max()) - 4
    part = tx[tx["day"] >= start_day].sort_values(["ts_s", "tx_id"])
    warm = tx[tx["day"] < start_day]

    def fresh() -> OnlineFeatures:
        state = OnlineFeatures()
        replay_history(state, warm, label_delay_s=DELAY_S, until_s=int(part["ts_s"].min()) - 1)
        return state

    rows = list(part[["tx_id", "customer_id", "terminal_id", "ts_s", "amount"]].itertuples(index=False))
    ordered_state = fresh()
    expected = {r.tx_id: ordered_state.update(r.customer_id, r.terminal_id, r.ts_s, r.amount) for r in rows}
    # two "partitions" by customer parity; the odd one lags 6 hours of event time behind the even one
    even = [r for r in rows if r.customer_id % 2 == 0]
    odd = [r for r in rows if r.customer_id % 2 == 1]
    lag, merged, j = 6 * 3600, [], 0
    for r in even:
        while j < len(odd) and odd[j].ts_s + lag <= r.ts_s:
            merged.append(odd[j])
            j += 1
        merged.append(r)
    merged += odd[j:]
    state = fresh()
    got = {r.tx_id: state.update(r.customer_id, r.terminal_id, r.ts_s, r.amount) for r in merged}
    crossings = sum(1 for a, b in itertools.pairwise(merged) if a.ts_s // 86_400 != b.ts_s // 86_400)
    assert crossings > 20  # the interleaving really switches days back and forth
    np.testing.assert_allclose(
        np.array([got[t] for t in expected]), np.array(list(expected.values())), rtol=1e-9, atol=1e-9
    )


def _warm(tx: pd.DataFrame, start_day: int) -> tuple[OnlineFeatures, pd.DataFrame, pd.DataFrame]:
    """A state warmed on the days before ``start_day`` (labels matured by then), and the rest of ``tx``."""
    warm, rest = tx[tx["day"] < start_day], tx[tx["day"] >= start_day].sort_values(["ts_s", "tx_id"])
    state = OnlineFeatures()
    replay_history(state, warm, label_delay_s=DELAY_S, until_s=int(rest["ts_s"].min()) - 1)
    return state, warm, rest


def test_late_labels_are_added_to_the_tables_not_recomputed(tx: pd.DataFrame) -> None:
    """A backlog of labels (a restarted scorer re-reading the label topic) lands inside windows the tables
    already summed: each label is added to the rows it falls into, so no table is recomputed -- and the
    terminal features equal those of a state that had the labels before it computed its tables."""
    start_day = int(tx["day"].max()) - 3
    on_time, warm, rest = _warm(tx, start_day)
    late = warm[(warm["day"] >= start_day - 20) & (warm["day"] <= start_day - 9)]
    # the same history without those labels (terminal state comes from labels only; customers may differ)
    state = OnlineFeatures()
    replay_history(state, warm.drop(late.index), label_delay_s=DELAY_S, until_s=int(rest["ts_s"].min()) - 1)
    rows = list(rest[["customer_id", "terminal_id", "ts_s", "amount"]].head(2000).itertuples(index=False))
    before, before_on_time = state.full_rebuilds, on_time.full_rebuilds
    state.update(*rows[0])  # the day's table now exists
    on_time.update(*rows[0])
    for r in late.itertuples():
        state.observe_label(int(r.terminal_id), int(r.ts_s), int(r.fraud))
    got = np.array([state.update(*r) for r in rows[1:]])
    want = np.array([on_time.update(*r) for r in rows[1:]])
    term = [FEATURES.index(f"term_{k}_{w}d") for k in ("nb_tx", "risk") for w in (1, 7, 30)]
    assert want[:, term].max() > 0 and len(late) > 100
    np.testing.assert_allclose(got[:, term], want[:, term], rtol=1e-12, atol=1e-12)
    # tables for the new days only (as without the late labels), none recomputed for the labels
    assert state.full_rebuilds - before == on_time.full_rebuilds - before_on_time >= 1


def test_an_event_on_another_day_computes_its_rows_not_a_table(tx: pd.DataFrame) -> None:
    """Bounded work per event: only the clock entering a new day computes a whole table; an event dated on any
    other day (within the window) costs its own two rows, and gets the same features a full table gives."""
    start_day = int(tx["day"].max()) - 3
    state, _, rest = _warm(tx, start_day)
    reference, _, _ = _warm(tx, start_day)
    first = rest.iloc[0]
    state.update(int(first.customer_id), int(first.terminal_id), int(first.ts_s), float(first.amount))
    reference.update(int(first.customer_id), int(first.terminal_id), int(first.ts_s), float(first.amount))
    before = state.full_rebuilds
    # fresh customers, so no clamping to a customer's last time: each event really is on its own day
    for k in range(1, 8):
        ts = int(first.ts_s) - k * SECONDS_PER_DAY
        got = state.update(10**9 + k, int(first.terminal_id), ts, 50.0)
        assert state.check_time(ts, max_lead_s=3600, max_lag_s=30 * SECONDS_PER_DAY) is None
        table = reference._rebuild(ts // SECONDS_PER_DAY)[1][reference.terminals[int(first.terminal_id)]]
        n = len(TERMINAL_WINDOWS)
        want_risk = [table[n + i] / table[i] if table[i] else 0.0 for i in range(n)]
        assert got[FEATURES.index("term_nb_tx_1d") : FEATURES.index("term_nb_tx_30d") + 1] == table[:n]
        assert got[FEATURES.index("term_risk_1d") : FEATURES.index("term_risk_30d") + 1] == want_risk
        reference.update(10**9 + k, int(first.terminal_id), ts, 50.0)
    assert state.full_rebuilds == before


def test_the_time_window_around_the_clock() -> None:
    state = OnlineFeatures()
    assert state.check_time(10**12, max_lead_s=3600, max_lag_s=86_400) is None  # no clock yet: nothing to compare
    t = 1_530_000_000
    state.update(1, 7, t, 10.0)
    assert state.clock_s == t
    assert state.check_time(t + 3600, max_lead_s=3600, max_lag_s=86_400) is None
    assert "ahead" in (state.check_time(t + 3601, max_lead_s=3600, max_lag_s=86_400) or "")
    assert "behind" in (state.check_time(t - 86_401, max_lead_s=3600, max_lag_s=86_400) or "")
    state.update(2, 7, t - 600, 10.0)  # an older event does not move the clock back
    assert state.clock_s == t


def test_a_label_ahead_of_the_clock_waits_for_its_maturity(tx: pd.DataFrame) -> None:
    """Labels are read by their own consumer and can run ahead of a lagging transaction stream (a restarted
    scorer reads the whole label topic before it scores). A label is held until the clock reaches its maturity
    (its day + the delay): applied at once, it would overwrite the oldest day of the terminal's 38-day ring,
    which the windows of a partition a day behind the clock still read."""
    start_day = int(tx["day"].max()) - 3
    state, _, rest = _warm(tx, start_day)
    row = rest.iloc[0]
    state.update(int(row.customer_id), int(row.terminal_id), int(row.ts_s), float(row.amount))
    trow = state.terminals[int(row.terminal_id)]
    ring = state._t_cnt[trow].copy()
    early = int(row.ts_s) - 3 * SECONDS_PER_DAY  # matures 4 days after the clock
    state.observe_label(int(row.terminal_id), early, 1)
    np.testing.assert_array_equal(state._t_cnt[trow], ring)  # held back
    state.update(int(row.customer_id), int(row.terminal_id), int(row.ts_s) + 3 * SECONDS_PER_DAY, 1.0)
    np.testing.assert_array_equal(state._t_cnt[trow], ring)  # still 1 day before it matures
    state.update(int(row.customer_id), int(row.terminal_id), int(row.ts_s) + 4 * SECONDS_PER_DAY, 1.0)
    d = early // SECONDS_PER_DAY
    assert state._t_stamp[trow, d % len(ring)] == d and state._t_cnt[trow, d % len(ring)] >= 1


def test_a_label_topic_read_at_once_gives_the_features_of_labels_read_on_time(tx: pd.DataFrame) -> None:
    """A scorer that reads every label of the coming days up front (a backlog) computes what one fed labels as
    they mature computes -- the batch features -- including while two partitions are a day apart."""
    start_day = int(tx["day"].max()) - 12
    warm, rest = tx[tx["day"] < start_day], tx[tx["day"] >= start_day].sort_values(["ts_s", "tx_id"])
    cutoff = int(rest["ts_s"].min()) - 1
    state = OnlineFeatures()
    replay_history(state, warm, label_delay_s=DELAY_S, until_s=cutoff)
    labels = tx[(tx["ts_s"] + DELAY_S > cutoff)]
    for r in labels.itertuples():  # the whole label topic of the coming days, before any transaction
        state.observe_label(int(r.terminal_id), int(r.ts_s), int(r.fraud))
    # a sparse stream (a tenth of the customers: too few events a day to pay for whole tables, so rows are
    # computed one at a time, as on a busy day of a big population), in two partitions by customer parity,
    # the odd one a day of event time behind
    rest = rest[rest["customer_id"] % 10 == 0]
    rows = list(rest[["tx_id", "customer_id", "terminal_id", "ts_s", "amount"]].itertuples(index=False))
    even = [r for r in rows if r.customer_id % 20 == 0]
    odd = [r for r in rows if r.customer_id % 20 == 10]
    merged, j = [], 0
    for r in even:
        while j < len(odd) and odd[j].ts_s + SECONDS_PER_DAY <= r.ts_s:
            merged.append(odd[j])
            j += 1
        merged.append(r)
    merged += odd[j:]
    before = state.full_rebuilds
    got = {r.tx_id: state.update(r.customer_id, r.terminal_id, r.ts_s, r.amount) for r in merged}
    assert state.full_rebuilds - before <= 6  # rows were computed one at a time on half of the 12 days or more
    batch = compute_batch_features(tx).set_index(tx["tx_id"]).loc[list(got)]
    np.testing.assert_allclose(np.array(list(got.values())), batch.to_numpy(), rtol=1e-9, atol=1e-9)


def test_exported_customers_restore_the_same_features(tx: pd.DataFrame) -> None:
    """What a new owner of a partition restores: the state exported after some events continues exactly as the
    process that made them would have."""
    start_day = int(tx["day"].max()) - 3
    first, _, rest = _warm(tx, start_day)
    second, _, _ = _warm(tx, start_day)  # knows nothing after the warm-up, like a restarted scorer
    rows = list(rest[["customer_id", "terminal_id", "ts_s", "amount"]].itertuples(index=False))
    half = len(rows) // 2
    for r in rows[:half]:
        first.update(*r)
    second.update(*rows[0])  # tables computed from the old state must not survive the import
    touched = {int(r.customer_id) for r in rows[:half]}
    blobs = first.export_customers(touched)
    assert all(len(b) == CUSTOMER_STATE_BYTES for _, b in blobs)
    assert second.import_customers(blobs) == len(touched)
    assert second.clock_s == first.clock_s
    got = np.array([second.update(*r) for r in rows[half:]])
    want = np.array([first.update(*r) for r in rows[half:]])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
