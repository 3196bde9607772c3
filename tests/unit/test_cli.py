"""The `mlsd` command line: every sub-app mounts, errors are one line and a non-zero exit."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from systems.cli import app, built_systems

pytestmark = pytest.mark.unit

runner = CliRunner()


def test_root_and_foundation_commands_have_help() -> None:
    for path in ([], ["data"], ["broker"], ["bench"], ["bench", "selftest"], ["demo"]):
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, result.output


def test_every_built_system_mounts_with_demo_and_bench() -> None:
    for _module, command, cli in built_systems():
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output
        assert callable(getattr(cli, "demo", None)), f"{command} has no demo()"
        bench = runner.invoke(app, [command, "bench", "--help"])
        assert bench.exit_code == 0 and "--out" in bench.output, f"{command} bench lacks --out"


def test_bad_input_is_one_line_and_exit_1() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "systems.cli", "data", "fetch", "no-such-dataset"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown dataset" in lines[0], proc.stderr


def test_broker_status_without_a_broker_is_a_clean_error(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "systems.cli", "broker", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**__import__("os").environ, "MLSD_KAFKA_BOOTSTRAP": "127.0.0.1:1", "MLSD_DATA_DIR": str(tmp_path)},
    )
    assert proc.returncode == 1
    assert "mlsd broker up" in proc.stderr and "Traceback" not in proc.stderr


def test_broker_up_status_down(tmp_path) -> None:
    import os

    from systems.common.proc import free_port

    env = {**os.environ, "MLSD_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}", "MLSD_DATA_DIR": str(tmp_path)}
    cli = [sys.executable, "-m", "systems.cli", "broker"]
    up = subprocess.run([*cli, "up", "--topic", "orders:3"], capture_output=True, text=True, env=env, timeout=60)
    try:
        assert up.returncode == 0, up.stderr
        status = subprocess.run([*cli, "status"], capture_output=True, text=True, env=env, timeout=60)
        assert status.returncode == 0 and "orders" in status.stdout and "3 partitions" in status.stdout
    finally:
        down = subprocess.run([*cli, "down"], capture_output=True, text=True, env=env, timeout=60)
    assert down.returncode == 0 and "stopped" in down.stdout
