"""``mlsd recsys abtest``: a simulated A/B experiment between rankers through the serving code path.

Users with held-out future interactions (the test side of the temporal split) browse through
:class:`~systems.recsys.serve.RecsysService` (same feature lookups, candidates, ranker and re-ranking as the
API); the hash assignment, exposure log, click simulation and analysis are in ``abtest.py``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from systems.recsys.abtest import Experiment, analyze, simulate
from systems.recsys.settings import RecsysSettings


def run_simulated_experiment(
    settings: RecsysSettings,
    *,
    name: str = "ranker-v1",
    variants: tuple[str, ...] = ("lgbm", "deep"),
    requests_per_user: int = 4,
    guardrail_ms: float = 50.0,
    test_fraction: float = 0.2,
    seed: int = 0,
    use_feature_store: bool = True,
    extra_latency_ms: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Run the experiment; returns the analysis plus where the exposure log was written.

    ``extra_latency_ms`` adds a fixed delay to a variant (a deliberately slow variant shows the guardrail).
    """
    import torch
    from threadpoolctl import threadpool_limits

    from systems.recsys.data import load_catalogue_and_interactions, temporal_split
    from systems.recsys.pipeline import Artifacts, Recommender
    from systems.recsys.serve import RecsysService

    torch.set_num_threads(1)
    threadpool_limits(1)
    cat, inter = load_catalogue_and_interactions(settings)
    split = temporal_split(inter, test_fraction=test_fraction, n_users=cat.n_users, n_items=cat.n_items)
    future = {int(u) + 1: {int(i) + 1 for i in g["item_idx"]} for u, g in split.test.groupby("user_idx")}
    store = None
    if use_feature_store and (settings.feast_dir / "registry.db").exists():
        from systems.recsys.feature_store import open_store

        store = open_store(settings)
    svc = RecsysService(settings, Recommender(Artifacts.load(settings.model_dir)), store=store)
    exp = Experiment(name, variants, tuple([1.0 / len(variants)] * len(variants)), guardrail_ms)
    extra = extra_latency_ms or {}

    def recommend(user: int, session: list[int], ranker: str) -> tuple[list[int], float]:
        t = time.perf_counter()
        ctx, _ = svc.user_context(user, session, [])
        out = svc.rec.recommend(ctx, k=10, ranker=ranker)
        if ranker in extra:
            time.sleep(extra[ranker] / 1e3)
        return [int(i) + 1 for i in out.items], (time.perf_counter() - t) * 1e3

    log = simulate(recommend, exp, future, requests_per_user=requests_per_user, seed=seed)
    log_path = settings.recsys_dir / f"exposures-{name}.parquet"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.to_parquet(log_path)
    res = analyze(log, exp)
    res["exposure_log"] = str(log_path)
    res["slates"] = len(log)
    res["stopped"] = sorted(exp.stopped)
    res["served_share"] = {v: float(np.mean(log["served"] == v)) for v in variants}
    return res
