"""Fraud system settings: env prefix ``MLSD_FRAUD_`` with ``MLSD_`` as the fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import SettingsConfigDict

from systems.common.settings import MlsdSettings


class FraudSettings(MlsdSettings):
    """Ports, topics, thresholds and stores of the fraud system."""

    model_config = SettingsConfigDict(env_prefix="MLSD_FRAUD_", extra="forbid")

    api_port: int = 8002
    transactions_topic: str = "transactions"
    decisions_topic: str = "decisions"
    labels_topic: str = "labels"
    partitions: int = 4
    """Partitions of the transactions topic (keyed by customer): the most scorers that can share the work."""
    group_id: str = "fraud-scorer"
    model_name: str = "fraud-detector"
    """Registered model name in MLflow; scorers load ``models:/<name>@champion``."""
    decision_store_url: str | None = None
    """None -> sqlite under <data_dir>/fraud/decisions.db; ``postgresql://...`` in compose."""
    label_store_path: str | None = None
    """None -> <data_dir>/fraud/labels.db (sqlite)."""
    alias_poll_s: float = 5.0
    """How often a running scorer asks the registry whether ``champion`` moved (hot swap)."""
    publish_predictions: bool = True
    """Also publish a generic prediction record per decision for the monitoring system."""
    warm_days: int = 38
    """Days of history replayed into the online feature state at scorer start (30-day windows + 7-day delay)."""
    dataset: Literal["handbook", "small"] = "handbook"
    history_path: Path | None = None
    """Transactions parquet used to warm online state; None -> <data_dir>/datasets/fraud/transactions.parquet."""
    warm_until_s: int | None = None
    """Warm the state with history before this time (unix s); None -> the start of ``replay_start_day``."""
    replay_start_day: int = 150
    """Simulation day ``mlsd fraud replay`` starts from; scorers and the API warm their state up to it."""

    @property
    def history(self) -> Path:
        return self.history_path or self.datasets_dir / "fraud" / "transactions.parquet"
