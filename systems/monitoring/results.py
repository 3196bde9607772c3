"""What a closed monitoring window says: the hand-off between the windowing stage and the alerting stage.

``windows.py`` closes event-time windows (per system, model name and version) and emits one
:class:`WindowResult` each; ``alerts.py`` turns results into signals, incidents and retrain requests;
``serve.py`` exports them as Prometheus metrics and shows them on the dashboard. Everything here is plain
data (JSON-able through :meth:`WindowResult.to_dict`), so the stages can be tested apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class WindowKey:
    """One series: a model version of a system, in one event-time window ``[start_ms, end_ms)``."""

    system: str
    model_name: str
    model_version: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class Metric:
    """A performance number with its uncertainty; ``value`` is None under the minimum-sample guard."""

    name: str
    value: float | None
    low: float | None = None
    high: float | None = None
    n: int = 0


@dataclass
class WindowResult:
    """Everything measured for one window (filled as far as the data allows)."""

    key: WindowKey
    count: int
    """Predictions whose event time falls in the window."""
    late: int = 0
    """Records that arrived after the window had closed (counted, not used)."""
    drift: dict[str, Any] = field(default_factory=dict)
    """``drift.DriftReport.to_dict()`` against the reference: per column method, statistic, threshold, drifted."""
    data_quality: dict[str, Any] = field(default_factory=dict)
    """Per feature: null share, unseen-category share (a broken pipeline shows here before drift does)."""
    realised: list[Metric] = field(default_factory=list)
    """Performance on matured labels (with CIs), e.g. fraud AP / precision at the alert budget / FPR."""
    estimated: list[Metric] = field(default_factory=list)
    """Performance estimated from calibrated scores before labels arrive (CBPE-style)."""
    labelled: int = 0
    """Predictions of this window whose label has arrived so far."""
    label_delay_s_p50: float | None = None
    latency_ms_p99: float | None = None
    slices: dict[str, list[Metric]] = field(default_factory=dict)
    """Per segment (e.g. fraud spending band, recsys age group): the same realised metrics."""
    output_kind: str | None = None
    """What the model answers, which decides the metrics: ``binary`` score, ``multiclass`` label, ``ranked`` list."""
    revision: int = 0
    """0 when the window closes; +1 each time it is re-emitted because labels (or late records) arrived."""
    final: bool = False
    """The label wait is over: this is the window's last revision."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
