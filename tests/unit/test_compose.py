"""docker-compose.yml validated without a Docker engine (none runs on these machines)."""

from __future__ import annotations

import importlib
import importlib.util
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
        one_shot = svc.get("restart") == "no"  # a job: dependents wait for service_completed_successfully
        assert "healthcheck" in svc or one_shot, f"{name} has no healthcheck"
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


def _commands(compose: dict) -> list[list[str]]:
    """Every command line that a service of the project image runs (``sh -c "a && b"`` split into a, b)."""
    found = []
    for svc in compose["services"].values():
        if svc.get("image") != "mlsd:latest" or "command" not in svc:
            continue
        command = svc["command"]
        tokens = shlex.split(command) if isinstance(command, str) else list(command)
        if tokens[:2] == ["sh", "-c"]:
            found += [shlex.split(part) for part in tokens[2].split("&&")]
        else:
            found.append(tokens)
    return found


def _positional(tokens: list[str]) -> list[str]:
    path = []
    for tok in tokens:
        if tok.startswith("-"):
            break
        path.append(tok)
    return path


def test_every_entrypoint_in_compose_exists(compose) -> None:
    """`mlsd ...` sub-commands answer --help; `-m module` and `--factory module:attr` targets exist."""
    runner = CliRunner()
    commands = _commands(compose)
    assert any(c[0] == "mlsd" for c in commands)
    for tokens in commands:
        if tokens[0] == "mlsd":
            path = _positional(tokens[1:])
            result = runner.invoke(app, [*path, "--help"])
            assert result.exit_code == 0, f"`mlsd {' '.join(path)} --help` failed: {result.output}"
        if "-m" in tokens:
            module = tokens[tokens.index("-m") + 1]
            assert importlib.util.find_spec(module) is not None, f"no module {module}"
        if "--factory" in tokens:
            module, attr = tokens[tokens.index("--factory") + 1].split(":")
            assert callable(getattr(importlib.import_module(module), attr)), f"no factory {module}:{attr}"


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


def test_textclf_profile_has_the_loop_it_needs(compose) -> None:
    """API, trainer and the one-shot first model, on Kafka and MLflow backed by Postgres."""
    services = compose["services"]
    in_profile = {name for name, svc in services.items() if "textclf" in svc.get("profiles", [])}
    assert {
        "kafka",
        "postgres",
        "mlflow",
        "textclf-init",
        "textclf-api",
        "textclf-trainer",
        "textclf-collector",
    } <= in_profile
    assert "postgresql" in services["mlflow"]["command"]
    for name in ("textclf-api", "textclf-trainer", "textclf-collector"):
        deps = services[name]["depends_on"]
        assert deps["textclf-init"] == {"condition": "service_completed_successfully"}
        assert deps["kafka"] == {"condition": "service_healthy"}
    assert services["textclf-api"]["environment"]["MLSD_TEXTCLF_ADMIN_TOKEN"]
