"""A real Prometheus and a real Alertmanager as local subprocesses, their configs, and a small query client.

Ops health (latency, errors, dropped prediction records, lag) and the ML metrics the monitoring service
exports end up in one place and one rule file::

    every service /metrics ──scrape──▶ Prometheus ──rules: docker/alerts.yml──▶ Alertmanager
                                                                                  │ webhook (JSON, version 4)
                                                                                  ▼
                                                         monitoring POST /alerts → alerts.IncidentBook

Why the real binaries rather than a Python imitation: what has to be right is the PromQL of the rules, their
``for:`` holds, Alertmanager's grouping, waiting, repeating and inhibition, and the exact webhook JSON. Debian's
``prometheus`` (2.42) and ``prometheus-alertmanager`` (0.25) are single static binaries that start in about a
second without Docker, so tests and ``mlsd monitoring up`` run the same thing compose runs in containers.

One rule file. :data:`RULES_FILE` (``docker/alerts.yml``) is loaded by the local Prometheus below *and* mounted
into the compose container by ``docker/prometheus.yml``; there is no second copy to drift out of date.

Timing knobs, and what they cost in alert latency (gauge set → webhook received):

- ``scrape_interval_s`` / ``evaluation_interval_s``: a change is seen after at most one scrape plus one
  evaluation (15 s each by default: cheap for a dozen targets; 1 s in tests).
- the rule's ``for:``: ML rules use ``0s`` because their metrics already describe a closed window over at least
  ``min_samples`` records (holding them again only delays the page); ops rules hold 1–5 minutes because rates
  over short ranges are noisy.
- ``group_wait_s``: Alertmanager holds a new group this long so alerts from one evaluation arrive together
  (5 s by default, not upstream's 30 s, to stay within "one window + 5 s"); ``group_interval_s`` spaces updates
  of a group; ``repeat_interval_s`` re-sends a still-firing alert (4 h: the incident book de-duplicates anyway).

The processes. Each launcher is a context manager that picks free ports on 127.0.0.1, keeps its data under a
given folder, waits for ``/-/ready``, stops by PID, runs in its own process group, and (Linux) asks the kernel
to SIGTERM it when the thread that started it dies, so a killed test run leaves no Prometheus behind. Start it
from a long-lived thread (the main thread, a service's lifespan): the kernel ties the signal to that thread.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import yaml

from systems.common.errors import MlsdError
from systems.common.proc import die_with_parent, free_port, port_open, stop_pid

RULES_FILE = Path(__file__).resolve().parents[2] / "docker" / "alerts.yml"
"""The one rule file (ops and ML alerts), shared with the compose Prometheus."""

COMPOSE_RULES_PATH = "/etc/prometheus/alerts.yml"
"""Where ``docker-compose.yml`` mounts :data:`RULES_FILE` inside the Prometheus container."""

PROMETHEUS_PACKAGE = "prometheus"
ALERTMANAGER_PACKAGE = "prometheus-alertmanager"


class ObservabilityError(MlsdError):
    """Prometheus or Alertmanager is missing, misconfigured or not answering; the message says what to do."""


# ------------------------------------------------------------------------------------------- binaries


def find_binary(names: Sequence[str], package: str) -> Path:
    """The first of ``names`` on PATH, or an error naming the Debian package that provides it."""
    for name in names:
        found = shutil.which(name)
        if found:
            return Path(found)
    raise ObservabilityError(
        f"{names[0]} is not installed: `apt-get install -y {package}` (Debian), or put the upstream "
        f"{names[-1]} binary on PATH"
    )


def prometheus_binary() -> Path:
    return find_binary(["prometheus"], PROMETHEUS_PACKAGE)


def alertmanager_binary() -> Path:
    # Debian renames upstream's `alertmanager` to `prometheus-alertmanager`.
    return find_binary(["prometheus-alertmanager", "alertmanager"], ALERTMANAGER_PACKAGE)


def promtool_binary() -> Path:
    return find_binary(["promtool"], PROMETHEUS_PACKAGE)


def amtool_binary() -> Path:
    return find_binary(["amtool"], ALERTMANAGER_PACKAGE)


def _run_tool(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise ObservabilityError(f"{what} failed:\n{out}")
    return out


def check_rules(path: Path = RULES_FILE) -> str:
    """``promtool check rules``: the rule file parses, every expression is valid PromQL. Returns its report."""
    return _run_tool([str(promtool_binary()), "check", "rules", str(path)], f"promtool check rules {path}")


def run_rule_tests(path: Path) -> str:
    """``promtool test rules``: run a rule unit-test file (synthetic series in, expected alerts out)."""
    return _run_tool([str(promtool_binary()), "test", "rules", str(path)], f"promtool test rules {path}")


def check_prometheus_config(path: Path) -> str:
    """``promtool check config``: the config and the rule files it names are valid."""
    return _run_tool([str(promtool_binary()), "check", "config", str(path)], f"promtool check config {path}")


def check_alertmanager_config(path: Path) -> str:
    """``amtool check-config``: routes, receivers and inhibit rules are valid."""
    return _run_tool([str(amtool_binary()), "check-config", str(path)], f"amtool check-config {path}")


# --------------------------------------------------------------------------------------------- configs


def duration(seconds: float) -> str:
    """A Prometheus/Alertmanager duration: 15 → ``15s``, 0.5 → ``500ms``, 14400 → ``4h``."""
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"a duration must be finite and >= 0, got {seconds}")
    ms = round(seconds * 1000)
    if ms % 1000:
        return f"{ms}ms"
    s = ms // 1000
    for unit, size in (("h", 3600), ("m", 60)):
        if s and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


def _host_port(target: str) -> str:
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"scrape target {target!r} is not host:port")
    return target


@dataclass(frozen=True)
class ScrapeTarget:
    """One scrape job: its name (the ``job`` label every alert on it carries) and ``host:port`` targets."""

    job: str
    targets: tuple[str, ...]
    metrics_path: str = "/metrics"

    def __post_init__(self) -> None:
        if not self.job:
            raise ValueError("a scrape job needs a name")
        object.__setattr__(self, "targets", tuple(_host_port(t) for t in self.targets))


def prometheus_config(
    *,
    targets: Sequence[ScrapeTarget],
    scrape_interval_s: float = 15.0,
    evaluation_interval_s: float | None = None,
    rule_files: Sequence[str | Path] = (RULES_FILE,),
    alertmanagers: Sequence[str] = (),
) -> dict[str, Any]:
    """A ``prometheus.yml`` as a dict: scrape jobs, the shared rule file, and where to send alerts.

    ``evaluation_interval_s`` defaults to the scrape interval (evaluating more often than data arrives only
    re-reads the same samples). ``alertmanagers`` are ``host:port`` of Alertmanagers.
    """
    evaluation = scrape_interval_s if evaluation_interval_s is None else evaluation_interval_s
    config: dict[str, Any] = {
        "global": {"scrape_interval": duration(scrape_interval_s), "evaluation_interval": duration(evaluation)},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": t.job,
                "metrics_path": t.metrics_path,
                "static_configs": [{"targets": list(t.targets)}],
            }
            for t in targets
        ],
    }
    if alertmanagers:
        targets_am = [_host_port(a) for a in alertmanagers]
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": targets_am}]}]}
    return config


GROUP_BY = ("alertname", "system", "model_name", "cause")
"""Alertmanager groups (and so notifies) per alert and model: one drifted model is one notification, and
a second model drifting at the same time is a second one, not folded into the first."""


def alertmanager_config(
    *,
    webhook_url: str,
    pager_url: str | None = None,
    group_wait_s: float = 5.0,
    group_interval_s: float = 60.0,
    repeat_interval_s: float = 4 * 3600.0,
    send_resolved: bool = True,
    bearer_token: str | None = None,
) -> dict[str, Any]:
    """An ``alertmanager.yml`` as a dict: every alert to the monitoring webhook, critical ones also paged.

    Routing says who is disturbed. Every alert goes to ``webhook_url`` (the monitoring service's
    ``POST /alerts``), which records it in the incident book beside the service's own ML alerts and shows it
    on the dashboard. Only ``severity="critical"`` alerts (a service down, errors, realised performance
    below target, a broken feature pipeline) also go to ``pager_url``, the on-call's pager (a PagerDuty or
    Opsgenie webhook in production; absent locally). Warnings (drift, latency, an estimated drop) wait for
    working hours on the dashboard and in the retrain loop.

    Inhibition: while a data-quality alert fires for a model, its drift alerts are muted — nulls or unseen
    categories from a broken pipeline *are* drift, and the fix is the pipeline, not the model.
    """
    webhook: dict[str, Any] = {"url": webhook_url, "send_resolved": send_resolved}
    if bearer_token:  # the webhook is an admin endpoint of the monitoring service
        webhook["http_config"] = {"authorization": {"type": "Bearer", "credentials": bearer_token}}
    receivers: list[dict[str, Any]] = [{"name": "monitoring", "webhook_configs": [webhook]}]
    route: dict[str, Any] = {
        "receiver": "monitoring",
        "group_by": list(GROUP_BY),
        "group_wait": duration(group_wait_s),
        "group_interval": duration(group_interval_s),
        "repeat_interval": duration(repeat_interval_s),
    }
    if pager_url:
        receivers.append({"name": "pager", "webhook_configs": [{"url": pager_url, "send_resolved": send_resolved}]})
        # The page is an extra copy: `continue` goes on to the next route, which takes every alert to the
        # monitoring webhook (a matched child route replaces its parent's receiver, so the root alone would not).
        route["routes"] = [
            {"receiver": "pager", "matchers": ['severity="critical"'], "continue": True},
            {"receiver": "monitoring"},
        ]
    return {
        "route": route,
        "receivers": receivers,
        "inhibit_rules": [
            {
                "source_matchers": ['cause="data_quality"'],
                "target_matchers": ['cause=~"drift|feature_drift|prediction_drift"'],
                "equal": ["system", "model_name"],
            }
        ],
    }


def write_yaml(path: Path, config: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------- client


@dataclass(frozen=True)
class Sample:
    """One element of an instant vector: its labels (``__name__`` included when kept) and value."""

    labels: dict[str, str]
    value: float
    ts: float


@dataclass(frozen=True)
class Series:
    """One range-query series: labels and ``(unix_s, value)`` points."""

    labels: dict[str, str]
    points: list[tuple[float, float]]


@dataclass
class PrometheusClient:
    """The HTTP API calls the tests and the dashboard need (instant and range queries, alerts, rules)."""

    url: str
    timeout_s: float = 5.0

    def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        try:
            response = httpx.get(self.url + path, params=params, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise ObservabilityError(f"Prometheus at {self.url} unreachable: {type(exc).__name__}: {exc}") from exc
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if response.status_code != 200 or body.get("status") != "success":
            error = body.get("error") or response.text[:500]
            raise ObservabilityError(f"Prometheus {path} failed (HTTP {response.status_code}): {error}")
        return body["data"]

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        """An instant query; a scalar result comes back as one sample without labels."""
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = at
        data = self._get("/api/v1/query", params)
        if data["resultType"] in ("scalar", "string"):
            ts, value = data["result"]
            return [Sample({}, float(value), float(ts))]
        return [Sample(dict(r["metric"]), float(r["value"][1]), float(r["value"][0])) for r in data["result"]]

    def query_range(self, promql: str, *, start: float, end: float, step_s: float) -> list[Series]:
        data = self._get("/api/v1/query_range", {"query": promql, "start": start, "end": end, "step": step_s})
        return [Series(dict(r["metric"]), [(float(t), float(v)) for t, v in r["values"]]) for r in data["result"]]

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts as Prometheus sees them (before Alertmanager)."""
        return list(self._get("/api/v1/alerts")["alerts"])

    def rules(self) -> list[dict[str, Any]]:
        """Loaded rule groups, each with its ``file`` and rules (state, health, last error)."""
        return list(self._get("/api/v1/rules")["groups"])

    def targets(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/targets")["activeTargets"])


# ------------------------------------------------------------------------------------------- launchers


@dataclass
class _LocalDaemon:
    """What both launchers share: a folder, a port on 127.0.0.1, a log, readiness on ``/-/ready``."""

    folder: Path
    port: int = 0
    """0 picks a free port at start."""
    host: str = "127.0.0.1"
    die_with_parent: bool = True
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    name = "daemon"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        """``host:port``, as other configs name it."""
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.folder / f"{self.name}.log"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self, timeout_s: float = 30.0) -> Self:
        """Write the config, start the binary and wait until ``/-/ready`` answers 200."""
        if self.process is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        elif port_open(self.host, self.port):
            raise ObservabilityError(f"port {self.port} is already in use: stop what holds it, or pick another port")
        cmd = self._command()  # finds the binary first: a missing package fails before anything is written
        preexec = die_with_parent() if self.die_with_parent else None
        with self.log_path.open("ab") as out:
            # process_group=0: its own group, so a signal meant for it never reaches the caller, and the
            # caller's Ctrl-C handling (stop in __exit__) decides when it goes.
            self.process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, process_group=0, preexec_fn=preexec
            )
        try:
            self._wait_ready(timeout_s)
        except ObservabilityError:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        from systems.common.http import wait_http_ok

        try:
            wait_http_ok(self.url + "/-/ready", timeout_s, self.process)
        except (RuntimeError, TimeoutError) as exc:  # exited at start, or never ready: say which, with its log
            raise ObservabilityError(f"{self.name} at {self.url}: {exc}; log:\n{self._log_tail()}") from exc

    def stop(self) -> None:
        if self.process is not None:
            stop_pid(self.process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
            self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class LocalAlertmanager(_LocalDaemon):
    """Debian's ``prometheus-alertmanager`` routing every alert to ``webhook_url`` (see :func:`alertmanager_config`).

    Clustering (gossip on 0.0.0.0:9094 by default) is switched off: one local instance needs no peers, and two
    instances on one machine would otherwise fight over that port.
    """

    webhook_url: str = ""
    pager_url: str | None = None
    group_wait_s: float = 5.0
    group_interval_s: float = 60.0
    repeat_interval_s: float = 4 * 3600.0
    bearer_token: str | None = None
    """The monitoring service's admin token, sent on every webhook call (None: no Authorization header)."""

    name = "alertmanager"

    @property
    def config_path(self) -> Path:
        return self.folder / "alertmanager.yml"

    def config(self) -> dict[str, Any]:
        if not self.webhook_url:
            raise ObservabilityError("LocalAlertmanager needs webhook_url (the monitoring service's POST /alerts)")
        return alertmanager_config(
            webhook_url=self.webhook_url,
            pager_url=self.pager_url,
            group_wait_s=self.group_wait_s,
            group_interval_s=self.group_interval_s,
            repeat_interval_s=self.repeat_interval_s,
            bearer_token=self.bearer_token,
        )

    def _command(self) -> list[str]:
        binary = alertmanager_binary()
        write_yaml(self.config_path, self.config())
        return [
            str(binary),
            f"--config.file={self.config_path}",
            f"--storage.path={self.folder / 'data'}",
            f"--web.listen-address={self.address}",
            "--cluster.listen-address=",
        ]

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts Alertmanager currently holds (API v2)."""
        return list(httpx.get(self.url + "/api/v2/alerts", timeout=5.0).json())


@dataclass
class LocalPrometheus(_LocalDaemon):
    """Debian's ``prometheus`` scraping ``targets``, evaluating :data:`RULES_FILE`, alerting ``alertmanagers``."""

    targets: Sequence[ScrapeTarget] = ()
    scrape_interval_s: float = 15.0
    evaluation_interval_s: float | None = None
    rule_files: Sequence[str | Path] = (RULES_FILE,)
    alertmanagers: Sequence[str] = ()
    retention: str = "1d"
    """Local runs are short; a day of samples keeps the data folder small."""

    name = "prometheus"

    @property
    def config_path(self) -> Path:
        return self.folder / "prometheus.yml"

    @property
    def client(self) -> PrometheusClient:
        return PrometheusClient(self.url)

    def config(self) -> dict[str, Any]:
        for rules in self.rule_files:
            if not Path(rules).is_file():
                raise ObservabilityError(f"rule file {rules} not found (it lives in the repository's docker/)")
        return prometheus_config(
            targets=self.targets,
            scrape_interval_s=self.scrape_interval_s,
            evaluation_interval_s=self.evaluation_interval_s,
            rule_files=[Path(p).resolve() for p in self.rule_files],
            alertmanagers=self.alertmanagers,
        )

    def _command(self) -> list[str]:
        binary = prometheus_binary()
        write_yaml(self.config_path, self.config())
        return [
            str(binary),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.folder / 'data'}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address={self.address}",
        ]

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        return self.client.query(promql, at)

    def query_range(self, promql: str, *, start: float, end: float, step_s: float) -> list[Series]:
        return self.client.query_range(promql, start=start, end=end, step_s=step_s)
