"""The label join: delayed, early, late and duplicate labels; bounded wait and bounded memory."""

from __future__ import annotations

import tracemalloc

import pytest

from systems.monitoring.join import (
    Added,
    JoinConfig,
    JoinPolicy,
    LabelJoin,
    LabelOutcome,
    bench_join_memory,
    pack_items,
)

pytestmark = pytest.mark.unit

S = 1000  # ms per second
DAY = 86_400 * S
T0 = 1_700_000_000_000


def _join(**kw: object) -> LabelJoin:
    fields: dict[str, object] = {"label_wait_s": 86_400.0, "allowed_lateness_s": 10.0, "orphan_wait_s": 60.0}
    return LabelJoin(JoinConfig(**(fields | kw)))  # type: ignore[arg-type]


def test_delayed_labels_join_their_predictions_with_what_grading_needs() -> None:
    j = _join()
    assert j.add_prediction("fraud", "tx1", 0, T0, score=0.9, code=1, slice=2) is Added.ADDED
    assert j.add_prediction("fraud", "tx2", 0, T0 + S, score=0.1, code=0, slice=0) is Added.ADDED
    assert j.pending == 2 and j.take() == []
    # The chargeback arrives three days later (event time of the label), the other label a day later.
    assert j.add_label("fraud", 1, label_ts_ms=T0 + 3 * DAY, prediction_id="tx1") is LabelOutcome.JOINED
    assert j.add_label("fraud", 0, label_ts_ms=T0 + DAY, prediction_id="tx2") is LabelOutcome.JOINED
    a, b = j.take()
    assert (a.score, a.code, a.slice, a.label, a.label_delay_ms, a.implicit) == (0.9, 1, 2, 1, 3 * DAY, False)
    assert (b.score, b.code, b.label, b.label_delay_ms) == (0.1, 0, 0, DAY - S)
    assert j.pending == 0 and j.stats.labels_joined == 2


def test_a_redelivered_label_is_seen_and_counted_never_graded_twice() -> None:
    j = _join()
    j.add_prediction("fraud", "tx1", 0, T0, score=0.9)
    assert j.add_label("fraud", 1, label_ts_ms=T0 + S, prediction_id="tx1") is LabelOutcome.JOINED
    assert j.add_label("fraud", 1, label_ts_ms=T0 + S, prediction_id="tx1") is LabelOutcome.DUPLICATE
    assert len(j.take()) == 1
    assert (j.stats.labels_joined, j.stats.labels_duplicate) == (1, 1)
    # A re-delivered prediction is ignored too, labelled or not.
    assert j.add_prediction("fraud", "tx1", 0, T0, score=0.9) is Added.DUPLICATE
    j.add_prediction("fraud", "tx2", 0, T0, score=0.5)
    assert j.add_prediction("fraud", "tx2", 0, T0, score=0.5) is Added.DUPLICATE
    assert j.stats.predictions_duplicate == 2 and j.pending == 1


def test_a_label_before_its_prediction_is_held_and_joins_when_it_arrives() -> None:
    j = _join()
    j.add_prediction("fraud", "tx0", 0, T0)  # the prediction stream is at T0
    assert j.add_label("fraud", 1, label_ts_ms=T0 + DAY, prediction_id="tx9", event_ts_ms=T0 + S) is LabelOutcome.HELD
    assert j.add_label("fraud", 1, label_ts_ms=T0 + DAY, prediction_id="tx9", event_ts_ms=T0 + S) is (
        LabelOutcome.DUPLICATE
    )
    assert j.held == 1
    j.add_prediction("fraud", "tx9", 0, T0 + S, score=0.7, code=1)
    (joined,) = j.take()
    assert (joined.score, joined.label, joined.label_delay_ms) == (0.7, 1, DAY - S)
    assert j.held == 0 and j.stats.held_joined == 1 and j.pending == 1  # tx0 still waits
    assert j.add_label("fraud", 1, label_ts_ms=T0 + DAY, prediction_id="tx9") is LabelOutcome.DUPLICATE


def test_a_held_label_expires_once_the_prediction_watermark_has_passed_it() -> None:
    j = _join(orphan_wait_s=60.0)
    j.add_prediction("fraud", "a", 0, T0)
    j.add_label("fraud", 1, label_ts_ms=T0 + DAY, prediction_id="never", event_ts_ms=T0 + 5 * S)
    # Watermark = newest event - 10 s lateness; the label expires when it passes 5 s + 60 s.
    j.add_prediction("fraud", "b", 0, T0 + 74 * S)
    assert j.held == 1
    j.add_prediction("fraud", "c", 0, T0 + 76 * S)
    assert j.held == 0 and j.stats.held_expired == 1


def test_predictions_expire_by_event_time_and_a_label_after_that_is_late() -> None:
    j = _join(label_wait_s=3600.0)  # buckets of max(1 s, 3600 s / 256) = 14 s
    j.add_prediction("fraud", "old", 0, T0)
    j.add_prediction("fraud", "new", 0, T0 + 2 * 3600 * S)  # two hours later: "old" waited its hour
    assert j.pending == 1 and j.stats.expired_unlabelled == 1
    assert j.add_label("fraud", 1, label_ts_ms=T0 + 3 * 3600 * S, prediction_id="old", event_ts_ms=T0) is (
        LabelOutcome.LATE
    )
    assert j.add_prediction("fraud", "older", 0, T0 - 10 * S) is Added.TOO_OLD
    assert (j.stats.labels_late, j.stats.predictions_too_old) == (1, 1)


def test_max_pending_evicts_the_oldest_first_and_counts_it() -> None:
    j = _join(max_pending=3, label_wait_s=86_400.0 * 256)  # 1-day buckets: one per prediction below
    for i in range(5):
        j.add_prediction("fraud", f"tx{i}", 0, T0 + i * DAY)
    assert j.entries == 3 and j.pending == 3 and j.stats.evicted_capacity == 2
    assert j.add_label("fraud", 1, label_ts_ms=T0 + 9 * DAY, prediction_id="tx4") is LabelOutcome.JOINED
    assert j.add_label("fraud", 1, label_ts_ms=T0 + 9 * DAY, prediction_id="tx2") is LabelOutcome.JOINED
    # tx0 and tx1 were evicted: their labels are unknown now (held until the watermark passes them).
    assert j.add_label("fraud", 1, label_ts_ms=T0 + 9 * DAY, prediction_id="tx0") is LabelOutcome.HELD


def test_eviction_bounds_memory_whatever_the_traffic() -> None:
    def traced(n: int, max_pending: int) -> int:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        j = _join(max_pending=max_pending, label_wait_s=86_400.0 * 30)
        for i in range(n):
            j.add_prediction("fraud", str(100_000_000 + i), 0, T0 + i * 10, score=0.5, code=0)
        used = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert j.entries == min(n, max_pending)
        return used

    bounded, unbounded_small = traced(60_000, 10_000), traced(10_000, 10_000)
    assert bounded < 1.5 * unbounded_small  # 6x the traffic, about the same memory


def test_entity_labels_grade_the_latest_list_that_showed_the_item() -> None:
    j = _join(policies={"recsys": JoinPolicy(by_entity=True, label_on_expiry=0)})
    j.add_prediction("recsys", "r1", 0, T0, items=pack_items([10, 11, 12]), entity_key="u1")
    j.add_prediction("recsys", "r2", 0, T0 + S, items=pack_items([20, 21]), entity_key="u1")
    j.add_prediction("recsys", "r3", 0, T0 + 2 * S, items=pack_items([30]), entity_key="u1")
    assert j.add_label("recsys", 11, label_ts_ms=T0 + 5 * S, entity_key="u1") is LabelOutcome.JOINED
    assert j.add_label("recsys", 11, label_ts_ms=T0 + 5 * S, entity_key="u1") is LabelOutcome.DUPLICATE
    assert j.add_label("recsys", 99, label_ts_ms=T0 + 6 * S, entity_key="u1") is LabelOutcome.JOINED
    first, second = j.take()
    assert (first.hit, first.event_ts_ms) == (1, T0)  # r1 showed item 11
    assert (second.hit, second.event_ts_ms) == (0, T0 + 2 * S)  # nobody showed 99: the newest list, a miss
    assert j.add_label("recsys", 5, label_ts_ms=T0, entity_key="nobody") is LabelOutcome.UNMATCHED
    assert j.add_label("fraud", 1, label_ts_ms=T0, entity_key="c1") is LabelOutcome.UNJOINABLE


def test_silence_becomes_the_label_when_the_policy_says_so() -> None:
    j = _join(policies={"recsys": JoinPolicy(by_entity=True, label_on_expiry=0, label_wait_s=60.0)})
    j.add_prediction("recsys", "r1", 0, T0, items=pack_items([1, 2]), entity_key="u1")
    j.add_prediction("recsys", "r2", 0, T0 + 10 * 60 * S, items=pack_items([3]), entity_key="u2")
    (implicit,) = j.take()
    assert (implicit.implicit, implicit.hit, implicit.label) == (True, 0, 0)
    assert j.stats.expired_implicit == 1 and j.pending == 1


def test_memory_per_pending_prediction_is_measured_on_a_realistic_fill() -> None:
    out = bench_join_memory(20_000)
    # The id string, its dict slot and ~30 bytes of typed columns: far below a kept record (~3 KB).
    assert 60 < out["fraud"]["bytes_per_pending"] < 400
    assert out["recsys"]["bytes_per_pending"] > out["fraud"]["bytes_per_pending"]  # longer ids, item lists
    assert out["mb_per_million"] == out["fraud"]["mb_per_million"]
