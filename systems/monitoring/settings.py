"""Monitoring settings: env prefix ``MLSD_MONITORING_`` with ``MLSD_`` as the fallback."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from systems.common.settings import MlsdSettings


class MonitoringSettings(MlsdSettings):
    """Topics, windows, join bounds, alert policy and ports of the monitoring service."""

    model_config = SettingsConfigDict(env_prefix="MLSD_MONITORING_", extra="forbid")

    api_port: int = 8005
    """The monitoring service: ``/metrics`` (ML metrics for Prometheus), ``/alerts`` webhook, ``/dashboard``."""
    label_topics: str = "labels,recsys.feedback,textclf.feedback"
    """Comma-separated label topics (``systems.common.predictions.LabelRecord``): fraud chargebacks, recsys
    clicks/ratings, text-classifier feedback."""
    group_id: str = "monitoring"
    window_s: float = 60.0
    """Tumbling event-time window; drift and performance are computed per window, system and model version."""
    slide_s: float = 0.0
    """0 = tumbling windows only; > 0 also reports sliding windows of ``window_s`` every ``slide_s``."""
    allowed_lateness_s: float = 30.0
    """A window closes this long after its end (by the stream's event-time watermark): later records are
    counted as late, not silently dropped."""
    label_wait_s: float = 8 * 86_400.0
    """How long a prediction waits for its label (event time) before it is evicted as unlabelled."""
    max_pending: int = 2_000_000
    """At most this many predictions wait for labels (oldest evicted first, counted): bounded memory."""
    min_samples: int = 200
    """No realised-performance or drift alert on fewer records than this in a window."""
    alert_cooldown_s: float = 600.0
    """After an incident fires, the same cause does not fire again for this long (one incident, not a storm)."""
    admin_token: str | None = None
    """Bearer token of the admin endpoints (the Alertmanager webhook, reference reload and rebaseline). None:
    ``mlsd monitoring up`` makes one for its run in ``<data dir>/monitoring/admin_token`` (mode 0600), which the
    CLI's clients (``inject``) read; a service with no token at all refuses admin calls (403)."""
    prometheus_url: str | None = None
    """Where the dashboard reads ops metrics (latency, errors, throughput); None = not shown."""
    prometheus_port: int = 9090
    alertmanager_port: int = 9093
    rebaseline_windows: int = 1
    """A version a retrain request produced takes this many of its first windows as its own reference."""
    reference_dir: Path | None = None
    """Reference summaries (training data or a chosen healthy period); None -> <data_dir>/monitoring/reference."""

    @property
    def labels(self) -> list[str]:
        return [t.strip() for t in self.label_topics.split(",") if t.strip()]

    @property
    def monitoring_dir(self) -> Path:
        return self.system_dir("monitoring")

    @property
    def admin_token_file(self) -> Path:
        return self.monitoring_dir / "admin_token"

    def with_admin_token(self, *, create: bool = False) -> MonitoringSettings:
        """These settings with their admin token: the configured one, else the token file's (made when
        ``create``, as ``mlsd monitoring up`` does; a client on the same data dir only reads it)."""
        if self.admin_token is not None:
            return self
        path = self.admin_token_file
        if not path.exists():
            if not create:
                return self
            import secrets

            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(24))
        return self.model_copy(update={"admin_token": path.read_text().strip()})

    @property
    def references(self) -> Path:
        return self.reference_dir or self.monitoring_dir / "reference"
