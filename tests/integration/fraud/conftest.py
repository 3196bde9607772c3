"""Fraud integration fixtures: a small simulated dataset, a registered champion, per-test topic names."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from systems.common.broker import LocalBroker
from systems.fraud.data import SimulatorConfig, simulate, write_dataset
from systems.fraud.settings import FraudSettings
from systems.fraud.train import SplitConfig, add_features, train_champion

REPLAY_DAY = 40  # scorers warm their state on days < 40 and score the days after


@dataclass
class FraudWorld:
    data_dir: Path
    tx_path: Path
    tx: pd.DataFrame
    frame: pd.DataFrame  # tx + batch features
    replay_start_s: int


@pytest.fixture(scope="session")
def fraud_world(tmp_path_factory: pytest.TempPathFactory) -> FraudWorld:
    """~30 k transactions over 50 days, and an XGBoost champion registered in a sqlite MLflow."""
    data_dir = tmp_path_factory.mktemp("fraud-world") / ".mlsd"
    cfg = SimulatorConfig(
        n_customers=300,
        n_terminals=600,
        n_days=50,
        compromised_terminals_per_day=1,
        compromised_customers_per_day=1,
        seed=1,
    )
    sim = simulate(cfg)
    out = write_dataset(sim, data_dir / "datasets" / "fraud")
    frame = add_features(sim.transactions)
    settings = FraudSettings(data_dir=data_dir)
    settings.ensure_dirs()
    train_champion(
        settings,
        frame,
        SplitConfig(start_day=22, train_days=9, calib_days=2, test_days=7),
        fit_params={"xgb_params": {"n_estimators": 40, "n_jobs": 1}},
    )
    start = int(sim.transactions["ts_s"].min()) // 86_400 * 86_400 + REPLAY_DAY * 86_400
    return FraudWorld(data_dir, out / "transactions.parquet", sim.transactions, frame, start)


def make_settings(world: FraudWorld, broker: LocalBroker, **overrides: object) -> FraudSettings:
    """Settings on the shared registry with fresh topics, group and decision store for one test."""
    fields: dict[str, object] = {
        "data_dir": world.data_dir,
        "kafka_bootstrap": broker.bootstrap,
        "partitions": 3,
        "alias_poll_s": 0.5,
    }
    fields.update(overrides)
    settings = FraudSettings(**fields).scoped()  # type: ignore[arg-type]
    stores = {
        "decision_store_url": f"sqlite:///{world.data_dir / f'decisions-{settings.run_id}.db'}",
        "score_store_url": f"sqlite:///{world.data_dir / f'scores-{settings.run_id}.db'}",
    }
    return settings.model_copy(update={k: v for k, v in stores.items() if k not in overrides})


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture()
def stop_event() -> Iterator[threading.Event]:
    ev = threading.Event()
    yield ev
    ev.set()


class Kit:
    """Helpers handed to tests as a fixture (test modules cannot import each other under importlib mode)."""

    make_settings = staticmethod(make_settings)
    wait_for = staticmethod(wait_for)


@pytest.fixture()
def kit() -> type[Kit]:
    return Kit
