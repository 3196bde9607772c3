"""docker-compose.yml, the quick presets and the offline image kit, validated without a Docker engine.

`make compose-test` (tests/compose/smoke.py) starts every profile for real; these checks run in `make test` and
catch, in a second, what would otherwise only fail ten minutes into an image build or a compose run.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from systems.cli import app

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
QUICK = ROOT / "docker" / "compose.quick.yml"
KIT = ROOT / "docker" / "offline" / "build.sh"
PROJECT_IMAGE = "mlsd:latest"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def quick() -> dict:
    return yaml.safe_load(QUICK.read_text())


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


def _commands(*files: dict) -> list[list[str]]:
    """Every command line that a service of the project image runs in these compose files (an override file's
    service takes its image from the main file); ``sh -c "a && b"`` is split into a and b."""
    images = {name: svc.get("image") for f in files for name, svc in f["services"].items() if "image" in svc}
    found = []
    for f in files:
        for name, svc in f["services"].items():
            if images.get(name) != PROJECT_IMAGE or "command" not in svc:
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


def test_every_entrypoint_in_compose_exists(compose, quick) -> None:
    """`mlsd ...` sub-commands answer --help and know every option they are given (the quick presets' too);
    `-m module` and `--factory module:attr` targets exist."""
    runner = CliRunner()
    commands = _commands(compose, quick)
    assert any(c[0] == "mlsd" for c in commands)
    for tokens in commands:
        if tokens[0] == "mlsd":
            path = _positional(tokens[1:])
            result = runner.invoke(app, [*path, "--help"], terminal_width=200)
            assert result.exit_code == 0, f"`mlsd {' '.join(path)} --help` failed: {result.output}"
            for option in (t.split("=")[0] for t in tokens if t.startswith("--")):
                assert re.search(rf"{re.escape(option)}\b", result.output), f"`mlsd {' '.join(path)}` has no {option}"
        if "-m" in tokens:
            module = tokens[tokens.index("-m") + 1]
            assert importlib.util.find_spec(module) is not None, f"no module {module}"
        if "--factory" in tokens:
            module, attr = tokens[tokens.index("--factory") + 1].split(":")
            assert callable(getattr(importlib.import_module(module), attr)), f"no factory {module}:{attr}"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian docker-compose (v1) not installed")
def test_docker_compose_v1_accepts_the_file() -> None:
    """The file alone, and with the quick presets over it (what `make compose-test` starts)."""
    proc = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "--profile", "all", "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "-f", str(QUICK), "--profile", "all", "config", "-q"],
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


# ----------------------------------------------------------------------------------------- images and the kit

IMAGE_VARIABLE = re.compile(r"^\$\{(MLSD_[A-Z]+_IMAGE):-([^}]+)\}$")


def test_every_image_comes_from_a_variable_with_the_upstream_default(compose) -> None:
    """Infrastructure images are `${MLSD_<NAME>_IMAGE:-<upstream image>}`: a mirror or the offline kit swaps
    them by variable; no service builds an image under an upstream name (only the project image is built)."""
    variables = {}
    for name, svc in compose["services"].items():
        if svc["image"] == PROJECT_IMAGE:
            assert svc["build"]["dockerfile"] == "docker/Dockerfile", name
            continue
        match = IMAGE_VARIABLE.match(svc["image"])
        assert match, f"{name}: image {svc['image']!r} is not ${{MLSD_<NAME>_IMAGE:-<upstream>}}"
        variable, default = match.groups()
        assert not default.startswith("mlsd"), f"{name}: default {default} is a local build, not upstream's"
        assert "build" not in svc, f"{name} would build an image tagged {default}"
        variables[variable] = name
    assert {"MLSD_KAFKA_IMAGE", "MLSD_REDIS_IMAGE", "MLSD_POSTGRES_IMAGE", "MLSD_GRAFANA_IMAGE"} <= set(variables)
    python = compose["x-mlsd-image"]["build"]["args"]["PYTHON_IMAGE"]
    assert IMAGE_VARIABLE.match(python), f"the project image's base {python!r} is not a variable"


def _kit_variables() -> dict[str, str]:
    """The variables docker/offline/build.sh writes (its env file heredoc), with the values it writes."""
    text = KIT.read_text()
    body = text[text.index('cat >"$ENV_FILE" <<EOF') : text.index('echo "wrote $ENV_FILE"')]
    images = dict(re.findall(r"^([A-Z_]+_IMAGE)=(\S+)$", text, flags=re.M))  # KAFKA_IMAGE=mlsd-kafka-tansu:0.6.0
    out = {}
    for var, value in re.findall(r"^(MLSD_[A-Z_]+)=(\S+)$", body, flags=re.M):
        out[var] = images.get(value.strip("${}"), value)
    return out


def test_the_offline_kit_sets_every_image_variable_and_only_those(compose) -> None:
    """Every image variable compose reads is written by the kit (so `--env-file docker/offline/images.env`
    starts every profile without a registry), to a local `mlsd-*` image; Grafana, which the kit cannot build,
    is scaled to 0 and never pulled."""
    kit = _kit_variables()
    raw = COMPOSE.read_text()
    used = set(re.findall(r"\$\{(MLSD_[A-Z_]+?)(?::-[^}]*)?\}", raw))
    image_vars = {v for v in used if v.endswith("_IMAGE")} - {"MLSD_GRAFANA_IMAGE"}
    assert image_vars <= set(kit), f"the kit does not set {sorted(image_vars - set(kit))}"
    assert set(kit) <= used, f"the kit sets variables compose never reads: {sorted(set(kit) - used)}"
    for var in image_vars:
        assert kit[var].startswith("mlsd-"), f"{var}={kit[var]} is not one of the kit's images"
    assert kit["MLSD_GRAFANA_REPLICAS"] == "0" and kit["MLSD_GRAFANA_PULL_POLICY"] == "never"
    grafana = compose["services"]["grafana"]
    assert grafana["scale"] == "${MLSD_GRAFANA_REPLICAS:-1}"
    assert grafana["pull_policy"] == "${MLSD_GRAFANA_PULL_POLICY:-if_not_present}"
    assert not any("grafana" in (svc.get("depends_on") or {}) for svc in compose["services"].values())


def _dockerfile_sources() -> set[str]:
    """Paths of the build context that docker/Dockerfile reads (COPY sources and bind-mount sources)."""
    text = (ROOT / "docker" / "Dockerfile").read_text()
    sources = set(re.findall(r"--mount=type=bind,source=([^,\s]+)", text))
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.M):
        sources.update(line.split()[:-1])
    return {src.rstrip("/") for src in sources}


def test_dockerignore_lets_in_exactly_what_the_dockerfile_reads() -> None:
    """The context starts empty (`*`, so `.venv`, `.mlsd` and `.git` stay out: gigabytes) and lets back in each
    path the Dockerfile copies or mounts; a COPY of anything else would fail the build."""
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert _dockerfile_sources() == allowed
    for folder in ("docker/certs", "docker/wheelhouse"):  # bound or copied even when empty: must exist
        assert (ROOT / folder).is_dir()


def test_quick_presets_only_change_commands_of_existing_services(compose, quick) -> None:
    """docker/compose.quick.yml swaps commands, nothing else: same services, images and wiring."""
    for name, svc in quick["services"].items():
        assert name in compose["services"], f"{name} is not a service of docker-compose.yml"
        assert set(svc) == {"command"}, f"{name}: the quick presets change {sorted(set(svc) - {'command'})}"


@pytest.mark.parametrize("script", ["build.sh", "postgres-entrypoint.sh", "kafka-healthcheck.sh"])
def test_kit_scripts_parse(script: str) -> None:
    path = ROOT / "docker" / "offline" / script
    shell = "bash" if path.read_text().startswith("#!/bin/bash") or "bash" in path.read_text().splitlines()[0] else "sh"
    proc = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
    assert path.stat().st_mode & 0o111, f"{script} is not executable"


def _smoke() -> Any:
    """tests/compose/smoke.py as a module (it is a script, not a package member)."""
    spec = importlib.util.spec_from_file_location("compose_smoke", ROOT / "tests" / "compose" / "smoke.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def test_readme_docker_table_is_generated_from_the_recorded_runs() -> None:
    """The README's `make compose-test` seconds are the committed record's, and the record holds only passing
    runs of every profile (with the machine and load they ran at)."""
    smoke = _smoke()
    record = json.loads(smoke.RECORD.read_text())
    assert set(record) <= {"cold", "cached"} and record
    for kind, run in record.items():
        assert run["passed"] and set(run["profiles"]) == set(smoke.PROFILES), kind
        assert run["images_cached"] == (kind == "cached")
        assert all(step["ok"] for step in run["steps"]), kind
        assert run["total_s"] >= sum(s["seconds"] for s in run["steps"] if not s["name"].startswith(" ")) - 1
    assert smoke.readme_block(smoke.README.read_text()) == smoke.render_record(record)
