"""Recsys integration fixtures: the session's small model installed into a data dir with Feast applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from systems.common.broker import LocalBroker
from systems.recsys.settings import RecsysSettings
from tests.recsys_support import install_model


@pytest.fixture(scope="session")
def recsys_settings(
    tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path, broker: LocalBroker, make_settings
) -> RecsysSettings:
    """The legacy two-tower + ranker API: sqlite online store, the session broker, unique topics; model + Feast
    ready. (The registered gate winner has its own suite, ``test_recsys_served.py``.)"""
    s = make_settings(
        RecsysSettings,
        tmp_path_factory.mktemp("recsys-sqlite"),
        kafka_bootstrap=broker.bootstrap,
        serve_model="legacy",
        predictions_topic="recsys-it.predictions",
        events_topic="recsys-it.events",
        exposures_topic="recsys-it.exposures",
    )
    install_model(shared_data_dir, s)
    return s


@pytest.fixture(scope="session")
def recsys_redis_settings(
    tmp_path_factory: pytest.TempPathFactory,
    shared_data_dir: Path,
    broker: LocalBroker,
    redis_server: str,
    make_settings,
) -> RecsysSettings:
    """The same, with the Feast online store in a real redis-server."""
    s = make_settings(
        RecsysSettings,
        tmp_path_factory.mktemp("recsys-redis"),
        kafka_bootstrap=broker.bootstrap,
        online_store="redis",
        serve_model="legacy",
        redis_url=redis_server,
        predictions_topic="recsys-it-redis.predictions",
        events_topic="recsys-it-redis.events",
    )
    install_model(shared_data_dir, s)
    return s
