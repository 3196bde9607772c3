"""A/B testing as an experiment: assignment, exposure log, a user simulator, and the analysis.

- Assignment: ``sha256(experiment:user)`` → a uniform number in [0, 1) → variant by cumulative weight.
  Deterministic (a user sees the same variant on every request and every replica), independent across
  experiments (the experiment name salts the hash), no state to store.
- Exposures: one record per served slate (variant, user, items, latency) — the denominator of CTR.
- Simulator: each test user browses; they click a shown item with probability ``p_click`` if it is among
  their held-out *future* interactions, else with ``p_noise``; clicks join the session for the next request.
- Analysis: CTR per variant with a delta-method CI (users are the randomisation unit, impressions are not
  independent), a two-sided z-test on the difference, a sample-ratio-mismatch χ² test, and a p99 latency
  guardrail; a variant that breaks the guardrail is stopped during the run.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from systems.recsys.settings import RecsysSettings


@dataclass
class Experiment:
    name: str
    variants: tuple[str, ...]  # variants[0] is the control
    weights: tuple[float, ...]
    latency_guardrail_ms: float = 50.0
    guardrail_relative: float = 0.2
    """A treatment breaks the guardrail when its p99 is above the absolute limit *and* more than 20% above the
    control's p99: on shared machines both arms slow down together, and that is not the variant's fault."""
    check_every: int = 100
    min_samples: int = 200
    stopped: set[str] = field(default_factory=set)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        if len(self.variants) != len(self.weights) or len(self.variants) < 2:
            raise ValueError("need >= 2 variants with one weight each")
        if not math.isclose(sum(self.weights), 1.0, abs_tol=1e-6):
            raise ValueError(f"weights must sum to 1, got {self.weights}")

    @classmethod
    def from_settings(cls, settings: RecsysSettings) -> Experiment | None:
        if not settings.experiment:
            return None
        variants = tuple(v.strip() for v in settings.experiment_variants.split(","))
        weights = tuple(float(w) for w in settings.experiment_weights.split(","))
        return cls(settings.experiment, variants, weights, settings.latency_guardrail_ms)

    def bucket(self, user_key: int | str) -> float:
        """Uniform in [0, 1), a pure function of (experiment, user)."""
        h = hashlib.sha256(f"{self.name}:{user_key}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64

    def assigned(self, user_key: int | str) -> str:
        """The variant by hash only (what the analysis groups by, stopped or not)."""
        x, acc = self.bucket(user_key), 0.0
        for v, w in zip(self.variants, self.weights, strict=True):
            acc += w
            if x < acc:
                return v
        return self.variants[-1]

    def assign(self, user_key: int | str) -> str:
        """The variant to serve: the hashed one, or the control once that variant has been stopped."""
        v = self.assigned(user_key)
        return self.variants[0] if v in self.stopped else v

    def breaks_guardrail(self, p99_ms: float, control_p99_ms: float) -> bool:
        return p99_ms > max(self.latency_guardrail_ms, (1 + self.guardrail_relative) * control_p99_ms)

    def record_latency(self, variant: str, latency_ms: float) -> None:
        """Feed the guardrail; stops a treatment variant whose running p99 breaks it."""
        lat = self.latencies[variant]
        lat.append(latency_ms)
        due = variant != self.variants[0] and len(lat) >= self.min_samples and len(lat) % self.check_every == 0
        if due:
            control = self.latencies[self.variants[0]]
            c99 = float(np.percentile(control, 99)) if control else 0.0
            if self.breaks_guardrail(float(np.percentile(lat, 99)), c99):
                self.stopped.add(variant)


def delta_ratio(clicks: np.ndarray, impressions: np.ndarray) -> tuple[float, float]:
    """Ratio-of-sums CTR over users and its variance by the delta method."""
    n = len(clicks)
    mc, mi = clicks.mean(), impressions.mean()
    r = mc / mi
    if n < 2:
        return float(r), float("nan")
    cov = np.cov(clicks, impressions, ddof=1)
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (n * mi * mi)
    return float(r), float(max(var, 0.0))


def analyze(
    exposures: pd.DataFrame, experiment: Experiment, *, alpha: float = 0.05, srm_alpha: float = 0.001
) -> dict[str, Any]:
    """exposures: one row per slate with columns variant, user_id, impressions, clicks, latency_ms.

    ``variant`` must be the *assigned* variant (intention to treat), so stopping a variant does not bias it.
    """
    z = stats.norm.ppf(1 - alpha / 2)
    per_user = exposures.groupby(["variant", "user_id"], as_index=False)[["impressions", "clicks"]].sum()
    out: dict[str, Any] = {"experiment": experiment.name, "variants": {}}
    est: dict[str, tuple[float, float]] = {}
    control_lat = exposures.loc[exposures["variant"] == experiment.variants[0], "latency_ms"].to_numpy()
    control_p99 = float(np.percentile(control_lat, 99)) if len(control_lat) else 0.0
    for v in experiment.variants:
        g = per_user[per_user["variant"] == v]
        lat = exposures.loc[exposures["variant"] == v, "latency_ms"].to_numpy()
        if len(g) == 0:
            out["variants"][v] = {"users": 0}
            continue
        ctr, var = delta_ratio(g["clicks"].to_numpy(float), g["impressions"].to_numpy(float))
        est[v] = (ctr, var)
        p99 = float(np.percentile(lat, 99)) if len(lat) else float("nan")
        out["variants"][v] = {
            "users": len(g),
            "impressions": int(g["impressions"].sum()),
            "clicks": int(g["clicks"].sum()),
            "ctr": ctr,
            "ctr_ci": [ctr - z * math.sqrt(var), ctr + z * math.sqrt(var)],
            "latency_p99_ms": p99,
            "guardrail_ok": v == experiment.variants[0] or not experiment.breaks_guardrail(p99, control_p99),
            "stopped": v in experiment.stopped,
        }
    control = experiment.variants[0]
    tests = {}
    for v in experiment.variants[1:]:
        if v not in est or control not in est:
            continue
        (c0, v0), (c1, v1) = est[control], est[v]
        se = math.sqrt(v0 + v1)
        diff = c1 - c0
        zstat = diff / se if se > 0 else 0.0
        p = float(2 * (1 - stats.norm.cdf(abs(zstat))))
        tests[v] = {
            "diff": diff,
            "diff_ci": [diff - z * se, diff + z * se],
            "relative_lift": diff / c0 if c0 > 0 else float("nan"),
            "z": zstat,
            "p_value": p,
            "significant": p < alpha,
        }
    out["tests"] = tests
    counts = np.array([out["variants"][v].get("users", 0) for v in experiment.variants], dtype=float)
    expected = counts.sum() * np.asarray(experiment.weights)
    chi2, p_srm = stats.chisquare(counts, expected) if counts.sum() > 0 else (0.0, 1.0)
    out["srm"] = {
        "users": counts.astype(int).tolist(),
        "expected": expected.tolist(),
        "chi2": float(chi2),
        "p_value": float(p_srm),
        "mismatch": bool(p_srm < srm_alpha),
    }
    return out


def simulate(
    recommend: Callable[[int, list[int], str], tuple[list[int], float]],
    experiment: Experiment,
    future: dict[int, set[int]],
    *,
    requests_per_user: int = 4,
    p_click: float = 0.6,
    p_noise: float = 0.005,
    seed: int = 0,
) -> pd.DataFrame:
    """Run every user in ``future`` through the experiment.

    recommend(user_id, session_item_ids, ranker) -> (item_ids shown, latency_ms). ``future`` maps public user
    ids to their held-out item ids. Returns the exposure log (one row per slate).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for user in sorted(future):
        truth = future[user]
        session: list[int] = []
        for _ in range(requests_per_user):
            assigned = experiment.assigned(user)
            served = experiment.assign(user)
            items, latency = recommend(user, session, served)
            experiment.record_latency(served, latency)
            p = np.where(np.isin(items, list(truth)), p_click, p_noise)
            clicked = [i for i, pi in zip(items, p, strict=True) if rng.random() < pi]
            session.extend(clicked)
            rows.append(
                {
                    "variant": assigned,
                    "served": served,
                    "user_id": user,
                    "impressions": len(items),
                    "clicks": len(clicked),
                    "latency_ms": latency,
                }
            )
    return pd.DataFrame(rows)


def synthetic_exposures(
    experiment: Experiment,
    ctrs: dict[str, float],
    latency_ms: dict[str, float],
    *,
    n_users: int,
    impressions: int = 10,
    seed: int = 0,
) -> pd.DataFrame:
    """Exposures with a known true CTR per variant (for testing the analysis). Users vary in propensity."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        v = experiment.assigned(u)
        # per-user heterogeneity (beta around the variant's CTR) makes impressions within a user correlated
        p = rng.beta(2, 2 / ctrs[v] - 2)
        clicks = int(rng.binomial(impressions, p))
        rows.append(
            {
                "variant": v,
                "user_id": u,
                "impressions": impressions,
                "clicks": clicks,
                "latency_ms": float(rng.gamma(4, latency_ms[v] / 4)),
            }
        )
    return pd.DataFrame(rows)
