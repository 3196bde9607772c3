"""The recommendation API: features → candidates → rank → re-rank, with per-stage timings.

    mlsd recsys up                      # API + stream processor + broker
    uvicorn --factory systems.recsys.serve:create_app --port 8001

``GET /recommend?user_id=1&k=10&session_items=50,172`` or ``POST /recommend`` with the same fields as JSON.
Every answer is published to the ``predictions`` topic (the shared ``systems.common.predictions`` record, for
monitoring) and, while an experiment runs, an exposure record to ``recsys.exposures`` — both through the common
non-blocking publisher, so a broker that is down costs dropped records (counted), never a slow request.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from systems.common.http import create_app as create_base_app
from systems.common.predictions import Outgoing, PredictionPublisher
from systems.recsys.abtest import Experiment
from systems.recsys.pipeline import Recommender, UserContext
from systems.recsys.served import ServedModel
from systems.recsys.settings import RecsysSettings

MAX_K = 100
MAX_SESSION = 100
log = logging.getLogger(__name__)


class OnlineStoreUnavailable(RuntimeError):
    """The online feature store did not answer (down, unreachable, or erroring)."""


# Public ids are opaque: integers or short strings without separators, exactly as the data has them.
ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,64}$"
PublicId = Annotated[int, Field(ge=0)] | Annotated[str, Field(pattern=ID_PATTERN)]


class RecommendRequest(BaseModel):
    """A request; ``user_id`` None (or unknown) is an anonymous shopper, served from its session items."""

    model_config = ConfigDict(extra="forbid")
    user_id: PublicId | None = Field(default=None, description="shopper id; omit for an anonymous session")
    k: int = Field(default=10, ge=1, le=MAX_K)
    session_items: list[PublicId] = Field(
        default_factory=list, max_length=MAX_SESSION, description="items viewed this session"
    )


class RecommendedItem(BaseModel):
    item_id: int | str
    title: str
    score: float
    source: str


class RecommendResponse(BaseModel):
    prediction_id: str
    model_version: str
    variant: str
    user_id: int | str | None
    cold_start: bool
    degraded: bool = False
    """True when the online store was unreachable and the answer is the trending fallback."""
    items: list[RecommendedItem]
    timings_ms: dict[str, float]
    warnings: list[str]


class Exposure(BaseModel):
    experiment: str
    variant: str
    user_id: int | str | None
    prediction_id: str
    item_ids: list[int | str]
    latency_ms: float
    ts_ms: int


class RecsysService:
    """Everything a request needs, built once in the lifespan."""

    def __init__(
        self,
        settings: RecsysSettings,
        rec: Recommender | None,
        *,
        served: ServedModel | None = None,
        store: Any = None,
        publisher: PredictionPublisher | None = None,
        experiment: Experiment | None = None,
    ) -> None:
        self.settings = settings
        self._rec = rec
        self.served = served
        self.store = store
        self.publisher = publisher
        self.experiment = experiment
        # Circuit breaker: after a store failure, skip the store for ``store_retry_s`` (a refused Redis connection
        # costs ~5 s of client retries, on the event loop) and answer degraded at once; then try again.
        self.store_down_until = 0.0

    @property
    def rec(self) -> Recommender:
        if self._rec is None:
            raise RuntimeError("the legacy recommender is not loaded (serve_model=registry)")
        return self._rec

    # ---- the registered model (serve_model=registry) ----------------------------------------------
    def recommend_served(self, req: RecommendRequest, served: ServedModel) -> RecommendResponse:
        """Public ids in, public ids out: the served model maps them through its id tables, nothing else does."""
        t0 = time.perf_counter()
        ans = served.recommend(user_id=req.user_id, session_ids=req.session_items, k=req.k)
        warnings = [f"unknown item ids ignored: {ans.unknown_items[:10]}"] if ans.unknown_items else []
        if req.user_id is not None and not ans.known_user:
            warnings.append("unknown user id: recommending from the session items (or what is popular)")
        resp = RecommendResponse(
            prediction_id=uuid.uuid4().hex,
            model_version=served.version,
            variant=served.kind,
            user_id=req.user_id,
            cold_start=ans.history_len == 0,
            items=[
                RecommendedItem(item_id=i, title=t, score=s, source=ans.source)
                for i, t, s in zip(ans.item_ids, ans.titles, ans.scores, strict=True)
            ],
            timings_ms={"total": round((time.perf_counter() - t0) * 1e3, 3)},
            warnings=warnings,
        )
        self.log(resp, {"user_id": req.user_id, "history_len": ans.history_len, "n_session": len(req.session_items)})
        return resp

    # ---- features --------------------------------------------------------------------------------
    def user_context(
        self, user_id: int | None, session_ids: list[int], warnings: list[str]
    ) -> tuple[UserContext, dict[str, Any]]:
        a = self.rec.art
        n = a.n_items
        used: dict[str, Any] = {"user_id": user_id}
        cats = a.unknown_cats()
        hist_ids: list[int] = []
        session_vec: np.ndarray | None = None
        if user_id is not None:
            if self.store is not None:
                from systems.recsys.feature_store import online_user

                if time.monotonic() < self.store_down_until:
                    raise OnlineStoreUnavailable("circuit open after a recent store failure")
                try:
                    f = online_user(self.store, user_id)
                except Exception as e:  # any store failure (connection refused, timeout, corrupt row) degrades
                    self.store_down_until = time.monotonic() + self.settings.store_retry_s
                    raise OnlineStoreUnavailable(f"{type(e).__name__}: {e}") from e
                if f.get("age_bucket") is not None:
                    cats = np.array([f["age_bucket"], f["gender_code"], f["occupation_code"]], dtype=np.int64)
                hist_ids = list(f.get("recent_items") or []) + list(f.get("session_items") or [])
                if f.get("session_vector"):
                    session_vec = np.asarray(f["session_vector"], dtype=np.float32)
                used.update(
                    {"n_interactions": f.get("n_interactions"), "n_live_items": len(f.get("session_items") or [])}
                )
            elif 1 <= user_id <= len(a.user_cats):
                cats = a.user_cats[user_id - 1]
                hist_ids = [i + 1 for i in a.histories[user_id - 1]]
        bad = [i for i in session_ids if not 1 <= i <= n]
        if bad:
            warnings.append(f"unknown item ids ignored: {bad[:10]}")
        hist_ids += [i for i in session_ids if 1 <= i <= n]
        hist = [i - 1 for i in hist_ids if 1 <= i <= n]
        used.update(
            {"history_len": len(hist), "recent_item_ids": [i + 1 for i in hist[-10:]], "user_cats": cats.tolist()}
        )
        ctx = UserContext(user_id - 1 if user_id is not None else None, hist, cats, int(time.time()), session_vec)
        return ctx, used

    def recommend(self, req: RecommendRequest) -> RecommendResponse:
        if self.served is not None:
            return self.recommend_served(req, self.served)
        t0 = time.perf_counter()
        warnings: list[str] = []
        # the legacy artefacts know MovieLens' integer ids only
        user_id = req.user_id if isinstance(req.user_id, int) and req.user_id >= 1 else None
        session = [i for i in req.session_items if isinstance(i, int)]
        try:
            ctx, used = self.user_context(user_id, session, warnings)
        except OnlineStoreUnavailable as e:
            return self.recommend_degraded(req, t0, warnings, str(e))
        t1 = time.perf_counter()
        variant, ranker = "default", str(self.settings.ranker)
        if self.experiment is not None:
            variant = self.experiment.assign(user_id if user_id is not None else uuid.uuid4().hex)
            ranker = variant
        out = self.rec.recommend(ctx, k=req.k, ranker=ranker)
        a = self.rec.art
        items = [
            RecommendedItem(
                item_id=int(i) + 1,
                title=a.titles[i] if i < len(a.titles) else f"synthetic item {int(i) + 1}",
                score=float(s),
                source=src,
            )
            for i, s, src in zip(out.items, out.scores, out.sources, strict=True)
        ]
        timings = {"features": (t1 - t0) * 1e3, **out.timings_ms}
        timings["total"] = (time.perf_counter() - t0) * 1e3
        resp = RecommendResponse(
            prediction_id=uuid.uuid4().hex,
            model_version=a.model_version,
            variant=variant,
            user_id=req.user_id,
            cold_start=len(ctx.history) == 0,
            items=items,
            timings_ms={k: round(v, 3) for k, v in timings.items()},
            warnings=warnings,
        )
        self.log(resp, used)
        return resp

    def recommend_degraded(
        self, req: RecommendRequest, t0: float, warnings: list[str], reason: str
    ) -> RecommendResponse:
        """Online store down: the trending list (minus this session's items), flagged ``degraded``, never a 500.

        No personal features are available, so no ranker runs; trending is the best non-personal answer we have
        (it is one of the strongest offline baselines) and costs microseconds.
        """
        log.warning("online store unavailable, serving the trending fallback: %s", reason)
        a = self.rec.art
        session = {i - 1 for i in req.session_items if isinstance(i, int)}
        top = [int(i) for i in self.rec.popular_items() if int(i) not in session][: req.k]
        warnings.append("online feature store unavailable: trending fallback")
        resp = RecommendResponse(
            prediction_id=uuid.uuid4().hex,
            model_version=a.model_version,
            variant="fallback",
            user_id=req.user_id,
            cold_start=True,
            degraded=True,
            items=[
                RecommendedItem(
                    item_id=i + 1,
                    title=a.titles[i] if i < len(a.titles) else f"synthetic item {i + 1}",
                    score=float(a.pop_scores[i]),
                    source="popularity",
                )
                for i in top
            ],
            timings_ms={"total": round((time.perf_counter() - t0) * 1e3, 3)},
            warnings=warnings,
        )
        self.log(resp, {"user_id": req.user_id, "degraded": True, "reason": reason[:200]})
        return resp

    def log(self, resp: RecommendResponse, used: dict[str, Any]) -> None:
        """Offer the prediction record (and the experiment exposure) to the non-blocking publisher."""
        if self.publisher is None:
            return
        now = int(time.time() * 1000)
        item_ids = [i.item_id for i in resp.items]
        self.publisher.offer_prediction(
            model_name=self.settings.model_name,
            model_version=resp.model_version,
            prediction_id=resp.prediction_id,
            entity_key=None if resp.user_id is None else str(resp.user_id),
            event_ts_ms=now,
            features=used,
            output={
                "item_ids": item_ids,
                "scores": [round(i.score, 5) for i in resp.items],
                "sources": [i.source for i in resp.items],
                "variant": resp.variant,
            },
            latency_ms=resp.timings_ms["total"],
        )
        if self.experiment is not None:
            exposure = Exposure(
                experiment=self.experiment.name,
                variant=resp.variant,
                user_id=resp.user_id,
                prediction_id=resp.prediction_id,
                item_ids=item_ids,
                latency_ms=resp.timings_ms["total"],
                ts_ms=now,
            )
            key = resp.prediction_id.encode()
            self.publisher.offer(Outgoing(self.settings.exposures_topic, key, payload=exposure.model_dump()))


def build_service(settings: RecsysSettings, registry: Any = None) -> RecsysService:
    """Load artefacts (and the scale catalogue when configured), open the feature store and the publisher."""
    import torch
    from threadpoolctl import threadpool_limits

    from systems.common.broker import TopicSpec
    from systems.recsys.feature_store import open_store
    from systems.recsys.pipeline import Artifacts
    from systems.recsys.scale import load_scaled

    # Per-request work is small (200 candidates): intra-op / BLAS / OpenMP threads cost more in wake-ups and
    # spin-waits than they give, 5x at p50 on the shared 2-core box (measured). One thread each.
    torch.set_num_threads(1)
    threadpool_limits(1)
    if settings.serve_model == "registry":
        return build_registry_service(settings, registry)
    art = load_scaled(settings) if settings.catalogue_size > 0 else Artifacts.load(settings.model_dir)
    rec = Recommender(art, n_candidates=settings.n_candidates)
    store = open_store(settings)
    publisher = None
    if settings.log_predictions:
        # Topics are created by the publisher's thread once the broker answers: start never waits on Kafka.
        topics = [TopicSpec(settings.predictions_topic), TopicSpec(settings.exposures_topic)]
        publisher = PredictionPublisher(settings, system="recsys", registry=registry, topics=topics).start()
    experiment = Experiment.from_settings(settings)
    svc = RecsysService(settings, rec, store=store, publisher=publisher, experiment=experiment)
    # Warm-up before /readyz turns green: the first Feast read loads the registry (~0.3 s), the first
    # forward pass allocates; neither should land on a user's request.
    try:
        ctx = svc.user_context(1, [], [])[0]
    except OnlineStoreUnavailable as e:  # start anyway: requests get the degraded answer until the store is back
        log.warning("online store unavailable at start: %s", e)
        ctx = svc.rec.user_context(None)
    svc.rec.recommend(ctx, k=10, ranker=str(settings.ranker))
    return svc


def build_registry_service(settings: RecsysSettings, registry: Any = None) -> RecsysService:
    """The ``champion`` version of ``model_name`` from MLflow; answers report that registered version."""
    from systems.common.broker import TopicSpec
    from systems.recsys.served import load_champion

    served = load_champion(settings.model_name, settings)
    publisher = None
    if settings.log_predictions:
        topics = [TopicSpec(settings.predictions_topic)]
        publisher = PredictionPublisher(settings, system="recsys", registry=registry, topics=topics).start()
    svc = RecsysService(settings, None, served=served, publisher=publisher)
    served.recommend(user_id=None, session_ids=served.items.ids[:1], k=10)  # warm-up before /readyz is green
    return svc


def get_service(request: Request) -> RecsysService:
    svc: RecsysService = request.app.state.svc
    return svc


ServiceDep = Annotated[RecsysService, Depends(get_service)]


def create_app(settings: RecsysSettings | None = None) -> FastAPI:
    """App factory (``uvicorn --factory``); the heavy loading happens in the lifespan, not at import."""
    settings = settings or RecsysSettings()
    state: dict[str, RecsysService] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        svc = build_service(settings, _app.state.metrics_registry)
        state["svc"] = svc
        _app.state.svc = svc
        yield
        if svc.publisher is not None:
            svc.publisher.close()

    app = create_base_app(title="mlsd recsys", lifespan=lifespan, ready=lambda: "svc" in state)

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend_post(body: RecommendRequest, svc: ServiceDep) -> RecommendResponse:
        """Recommendations for a user (and/or the items of the live session)."""
        return svc.recommend(body)

    @app.get("/recommend", response_model=RecommendResponse)
    async def recommend_get(
        svc: ServiceDep,
        user_id: Annotated[str | None, Query(max_length=64)] = None,
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
        session_items: Annotated[
            str,
            Query(max_length=6500, pattern=r"^([^,\s]+(,[^,\s]+)*)?$", description="comma-separated item ids"),
        ] = "",
    ) -> RecommendResponse:
        """Same as POST, with ``session_items`` as a comma-separated list (query values are text: digits are
        read as integer ids, anything else as a string id)."""
        try:
            req = RecommendRequest(
                user_id=_query_id(user_id),
                k=k,
                session_items=[_query_id(x) for x in session_items.split(",") if x][:MAX_SESSION],
            )
        except ValidationError as e:
            raise RequestValidationError(e.errors()) from None
        return svc.recommend(req)

    return app


def _query_id(value: str | None) -> Any:
    if value is None:
        return None
    return int(value) if value.isdigit() else value
