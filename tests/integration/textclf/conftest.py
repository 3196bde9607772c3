"""A served text classifier for the live tests: a gated, promoted champion and a sabotaged challenger."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from systems.common import registry
from systems.common.broker import LocalBroker
from systems.mlops_textclf.gate import promote, run_gate
from systems.mlops_textclf.ingest import DatasetStore, make_batches
from systems.mlops_textclf.settings import TextclfSettings
from systems.mlops_textclf.train import SabotagedClassifier, ci_preset, fit_classifier, log_candidate
from tests.unit.textclf.textclf_support import CONFIG, ingest_all, make_textclf_settings, tiny_corpus

TOKEN = "test-admin-token"


@pytest.fixture()
def served(tmp_path: Path, broker: LocalBroker, monkeypatch: pytest.MonkeyPatch) -> TextclfSettings:
    """A champion (gated, promoted) and a sabotaged challenger forced past the gate (fault injection)."""
    import mlflow

    suffix = uuid.uuid4().hex[:8]
    settings = make_textclf_settings(
        tmp_path / ".mlsd",
        golden_fraction=0.3,
        gate_max_ece=0.2,
        kafka_bootstrap=broker.bootstrap,
        admin_token=TOKEN,
        labels_topic=f"textclf.feedback.{suffix}",
        predictions_topic=f"predictions.{suffix}",
        rollout_tick_s=0.2,
    )
    ingest_all(make_batches(tiny_corpus(), CONFIG, golden_fraction=0.3, seed=0), settings)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
    store = DatasetStore.of(settings)
    head = store.head()
    assert head is not None
    model, _ = fit_classifier(store.load(head.version_id), ci_preset(), classes=CONFIG.class_names)
    model.data_version = head.version_id
    assert run_gate(settings, log_candidate(settings, model)).passed
    promote(settings)
    bad = SabotagedClassifier(model, fraction=0.3)
    mv = mlflow.register_model(f"runs:/{log_candidate(settings, bad)}/model", settings.model_name)
    registry.set_alias(settings.model_name, registry.CHALLENGER, mv.version)
    return settings
