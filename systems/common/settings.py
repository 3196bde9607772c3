"""Typed settings shared by every system.

One pydantic-settings class holds what all systems need (data dir, broker, registry, Redis). Each system
subclasses it with its own env prefix (``MLSD_FRAUD_``, ``MLSD_RECSYS_`` …); the per-system variable wins and
the shared ``MLSD_`` variable is the fallback, so ``MLSD_KAFKA_BOOTSTRAP=kafka:9092`` points every system at
the compose broker while ``MLSD_FRAUD_API_PORT=9002`` moves one service.

Nothing here touches the disk at import: call :meth:`MlsdSettings.ensure_dirs` from a command's ``main()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

KafkaClient = Literal["kafka-python", "confluent"]


class MlsdSettings(BaseSettings):
    """Settings shared by all systems (env prefix ``MLSD_``); unknown keyword arguments are errors."""

    model_config = SettingsConfigDict(env_prefix="MLSD_", extra="forbid")

    data_dir: Path = Path(".mlsd")
    """Runtime state root: datasets, sqlite files, mlruns, broker logs. Git-ignored, never inside the package."""

    kafka_bootstrap: str = "127.0.0.1:19092"
    kafka_client: KafkaClient = "confluent"
    """confluent-kafka (librdkafka, ~30x faster producing) or kafka-python (pure Python); same interface."""
    kafka_session_timeout_ms: int = 6000
    """tansu holds a JoinGroup for session_timeout/2: 6000 ms gives a ~3 s join and is real Kafka's minimum."""
    kafka_heartbeat_interval_ms: int = 2000

    mlflow_tracking_uri: str | None = None
    """None means sqlite under the data dir; compose sets an http:// MLflow server on Postgres."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    host: str = "127.0.0.1"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Order is priority: explicit kwargs, the system's own prefix, then the shared MLSD_ prefix.
        shared = EnvSettingsSource(settings_cls, env_prefix="MLSD_")
        return (init_settings, env_settings, shared, dotenv_settings, file_secret_settings)

    @property
    def cache_dir(self) -> Path:
        """Downloaded wheels and other re-creatable files."""
        return self.data_dir / "cache"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "mlartifacts"

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"

    def system_dir(self, name: str) -> Path:
        """A system's own runtime folder under the data dir (not created here)."""
        return self.data_dir / name

    def ensure_dirs(self) -> None:
        for path in (self.data_dir, self.cache_dir, self.datasets_dir, self.artifacts_dir):
            path.mkdir(parents=True, exist_ok=True)
