"""The synchronous authorisation path: ``POST /score``, one transaction in, decision + score + reasons out.

Run: ``uvicorn --factory systems.fraud.serve:create_app --port 8002`` (or ``mlsd fraud up --api-only``).

Latency budget (card networks give the issuer ~100 ms end to end; we keep 10 ms for the model):
validation ~0.1 ms, online features from in-process O(1) state ~0.02 ms, one model call ~0.3-1 ms,
top-3 reasons (XGBoost TreeSHAP for one row) ~0.5 ms. The handler is ``async def`` doing only CPU work
with no awaits: every request runs on the event-loop thread, so the feature state needs no lock.

The state here is this process's own (warmed from history at start, then updated by each request);
a fleet of API replicas would keep customer state in a shared store (Redis, keyed by customer) instead
-- see the README's trade-offs. A new ``champion`` is swapped in by the same watcher as the scorer's.

Every decision is also a prediction record on the ``predictions`` topic (the same generic record the
stream scorer publishes, for monitoring). The request path only does a ``put_nowait`` on a bounded
in-process queue (~1 us); a sender thread formats and produces, and flushes when idle. If the broker is
unreachable the API still answers: records that cannot be queued are dropped and counted
(``fraud_predictions_dropped_total``), delivery failures are logged and counted
(``fraud_prediction_publish_errors_total``) -- monitoring loses samples, authorisation never waits on Kafka.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from prometheus_client import CollectorRegistry, Counter

from systems.common.broker import BrokerError, Producer, make_producer
from systems.common.errors import MlsdError
from systems.common.http import create_app as create_base_app
from systems.fraud.features import FEATURES, OnlineFeatures
from systems.fraud.model import FraudModel
from systems.fraud.schemas import ScoreResponse, Transaction
from systems.fraud.settings import FraudSettings

log = logging.getLogger(__name__)

# (tx_id, features (F,), score, decision, model_version, latency_ms, ts_ms): formatted off the request path
_Pending = tuple[int, np.ndarray, float, str, str, float, int]


class PredictionPublisher:
    """Publishes prediction records from a background thread; ``offer`` never blocks the caller.

    Why a thread and a queue rather than calling ``producer.send`` in the handler: the producer is
    asynchronous, but when its local buffer is full (broker down long enough) ``send`` waits for room,
    which would put Kafka's availability in the authorisation path. Here the worst case is a dropped
    monitoring record, counted.
    """

    def __init__(self, settings: FraudSettings, registry: CollectorRegistry, maxsize: int = 10_000) -> None:
        self.settings = settings
        self.queue: queue.Queue[_Pending] = queue.Queue(maxsize=maxsize)
        self.published = Counter("fraud_predictions_published", "prediction records produced", registry=registry)
        self.dropped = Counter(
            "fraud_predictions_dropped", "prediction records dropped: local queue full", registry=registry
        )
        self.errors = Counter(
            "fraud_prediction_publish_errors", "broker errors / failed prediction deliveries", registry=registry
        )
        self.producer: Producer | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="prediction-publisher", daemon=True)
        self._last_log = 0.0

    def start(self) -> None:
        overrides: dict[str, Any] = {}
        if self.settings.kafka_client == "confluent":
            # librdkafka reports "all brokers down" here within ~1 s; give up on a record after 10 s
            overrides = {"error_cb": self._on_broker_error, "message.timeout.ms": 10_000}
        self.producer = make_producer(self.settings, **overrides)
        self.thread.start()

    def offer(self, item: _Pending) -> None:
        """Enqueue without blocking; a full queue drops the record (counted)."""
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            self.dropped.inc()

    def _on_broker_error(self, err: Any) -> None:
        self.errors.inc()
        self._warn(f"predictions producer: {err}")

    def _warn(self, msg: str) -> None:
        now = time.monotonic()
        if now - self._last_log > 10.0:  # a dead broker reports every few hundred ms: log sparsely
            log.warning("%s (the API keeps answering; records may be lost)", msg)
            self._last_log = now

    def _format(self, item: _Pending) -> bytes:
        tx_id, x, score, decision, version, latency_ms, ts_ms = item
        return json.dumps(
            {
                "system": "fraud",
                "prediction_id": str(tx_id),
                "model_version": f"{self.settings.model_name}/{version}",
                "features": dict(zip(FEATURES, x.tolist(), strict=True)),
                "output": {"score": score, "decision": decision},
                "latency_ms": latency_ms,
                "ts_ms": ts_ms,
            }
        ).encode()

    def _flush(self, timeout_s: float) -> None:
        assert self.producer is not None
        try:
            self.producer.flush(timeout_s)
        except BrokerError as exc:
            self.errors.inc()
            self._warn(str(exc))

    def _run(self) -> None:
        assert self.producer is not None
        topic, dirty = self.settings.predictions_topic, False
        while not (self.stop.is_set() and self.queue.empty()):
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                if dirty:  # idle: surface delivery failures (and free the buffer) without waiting long
                    self._flush(1.0)
                    dirty = False
                continue
            self.producer.send(topic, self._format(item), key=str(item[0]).encode())
            self.published.inc()
            dirty = True

    def close(self, timeout_s: float = 3.0) -> None:
        """Drain the queue, flush what is in flight (bounded: a dead broker must not hang shutdown)."""
        self.stop.set()
        self.thread.join(timeout_s)
        if self.producer is not None:
            self._flush(timeout_s)


class ScoringService:
    """The model + online state behind the endpoint."""

    def __init__(self, settings: FraudSettings) -> None:
        self.settings = settings
        self.model: FraudModel | None = None
        self.state = OnlineFeatures()
        self.stop = threading.Event()
        self.publisher: PredictionPublisher | None = None

    def load(self) -> None:
        import pandas as pd

        from systems.fraud.replay import day_start_s
        from systems.fraud.stream import ChampionWatcher, load_champion, warm_state

        if self.settings.history.exists():
            cols = ["tx_id", "ts_s", "customer_id", "terminal_id", "amount", "fraud"]
            tx = pd.read_parquet(self.settings.history, columns=cols)
            until = self.settings.warm_until_s or day_start_s(tx, self.settings.replay_start_day)
            self.state = warm_state(tx, until_s=until, days=self.settings.warm_days)
        self.model = load_champion(self.settings)
        if self.model is None:
            raise MlsdError(f"no {self.settings.model_name}@champion in the registry: run `mlsd fraud train`")
        ChampionWatcher(self.settings, self.model.version, self.swap, self.stop).start()

    def swap(self, model: FraudModel) -> None:
        self.model = model

    def score(self, tx: Transaction) -> ScoreResponse:
        t0 = time.perf_counter()
        model = self.model
        assert model is not None
        x = np.asarray(self.state.update(tx.customer_id, tx.terminal_id, tx.ts_s, tx.amount))  # (F,)
        p = float(model.predict_proba(x[None, :])[0])
        reasons = [{"feature": f, "contribution": round(c, 4)} for f, c in model.reasons(x, top=3)]
        decision = "block" if p >= model.threshold else "approve"
        latency_ms = (time.perf_counter() - t0) * 1000.0
        if self.publisher is not None:
            self.publisher.offer((tx.tx_id, x, p, decision, model.version, latency_ms, int(time.time() * 1000)))
        return ScoreResponse(
            tx_id=tx.tx_id,
            decision=decision,
            score=p,
            threshold=model.threshold,
            model_version=model.version,
            reasons=reasons,
            latency_ms=latency_ms,
        )


def _service(request: Request) -> ScoringService:
    svc: ScoringService = request.app.state.service
    return svc


ServiceDep = Annotated[ScoringService, Depends(_service)]


def create_app(settings: FraudSettings | None = None) -> FastAPI:
    """App factory (uvicorn ``--factory``); loading happens in the lifespan, not at import."""
    settings = settings or FraudSettings()
    service = ScoringService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.ensure_dirs()
        service.load()
        if settings.publish_predictions:
            service.publisher = PredictionPublisher(settings, app.state.metrics_registry)
            service.publisher.start()
        yield
        service.stop.set()
        if service.publisher is not None:
            service.publisher.close()

    app = create_base_app(title="mlsd fraud", lifespan=lifespan, ready=lambda: service.model is not None)
    app.state.service = service

    @app.post("/score", response_model=ScoreResponse)
    async def score(tx: Transaction, svc: ServiceDep) -> Any:
        """Authorise one transaction: decision, calibrated score, top-3 reasons."""
        return svc.score(tx)

    return app
