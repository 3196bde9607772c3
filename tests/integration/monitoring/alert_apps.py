"""Two tiny apps on the shared factory, served by uvicorn in the Prometheus/Alertmanager test.

- ``create_gauge_app``: exports ``mlsd_monitoring_drift_share`` (as the monitoring service will) and lets the
  test set it (``POST /gauge``), so a rule in ``docker/alerts.yml`` can be driven over its threshold.
- ``create_webhook_app``: Alertmanager's receiver, the same path through ``AlertLoop`` the monitoring service
  takes (settings from the environment, a real producer to the broker); it notes when each delivery arrived.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import Gauge
from pydantic import BaseModel

from systems.common.http import create_app
from systems.monitoring.alerts import AlertLoop, AlertmanagerWebhook
from systems.monitoring.settings import MonitoringSettings

SERIES = {"system": "itest", "model_name": "m", "model_version": "1"}


class GaugeValue(BaseModel):
    value: float


def create_gauge_app() -> FastAPI:
    app = create_app(title="gauge")
    gauge = Gauge(
        "mlsd_monitoring_drift_share",
        "share of drifted features, latest closed window",
        list(SERIES),
        registry=app.state.metrics_registry,
    ).labels(**SERIES)
    gauge.set(0.0)

    @app.post("/gauge")
    async def set_gauge(body: GaugeValue) -> dict[str, float]:
        gauge.set(body.value)
        return {"value": body.value, "set_at": time.time()}

    return app


def create_webhook_app() -> FastAPI:
    received: list[dict[str, Any]] = []
    state: dict[str, AlertLoop] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state["loop"] = AlertLoop.from_settings(MonitoringSettings())
        yield
        state["loop"].close()

    app = create_app(title="webhook", lifespan=lifespan)

    @app.post("/alerts")
    def alerts(body: AlertmanagerWebhook) -> dict[str, Any]:  # sync: the producer's flush blocks
        received.append({"ts": time.time(), "status": body.status, "alerts": [a.status for a in body.alerts]})
        incidents = state["loop"].handle_alertmanager_webhook(body)
        return {"incidents": [i.incident_id for i in incidents]}

    @app.get("/received")
    async def get_received() -> list[dict[str, Any]]:
        return received

    @app.get("/incidents")
    def get_incidents() -> list[dict[str, Any]]:
        return [i.to_dict() for i in state["loop"].incidents()]

    return app
