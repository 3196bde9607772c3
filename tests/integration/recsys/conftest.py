"""Recsys integration fixtures: the session's small model installed into a data dir with Feast applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from systems.common.broker import LocalBroker
from systems.recsys.settings import RecsysSettings
from systems.recsys.testing import install_model


def _settings_in(base: Path, shared_data_dir: Path, **kw: object) -> RecsysSettings:
    s = RecsysSettings(data_dir=base / ".mlsd", **kw)  # type: ignore[arg-type]
    s.ensure_dirs()
    for sub in ("cache", "datasets"):
        target = s.data_dir / sub
        target.rmdir()
        target.symlink_to(shared_data_dir / sub, target_is_directory=True)
    return s


@pytest.fixture(scope="session")
def recsys_settings(
    tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path, broker: LocalBroker
) -> RecsysSettings:
    """sqlite online store, the session broker, unique topics; model + Feast ready."""
    s = _settings_in(
        tmp_path_factory.mktemp("recsys-sqlite"),
        shared_data_dir,
        kafka_bootstrap=broker.bootstrap,
        predictions_topic="recsys-it.predictions",
        events_topic="recsys-it.events",
        exposures_topic="recsys-it.exposures",
    )
    install_model(shared_data_dir, s)
    return s


@pytest.fixture(scope="session")
def recsys_redis_settings(
    tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path, broker: LocalBroker, redis_server: str
) -> RecsysSettings:
    """The same, with the Feast online store in a real redis-server."""
    s = _settings_in(
        tmp_path_factory.mktemp("recsys-redis"),
        shared_data_dir,
        kafka_bootstrap=broker.bootstrap,
        online_store="redis",
        redis_url=redis_server,
        predictions_topic="recsys-it-redis.predictions",
        events_topic="recsys-it-redis.events",
    )
    install_model(shared_data_dir, s)
    return s
