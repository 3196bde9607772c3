"""The synchronous authorisation path: ``POST /score``, one transaction in, decision + score + reasons out.

Run: ``uvicorn --factory systems.fraud.serve:create_app --port 8002`` (or ``mlsd fraud up --api-only``).

Latency budget (card networks give the issuer ~100 ms end to end; we keep 10 ms for the model):
validation ~0.1 ms, online features from in-process O(1) state ~0.02 ms, one model call ~0.3-1 ms,
top-3 reasons (XGBoost TreeSHAP for one row) ~0.5 ms. The handler is ``async def`` doing only CPU work
with no awaits: every request runs on the event-loop thread, so the feature state needs no lock.

Idempotent by tx_id. A client that times out retries; the retry must not count the transaction twice (in the
customer's velocity features, in monitoring) nor get a second opinion. So the first answer is stored by tx_id
before it is sent (``store.ScoreStore``), and a retry gets that stored answer byte for byte; a tx_id reused for
a different transaction is a 409.

Bounded work per request. The body is validated at the edge (64-bit ids, finite amounts, sizes), and the
event time must lie within a window around this process's clock (the newest event time it accepted): a
timestamp far off would move the clock for good or be scored against windows long gone, so it is a 422 with
the reason. Any accepted timestamp costs at most two feature rows (``features.OnlineFeatures``), never a
rebuild of every table.

The state here is this process's own (warmed from history at start, then updated by each request);
a fleet of API replicas would keep customer state in a shared store (Redis, keyed by customer) instead
-- see the README's trade-offs. A new ``champion`` is swapped in by the same watcher as the scorer's.

Every decision is also a prediction record on the ``predictions`` topic (the shared record of
``systems.common.predictions``, as the stream scorer publishes it). The request path only offers it to the
common non-blocking publisher (a ``put_nowait`` on a bounded queue, ~1 us); if the broker is unreachable the
API still answers, and what cannot be delivered is dropped and counted
(``mlsd_predictions_dropped_total{system="fraud"}``) -- monitoring loses samples, authorisation never waits
on Kafka.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError

from systems.common.broker import TopicSpec
from systems.common.errors import MlsdError
from systems.common.http import ErrorBody
from systems.common.http import create_app as create_base_app
from systems.common.predictions import PredictionPublisher, encode_json
from systems.fraud.features import FEATURES, OnlineFeatures
from systems.fraud.model import FraudModel
from systems.fraud.schemas import ScoreResponse, Transaction
from systems.fraud.settings import FraudSettings
from systems.fraud.store import ScoreStore

log = logging.getLogger(__name__)


class OutsideWindow(Exception):
    """The event time is too far from this process's clock (a 422 with the reason)."""


class TxIdConflict(Exception):
    """The tx_id was answered before for a transaction with other fields (a 409)."""


class ScoringService:
    """The model + online state behind the endpoint."""

    def __init__(self, settings: FraudSettings) -> None:
        self.settings = settings
        self.model: FraudModel | None = None
        self.state = OnlineFeatures()
        self.stop = threading.Event()
        self.publisher: PredictionPublisher | None = None
        self.store: ScoreStore | None = None
        self.answers: dict[int, tuple[str, bytes]] = {}  # recent answers by tx_id (a retry skips the store)
        self.retries = 0

    def load(self) -> None:
        import pandas as pd

        from systems.fraud.replay import day_start_s
        from systems.fraud.stream import ChampionWatcher, load_champion, score_store_url, warm_state

        if self.settings.history.exists():
            cols = ["tx_id", "ts_s", "customer_id", "terminal_id", "amount", "fraud"]
            tx = pd.read_parquet(self.settings.history, columns=cols)
            until = self.settings.warm_until_s or day_start_s(tx, self.settings.replay_start_day)
            self.state = warm_state(tx, until_s=until, days=self.settings.warm_days)
        self.model = load_champion(self.settings)
        if self.model is None:
            raise MlsdError(f"no {self.settings.model_name}@champion in the registry: run `mlsd fraud train`")
        self.store = ScoreStore(score_store_url(self.settings))
        # customers answered before a restart continue from their stored state, not from the history's
        self.state.import_customers(self.store.customer_states())
        gc.collect()
        gc.freeze()  # the warmed state: long-lived, never garbage; full collections would traverse it again
        ChampionWatcher(self.settings, self.model.version, self.swap, self.stop).start()

    def swap(self, model: FraudModel) -> None:
        self.model = model

    def score(self, tx: Transaction) -> bytes:
        """The JSON answer for ``tx``: the stored one for a tx_id seen before, else a fresh decision, stored
        before it is returned. Raises :class:`OutsideWindow` or :class:`TxIdConflict`."""
        request = f"{tx.customer_id}|{tx.terminal_id}|{tx.ts_s}|{tx.amount!r}"
        known = self.answers.get(tx.tx_id)
        if known is None and self.store is not None:
            known = self.store.get(tx.tx_id)
        if known is not None:
            if known[0] != request:
                raise TxIdConflict(f"tx_id {tx.tx_id} was scored before with other fields ({known[0]})")
            self.retries += 1
            return known[1]
        s = self.settings
        why = self.state.check_time(tx.ts_s, max_lead_s=s.max_event_lead_s, max_lag_s=s.max_event_lag_s)
        if why is not None:
            raise OutsideWindow(why)
        t0 = time.perf_counter()
        model = self.model
        assert model is not None
        x = np.asarray(self.state.update(tx.customer_id, tx.terminal_id, tx.ts_s, tx.amount))  # (F,)
        p = float(model.predict_proba(x[None, :])[0])
        reasons = [{"feature": f, "contribution": round(c, 4)} for f, c in model.reasons(x, top=3)]
        decision = "block" if p >= model.threshold else "approve"
        latency_ms = (time.perf_counter() - t0) * 1000.0
        body = encode_json(
            {
                "tx_id": tx.tx_id,
                "decision": decision,
                "score": p,
                "threshold": model.threshold,
                "model_version": model.version,
                "reasons": reasons,
                "latency_ms": latency_ms,
            }
        )
        if self.store is not None and not self.store.put(
            tx.tx_id,
            request,
            body,
            int(time.time() * 1000),
            x.tobytes(),
            (tx.customer_id, 0, self.state.export_customers([tx.customer_id])[0][1]),
        ):
            stored = self.store.get(tx.tx_id)  # another worker answered this tx_id first: its answer stands
            if stored is not None:
                if stored[0] != request:
                    raise TxIdConflict(f"tx_id {tx.tx_id} was scored before with other fields ({stored[0]})")
                return stored[1]
        self.answers[tx.tx_id] = (request, body)
        if len(self.answers) > self.settings.score_cache_size:
            del self.answers[next(iter(self.answers))]  # oldest first: the dict keeps insertion order
        if self.publisher is not None:
            self.publisher.offer_prediction(
                model_name=self.settings.model_name,
                model_version=model.version,
                prediction_id=str(tx.tx_id),
                entity_key=str(tx.customer_id),
                event_ts_ms=tx.ts_s * 1000,
                features=dict(zip(FEATURES, x.tolist(), strict=True)),
                output={"score": p, "decision": decision},
                latency_ms=latency_ms,
            )
        return body


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
            topics = [TopicSpec(settings.predictions_topic, settings.partitions)]
            service.publisher = PredictionPublisher(
                settings, system="fraud", registry=app.state.metrics_registry, topics=topics
            ).start()
        yield
        service.stop.set()
        if service.publisher is not None:
            service.publisher.close()
        if service.store is not None:
            service.store.close()

    app = create_base_app(title="mlsd fraud", lifespan=lifespan, ready=lambda: service.model is not None)
    app.state.service = service

    @app.post(
        "/score",
        response_model=ScoreResponse,
        responses={409: {"model": ErrorBody, "description": "The tx_id was scored before with other fields"}},
    )
    async def score(tx: Transaction, svc: ServiceDep) -> Any:
        """Authorise one transaction: decision, calibrated score, top-3 reasons. Idempotent by tx_id: a retry
        gets the first answer."""
        try:
            body = svc.score(tx)
        except OutsideWindow as exc:
            raise RequestValidationError([{"loc": ("body", "ts_s"), "msg": str(exc), "type": "value_error"}]) from None
        except TxIdConflict as exc:
            raise HTTPException(409, str(exc)) from None
        return Response(content=body, media_type="application/json")

    return app
