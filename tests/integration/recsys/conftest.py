"""Recsys integration fixtures: one registered model of the synthetic shop (sparse string ids, no user features,
a ten-year span: nothing MovieLens-shaped), trained once per session, and helpers to run the real API on it."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from systems.common.broker import LocalBroker
from systems.recsys.dataset import InteractionLog, synthetic
from systems.recsys.settings import RecsysSettings

FAST = {"trials": 2, "quick": True, "n_boot": 200, "per_source": 30,
        "peers": ("popularity", "trending", "item_knn", "ease", "covisit")}  # fmt: skip


@dataclass
class Shop:
    settings: RecsysSettings
    """Settings of the data dir the model is registered in (sqlite online store, the session broker)."""
    log: InteractionLog
    version: str


@pytest.fixture(scope="session")
def shop(tmp_path_factory: pytest.TempPathFactory, make_settings: Any, broker: LocalBroker) -> Shop:
    """The synthetic shop studied, gated, refitted and registered (alias champion), ~20 s once a session."""
    from systems.recsys.served import fit_served, register_served
    from systems.recsys.study import StudyConfig

    s = make_settings(
        RecsysSettings,
        tmp_path_factory.mktemp("recsys-shop"),
        model_name="recsys-synthetic",
        kafka_bootstrap=broker.bootstrap,
        log_predictions=False,
    )
    log = synthetic(n_users=240, n_items=150, per_user=30, seed=7)
    model, report = fit_served(log, StudyConfig(**FAST))
    version = register_served(model, report, s.served_dir, name=s.model_name, settings=s)
    return Shop(s, log, version)


def api_env(s: RecsysSettings) -> dict[str, str]:
    """What a ``ServerProcess`` of the API needs: these settings (absolute data dir), one BLAS thread."""
    return {**s.to_env(), "MLSD_DATA_DIR": str(Path(s.data_dir).resolve()), "OPENBLAS_NUM_THREADS": "1"}


def start_redis(port: int, workdir: Path, *, debug: bool = False) -> subprocess.Popen[bytes]:
    """A private redis-server on ``port`` (a test that stops or stalls its store needs its own), ready."""
    from systems.common.proc import port_open

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed (apt-get install -y redis-server)")
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--dir", str(workdir)] + (["--enable-debug-command", "local"] if debug else [])  # DEBUG SLEEP: a stall
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port) and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc
