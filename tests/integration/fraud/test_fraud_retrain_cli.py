"""``mlsd fraud retrain`` as a user runs it (the console script in a subprocess): exit code 0 and the gate's
decision printed, for the trigger that skips and for a retrain that promotes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from systems.common import registry
from systems.fraud.features import FEATURES, LABEL_DELAY_DAYS
from systems.fraud.model import fit_model
from systems.fraud.store import DecisionStore, LabelStore
from systems.fraud.stream import decision_store_url, label_store_url
from systems.fraud.train import register_model

pytestmark = pytest.mark.integration


def _mlsd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    mlsd = Path(sys.executable).parent / "mlsd"
    return subprocess.run(
        [str(mlsd), "fraud", "retrain", *args],
        env={**os.environ, **env, "COLUMNS": "200"},  # rich wraps at the terminal width
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_retrain_cli_prints_the_gate_decision(fraud_world, broker, kit, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = kit.make_settings(
        fraud_world,
        broker,
        model_name=f"fraud-cli-{uuid.uuid4().hex[:8]}",
        label_store_path=f"sqlite:///{tmp_path / 'labels.db'}",
    )
    frame = fraud_world.frame[fraud_world.frame["day"] >= 25]
    X, y = frame[FEATURES].to_numpy(np.float64), frame["fraud"].to_numpy()
    # served decisions (features = what the scorer saw) and their matured labels, as the loop leaves them
    store = DecisionStore(decision_store_url(settings))
    rows = frame[["tx_id", "customer_id", "terminal_id", "ts_s", "amount", "fraud"]].to_numpy().tolist()
    # served score = the truth, so the served AP is 1.0
    store.put_many(
        [
            (int(t), int(c), int(m), int(s), a, float(f), "approve", "0", None, 0, X[i].tobytes())
            for i, (t, c, m, s, a, f) in enumerate(rows)
        ]
    )
    labels = LabelStore(label_store_url(settings))
    delay = LABEL_DELAY_DAYS * 86_400
    labels.put_many(
        [
            (int(r.tx_id), int(r.customer_id), int(r.terminal_id), int(r.ts_s), int(r.fraud), int(r.ts_s) + delay)
            for r in frame.itertuples()
        ]
    )
    store.close()
    labels.close()
    # a champion trained on shuffled labels: any honest candidate beats it on the same window
    weak = fit_model("logreg", "none", X, np.random.default_rng(0).permutation(y), features=FEATURES)
    weak_v = register_model(settings, weak, params={"kind": "weak"}, metrics={})
    registry.set_alias(settings.model_name, registry.CHAMPION, weak_v)
    env = settings.to_env()

    skip = _mlsd(env, "--if-ap-below", "0")  # the served AP cannot be below 0: the trigger does not fire
    assert skip.returncode == 0, skip.stdout + skip.stderr
    assert ">= 0.0: no retrain" in skip.stdout
    assert registry.get_alias_version(settings.model_name, registry.CHAMPION) == weak_v

    run = _mlsd(env, "--kind", "logreg", "--train-days", "12", "--eval-days", "3")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "promoted" in run.stdout and f"champion v{weak_v}" in run.stdout, run.stdout
    assert registry.get_alias_version(settings.model_name, registry.CHAMPION) != weak_v
