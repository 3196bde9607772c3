"""Exponential moving average filters for real-time sensor streams.

The question
------------
    "You are given a stream of real-time sensor data. Implement a basic
    exponential moving average filter to smooth the data, ensuring it handles
    varying data rates efficiently."

What the interviewer tests
--------------------------
* O(1) state and O(1) work per sample: no window buffer, just the current value
  (plus the last timestamp for the time-aware filter).
* Initialisation: starting at 0 biases the first outputs towards 0; starting at
  the first sample (``y0 = x0``) does not.
* *Varying data rates*: a per-sample ``alpha`` means "smooth over N samples", so
  a burst of 100 events in one second would wash out all history, and a value
  arriving after an hour of silence would only move the average by ``alpha``.
  The fix is to decay by elapsed time: ``a = exp(-Δt/τ)``,
  ``y ← a·y + (1 - a)·x``. A burst (small Δt) gets little weight; a long gap
  (``Δt ≫ τ``) forgets the old value (``a → 0``) without overflow.
* Numerical care: ``1 - exp(-Δt/τ)`` via ``expm1`` (exact for tiny Δt), no
  growing normalisers, no ``(1-α)^-t`` closed forms that overflow on long streams.

Approach
--------
* ``EMAFilter(alpha)`` / ``ema(values, alpha)``: regular rate,
  ``y_t = (1-α) y_{t-1} + α x_t``, ``y_0 = x_0``. Equals
  ``pandas.Series.ewm(alpha=α, adjust=False).mean()``.
* ``TimeAwareEMA(tau_s)`` / ``time_aware_ema(values, times_s, tau_s)``:
  ``y_i = a_i y_{i-1} + (1 - a_i) x_i`` with ``a_i = exp(-(t_i - t_{i-1})/τ)``
  and ``y_0 = x_0``. On a regular grid of spacing Δ this *is* ``ema`` with
  ``α = 1 - exp(-Δ/τ)`` (so equals pandas ``adjust=False``).
* ``adjust=True`` gives pandas' normalised estimator instead,
  ``y_i = Σ_j w_ij x_j / Σ_j w_ij`` with ``w_ij = exp(-(t_i - t_j)/τ)``, kept in
  O(1) state as (value, weight): ``W ← a·W + 1``, ``y ← y + (x - y)/W``.

The exact correspondence with pandas (checked against real pandas in the tests)
--------------------------------------------------------------------------------
``pandas.ewm(halflife=h, times=t)`` only exists with ``adjust=True``; its weights
are ``0.5^((t_i - t_j)/h) = exp(-(t_i - t_j)/τ)`` with ``h = τ·ln 2``. So:

* ``time_aware_ema(x, t, τ, adjust=True)`` == ``ewm(halflife=τ·ln2, times=t).mean()``
  on any (irregular) timestamps, to 1e-9, when both sides hold the times exactly:
  ours as float seconds since a nearby origin (e.g. the first event), pandas' as
  ``datetime64[ms]`` or ``[us]``. Two roundings break it, each moving the result by
  ~(time rounding / τ) × the spread of the values (measured: up to 1e-6 with
  τ = 0.7 s on values of std 3): float *epoch* seconds resolve only
  2**-22 s (2.4e-7 s) in the 2020s, and pandas casts the int64 counts of ``times`` to
  float64 before differencing them, which rounds present-day ``datetime64[ns]`` to
  256 ns (``[ns]`` is exact only within 2**53 ns, ~104 days, of 1970).
* the default ``adjust=False`` filter weights sample j by ``(1 - a_j)·Π_{k>j} a_k``
  (the time it "covers"), pandas by ``Π_{k>j} a_k`` (one vote per event). These
  are different estimators on irregular data, and pandas has no
  ``adjust=False`` with ``times``; they coincide only on a regular grid, where
  both reduce to ``ewm(alpha=1 - exp(-Δ/τ), adjust=False)`` (and pandas'
  ``adjust=True`` differs from that by a start-up transient ``∝ exp(-(t-t0)/τ)``).
  The default is the one that does not over-weight bursts: k events at the same
  instant move it by nothing, while the normalised form gives them k votes.

The batch versions are vectorised: the recursion is a first-order linear scan
``y_i = a_i y_{i-1} + b_i``, computed in blocks of ``_BLOCK`` samples with a
(block, block) matrix of decays ``exp(D_i - D_j) <= 1`` (never overflows) and a
short carry loop between blocks. They agree with the streaming classes to
~1e-12 relative (floating-point reassociation, not bit-for-bit). Series of at
most ``_BLOCK`` points (one customer's recent history, say) run the streaming
update itself: faster at that size, and bit-identical to the online path.

Used by: the fraud velocity features (``systems.fraud``), the same filter online
(streaming class) and offline (batch function).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["EMAFilter", "EMAState", "TimeAwareEMA", "ema", "time_aware_ema"]

_BLOCK = 32  # samples per block of the vectorised scan: O(n * _BLOCK) flops
_BLOCKS_PER_CHUNK = 256  # bounds the temporary (chunk, _BLOCK, _BLOCK) array to 8 MiB
_MIN_LOG_DECAY = -1e4  # exp(-1e4) == 0.0 in float64; keeps log-decays finite (no inf - inf)


def _finite(v: float, name: str) -> float:
    """``float(v)``, or ``ValueError`` if it is NaN or infinite (the streaming twin of ``_as_1d``)."""
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"{name} must be finite, got {f}")
    return f


class EMAState(NamedTuple):
    """The whole O(1) state of a time-aware EMA (store it per key, e.g. in Redis)."""

    value: float
    last_t: float
    weight: float = 1.0  # only used with adjust=True: Σ_j exp(-(t - t_j)/τ)


class EMAFilter:
    """Streaming EMA for a regular sample rate: ``y ← y + α (x - y)``, ``y0 = x0``."""

    def __init__(self, alpha: float) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._value = math.nan
        self._started = False

    @property
    def value(self) -> float:
        """Current smoothed value (NaN before the first sample)."""
        return self._value

    def update(self, x: float) -> float:
        """Feed one sample, return the new smoothed value.

        A NaN or inf sample raises ``ValueError`` (as ``ema`` does): the recursion would
        otherwise carry it into every later value, and the state would never recover.
        """
        x = _finite(x, "x")
        if not self._started:
            self._value, self._started = x, True
        else:
            # Same as (1-α)·y + α·x, written as a correction so y stays in range.
            self._value += self.alpha * (x - self._value)
        return self._value


class TimeAwareEMA:
    """Streaming EMA over irregular timestamps, decaying by elapsed time.

    ``a = exp(-Δt/τ)``; ``tau_s`` is the time constant in seconds (the half-life
    is ``τ·ln 2``). Timestamps must be non-decreasing.
    """

    def __init__(self, tau_s: float, *, adjust: bool = False) -> None:
        if not tau_s > 0.0 or not math.isfinite(tau_s):
            raise ValueError(f"tau_s must be a positive finite number, got {tau_s}")
        self.tau_s = tau_s
        self.adjust = adjust
        self._state: EMAState | None = None

    @classmethod
    def from_state(cls, tau_s: float, state: EMAState, *, adjust: bool = False) -> TimeAwareEMA:
        """Rebuild a filter from a stored state (e.g. one per card in an online store)."""
        f = cls(tau_s, adjust=adjust)
        f._state = state
        return f

    @property
    def state(self) -> EMAState | None:
        """(value, last_t, weight), or None before the first sample."""
        return self._state

    @property
    def value(self) -> float:
        """Current smoothed value (NaN before the first sample)."""
        return math.nan if self._state is None else self._state.value

    def update(self, x: float, t_s: float) -> float:
        """Feed sample ``x`` observed at time ``t_s`` (seconds), return the new value.

        A non-finite ``x`` or ``t_s`` raises ``ValueError`` (as ``time_aware_ema`` does):
        a NaN value would stick in the state for good, and a NaN timestamp compares
        false with everything, so it would slip past the out-of-order check.
        """
        x, t_s = _finite(x, "x"), _finite(t_s, "t_s")
        s = self._state
        if s is None:
            self._state = EMAState(x, t_s, 1.0)
            return x
        dt = t_s - s.last_t
        if dt < 0:
            raise ValueError(f"timestamps must be non-decreasing: {t_s} < {s.last_t}")
        if self.adjust:
            weight = math.exp(-dt / self.tau_s) * s.weight + 1.0
            value = s.value + (x - s.value) / weight
        else:
            weight = 1.0
            # 1 - exp(-dt/τ) via expm1: exact for dt ≪ τ, exactly 1 for dt ≫ τ (no overflow).
            value = s.value + (-math.expm1(-dt / self.tau_s)) * (x - s.value)
        self._state = EMAState(value, t_s, weight)
        return value


def _linear_scan(log_a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    """Vectorised ``y_i = exp(log_a_i) * y_{i-1} + b_i`` with ``y_{-1} = 0``.

    Inside a block, ``y_i = Σ_{j<=i} exp(D_i - D_j) b_j + exp(D_i) * carry`` where
    ``D`` is the cumulative log-decay in the block; ``D_i - D_j <= 0`` so every
    exponential is in [0, 1]. Blocks are then chained by a loop over n/_BLOCK carries.
    """
    n = b.shape[0]
    nb = -(-n // _BLOCK)
    pad = nb * _BLOCK - n
    la = np.concatenate([np.maximum(log_a, _MIN_LOG_DECAY), np.zeros(pad)]).reshape(nb, _BLOCK)
    bb = np.concatenate([b, np.zeros(pad)]).reshape(nb, _BLOCK)
    d = np.cumsum(la, axis=1)  # (nb, L): log of the product of decays since block start
    lower = np.tril(np.ones((_BLOCK, _BLOCK), dtype=bool))
    z = np.empty_like(bb)  # block-local result with a zero carry
    for s in range(0, nb, _BLOCKS_PER_CHUNK):
        dc = d[s : s + _BLOCKS_PER_CHUNK]
        diff = dc[:, :, None] - dc[:, None, :]  # (c, L, L): D_i - D_j
        w = np.where(lower, np.exp(np.minimum(diff, 0.0)), 0.0)  # decay from j to i, j <= i
        z[s : s + _BLOCKS_PER_CHUNK] = np.einsum("cij,cj->ci", w, bb[s : s + _BLOCKS_PER_CHUNK])
    decay_in = np.exp(d)  # (nb, L): decay from the previous block's last sample to i
    carries = np.empty(nb)
    carry = 0.0
    for i in range(nb):  # n / _BLOCK iterations of scalar work
        carries[i] = carry
        carry = decay_in[i, -1] * carry + z[i, -1]
    y = z + decay_in * carries[:, None]
    return y.reshape(-1)[:n]


def _as_1d(values: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def ema(values: ArrayLike, alpha: float) -> NDArray[np.float64]:
    """Batch EMA at a regular rate, ``y_0 = x_0``; equals pandas ``ewm(alpha=α, adjust=False)``."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    x = _as_1d(values, "values")
    if x.size == 0:
        return x.copy()
    if x.size <= _BLOCK:  # short series: the streaming loop is faster than the block scan
        f = EMAFilter(alpha)
        return np.array([f.update(v) for v in x.tolist()])
    log_a = np.full(x.size, math.log1p(-alpha) if alpha < 1.0 else _MIN_LOG_DECAY)
    b = alpha * x
    b[0] = x[0]  # first-point initialisation: y_0 = x_0 (the carry into sample 0 is 0)
    return _linear_scan(log_a, b)


def time_aware_ema(values: ArrayLike, times_s: ArrayLike, tau_s: float, *, adjust: bool = False) -> NDArray[np.float64]:
    """Batch time-aware EMA; the same numbers as feeding ``TimeAwareEMA`` one sample at a time."""
    if not tau_s > 0.0 or not math.isfinite(tau_s):
        raise ValueError(f"tau_s must be a positive finite number, got {tau_s}")
    x = _as_1d(values, "values")
    t = _as_1d(times_s, "times_s")
    if x.shape != t.shape:
        raise ValueError(f"values and times_s differ in length: {x.shape} vs {t.shape}")
    if x.size == 0:
        return x.copy()
    dt = np.diff(t, prepend=t[0])
    if np.any(dt < 0):
        raise ValueError("times_s must be non-decreasing")
    if x.size <= _BLOCK:  # short series (e.g. one customer's day): the streaming loop, bit-identical
        f = TimeAwareEMA(tau_s, adjust=adjust)
        return np.array([f.update(v, ti) for v, ti in zip(x.tolist(), t.tolist(), strict=True)])
    log_a = -dt / tau_s  # log of exp(-Δt/τ), exact (no exp/log round trip)
    if adjust:
        num = _linear_scan(log_a, x)  # Σ_j w_ij x_j
        den = _linear_scan(log_a, np.ones_like(x))  # Σ_j w_ij  (>= 1, no division by 0)
        return num / den
    b = -np.expm1(log_a) * x  # (1 - a_i) x_i
    b[0] = x[0]
    return _linear_scan(log_a, b)
