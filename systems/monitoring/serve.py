"""The monitoring service: ML metrics for Prometheus, the Alertmanager webhook, and one dashboard.

    mlsd monitoring up                                    # ingest + this service (+ Prometheus, Alertmanager)
    uvicorn --factory systems.monitoring.serve:create_app --port 8005

What it serves:

- ``GET /metrics`` — the common HTTP metrics *and* the ML metrics of :data:`systems.monitoring.alerts.EXPORTED_METRICS`
  (drift per feature, realised and estimated performance with CIs, null shares, slices, open incidents), read from
  the latest closed window of each series at scrape time, so one Prometheus rule file (``docker/alerts.yml``)
  covers ops and ML alerts alike.
- ``POST /alerts`` — Alertmanager's webhook (version 4 JSON); its alerts land in the same incident book as the
  service's own ML alerts (one timeline, one de-duplication). Needs the admin token when one is configured.
- ``GET /api/summary`` — everything the dashboard draws, as JSON: per system and model version the latest
  window (drift per feature, realised and estimated metrics, label delay, latency) and its history, the ops
  metrics from Prometheus (latency percentiles, errors, throughput, dropped records) when Prometheus is
  configured, and the incident timeline.
- ``GET /dashboard`` — one page with ops metrics beside ML metrics and the incidents, drawn from that JSON.

The view (:class:`MonitorView`) is filled by whoever closes windows (``ingest.py`` in ``mlsd monitoring up``,
the tests directly): ``view.on_window(result)`` stores it and runs the alert loop on it.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field

from systems.common.http import ADMIN_RESPONSES, AdminCredentials, check_admin_token
from systems.common.http import create_app as create_base_app
from systems.monitoring.alerts import (
    EXPORTED_METRICS,
    AlertLoop,
    AlertmanagerWebhook,
    AlertPolicy,
    drift_score,
    feature_quality,
)
from systems.monitoring.results import Metric, WindowResult
from systems.monitoring.settings import MonitoringSettings

log = logging.getLogger(__name__)


class RebaselineBody(BaseModel):
    """``POST /api/references/rebaseline``: which version, and how many of its next windows."""

    system: str = Field(min_length=1, max_length=64)
    model_name: str = Field(min_length=1, max_length=128)
    model_version: str = Field(min_length=1, max_length=64)
    windows: int = Field(default=1, ge=1, le=100)


SeriesKey = tuple[str, str, str]  # (system, model_name, model_version)


def _finite(v: float | None) -> float:
    return float(v) if v is not None and math.isfinite(v) else math.nan


class MonitorView:
    """The latest closed window of every series, a bounded history, the alert loop and the ingest counters."""

    def __init__(
        self,
        alerts: AlertLoop | None = None,
        *,
        history: int = 2000,
        min_samples: int = 200,
        ingest_stats: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.alerts = alerts
        self.min_samples = min_samples
        self.ingest_stats = ingest_stats
        self.latest: dict[SeriesKey, WindowResult] = {}
        self.history: deque[WindowResult] = deque(maxlen=history)
        self.lock = threading.Lock()

    def on_window(self, result: WindowResult) -> None:
        """A window closed (or gained matured labels): keep it and let the alert loop judge it."""
        k = result.key
        key = (k.system, k.model_name, k.model_version)
        with self.lock:
            current = self.latest.get(key)
            if current is None or current.key.end_ms <= k.end_ms:
                self.latest[key] = result
            # a re-emitted window (labels matured) replaces its earlier copy in the history
            for i, old in enumerate(self.history):
                if old.key == k:
                    self.history[i] = result
                    break
            else:
                self.history.append(result)
        if self.alerts is not None:
            self.alerts.on_window(result)

    def snapshot(self) -> tuple[dict[SeriesKey, WindowResult], list[WindowResult]]:
        with self.lock:
            return dict(self.latest), list(self.history)

    # ---- what the dashboard draws --------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        latest, history = self.snapshot()
        series = []
        for (system, model_name, version), r in sorted(latest.items()):
            guarded = r.count < self.min_samples
            cols = r.drift.get("columns", []) if r.drift else []
            series.append(
                {
                    "system": system,
                    "model_name": model_name,
                    "model_version": version,
                    "window": {"start_ms": r.key.start_ms, "end_ms": r.key.end_ms},
                    "count": r.count,
                    "late": r.late,
                    "labelled": r.labelled,
                    "under_min_samples": guarded,
                    "drift_share": r.drift.get("share_of_drifted_columns") if r.drift else None,
                    "dataset_drift": r.drift.get("dataset_drift") if r.drift else None,
                    "features": [
                        {
                            "name": c["column"],
                            "role": c.get("role"),
                            "method": c.get("method"),
                            "statistic": c.get("statistic"),
                            "threshold": c.get("threshold"),
                            "drifted": c.get("drifted"),
                            "null_share": c.get("current_null_share"),
                        }
                        for c in cols
                    ],
                    "realised": [_metric_dict(m) for m in r.realised],
                    "estimated": [_metric_dict(m) for m in r.estimated],
                    "slices": {s: [_metric_dict(m) for m in ms] for s, ms in r.slices.items()},
                    "label_delay_s_p50": r.label_delay_s_p50,
                    "latency_ms_p99": r.latency_ms_p99,
                    "history": [
                        {
                            "end_ms": h.key.end_ms,
                            "count": h.count,
                            "drift_share": h.drift.get("share_of_drifted_columns") if h.drift else None,
                            **{f"realised.{m.name}": m.value for m in h.realised},
                            **{f"estimated.{m.name}": m.value for m in h.estimated},
                        }
                        for h in history
                        if (h.key.system, h.key.model_name, h.key.model_version) == (system, model_name, version)
                    ],
                }
            )
        incidents = [] if self.alerts is None else [i.to_dict() for i in self.alerts.incidents()]
        incidents.sort(key=lambda i: i.get("opened_ts_ms", 0), reverse=True)
        return {
            "generated_ms": int(time.time() * 1000),
            "series": series,
            "incidents": incidents,
            "ingest": self.ingest_stats() if self.ingest_stats else {},
        }


def _metric_dict(m: Metric) -> dict[str, Any]:
    return {"name": m.name, "value": m.value, "low": m.low, "high": m.high, "n": m.n}


class MonitoringCollector(Collector):
    """Exports the latest window of every series under the names of ``EXPORTED_METRICS`` at scrape time.

    A window under the minimum-sample guard exports NaN for its ML gauges, so no rule fires on a handful of
    records (NaN compares false in PromQL).
    """

    def __init__(self, view: MonitorView, policy: AlertPolicy | None = None) -> None:
        self.view = view
        self._policy = policy or AlertPolicy()

    @property
    def policy(self) -> AlertPolicy:
        """The alert loop's current policy (references reloaded at run time bring new targets)."""
        return self.view.alerts.policy if self.view.alerts is not None else self._policy

    def _family(self, name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=list(EXPORTED_METRICS[name]))

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        latest, _ = self.view.snapshot()
        g = {
            n: self._family(n, doc)
            for n, doc in (
                ("mlsd_monitoring_window_records", "predictions in the latest closed window"),
                ("mlsd_monitoring_drift_share", "share of drifted feature columns, latest window"),
                ("mlsd_monitoring_feature_drift", "feature drift statistic as a multiple of its threshold"),
                ("mlsd_monitoring_prediction_drift", "output drift statistic as a multiple of its threshold"),
                ("mlsd_monitoring_null_share", "share of nulls per feature, latest window"),
                ("mlsd_monitoring_reference_null_share", "share of nulls per feature in the reference"),
                ("mlsd_monitoring_unseen_share", "share of categorical values unseen in the reference"),
                ("mlsd_monitoring_realised_metric", "performance on matured labels"),
                ("mlsd_monitoring_realised_metric_low", "lower end of the realised metric's 95% CI"),
                ("mlsd_monitoring_realised_metric_high", "upper end of the realised metric's 95% CI"),
                ("mlsd_monitoring_estimated_metric", "performance estimated from calibrated scores"),
                ("mlsd_monitoring_metric_floor", "alert bound of a higher-is-better metric"),
                ("mlsd_monitoring_metric_ceiling", "alert bound of a lower-is-better metric"),
                ("mlsd_monitoring_slice_metric", "realised metric per segment"),
                ("mlsd_monitoring_slice_metric_low", "lower end of the segment metric's CI"),
                ("mlsd_monitoring_slice_metric_high", "upper end of the segment metric's CI"),
                ("mlsd_monitoring_label_delay_seconds", "median label delay of the window"),
                ("mlsd_monitoring_model_latency_p99_ms", "p99 of the records' latency_ms, latest window"),
                ("mlsd_monitoring_watermark_lag_seconds", "wall clock minus the event-time watermark"),
                ("mlsd_monitoring_incidents_open", "open incidents"),
            )
        }
        watermarks: dict[str, int] = {}
        floors: set[tuple[str, str, str]] = set()
        references: set[tuple[str, str, str]] = set()
        for (system, model, version), r in latest.items():
            base = [system, model, version]
            ok = r.count >= self.view.min_samples
            g["mlsd_monitoring_window_records"].add_metric(base, float(r.count))
            watermarks[system] = max(watermarks.get(system, 0), r.key.end_ms)
            if r.drift:
                share = r.drift.get("share_of_drifted_columns")
                g["mlsd_monitoring_drift_share"].add_metric(base, _finite(share) if ok else math.nan)
                for col in r.drift.get("columns", []):
                    score = drift_score(col) if ok else None
                    name = col["column"]
                    if col.get("role") == "prediction":
                        g["mlsd_monitoring_prediction_drift"].add_metric([*base, name], _finite(score))
                    else:
                        g["mlsd_monitoring_feature_drift"].add_metric([*base, name], _finite(score))
                quality = feature_quality(r)
                for feature, q in quality.items():
                    null = q.get("null_share") if ok else None
                    g["mlsd_monitoring_null_share"].add_metric([*base, feature], _finite(null))
                    if (system, model, feature) not in references:  # one series per model, not per version
                        references.add((system, model, feature))
                        g["mlsd_monitoring_reference_null_share"].add_metric(
                            [system, model, feature], _finite(q.get("reference_null_share"))
                        )
                    if q.get("unseen_share") is not None:
                        unseen = q.get("unseen_share") if ok else None
                        g["mlsd_monitoring_unseen_share"].add_metric([*base, feature], _finite(unseen))
            for m in r.realised:
                labels = [*base, m.name]
                enough = m.n >= self.policy.min_samples
                g["mlsd_monitoring_realised_metric"].add_metric(labels, _finite(m.value if enough else None))
                g["mlsd_monitoring_realised_metric_low"].add_metric(labels, _finite(m.low if enough else None))
                g["mlsd_monitoring_realised_metric_high"].add_metric(labels, _finite(m.high if enough else None))
                target = self.policy.target(system, model, m.name)
                if target is not None and (system, model, m.name) not in floors:
                    floors.add((system, model, m.name))
                    which = "floor" if target.higher_is_better else "ceiling"
                    g[f"mlsd_monitoring_metric_{which}"].add_metric([system, model, m.name], target.bound)
            for m in r.estimated:
                g["mlsd_monitoring_estimated_metric"].add_metric([*base, m.name], _finite(m.value if ok else None))
            for slice_name, metrics in r.slices.items():
                for m in metrics:
                    labels = [*base, slice_name, m.name]
                    enough = m.n >= self.policy.slice_min_samples
                    g["mlsd_monitoring_slice_metric"].add_metric(labels, _finite(m.value if enough else None))
                    g["mlsd_monitoring_slice_metric_low"].add_metric(labels, _finite(m.low if enough else None))
                    g["mlsd_monitoring_slice_metric_high"].add_metric(labels, _finite(m.high if enough else None))
            if r.label_delay_s_p50 is not None:
                g["mlsd_monitoring_label_delay_seconds"].add_metric(base, float(r.label_delay_s_p50))
            if r.latency_ms_p99 is not None:
                g["mlsd_monitoring_model_latency_p99_ms"].add_metric(base, _finite(r.latency_ms_p99 if ok else None))
        now_ms = time.time() * 1000
        for system, end_ms in watermarks.items():
            g["mlsd_monitoring_watermark_lag_seconds"].add_metric([system], (now_ms - end_ms) / 1000.0)
        if self.view.alerts is not None:
            counts: dict[tuple[str, str, str, str], int] = {}
            for inc in self.view.alerts.incidents(status="open"):
                open_key = (inc.system, inc.model_name, inc.cause, str(inc.severity))
                counts[open_key] = counts.get(open_key, 0) + 1
            for open_key, n in counts.items():
                g["mlsd_monitoring_incidents_open"].add_metric(list(open_key), float(n))
        yield from g.values()
        stats = self.view.ingest_stats() if self.view.ingest_stats else {}
        dead = CounterMetricFamily(
            "mlsd_monitoring_dead_letters",
            "records sent to <topic>.dlq",
            labels=list(EXPORTED_METRICS["mlsd_monitoring_dead_letters_total"]),
        )
        for topic, n in (stats.get("dead_letters") or {}).items():
            dead.add_metric([topic], float(n))
        yield dead


# --------------------------------------------------------------------------------------------- ops view


def ops_metrics(prometheus_url: str | None) -> dict[str, Any]:
    """Latency percentiles, error and request rates, dropped prediction records per scraped service.

    From Prometheus (the same numbers its rules see); an empty answer with the reason when it is not there.
    """
    if not prometheus_url:
        return {"available": False, "reason": "no Prometheus configured (MLSD_MONITORING_PROMETHEUS_URL)"}
    from systems.monitoring.prometheus import PrometheusClient

    client = PrometheusClient(prometheus_url)
    queries = {
        "p50_ms": "1000 * histogram_quantile(0.5, sum by (job, le) (rate(http_request_seconds_bucket[1m])))",
        "p99_ms": "1000 * histogram_quantile(0.99, sum by (job, le) (rate(http_request_seconds_bucket[1m])))",
        "rps": "sum by (job) (rate(http_requests_total[1m]))",
        "error_rate": 'sum by (job) (rate(http_requests_total{status=~"5.."}[1m]))'
        " / sum by (job) (rate(http_requests_total[1m]))",
        "dropped_records": "sum by (job) (mlsd_predictions_dropped_total)",
        "up": "up",
    }
    jobs: dict[str, dict[str, float | None]] = {}
    try:
        for name, promql in queries.items():
            for sample in client.query(promql):
                job = sample.labels.get("job", "?")
                value = sample.value if math.isfinite(sample.value) else None
                jobs.setdefault(job, {})[name] = value
    except Exception as exc:  # Prometheus down must not take the dashboard down
        return {"available": False, "reason": f"Prometheus at {prometheus_url}: {type(exc).__name__}: {exc}"}
    return {"available": True, "jobs": jobs}


# ------------------------------------------------------------------------------------------------- app


def _view(request: Request) -> MonitorView:
    view: MonitorView = request.app.state.view
    return view


ViewDep = Annotated[MonitorView, Depends(_view)]


def create_app(
    settings: MonitoringSettings | None = None,
    *,
    view: MonitorView | None = None,
    on_start: Callable[[FastAPI, MonitorView], Callable[[], None] | None] | None = None,
) -> FastAPI:
    """App factory. ``view`` defaults to one with an alert loop from settings; ``on_start(app, view)`` may
    start the ingest and return a stop function (``mlsd monitoring up`` does)."""
    settings = settings or MonitoringSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal view
        settings.ensure_dirs()
        settings.monitoring_dir.mkdir(parents=True, exist_ok=True)
        if view is None:
            view = MonitorView(AlertLoop.from_settings(settings), min_samples=settings.min_samples)
        app.state.view = view
        policy = view.alerts.policy if view.alerts is not None else AlertPolicy()
        app.state.metrics_registry.register(MonitoringCollector(view, policy))
        stop = on_start(app, view) if on_start is not None else None
        yield
        if stop is not None:
            stop()
        if view.alerts is not None:
            view.alerts.close()

    def ready() -> bool:
        ingest_ready: Callable[[], bool] = getattr(app.state, "ingest_ready", lambda: True)
        return hasattr(app.state, "view") and ingest_ready()

    app = create_base_app(title="mlsd monitoring", lifespan=lifespan, ready=ready)

    def admin(credentials: AdminCredentials) -> None:
        check_admin_token(credentials, settings.admin_token, env_var="MLSD_MONITORING_ADMIN_TOKEN")

    Admin = Depends(admin)  # a dependency: the token is checked before the body is read or validated

    @app.post("/alerts", dependencies=[Admin], responses=ADMIN_RESPONSES)
    async def alerts_webhook(body: AlertmanagerWebhook, view: ViewDep) -> dict[str, Any]:
        """Alertmanager's webhook: its alerts become incidents of the shared book."""
        if view.alerts is None:
            raise HTTPException(status_code=503, detail="no alert loop configured")
        touched = view.alerts.handle_alertmanager_webhook(body)
        return {"incidents": [i.incident_id for i in touched]}

    def live_hook(name: str) -> Callable[..., Any]:
        """What ``LiveMonitor.start`` put on the app; 503 when this service runs without the live ingest."""
        hook: Callable[..., Any] | None = getattr(app.state, name, None)
        if hook is None:
            raise HTTPException(status_code=503, detail="this service has no live ingest (mlsd monitoring up)")
        return hook

    @app.post("/api/references/reload", dependencies=[Admin], responses=ADMIN_RESPONSES)
    async def reload_references() -> dict[str, Any]:
        """Re-read the reference folder (a new model's training summary, its validation metrics as targets)."""
        return {"references": live_hook("reload_references")()}

    @app.post("/api/references/rebaseline", dependencies=[Admin], responses=ADMIN_RESPONSES)
    async def rebaseline(body: RebaselineBody) -> dict[str, Any]:
        """Make a model version's next windows its own reference (an accepted change upstream)."""
        started = live_hook("rebaseline")(body.system, body.model_name, body.model_version, windows=body.windows)
        return {"started": started, "version": f"{body.system}/{body.model_name}/{body.model_version}"}

    @app.get("/api/summary")
    async def summary(view: ViewDep) -> dict[str, Any]:
        """Everything the dashboard draws (ML metrics per series, ops metrics, incidents)."""
        out = view.summary()
        out["ops"] = ops_metrics(settings.prometheus_url)
        return out

    @app.get("/dashboard", response_class=HTMLResponse)
    async def dashboard() -> HTMLResponse:
        """Ops metrics beside ML metrics, per system and model version, and the incident timeline."""
        return HTMLResponse(dashboard_html())

    return app


@functools.cache
def dashboard_html() -> str:
    """The page (static HTML + JS that draws ``/api/summary``), read once on first request."""
    return (Path(__file__).parent / "dashboard.html").read_text()


# ------------------------------------------------------------------------------------------------ live


class LiveMonitor:
    """What ``mlsd monitoring up`` runs beside the HTTP app: the ingest, a timer, references and targets.

    - the ingest: two consumer-group members (predictions, labels) feeding :class:`MonitorState`, whose
      closed windows go to the view and so to the alert loop;
    - a timer: idle polls (windows re-emitted as labels mature even when no record arrives) and the
      :class:`~systems.monitoring.alerts.RetrainWatcher` (which version each retrain request produced);
    - references from ``settings.references``, with the metrics they carry as per-model alert targets;
      ``POST /api/references/reload`` installs new ones without a restart;
    - re-baselining: a version a retrain request produced (found by the watcher) takes its first
      ``rebaseline_windows`` windows as its reference, persisted beside the others so a restart keeps it;
      ``POST /api/references/rebaseline`` does the same for any version.

    ``/readyz`` says ready once both members have their partitions. A bug in a handler stops the ingest and
    is kept in :attr:`errors` (and makes ``/readyz`` fail), never silently.
    """

    def __init__(
        self,
        settings: MonitoringSettings,
        *,
        lookup: Callable[[str, str], list[str]] | None = None,
        client: str | None = None,
        poll_s: float = 1.0,
        registry_poll_s: float = 5.0,
        tolerance: float = 0.1,
        gc_freeze: bool = False,
    ) -> None:
        from systems.monitoring.alerts import RetrainWatcher, registry_lookup
        from systems.monitoring.ingest import MonitorState
        from systems.monitoring.windows import load_references

        self.settings = settings
        self.tolerance = tolerance
        self.client = client
        self.poll_s = poll_s
        self.registry_poll_s = registry_poll_s
        self.gc_freeze = gc_freeze
        refs = load_references(settings.references)
        self.loop = AlertLoop.from_settings(settings, policy=self._policy(refs))
        self.state = MonitorState.from_settings(settings, references=refs)
        self.view = MonitorView(self.loop, min_samples=settings.min_samples, ingest_stats=self.ingest_stats)
        self.state.on_result = self.view.on_window
        self.state.windows.on_reference = self._save_version_reference
        self.watcher = RetrainWatcher(self.loop, lookup or registry_lookup(settings))
        self.ready = threading.Event()
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []

    def _policy(self, refs: Any) -> AlertPolicy:
        from systems.monitoring.alerts import targets_from_references

        targets, slice_targets = targets_from_references(refs, self.tolerance)
        return AlertPolicy.from_settings(self.settings, targets=targets, slice_targets=slice_targets)

    def reload_references(self) -> list[str]:
        """Install every reference in the folder (new series use it) and its targets; returns their names."""
        from systems.monitoring.windows import load_references, load_version_references

        refs = load_references(self.settings.references)
        versions = load_version_references(self.settings.references)
        with self.state.lock:
            for (system, model_name), ref in refs.items():
                self.state.windows.set_reference(system, model_name, ref)
            for key, ref in versions.items():
                self.state.windows.version_references.setdefault(key, ref)
        policy = self._policy(refs)
        with self.loop.lock:
            self.loop.policy = policy
        return [f"{system}/{model}" for system, model in sorted(refs)]

    def rebaseline(self, system: str, model_name: str, model_version: str, *, windows: int | None = None) -> bool:
        """Start re-baselining one version (``Windows.rebaseline``); False when it has or awaits one."""
        with self.state.lock:
            started = self.state.windows.rebaseline(
                system, model_name, model_version, windows=windows or self.settings.rebaseline_windows
            )
        if started:
            log.info("re-baselining %s/%s version %s", system, model_name, model_version)
        return started

    def _save_version_reference(self, key: tuple[str, str, str], reference: Any) -> None:
        from systems.monitoring.windows import version_reference_path

        try:
            reference.save(version_reference_path(self.settings.references, *key))
        except OSError:  # the reference still serves this run; a restart re-judges against the model's
            log.exception("could not persist the re-baselined reference of %s", "/".join(key))

    def ingest_stats(self) -> dict[str, Any]:
        from systems.common.broker import dead_letter_topic

        c = self.state.counters
        labels = ",".join(dead_letter_topic(t) for t in self.settings.labels)
        return {
            "dead_letters": {
                dead_letter_topic(self.settings.predictions_topic): c.prediction_dead_letters,
                labels: c.label_dead_letters,
            },
            **self.state.snapshot(),
        }

    def is_ready(self) -> bool:
        return self.ready.is_set() and not self.errors

    def _ingest(self) -> None:
        from systems.monitoring.ingest import run_ingest

        try:
            run_ingest(
                self.settings,
                self.state,
                self.stop_event,
                on_ready=self.ready.set,
                client=self.client,
                fast=True,
                gc_freeze=self.gc_freeze,
            )
        except BaseException as exc:  # a bug, not bad data (bad data is dead-lettered): keep it visible
            log.exception("monitoring ingest stopped")
            self.errors.append(exc)

    def _timer(self) -> None:
        last_registry = 0.0
        while not self.stop_event.wait(self.poll_s):
            try:
                self.state.poll()
                if time.monotonic() - last_registry >= self.registry_poll_s:
                    last_registry = time.monotonic()
                    for inc in self.watcher.check():
                        if inc.retrained_version is not None:
                            self.rebaseline(inc.system, inc.model_name, inc.retrained_version)
            except Exception:  # a failed poll must not end the timer: the next tick retries
                log.exception("monitoring timer tick failed")

    def start(self, app: FastAPI | None = None, view: MonitorView | None = None) -> Callable[[], None]:
        """Start the ingest and the timer (``create_app``'s ``on_start``); returns :meth:`stop`."""
        if app is not None:
            app.state.ingest_ready = self.is_ready
            app.state.reload_references = self.reload_references
            app.state.rebaseline = self.rebaseline
        for name, target in (("monitoring-ingest", self._ingest), ("monitoring-timer", self._timer)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self.stop

    def stop(self) -> None:
        self.stop_event.set()
        for t in self._threads:
            t.join(timeout=15)
        self._threads.clear()

    def create_app(self) -> FastAPI:
        return create_app(self.settings, view=self.view, on_start=lambda app, view: self.start(app, view))
