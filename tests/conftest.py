"""Shared fixtures: real components on 127.0.0.1, started once per session, torn down by PID.

- ``broker``: a tansu Kafka-protocol broker subprocess on a free port.
- ``broker_settings``: settings with a fresh data dir that point at that broker.
- ``redis_server``: a real ``redis-server`` on a free port (CI installs it; skipped only where it is absent).
- ``unique_name``: unique topic / group names, so tests sharing the session broker never collide.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from systems.common.broker import LocalBroker
from systems.common.proc import free_port, port_open, stop_pid
from systems.common.settings import MlsdSettings

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir for the session whose wheel cache and datasets are fetched once."""
    return tmp_path_factory.mktemp("mlsd-data")


@pytest.fixture()
def settings(tmp_path: Path, shared_data_dir: Path) -> MlsdSettings:
    """Settings with a fresh data dir; datasets come from the session's shared dir (fetched once)."""
    s = MlsdSettings(data_dir=tmp_path / ".mlsd")
    s.ensure_dirs()
    shared = MlsdSettings(data_dir=shared_data_dir)
    shared.ensure_dirs()
    for sub in ("cache", "datasets"):
        target = s.data_dir / sub
        target.rmdir()
        target.symlink_to(shared_data_dir / sub, target_is_directory=True)
    return s


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with LocalBroker(free_port(), log_path=log) as b:
        yield b


@pytest.fixture()
def broker_settings(settings: MlsdSettings, broker: LocalBroker) -> MlsdSettings:
    return settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})


@pytest.fixture()
def unique_name(request: pytest.FixtureRequest) -> str:
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40]
    return f"{base}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; .ci/run must install it")
        pytest.skip("redis-server not installed (apt-get install -y redis-server)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--dir", str(workdir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not start on port {port}")
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    stop_pid(proc.pid)
    proc.wait(timeout=5)
