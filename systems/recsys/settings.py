"""Recsys settings (env prefix ``MLSD_RECSYS_``, falling back to the shared ``MLSD_`` variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from systems.common.settings import MlsdSettings


class RecsysSettings(MlsdSettings):
    """Everything the recsys processes read at start; a typo in an env var name is an error, not a default."""

    model_config = SettingsConfigDict(env_prefix="MLSD_RECSYS_", extra="forbid")

    api_port: int = 8001
    dataset: str = "movielens-100k"
    """Interaction log ``mlsd recsys train`` learns from (``dataset.ADAPTERS``): its items are the catalogue."""
    model_name: str = "recsys-recommender"
    """The registered model the API serves (alias ``champion``) and the name prediction records carry."""
    clock: Literal["log", "wall"] = "log"
    """When a request happens: ``log`` = just after the training log's last interaction (a replayed dataset that
    ended years ago: time features must look like the ones the ranker learned from); ``wall`` = now (a live
    shop whose log is current)."""

    online_store: Literal["sqlite", "redis", "none"] = "sqlite"
    """Feast online store of the live sessions: sqlite under the data dir (embedded), Redis at ``redis_url``
    (compose), or none (the API answers from the request's own session items only)."""
    store_timeout_ms: float = Field(default=20.0, gt=0)
    """Per-read budget of the online store: a read still running after this answers degraded (without the live
    session) instead of holding the request."""
    store_retry_s: float = Field(default=5.0, ge=0)
    """After a store failure or timeout, skip the store (degraded answers, at once) for this long; then try it."""

    stream_in_api: bool = False
    """Run the stream processor inside the API process (``mlsd recsys up``): readiness then includes it."""
    stream_health_port: int | None = None
    """``python -m systems.recsys.stream`` serves ``/readyz`` (503 until its group has assigned it and a poll has
    been handled), ``/healthz`` and ``/metrics`` on this port (compose's healthcheck); None = no port."""
    events_topic: str = "recsys.browse-events"
    exposures_topic: str = "recsys.exposures"
    session_keep: int = Field(default=50, ge=1, le=500)
    """Items kept per live session (most recent last)."""
    event_max_age_s: float = Field(default=7 * 86_400.0, gt=0)
    event_max_future_s: float = Field(default=300.0, ge=0)
    """Browse events must carry a time within [now − max_age, now + max_future] of the stream processor's clock;
    others go to the dead-letter topic (a timestamp of 1e30 is a bug upstream, not a session)."""
    event_max_bytes: int = Field(default=64_000, gt=0)
    """A browse event larger than this is dead-lettered unparsed (a real one is ~100 bytes)."""

    log_predictions: bool = True
    experiment: str = ""
    """Name of the running A/B experiment ("" = none); users are hashed into ``experiment_variants``."""
    experiment_variants: str = "pipeline,covisit"
    """Comma-separated arms, control first: each is the served model's kind or one of its sources."""
    experiment_weights: str = "0.5,0.5"
    latency_guardrail_ms: float = 50.0
    """A variant whose p99 request latency exceeds this (and 1.2 × the control's) is stopped."""

    @property
    def recsys_dir(self) -> Path:
        return self.system_dir("recsys")

    @property
    def served_dir(self) -> Path:
        return self.recsys_dir / "served"

    @property
    def feast_dir(self) -> Path:
        return self.recsys_dir / "feast"

    def ensure_dirs(self) -> None:
        super().ensure_dirs()
        for path in (self.recsys_dir, self.feast_dir):
            path.mkdir(parents=True, exist_ok=True)
