"""The promotion gate on the tiny corpus: a first model must beat the majority baseline; a worse model is blocked,
a better one becomes challenger, an equal one is not promoted (noise never promotes); every gated version is
registered with its result; promote and rollback move the aliases; each check can refuse on its own."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from systems.common import registry
from systems.mlops_textclf.evaluate import ModelEvaluation, behavioural_tests, evaluate_frame
from systems.mlops_textclf.gate import (
    GATE_TAG,
    PREVIOUS,
    ROLLOUT_TAG,
    gate_checks,
    promote,
    rollback,
    run_gate,
)
from systems.mlops_textclf.ingest import DatasetStore, load_golden, make_batches
from systems.mlops_textclf.settings import TextclfSettings
from systems.mlops_textclf.train import TextClassifier, ci_preset, fit_classifier, log_candidate, train
from tests.unit.textclf.test_textclf_evaluate import InvertedModel, LexiconModel
from tests.unit.textclf.textclf_support import CONFIG, ingest_all, make_textclf_settings, tiny_corpus

pytestmark = pytest.mark.unit


@pytest.fixture()
def gated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TextclfSettings:
    """The tiny corpus with a larger golden set (30 %, ~55 rows: enough for McNemar to see a real difference)."""
    # ECE over ~55 rows of a model trained on ~130 is coarse: a looser calibration bound for this corpus
    settings = make_textclf_settings(tmp_path / ".mlsd", golden_fraction=0.3, gate_max_ece=0.2)
    ingest_all(make_batches(tiny_corpus(), CONFIG, golden_fraction=0.3, seed=0), settings)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
    return settings


def _good(settings: TextclfSettings) -> TextClassifier:
    store = DatasetStore.of(settings)
    head = store.head()
    assert head is not None
    model, _ = fit_classifier(store.load(head.version_id), ci_preset(), classes=CONFIG.class_names)
    model.data_version = head.version_id
    return model


def _worse(model: TextClassifier) -> TextClassifier:
    """The same scores behind a threshold of 0.97: most positives are called negative (truly worse, same ECE)."""
    worse = copy.copy(model)
    worse.threshold = 0.97
    return worse


def _versions(settings: TextclfSettings) -> list[int]:
    from mlflow import MlflowClient

    return sorted(int(v.version) for v in MlflowClient().search_model_versions(f"name='{settings.model_name}'"))


def test_first_model_beats_the_majority_baseline_and_is_registered_with_its_result(gated: TextclfSettings) -> None:
    from mlflow import MlflowClient

    run = train(gated, ci_preset()).run_id
    result = run_gate(gated, run)
    assert result.passed, result.reasons
    assert result.champion_version is None and result.mcnemar["c"] > result.mcnemar["b"]
    assert {c.name for c in result.checks} == {"calibration", "latency", "beats_champion"}
    assert result.registered_version == "1"
    assert registry.get_alias_version(gated.model_name, registry.CHALLENGER) == "1"
    mv = MlflowClient().get_model_version(gated.model_name, "1")
    assert mv.tags[GATE_TAG] == "passed" and mv.tags["mlsd.run_id"] == run
    stored = json.loads(Path(MlflowClient().download_artifacts(run, "gate.json")).read_text())
    assert stored["passed"] and stored["mcnemar"] == result.mcnemar
    # gating the same run again registers nothing new
    again = run_gate(gated, run)
    assert again.registered_version == "1" and again.passed and _versions(gated) == [1]


def test_a_worse_model_is_blocked_and_a_better_one_becomes_challenger(gated: TextclfSettings) -> None:
    from mlflow import MlflowClient

    good = _good(gated)
    worse_run, good_run = log_candidate(gated, _worse(good)), log_candidate(gated, good)
    # the worse model is champion (forced past the gate for this test)
    import mlflow

    mv = mlflow.register_model(f"runs:/{worse_run}/model", gated.model_name)
    registry.set_alias(gated.model_name, registry.CHAMPION, mv.version)

    better = run_gate(gated, good_run)
    assert better.passed, better.reasons
    assert better.champion_version == "1" and better.mcnemar["p_value"] < gated.gate_alpha
    assert registry.get_alias_version(gated.model_name, registry.CHALLENGER) == better.registered_version

    new, old = promote(gated, reason="test")
    assert (new, old) == (better.registered_version, "1")
    assert registry.get_alias_version(gated.model_name, registry.CHAMPION) == new
    assert registry.get_alias_version(gated.model_name, PREVIOUS) == "1"
    assert registry.get_alias_version(gated.model_name, registry.CHALLENGER) is None

    # now the worse model, re-trained as a new run, is blocked against the better champion
    blocked = run_gate(gated, log_candidate(gated, _worse(good)))
    assert not blocked.passed
    assert [c.name for c in blocked.checks if not c.passed] == ["beats_champion"]
    assert blocked.mcnemar["b"] > blocked.mcnemar["c"]
    assert registry.get_alias_version(gated.model_name, registry.CHALLENGER) is None  # no alias for it
    tags = MlflowClient().get_model_version(gated.model_name, str(blocked.registered_version)).tags
    assert tags[GATE_TAG] == "blocked" and "beats_champion" in tags["mlsd.gate_reasons"]

    # rollback restores the previous champion and records why; with no previous left it refuses
    restored, dropped = rollback(gated, reason="test")
    assert (restored, dropped) == ("1", new)
    assert registry.get_alias_version(gated.model_name, registry.CHAMPION) == "1"
    assert MlflowClient().get_model_version(gated.model_name, new).tags[ROLLOUT_TAG] == "rolled_back"
    with pytest.raises(Exception, match="nothing to roll back"):
        rollback(gated)


def test_an_equally_good_model_is_not_promoted(gated: TextclfSettings) -> None:
    good = _good(gated)
    first = run_gate(gated, log_candidate(gated, good))
    assert first.passed
    promote(gated)
    same = run_gate(gated, log_candidate(gated, _good(gated)))  # retrained: identical decisions
    assert not same.passed
    assert same.mcnemar["b"] == same.mcnemar["c"] == 0 and same.mcnemar["p_value"] == 1.0


def test_a_retrain_request_id_is_carried_to_the_version(gated: TextclfSettings) -> None:
    result = run_gate(gated, log_candidate(gated, _good(gated)), request_id="req-7")
    assert registry.versions_tagged(gated.model_name, registry.RETRAIN_REQUEST_TAG, "req-7") == [
        result.registered_version
    ]
    promote(gated)
    from mlflow import MlflowClient

    tags = MlflowClient().get_model_version(gated.model_name, str(result.registered_version)).tags
    assert tags[registry.RETRAIN_PROMOTED_TAG] == "true"


def _evaluation(
    model: object, settings: TextclfSettings, *, p99_us: float = 500.0, min_slice_rows: int = 30
) -> ModelEvaluation:
    golden = load_golden(settings)
    e = evaluate_frame(model, golden, name="golden", scope="fixed golden set", min_slice_rows=min_slice_rows)  # type: ignore[arg-type]
    return ModelEvaluation(
        golden=e,
        newest=e,
        latency={"single_p99_us": p99_us},
        behaviour=behavioural_tests(model),  # type: ignore[arg-type]
    )


class _Lexicon(LexiconModel):
    classes = ("bad", "good")  # the tiny corpus's class names


class _Inverted(InvertedModel):
    classes = ("bad", "good")


def test_each_check_refuses_on_its_own(gated: TextclfSettings) -> None:
    with_suite = gated.model_copy(update={"corpus": CONFIG.model_copy(update={"behavioural_suite": True})})
    good = _good(gated)
    champion = _evaluation(_worse(good), gated)
    ok = _evaluation(good, gated)
    checks, _ = gate_checks(ok, champion.golden, gated, champion=champion.golden)
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]

    # behaviour: the inverted lexicon fails the CheckList suite (when the corpus says it applies)
    failing = {c.name for c in gate_checks(_evaluation(_Inverted(), gated), champion.golden, with_suite)[0]}
    passing = gate_checks(_evaluation(_Lexicon(), gated), champion.golden, with_suite)[0]
    assert "behaviour" in failing
    assert next(c for c in passing if c.name == "behaviour").passed

    # latency over budget
    slow = _evaluation(good, gated, p99_us=gated.gate_max_p99_ms * 1000 * 2)
    assert [c.name for c in gate_checks(slow, champion.golden, gated)[0] if not c.passed] == ["latency"]

    # calibration: probabilities squeezed towards 0.5 keep every decision but are badly calibrated
    class Squeezed(TextClassifier):
        kind = "tfidf_linear"

        def __init__(self) -> None:
            self.classes, self.threshold = good.classes, 0.5

        def predict_proba(self, texts: object) -> np.ndarray:
            p = good.predict_proba(texts)  # type: ignore[arg-type]
            return np.where(p >= good.threshold, 0.51, 0.49)

    squeezed = _evaluation(Squeezed(), gated)
    assert "calibration" in [c.name for c in gate_checks(squeezed, champion.golden, gated)[0] if not c.passed]

    # a slice loss: the champion is the good model, the candidate is wrong on one topic only
    class BlindOnPhones(TextClassifier):
        kind = "tfidf_linear"

        def __init__(self) -> None:
            self.classes, self.threshold = good.classes, good.threshold

        def predict_proba(self, texts: object) -> np.ndarray:
            texts = list(texts)  # type: ignore[call-overload]
            p = good.predict_proba(texts)
            phones = np.array([any(w in t for w in ("battery", "screen", "charger", "camera")) for t in texts])
            return np.where(phones, 1.0 - p, p)

    strong = _evaluation(good, gated, min_slice_rows=5)  # ~14 golden rows per topic here
    blind = _evaluation(BlindOnPhones(), gated, min_slice_rows=5)
    gated_small_slices = gated.model_copy(update={"gate_max_slice_drop": 0.05})
    names = [
        c.name for c in gate_checks(blind, strong.golden, gated_small_slices, champion=strong.golden)[0] if not c.passed
    ]
    assert "slices" in names


def test_cli_gate_promote_rollback(gated: TextclfSettings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import mlflow

    from systems.mlops_textclf.cli import app

    monkeypatch.setenv("MLSD_DATA_DIR", str(gated.data_dir))
    monkeypatch.setenv("MLSD_TEXTCLF_CORPUS", CONFIG.model_dump_json())
    monkeypatch.setenv("MLSD_TEXTCLF_GOLDEN_FRACTION", "0.3")
    monkeypatch.setenv("MLSD_TEXTCLF_GATE_MAX_ECE", "0.2")
    runner = CliRunner()
    run = log_candidate(gated, _good(gated))
    out = tmp_path / "gate.json"
    result = runner.invoke(app, ["gate", run, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["passed"] is True and "passed" in result.output
    assert runner.invoke(app, ["promote", "--first"]).exit_code == 0  # no champion yet: the first one
    assert registry.get_alias_version(gated.model_name, registry.CHAMPION) == "1"
    # a compose init that runs again must not move a serving champion, even with a new challenger waiting
    waiting = mlflow.register_model(f"runs:/{log_candidate(gated, _good(gated))}/model", gated.model_name)
    registry.set_alias(gated.model_name, registry.CHALLENGER, waiting.version)
    again = runner.invoke(app, ["promote", "--first"])
    assert again.exit_code == 0 and "nothing to do" in again.output
    assert registry.get_alias_version(gated.model_name, registry.CHAMPION) == "1"
    assert registry.get_alias_version(gated.model_name, registry.CHALLENGER) == str(waiting.version)
    refused = runner.invoke(app, ["rollback"])
    assert refused.exit_code != 0 and "nothing to roll back" in str(refused.exception or refused.output)
