"""The dashboard renders real numbers in a real headless Chromium, and /metrics exports the same windows."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from systems.common.http import ServerProcess

pytestmark = pytest.mark.integration

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run must install it")
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    return binary


def _browse(url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=8000", *args]
    return subprocess.run([*cmd, url], capture_output=True, text=True, timeout=120)


def test_dashboard_renders_ops_and_ml_numbers_in_headless_chromium(tmp_path: Path) -> None:
    env = {"MLSD_MONITORING_DATA_DIR": str(tmp_path / "state")}
    factory = "tests.integration.monitoring.dashboard_app:create_dashboard_app"
    with ServerProcess(factory, env=env, log_path=tmp_path / "api.log", timeout_s=120) as server:
        summary = httpx.get(f"{server.url}/api/summary", timeout=10).json()
        fraud = next(s for s in summary["series"] if s["system"] == "fraud")
        ap = fraud["realised"][0]["value"]
        dom = _browse(f"{server.url}/dashboard", tmp_path, "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        shot = _browse(
            f"{server.url}/dashboard", tmp_path, f"--screenshot={tmp_path / 'dashboard.png'}", "--window-size=1400,1400"
        )
        assert shot.returncode == 0, shot.stderr[-2000:]
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    html = dom.stdout
    # the page drew the JSON: both series, the drifted feature verdicts, the realised metric, the incident
    assert 'data-loaded="true"' in html, html[:2000]
    assert re.search(r'id="series-count">2<', html)
    assert "fraud · fraud-model v7" in html and "recsys · recsys-model v3" in html
    assert html.count(">drifted<") >= 2, "the shifted columns of the fraud window are shown as drifted"
    assert f">{ap:.3f}<" in html, "the realised AP of the latest fraud window is on the page"
    assert re.search(r'class="incident"><td>[^<]+</td><td>fraud / fraud-model v7</td><td>drift</td>', html)
    assert "no Prometheus configured" in html  # the ops panel says why it is empty rather than showing zeros
    assert (tmp_path / "dashboard.png").stat().st_size > 20_000
    # the same windows, as Prometheus sees them
    share = re.search(
        r'mlsd_monitoring_drift_share\{model_name="fraud-model",model_version="7",system="fraud"\} (\S+)', metrics
    )
    assert share is not None and float(share.group(1)) == pytest.approx(fraud["drift_share"])
    clean = re.search(
        r'mlsd_monitoring_drift_share\{model_name="recsys-model",model_version="3",system="recsys"\} (\S+)', metrics
    )
    assert clean is not None and float(clean.group(1)) < 0.5
    assert re.search(
        r'mlsd_monitoring_incidents_open\{cause="drift",model_name="fraud-model",severity="warning",'
        r'system="fraud"\} 1\.0',
        metrics,
    )
