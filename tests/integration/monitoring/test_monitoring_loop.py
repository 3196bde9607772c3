"""The whole loop with real parts (``mlsd monitoring demo``): drift injected into fraud → incident → one retrain
request → fraud retrains on labels from after the change → new champion → the drift and performance incidents
resolve as recovered on it."""

from __future__ import annotations

import pytest

from systems.monitoring.demo import LoopConfig, run_loop

pytestmark = pytest.mark.integration


def test_drift_in_fraud_is_detected_retrained_and_recovers() -> None:
    cfg = LoopConfig()
    result = run_loop(cfg, say=lambda _line: None)
    by_cause = {i["cause"]: i for i in result.incidents}
    perf = by_cause["performance_drop"]
    assert perf["severity"] == "critical" and perf["model_version"] == "1"
    assert result.recovered is True and perf["status"] == "resolved" and perf["recovered"] is True
    new = perf["retrained_version"]
    assert new not in (None, "1") and perf["recovery_evidence"]["model_version"] == new
    # the drift incident too: the retrained version, re-baselined on its own first window, drifts no more
    drift = by_cause["drift"]
    assert drift["retrained_version"] == new and drift["recovered"] is True and drift["status"] == "resolved"
    windows = {(w["day"], w["version"]): w for w in result.windows}
    # one retrain request for the model: every incident that asked points at the same request
    requested = {i["retrain_request_id"] for i in result.incidents if i["retrain_request_id"]}
    assert len(requested) == 1, requested
    events = [e["event"] for e in result.timeline]
    assert sum(e.startswith("fraud retrain listener: retrained") for e in events) == 1, events
    # before the drift the champion met its target; after it, its matured windows were far below; the new
    # version's matured windows are back above the alert bound
    bound = result.reference_ap - cfg.tolerance
    before = [w["ap"] for (d, v), w in windows.items() if d < cfg.drift_day and w["ap"] is not None]
    after_v1 = [w["ap"] for (d, v), w in windows.items() if d >= cfg.drift_day and v == "1" and w["ap"] is not None]
    after_new = [w["ap"] for (d, v), w in windows.items() if v == new and w["ap"] is not None]
    assert before and min(before) > bound - 0.15
    assert after_v1 and max(after_v1) < bound
    assert len(after_new) >= 3 and sorted(after_new)[len(after_new) // 2] > bound
