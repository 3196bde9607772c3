"""Ingest: the prediction and label topics into the join and the windows, at-least-once, at stream speed.

    predictions ──member "predictions"──▶ MonitorState.add_predictions ─▶ LabelJoin ─┐
    labels, recsys.feedback, … ──member "labels"──▶ MonitorState.add_labels ─────────┴─▶ Windows ─▶ WindowResult

Two consumer-group members, one thread each, both through :func:`~systems.common.broker.run_consumer_loop`:
a malformed record goes to ``<topic>.dlq`` with the reason and the next record is processed; offsets are
committed after the handler ran, so a crash re-delivers, and the handlers are idempotent (the join ignores a
prediction id it holds and counts a label it already graded), so a re-delivered batch counts once. The two
members are separate groups (``<group_id>.predictions``, ``<group_id>.labels``) so that a burst on one topic
never stalls the other in a rebalance. Readiness is partition assignment of both (``on_ready``), not a sleep.

Decoding speed. ``PredictionRecord.model_validate_json`` parses and validates in pydantic-core (Rust).
:class:`FastPredictionRecord` is the alternative: orjson, then plain-Python checks of exactly the schema's
constraints (types, lengths, ranges, scalar-or-list feature values), then the model instance built without a
second pass (what ``model_construct`` does, minus its per-field loop); whatever the check does not vouch for
goes through pydantic, so a valid record is still accepted and an invalid one fails with pydantic's own
message, which is the dead letter's ``reason``. A test holds the two paths equal on valid and invalid inputs.
Measured through the broker (:func:`bench_ingest`), they cost the same within noise: what a record costs
is mostly allocating its Python objects (a dict of 20 floats, the model), which both paths do. So pydantic is
the default (``fast=False``) and the fast path stays a measured option.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Self, TypeVar

import orjson
from pydantic import BaseModel
from pydantic.config import ExtraValues

from systems.common.bench import cpu_times, steal_pct
from systems.common.broker import (
    LocalBroker,
    Producer,
    Record,
    TopicSpec,
    create_topics,
    dead_letter_topic,
    make_consumer,
    make_producer,
    run_consumer_loop,
)
from systems.common.predictions import (
    MAX_ID_CHARS,
    MAX_LATENCY_MS,
    SCHEMA_VERSION,
    LabelRecord,
    PredictionRecord,
    encode_prediction,
)
from systems.common.proc import free_port
from systems.monitoring.join import Added, JoinConfig, LabelJoin
from systems.monitoring.results import WindowKey, WindowResult
from systems.monitoring.settings import MonitoringSettings
from systems.monitoring.windows import Reference, WindowConfig, Windows, load_references, load_version_references

# ============================================================================================== decoding

M = TypeVar("M", bound=BaseModel)

_SCALAR_TYPES = frozenset({float, int, str, bool, type(None)})
_TS_MAX = 2**53
_EMPTY: dict[str, Any] = {}


def _name(v: Any, longest: int) -> bool:
    return type(v) is str and 0 < len(v) <= longest


def _optional_id(v: Any, *, min_len: int) -> bool:
    return v is None or (type(v) is str and min_len <= len(v) <= MAX_ID_CHARS)


def _ts(v: Any) -> bool:
    return type(v) is int and 0 <= v < _TS_MAX


def _values(m: Any, *, lists: bool = True) -> bool:
    """A dict of scalars, or (``lists``) short lists of scalars: ``predictions.Value``."""
    if type(m) is not dict:
        return False
    scalars = _SCALAR_TYPES
    if scalars.issuperset(map(type, m.values())):  # one C-level pass for the common all-scalar case
        return True
    return lists and all(
        type(v) in scalars or (type(v) is list and scalars.issuperset(map(type, v))) for v in m.values()
    )


def _version(d: dict[str, Any]) -> bool:
    v = d.get("schema_version", SCHEMA_VERSION)
    return type(v) is int and 1 <= v <= SCHEMA_VERSION


def _instance(cls: type[BaseModel], values: dict[str, Any]) -> Any:
    """A model instance over already-validated values (pydantic's ``model_construct`` without its loop)."""
    m = cls.__new__(cls)
    object.__setattr__(m, "__dict__", values)
    object.__setattr__(m, "__pydantic_fields_set__", set(values))
    object.__setattr__(m, "__pydantic_extra__", None)
    object.__setattr__(m, "__pydantic_private__", None)
    return m


_PREDICTION_KEYS = frozenset(PredictionRecord.model_fields)


def fast_prediction_fields(d: Any) -> dict[str, Any] | None:
    """The validated fields of a decoded prediction record, or None when the fast check cannot vouch for it.

    Written flat (one function, no helper calls: a Python call costs ~0.3 µs here) because it runs once per
    record; the decoded dict itself becomes the model's ``__dict__`` when it holds exactly the schema's keys.
    """
    if type(d) is not dict:
        return None
    system, name, version, pid = d.get("system"), d.get("model_name"), d.get("model_version"), d.get("prediction_id")
    entity, ts, latency = d.get("entity_key"), d.get("event_ts_ms"), d.get("latency_ms")
    features, output, v = d.get("features", _EMPTY), d.get("output"), d.get("schema_version", SCHEMA_VERSION)
    if not (
        type(system) is str
        and type(name) is str
        and type(version) is str
        and type(pid) is str
        and 0 < len(system) <= 64
        and 0 < len(name) <= 200
        and 0 < len(version) <= 200
        and 0 < len(pid) <= MAX_ID_CHARS
        and (entity is None or (type(entity) is str and len(entity) <= MAX_ID_CHARS))
        and type(ts) is int
        and 0 <= ts < _TS_MAX
        and type(v) is int
        and 1 <= v <= SCHEMA_VERSION
        and (type(latency) is float or type(latency) is int)
        and 0 <= latency <= MAX_LATENCY_MS
        and type(features) is dict
        and type(output) is dict
    ):
        return None
    scalars = _SCALAR_TYPES
    if not (scalars.issuperset(map(type, features.values())) or _values(features)):
        return None
    if not (scalars.issuperset(map(type, output.values())) or _values(output)):
        return None
    if len(d) != len(_PREDICTION_KEYS) or not _PREDICTION_KEYS.issuperset(d):
        d = {k: d[k] for k in _PREDICTION_KEYS if k in d}  # unknown keys are ignored, as the schema does
        d.setdefault("schema_version", SCHEMA_VERSION)
        d.setdefault("entity_key", None)
        d.setdefault("features", {})
    if type(latency) is int:
        d["latency_ms"] = float(latency)
    return d


def fast_label_fields(d: Any) -> dict[str, Any] | None:
    """The validated fields of a decoded label record, or None (see :func:`fast_prediction_fields`)."""
    if type(d) is not dict or not _version(d):
        return None
    system, pid, entity = d.get("system"), d.get("prediction_id"), d.get("entity_key")
    label, label_ts, event_ts = d.get("label"), d.get("label_ts_ms"), d.get("event_ts_ms")
    attributes = d.get("attributes", {})
    if not (_name(system, 64) and _optional_id(pid, min_len=1) and _optional_id(entity, min_len=1)):
        return None
    if pid is None and entity is None:
        return None
    if type(label) not in (int, float, str) or not _ts(label_ts) or not (event_ts is None or _ts(event_ts)):
        return None
    if not _values(attributes, lists=False):
        return None
    return {
        "schema_version": d.get("schema_version", SCHEMA_VERSION),
        "system": system,
        "prediction_id": pid,
        "entity_key": entity,
        "label": label,
        "label_ts_ms": label_ts,
        "event_ts_ms": event_ts,
        "attributes": attributes,
    }


def _fast_instance(
    cls: type[M],
    fields_of: Callable[[Any], dict[str, Any] | None],
    json_data: str | bytes | bytearray,
    strict: bool | None,
    context: Any | None,
) -> M | None:
    """The fast path both record types share: orjson + plain checks, or None to fall back to pydantic."""
    if strict is not None or context is not None:
        return None
    try:
        fields = fields_of(orjson.loads(json_data))
    except orjson.JSONDecodeError:
        return None
    if fields is None:
        return None
    out: M = _instance(cls, fields)
    return out


class FastPredictionRecord(PredictionRecord):
    """A :class:`PredictionRecord` whose JSON decoding takes the fast path when it can (module docstring)."""

    @classmethod
    def model_validate_json(
        cls,
        json_data: str | bytes | bytearray,
        *,
        strict: bool | None = None,
        extra: ExtraValues | None = None,
        context: Any | None = None,
        by_alias: bool | None = None,
        by_name: bool | None = None,
    ) -> Self:
        fast = _fast_instance(cls, fast_prediction_fields, json_data, strict, context)
        if fast is not None:
            return fast
        return super().model_validate_json(
            json_data, strict=strict, extra=extra, context=context, by_alias=by_alias, by_name=by_name
        )


class FastLabelRecord(LabelRecord):
    """A :class:`LabelRecord` whose JSON decoding takes the fast path when it can."""

    @classmethod
    def model_validate_json(
        cls,
        json_data: str | bytes | bytearray,
        *,
        strict: bool | None = None,
        extra: ExtraValues | None = None,
        context: Any | None = None,
        by_alias: bool | None = None,
        by_name: bool | None = None,
    ) -> Self:
        fast = _fast_instance(cls, fast_label_fields, json_data, strict, context)
        if fast is not None:
            return fast
        return super().model_validate_json(
            json_data, strict=strict, extra=extra, context=context, by_alias=by_alias, by_name=by_name
        )


# ================================================================================================= state


@dataclass
class IngestCounters:
    predictions: int = 0
    """Prediction records decoded and handled (duplicates included: the join counts those)."""
    labels: int = 0
    prediction_dead_letters: int = 0
    label_dead_letters: int = 0
    prediction_batches: int = 0
    label_batches: int = 0


class MonitorState:
    """The join, the windows and the counters, behind one lock (two consumer threads feed it).

    Every result that closes, changes or becomes final goes to ``on_result`` and into :attr:`latest` (the
    newest revision per window, at most ``max_latest`` windows), which the alerts, the metrics endpoint and the
    dashboard read.
    """

    def __init__(
        self,
        *,
        windows: WindowConfig | None = None,
        join: JoinConfig | None = None,
        references: Mapping[tuple[str, str], Reference] | None = None,
        version_references: Mapping[tuple[str, str, str], Reference] | None = None,
        on_result: Callable[[WindowResult], None] | None = None,
        max_latest: int = 10_000,
    ) -> None:
        wcfg = windows or WindowConfig()
        self.windows = Windows(wcfg, references, version_references)
        self.join = LabelJoin(
            join
            or JoinConfig(
                label_wait_s=wcfg.label_wait_s, allowed_lateness_s=wcfg.allowed_lateness_s, policies=wcfg.policies
            )
        )
        self.counters = IngestCounters()
        self.on_result = on_result
        self.max_latest = max_latest
        self.latest: OrderedDict[WindowKey, WindowResult] = OrderedDict()
        self.lock = threading.Lock()

    @classmethod
    def from_settings(
        cls,
        settings: MonitoringSettings,
        *,
        references: Mapping[tuple[str, str], Reference] | None = None,
        version_references: Mapping[tuple[str, str, str], Reference] | None = None,
        on_result: Callable[[WindowResult], None] | None = None,
        **window_overrides: Any,
    ) -> MonitorState:
        """Windows and join from settings; references (per model, and re-baselined per version) given, else
        loaded from ``settings.references``."""
        wcfg = WindowConfig.from_settings(settings, **window_overrides)
        jcfg = JoinConfig(
            label_wait_s=settings.label_wait_s,
            allowed_lateness_s=settings.allowed_lateness_s,
            max_pending=settings.max_pending,
            policies=wcfg.policies,
        )
        if references is None:
            references = load_references(settings.references)
        if version_references is None:
            version_references = load_version_references(settings.references)
        return cls(
            windows=wcfg,
            join=jcfg,
            references=references,
            version_references=version_references,
            on_result=on_result,
        )

    # ---- handlers (idempotent) ------------------------------------------------------------------------
    def add_predictions(self, records: Iterable[PredictionRecord]) -> list[WindowResult]:
        """Join-register and window every new prediction; a re-delivered one changes nothing but a counter."""
        with self.lock:
            w, j = self.windows, self.join
            add, extract, place = j.add_prediction, w.extract, w.add
            n = 0
            s = None
            for r in records:
                n += 1
                system, model_name, model_version = r.system, r.model_name, r.model_version
                # Consecutive records are mostly of one series: three string compares beat a tuple key lookup.
                if s is None or s.system != system or s.model_name != model_name or s.model_version != model_version:
                    s = w.series(system, model_name, model_version, r.output)
                ex = extract(s, r.output)
                ts = r.event_ts_ms
                status = add(
                    system, r.prediction_id, s.index, ts, ex[0], ex[1], s.slice_code(r.features), ex[2], r.entity_key
                )
                if status is Added.ADDED:
                    place(s, ts, r.features, r.output, r.latency_ms, ex)
                elif status is Added.TOO_OLD:
                    w.count_late(s, ts)
            self.counters.predictions += n
            self.counters.prediction_batches += 1
            joined = j.take()
            if joined:
                w.add_outcomes(joined)
            return self._emit(w.poll())

    def add_labels(self, records: Iterable[LabelRecord]) -> list[WindowResult]:
        """Grade waiting predictions; a re-delivered label is counted as a duplicate, never graded twice."""
        with self.lock:
            j = self.join
            n = 0
            for r in records:
                n += 1
                j.add_label(
                    r.system,
                    r.label,
                    label_ts_ms=r.label_ts_ms,
                    prediction_id=r.prediction_id,
                    entity_key=r.entity_key,
                    event_ts_ms=r.event_ts_ms,
                )
            self.counters.labels += n
            self.counters.label_batches += 1
            joined = j.take()
            if joined:
                self.windows.add_outcomes(joined)
            return self._emit(self.windows.poll())

    def poll(self, now: float | None = None) -> list[WindowResult]:
        """Emit what is due without new records (rate-limited label updates); safe to call on a timer."""
        with self.lock:
            return self._emit(self.windows.poll(now))

    def flush(self, *, final: bool = False) -> list[WindowResult]:
        """Close every open window now (and with ``final`` emit every kept one as final)."""
        with self.lock:
            return self._emit(self.windows.flush(final=final))

    def _emit(self, results: list[WindowResult]) -> list[WindowResult]:
        for r in results:
            self.latest.pop(r.key, None)
            self.latest[r.key] = r
            if len(self.latest) > self.max_latest:
                self.latest.popitem(last=False)
            if self.on_result is not None:
                self.on_result(r)
        return results

    def snapshot(self) -> dict[str, Any]:
        """Counters of every stage, as plain data (for /metrics and the bench)."""
        with self.lock:
            return {
                "ingest": asdict(self.counters),
                "join": asdict(self.join.stats) | {"pending": self.join.pending, "held": self.join.held},
                "windows": asdict(self.windows.stats),
            }


# ================================================================================================ ingest


class _CountingProducer:
    """The dead-letter producer, counting what it dead-letters (``decode_batch`` reports nothing else)."""

    def __init__(self, inner: Producer, count: Callable[[], None]) -> None:
        self.inner = inner
        self.count = count

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        if topic.endswith(".dlq"):
            self.count()
        self.inner.send(topic, value, key)

    def flush(self, timeout_s: float = 30.0) -> None:
        self.inner.flush(timeout_s)

    def close(self) -> None:
        self.inner.close()


class _Readiness:
    """Calls ``on_ready`` once every member has its partitions."""

    def __init__(self, members: int, on_ready: Callable[[], None] | None) -> None:
        self._left = members
        self._on_ready = on_ready
        self._lock = threading.Lock()
        self.event = threading.Event()

    def member_ready(self) -> None:
        with self._lock:
            self._left -= 1
            done = self._left == 0
        if done:
            self.event.set()
            if self._on_ready is not None:
                self._on_ready()


def ingest_topics(settings: MonitoringSettings, partitions: int = 1) -> list[TopicSpec]:
    """The topics monitoring reads, and their dead-letter topics (created up front: tansu cannot add
    partitions later, and an auto-created topic gets 4)."""
    names = [settings.predictions_topic, *settings.labels]
    return [TopicSpec(n, partitions) for n in names] + [TopicSpec(dead_letter_topic(n), 1) for n in names]


def _member(
    settings: MonitoringSettings,
    name: str,
    topics: Sequence[str],
    schema: Any,
    handle: Callable[[list[tuple[Record, Any]]], None],
    count_dead_letter: Callable[[], None],
    *,
    stop: threading.Event,
    on_ready: Callable[[], None] | None,
    client: str | None,
    max_records: int,
    commit_interval_s: float,
    before_commit: Callable[[], None] | None = None,
) -> None:
    consumer = make_consumer(settings, topics, f"{settings.group_id}.{name}", client)
    producer = _CountingProducer(make_producer(settings, client), count_dead_letter)
    try:
        run_consumer_loop(
            consumer,
            producer,
            schema,
            handle,
            stop=stop,
            max_records=max_records,
            commit_interval_s=commit_interval_s,
            before_commit=before_commit,
            on_ready=on_ready,
        )
    finally:
        consumer.close()
        producer.close()


def run_ingest(
    settings: MonitoringSettings,
    state: MonitorState,
    stop: threading.Event,
    *,
    on_ready: Callable[[], None] | None = None,
    client: str | None = None,
    fast: bool = False,
    max_records: int = 500,
    commit_interval_s: float = 1.0,
    create: bool = True,
    gc_freeze: bool = False,
) -> None:
    """Consume predictions and labels into ``state`` until ``stop`` is set (blocks; run it in a thread).

    ``on_ready`` runs once both members have their partitions. ``fast`` picks the decoding path (module
    docstring). ``commit_interval_s`` bounds re-delivery after a crash (the handlers make it harmless). A bug
    in a handler stops both members and is raised here; bad data never stops them.

    ``gc_freeze`` (for a process that does nothing else, like the monitoring service): move every object
    allocated so far (imported modules, references) out of the cyclic collector's sight, so the collections
    that a stream of short-lived records triggers scan only what the stream allocated; measured ~1.5x on
    decode plus handling. Process-wide, hence opt-in.
    """
    if gc_freeze:
        gc.freeze()
    if create:
        create_topics(settings, ingest_topics(settings))
    ready = _Readiness(2, on_ready)
    errors: list[BaseException] = []
    c = state.counters

    def dead_prediction() -> None:
        c.prediction_dead_letters += 1

    def dead_label() -> None:
        c.label_dead_letters += 1

    def idle_poll() -> None:
        state.poll()  # at each commit point: rate-limited updates go out (LiveMonitor's timer covers idle)

    members = [
        (
            "predictions",
            [settings.predictions_topic],
            FastPredictionRecord if fast else PredictionRecord,
            lambda batch: state.add_predictions(r for _, r in batch),
            dead_prediction,
        ),
        (
            "labels",
            settings.labels,
            FastLabelRecord if fast else LabelRecord,
            lambda batch: state.add_labels(r for _, r in batch),
            dead_label,
        ),
    ]

    def run(args: tuple[Any, ...]) -> None:
        name, topics, schema, handle, count = args
        try:
            _member(
                settings,
                name,
                topics,
                schema,
                handle,
                count,
                stop=stop,
                on_ready=ready.member_ready,
                client=client,
                max_records=max_records,
                commit_interval_s=commit_interval_s,
                before_commit=idle_poll,
            )
        except BaseException as exc:  # a bug: stop the other member too, re-raise in the caller
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=run, args=(m,), name=f"monitoring-{m[0]}", daemon=True) for m in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# ============================================================================================ measurement


def _bench_records(n: int, *, features: int, seed: int) -> list[bytes]:
    """``n`` fraud-like prediction records (``features`` floats, a score and a decision), encoded."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).round(6)
    scores = rng.beta(0.5, 20, n).round(6)
    names = ["amount", *[f"f{i}" for i in range(1, features)]]
    t0 = 1_700_000_000_000
    out: list[bytes] = []
    for i in range(n):
        out.append(
            encode_prediction(
                system="fraud",
                model_name="fraud-xgb",
                model_version="7",
                prediction_id=str(100_000_000 + i),
                entity_key=str(i % 5000),
                event_ts_ms=t0 + i,  # 1000 records per event-time second: windows close during the run
                features=dict(zip(names, x[i].tolist(), strict=True)),
                output={"score": float(scores[i]), "decision": "block" if scores[i] > 0.2 else "approve"},
                latency_ms=0.4,
            )
        )
    return out


def decode_us(records: Sequence[bytes], schema: Any) -> float:
    """Mean µs per record of ``schema.model_validate_json`` on this machine, now."""
    t0 = time.perf_counter()
    for r in records:
        schema.model_validate_json(r)
    return (time.perf_counter() - t0) / len(records) * 1e6


def bench_ingest(
    settings: MonitoringSettings | None = None,
    *,
    n: int = 200_000,
    fast: bool = False,
    features: int = 20,
    with_reference: bool = True,
    client: str | None = None,
    max_records: int = 500,
    gc_freeze: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Prediction records/s through a real broker into :class:`MonitorState`, with one consumer.

    ``n`` fraud-like records (``features`` floats) are produced first; then one group member decodes
    (``fast`` or pydantic), joins, windows and summarises them (against a reference when ``with_reference``,
    so the drift summaries are part of the cost). The clock starts when the first batch reaches the handler
    (the group join is not throughput) and stops when the ``n``-th record has been handled. Without
    ``settings`` a tansu broker is started for the run. Also reports the decode cost alone, both paths.
    """
    if settings is None:
        with LocalBroker(free_port()) as broker:
            return bench_ingest(
                MonitoringSettings(kafka_bootstrap=broker.bootstrap),
                n=n,
                fast=fast,
                features=features,
                with_reference=with_reference,
                client=client,
                max_records=max_records,
                gc_freeze=gc_freeze,
                seed=seed,
            )
    s = settings.scoped()
    records = _bench_records(n, features=features, seed=seed)
    refs: dict[tuple[str, str], Reference] = {}
    if with_reference:
        sample = [PredictionRecord.model_validate_json(r) for r in records[: min(n, 20_000)]]
        refs[("fraud", "fraud-xgb")] = Reference.from_records(sample)
        del sample
    create_topics(s, [TopicSpec(s.predictions_topic, 1), TopicSpec(dead_letter_topic(s.predictions_topic), 1)])
    producer = make_producer(s, client)
    for i, r in enumerate(records):
        producer.send(s.predictions_topic, r, key=str(i).encode())
    producer.flush()
    producer.close()
    decode = {
        "fast_us": round(decode_us(records[:20_000], FastPredictionRecord), 2),
        "pydantic_us": round(decode_us(records[:20_000], PredictionRecord), 2),
    }
    state = MonitorState.from_settings(s, references=refs, version_references={}, update_interval_s=1.0)
    if gc_freeze:
        gc.freeze()
    stop, done = threading.Event(), threading.Event()
    clock: dict[str, float] = {}
    marks: dict[str, tuple[float, float]] = {}

    def handle(batch: list[tuple[Record, Any]]) -> None:
        if "first" not in clock:
            clock["first"], clock["first_cpu"] = time.perf_counter(), time.process_time()
            marks["first"] = cpu_times()
        state.add_predictions(r for _, r in batch)
        if state.counters.predictions >= n:
            clock["last"], clock["last_cpu"] = time.perf_counter(), time.process_time()
            marks["last"] = cpu_times()
            done.set()
            stop.set()

    load_before = os.getloadavg()
    thread = threading.Thread(
        target=_member,
        args=(s, "predictions", [s.predictions_topic], FastPredictionRecord if fast else PredictionRecord),
        kwargs={
            "handle": handle,
            "count_dead_letter": lambda: None,
            "stop": stop,
            "on_ready": None,
            "client": client,
            "max_records": max_records,
            "commit_interval_s": 1.0,
        },
        daemon=True,
    )
    thread.start()
    finished = done.wait(timeout=max(120.0, n / 1000))
    stop.set()
    thread.join(timeout=30)
    if gc_freeze:
        gc.unfreeze()
    if not finished:
        raise RuntimeError(f"only {state.counters.predictions} of {n} records consumed")
    seconds = clock["last"] - clock["first"]
    cpu_s = clock["last_cpu"] - clock["first_cpu"]  # the whole process: consumer thread and librdkafka's
    snap = state.snapshot()
    return {
        "records": n,
        "records_per_s": round(n / seconds, 1),
        "seconds": round(seconds, 3),
        "cpu_s": round(cpu_s, 3),
        "records_per_cpu_s": round(n / cpu_s, 1) if cpu_s > 0 else None,
        "steal_pct": steal_pct(marks["first"], marks["last"]),
        "decode": "fast" if fast else "pydantic",
        "decode_us": decode,
        "with_reference": with_reference,
        "max_records": max_records,
        "gc_freeze": gc_freeze,
        "windows_closed": snap["windows"]["windows_closed"],
        "pending": snap["join"]["pending"],
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
    }
