"""The recommendation API: the registered champion, the shopper's live session, per-stage timings.

    mlsd recsys up                      # broker + stream processor + API
    uvicorn --factory systems.recsys.serve:create_app --port 8001

``GET /recommend?user_id=1&k=10&session_items=50,172`` or ``POST /recommend`` with the same fields as JSON. A
request is: read the user's live session from the online store (``session``, bounded by a per-read timeout and
a circuit breaker) → map public ids to indices (``features``) → candidates and their features (``candidates``)
→ LightGBM (``rank``); every answer says how long each stage took. Every answer is published to the
``predictions`` topic (the shared ``systems.common.predictions`` record, for monitoring) and, while an experiment
runs, an exposure record to ``recsys.exposures`` — both through the common non-blocking publisher, so a broker
that is down costs dropped records (counted), never a slow request.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from systems.common.http import create_app as create_base_app
from systems.common.predictions import Outgoing, PredictionPublisher
from systems.recsys.abtest import Experiment
from systems.recsys.dataset import ID_PATTERN, PublicId
from systems.recsys.served import ServedModel
from systems.recsys.settings import RecsysSettings

MAX_K = 100
MAX_SESSION = 100
log = logging.getLogger(__name__)


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
    """True when the online store did not answer in time: the answer leaves out the live session."""
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


class StoreUnavailable(RuntimeError):
    """The online store did not answer within its budget (down, slow, or erroring)."""


class SessionStore:
    """The online-store read of a shopper's live session, bounded in time.

    Redis (a networked store) is read with Feast's asyncio client and awaited for at most ``timeout_s``: a
    store that is slow but reachable costs a request ``timeout_s``, never more, and the event loop serves
    other requests meanwhile. sqlite (the embedded store, one local file in WAL mode, so the stream's writes
    never block a read) is read inline — a thread hop would cost more than the read (the thread waits for the
    GIL behind the requests being ranked: p99 16 ms at 100 RPS, measured) — and a read that overran the
    budget counts as a failure too. A failure or a timeout opens a circuit breaker for ``retry_s``: requests
    skip the store and answer degraded at once, then the next read tries again. Only store failures open it:
    ids are validated before a read is made, so no request can.
    """

    def __init__(self, store: Any, *, timeout_s: float, retry_s: float, registry: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Counter

        from systems.recsys.feature_store import SessionReader

        self.reader = SessionReader(store)
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.down_until = 0.0
        registry = registry if registry is not None else CollectorRegistry()
        self.failures = Counter(
            "mlsd_recsys_store_failures", "online-store reads that failed or timed out", ["reason"], registry=registry
        )

    async def read(self, user_id: Any) -> list[str]:
        if time.monotonic() < self.down_until:
            raise StoreUnavailable("circuit open after a recent store failure")
        t0 = time.monotonic()
        try:
            if self.reader.is_async:
                return await asyncio.wait_for(self.reader.read_async(user_id), self.timeout_s)
            items = self.reader.read(user_id)
        except TimeoutError:
            self._fail("timeout")
            raise StoreUnavailable(f"no answer within {self.timeout_s * 1e3:.0f} ms") from None
        except Exception as e:  # any store failure (refused, corrupt row, …) degrades the answer, never a 500
            self._fail("error")
            raise StoreUnavailable(f"{type(e).__name__}: {e}"[:300]) from e
        if time.monotonic() - t0 > self.timeout_s:  # answered, but too late to be trusted with the next request
            self._fail("slow")
        return items

    def _fail(self, reason: str) -> None:
        self.failures.labels(reason).inc()
        self.down_until = time.monotonic() + self.retry_s


class RecsysService:
    """Everything a request needs, built once in the lifespan."""

    def __init__(
        self,
        settings: RecsysSettings,
        served: ServedModel,
        *,
        sessions: SessionStore | None = None,
        publisher: PredictionPublisher | None = None,
        experiment: Experiment | None = None,
    ) -> None:
        self.settings = settings
        self.served = served
        self.sessions = sessions
        self.publisher = publisher
        self.experiment = experiment
        self.now = served.request_time(settings.clock) if settings.clock == "log" else None

    async def recommend(self, req: RecommendRequest) -> dict[str, Any]:
        """The answer as a :class:`RecommendResponse`-shaped dict (the route encodes it once, with orjson)."""
        t0 = time.perf_counter()
        warnings: list[str] = []
        live: list[str] = []
        degraded = False
        if req.user_id is not None and self.sessions is not None:
            try:
                live = await self.sessions.read(req.user_id)
            except StoreUnavailable as e:
                degraded = True
                warnings.append(f"online feature store unavailable ({e}): answered without the live session")
        t_session = time.perf_counter()
        variant = self.served.kind
        if self.experiment is not None:
            variant = self.experiment.assign(req.user_id if req.user_id is not None else uuid.uuid4().hex)
        ans = self.served.recommend(
            user_id=req.user_id,
            session_ids=[*live, *req.session_items],
            k=req.k,
            now=self.now if self.now is not None else int(time.time()),
            kind=variant,
        )
        if ans.unknown_items:
            asked = set(req.session_items)  # unknown ids the client sent; the live session's are not its doing
            if unknown := [i for i in ans.unknown_items if i in asked]:
                warnings.append(f"unknown item ids ignored: {unknown[:10]}")
        if req.user_id is not None and not ans.known_user:
            warnings.append("unknown user id: recommending from the session items (or what is popular)")
        timings = {"session": (t_session - t0) * 1e3, **ans.timings_ms}
        timings["total"] = (time.perf_counter() - t0) * 1e3
        body = {
            "prediction_id": uuid.uuid4().hex,
            "model_version": self.served.version,
            "variant": variant,
            "user_id": req.user_id,
            "cold_start": ans.history_len == 0,
            "degraded": degraded,
            "items": [
                {"item_id": i, "title": t, "score": s, "source": ans.source}
                for i, t, s in zip(ans.item_ids, ans.titles, ans.scores, strict=True)
            ],
            "timings_ms": {k: round(v, 3) for k, v in timings.items()},
            "warnings": warnings,
        }
        self.log(body, {"history_len": ans.history_len, "n_live": len(live), "n_session": len(req.session_items)})
        return body

    def log(self, body: dict[str, Any], used: dict[str, Any]) -> None:
        """Offer the prediction record (and the experiment exposure) to the non-blocking publisher."""
        if self.publisher is None:
            return
        now = int(time.time() * 1000)
        item_ids = [i["item_id"] for i in body["items"]]
        latency = body["timings_ms"]["total"]
        self.publisher.offer_prediction(
            model_name=self.settings.model_name,
            model_version=body["model_version"],
            prediction_id=body["prediction_id"],
            entity_key=None if body["user_id"] is None else str(body["user_id"]),
            event_ts_ms=now,
            features={"user_id": body["user_id"], "degraded": body["degraded"], **used},
            output={
                "item_ids": item_ids,
                "scores": [round(i["score"], 5) for i in body["items"]],
                "variant": body["variant"],
            },
            latency_ms=latency,
        )
        if self.experiment is not None:
            exposure = {
                "experiment": self.experiment.name,
                "variant": body["variant"],
                "user_id": body["user_id"],
                "prediction_id": body["prediction_id"],
                "item_ids": item_ids,
                "latency_ms": latency,
                "ts_ms": now,
            }
            key = body["prediction_id"].encode()
            self.publisher.offer(Outgoing(self.settings.exposures_topic, key, payload=exposure))

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()


def build_service(settings: RecsysSettings, registry: Any = None) -> RecsysService:
    """Load the champion, open the online store and the publisher, warm every cache before readiness."""
    import torch
    from threadpoolctl import threadpool_limits

    from systems.common.broker import TopicSpec
    from systems.recsys.served import load_champion

    # Per-request work is small (a few hundred candidates): intra-op / BLAS / OpenMP threads cost more in
    # wake-ups and spin-waits than they give on a shared 2-core box (5x at p50, measured). One thread each.
    torch.set_num_threads(1)
    threadpool_limits(1)
    served = load_champion(settings.model_name, settings).warm()
    experiment = Experiment.from_settings(settings)
    if experiment is not None:
        unknown = set(experiment.variants) - set(served.kinds())
        if unknown:
            raise ValueError(
                f"experiment variants {sorted(unknown)} are not arms of the served model: {served.kinds()}"
            )
    sessions = None
    if settings.online_store != "none":
        from systems.recsys.feature_store import ensure_store

        sessions = SessionStore(
            ensure_store(settings),
            timeout_s=settings.store_timeout_ms / 1e3,
            retry_s=settings.store_retry_s,
            registry=registry,
        )
        try:  # the first read opens the store's connection: not on a user's request
            sessions.reader.read("warm-up")
        except Exception as e:  # start anyway: requests answer degraded until the store is back
            log.warning("online store unavailable at start: %s", e)
    publisher = None
    if settings.log_predictions:
        # Topics are created by the publisher's thread once the broker answers: start never waits on Kafka.
        topics = [TopicSpec(settings.predictions_topic), TopicSpec(settings.exposures_topic)]
        publisher = PredictionPublisher(settings, system="recsys", registry=registry, topics=topics).start()
    return RecsysService(settings, served, sessions=sessions, publisher=publisher, experiment=experiment)


async def get_service(request: Request) -> RecsysService:
    """``async``: FastAPI runs a plain ``def`` dependency on a thread pool — a thread hop (and a wait for the
    GIL) per request for a dictionary lookup."""
    svc: RecsysService = request.app.state.svc
    return svc


ServiceDep = Annotated[RecsysService, Depends(get_service)]


def create_app(settings: RecsysSettings | None = None) -> FastAPI:
    """App factory (``uvicorn --factory``); the heavy loading happens in the lifespan, not at import."""
    settings = settings or RecsysSettings()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        stream = None
        if settings.stream_in_api:
            from systems.recsys.stream import StreamSupervisor

            stream = StreamSupervisor(settings, registry=_app.state.metrics_registry)
            stream.start()
            state["stream"] = stream
        svc = build_service(settings, _app.state.metrics_registry)
        if svc.sessions is not None and svc.sessions.reader.is_async:
            with contextlib.suppress(Exception):  # Redis's asyncio client connects on its first read
                await svc.sessions.reader.read_async("warm-up")
        # The model's objects live as long as the process: move them out of the collector's way, so a full
        # collection never walks them in the middle of a request.
        gc.collect()
        gc.freeze()
        state["svc"] = svc
        _app.state.svc = svc
        yield
        svc.close()
        if stream is not None:
            stream.stop()

    def ready() -> bool:
        """The model is loaded, and the stream processor (when it runs here) is up: a dead consumer loop is an
        unready service, never a silently frozen one."""
        stream = state.get("stream")
        return "svc" in state and (stream is None or stream.healthy)

    app = create_base_app(title="mlsd recsys", lifespan=lifespan, ready=ready)

    # The routes return the body encoded once with orjson: FastAPI would otherwise validate the returned model
    # against ``response_model`` again and serialise it through pydantic (~0.2 ms a request, measured). The
    # schema still documents RecommendResponse, and the fuzz test checks every answer against it.
    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend_post(body: RecommendRequest, svc: ServiceDep) -> Response:
        """Recommendations for a user (and/or the items of the live session)."""
        return _json(await svc.recommend(body))

    @app.get("/recommend", response_model=RecommendResponse)
    async def recommend_get(
        svc: ServiceDep,
        user_id: Annotated[str | None, Query(min_length=1, max_length=128, pattern=ID_PATTERN)] = None,
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
        session_items: Annotated[
            str,
            Query(
                max_length=13_000,
                pattern=r"^([^,\x00-\x1f\x7f]+(,[^,\x00-\x1f\x7f]+)*)?$",
                description="comma-separated item ids (ids that contain a comma: use POST)",
            ),
        ] = "",
    ) -> Response:
        """Same as POST, with ``session_items`` as a comma-separated list (query values are text: digits are
        read as integer ids, anything else as a string id)."""
        try:
            req = RecommendRequest(
                user_id=_query_id(user_id),
                k=k,
                session_items=[_query_id(x) for x in session_items.split(",") if x][: MAX_SESSION + 1],
            )
        except ValidationError as e:
            raise RequestValidationError(e.errors()) from None
        return _json(await svc.recommend(req))

    return app


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def _query_id(value: str | None) -> Any:
    """Query text as an id: digits are an integer id (validation refuses one over 2^63 − 1: a 422, never an
    overflow in a store), anything else a string id."""
    if value is None:
        return None
    return int(value) if value.isascii() and value.isdigit() else value
