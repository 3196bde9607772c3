import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_selftest_writes_json_and_png(tmp_path) -> None:
    out = tmp_path / "selftest.json"
    cmd = [sys.executable, "-m", "systems.cli", "bench", "selftest", "--out", str(out)]
    cmd += ["--rates", "100,200", "--duration", "1", "--repeats", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())["selftest"]
    for key in ("offered_rps", "achieved_rps", "errors", "latency_ms", "runs", "baseline", "provenance"):
        assert key in report
    assert "bench selftest" in report["provenance"]["command"] and report["provenance"]["machine"]["loadavg_1m"] >= 0
    assert set(report["latency_ms"]) >= {"p50", "p95", "p99"}
    assert report["errors"] == 0 and report["achieved_rps"] > 0.9 * report["offered_rps"]
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p95"] <= report["latency_ms"]["p99"]
    assert out.with_suffix(".png").stat().st_size > 10_000
