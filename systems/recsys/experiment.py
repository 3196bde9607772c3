"""``mlsd recsys abtest``: a simulated A/B experiment between two arms of the served model.

The quality study's test stage is the world: every model is fitted on what precedes each user's test window,
and the window's interactions are the future the simulated shoppers click on. Each test user browses through
:meth:`ServedModel.recommend` — the call the API makes, with the user's request time — in the arm the hash
assigns; clicked items join the session of the next request. The hash assignment, exposure log, click model
and analysis are in ``abtest.py``. The default arms are our pipeline (control) against its strongest single
source, co-visitation: does the ranker earn its place online too?

This replays the same held-out interactions the offline test scores, through a click model: it exercises the
experiment machinery (assignment, exposures, CIs, SRM, the latency guardrail), it is not independent evidence.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from systems.recsys.abtest import Experiment, analyze, simulate
from systems.recsys.served import ServedModel


def run_simulated_experiment(
    model: ServedModel,
    *,
    request_ts: dict[Any, int],
    future: dict[Any, set[Any]],
    name: str = "ranker-v1",
    variants: tuple[str, ...] = ("pipeline", "covisit"),
    requests_per_user: int = 4,
    guardrail_ms: float = 50.0,
    seed: int = 0,
    extra_latency_ms: dict[str, float] | None = None,
    exposure_log: Path | None = None,
) -> dict[str, Any]:
    """Run the experiment over the users of ``future`` (public user id → the public item ids they will engage
    with); returns the analysis. ``extra_latency_ms`` adds a fixed delay to an arm (a deliberately slow arm
    shows the guardrail stopping it)."""
    unknown = set(variants) - set(model.kinds())
    if unknown:
        raise ValueError(f"unknown arms {sorted(unknown)}: this model can serve {model.kinds()}")
    exp = Experiment(name, variants, tuple([1.0 / len(variants)] * len(variants)), guardrail_ms)
    extra = extra_latency_ms or {}

    def recommend(user: Any, session: list[Any], arm: str) -> tuple[list[Any], float]:
        t = time.perf_counter()
        ans = model.recommend(user_id=user, session_ids=session, k=10, now=request_ts[user], kind=arm)
        if arm in extra:
            time.sleep(extra[arm] / 1e3)
        return ans.item_ids, (time.perf_counter() - t) * 1e3

    log = simulate(recommend, exp, future, requests_per_user=requests_per_user, seed=seed)
    res = analyze(log, exp)
    if exposure_log is not None:
        exposure_log.parent.mkdir(parents=True, exist_ok=True)
        log.to_parquet(exposure_log)
        res["exposure_log"] = str(exposure_log)
    res["slates"] = len(log)
    res["stopped"] = sorted(exp.stopped)
    res["served_share"] = {v: float(np.mean(log["served"] == v)) for v in variants}
    res["arms"] = list(variants)
    return res


def test_stage_world(
    model: ServedModel, truth: list[np.ndarray], users: np.ndarray, request_ts: np.ndarray
) -> tuple[dict[Any, int], dict[Any, set[Any]]]:
    """(request time, future items) per public user id, from a protocol stage's held-out windows."""
    times = {model.users.ids[int(u)]: int(t) for u, t in zip(users, request_ts, strict=True)}
    future = {
        model.users.ids[int(u)]: {model.items.ids[int(i)] for i in items} for u, items in zip(users, truth, strict=True)
    }
    return times, future
