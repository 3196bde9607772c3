"""The Kafka layer against a real tansu broker, with both clients."""

from __future__ import annotations

import threading
import time

import pytest
from pydantic import BaseModel

from systems.common.broker import (
    DeadLetter,
    Record,
    TopicSpec,
    create_topics,
    dead_letter_topic,
    decode,
    list_topics,
    make_consumer,
    make_producer,
    make_reader,
    publish,
    run_consumer_loop,
)

pytestmark = pytest.mark.integration

CLIENTS = ["confluent", "kafka-python"]


def consume_all(consumer, n: int, timeout_s: float = 30.0) -> tuple[list[Record], float | None]:
    """Poll until n records arrived; also return seconds to the first record."""
    start = time.monotonic()
    records: list[Record] = []
    first = None
    while len(records) < n and time.monotonic() - start < timeout_s:
        batch = consumer.poll(timeout_s=0.5, max_records=2000)
        if batch and first is None:
            first = time.monotonic() - start
        records.extend(batch)
    return records, first


@pytest.mark.parametrize("client", CLIENTS)
def test_round_trip_10k_through_a_consumer_group(broker_settings, unique_name, client) -> None:
    topic = unique_name
    create_topics(broker_settings, [TopicSpec(topic, 3)])
    assert list_topics(broker_settings)[topic] == 3
    producer = make_producer(broker_settings, client)
    n = 10_000
    for i in range(n):
        producer.send(topic, f"m{i}".encode(), key=str(i % 97).encode())
    producer.close()
    consumer = make_consumer(broker_settings, [topic], f"g-{unique_name}", client)
    records, first_s = consume_all(consumer, n)
    consumer.commit()
    consumer.close()
    values = [r.value for r in records]
    assert len(values) == n and len(set(values)) == n  # nothing lost, nothing duplicated
    assert {r.partition for r in records} == {0, 1, 2}
    # ~3 s with our 6000 ms session (tansu holds a join for session/2); the client default (45 s) would take ~23 s.
    # The bound leaves room for a busy machine and still fails if the session setting is not applied.
    assert first_s is not None and first_s < 10.0, f"group subscription took {first_s} s to the first message"
    # Per-partition order is preserved: delivered in offset order, and offsets in the order the producer sent.
    for p in range(3):
        in_partition = [r for r in records if r.partition == p]
        offsets = [r.offset for r in in_partition]
        sent = [int(r.value[1:]) for r in in_partition]  # b"m<i>": i is the send order
        assert offsets == sorted(offsets)
        assert sent == sorted(sent), f"partition {p} is not in send order"


@pytest.mark.parametrize("client", CLIENTS)
def test_committed_offsets_survive_a_consumer_restart(broker_settings, unique_name, client) -> None:
    topic, group = unique_name, f"g-{unique_name}"
    create_topics(broker_settings, [TopicSpec(topic, 1)])
    producer = make_producer(broker_settings, client)
    for i in range(100):
        producer.send(topic, str(i).encode())
    producer.flush()

    first = make_consumer(broker_settings, [topic], group, client)
    got, _ = consume_all(first, 100)
    assert len(got) == 100
    first.commit()
    first.close()

    for i in range(100, 150):
        producer.send(topic, str(i).encode())
    producer.close()
    second = make_consumer(broker_settings, [topic], group, client)
    rest, _ = consume_all(second, 50, timeout_s=15)
    extra = second.poll(timeout_s=1.0)  # nothing from before the commit may come back
    second.close()
    assert [int(r.value) for r in rest + extra] == list(range(100, 150))


def test_two_consumers_of_one_group_split_the_partitions(broker_settings, unique_name) -> None:
    topic, group = unique_name, f"g-{unique_name}"
    create_topics(broker_settings, [TopicSpec(topic, 4)])
    producer = make_producer(broker_settings)
    n = 2_000
    for i in range(n):
        producer.send(topic, str(i).encode(), key=str(i).encode())
    producer.close()

    consumers = [make_consumer(broker_settings, [topic], group) for _ in range(2)]
    seen: list[list[Record]] = [[], []]
    stop = threading.Event()

    def run(idx: int) -> None:
        while not stop.is_set():
            batch = consumers[idx].poll(timeout_s=0.2)
            seen[idx].extend(batch)
            consumers[idx].commit()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while sum(len(s) for s in seen) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join()
    for c in consumers:
        c.close()
    values = [r.value for s in seen for r in s]
    assert len(set(values)) == n
    # Once both joined, each partition belongs to one of them: the second consumer got a share.
    parts = [{r.partition for r in s} for s in seen]
    assert parts[0] and parts[1], f"one consumer got nothing: {parts}"


class Event(BaseModel):
    event_id: str
    amount: float


@pytest.mark.parametrize("client", CLIENTS)
def test_malformed_messages_go_to_the_dead_letter_topic(broker_settings, unique_name, client) -> None:
    topic = unique_name
    dlq = dead_letter_topic(topic)
    create_topics(broker_settings, [TopicSpec(topic, 2), TopicSpec(dlq, 1)])
    producer = make_producer(broker_settings, client)
    publish(producer, topic, Event(event_id="a", amount=1.0), key="a")
    producer.send(topic, b"{not json", key=b"b")
    producer.send(topic, b'{"event_id": "c", "amount": "lots"}', key=b"c")
    publish(producer, topic, Event(event_id="d", amount=4.0), key="d")
    producer.flush()

    handled: list[Event] = []
    stop = threading.Event()

    def handle(batch: list[tuple[Record, Event]]) -> None:
        handled.extend(m for _, m in batch)
        if len(handled) >= 2:
            stop.set()

    consumer = make_consumer(broker_settings, [topic], f"g-{unique_name}", client)
    worker = threading.Thread(target=run_consumer_loop, args=(consumer, producer, Event, handle), kwargs={"stop": stop})
    worker.start()
    worker.join(timeout=30)
    stop.set()
    consumer.close()
    assert sorted(e.event_id for e in handled) == ["a", "d"]

    reader = make_consumer(broker_settings, [dlq], f"dlq-{unique_name}", client)
    letters, _ = consume_all(reader, 2, timeout_s=15)
    reader.close()
    producer.close()
    parsed = sorted((decode(r, DeadLetter) for r in letters), key=lambda d: d.key or "")
    assert [d.key for d in parsed] == ["b", "c"]
    assert parsed[0].value == "{not json" and parsed[0].source_topic == topic
    assert "json" in parsed[0].reason.lower()
    assert "amount" in parsed[1].reason


@pytest.mark.parametrize("client", CLIENTS)
def test_a_reader_sees_every_partition_from_the_start_and_knows_when_it_caught_up(
    broker_settings, unique_name, client
) -> None:
    """No group: nothing to join (the first records come at once), every reader sees every record, and
    ``caught_up`` tells a process when the state it builds from the topic is complete."""
    from systems.common.broker import make_reader

    topic = unique_name
    create_topics(broker_settings, [TopicSpec(topic, 3)])
    producer = make_producer(broker_settings, client)
    for i in range(300):
        producer.send(topic, str(i).encode(), key=str(i).encode())
    producer.close()
    readers = [make_reader(broker_settings, [topic], client) for _ in range(2)]
    try:
        for reader in readers:
            start, got = time.monotonic(), []
            while not reader.caught_up.is_set() and time.monotonic() - start < 20:
                got += reader.poll(timeout_s=0.2, max_records=1000)
            assert reader.caught_up.is_set() and time.monotonic() - start < 5.0  # no group join to wait for
            assert sorted(int(r.value) for r in got) == list(range(300))
    finally:
        for reader in readers:
            reader.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_a_reader_sees_every_partition_at_once_without_joining_a_group(broker_settings, unique_name, client) -> None:
    topic = unique_name
    create_topics(broker_settings, [TopicSpec(topic, 3)])
    producer = make_producer(broker_settings, client)
    for i in range(300):
        producer.send(topic, f"old{i}".encode(), key=str(i).encode())
    producer.flush()
    everything = make_reader(broker_settings, [topic], start="beginning", client=client)
    fresh = make_reader(broker_settings, [topic], start="end", client=client)
    assert everything.assigned.is_set() and fresh.assigned.is_set()  # on return: no join to wait for
    for i in range(300):
        producer.send(topic, f"new{i}".encode(), key=str(i).encode())
    producer.close()
    all_records, first_s = consume_all(everything, 600)
    new_records, _ = consume_all(fresh, 300)
    everything.commit()  # a reader keeps no offsets: committing is harmless
    everything.close()
    fresh.close()
    assert sorted(r.value for r in all_records) == sorted(
        [f"old{i}".encode() for i in range(300)] + [f"new{i}".encode() for i in range(300)]
    )
    assert {r.partition for r in all_records} == {0, 1, 2}
    assert first_s is not None and first_s < 5.0
    # every new record reaches the reader that started at the end; tansu may hand it a few old ones first
    news = [r.value for r in new_records if r.value.startswith(b"new")]
    assert sorted(news) == sorted(f"new{i}".encode() for i in range(300))


@pytest.mark.parametrize("client", CLIENTS)
def test_a_reader_resumes_from_the_positions_it_is_given(broker_settings, unique_name, client) -> None:
    """Named partitions start at their position, the others where ``start`` says: what a reader restarted inside
    a process needs to go on after the last record its state took in (not before it, not after it)."""
    topic = unique_name
    create_topics(broker_settings, [TopicSpec(topic, 3)])
    producer = make_producer(broker_settings, client)
    for i in range(300):
        producer.send(topic, str(i).encode(), key=str(i).encode())
    producer.close()
    everything = make_reader(broker_settings, [topic], client)
    first, _ = consume_all(everything, 300)
    everything.close()
    by_partition = {p: sorted(r.offset for r in first if r.partition == p) for p in range(3)}
    positions = {(topic, 0): by_partition[0][10], (topic, 1): by_partition[1][-1] + 1}
    resumed = make_reader(broker_settings, [topic], client, positions=positions)
    expected = [r for r in first if r.partition == 2 or (r.partition == 0 and r.offset >= positions[(topic, 0)])]
    got, _ = consume_all(resumed, len(expected))
    extra, _ = consume_all(resumed, 1, timeout_s=1.0)  # nothing more: partition 1 starts at its end
    resumed.close()
    assert sorted((r.partition, r.offset) for r in got + extra) == sorted((r.partition, r.offset) for r in expected)


def test_a_reader_of_a_missing_topic_says_so(broker_settings, unique_name) -> None:
    from systems.common.broker import BrokerError

    with pytest.raises(BrokerError, match="does not exist"):
        make_reader(broker_settings, [f"{unique_name}-absent"])
