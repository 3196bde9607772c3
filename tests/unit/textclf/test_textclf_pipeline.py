"""The continuous-training pipeline (DVC) on the tiny corpus, ``ci`` preset, real stages (ingest, train, gate).

What DVC must decide, checked on DVC's own report (the stages ``reproduce`` returned) and on what a wrongly
re-run stage would leave behind (a new MLflow run, a new registered version, a rewritten ``dvc.lock``): the
first run runs every stage; an unchanged re-run skips every stage; a new batch re-runs ingest and train; a
rejected batch re-runs ingest only (HEAD did not move); a param change re-runs train; an edit to a stage's code
re-runs that stage; a retrain request forces train and tags the version. The watch loop's triggers are tested
with a fake run (no DVC, no sleeping beyond a few polls of 10 ms).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from systems.common import registry
from systems.common.errors import MlsdError
from systems.mlops_textclf import pipeline
from systems.mlops_textclf.ingest import CorpusSplit, DatasetStore, canonical, make_broken_batch, write_golden
from systems.mlops_textclf.pipeline import (
    STAGES,
    PipelineError,
    PipelineResult,
    StageRun,
    pipeline_dir,
    run_pipeline,
    watch,
)
from systems.mlops_textclf.settings import TextclfSettings
from systems.mlops_textclf.train import EXPERIMENT
from tests.unit.textclf.textclf_support import CONFIG

pytestmark = pytest.mark.unit

CACHED_RERUN_BUDGET_S = 5.0


def _put(settings: TextclfSettings, name: str, frame: pd.DataFrame) -> Path:
    path = settings.inbox / name
    canonical(frame).to_parquet(path, index=False)
    return path


@pytest.fixture()
def staged(textclf_settings: TextclfSettings, split: CorpusSplit, monkeypatch: pytest.MonkeyPatch) -> TextclfSettings:
    """The golden set written and the first two batches in the inbox (the third is held back for a test)."""
    write_golden(split.golden, textclf_settings)
    for batch in split.batches[:2]:
        _put(textclf_settings, f"{batch.name}.parquet", batch.frame)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", textclf_settings.tracking_uri)
    return textclf_settings


def _mlflow_runs(settings: TextclfSettings) -> list[str]:
    from mlflow import MlflowClient

    registry.configure(settings)
    experiment = MlflowClient().get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    return sorted(r.info.run_id for r in MlflowClient().search_runs([experiment.experiment_id]))


def _versions(settings: TextclfSettings) -> list[str]:
    from mlflow import MlflowClient

    registry.configure(settings)
    return sorted(v.version for v in MlflowClient().search_model_versions(f"name = '{settings.model_name}'"))


def _timings(label: str, result: PipelineResult) -> str:
    stages = ", ".join(f"{s.name} {'ran' if s.ran else 'skipped'} {s.seconds:.2f} s" for s in result.stages)
    return f"{label}: {stages}; end to end {result.seconds:.2f} s"


@pytest.mark.slow
def test_first_run_runs_every_stage_an_unchanged_rerun_skips_all_and_a_code_edit_reruns_its_stage(
    staged: TextclfSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a stand-in for ingest's code, so the test can edit "the code" of one stage
    code = tmp_path / "ingest_code.py"
    code.write_text("VERSION = 1\n")
    monkeypatch.setitem(pipeline.STAGE_CODE, "ingest", [*pipeline.STAGE_CODE["ingest"], code])

    first = run_pipeline(staged, preset="ci")
    print(_timings("first run", first))
    assert first.reproduced == list(STAGES) and first.ran == list(STAGES)
    head = DatasetStore.of(staged).head()
    assert head is not None and first.version_id == head.version_id and len(head.batches) == 2
    assert first.run_id in _mlflow_runs(staged)
    assert first.gate is not None and first.gate["registered_version"] == "1"
    assert isinstance(first.gate["passed"], bool)

    root = pipeline_dir(staged)
    lock = (root / "dvc.lock").read_bytes()
    runs, versions = _mlflow_runs(staged), _versions(staged)
    again = run_pipeline(staged, preset="ci")
    print(_timings("cached re-run", again))
    assert again.reproduced == [] and again.skipped == list(STAGES)  # DVC's report: nothing reproduced
    assert _mlflow_runs(staged) == runs and _versions(staged) == versions  # no training, no registration
    assert (root / "dvc.lock").read_bytes() == lock
    assert (again.run_id, again.version_id, again.gate) == (first.run_id, first.version_id, first.gate)
    assert again.seconds <= CACHED_RERUN_BUDGET_S, _timings("cached re-run", again)

    # the CLI over the same settings (from the environment) sees the same pipeline: every stage skipped
    env = {
        "MLSD_DATA_DIR": str(staged.data_dir),
        "MLSD_TEXTCLF_CORPUS": CONFIG.model_dump_json(),
        "MLSD_TEXTCLF_MIN_BATCH_ROWS": "10",
        "COLUMNS": "200",
    }
    from systems.mlops_textclf.cli import app

    shown = CliRunner().invoke(app, ["pipeline", "--preset", "ci", "--out", str(tmp_path / "result.json")], env=env)
    assert shown.exit_code == 0, shown.output
    assert shown.output.count("skipped (unchanged)") == 3, shown.output
    assert '"reproduced": []' in (tmp_path / "result.json").read_text()

    # an edit to ingest's code re-runs ingest; its output (head.json) is byte-identical, so train and gate are not
    code.write_text("VERSION = 2\n")
    edited = run_pipeline(staged, preset="ci")
    print(_timings("after an edit of ingest's code", edited))
    assert edited.ran == ["ingest"] and edited.skipped == ["train", "gate"]
    assert _mlflow_runs(staged) == runs


@pytest.mark.slow
def test_new_batch_reruns_ingest_and_train_a_rejected_one_ingest_only_a_param_train_and_a_request_forces_train(
    staged: TextclfSettings, split: CorpusSplit
) -> None:
    first = run_pipeline(staged, preset="ci")
    assert first.ran == list(STAGES)

    _put(staged, f"{split.batches[2].name}.parquet", split.batches[2].frame)
    grown = run_pipeline(staged, preset="ci")
    print(_timings("a new batch", grown))
    assert grown.reproduced == list(STAGES)
    head = DatasetStore.of(staged).head()
    assert head is not None and grown.version_id == head.version_id != first.version_id
    assert grown.run_id != first.run_id and grown.run_id in _mlflow_runs(staged)

    broken = make_broken_batch(split.batches[2].frame, split.golden, classes=split.classes, seed=0)
    _put(staged, "04-broken.parquet", broken.frame)
    runs = _mlflow_runs(staged)
    rejected = run_pipeline(staged, preset="ci")
    print(_timings("a rejected batch", rejected))
    assert (staged.quarantine_dir / "04-broken.parquet").exists()
    assert rejected.ran == ["ingest"] and rejected.skipped == ["train", "gate"]  # HEAD did not move
    assert _mlflow_runs(staged) == runs

    retuned = run_pipeline(staged, preset="default")  # params.yaml train.preset: ci -> default
    print(_timings("a param change", retuned))
    assert retuned.ran == ["train", "gate"] and retuned.skipped == ["ingest"]
    assert retuned.run_id not in runs

    versions = _versions(staged)
    requested = run_pipeline(staged, preset="default", request_id="req-1", trigger="request")
    print(_timings("a retrain request (nothing changed)", requested))
    assert requested.ran == ["train", "gate"] and requested.run_id != retuned.run_id
    assert requested.gate is not None and requested.gate["request_id"] == "req-1"
    tagged = registry.versions_tagged(staged.model_name, registry.RETRAIN_REQUEST_TAG, "req-1")
    assert tagged == [requested.gate["registered_version"]] and tagged[0] not in versions
    # the request id is not an input: the next plain run is all cached again
    assert run_pipeline(staged, preset="default").reproduced == []


def test_a_failing_stage_stops_the_pipeline_with_its_name(staged: TextclfSettings) -> None:
    """No dataset version and an empty inbox: ingest runs (nothing to do), train fails and says why; no gate."""
    for path in staged.inbox.iterdir():
        path.unlink()
    with pytest.raises(PipelineError, match="pipeline stage 'train' failed"):
        run_pipeline(staged, preset="ci")
    assert not (pipeline_dir(staged) / "gate.json").exists()


def test_unknown_model_preset_or_stage_fail_before_dvc(staged: TextclfSettings) -> None:
    with pytest.raises(MlsdError, match="unknown model kind"):
        run_pipeline(staged, model="bert")
    with pytest.raises(MlsdError, match="unknown preset"):
        run_pipeline(staged, preset="huge")
    with pytest.raises(PipelineError, match="unknown stage"):
        run_pipeline(staged, force=("deploy",))
    assert not pipeline_dir(staged).exists()


# ------------------------------------------------------------------------------------------ the watch loop


class FakeRun:
    """Stands in for ``run_pipeline``: records each trigger, consumes the inbox like ingest, can fail once."""

    def __init__(self, settings: TextclfSettings, stop: threading.Event, *, calls: int) -> None:
        self.settings, self.stop, self.calls = settings, stop, calls
        self.triggers: list[str] = []
        self.fail_next = False
        self.called = threading.Event()

    def __call__(self, settings: TextclfSettings, **kwargs: Any) -> PipelineResult:
        self.triggers.append(kwargs["trigger"])
        self.called.set()
        if len(self.triggers) >= self.calls:
            self.stop.set()
        if self.fail_next:
            self.fail_next = False
            raise PipelineError("pipeline stage 'ingest' failed")
        for path in settings.inbox.iterdir():
            path.rename(settings.accepted_dir / path.name)
        return PipelineResult([StageRun(n, True, 0.0) for n in STAGES], 0.0, list(STAGES), None, None, None)

    def wait_call(self, n: int, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.triggers) < n:
            assert time.monotonic() < deadline, f"only {self.triggers} after {timeout_s} s"
            time.sleep(0.005)


def _watch_in_thread(settings: TextclfSettings, stop: threading.Event, **kwargs: Any) -> threading.Thread:
    thread = threading.Thread(target=watch, args=(settings, stop), kwargs={"poll_s": 0.01, **kwargs}, daemon=True)
    thread.start()
    return thread


def test_watch_runs_on_start_on_a_new_batch_and_on_a_head_move_and_does_not_retry_a_failure_in_a_loop(
    textclf_settings: TextclfSettings,
) -> None:
    settings = textclf_settings
    stop = threading.Event()
    fake = FakeRun(settings, stop, calls=4)
    errors: list[str] = []
    thread = _watch_in_thread(settings, stop, run=fake, on_error=lambda trigger, exc: errors.append(trigger))
    fake.wait_call(1)
    assert fake.triggers == ["start"]
    time.sleep(0.05)  # five polls: nothing changed, nothing runs
    assert fake.triggers == ["start"]

    (settings.inbox / "05-new.parquet").write_bytes(b"a batch")  # (a) a batch lands
    fake.wait_call(2)
    (settings.inbox / ".06-partial.parquet.part").write_bytes(b"half")  # hidden/partial files are not batches
    time.sleep(0.05)
    assert fake.triggers == ["start", "data"]

    fake.fail_next = True
    (settings.store_dir / "HEAD").write_text("v-outside\n")  # (a) HEAD moved: an ingest outside the pipeline
    fake.wait_call(3)
    time.sleep(0.05)  # the failed run saw this HEAD: not retried while nothing changes
    assert fake.triggers == ["start", "data", "data"] and errors == ["data"]

    (settings.store_dir / "HEAD").write_text("v-next\n")
    fake.wait_call(4)
    thread.join(timeout=5)
    assert not thread.is_alive() and fake.triggers == ["start", "data", "data", "data"]


def test_watch_schedule_runs_every_every_s_and_stop_ends_it(textclf_settings: TextclfSettings) -> None:
    stop = threading.Event()
    fake = FakeRun(textclf_settings, stop, calls=1_000)
    t0 = time.monotonic()
    thread = _watch_in_thread(textclf_settings, stop, run=fake, every_s=0.05, run_on_start=False)
    fake.wait_call(3)
    stop.set()
    thread.join(timeout=5)
    elapsed = time.monotonic() - t0
    assert not thread.is_alive()
    assert set(fake.triggers) == {"schedule"} and elapsed >= 0.15 - 0.01
    assert len(fake.triggers) <= elapsed / 0.05 + 1
