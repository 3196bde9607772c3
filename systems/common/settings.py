"""Typed settings shared by every system.

One pydantic-settings class holds what all systems need (data dir, broker, registry, Redis). Each system
subclasses it with its own env prefix (``MLSD_FRAUD_``, ``MLSD_RECSYS_`` …); the per-system variable wins and
the shared ``MLSD_`` variable is the fallback, so ``MLSD_KAFKA_BOOTSTRAP=kafka:9092`` points every system at
the compose broker while ``MLSD_FRAUD_API_PORT=9002`` moves one service.

A typo fails loudly: an ``MLSD_<SYSTEM>_*`` variable that names no setting of that system is an error that
suggests the closest valid name (``MLSD_RECSYS_RANKR`` → did you mean ``MLSD_RECSYS_RANKER``?), never a silent
default. :meth:`MlsdSettings.to_env` turns settings back into variables for a subprocess, and
:meth:`MlsdSettings.scoped` gives a copy whose topics, consumer groups and system folder are private to one run
(a test, a bench section), so runs sharing a broker and a data dir never see each other's messages.

Nothing here touches the disk at import: call :meth:`MlsdSettings.ensure_dirs` from a command's ``main()``.
"""

from __future__ import annotations

import difflib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import PrivateAttr
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from systems.common.errors import MlsdError

KafkaClient = Literal["kafka-python", "confluent"]
SHARED_PREFIX = "MLSD_"


class SettingsError(MlsdError, ValueError):
    """An environment variable or value that no setting accepts; the message names the fix."""


def check_env(cls: type[MlsdSettings], environ: dict[str, str] | None = None) -> None:
    """Raise :class:`SettingsError` for an ``MLSD_<SYSTEM>_*`` variable that is not a field of ``cls``.

    Only a system's own prefix is checked: a shared ``MLSD_*`` variable may be meant for another system.
    """
    prefix = str(cls.model_config.get("env_prefix") or "").upper()
    if not prefix or prefix == SHARED_PREFIX:
        return
    names = {f.upper() for f in cls.model_fields}
    env = os.environ if environ is None else environ
    for var in env:
        upper = var.upper()
        if not upper.startswith(prefix) or upper[len(prefix) :] in names:
            continue
        close = difflib.get_close_matches(upper[len(prefix) :], sorted(names), n=1, cutoff=0.6)
        hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid: {prefix}<{'|'.join(sorted(names))}>"
        raise SettingsError(f"unknown setting {var}{hint}")


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

    predictions_topic: str = "predictions"
    """The shared topic of prediction records (``systems.common.predictions``) every serving system writes."""
    predictions_queue_size: int = 10_000
    """Records a service buffers for the broker before it drops (and counts) new ones."""
    predictions_delivery_timeout_ms: int = 10_000
    """How long the producer keeps retrying one record while the broker is unreachable."""
    retrain_requests_topic: str = "retrain.requests"
    """Where monitoring asks for retraining (``systems.common.predictions.RetrainRequest``)."""

    _run_id: str | None = PrivateAttr(default=None)

    def __init__(self, **values: Any) -> None:
        check_env(type(self))
        super().__init__(**values)

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

    def to_env(self) -> dict[str, str]:
        """These settings as environment variables under this class's own prefix, for a subprocess.

        Every field is written (a child must not fall back to a different default or to a shared variable
        of the parent's environment); None fields are omitted, which means None in the child too.
        """
        prefix = str(self.model_config.get("env_prefix") or SHARED_PREFIX)
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, list | dict | tuple):
                text = json.dumps(value)
            else:
                text = str(value)
            env[f"{prefix}{name.upper()}"] = text
        return env

    def scoped(self, run: str | None = None) -> Self:
        """A copy private to one run: ``*_topic`` and ``*group_id`` fields get a ``-<run>`` suffix, and so does
        every topic of a comma-separated ``*_topics`` list.

        ``run`` defaults to a fresh 8-hex-digit id; the returned copy's :attr:`run_id` says which. Folders
        follow through :meth:`run_dir`.
        """
        run = run or uuid.uuid4().hex[:8]
        update: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, str) and (name.endswith("_topic") or name.endswith("group_id")):
                update[name] = f"{value}-{run}"
            elif isinstance(value, str) and name.endswith("_topics"):
                update[name] = ",".join(f"{t.strip()}-{run}" for t in value.split(",") if t.strip())
        copy = self.model_copy(update=update)
        copy._run_id = run
        return copy

    @property
    def run_id(self) -> str | None:
        """The id given to :meth:`scoped`, None for unscoped settings."""
        return self._run_id

    def run_dir(self, system: str) -> Path:
        """A folder of this run under the system folder (``<data_dir>/<system>/runs/<run_id>``)."""
        base = self.system_dir(system)
        return base / "runs" / self.run_id if self.run_id else base

    def system_dir(self, name: str) -> Path:
        """A system's own runtime folder under the data dir (not created here)."""
        return self.data_dir / name

    def ensure_dirs(self) -> None:
        for path in (self.data_dir, self.cache_dir, self.datasets_dir, self.artifacts_dir):
            path.mkdir(parents=True, exist_ok=True)
