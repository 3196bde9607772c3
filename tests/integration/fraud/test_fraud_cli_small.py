"""``mlsd fraud simulate --preset small && mlsd fraud train`` as a user types it (a subprocess each): the small
dataset covers 60 days, not the handbook's 183, and training places the same protocol at the end of the data
instead of failing on an empty period with a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def _mlsd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "systems.cli", "fraud", *args],
        env={**os.environ, **env, "COLUMNS": "200"},  # rich wraps at the terminal width
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_simulate_small_then_train(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"MLSD_DATA_DIR": str(tmp_path / ".mlsd"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    sim = _mlsd(env, "simulate", "--preset", "small")
    assert sim.returncode == 0, sim.stderr
    train = _mlsd(env, "train", "--models", "logreg", "--strategies", "none")
    assert train.returncode == 0, train.stderr[-2000:]
    assert "is champion" in train.stdout and "test days 53..59" in train.stdout
    assert "Traceback" not in train.stderr
