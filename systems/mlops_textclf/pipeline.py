"""Continuous training: ``ingest → train → gate`` as a DVC pipeline, re-run by triggers, each stage only if needed.

    mlsd textclf pipeline                           # reproduce once: a stage runs only if one of its inputs changed
    mlsd textclf pipeline --preset ci               # the tiny preset (what CI runs)
    mlsd textclf pipeline --watch --every-s 3600    # keep going: new inbox files and HEAD moves, plus a schedule
    mlsd textclf pipeline --watch --listen          # ... and monitoring's retrain requests (``retrain.requests``)
    cd <data_dir>/textclf/pipeline && dvc status    # a plain DVC project: ``dvc dag``, ``dvc status`` by hand

**The DAG** (written to ``<data_dir>/textclf/pipeline/dvc.yaml`` with its ``params.yaml``; ``dvc.lock`` records
the content hash of every input and output of the last run of each stage)::

    inbox/, datasets/versions/, ingest code ──▶ ingest ──▶ head.json ─┐
    golden set, train code, params train.*, corpus, seed ─────────────┴▶ train ──▶ train.json ─┐
    golden set, gate code, params of the gate thresholds ──────────────────────────────────────┴▶ gate ──▶ gate.json

- ``ingest`` runs ``mlsd textclf ingest`` (every inbox file through the validation gate) and writes ``head.json``:
  the HEAD version's id, digest, parent, rows and batches (content only, no timestamps, so an ingest that adds
  nothing writes the same bytes). It depends on the inbox *and* on ``datasets/versions/``: ingest consumes the
  inbox, so after an ingest run outside the pipeline the inbox is as empty as DVC recorded it, and only the new
  manifest shows that HEAD moved.
- ``train`` runs ``mlsd textclf train --model M --preset P --version <head.json> --out train.json`` (one MLflow
  run). It depends on ``head.json``, not on the inbox: a quarantined batch re-runs ingest, which writes the same
  ``head.json``, and DVC then skips train.
- ``gate`` runs ``mlsd textclf gate <run id of train.json> --out gate.json [--request-id R]``: checks, McNemar
  against the champion, registration, alias ``challenger`` if it passed. It exits 0 when the candidate is
  blocked (a blocked candidate is a result, not a failure), so the pipeline only fails on an error. The gate
  is idempotent per training run (``run_gate`` returns the stored verdict for a run it gated before), so when
  a threshold or ``gate.py`` changes, the stage re-runs but the current run keeps its verdict: the change
  applies from the next candidate.

The code files a stage runs are its dependencies (``ingest.py``/``validate.py``/``settings.py`` for ingest;
``train.py``/``evaluate.py``/``ingest.py``/``settings.py``/``common/text.py`` for train; ``gate.py``/
``evaluate.py``/``settings.py`` for gate), so an edit re-runs exactly the stages it can change (trigger *code
change*: CI runs this pipeline on the ``ci`` preset). ``cli.py`` and this module are orchestration and are not
dependencies: changing a table's layout must not retrain. The settings a stage reads are ``params`` in
``params.yaml`` (the corpus and seed for train, every ``gate_*`` threshold and the model name for the gate);
ingest has none: a changed validation threshold applies to the next batch, it does not re-judge admitted ones.

**Why DVC.** It caches stages by the content hashes of their deps, params and outs (an unchanged stage is
skipped, and says so), it installs beside this project's pins without changing any of them (Prefect 3 would
replace the fastapi pin; Ray has no stage cache), and the folder stays an ordinary DVC project one can inspect by
hand. The pipeline folder is ``dvc init --no-scm``: the data dir is not a git work tree.

**How it runs.** :func:`run_pipeline` calls DVC's Python API (``Repo(root).reproduce``) in this process: a
cached run takes 0.08 s there against 0.75 s for a ``dvc repro`` subprocess (interpreter and imports). DVC
itself runs each stage's command in a subprocess of the same interpreter (``python -m
systems.mlops_textclf.pipeline stage NAME``, which calls the ``mlsd textclf`` command above in that process).
Settings reach the stages through the environment (``run_env``: ``TextclfSettings.to_env()``), so a stage sees
exactly the caller's settings (a stage refuses to run without them, e.g. under a bare ``dvc repro``: it would
read another data dir). DVC reports what it reproduced (the stages ``reproduce`` returns; the rest logged
"didn't change, skipping"); a thin wrapper around its per-stage step adds the seconds of each stage, skipped
ones included.

Traps met with DVC (3.67), each handled here:

- Dependencies are hashed *after* a stage runs. For ``ingest``, which moves files out of the inbox, that is what
  we want (the empty inbox is the recorded state), and it is why ``datasets/versions/`` is a dependency too.
  It has one race: a batch that lands while ingest finishes, after its command and before DVC hashes the
  inbox, is recorded as seen without being ingested, and DVC would skip ingest while it waits there. Ingest
  consumes every batch file, so a batch file in the inbox always means "not ingested yet": a run forces
  ingest whenever there is one (cheap, and ingest is idempotent by content digest).
- The run-cache: a changed stage whose deps and params match an earlier run is restored from it instead of run.
  Restoring ``gate.json`` without running the gate would skip the registration, so runs pass ``run_cache=False``
  (``dvc repro --no-run-cache``); outputs are ``cache: false`` (small JSON, no copy in ``.dvc/cache``).
- DVC keeps hash state under ``/var/tmp/dvc`` by default, one folder per project, never cleaned up;
  ``core.site_cache_dir`` moves it into the pipeline folder (a test's tmp dir then holds everything). The
  init is ``dvc init`` in a subprocess, because ``Repo.init`` opens that state before the config can move it.
  ``core.analytics`` is off for anyone running ``dvc`` there (the Python API never sends any).
- DVC's default target (``dvc.yaml``) and the names in its log are relative to the working directory, not to
  the repo it was given: runs name the target explicitly, and stages are matched by name.
- The environment is not part of a stage's identity, so a retrain request (same data, same code) does not change
  any input: the request's run *forces* train (and gate follows, its ``train.json`` having a new run id). The
  request id reaches the gate through the environment for the same reason: as a param it would re-run the
  gate on the next, unrelated run.
- ``dvc repro`` takes a lock in ``.dvc/tmp``: two reproductions in one process would fail on it, so
  :func:`run_pipeline` serialises its callers (the watch loop and the retrain listener).

**Triggers** (:func:`watch`): (a) data: a batch file waits in the inbox, or ``datasets/HEAD`` moved since the
last run; (b) schedule: every ``every_s`` seconds a full run (cheap when nothing changed: every stage is
skipped); (c) a ``RetrainRequest`` for ``system == "textclf"`` and this model name on ``retrain.requests``
(:func:`run_retrain_listener`, at most one retrain per request id across restarts: the gate tags the version it
registers with the request id, and the listener asks the registry for that tag before it trains);
(d) code: a run after an edit re-runs the stages whose code changed (the watch loop runs once on start).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from systems.common.errors import MlsdError
from systems.mlops_textclf.settings import TextclfSettings

if TYPE_CHECKING:
    from rich.table import Table

    from systems.common.predictions import RetrainRequest

log = logging.getLogger(__name__)

SYSTEM = "textclf"
"""This system's name in the ``RetrainRequest`` messages meant for it."""
STAGES = ("ingest", "train", "gate")
HEAD_FILE, TRAIN_FILE, GATE_FILE = "head.json", "train.json", "gate.json"
REQUEST_ENV = "TEXTCLF_PIPELINE_REQUEST_ID"
"""The retrain request a run answers, for the gate stage (not ``MLSD_TEXTCLF_*``: that prefix is settings only)."""

PACKAGE = Path(__file__).resolve().parent
COMMON = PACKAGE.parent / "common"
STAGE_CODE: dict[str, list[Path]] = {
    "ingest": [PACKAGE / n for n in ("ingest.py", "validate.py", "settings.py")],
    "train": [*(PACKAGE / n for n in ("train.py", "evaluate.py", "ingest.py", "settings.py")), COMMON / "text.py"],
    "gate": [PACKAGE / n for n in ("gate.py", "evaluate.py", "settings.py")],
}
"""The code each stage runs: its dependencies, so an edit re-runs the stages it can change."""
GATE_PARAMS = ("model_name", "gate_margin", "gate_alpha", "gate_max_ece", "gate_max_p99_ms", "gate_max_slice_drop")
TRAIN_PARAMS = ("corpus", "seed")

_RUN_LOCK = threading.Lock()


class PipelineError(MlsdError):
    """A stage failed (its command exited non-zero) or the pipeline cannot start; the message says which."""


def pipeline_dir(settings: TextclfSettings) -> Path:
    return settings.textclf_dir / "pipeline"


# ------------------------------------------------------------------------------------------ the DVC project


def _params(settings: TextclfSettings, model: str, preset: str) -> dict[str, Any]:
    dump = settings.model_dump(mode="json")
    return {
        "train": {"model": model, "preset": preset},
        "textclf": {k: dump[k] for k in (*TRAIN_PARAMS, *GATE_PARAMS)},
    }


def _stage_cmd(name: str) -> str:
    return f"{shlex.quote(sys.executable)} -m systems.mlops_textclf.pipeline stage {name}"


def dvc_yaml(settings: TextclfSettings) -> dict[str, Any]:
    """The pipeline definition (``dvc.yaml``) for ``settings``: absolute paths outside the pipeline folder."""

    def code(stage: str) -> list[str]:
        return [str(p) for p in STAGE_CODE[stage]]

    def out(name: str) -> dict[str, Any]:
        return {name: {"cache": False}}

    golden = str(settings.golden_path.resolve())
    return {
        "stages": {
            "ingest": {
                "cmd": _stage_cmd("ingest"),
                "deps": [
                    str(settings.inbox.resolve()),
                    str((settings.store_dir / "versions").resolve()),
                    *code("ingest"),
                ],
                "outs": [out(HEAD_FILE)],
            },
            "train": {
                "cmd": _stage_cmd("train"),
                "deps": [HEAD_FILE, golden, *code("train")],
                "params": ["train.model", "train.preset", *(f"textclf.{k}" for k in TRAIN_PARAMS)],
                "outs": [out(TRAIN_FILE)],
            },
            "gate": {
                "cmd": _stage_cmd("gate"),
                "deps": [TRAIN_FILE, golden, *code("gate")],
                "params": [f"textclf.{k}" for k in GATE_PARAMS],
                "outs": [out(GATE_FILE)],
            },
        }
    }


def _write_if_changed(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _dvc_init(root: Path) -> None:
    """``dvc init --no-scm`` in ``root``, keeping DVC's state in ``root/.dvc/site_cache`` and analytics off.

    A subprocess, not ``Repo.init``: that opens the new repo before its config can name the site cache, and
    leaves a state folder under ``/var/tmp/dvc`` per pipeline folder (per test)."""
    import subprocess

    from dvc.config import Config

    site_cache = str((root / ".dvc" / "site_cache").resolve())
    env = os.environ | {"DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": site_cache}
    init = [sys.executable, "-m", "dvc", "init", "--no-scm", "--quiet"]
    done = subprocess.run(init, cwd=root, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PipelineError(f"`dvc init --no-scm` failed in {root}: {done.stderr.strip() or done.stdout.strip()}")
    with Config(dvc_dir=str(root / ".dvc")).edit("repo") as conf:
        conf["core"].update({"analytics": False, "check_update": False, "site_cache_dir": site_cache})


def prepare(settings: TextclfSettings, *, model: str = "tfidf_linear", preset: str = "default") -> Path:
    """Create the pipeline folder (``dvc init --no-scm`` once) and write ``dvc.yaml`` and ``params.yaml``."""
    from systems.mlops_textclf.train import preset as make_preset

    make_preset(model, preset)  # an unknown model or preset fails here, not inside a stage
    settings.ensure_dirs()
    if not settings.golden_path.exists():
        raise PipelineError(f"no golden set at {settings.golden_path}: run `mlsd textclf batches` first")
    (settings.store_dir / "versions").mkdir(parents=True, exist_ok=True)
    root = pipeline_dir(settings)
    root.mkdir(parents=True, exist_ok=True)
    if not (root / ".dvc").is_dir():
        _dvc_init(root)
    _write_if_changed(root / "dvc.yaml", yaml.safe_dump(dvc_yaml(settings), sort_keys=False))
    _write_if_changed(root / "params.yaml", yaml.safe_dump(_params(settings, model, preset), sort_keys=False))
    return root


# -------------------------------------------------------------------------------------------- a run


@dataclass(frozen=True)
class StageRun:
    name: str
    ran: bool
    """False: DVC found every dep, param and out unchanged and skipped it."""
    seconds: float


@dataclass
class PipelineResult:
    stages: list[StageRun]
    seconds: float
    """End to end: writing the definition, DVC's checks and every stage that ran."""
    reproduced: list[str]
    """DVC's own report: the stages ``Repo.reproduce`` returned (ran), in order."""
    version_id: str | None
    run_id: str | None
    """The training run of ``train.json`` (this run's, or the cached one's when train was skipped)."""
    gate: dict[str, Any] | None
    """``gate.json``: ``passed``, ``registered_version``, ``reasons``, ..."""
    request_id: str | None = None
    trigger: str = "manual"

    @property
    def ran(self) -> list[str]:
        return [s.name for s in self.stages if s.ran]

    @property
    def skipped(self) -> list[str]:
        return [s.name for s in self.stages if not s.ran]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _run_env(settings: TextclfSettings, request_id: str | None) -> dict[str, str]:
    """What a stage's process needs to build the same ``TextclfSettings``: every field, paths absolute."""
    update: dict[str, Any] = {"data_dir": settings.data_dir.resolve()}
    if settings.inbox_dir is not None:
        update["inbox_dir"] = settings.inbox_dir.resolve()
    env = settings.model_copy(update=update).to_env()
    project = str(PACKAGE.parent.parent)  # systems/ importable from the stage's working directory
    env["PYTHONPATH"] = os.pathsep.join(p for p in (project, os.environ.get("PYTHONPATH", "")) if p)
    env[REQUEST_ENV] = request_id or ""
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env


@contextmanager
def _quiet_empty_dir_warning() -> Iterator[None]:
    """DVC warns "'<inbox>' is empty." each time ingest ran: the normal state of a consumed inbox."""
    import dvc.output

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().endswith("is empty.")

    dvc.output.logger.addFilter(keep)
    try:
        yield
    finally:
        dvc.output.logger.removeFilter(keep)


def run_pipeline(
    settings: TextclfSettings,
    *,
    model: str = "tfidf_linear",
    preset: str = "default",
    request_id: str | None = None,
    force: tuple[str, ...] = (),
    trigger: str = "manual",
) -> PipelineResult:
    """Reproduce the pipeline: every stage whose inputs changed runs, the rest are skipped; then read it back.

    ``request_id``: the run answers this retrain request: train is forced (new data or not) and the gate tags
    the version it registers with the id. ``force``: stages to run even if unchanged (``dvc repro -f -s``).
    Raises :class:`PipelineError` if a stage fails (the stages after it do not run). Calls are serialised.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.repo.reproduce import _reproduce_stage  # the per-stage step `reproduce` accepts as `repro_fn`

    from systems.mlops_textclf.validate import inbox_files

    forced = set(force) | ({"train"} if request_id else set())
    unknown = forced - set(STAGES)
    if unknown:
        raise PipelineError(f"unknown stage(s) {sorted(unknown)}; the stages are {', '.join(STAGES)}")
    with _RUN_LOCK:
        t0 = time.perf_counter()
        root = prepare(settings, model=model, preset=preset)
        if inbox_files(settings):
            forced.add("ingest")  # see "a batch that lands while ingest finishes" in the module docstring
        timings: dict[str, float] = {}

        def timed(stage: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            kwargs["force"] = kwargs.get("force", False) or stage.name in forced
            try:
                return _reproduce_stage(stage, **kwargs)
            finally:
                timings[stage.name] = time.perf_counter() - start

        try:
            with Repo(str(root)) as repo, _quiet_empty_dir_warning():
                # the target is explicit: DVC's default (``dvc.yaml``) is relative to the working directory
                done = repo.reproduce(
                    str(root / "dvc.yaml"), run_env=_run_env(settings, request_id), run_cache=False, repro_fn=timed
                )
        except DvcException as exc:
            cause = exc.__cause__ or exc
            failed = [name for name in STAGES if name in timings]
            if not failed:
                raise PipelineError(f"DVC could not reproduce {root / 'dvc.yaml'}: {cause}") from exc
            raise PipelineError(f"pipeline stage {failed[-1]!r} failed: {cause} (its output is above)") from exc
        reproduced = [s.name for s in done]
        head = _read_json(root / HEAD_FILE) or {}
        trained = _read_json(root / TRAIN_FILE) or {}
        result = PipelineResult(
            stages=[StageRun(n, n in reproduced, round(timings.get(n, 0.0), 3)) for n in STAGES],
            seconds=round(time.perf_counter() - t0, 3),
            reproduced=reproduced,
            version_id=head.get("version_id"),
            run_id=trained.get("run_id"),
            gate=_read_json(root / GATE_FILE),
            request_id=request_id,
            trigger=trigger,
        )
    log.info("textclf pipeline (%s): ran %s, skipped %s, %.1f s", trigger, result.ran, result.skipped, result.seconds)
    return result


def stages_table(result: PipelineResult) -> Table:
    """One row per stage: ran or skipped, seconds, and what it holds now (version, run, verdict)."""
    from rich.table import Table

    gate = result.gate or {}
    verdict = ("[green]passed[/]" if gate.get("passed") else "[red]blocked[/]") if gate else "-"
    if gate.get("registered_version"):
        verdict += f" · registered v{gate['registered_version']}"
    output = {"ingest": f"HEAD {result.version_id or '-'}", "train": f"run {result.run_id or '-'}", "gate": verdict}
    title = f"textclf pipeline ({result.trigger}) · {result.seconds:.2f} s end to end"
    table = Table(title=title)
    for col in ("stage", "status", "seconds", "output"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    for s in result.stages:
        status = "[green]ran[/]" if s.ran else "[dim]skipped (unchanged)[/]"
        table.add_row(s.name, status, f"{s.seconds:.2f}", output.get(s.name, ""))
    return table


# ------------------------------------------------------------------------------------- triggers


def _head_id(settings: TextclfSettings) -> str | None:
    head = settings.store_dir / "HEAD"
    return head.read_text().strip() if head.exists() else None


def data_fingerprint(settings: TextclfSettings) -> str:
    """The inbox's batch files (name, size, mtime) and ``datasets/HEAD``: what trigger (a) looks at."""
    from systems.mlops_textclf.validate import inbox_files

    parts = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in inbox_files(settings)]
    return "|".join([*parts, f"HEAD={_head_id(settings) or ''}"])


def data_pending(settings: TextclfSettings, seen_head: str | None) -> bool:
    """Trigger (a): a batch file waits in the inbox (ingest consumes every one, accepted or quarantined, so any
    file there arrived after the last ingest), or HEAD moved since the last run (an ingest outside the pipeline)."""
    from systems.mlops_textclf.validate import inbox_files

    return bool(inbox_files(settings)) or _head_id(settings) != seen_head


RunFn = Callable[..., PipelineResult]


def watch(
    settings: TextclfSettings,
    stop: threading.Event,
    *,
    model: str = "tfidf_linear",
    preset: str = "default",
    every_s: float | None = None,
    poll_s: float = 2.0,
    listen: bool = False,
    run_on_start: bool = True,
    run: RunFn = run_pipeline,
    on_result: Callable[[PipelineResult], None] | None = None,
    on_error: Callable[[str, Exception], None] | None = None,
    listener_kwargs: dict[str, Any] | None = None,
) -> list[PipelineResult]:
    """Run the pipeline on every trigger until ``stop``; returns the results in order.

    Once on start (trigger ``start``: picks up code and params changed since the last run), then, checked every
    ``poll_s``: ``data`` (:func:`data_pending`) and ``schedule`` every ``every_s`` (None: no schedule; a full
    run, in which DVC skips whatever did not change). ``listen``: also :func:`run_retrain_listener` in a thread
    (trigger ``request``; :func:`run_pipeline` serialises it with this loop). A run that fails with an
    :class:`MlsdError` (a stage failed) goes to ``on_error`` (default: logged) and the loop goes on; the data
    trigger then waits for the inbox or HEAD to change again, so a failing batch is not retried in a hot loop.
    Anything else propagates (after stopping the listener). ``run`` is :func:`run_pipeline` (a test's fake).
    """
    results: list[PipelineResult] = []
    listener: threading.Thread | None = None
    listener_error: list[BaseException] = []
    if listen:

        def listen_target() -> None:
            try:
                run_retrain_listener(settings, stop, model=model, preset=preset, run=run, **(listener_kwargs or {}))
            except BaseException as exc:
                listener_error.append(exc)
                stop.set()

        listener = threading.Thread(target=listen_target, name="textclf-retrain-listener", daemon=True)
        listener.start()

    seen_head = _head_id(settings)
    failed_on: str | None = None  # the data fingerprint a failed run saw

    def go(trigger: str) -> None:
        nonlocal seen_head, failed_on
        before = data_fingerprint(settings)
        try:
            result = run(settings, model=model, preset=preset, trigger=trigger)
        except MlsdError as exc:
            failed_on = before
            if on_error is not None:
                on_error(trigger, exc)
            else:
                log.error("textclf pipeline (%s) failed: %s", trigger, exc)
            return
        failed_on, seen_head = None, _head_id(settings)
        results.append(result)
        if on_result is not None:
            on_result(result)

    try:
        next_due = time.monotonic() + every_s if every_s else None
        if run_on_start:
            go("start")
        while not stop.wait(poll_s):
            triggers = []
            if data_pending(settings, seen_head) and data_fingerprint(settings) != failed_on:
                triggers.append("data")
            if next_due is not None and time.monotonic() >= next_due:
                triggers.append("schedule")
                next_due = time.monotonic() + (every_s or 0.0)
            if triggers:
                go("+".join(triggers))
    finally:
        stop.set()
        if listener is not None:
            listener.join(timeout=30)
    if listener_error:
        raise listener_error[0]
    return results


# ----------------------------------------------------------------------------------- retrain requests

RetrainStatus = Literal["retrained", "duplicate", "ignored", "failed"]


@dataclass(frozen=True)
class RetrainOutcome:
    """What the listener did with one request.

    ``retrained`` (the pipeline ran; ``version`` is the version the gate registered with the request's tag,
    ``passed`` whether it became challenger), ``duplicate`` (a version already carries this request id, or this
    listener handled it), ``ignored`` (another system's or model's request), ``failed`` (a stage failed: nothing
    was tagged, so a re-request can succeed).
    """

    request_id: str
    incident_id: str
    status: RetrainStatus
    version: str | None = None
    passed: bool | None = None
    detail: str = ""
    result: PipelineResult | None = field(default=None, compare=False, repr=False)


def run_retrain_listener(
    settings: TextclfSettings,
    stop: threading.Event,
    *,
    model: str = "tfidf_linear",
    preset: str = "default",
    group_id: str | None = None,
    on_ready: Callable[[], None] | None = None,
    on_outcome: Callable[[RetrainOutcome], None] | None = None,
    run: RunFn = run_pipeline,
) -> list[RetrainOutcome]:
    """Act on monitoring's retrain requests for this model until ``stop``; one outcome per request read.

    The shape of ``systems.fraud.feedback.run_retrain_listener``: the common consumer loop (a malformed request
    goes to ``<topic>.dlq``; offsets are committed after the batch was handled, so at-least-once delivery), and
    on top of it:

    - only ``system == "textclf"`` and ``model_name == settings.model_name`` are acted on; the topic is shared,
      so the rest are ``ignored`` and committed;
    - at most one retrain per ``request_id`` across restarts and consumers: before running, the registry is
      asked for a version tagged with the id (``registry.versions_tagged``); the gate stage writes that tag
      on the version it registers (``--request-id``), in the same registration. A re-delivery finds it;
      an in-process set answers repeats without a registry query;
    - a pipeline that fails (:class:`PipelineError`: a stage exited non-zero) is ``failed`` and committed:
      nothing was tagged, so a re-request is retrained. Anything else propagates without a commit.

    Known gap (as in fraud): a crash after train and before the gate leaves an MLflow run without a version;
    the re-delivered request then trains again (one more run, still one tagged version).
    """
    from systems.common.broker import Record, run_consumer_loop
    from systems.common.predictions import RetrainRequest
    from systems.common.retrain import retrain_consumer, screen_request

    consumer, producer = retrain_consumer(settings, group_id or f"textclf-pipeline-{settings.model_name}")
    done: set[str] = set()
    outcomes: list[RetrainOutcome] = []

    def act(request: RetrainRequest) -> RetrainOutcome:
        rid, iid = request.request_id, request.incident_id
        screened = screen_request(request, system=SYSTEM, model_name=settings.model_name, done=done)
        if screened is not None:
            status, version, why = screened
            return RetrainOutcome(rid, iid, status, version=version, detail=why)
        try:
            result = run(settings, model=model, preset=preset, request_id=rid, trigger="request")
        except PipelineError as exc:
            return RetrainOutcome(rid, iid, "failed", detail=str(exc))
        done.add(rid)
        gate = result.gate or {}
        detail = "; ".join(gate.get("reasons") or []) or "passed every check"
        return RetrainOutcome(
            rid, iid, "retrained", gate.get("registered_version"), gate.get("passed"), detail, result=result
        )

    def handle(batch: list[tuple[Record, RetrainRequest]]) -> None:
        for _, request in batch:
            outcome = act(request)
            level = logging.WARNING if outcome.status == "failed" else logging.INFO
            log.log(level, "textclf retrain request %s: %s %s", outcome.request_id, outcome.status, outcome.detail)
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)

    try:
        run_consumer_loop(consumer, producer, RetrainRequest, handle, stop=stop, max_records=10, on_ready=on_ready)
    finally:
        consumer.close()
        producer.close()
    return outcomes


# ------------------------------------------------------------------------- a stage's process (DVC runs it)


def _mlsd(argv: list[str]) -> None:
    """Run ``mlsd ARGV`` in this process (the console script's entry); return if it exited 0."""
    from systems.cli import main as mlsd_main

    print("> mlsd " + shlex.join(argv), flush=True)  # noqa: T201 - the stage's log, like DVC's own "> cmd"
    sys.argv = ["mlsd", *argv]
    try:
        mlsd_main()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise


def run_stage(name: str, root: Path) -> None:
    """One stage's command, run by DVC in the pipeline folder ``root`` with the settings in the environment."""
    from systems.mlops_textclf.cli import write_json
    from systems.mlops_textclf.ingest import DatasetStore

    if "MLSD_TEXTCLF_DATA_DIR" not in os.environ:
        raise PipelineError(
            "a pipeline stage reads its settings from MLSD_TEXTCLF_* variables: run it through "
            "`mlsd textclf pipeline` (or export `TextclfSettings().to_env()` before `dvc repro`)"
        )
    if name == "ingest":
        _mlsd(["textclf", "ingest"])
        head = DatasetStore.of(TextclfSettings()).head()
        summary: dict[str, Any] = {"version_id": None}
        if head is not None:
            summary = {
                "version_id": head.version_id,
                "digest": head.digest,
                "parent": head.parent,
                "rows": head.rows,
                "batches": [b.name for b in head.batches],
            }
        write_json(root / HEAD_FILE, summary)
    elif name == "train":
        params = yaml.safe_load((root / "params.yaml").read_text())["train"]
        version = json.loads((root / HEAD_FILE).read_text()).get("version_id")
        if version is None:
            raise PipelineError("no dataset version yet: put a batch in the inbox (`mlsd textclf batches`)")
        argv = ["textclf", "train", "--model", params["model"], "--preset", params["preset"], "--version", version]
        _mlsd([*argv, "--out", TRAIN_FILE])
    elif name == "gate":
        run_id = json.loads((root / TRAIN_FILE).read_text())["run_id"]
        request = os.environ.get(REQUEST_ENV) or None
        _mlsd(["textclf", "gate", run_id, "--out", GATE_FILE, *(["--request-id", request] if request else [])])
    else:
        raise PipelineError(f"unknown stage {name!r}; the stages are {', '.join(STAGES)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m systems.mlops_textclf.pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    stage = sub.add_parser("stage", help="run one stage's command in the current folder (DVC calls this)")
    stage.add_argument("name", choices=STAGES)
    args = parser.parse_args(argv)
    try:
        run_stage(args.name, Path.cwd())
    except MlsdError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        sys.exit(1)


if __name__ == "__main__":
    main()
