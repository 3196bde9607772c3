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
    score_cache_size: int = 100_000
    """Recent ``/score`` answers a worker keeps in memory (a retry then skips the store read)."""
    score_store_url: str | None = None
    """Where ``POST /score`` keeps its answers by tx_id (retries get the stored one). None -> sqlite under
    <data_dir>/fraud/scores.db (compose too: on the data volume). It must not be the decision store's
    database: both keep a ``customer_state`` table, and the API's card state is not the scorers'."""
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
    max_event_lead_s: int = 86_400
    """How far ahead of the stream's clock (the newest event time accepted) a transaction or a label may be:
    further is dead-lettered (stream) or a 422 (``/score``). A far-future time would move the clock for good.
    A day: a quiet night can leave hours between two transactions, and the clock only knows event times."""
    max_event_lag_s: int = 30 * 86_400
    """How far behind the clock a transaction may be (a partition catching up after an outage lags by the
    outage); 30 days is the longest customer window."""
    max_message_bytes: int = 4096
    """Transactions and labels are ~200 bytes; anything over this is dead-lettered unread."""
    label_catch_up_s: float = 60.0
    """At start, how long a scorer waits for its label reader to reach the end of the label topic before it
    scores (terminal risk from a half-read label topic would differ from the batch features)."""
    commit_interval_s: float = 0.05
    """How often a scorer makes its decisions durable and publishes them (also whenever its topic goes idle):
    one store transaction, one flush and one offset commit per interval."""
    commit_max_records: int = 1000
    """...or once this many transactions wait. Bounds what a crash re-delivers, and so the repeats a SIGKILL can
    leave on the decisions topic (at most this many plus one poll's worth)."""
    health_port: int | None = None
    """Serve /healthz, /readyz, /metrics of a scorer or label-sink process on this port (None: no server)."""

    @property
    def history(self) -> Path:
        return self.history_path or self.datasets_dir / "fraud" / "transactions.parquet"
