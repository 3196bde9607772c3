"""docker-compose.yml validated without a Docker engine (none runs on these machines)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from systems.cli import app

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_every_service_has_a_healthcheck_and_waits_on_health(compose) -> None:
    services = compose["services"]
    assert {"kafka", "redis", "postgres", "mlflow", "prometheus", "grafana"} <= set(services)
    for name, svc in services.items():
        assert "healthcheck" in svc, f"{name} has no healthcheck"
        assert svc.get("profiles"), f"{name} has no profile"
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must use conditions"
        for dep, cond in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert cond.get("condition") in ("service_healthy", "service_completed_successfully"), name


def test_published_ports_do_not_collide(compose) -> None:
    seen: dict[str, str] = {}
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            host = str(port).split(":")[-2] if str(port).count(":") else str(port)
            assert host not in seen, f"host port {host} used by {seen.get(host)} and {name}"
            seen[host] = name


def _mlsd_commands(compose: dict) -> list[list[str]]:
    """The `mlsd ...` sub-command paths that services run (image entrypoint is `mlsd`)."""
    found = []
    for svc in compose["services"].values():
        if svc.get("image") != "mlsd:latest" or "entrypoint" in svc:
            continue
        command = svc.get("command", [])
        tokens = shlex.split(command) if isinstance(command, str) else list(command)
        path = []
        for tok in tokens:
            if tok.startswith("-"):
                break
            path.append(tok)
        found.append(path)
    return found


def test_every_mlsd_command_in_compose_exists(compose) -> None:
    runner = CliRunner()
    for path in _mlsd_commands(compose):
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, f"`mlsd {' '.join(path)} --help` failed: {result.output}"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian docker-compose (v1) not installed")
def test_docker_compose_v1_accepts_the_file() -> None:
    proc = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "--profile", "all", "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
