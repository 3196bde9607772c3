"""Recsys settings (env prefix ``MLSD_RECSYS_``, falling back to the shared ``MLSD_`` variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import SettingsConfigDict

from systems.common.settings import MlsdSettings


class RecsysSettings(MlsdSettings):
    """Everything the recsys processes read at start; a typo in an env var name is an error, not a default."""

    model_config = SettingsConfigDict(env_prefix="MLSD_RECSYS_", extra="forbid")

    api_port: int = 8001
    online_store: Literal["sqlite", "redis"] = "sqlite"
    """Feast online store: sqlite file under the data dir (embedded), or Redis at ``redis_url`` (compose)."""
    events_topic: str = "recsys.browse-events"
    exposures_topic: str = "recsys.exposures"
    catalogue_size: int = 0
    """0 = the real MovieLens catalogue; N > 1682 grows it to N items with synthetic ones (scale mode)."""
    n_candidates: int = 200
    """Candidates handed to the ranker per request (before re-ranking)."""
    serve_model: Literal["registry", "legacy"] = "registry"
    """"registry": the validation gate's winner, loaded from MLflow's ``champion`` alias of ``model_name``
    (``mlsd recsys train``); "legacy": the two-tower + ranker artefacts with the Feast online store
    (``mlsd recsys train --legacy``), which the stream processor, the A/B simulator and the 1 M-item scale
    benchmarks use."""
    dataset: str = "movielens-100k"
    """Interaction log ``mlsd recsys train`` learns from (``dataset.ADAPTERS``)."""
    ranker: Literal["deep", "lgbm", "none"] = "deep"
    log_predictions: bool = True
    model_name: str = "recsys-recommender"
    """The name prediction records carry (and, once registered, the registry's model name)."""
    store_retry_s: float = 5.0
    """After an online-store failure, answer from the trending fallback for this long before trying it again."""
    experiment: str = ""
    """Name of the running A/B experiment ("" = none); users are hashed into ``experiment_variants``."""
    experiment_variants: str = "lgbm,deep"
    """Comma-separated rankers; the first is the control."""
    experiment_weights: str = "0.5,0.5"
    latency_guardrail_ms: float = 50.0
    """A variant whose p99 request latency exceeds this is stopped (its users fall back to the control)."""

    @property
    def recsys_dir(self) -> Path:
        return self.system_dir("recsys")

    @property
    def model_dir(self) -> Path:
        return self.recsys_dir / "model"

    @property
    def feast_dir(self) -> Path:
        return self.recsys_dir / "feast"

    def ensure_dirs(self) -> None:
        super().ensure_dirs()
        for path in (self.recsys_dir, self.model_dir, self.feast_dir):
            path.mkdir(parents=True, exist_ok=True)
