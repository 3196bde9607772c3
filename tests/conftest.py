"""Shared fixtures: real components on 127.0.0.1, started once per session, torn down by PID.

- ``broker``: a tansu Kafka-protocol broker subprocess on a free port.
- ``broker_settings``: settings with a fresh data dir that point at that broker.
- ``redis_server``: a real ``redis-server`` on a free port (CI installs it; skipped only where it is absent).
- ``postgres_server``: a real PostgreSQL (``initdb`` + ``postgres``) in a tmp dir on a free port
  (CI installs Debian's ``postgresql``; skipped only where it is absent).
- ``unique_name``: unique topic / group names, so tests sharing the session broker never collide.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from systems.common.broker import LocalBroker
from systems.common.proc import free_port, pid_alive, port_open, stop_pid
from systems.common.settings import MlsdSettings

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir for the session whose wheel cache and datasets are fetched once."""
    return tmp_path_factory.mktemp("mlsd-data")


S = TypeVar("S", bound=MlsdSettings)


@pytest.fixture(scope="session")
def make_settings(shared_data_dir: Path) -> Callable[..., Any]:
    """``make_settings(cls, base_dir, **fields)``: settings of any system with a fresh data dir under
    ``base_dir`` whose wheel cache and datasets are the session's shared ones (fetched once)."""
    MlsdSettings(data_dir=shared_data_dir).ensure_dirs()

    def make(cls: type[S], base: Path, **fields: Any) -> S:
        s = cls(data_dir=base / ".mlsd", **fields)
        s.ensure_dirs()
        for sub in ("cache", "datasets"):
            target = s.data_dir / sub
            target.rmdir()
            target.symlink_to(shared_data_dir / sub, target_is_directory=True)
        return s

    return make


@pytest.fixture()
def settings(tmp_path: Path, make_settings: Callable[..., MlsdSettings]) -> MlsdSettings:
    """Settings with a fresh data dir; datasets come from the session's shared dir (fetched once)."""
    return make_settings(MlsdSettings, tmp_path)


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


def _postgres_bin() -> Path | None:
    """Debian keeps the server binaries off PATH, in /usr/lib/postgresql/<major>/bin (newest wins)."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name))
    on_path = shutil.which("initdb")
    if dirs:
        return Path(dirs[-1])
    return Path(on_path).parent if on_path else None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """URL ``postgresql://postgres@127.0.0.1:PORT/postgres`` of a throwaway PostgreSQL cluster.

    initdb refuses to run as root, so when the tests run as root the cluster is created and run as the
    ``postgres`` user (the package creates it) via ``runuser``; fsync is off (a test cluster need not survive
    a power cut) and connections from 127.0.0.1 are trusted.
    """
    bindir = _postgres_bin()
    if bindir is None or not (bindir / "postgres").exists():
        if os.environ.get("CI"):
            pytest.fail("postgresql is not installed; .ci/run must apt-get install -y postgresql")
        pytest.skip("postgresql not installed (apt-get install -y postgresql)")
    port = free_port()
    # Not under pytest's tmp dir: that is private to root (0700) and the postgres user must reach its files.
    root = Path(tempfile.mkdtemp(prefix="mlsd-postgres-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    init = [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"]
    subprocess.run(init, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = root / "postgres.log"
    cmd = [*as_user, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1"]
    cmd += ["-k", str(sock), "-c", "fsync=off", "-c", "max_connections=50", "-c", "shared_buffers=32MB"]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    deadline = time.monotonic() + 30
    while True:  # the port opens before the server accepts queries: ask it
        ready = subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True)
        if ready.returncode == 0:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_pid(proc.pid)
            raise RuntimeError(f"postgres did not start on port {port}: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    try:
        yield url
    finally:
        # SIGINT to the postmaster = "fast" shutdown (disconnects clients a test left open; SIGTERM would wait
        # for them). Its PID is the first line of postmaster.pid; ``proc`` may be runuser, stopped after it.
        pid_file = data / "postmaster.pid"
        if pid_file.exists():
            postmaster = int(pid_file.read_text().split()[0])
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGINT)
            deadline = time.monotonic() + 15
            while pid_alive(postmaster) and time.monotonic() < deadline:
                time.sleep(0.05)
            stop_pid(postmaster)
        stop_pid(proc.pid)
        proc.wait(timeout=15)
        shutil.rmtree(root, ignore_errors=True)
