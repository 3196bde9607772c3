"""The monitoring service with a view filled from real drift computations, for the headless-browser test.

Two series: a fraud model whose current window is drifted (the synthetic frames' shifted columns) with realised
metrics and an incident from the real alert loop, and a clean recsys model. ``MLSD_MONITORING_DATA_DIR`` tells
where the incident book lives.
"""

from __future__ import annotations

from fastapi import FastAPI

from systems.monitoring.alerts import AlertLoop, AlertPolicy, IncidentBook
from systems.monitoring.drift import detect_drift, fit_schema
from systems.monitoring.results import Metric, WindowKey, WindowResult
from systems.monitoring.serve import MonitorView, create_app
from systems.monitoring.settings import MonitoringSettings
from systems.monitoring.synthetic import make_drift_frames

T0 = 1_800_000_000_000


def _window(system: str, version: str, i: int, *, drifted: bool) -> WindowResult:
    frames = make_drift_frames(4000, numeric=4, categorical=2, seed=i)
    schema = fit_schema(frames.reference, numerical=frames.numerical, categorical=frames.categorical)
    current = frames.current if drifted else frames.reference.sample(frac=1.0, random_state=i)
    report = detect_drift(schema.summarize(frames.reference), schema.summarize(current))
    ap = 0.62 - 0.05 * i if drifted else 0.71
    return WindowResult(
        key=WindowKey(system, f"{system}-model", version, T0 + i * 60_000, T0 + (i + 1) * 60_000),
        count=4000,
        drift=report.to_dict(),
        realised=[Metric("average_precision", ap, ap - 0.03, ap + 0.03, 4000)],
        estimated=[Metric("accuracy", 0.955, None, None, 4000)],
        labelled=3000,
        label_delay_s_p50=604_800.0,
        latency_ms_p99=1.7,
    )


def create_dashboard_app() -> FastAPI:
    settings = MonitoringSettings()
    settings.monitoring_dir.mkdir(parents=True, exist_ok=True)
    policy = AlertPolicy(min_samples=200)
    loop = AlertLoop(IncidentBook(settings.monitoring_dir / "incidents.db"), None, policy)
    view = MonitorView(loop, min_samples=200)
    for i in range(3):
        view.on_window(_window("fraud", "7", i, drifted=True))
        view.on_window(_window("recsys", "3", i, drifted=False))
    return create_app(settings, view=view)
