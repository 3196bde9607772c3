"""Labelled examples on ``textclf.labeled`` become inbox batch files exactly once (real tansu broker).

The first collector crashes after writing its first file and before committing (the worst moment): the group
re-delivers those examples to the second collector, which must skip them. The second one cuts its files at
another size, so without the skip its first file would repeat the first file's rows under another name, and
the duplicate count below would see it. Invalid messages (not JSON, a
label outside the classes, an empty text) go to the dead-letter topic with the reason, and every valid example
reaches a dataset version through the ordinary gate.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from systems.common.broker import LocalBroker, dead_letter_topic, make_consumer, make_producer
from systems.mlops_textclf.ingest import (
    DatasetStore,
    canonical,
    collect_labeled,
    make_batches,
    publish_labeled,
    write_golden,
)
from systems.mlops_textclf.settings import TextclfSettings
from systems.mlops_textclf.validate import admit_inbox, inbox_files
from tests.unit.textclf.textclf_support import CONFIG, make_textclf_settings, tiny_corpus

pytestmark = pytest.mark.integration

FAST_JOIN = {"kafka_session_timeout_ms": 2000, "kafka_heartbeat_interval_ms": 500}
BAD = [
    b"not json",
    b'{"example_id": "x1", "text": "fine shoes", "label": "meh"}',
    b'{"example_id": "x2", "text": "  ", "label": "good"}',
]


class Crash(Exception):
    """Raised between a file's write and its commit."""


@pytest.fixture()
def collect_settings(tmp_path: Path, broker: LocalBroker, unique_name: str) -> TextclfSettings:
    return make_textclf_settings(
        tmp_path / ".mlsd",
        kafka_bootstrap=broker.bootstrap,
        labeled_topic=f"labeled-{unique_name}",
        collect_batch_rows=20,
        collect_batch_s=0.5,
        **FAST_JOIN,
    )


def _run(settings: TextclfSettings, group: str, until: Any, on_file: Any = None, timeout_s: float = 60.0) -> Any:
    """One collector in a thread, stopped once ``until()`` holds (or it raised); returns stats or the error."""
    stop = threading.Event()
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["stats"] = collect_labeled(settings, stop, group_id=group, on_file=on_file, poll_s=0.2)
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while thread.is_alive() and not until() and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    thread.join(30)
    assert not thread.is_alive()
    return out.get("error", out.get("stats"))


def _rows_in_files(settings: TextclfSettings) -> pd.DataFrame:
    files = inbox_files(settings)
    return pd.concat([pd.read_parquet(p) for p in files]) if files else pd.DataFrame(columns=["example_id"])


def test_examples_reach_the_inbox_once_across_a_crash_and_bad_ones_are_dead_lettered(collect_settings) -> None:
    s = collect_settings
    split = make_batches(tiny_corpus(), CONFIG, golden_fraction=0.1, seed=0)
    write_golden(split.golden, s)
    batch = canonical(split.batches[0].frame)
    assert len(batch) > 2 * s.collect_batch_rows  # at least two files, so the crash leaves work behind
    half = len(batch) // 2
    publish_labeled(s, batch.iloc[:half])
    producer = make_producer(s)
    for value in BAD:
        producer.send(s.labeled_topic, value)
    producer.flush()
    producer.close()
    publish_labeled(s, batch.iloc[half:])

    group = f"collector-{uuid.uuid4().hex[:6]}"

    def crash(path: Path) -> None:
        raise Crash(path.name)

    first = _run(s, group, until=lambda: False, on_file=crash)
    assert isinstance(first, Crash), first
    assert len(inbox_files(s)) == 1  # written, never committed

    # cut differently after the restart (as the age-based cut does), so a re-collected example would land in a
    # file of another name beside the first one instead of overwriting it: a duplicate would be visible
    restarted = s.model_copy(update={"collect_batch_rows": 30})
    second = _run(restarted, group, until=lambda: len(_rows_in_files(s)) >= len(batch))
    assert not isinstance(second, BaseException), second
    rows = _rows_in_files(s)
    assert rows["example_id"].duplicated().sum() == 0
    assert rows["example_id"].tolist() == batch["example_id"].tolist()  # every example, in delivery order
    assert second.skipped >= s.collect_batch_rows  # the first file's examples came again, and were skipped
    assert second.dead_letters == len(BAD)

    letters = _dead_letters(s, len(BAD))
    reasons = " | ".join(letter["reason"] for letter in letters)
    assert "invalid" in reasons and "'meh' is not one of bad, good" in reasons and "empty text" in reasons

    results = admit_inbox(s)
    assert {r.outcome for r in results} == {"accepted"}, [(r.name, r.report.summary()) for r in results]
    head = DatasetStore.of(s).head()
    assert head is not None and head.rows == len(batch)


def _dead_letters(settings: TextclfSettings, n: int) -> list[dict[str, Any]]:
    consumer = make_consumer(settings, [dead_letter_topic(settings.labeled_topic)], f"dlq-{uuid.uuid4().hex[:6]}")
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    try:
        while len(got) < n and time.monotonic() < deadline:
            got += [json.loads(r.value) for r in consumer.poll(timeout_s=0.5)]
    finally:
        consumer.close()
    assert len(got) == n, got
    return got


def test_no_poison_example_stops_the_collector(collect_settings) -> None:
    """The common poison corpus (built from one valid example) before ten good ones: every poison message is
    dead-lettered or collected as the schema allows, the collector keeps running, and every good one lands."""
    from systems.common.poison import PRODUCER_MAX_BYTES, poison_corpus

    s = collect_settings
    split = make_batches(tiny_corpus(), CONFIG, golden_fraction=0.1, seed=0)
    write_golden(split.golden, s)
    good = canonical(split.batches[0].frame).head(10)
    example = {"example_id": "poison-base", "text": "fine shoes", "label": "good", "slice": "shoes"}
    corpus = poison_corpus(example)
    producer = make_producer(s, **{"message.max.bytes": PRODUCER_MAX_BYTES})
    for _, value in corpus:
        producer.send(s.labeled_topic, value)
    producer.close()
    publish_labeled(s, good)

    landed = lambda: set(good["example_id"]) <= set(_rows_in_files(s)["example_id"])  # noqa: E731
    stats = _run(s, f"collector-{uuid.uuid4().hex[:6]}", until=landed)
    assert not isinstance(stats, BaseException), stats
    assert landed()
    # nothing lost: each message was collected or dead-lettered (the good ten among the collected)
    assert stats.examples + stats.dead_letters == len(corpus) + len(good), stats
    assert stats.dead_letters >= len(corpus) // 2, stats
