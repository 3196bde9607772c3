"""The spine: one prediction record and one label record for every system, one encoder, one publisher.

Every serving system (recsys ``/recommend``, fraud ``/score`` and its stream scorer, the text classifier)
publishes one :class:`PredictionRecord` per answer to the shared ``predictions`` topic; ground truth arrives
later, often days later, as a :class:`LabelRecord` on a label topic. The monitoring system consumes both,
joins them by ``prediction_id`` (or by ``entity_key`` when a label names a user or a card rather than one
prediction), and computes drift and realised performance per system and model version::

    serving  --PredictionRecord-->  predictions  --> monitoring <--  labels.<system>  <--LabelRecord--  feedback

Schema evolution. Both records carry ``schema_version``. Readers are tolerant (unknown fields are ignored),
writers are strict (the encoder writes exactly the fields below), so a field can be added in version 2
without stopping a version-1 reader. A record with a *newer major* version than the reader knows is
rejected with a reason, which sends it to the dead-letter topic instead of being misread.

Speed. :func:`encode_prediction` builds the record as a dict and serialises it with orjson (~1–2 µs for 20
float features, ~8x the stdlib; numpy scalars and arrays are accepted as they are). A pydantic round trip
(``model_dump_json``) costs ~15 µs a record, which is a third of the fraud scorer's per-event budget; the
tests check that what the encoder writes validates as a :class:`PredictionRecord`.

Never blocking a request. :class:`PredictionPublisher` is the only way a request path publishes: ``offer``
is a ``put_nowait`` on a bounded in-process queue (~1 µs); a sender thread encodes and produces. When the
broker is down the producer's own buffer fills, the sender waits, the queue fills, and further records are
*dropped and counted* (``mlsd_predictions_dropped_total{reason="queue_full"}``) — monitoring loses samples,
a user never waits on Kafka. Records that the producer gives up on are counted as
``reason="delivery_failed"``.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from systems.common.settings import MlsdSettings

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""The record format version written by this code; readers accept this major version and older."""

# What a feature or output value may be: a scalar, or a short list of scalars (recsys item ids, scores).
Scalar = float | int | str | bool | None
Value = Scalar | list[float | int | str | bool | None]

MAX_ID_CHARS = 200
MAX_LATENCY_MS = float(2**31)
"""~25 days: a latency beyond it is a broken clock or a broken producer, not a latency (a 1e30 would poison every
percentile monitoring computes). Generous on purpose: a replayed backlog's event-to-decision times are kept."""


class _Versioned(BaseModel):
    """What both records share: a schema version readers check, tolerant reading, immutability."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = Field(default=SCHEMA_VERSION, ge=1)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v > SCHEMA_VERSION:
            raise ValueError(f"schema_version {v} is newer than this reader ({SCHEMA_VERSION})")
        return v


class PredictionRecord(_Versioned):
    """One answer of one model, as monitoring needs it (drift on features/output, joins on the id)."""

    system: str = Field(min_length=1, max_length=64, description="fraud, recsys, textclf …")
    model_name: str = Field(min_length=1, max_length=200, description="registered model name")
    model_version: str = Field(min_length=1, max_length=200, description="registered version, or a content hash")
    prediction_id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="unique per prediction")
    entity_key: str | None = Field(default=None, max_length=MAX_ID_CHARS, description="user, card … (for joins)")
    event_ts_ms: int = Field(ge=0, lt=2**53, description="when the predicted event happened (event time), ms")
    features: dict[str, Value] = Field(default_factory=dict, description="the model's inputs, as served")
    output: dict[str, Value] = Field(description="score, class, item ids … as answered")
    latency_ms: float = Field(ge=0, le=MAX_LATENCY_MS, description="model-side latency of this prediction")

    @field_validator("latency_ms")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("latency_ms must be finite")
        return v


class LabelRecord(_Versioned):
    """Ground truth for an earlier prediction (by ``prediction_id``) or for an entity (``entity_key``).

    ``attributes`` holds what the label's own system needs besides the label (fraud: the terminal of the
    charged-back transaction, which feeds terminal risk); monitoring ignores it.
    """

    system: str = Field(min_length=1, max_length=64)
    prediction_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS)
    entity_key: str | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS)
    label: float | int | str = Field(description="0/1 fraud, a click or rating, a class name …")
    label_ts_ms: int = Field(ge=0, lt=2**53, description="when the label became known")
    event_ts_ms: int | None = Field(default=None, ge=0, lt=2**53, description="the labelled event's time")
    attributes: dict[str, Scalar] = Field(default_factory=dict)

    @field_validator("label")
    @classmethod
    def _finite_label(cls, v: float | int | str) -> float | int | str:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("label must be finite")
        return v

    @model_validator(mode="after")
    def _joinable(self) -> LabelRecord:
        if self.prediction_id is None and self.entity_key is None:
            raise ValueError("a label needs a prediction_id or an entity_key to be joined")
        return self


class RetrainRequest(_Versioned):
    """A request, on ``retrain.requests``, that a system retrain a model (published by monitoring's alerts).

    Consumers (fraud's retrain, the text classifier's pipeline) act on requests whose ``system`` and
    ``model_name`` are theirs, at most once per ``request_id`` (re-delivery is normal: the topic is
    at-least-once), and report the outcome by registering a new version whose tags carry ``request_id``.
    """

    request_id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="unique; the idempotency key")
    incident_id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="the alert incident behind it")
    system: str = Field(min_length=1, max_length=64)
    model_name: str = Field(min_length=1, max_length=200)
    model_version: str = Field(min_length=1, max_length=200, description="the version that degraded")
    reason: str = Field(min_length=1, max_length=2000, description="what fired, e.g. drift on 3 features")
    severity: str = Field(default="warning", max_length=32)
    requested_ts_ms: int = Field(ge=0, lt=2**53)
    evidence: dict[str, Scalar] = Field(
        default_factory=dict,
        description="the numbers that fired the alert; change_ts_ms: event time the change began (learn after it)",
    )


# ----------------------------------------------------------------------------------------------- encoder

_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def encode_prediction(
    *,
    system: str,
    model_name: str,
    model_version: str,
    prediction_id: str,
    event_ts_ms: int,
    output: Mapping[str, Any],
    latency_ms: float,
    features: Mapping[str, Any] | None = None,
    entity_key: str | None = None,
) -> bytes:
    """A :class:`PredictionRecord` as JSON bytes, without building the pydantic model (see module docstring)."""
    return orjson.dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "system": system,
            "model_name": model_name,
            "model_version": model_version,
            "prediction_id": prediction_id,
            "entity_key": entity_key,
            "event_ts_ms": int(event_ts_ms),
            "features": features if features is not None else {},
            "output": output,
            "latency_ms": float(latency_ms),
        },
        option=_OPTS,
    )


def encode_label(
    *,
    system: str,
    label: float | int | str,
    label_ts_ms: int,
    prediction_id: str | None = None,
    entity_key: str | None = None,
    event_ts_ms: int | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> bytes:
    """A :class:`LabelRecord` as JSON bytes."""
    return orjson.dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "system": system,
            "prediction_id": prediction_id,
            "entity_key": entity_key,
            "label": label,
            "label_ts_ms": int(label_ts_ms),
            "event_ts_ms": None if event_ts_ms is None else int(event_ts_ms),
            "attributes": attributes if attributes is not None else {},
        },
        option=_OPTS,
    )


def encode_json(obj: Any) -> bytes:
    """Any JSON-able message (dicts, lists, numpy values) with the same fast encoder."""
    return orjson.dumps(obj, option=_OPTS)


# --------------------------------------------------------------------------------------------- publisher


@dataclass(slots=True, frozen=True)
class Outgoing:
    """One message waiting in the publisher's queue: encoded off the request path by the sender thread."""

    topic: str
    key: bytes | None
    fields: Mapping[str, Any] | None = None
    """keyword arguments of :func:`encode_prediction` (None when ``payload`` is given)"""
    payload: Any = None
    """any other JSON-able message (an exposure record …), encoded with :func:`encode_json`"""


@dataclass(frozen=True)
class PublisherStats:
    offered: int
    published: int
    dropped_queue_full: int
    dropped_delivery: int


class PredictionPublisher:
    """Publishes prediction records (and other monitoring messages) from a background thread.

    ``offer_prediction``/``offer`` never block and never raise: a full queue drops the record, counted. The
    producer is created in the sender thread, with retries, so a service starts and answers even when the
    broker is unreachable at start (``mlsd_predictions_broker_up`` says whether it is connected).
    """

    def __init__(
        self,
        settings: MlsdSettings,
        *,
        system: str,
        registry: CollectorRegistry | None = None,
        topics: Sequence[Any] = (),
        maxsize: int | None = None,
        delivery_timeout_ms: int | None = None,
    ) -> None:
        self.settings = settings
        self.system = system
        self.topics = list(topics)  # TopicSpecs to create (best effort) once the broker answers
        self.maxsize = maxsize if maxsize is not None else settings.predictions_queue_size
        self.delivery_timeout_ms = (
            delivery_timeout_ms if delivery_timeout_ms is not None else settings.predictions_delivery_timeout_ms
        )
        self.queue: queue.Queue[Outgoing] = queue.Queue(maxsize=self.maxsize)
        registry = registry if registry is not None else CollectorRegistry()
        labels = {"system": system}
        self._published = Counter(
            "mlsd_predictions_published", "records handed to the producer", ["system"], registry=registry
        ).labels(**labels)
        dropped = Counter(
            "mlsd_predictions_dropped", "records lost on the way to the broker", ["system", "reason"], registry=registry
        )
        self._dropped_full = dropped.labels(system=system, reason="queue_full")
        self._dropped_delivery = dropped.labels(system=system, reason="delivery_failed")
        self._queue_depth = Gauge(
            "mlsd_predictions_queue_depth", "records waiting to be produced", ["system"], registry=registry
        ).labels(**labels)
        self._queue_depth.set_function(self.queue.qsize)
        self._broker_up = Gauge(
            "mlsd_predictions_broker_up", "1 when the publisher's producer is connected", ["system"], registry=registry
        ).labels(**labels)
        self._offered = 0
        self._published_n = 0
        self._dropped_full_n = 0
        self._dropped_delivery_n = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{system}-prediction-publisher", daemon=True)
        self._producer: Any = None
        self._last_warn = 0.0

    # ---- request path -------------------------------------------------------------------------------
    def offer_prediction(self, *, key: str | None = None, **fields: Any) -> None:
        """Queue one prediction record (``fields`` as for :func:`encode_prediction`, ``system`` implied)."""
        fields.setdefault("system", self.system)
        k = key if key is not None else fields.get("prediction_id")
        self.offer(Outgoing(self.settings.predictions_topic, k.encode() if k else None, fields=fields))

    def offer(self, item: Outgoing) -> None:
        """Queue any outgoing message; never blocks, never raises."""
        self._offered += 1
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            self._dropped_full_n += 1
            self._dropped_full.inc()

    # ---- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> PredictionPublisher:
        self._thread.start()
        return self

    def close(self, timeout_s: float = 3.0) -> None:
        """Drain what is queued and flush, bounded by ``timeout_s`` (a dead broker must not hang shutdown)."""
        self._stop.set()
        self._thread.join(timeout_s)

    def stats(self) -> PublisherStats:
        return PublisherStats(self._offered, self._published_n, self._dropped_full_n, self._dropped_delivery_n)

    # ---- sender thread ------------------------------------------------------------------------------
    def _warn(self, msg: str) -> None:
        now = time.monotonic()
        if now - self._last_warn > 10.0:  # a dead broker reports every few hundred ms: log sparsely
            log.warning("%s publisher: %s (the service keeps answering; records may be dropped)", self.system, msg)
            self._last_warn = now

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._dropped_delivery_n += 1
            self._dropped_delivery.inc()
            self._warn(f"delivery failed: {err}")

    def _on_error(self, err: Any) -> None:
        self._broker_up.set(0)
        self._warn(str(err))

    def _connect(self) -> bool:
        from systems.common.broker import create_topics
        from systems.common.proc import port_open

        # A TCP probe first: a broker that is not listening costs one cheap connect per attempt instead of an
        # admin client (librdkafka threads, a 2 s metadata timeout) per attempt.
        host, _, port = self.settings.kafka_bootstrap.split(",")[0].rpartition(":")
        if not port.isdigit() or not port_open(host or "127.0.0.1", int(port)):
            self._warn(f"no broker listening at {self.settings.kafka_bootstrap}")
            return False
        if self.topics:
            try:
                create_topics(self.settings, self.topics, timeout_s=2.0)
            except Exception as exc:  # the producer works without it (brokers auto-create), so go on
                self._warn(f"topics not created: {type(exc).__name__}: {exc}")
        from confluent_kafka import Producer as CProducer

        # librdkafka directly (not the blocking Producer facade of common.broker): its produce() raises
        # BufferError when full instead of waiting, and delivery failures come back through a callback.
        self._producer = CProducer(
            {
                "bootstrap.servers": self.settings.kafka_bootstrap,
                "linger.ms": 5,
                "acks": "all",
                "enable.idempotence": True,
                "message.timeout.ms": self.delivery_timeout_ms,
                "queue.buffering.max.messages": max(self.maxsize, 1),
                "error_cb": self._on_error,
                # librdkafka's own log lines (one per failed reconnect) go through logging, not raw stderr
                "logger": logging.getLogger(f"{__name__}.librdkafka"),
            }
        )
        self._broker_up.set(1)
        return True

    def _run(self) -> None:
        backoff = 0.2
        while self._producer is None and not self._stop.is_set():
            if self._connect():
                break
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)
        producer = self._producer
        if producer is None:
            return
        pending: Outgoing | None = None
        while True:
            if pending is None:
                try:
                    pending = self.queue.get(timeout=0.05)
                except queue.Empty:
                    producer.poll(0)  # serve delivery reports while idle
                    if self._stop.is_set():
                        break
                    continue
            fields = pending.fields
            value = encode_prediction(**fields) if fields is not None else encode_json(pending.payload)
            try:
                producer.produce(pending.topic, value=value, key=pending.key, on_delivery=self._on_delivery)
            except BufferError:
                # The producer's own buffer is full (broker down): wait here, not in a request. Our queue
                # fills meanwhile and ``offer`` starts dropping, which is the point.
                producer.poll(0.1)
                if self._stop.is_set():
                    break
                continue
            self._published_n += 1
            self._published.inc()
            pending = None
            producer.poll(0)
        remaining = producer.flush(1.0)
        if remaining:
            self._warn(f"{remaining} records not delivered at shutdown")
