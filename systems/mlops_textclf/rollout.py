"""Rollout: who answers a request during a rollout, and the analysis that advances, promotes or rolls back.

    curl -XPOST :8004/admin/rollout -H 'Authorization: Bearer $TOKEN' -d '{"strategy": "canary"}'
    mlsd textclf rollout --strategy canary     # the same, against a running `mlsd textclf serve`

This module is the rollout's logic without HTTP (``serve.py`` hosts it), so every decision is unit-testable.

**Strategies.** *Shadow*: the challenger scores every request, its answer is never returned; the analysis judges
it on the same requests as the champion (nothing a user sees is at risk, the cost is a second model call).
*Canary*: the challenger answers a growing share of traffic (``steps``, e.g. 5 → 25 → 50 → 100 %), each step held
for ``step_s`` and judged before the next. *Blue/green*: a shadow phase, then every request switches at once;
the old model stays loaded (blue), so switching back is instant. After any promotion the previous model keeps
scoring every request in shadow for ``post_promotion_s``, and the same analysis can still roll back.

**Sticky assignment.** The arm is a hash of the request key (a user or session id; the prediction id when none
is given): ``sha1(key) mod 10,000 < percent · 100``. A user stays on one model while the percent holds, and a
user on the challenger at 5 % is still on it at 25 % (the buckets below 500 are below 2,500).

**The analysis** (every ``tick_s``), on the challenger against the champion over the current step:

- *errors*: share of challenger calls that raised, at most ``max_error_rate``;
- *latency*: challenger p99 over champion p99 (model time, from the same step) at most ``max_p99_ratio``
  (a p99 under ``p99_floor_ms`` passes whatever the ratio: at a fraction of the budget a ratio is noise). Both
  arms are compared at the same quantile, the highest the smaller arm can estimate (``tail_samples`` calls above
  it): p99 from 1,000 calls each, p90 while a 5 % canary has 100;
- *prediction shift*: the positive rates of challenger and champion must not differ by more than ``max_shift``
  *with confidence* (the bound of :func:`mixture_test`; a raw difference over 50 requests is mostly noise). A
  model that says "positive" to everything is caught before any label arrives;
- *quality on delayed feedback*: labels arrive on ``textclf.feedback``; once both arms have ``min_samples``
  labelled predictions, an always-valid two-sample test of their error rates (:func:`quality_test`, a mixture
  sequential probability ratio test) is checked at every tick: evidence that the challenger is worse rolls it
  back; the promotion also needs the confidence sequence's upper bound on "challenger error − champion error"
  below ``quality_delta``. A sequential test may be looked at as often as we like at the stated α; a fixed-n
  test peeked at every tick would reject a good model far more often than α. (Wald's SPRT with the champion's
  *estimated* error rate plugged in as if it were known rolled back 15 % of equally good canaries in our
  simulation at α = 5 %: the test below keeps that under α.)

A step completes when it has run ``step_s`` with ``min_samples`` labels per arm and no evidence against the
challenger (with feedback off, after ``step_s`` alone); the last step promotes, so it also needs the
non-inferiority bound. Any failed check rolls back at once, and so does a step that is still short of its
labels ``max_label_wait_s`` after ``step_s``: an inconclusive analysis never promotes, nor holds forever. The
first three checks need ``min_requests`` per arm before they may judge, so three slow requests at the start
cannot roll back a model.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

Strategy = Literal["shadow", "canary", "bluegreen"]
Decision = Literal["hold", "advance", "promote", "rollback", "shadow_passed"]

BUCKETS = 10_000


def bucket(key: str) -> int:
    """The request's sticky bucket in [0, 10,000)."""
    return int.from_bytes(hashlib.sha1(key.encode(), usedforsecurity=False).digest()[:4], "big") % BUCKETS


def on_challenger(key: str, percent: float) -> bool:
    return bucket(key) < percent * (BUCKETS / 100.0)


class RolloutPlan(BaseModel):
    """What an operator starts (``POST /admin/rollout``): the strategy and the analysis' limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Strategy = "canary"
    steps: list[float] = Field(default_factory=lambda: [5.0, 25.0, 50.0, 100.0])
    """Canary traffic percentages, in order; the last must be 100."""
    step_s: float = Field(default=30.0, ge=0.0)
    """Least time each step (and the shadow phase) runs before it may complete."""
    min_requests: int = Field(default=50, ge=1)
    min_samples: int = Field(default=100, ge=10)
    """Labelled predictions each arm needs before the quality test may decide."""
    max_error_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    max_p99_ratio: float = Field(default=2.0, gt=0.0)
    p99_floor_ms: float = Field(default=10.0, ge=0.0)
    """A challenger p99 under this is never a latency failure, whatever the ratio (the budget is 50 ms)."""
    tail_samples: int = Field(default=10, ge=1)
    """The latency check compares the highest quantile (at most p99) that leaves this many calls above it in
    the *smaller* arm: a 5 % canary's p99 over 100 calls is its single slowest call, so one preemption of a
    busy host would read as a regression against the champion's p99 over 2,000."""
    max_shift: float = Field(default=0.1, gt=0.0, le=1.0)
    """Roll back when the positive rates differ by more than this, with confidence (an always-valid bound)."""
    quality_delta: float = Field(default=0.05, gt=0.0, lt=1.0)
    """The smallest increase of the error rate the quality test must catch (p₁ − p₀)."""
    alpha: float = Field(default=0.05, gt=0.0, lt=0.5)
    feedback: bool = True
    """Wait for the quality test at each step (False: ops checks only, as Argo Rollouts or Flagger do)."""
    post_promotion_s: float = Field(default=60.0, ge=0.0)
    """How long the previous model keeps scoring in shadow after a promotion, with the analysis still on."""
    max_label_wait_s: float = Field(default=300.0, gt=0.0)
    """A step still short of ``min_samples`` labels this long after ``step_s`` is *inconclusive* and rolls back:
    no evidence is not evidence of health (a stalled feedback topic must not leave a canary half-deployed)."""

    @model_validator(mode="after")
    def _check(self) -> RolloutPlan:
        if self.strategy == "canary":
            if not self.steps or self.steps[-1] != 100.0:
                raise ValueError("canary steps must end at 100")
            if any(not 0 < s <= 100 for s in self.steps) or sorted(self.steps) != list(self.steps):
                raise ValueError("canary steps must rise within (0, 100]")
        return self


class ArmStats:
    """One model's calls, errors, model latency, positive answers and labelled outcomes in the current step."""

    def __init__(self, window: int = 20_000) -> None:
        self.calls = 0
        self.errors = 0
        self.positives = 0
        self.latency_ms: deque[float] = deque(maxlen=window)
        self.labelled = 0
        self.wrong = 0

    def record(self, *, positive: bool, latency_ms: float) -> None:
        self.calls += 1
        self.positives += int(positive)
        self.latency_ms.append(latency_ms)

    def record_error(self) -> None:
        self.calls += 1
        self.errors += 1

    def record_label(self, correct: bool) -> None:
        self.labelled += 1
        self.wrong += int(not correct)

    def p99(self) -> float | None:
        return self.quantile(99.0)

    def quantile(self, q: float) -> float | None:
        return float(np.percentile(np.fromiter(self.latency_ms, float), q)) if self.latency_ms else None

    def as_dict(self) -> dict[str, Any]:
        answered = self.calls - self.errors
        return {
            "calls": self.calls,
            "errors": self.errors,
            "positive_rate": round(self.positives / answered, 4) if answered else None,
            "p99_ms": None if (p := self.p99()) is None else round(p, 3),
            "labelled": self.labelled,
            "error_rate_on_labels": round(self.wrong / self.labelled, 4) if self.labelled else None,
        }


@dataclass
class Verdict:
    decision: Decision
    reason: str
    checks: dict[str, Any] = field(default_factory=dict)


def mixture_test(k0: int, n0: int, k1: int, n1: int, *, tau: float, alpha: float) -> dict[str, float]:
    """Always-valid test of "rate 1 equals rate 0" from ``k`` successes in ``n`` trials of two independent arms.

    The difference θ̂ = p̂₁ − p̂₀ has variance s² = Σ p̂(1−p̂)/n; with a N(0, τ²) mixture over the true
    difference, the likelihood ratio of the observed θ̂ is ``Λ = √(s²/(s²+τ²)) · exp(τ²θ̂² / (2s²(s²+τ²)))``
    (the mixture SPRT of Johari et al., 2017). Rejecting when Λ ≥ 1/α keeps the false-rejection rate at α
    however often it is looked at, and the matching confidence sequence gives ``lower``/``upper`` bounds on θ
    that hold at every look. Neither rate is treated as known: both arms' noise is in s².
    """
    n0, n1 = max(n0, 1), max(n1, 1)
    # rates smoothed away from 0 and 1, so that a perfect arm still has a variance
    p0, p1 = (k0 + 0.5) / (n0 + 1), (k1 + 0.5) / (n1 + 1)
    diff = p1 - p0
    s2 = p0 * (1 - p0) / n0 + p1 * (1 - p1) / n1
    t2 = tau * tau
    log_lr = 0.5 * math.log(s2 / (s2 + t2)) + t2 * diff * diff / (2 * s2 * (s2 + t2))
    half = math.sqrt(s2 * (s2 + t2) / t2 * (math.log((s2 + t2) / s2) + 2 * math.log(1 / alpha)))
    return {
        "rate_0": round(p0, 5),
        "rate_1": round(p1, 5),
        "difference": round(diff, 5),
        "likelihood_ratio": round(math.exp(min(log_lr, 700.0)), 4),
        "lower": round(diff - half, 5),
        "upper": round(diff + half, 5),
    }


def quality_test(champion: ArmStats, challenger: ArmStats, *, tau: float, alpha: float) -> dict[str, float]:
    """:func:`mixture_test` on the two arms' wrong answers among their labelled ones."""
    t = mixture_test(champion.wrong, champion.labelled, challenger.wrong, challenger.labelled, tau=tau, alpha=alpha)
    return t | {"champion_error": t["rate_0"], "challenger_error": t["rate_1"]}


def analyse(
    plan: RolloutPlan, champion: ArmStats, challenger: ArmStats, *, step_elapsed_s: float, final: bool = False
) -> Verdict:
    """The analysis of one step: ``rollback`` on any failed check, else ``advance`` when the step is done.

    ``final``: completing this step promotes, so the quality test must also show the challenger is not worse
    by ``quality_delta`` (the upper confidence bound of the error difference below it)."""
    checks: dict[str, Any] = {}
    if challenger.calls >= plan.min_requests:
        rate = challenger.errors / challenger.calls
        checks["error_rate"] = round(rate, 4)
        if rate > plan.max_error_rate:
            return Verdict("rollback", f"challenger error rate {rate:.1%} > {plan.max_error_rate:.1%}", checks)
    enough = min(champion.calls - champion.errors, challenger.calls - challenger.errors) >= plan.min_requests
    if enough:
        smaller = min(len(champion.latency_ms), len(challenger.latency_ms))
        q = min(99.0, 100.0 * (1.0 - plan.tail_samples / smaller)) if smaller else 0.0
        p_ch, p_champ = challenger.quantile(q), champion.quantile(q)
        if q >= 50.0 and p_ch is not None and p_champ:
            ratio = p_ch / max(p_champ, 1e-3)
            checks["p99_ratio"] = round(ratio, 3)
            checks["latency_quantile"] = round(q, 2)
            if ratio > plan.max_p99_ratio and p_ch > plan.p99_floor_ms:
                return Verdict(
                    "rollback", f"challenger latency p{q:g} {p_ch:.2f} ms is {ratio:.1f}× the champion's", checks
                )
        shift = mixture_test(
            champion.positives,
            champion.calls - champion.errors,
            challenger.positives,
            challenger.calls - challenger.errors,
            tau=plan.max_shift,
            alpha=plan.alpha,
        )
        checks["positive_rate_shift"] = shift
        if shift["lower"] > plan.max_shift or shift["upper"] < -plan.max_shift:
            return Verdict(
                "rollback",
                f"positive rate {shift['rate_1']:.1%} vs the champion's {shift['rate_0']:.1%}: differs by more than "
                f"{plan.max_shift:.0%} with confidence {1 - plan.alpha:.0%}",
                checks,
            )
    quality_ok = not plan.feedback
    if plan.feedback and min(champion.labelled, challenger.labelled) >= plan.min_samples:
        test = quality_test(champion, challenger, tau=plan.quality_delta, alpha=plan.alpha)
        checks["quality"] = test
        if test["difference"] > 0 and test["likelihood_ratio"] >= 1.0 / plan.alpha:
            return Verdict(
                "rollback",
                f"challenger wrong on {test['challenger_error']:.1%} of {challenger.labelled} labelled answers vs "
                f"champion {test['champion_error']:.1%} (sequential test, α={plan.alpha})",
                checks,
            )
        # an intermediate step needs no evidence against; the promotion needs evidence for (non-inferiority)
        quality_ok = not final or test["upper"] < plan.quality_delta
    elif plan.feedback:
        checks["waiting_for_labels"] = {"champion": champion.labelled, "challenger": challenger.labelled}
        if step_elapsed_s >= plan.step_s + plan.max_label_wait_s:
            return Verdict(
                "rollback",
                f"inconclusive: {min(champion.labelled, challenger.labelled)} of {plan.min_samples} labelled answers "
                f"per model after {step_elapsed_s:.0f} s (is the feedback topic flowing?)",
                checks,
            )
    if step_elapsed_s >= plan.step_s and quality_ok and enough:
        return Verdict("advance", "step passed", checks)
    return Verdict("hold", "collecting evidence", checks)


@dataclass
class RolloutState:
    """Where a rollout is (serve.py swaps the whole object, so a request sees one consistent state)."""

    plan: RolloutPlan
    phase: Literal["shadow", "canary", "switched", "post_promotion", "done"]
    step: int = 0
    percent: float = 0.0
    started: float = field(default_factory=time.monotonic)
    step_started: float = field(default_factory=time.monotonic)
    outcome: str | None = None
    reason: str | None = None

    @property
    def shadow(self) -> bool:
        """Whether the second model scores every request without answering."""
        return self.phase in ("shadow", "post_promotion")

    @classmethod
    def start(cls, plan: RolloutPlan) -> RolloutState:
        if plan.strategy == "canary":
            return cls(plan=plan, phase="canary", percent=plan.steps[0])
        return cls(plan=plan, phase="shadow", percent=0.0)

    def next(self) -> tuple[RolloutState, Decision]:
        """The state after the current step passed, and what that means (advance, promote, shadow_passed)."""
        now = time.monotonic()
        if self.phase == "canary" and self.step + 1 < len(self.plan.steps):
            step = self.step + 1
            state = RolloutState(self.plan, "canary", step, self.plan.steps[step], self.started, now)
            return state, "advance"
        if self.phase == "shadow" and self.plan.strategy == "shadow":
            return RolloutState(self.plan, "done", self.step, 0.0, self.started, now, "shadow_passed"), "shadow_passed"
        return RolloutState(self.plan, "post_promotion", self.step, 100.0, self.started, now), "promote"
