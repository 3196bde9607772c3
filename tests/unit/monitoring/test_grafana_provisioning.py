"""Grafana provisioning and the compose profile `monitoring`, checked without Grafana or a Docker engine.

What these guard: every metric a Grafana panel queries is one the code exports (the monitoring service's
``EXPORTED_METRICS``, or a metric that ``systems/common/http.py`` / ``predictions.py`` defines, read from
their source) with the labels it filters and groups by, so a renamed metric cannot leave a panel silently
empty; every panel queries the provisioned datasource by its uid; the dashboard JSON is well formed and its
template variables are defined; the compose profile holds Prometheus (with the shared rule file mounted),
Alertmanager, Grafana and the monitoring service, wired to each other by the names the configs use; and
Alertmanager's entrypoint really sends the admin token. Where the tools exist, ``docker compose config``,
``promtool`` and ``amtool`` check the same files.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from systems.monitoring import prometheus as prom
from systems.monitoring.alerts import EXPORTED_METRICS
from systems.monitoring.settings import MonitoringSettings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
GRAFANA = ROOT / "docker" / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
DATASOURCES = GRAFANA / "provisioning" / "datasources"
PROVIDERS = GRAFANA / "provisioning" / "dashboards"
METRIC_SOURCES = (ROOT / "systems" / "common" / "http.py", ROOT / "systems" / "common" / "predictions.py")

PROFILE = "monitoring"
MONITORING_SERVICE = "monitoring-api"

TARGET_LABELS = frozenset({"job", "instance"})
"""Labels Prometheus adds to every scraped series."""
PROMETHEUS_SERIES: dict[str, frozenset[str] | None] = {"up": TARGET_LABELS, "ALERTS": None}
"""Series Prometheus makes itself; ``None``: any labels (an alert carries its rule's and its series' labels)."""
GRAFANA_VARIABLES = frozenset({"__rate_interval", "__interval", "__range", "__all"})

PROMQL_WORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"inf", "nan", "Inf", "NaN"}
)
# How prometheus_client exposes a metric of each kind: suffixes added to the name it was given.
SUFFIXES = {
    "Counter": ("_total", "_created"),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_count", "_sum", "_created"),
    "Summary": ("_count", "_sum", "_created"),
}


# ------------------------------------------------------------------------------------------- fixtures


def _code_metrics(path: Path) -> dict[str, frozenset[str]]:
    """Exposed metric names → label names of every ``Counter/Gauge/Histogram/Summary("name", doc, [labels])``
    in ``path``, read from the AST (the code is the list; nothing is typed twice)."""
    found: dict[str, frozenset[str]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        kind = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if kind not in SUFFIXES or not node.args or not isinstance(node.args[0], ast.Constant):
            continue
        name = str(node.args[0].value)
        labels_node = node.args[2] if len(node.args) > 2 else None
        for kw in node.keywords:
            if kw.arg == "labelnames":
                labels_node = kw.value
        labels = frozenset(ast.literal_eval(labels_node)) if labels_node is not None else frozenset()
        base = name.removesuffix("_total") if kind == "Counter" else name
        for suffix in SUFFIXES[kind]:
            found[base + suffix] = labels | {"le"} if suffix == "_bucket" else labels
    return found


@pytest.fixture(scope="module")
def known_metrics() -> dict[str, dict[str, frozenset[str] | None]]:
    """Where each metric a panel may query comes from: source → {name: labels (target labels included)}."""
    sources: dict[str, dict[str, frozenset[str] | None]] = {
        "alerts.EXPORTED_METRICS": {n: frozenset(ls) | TARGET_LABELS for n, ls in EXPORTED_METRICS.items()},
        "prometheus": dict(PROMETHEUS_SERIES),
    }
    for path in METRIC_SOURCES:
        metrics = _code_metrics(path)
        assert metrics, f"no prometheus_client metric found in {path}: has the way metrics are defined changed?"
        sources[path.name] = {n: ls | TARGET_LABELS for n, ls in metrics.items()}
    return sources


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    files = sorted(DASHBOARDS.glob("*.json"))
    assert files, f"no dashboard in {DASHBOARDS}"
    return {f.name: json.loads(f.read_text()) for f in files}


@pytest.fixture(scope="module")
def datasource_uid() -> str:
    (path,) = DATASOURCES.glob("*.yml")
    (ds,) = yaml.safe_load(path.read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds.get("uid"), "the datasource needs a fixed uid for panels to name"
    return str(ds["uid"])


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def profile(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if PROFILE in s.get("profiles", [])}


# ------------------------------------------------------------------------------------------- PromQL


def _expressions(node: Any, where: str = "") -> Iterator[tuple[str, str, str]]:
    """(where, expression, legend) of every PromQL query in a dashboard: panel targets and annotations."""
    if isinstance(node, dict):
        title = node.get("title") or node.get("name") or where
        if isinstance(node.get("expr"), str):
            yield f"{title} [{node.get('refId', '')}]", node["expr"], str(node.get("legendFormat", ""))
        for value in node.values():
            yield from _expressions(value, str(title))
    elif isinstance(node, list):
        for value in node:
            yield from _expressions(value, where)


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or label names."""
    text = _strip_strings(expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges, with their $__rate_interval
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        if m.group() in PROMQL_WORDS or text[m.end() :].lstrip().startswith("("):
            continue  # a keyword, or a function / aggregation call
        names.add(m.group())
    return names


def selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names its matchers use) for every ``metric{...}`` selector."""
    text = _strip_strings(expr)
    return [
        (m.group(1), set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", m.group(2))))
        for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", text)
    ]


def grouping_labels(expr: str) -> set[str]:
    """Label names of every ``by``/``without``/``on``/``ignoring``/``group_*`` clause."""
    found = re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", _strip_strings(expr))
    return {label.strip() for group in found for label in group.split(",") if label.strip()}


def test_the_promql_helpers_find_metrics_and_labels() -> None:
    expr = (
        'sum by (job, le) (rate(http_request_seconds_bucket{job=~"$job", route!~"/a|/b"}[$__rate_interval]))'
        ' / on (job) group_left up{job="x"} > 1e6 and ALERTS'
    )
    assert metric_names(expr) == {"http_request_seconds_bucket", "up", "ALERTS"}
    assert selector_labels(expr) == [("http_request_seconds_bucket", {"job", "route"}), ("up", {"job"})]
    assert grouping_labels(expr) == {"job", "le"}
    assert _code_metrics(ROOT / "systems" / "common" / "http.py")["http_requests_total"] == {
        "route",
        "method",
        "status",
    }


# ---------------------------------------------------------------------------------------- dashboards


def test_every_panel_metric_is_exported_with_the_labels_it_uses(dashboards, known_metrics) -> None:
    """A panel on a metric nobody exports (renamed, misspelt, never written) would stay empty without an error."""
    labels_of: dict[str, frozenset[str] | None] = {}
    for metrics in known_metrics.values():
        labels_of.update(metrics)
    used_from = {source: set() for source in known_metrics}
    for file, dashboard in dashboards.items():
        exprs = list(_expressions(dashboard.get("panels", []))) + list(_expressions(dashboard.get("annotations", {})))
        assert exprs, f"{file} queries nothing"
        for where, expr, legend in exprs:
            names = metric_names(expr)
            assert names, f"{file} {where}: no metric in {expr!r}"
            unknown = names - set(labels_of)
            assert not unknown, f"{file} {where}: {sorted(unknown)} not exported by the code ({expr})"
            for source, metrics in known_metrics.items():
                used_from[source] |= names & set(metrics)
            if any(labels_of[n] is None for n in names):
                continue  # ALERTS: any labels
            available = set().union(*(labels_of[n] or () for n in names))
            for metric, labels in selector_labels(expr):
                assert labels <= (labels_of[metric] or set()), f"{file} {where}: {metric} has no label {labels}"
            assert grouping_labels(expr) <= available, f"{file} {where}: grouping by a label no metric has"
            legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
            assert legend_labels <= available, f"{file} {where}: legend names {legend_labels - available}"
    # ops beside ML: the HTTP metrics, the publisher's metrics and the service's ML metrics are all drawn
    for source, used in used_from.items():
        assert used, f"no panel draws a metric of {source}"


def test_template_variables_and_their_use(dashboards, known_metrics) -> None:
    labels_of = {n: ls for metrics in known_metrics.values() for n, ls in metrics.items()}
    for file, dashboard in dashboards.items():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert {"system", "model_name", "model_version"} <= set(variables), file
        for name, var in variables.items():
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((?:(.+),\s*)?(\w+)\)", query.strip())
            assert m, f"{file} ${name}: {query!r} is not label_values(...)"
            selector, label = m.groups()
            for metric in metric_names(selector or ""):
                assert metric in labels_of, f"{file} ${name}: unknown metric {metric}"
                assert label in (labels_of[metric] or {label}), f"{file} ${name}: {metric} has no label {label}"
            if var.get("includeAll"):
                assert var.get("allValue") == ".*", f"{file} ${name}: 'All' must also match series without it"
        # every $variable an expression uses is defined (or one of Grafana's own)
        for where, expr, _ in _expressions(dashboard):
            used = set(re.findall(r"\$\{?(\w+)", expr))
            assert used <= set(variables) | GRAFANA_VARIABLES, f"{file} {where}: undefined {used - set(variables)}"


def test_every_panel_uses_the_provisioned_datasource(dashboards, datasource_uid) -> None:
    for file, dashboard in dashboards.items():
        for panel in dashboard["panels"]:
            if panel["type"] == "row":
                assert not panel.get("targets"), f"{file}: row {panel['title']} has queries"
                continue
            assert panel.get("targets"), f"{file}: {panel['title']} has no query"
            uids = {panel["datasource"]["uid"]} | {t["datasource"]["uid"] for t in panel["targets"]}
            assert uids == {datasource_uid}, f"{file}: {panel['title']} queries {uids}"
        for var in dashboard["templating"]["list"]:
            assert var["datasource"]["uid"] == datasource_uid, f"{file}: ${var['name']}"
        for note in dashboard["annotations"]["list"]:
            if not note.get("builtIn"):
                assert note["datasource"]["uid"] == datasource_uid, f"{file}: annotation {note['name']}"


def test_dashboard_json_is_well_formed(dashboards) -> None:
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids) and all(uids), "every dashboard needs its own fixed uid"
    for file, dashboard in dashboards.items():
        assert dashboard["title"] and dashboard.get("id") is None, f"{file}: provisioned dashboards carry no id"
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(set(ids)) == len(ids), f"{file}: duplicate panel ids"
        for panel in dashboard["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, f"{file}: {panel['title']}"
            refs = [t["refId"] for t in panel.get("targets", [])]
            assert len(set(refs)) == len(refs), f"{file}: {panel['title']} repeats a refId"
            assert panel["type"] == "row" or panel.get("description"), f"{file}: {panel['title']} says nothing"


def test_promtool_parses_every_panel_expression(dashboards, tmp_path: Path) -> None:
    """Each query, with Grafana's variables filled in, as a recording rule: ``promtool check rules`` parses it."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install -y prometheus)")
    rules = []
    for dashboard in dashboards.values():
        for i, (where, expr, _) in enumerate(_expressions(dashboard)):
            filled = re.sub(r"\$__\w+", "1m", expr)
            filled = re.sub(r"\$\{?\w+\}?", ".*", filled)
            rules.append({"record": f"grafana:check_{i}", "expr": filled, "labels": {"panel": where}})
    path = tmp_path / "panels.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "grafana-panels", "rules": rules}]}))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------- compose


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path → host path of a service's bind mounts (``./x:/y[:ro]``)."""
    out = {}
    for volume in service.get("volumes", []):
        host, container, *_ = str(volume).split(":")
        if host.startswith("./"):
            out[container] = ROOT / host
    return out


def test_the_monitoring_profile_holds_the_stack(compose, profile) -> None:
    assert {"prometheus", "alertmanager", "grafana", MONITORING_SERVICE} <= set(profile)
    for name, service in profile.items():
        for dep in service.get("depends_on", {}):
            assert dep in profile, f"{name} depends on {dep}, which `--profile {PROFILE}` does not start"
    # the monitoring service is the project's image running the project's entrypoint
    api = profile[MONITORING_SERVICE]
    assert api["image"] == compose["x-mlsd-image"]["image"]
    assert api["command"][:2] == ["mlsd", "monitoring"]
    port = MonitoringSettings.model_fields["api_port"].default
    assert f"{port}:{port}" in api["ports"] and f":{port}/readyz" in " ".join(api["healthcheck"]["test"])


def test_prometheus_mounts_the_rule_file_and_scrapes_the_profile(profile) -> None:
    mounts = _mounts(profile["prometheus"])
    assert mounts[prom.COMPOSE_RULES_PATH] == prom.RULES_FILE
    config_path = mounts["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_path.read_text())
    assert config["rule_files"] == [prom.COMPOSE_RULES_PATH]
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    port = MonitoringSettings.model_fields["api_port"].default
    assert f"{MONITORING_SERVICE}:{port}" in targets
    (am,) = (t for a in config["alerting"]["alertmanagers"] for sc in a["static_configs"] for t in sc["targets"])
    assert am.split(":")[0] in profile and f":{am.split(':')[1]}" in " ".join(profile["alertmanager"]["ports"])


def test_grafana_reads_the_provisioned_files(profile, datasource_uid) -> None:
    mounts = _mounts(profile["grafana"])
    assert mounts["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    (provider,) = yaml.safe_load(next(PROVIDERS.glob("*.yml")).read_text())["providers"]
    assert provider["type"] == "file" and mounts[provider["options"]["path"]] == DASHBOARDS
    (ds,) = yaml.safe_load(next(DATASOURCES.glob("*.yml")).read_text())["datasources"]
    assert ds["url"] == "http://prometheus:9090" and "prometheus" in profile
    assert profile["grafana"]["depends_on"]["prometheus"] == {"condition": "service_healthy"}
    home = profile["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DASHBOARDS / Path(home).name).is_file() and Path(home).parent == Path(provider["options"]["path"])


def test_alertmanager_posts_to_the_monitoring_service_with_its_token(profile, tmp_path: Path) -> None:
    """Run the compose entrypoint (paths moved into tmp, the binary faked): the config it starts Alertmanager
    with is docker/alertmanager.yml plus a Bearer token read from a file holding the service's token."""
    am, api = profile["alertmanager"], profile[MONITORING_SERVICE]
    token_var = "MLSD_MONITORING_ADMIN_TOKEN"
    assert am["environment"][token_var] == api["environment"][token_var]  # one variable, one default
    source = _mounts(am)["/etc/alertmanager/alertmanager.yml"]
    port = MonitoringSettings.model_fields["api_port"].default
    original = yaml.safe_load(source.read_text())
    assert [w["url"] for r in original["receivers"] for w in r["webhook_configs"]] == [
        f"http://{MONITORING_SERVICE}:{port}/alerts"
    ]

    shell, flag, script = am["entrypoint"]
    assert (shell, flag) == ("/bin/sh", "-c")
    script = script.replace("$$", "$")  # compose's escape for a literal $
    script = script.replace("/etc/alertmanager/alertmanager.yml", "@SRC@")
    script = re.sub(r"/alertmanager(?=/|\s|$)", "@DIR@", script)  # the data folder, not a file name
    script = script.replace("@SRC@", str(source)).replace("@DIR@", str(tmp_path))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "alertmanager"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {shlex.quote(str(tmp_path / "args"))}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", token_var: "s3cret token"}
    proc = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr

    args = (tmp_path / "args").read_text().splitlines()
    config_arg = next(a for a in args if a.startswith("--config.file="))
    rendered_path = Path(config_arg.split("=", 1)[1])
    rendered = yaml.safe_load(rendered_path.read_text())
    credentials = Path(rendered["global"]["http_config"]["authorization"]["credentials_file"])
    assert credentials.read_text() == "s3cret token"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert {k: v for k, v in rendered.items() if k != "global"} == original
    assert "--cluster.listen-address=" in args

    amtool = shutil.which("amtool")
    if amtool is not None:
        check = subprocess.run([amtool, "check-config", str(rendered_path)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr


def _compose_cli() -> list[str] | None:
    """``docker compose`` (v2) when it answers, else Debian's ``docker-compose`` (v1), else None."""
    if shutil.which("docker"):
        try:
            v2 = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=10)
        except subprocess.TimeoutExpired:
            v2 = None
        if v2 is not None and v2.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_docker_compose_accepts_the_monitoring_profile() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    proc = subprocess.run(
        [*cli, "-f", str(COMPOSE), "--profile", PROFILE, "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_promtool_accepts_the_compose_prometheus_config(profile, tmp_path: Path) -> None:
    """``promtool check config`` on docker/prometheus.yml, its rule file path mapped through the compose mount."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install -y prometheus)")
    mounts = _mounts(profile["prometheus"])
    config = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    config["rule_files"] = [str(mounts[path]) for path in config["rule_files"]]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
