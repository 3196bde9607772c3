"""Serve: ``POST /predict`` (and ``/predict/batch``) from the champion, with shadow, canary and blue/green rollouts.

Run: ``mlsd textclf serve`` (uvicorn, port 8004) or ``uvicorn --factory systems.mlops_textclf.serve:create_app``.

The process holds up to three models, all loaded from registry aliases: ``champion`` answers, ``challenger`` is
loaded when a rollout starts, and after a promotion the ``previous`` champion stays loaded (scoring in shadow),
so a rollback is a pointer swap in memory, then one registry write. The route a request takes is one immutable
:class:`Routing` object the controller replaces whole: a request never sees half a switch.

Every answer is a prediction record (``systems.common.predictions``) on the ``predictions`` topic for monitoring,
shadow answers too (id suffixed ``:shadow``, ``output.served = false``); ``output`` follows the shared binary
convention (``score`` = P(positive), ``decision``, ``threshold``), so monitoring needs no text-specific code.
Feedback labels (``LabelRecord`` by ``prediction_id``) are consumed from ``textclf.feedback`` and joined to the
remembered predictions of each model version: the quality evidence of :func:`rollout.analyse`. Labels that do
not parse go to the dead-letter topic.

A challenger that raises never fails a request: the champion answers instead and the error counts against the
challenger (its error-rate check rolls it back). Admin endpoints (``/admin/rollout``, ``/admin/promote``,
``/admin/rollback``) need ``Authorization: Bearer <MLSD_TEXTCLF_ADMIN_TOKEN>``; with no token configured they
refuse every call.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from systems.common import registry
from systems.common.broker import TopicSpec, dead_letter_topic
from systems.common.errors import MlsdError
from systems.common.http import ADMIN_RESPONSES, AdminCredentials, check_admin_token, conflict_response
from systems.common.http import create_app as create_base_app
from systems.common.predictions import LabelRecord, PredictionPublisher
from systems.mlops_textclf.rollout import ArmStats, RolloutPlan, RolloutState, Verdict, analyse, on_challenger
from systems.mlops_textclf.settings import MAX_BATCH, MAX_TEXT_CHARS, TextclfSettings

log = logging.getLogger(__name__)

SYSTEM = "textclf"


# ------------------------------------------------------------------------------------------------ API


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(
        min_length=1, max_length=MAX_TEXT_CHARS, description="the review (title and text joined, as in training)"
    )
    key: str | None = Field(default=None, min_length=1, max_length=200, description="user/session: sticky arm")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[PredictRequest] = Field(min_length=1, max_length=MAX_BATCH)


class Prediction(BaseModel):
    prediction_id: str
    label: str
    probability: float = Field(description="P(positive class)")
    model_version: str
    arm: str = Field(description="champion or challenger: which model answered")


@dataclass(frozen=True)
class Loaded:
    model: Any
    version: str

    def proba(self, texts: list[str]) -> Any:
        return self.model.predict_proba(texts)

    def label(self, p: float) -> str:
        return str(self.model.classes[1] if p >= self.model.threshold else self.model.classes[0])


@dataclass(frozen=True)
class Routing:
    """Who answers: the champion, a challenger on ``percent`` of keys, and a model scoring in ``shadow``."""

    champion: Loaded
    challenger: Loaded | None = None
    percent: float = 0.0
    shadow: Loaded | None = None


class TextclfService:
    """The models, the rollout controller and the feedback join behind the endpoints."""

    def __init__(self, settings: TextclfSettings, *, load: Callable[[str], tuple[Any, str] | None] | None = None):
        self.settings = settings
        self._load = load
        self.routing: Routing | None = None
        self.state: RolloutState | None = None
        self.previous: Loaded | None = None
        self._candidate: Loaded | None = None
        self._evidence = False
        self.stats: dict[str, ArmStats] = {}
        self.events: list[dict[str, Any]] = []
        # (version, label) per model that answered; tuples, not lists: a tuple of strings leaves the cyclic
        # collector's sight, so 200k remembered answers do not make every full collection longer
        self.pending: OrderedDict[str, tuple[tuple[str, str], ...]] = OrderedDict()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.feedback_assigned: threading.Event | None = None
        self.publisher: PredictionPublisher | None = None
        self.labels_joined = 0
        self.labels_unmatched = 0

    # ---- models ------------------------------------------------------------------------------------
    def load_alias(self, alias: str) -> Loaded | None:
        from systems.mlops_textclf.gate import load_alias

        found = (self._load or (lambda a: load_alias(self.settings, a)))(alias)
        if found is None:
            return None
        model, version = found
        model = model.serving() if hasattr(model, "serving") else model
        model.predict_proba(["warm up"])  # first call pays lazy imports and allocation, not a user
        # A full collection scans every tracked object (~230k with mlflow and scikit-learn imported): ~120 ms
        # with the GIL held, and a load's many survivors are what triggers one. Frozen objects are never scanned
        # (still freed by reference counting), so the request path never waits for a sweep of the models.
        gc.freeze()
        return Loaded(model, version)

    def load(self) -> None:
        gc.collect()  # before serving: what start-up left behind goes now, the rest is frozen by load_alias
        champion = self.load_alias(registry.CHAMPION)
        if champion is None:
            raise MlsdError(
                f"no {self.settings.model_name}@champion in the registry: run `mlsd textclf gate RUN` and "
                "`mlsd textclf promote` (or `mlsd textclf demo`)"
            )
        self.routing = Routing(champion=champion)

    # ---- request path --------------------------------------------------------------------------------
    def predict(self, items: list[PredictRequest]) -> list[Prediction]:
        routing = self.routing
        assert routing is not None
        for item in items:
            if len(item.text) > self.settings.max_text_chars:
                raise HTTPException(422, f"text longer than {self.settings.max_text_chars} characters")
        ids = [uuid.uuid4().hex for _ in items]
        keys = [item.key or pid for item, pid in zip(items, ids, strict=True)]
        texts = [item.text for item in items]
        arms = [
            routing.challenger is not None and on_challenger(k, routing.percent) for k in keys
        ]  # True: the challenger answers
        out: list[Prediction | None] = [None] * len(items)
        challenger_rows = [i for i, a in enumerate(arms) if a]
        champion_rows = [i for i, a in enumerate(arms) if not a]
        if challenger_rows:
            assert routing.challenger is not None
            if not self._score(routing.challenger, "challenger", challenger_rows, texts, ids, keys, out):
                champion_rows = sorted(champion_rows + challenger_rows)  # it raised: the champion answers
        if champion_rows:
            self._score(routing.champion, "champion", champion_rows, texts, ids, keys, out, raise_errors=True)
        if routing.shadow is not None:
            try:  # after this request's answer: the shadow model never adds to a user's latency
                asyncio.get_running_loop().call_soon(self._shadow, routing.shadow, texts, ids, keys)
            except RuntimeError:  # called outside the server's event loop (tests, scripts)
                self._shadow(routing.shadow, texts, ids, keys)
        return [p for p in out if p is not None]

    def _score(
        self,
        loaded: Loaded,
        arm: str,
        rows: list[int],
        texts: list[str],
        ids: list[str],
        keys: list[str],
        out: list[Prediction | None],
        *,
        raise_errors: bool = False,
    ) -> bool:
        t0 = time.perf_counter()
        try:
            proba = loaded.proba([texts[i] for i in rows])
        except Exception:
            if raise_errors:
                raise
            log.exception("textclf %s v%s raised", arm, loaded.version)
            with self.lock:
                stats = self._stats(loaded.version)
                for _ in rows:
                    stats.record_error()
            return False
        latency_ms = (time.perf_counter() - t0) * 1000.0 / len(rows)
        with self.lock:
            stats = self._stats(loaded.version)
            for j, i in enumerate(rows):
                p = float(proba[j])
                label = loaded.label(p)
                stats.record(positive=label == loaded.model.classes[1], latency_ms=latency_ms)
                self._remember(ids[i], loaded.version, label)
                out[i] = Prediction(
                    prediction_id=ids[i], label=label, probability=p, model_version=loaded.version, arm=arm
                )
        for j, i in enumerate(rows):
            self._publish(ids[i], keys[i], loaded, texts[i], float(proba[j]), latency_ms, served=True)
        return True

    def _shadow(self, loaded: Loaded, texts: list[str], ids: list[str], keys: list[str]) -> None:
        t0 = time.perf_counter()
        try:
            proba = loaded.proba(texts)
        except Exception:
            with self.lock:
                for _ in texts:
                    self._stats(loaded.version).record_error()
            return
        latency_ms = (time.perf_counter() - t0) * 1000.0 / len(texts)
        with self.lock:
            stats = self._stats(loaded.version)
            for j, pid in enumerate(ids):
                label = loaded.label(float(proba[j]))
                stats.record(positive=label == loaded.model.classes[1], latency_ms=latency_ms)
                self._remember(pid, loaded.version, label)
        for j, pid in enumerate(ids):
            self._publish(f"{pid}:shadow", keys[j], loaded, texts[j], float(proba[j]), latency_ms, served=False)

    def _stats(self, version: str) -> ArmStats:
        stats = self.stats.get(version)
        if stats is None:
            stats = self.stats[version] = ArmStats()
        return stats

    def _remember(self, pid: str, version: str, label: str) -> None:
        entry = self.pending.get(pid)
        if entry is None:
            self.pending[pid] = ((version, label),)
            if len(self.pending) > self.settings.pending_labels:
                self.pending.popitem(last=False)
        else:
            self.pending[pid] = (*entry, (version, label))

    def _publish(
        self, pid: str, key: str, loaded: Loaded, text: str, p: float, latency_ms: float, *, served: bool
    ) -> None:
        if self.publisher is None:
            return
        self.publisher.offer_prediction(
            model_name=self.settings.model_name,
            model_version=loaded.version,
            prediction_id=pid,
            entity_key=key,
            event_ts_ms=int(time.time() * 1000),
            features={"text_chars": len(text), "text_words": len(text.split())},
            # the shared record's binary convention (monitoring's OutputSpec): score, decision, threshold
            output={"score": p, "decision": loaded.label(p), "threshold": loaded.model.threshold, "served": served},
            latency_ms=latency_ms,
        )

    # ---- feedback ------------------------------------------------------------------------------------
    def join_label(self, label: LabelRecord) -> None:
        """Credit every model that predicted ``label.prediction_id`` with being right or wrong."""
        if label.prediction_id is None:
            return
        with self.lock:
            entry = self.pending.pop(label.prediction_id.removesuffix(":shadow"), None)
            if entry is None:
                self.labels_unmatched += 1
                return
            self.labels_joined += 1
            for version, predicted in entry:
                self._stats(version).record_label(predicted == str(label.label))

    def run_label_consumer(self) -> None:
        from systems.common.broker import decode_batch, make_producer, make_reader

        while not self.stop.is_set():
            try:
                # Every replica needs every label of the predictions it made: a reader of the whole topic, in no
                # consumer group (no join to wait for, and none that a broker could leave hanging).
                consumer = make_reader(self.settings, [self.settings.labels_topic], start="end")
                self.feedback_assigned = consumer.assigned
                producer = make_producer(self.settings)
            except Exception as exc:  # broker down at start: try again, serving goes on
                log.warning("textclf feedback consumer: %s", exc)
                self.stop.wait(2.0)
                continue
            try:
                while not self.stop.is_set():
                    records = consumer.poll(timeout_s=0.5)
                    if records:
                        for _record, label in decode_batch(producer, records, LabelRecord):
                            if label.system == SYSTEM:
                                self.join_label(label)
                        producer.flush(5.0)
                        consumer.commit()
            except Exception as exc:
                log.warning("textclf feedback consumer restarting: %s", exc)
                self.stop.wait(1.0)
            finally:
                consumer.close()
                producer.close()

    # ---- the rollout controller ----------------------------------------------------------------------
    def start_rollout(self, plan: RolloutPlan) -> dict[str, Any]:
        if self.state is not None and self.state.phase != "done":
            raise HTTPException(409, f"a rollout is already running ({self.state.phase})")
        challenger = self.load_alias(registry.CHALLENGER)
        if challenger is None:
            raise HTTPException(409, "no challenger in the registry: gate a candidate first (mlsd textclf gate)")
        routing = self.routing
        assert routing is not None
        if challenger.version == routing.champion.version:
            raise HTTPException(409, f"v{challenger.version} is already the champion")
        state = RolloutState.start(plan)
        with self.lock:
            self._reset_ops(labels=True)
        if state.phase == "canary":
            self.routing = Routing(champion=routing.champion, challenger=challenger, percent=state.percent)
        else:
            self.routing = Routing(champion=routing.champion, shadow=challenger)
        self._candidate = challenger
        self._evidence = False
        self.state = state
        self._event("started", f"{plan.strategy} of v{challenger.version} against v{routing.champion.version}")
        return self.status()

    def _reset_ops(self, *, labels: bool = False, only: str | None = None) -> None:
        for version, stats in self.stats.items():
            if only is not None and version != only:
                continue
            stats.calls = stats.errors = stats.positives = 0
            stats.latency_ms.clear()
            if labels:
                stats.labelled = stats.wrong = 0

    def _event(self, kind: str, reason: str, checks: dict[str, Any] | None = None) -> None:
        state = self.state
        self.events.append(
            {
                "ts_ms": int(time.time() * 1000),
                "event": kind,
                "phase": state.phase if state else None,
                "percent": state.percent if state else None,
                "reason": reason,
                "checks": checks or {},
            }
        )
        del self.events[:-200]
        log.info("textclf rollout %s: %s", kind, reason)

    def tick(self) -> Verdict | None:
        """One analysis of the running rollout, and the action it calls for."""
        state, routing = self.state, self.routing
        if state is None or state.phase == "done" or routing is None:
            return None
        now = time.monotonic()
        if state.phase == "post_promotion":
            assert self.previous is not None
            with self.lock:
                verdict = analyse(  # after a promotion the labels are always read: that is its point
                    state.plan.model_copy(update={"step_s": 0.0, "feedback": True}),
                    self._stats(self.previous.version),
                    self._stats(routing.champion.version),
                    step_elapsed_s=now - state.step_started,
                )
            if verdict.decision == "rollback":
                self._rollback_promotion(verdict)
            elif now - state.step_started >= state.plan.post_promotion_s:
                self.routing = Routing(champion=routing.champion)
                self.state = RolloutState(state.plan, "done", state.step, 100.0, state.started, now, "promoted")
                self._event("finished", f"v{routing.champion.version} stayed healthy after promotion", verdict.checks)
            return verdict
        candidate = self._candidate
        assert candidate is not None
        with self.lock:
            champion, challenger = self._stats(routing.champion.version), self._stats(candidate.version)
            labelled = min(champion.labelled, challenger.labelled)
            verdict = analyse(
                state.plan,
                champion,
                challenger,
                step_elapsed_s=now - state.step_started,
                final=state.phase == "shadow" or state.step == len(state.plan.steps) - 1,
            )
        if state.plan.feedback and labelled >= state.plan.min_samples and not self._evidence:
            self._evidence = True  # from here the quality test may decide: the clock of "time to rollback"
            self._event("min_samples", f"{labelled} labelled answers per model: the quality test may decide")
        if verdict.decision == "rollback":
            self.routing = Routing(champion=routing.champion)
            self.state = RolloutState(
                state.plan, "done", state.step, 0.0, state.started, now, "rolled_back", verdict.reason
            )
            self._event("rolled_back", verdict.reason, verdict.checks)
            self._registry(lambda: self._reject(verdict.reason))
        elif verdict.decision == "advance":
            new_state, decision = state.next()
            with self.lock:
                # at 100 % the champion answers nobody: its last step stays the reference for the ops checks
                self._reset_ops(only=None if new_state.percent < 100 else candidate.version)
            if decision == "advance":
                self.routing = Routing(champion=routing.champion, challenger=candidate, percent=new_state.percent)
                self.state = new_state
                self._event("advanced", f"to {new_state.percent:g} %", verdict.checks)
            elif decision == "shadow_passed":
                self.routing = Routing(champion=routing.champion)
                self.state = new_state
                self._event("shadow_passed", f"v{candidate.version} passed the shadow analysis", verdict.checks)
            else:
                self.previous = routing.champion
                self.routing = Routing(champion=candidate, shadow=routing.champion)
                with self.lock:
                    self._reset_ops(labels=True)
                self.state = new_state
                self._event("promoted", f"v{candidate.version} is champion; v{routing.champion.version} in shadow")
                self._registry(self._promote)
        return verdict

    def _rollback_promotion(self, verdict: Verdict) -> None:
        state, routing, previous = self.state, self.routing, self.previous
        assert state is not None and routing is not None and previous is not None
        now = time.monotonic()
        self.routing = Routing(champion=previous)
        self.state = RolloutState(
            state.plan, "done", state.step, 0.0, state.started, now, "rolled_back", verdict.reason
        )
        self._event("rolled_back", f"after promotion: {verdict.reason}", verdict.checks)
        self._registry(lambda: self._rollback_registry(verdict.reason))

    def _promote(self) -> None:
        from systems.mlops_textclf.gate import promote

        promote(self.settings, reason="canary analysis passed")

    def _reject(self, reason: str) -> None:
        from systems.mlops_textclf.gate import reject_challenger

        reject_challenger(self.settings, reason=reason)

    def _rollback_registry(self, reason: str) -> None:
        from systems.mlops_textclf.gate import rollback

        rollback(self.settings, reason=reason)

    def _registry(self, action: Callable[[], None], attempts: int = 5) -> None:
        """Apply a decision to the registry in the background (retried): serving already switched in memory."""

        def run() -> None:
            for attempt in range(attempts):
                try:
                    action()
                    return
                except Exception as exc:
                    log.warning("registry write failed (attempt %d): %s", attempt + 1, exc)
                    self.stop.wait(2.0 * (attempt + 1))
            self._event("registry_error", "the registry did not take the decision; serving keeps it in memory")

        threading.Thread(target=run, name="textclf-registry", daemon=True).start()

    def admin_promote(self) -> dict[str, Any]:
        """Complete the running rollout now (the analysis is skipped: an operator's call)."""
        state, routing = self.state, self.routing
        if state is None or state.phase in ("done", "post_promotion") or routing is None:
            raise HTTPException(409, "no rollout to promote")
        candidate = self._candidate
        assert candidate is not None
        self.previous = routing.champion
        self.routing = Routing(champion=candidate, shadow=routing.champion)
        with self.lock:
            self._reset_ops(labels=True)
        self.state = RolloutState(state.plan, "post_promotion", state.step, 100.0, state.started, time.monotonic())
        self._event("promoted", f"by an operator: v{candidate.version} is champion")
        self._registry(self._promote)
        return self.status()

    def admin_rollback(self) -> dict[str, Any]:
        state, routing = self.state, self.routing
        if state is None or state.phase == "done" or routing is None:
            raise HTTPException(409, "no rollout to roll back")
        verdict = Verdict("rollback", "by an operator")
        if state.phase == "post_promotion":
            self._rollback_promotion(verdict)
        else:
            self.routing = Routing(champion=routing.champion)
            now = time.monotonic()
            self.state = RolloutState(
                state.plan, "done", state.step, 0.0, state.started, now, "rolled_back", "by an operator"
            )
            self._event("rolled_back", "by an operator")
            self._registry(lambda: self._reject("by an operator"))
        return self.status()

    def run_controller(self) -> None:
        while not self.stop.wait(self.settings.rollout_tick_s):
            try:
                self.tick()
            except Exception:
                log.exception("textclf rollout tick failed")

    def status(self) -> dict[str, Any]:
        routing, state = self.routing, self.state
        with self.lock:
            stats = {v: s.as_dict() for v, s in self.stats.items()}
        return {
            "champion": routing.champion.version if routing else None,
            "challenger": routing.challenger.version if routing and routing.challenger else None,
            "shadow": routing.shadow.version if routing and routing.shadow else None,
            "percent": routing.percent if routing else 0.0,
            "rollout": None
            if state is None
            else {
                "strategy": state.plan.strategy,
                "phase": state.phase,
                "step": state.step,
                "outcome": state.outcome,
                "reason": state.reason,
                "elapsed_s": round(time.monotonic() - state.started, 3),
            },
            "stats": stats,
            "labels": {
                "joined": self.labels_joined,
                "unmatched": self.labels_unmatched,
                # False until the feedback consumer has its partition: labels published before that wait
                "consumer_assigned": self.feedback_assigned is not None and self.feedback_assigned.is_set(),
            },
            "events": self.events[-50:],
        }


async def _service(request: Request) -> TextclfService:  # async: a sync dependency costs a thread hop per request
    svc: TextclfService = request.app.state.service
    return svc


ServiceDep = Annotated[TextclfService, Depends(_service)]


def create_app(settings: TextclfSettings | None = None, service: TextclfService | None = None) -> FastAPI:
    """App factory (uvicorn ``--factory``): models load in the lifespan, threads start there too."""
    settings = settings or TextclfSettings()
    service = service or TextclfService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.ensure_dirs()
        service.load()
        if settings.publish_predictions:
            topics = [
                TopicSpec(settings.predictions_topic, 1),
                TopicSpec(settings.labels_topic, 1),
                TopicSpec(dead_letter_topic(settings.labels_topic), 1),
            ]
            service.publisher = PredictionPublisher(
                settings, system=SYSTEM, registry=app.state.metrics_registry, topics=topics
            ).start()
            threading.Thread(target=service.run_label_consumer, name="textclf-feedback", daemon=True).start()
        threading.Thread(target=service.run_controller, name="textclf-rollout", daemon=True).start()
        yield
        service.stop.set()
        if service.publisher is not None:
            service.publisher.close()

    app = create_base_app(title="mlsd textclf", lifespan=lifespan, ready=lambda: service.routing is not None)
    app.state.service = service

    def admin(credentials: AdminCredentials) -> None:
        check_admin_token(credentials, settings.admin_token, env_var="MLSD_TEXTCLF_ADMIN_TOKEN")

    Admin = Depends(admin)

    @app.post("/predict", response_model=Prediction)
    async def predict(body: PredictRequest, svc: ServiceDep) -> Any:
        """Classify one text; ``key`` (a user or session) keeps its arm sticky during a canary."""
        return svc.predict([body])[0]

    @app.post("/predict/batch", response_model=list[Prediction])
    async def predict_batch(body: BatchRequest, svc: ServiceDep) -> Any:
        if len(body.items) > settings.max_batch:
            raise HTTPException(422, f"at most {settings.max_batch} items per batch, got {len(body.items)}")
        return svc.predict(body.items)

    @app.get("/rollout")
    async def rollout_status(svc: ServiceDep) -> Any:
        """Models, traffic split, per-version evidence and the rollout's decisions."""
        return svc.status()

    @app.post(
        "/admin/rollout",
        dependencies=[Admin],
        responses=ADMIN_RESPONSES | conflict_response("A rollout is running, or there is no challenger to roll out"),
    )
    def start_rollout(plan: RolloutPlan, svc: ServiceDep) -> Any:
        """Load the registry's challenger and start a shadow, canary or blue/green rollout of it."""
        return svc.start_rollout(plan)

    @app.post(
        "/admin/promote",
        dependencies=[Admin],
        responses=ADMIN_RESPONSES | conflict_response("Nothing to promote: no rollout is waiting for it"),
    )
    def promote(svc: ServiceDep) -> Any:
        return svc.admin_promote()

    @app.post(
        "/admin/rollback",
        dependencies=[Admin],
        responses=ADMIN_RESPONSES | conflict_response("Nothing to roll back"),
    )
    def rollback(svc: ServiceDep) -> Any:
        return svc.admin_rollback()

    return app
