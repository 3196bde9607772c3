"""EMA filters vs real pandas ewm, stability on long streams and large gaps, and properties."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from systems.blocks.ema import EMAFilter, EMAState, TimeAwareEMA, ema, time_aware_ema

pytestmark = pytest.mark.unit

TOL = 1e-9


def _irregular(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Values and timestamps (s) at whole milliseconds, with bursts (Δt = 0) and long gaps."""
    rng = np.random.default_rng(seed)
    gaps_ms = rng.choice([0, 1, 50, 1_000, 5_000, 600_000], size=n, p=[0.1, 0.2, 0.3, 0.25, 0.14, 0.01])
    t = np.cumsum(gaps_ms) / 1000.0
    x = rng.normal(10.0, 3.0, size=n)
    return x, t


def _pandas_times_mean(x: np.ndarray, t: np.ndarray, halflife_s: float) -> np.ndarray:
    times = pd.to_datetime(np.round(t * 1000).astype("int64"), unit="ms")
    s = pd.Series(x).ewm(halflife=pd.Timedelta(seconds=halflife_s), times=times)
    return s.mean().to_numpy()


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.1, 1e-3])
def test_regular_matches_pandas_adjust_false(alpha: float) -> None:
    x = np.random.default_rng(1).normal(size=3000)
    ref = pd.Series(x).ewm(alpha=alpha, adjust=False).mean().to_numpy()
    np.testing.assert_allclose(ema(x, alpha), ref, rtol=0, atol=TOL)
    f = EMAFilter(alpha)
    np.testing.assert_allclose([f.update(v) for v in x], ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("halflife_s", [0.5, 2.0, 60.0])
def test_time_aware_adjust_true_matches_pandas_times(halflife_s: float) -> None:
    x, t = _irregular(5000)
    tau = halflife_s / math.log(2)  # pandas halflife h <-> tau = h / ln 2
    ref = _pandas_times_mean(x, t, halflife_s)
    np.testing.assert_allclose(time_aware_ema(x, t, tau, adjust=True), ref, rtol=0, atol=TOL)
    f = TimeAwareEMA(tau, adjust=True)
    np.testing.assert_allclose([f.update(v, ti) for v, ti in zip(x, t, strict=True)], ref, rtol=0, atol=TOL)


def test_time_aware_default_on_regular_grid_is_pandas_alpha_adjust_false() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=2000)
    dt, tau = 0.25, 3.0
    t = np.arange(x.size) * dt
    alpha = 1.0 - math.exp(-dt / tau)
    ref = pd.Series(x).ewm(alpha=alpha, adjust=False).mean().to_numpy()
    np.testing.assert_allclose(time_aware_ema(x, t, tau), ref, rtol=0, atol=TOL)
    # pandas' times/halflife form is the *normalised* estimator: equal only after the start-up transient
    pt = _pandas_times_mean(x, t, tau * math.log(2))
    assert np.abs(pt[:20] - ref[:20]).max() > 1e-3
    np.testing.assert_allclose(pt[-100:], ref[-100:], rtol=0, atol=TOL)


def test_time_aware_default_matches_weighted_sum_definition() -> None:
    """On irregular data check the definition y_i = sum_j w_ij x_j with w from a_k = exp(-Δt_k/τ)."""
    x, t = _irregular(300, seed=3)
    tau = 2.0
    a = np.exp(-np.diff(t, prepend=t[0]) / tau)
    ref = np.empty_like(x)
    for i in range(x.size):  # O(n^2) reference straight from the weights
        w = np.array([(1.0 if j == 0 else 1.0 - a[j]) * np.prod(a[j + 1 : i + 1]) for j in range(i + 1)])
        assert math.isclose(w.sum(), 1.0, rel_tol=1e-12)  # a convex combination
        ref[i] = w @ x[: i + 1]
    np.testing.assert_allclose(time_aware_ema(x, t, tau), ref, rtol=0, atol=TOL)
    f = TimeAwareEMA(tau)
    np.testing.assert_allclose([f.update(v, ti) for v, ti in zip(x, t, strict=True)], ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("adjust", [False, True])
def test_batch_equals_streaming(adjust: bool) -> None:
    x, t = _irregular(4000, seed=4)
    f = TimeAwareEMA(5.0, adjust=adjust)
    stream = np.array([f.update(v, ti) for v, ti in zip(x, t, strict=True)])
    np.testing.assert_allclose(time_aware_ema(x, t, 5.0, adjust=adjust), stream, rtol=1e-12, atol=1e-12)
    state = f.state
    assert state is not None and state.last_t == t[-1] and state.value == stream[-1]


@pytest.mark.parametrize("n", [1, 5, 32, 33, 100])
def test_short_and_block_boundary_lengths(n: int) -> None:
    x, t = _irregular(n, seed=n)
    f = TimeAwareEMA(2.0)
    stream = np.array([f.update(v, ti) for v, ti in zip(x, t, strict=True)])
    batch = time_aware_ema(x, t, 2.0)
    if n <= 32:
        assert np.array_equal(batch, stream)  # the same code path: bit-identical
    np.testing.assert_allclose(batch, stream, rtol=1e-12, atol=1e-12)
    ref = pd.Series(x).ewm(alpha=0.3, adjust=False).mean().to_numpy()
    np.testing.assert_allclose(ema(x, 0.3), ref, rtol=0, atol=TOL)


def test_long_stream_and_large_gaps_are_stable() -> None:
    n = 1_000_000
    rng = np.random.default_rng(5)
    x = 100.0 + rng.normal(size=n)
    y = ema(x, 1e-4)
    assert np.isfinite(y).all()
    assert abs(y[-1] - 100.0) < 0.1  # converged to the mean, no drift or overflow
    np.testing.assert_allclose(y[-1000:], pd.Series(x).ewm(alpha=1e-4, adjust=False).mean().to_numpy()[-1000:])
    # gaps of 1e12 s with tau 1 s: exp underflows to 0 -> the value resets to the new sample, no NaN
    t = np.array([0.0, 1e12, 2e12, 2e12 + 1e-9])
    v = np.array([1.0, 5.0, -3.0, 100.0])
    y2 = time_aware_ema(v, t, 1.0)
    assert np.isfinite(y2).all()
    np.testing.assert_allclose(y2[:3], [1.0, 5.0, -3.0])
    assert abs(y2[3] - (-3.0)) < 1e-6  # an event 1 ns later barely moves it
    # the same through the vectorised block scan (> 32 points): gaps of 1e12 s inside blocks
    rng2 = np.random.default_rng(6)
    big_t = np.cumsum(rng2.choice([0.0, 1e-9, 0.5, 1e12], size=200))
    big_v = rng2.normal(size=200)
    for adjust in (False, True):
        f = TimeAwareEMA(1.0, adjust=adjust)
        stream = [f.update(a, b) for a, b in zip(big_v, big_t, strict=True)]
        vec = time_aware_ema(big_v, big_t, 1.0, adjust=adjust)
        assert np.isfinite(vec).all()
        np.testing.assert_allclose(vec, stream, rtol=1e-12, atol=1e-12)
    y3 = time_aware_ema(v, t, 1.0, adjust=True)
    np.testing.assert_allclose(y3[:3], [1.0, 5.0, -3.0])
    assert y3[3] == pytest.approx(48.5)  # normalised form: two simultaneous events share the weight


def test_burst_does_not_overweight() -> None:
    """100 events in 1 ms move the time-aware EMA by ~1e-3/tau, a per-event EMA by ~everything."""
    tau = 10.0
    x = np.r_[np.zeros(50), np.ones(100)]
    t = np.r_[np.arange(50.0) * 1.0, 49.0 + np.linspace(1e-5, 1e-3, 100)]
    y_time = time_aware_ema(x, t, tau)
    assert y_time[-1] < 1e-3 / tau * 1.01
    y_count = ema(x, 1.0 - math.exp(-1.0 / tau))
    assert y_count[-1] > 0.99


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError):
        ema([1.0], 0.0)
    with pytest.raises(ValueError):
        time_aware_ema([1.0, 2.0], [1.0, 0.0], 1.0)
    with pytest.raises(ValueError):
        time_aware_ema([1.0, math.nan], [0.0, 1.0], 1.0)
    f = TimeAwareEMA(1.0)
    f.update(1.0, 5.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        f.update(1.0, 4.0)
    assert math.isnan(EMAFilter(0.5).value) and math.isnan(TimeAwareEMA(1.0).value)


def test_state_round_trip() -> None:
    f = TimeAwareEMA(3.0)
    for v, ti in [(1.0, 0.0), (2.0, 1.5), (4.0, 2.0)]:
        f.update(v, ti)
    assert f.state is not None
    g = TimeAwareEMA.from_state(3.0, EMAState(*f.state))
    assert g.update(7.0, 9.0) == f.update(7.0, 9.0)


# up to 120 points: short series take the streaming path (<= 32), longer ones the block scan
_values = st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=120)
_gaps = st.lists(st.floats(0.0, 1e4, allow_nan=False), min_size=120, max_size=120)


@settings(max_examples=60, deadline=None)
@given(_values, _gaps, st.floats(1e-3, 1e3), st.booleans())
def test_property_bounded_by_running_min_max(xs: list[float], gaps: list[float], tau: float, adjust: bool) -> None:
    x = np.array(xs)
    t = np.cumsum(gaps[: x.size])
    y = time_aware_ema(x, t, tau, adjust=adjust)
    slack = 1e-9 * (1.0 + np.abs(x).max())
    assert (y >= np.minimum.accumulate(x) - slack).all()
    assert (y <= np.maximum.accumulate(x) + slack).all()


@settings(max_examples=60, deadline=None)
@given(_values, _gaps, st.floats(1e-3, 1e3), st.floats(1e-3, 1.0))
def test_property_monotone_in_monotone_out(xs: list[float], gaps: list[float], tau: float, alpha: float) -> None:
    x = np.sort(np.array(xs))
    t = np.cumsum(gaps[: x.size])
    slack = 1e-9 * (1.0 + np.abs(x).max())
    for y in (ema(x, alpha), time_aware_ema(x, t, tau), time_aware_ema(x, t, tau, adjust=True)):
        assert (np.diff(y) >= -slack).all()
        assert (y <= x + slack).all()  # lags behind a rising input, never overshoots


@settings(max_examples=30, deadline=None)
@given(st.floats(-1e6, 1e6), st.integers(1, 200), st.floats(1e-3, 1.0))
def test_property_constant_in_constant_out(c: float, n: int, alpha: float) -> None:
    np.testing.assert_allclose(ema(np.full(n, c), alpha), c, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_streaming_rejects_non_finite_values_like_batch(bad: float) -> None:
    """The online filters refuse what the batch functions refuse, and the state survives the refusal."""
    f = EMAFilter(0.5)
    f.update(1.0)
    with pytest.raises(ValueError, match="x must be finite"):
        f.update(bad)
    assert f.update(3.0) == 2.0  # the rejected sample left no trace
    g = TimeAwareEMA(1.0)
    g.update(1.0, 0.0)
    with pytest.raises(ValueError, match="x must be finite"):
        g.update(bad, 1.0)
    assert g.state == EMAState(1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="values must be finite"):
        ema([1.0, bad], 0.5)
    with pytest.raises(ValueError, match="values must be finite"):
        time_aware_ema([1.0, bad], [0.0, 1.0], 1.0)


@pytest.mark.parametrize("adjust", [False, True])
def test_streaming_rejects_nan_timestamp(adjust: bool) -> None:
    """A NaN time compares false with everything: it must not slip past the out-of-order check."""
    f = TimeAwareEMA(1.0, adjust=adjust)
    with pytest.raises(ValueError, match="t_s must be finite"):
        f.update(1.0, math.nan)  # not even as the first sample
    assert f.state is None
    f.update(1.0, 5.0)
    with pytest.raises(ValueError, match="t_s must be finite"):
        f.update(2.0, math.nan)
    with pytest.raises(ValueError, match="non-decreasing"):
        f.update(2.0, 4.0)  # the stored time is still 5.0
    with pytest.raises(ValueError, match="times_s must be finite"):
        time_aware_ema([1.0, 2.0], [5.0, math.nan], 1.0, adjust=adjust)


def test_pandas_agreement_needs_exact_timestamps() -> None:
    """The 1e-9 match holds for float seconds since a nearby origin vs datetime64[ms] (present-day dates).

    Epoch float seconds in 2023 resolve only 2**-22 s (2.4e-7 s), and pandas casts the int64 counts
    of datetime64[ns] to float64 (256 ns steps in 2023): either rounding moves the result by ~1e-7.
    """
    x, t_rel = _irregular(2000, seed=7)
    t_ms = 1_700_000_000_000 + np.round(t_rel * 1000).astype(np.int64)  # Nov 2023, whole milliseconds
    times = pd.DatetimeIndex(pd.to_datetime(t_ms, unit="ms"))
    tau = 0.5 / math.log(2)

    def pandas_mean(unit: str) -> np.ndarray:
        s = pd.Series(x).ewm(halflife=pd.Timedelta(seconds=0.5), times=times.as_unit(unit))
        return s.mean().to_numpy()

    since_first = (t_ms - t_ms[0]) / 1000.0
    mine = time_aware_ema(x, since_first, tau, adjust=True)
    np.testing.assert_allclose(mine, pandas_mean("ms"), rtol=0, atol=TOL)
    np.testing.assert_allclose(mine, pandas_mean("us"), rtol=0, atol=TOL)
    assert np.abs(mine - pandas_mean("ns")).max() > 1e-8  # pandas' own rounding of ns counts
    epoch_s = t_ms / 1000.0
    assert np.abs(time_aware_ema(x, epoch_s, tau, adjust=True) - pandas_mean("ms")).max() > 1e-8
