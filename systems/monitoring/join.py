"""The label join: delayed ground truth meets the predictions it grades, in bounded memory.

Why a join at all. A prediction record is published when the model answers; its label (a chargeback, a
click, a reviewer's class) arrives on another topic minutes to weeks later, or never. Realised performance
needs the two together, so every prediction waits here until its label comes, its wait runs out, or memory
runs out — whichever is first.

What is kept. Not the record: a served fraud record is ~800 bytes of JSON and ~3 KB as a Python object. A
pending prediction keeps only what grading needs, in typed columns (``array``) indexed by a slot number:
series (system, model, version) as an int, event time, the score (or served class's probability), one int
code (the served decision, or the served class), the slice code, and for rankings the item ids packed as
64-bit hashes. Plus the id itself, as a dict key: the dominant cost. :func:`bench_join_memory` measures it
(``join.mb_per_million``).

Bounded wait, by event time. A prediction expires when the system's event-time watermark (the newest event
time seen minus the allowed lateness) passes its event time plus ``label_wait_s``: "no chargeback within 8
days" is itself the label for fraud, which the fraud system publishes as a 0; for systems where silence
means a negative (a recommendation nobody clicked), the policy's ``label_on_expiry`` turns expiry into an
implicit label. Wall clock plays no part, so a replay of last month's stream expires exactly like the live
one. On top, ``max_pending`` bounds memory: when full, the oldest predictions (by event time, to the
resolution of the expiry buckets) are evicted and counted.

Labels before predictions. The two topics are consumed by separate consumers: after a restart the small
label topic catches up long before the prediction backlog does, so a label often arrives before its
prediction. It is held (bounded in count) until the prediction comes, or until the prediction stream's
watermark has passed the label's event time by ``orphan_wait_s`` — a lagging prediction consumer holds its
watermark back, so lag alone never expires a held label.

Idempotent under re-delivery. Consumers are at-least-once, so the same prediction or label can arrive
twice. A labelled prediction leaves a tombstone (its id maps to ``DONE``) until its expiry bucket passes, so
a re-delivered label is *counted* as a duplicate and never graded twice, and a re-delivered prediction is
recognised and ignored within the join horizon. Entity-level labels (a label that names a user rather than a
prediction) are de-duplicated by (entity, label time, label).

Counters (``JoinStats``): joined, duplicate, late (the label came after the prediction's wait was over), held,
unmatched / unjoinable labels, expired and evicted predictions, held labels that expired or were evicted.
"""

from __future__ import annotations

import enum
import heapq
import math
import tracemalloc
from array import array
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from systems.monitoring.performance import label_key

DONE = -1
"""The value of a labelled prediction's id in the index: a tombstone that makes a re-delivered label visible."""


class Added(enum.IntEnum):
    """What :meth:`LabelJoin.add_prediction` did with a prediction."""

    ADDED = 0
    DUPLICATE = 1
    TOO_OLD = 2
    """Its event time is already past the join horizon: no label could still be waited for."""


class LabelOutcome(enum.IntEnum):
    """What :meth:`LabelJoin.add_label` did with a label."""

    JOINED = 0
    DUPLICATE = 1
    LATE = 2
    """For a prediction whose wait is over (expired, or older than the horizon): too late to count."""
    HELD = 3
    """No such prediction yet: held until it arrives or the prediction watermark passes it."""
    UNMATCHED = 4
    """An entity-level label with no waiting prediction of that entity."""
    UNJOINABLE = 5
    """No prediction id, and the system does not join on entities."""


@dataclass(frozen=True, kw_only=True)
class JoinPolicy:
    """How one system's labels relate to its predictions."""

    by_entity: bool = False
    """Labels may name an ``entity_key`` (a user) instead of a prediction: they grade that entity's latest
    waiting prediction (for an item label, the latest one that showed the item)."""
    item_labels: bool = True
    """For ranked outputs: the label is the item the user engaged with (hit = item in the list); False means
    the label is itself a 0/1 hit."""
    label_on_expiry: float | int | str | None = None
    """The label a prediction gets when its wait runs out unlabelled (silence is a negative); None: none."""
    label_wait_s: float | None = None
    """This system's wait, overriding the shared ``label_wait_s``."""


DEFAULT_POLICIES: Mapping[str, JoinPolicy] = {
    # A recommendation is clicked within the hour or not at all; clicks name the user and the item.
    "recsys": JoinPolicy(by_entity=True, label_on_expiry=0, label_wait_s=3600.0),
}


@dataclass(frozen=True, kw_only=True)
class JoinConfig:
    label_wait_s: float = 8 * 86_400.0
    allowed_lateness_s: float = 30.0
    max_pending: int = 2_000_000
    """Ids held at most (waiting predictions plus tombstones of labelled ones), over every system."""
    orphan_wait_s: float = 60.0
    max_orphans: int = 100_000
    max_per_entity: int = 8
    """Waiting predictions remembered per entity for entity-level labels (newest kept)."""
    max_entity_labels: int = 100_000
    """Entity-level label keys remembered for de-duplication."""
    expiry_buckets: int = 256
    """Event-time buckets per wait: expiry and oldest-first eviction are exact to ``label_wait_s / 256``."""
    policies: Mapping[str, JoinPolicy] = field(default_factory=lambda: dict(DEFAULT_POLICIES))

    def policy(self, system: str) -> JoinPolicy:
        return self.policies.get(system) or JoinPolicy()

    def wait_ms(self, system: str) -> int:
        p = self.policy(system)
        return int(1000 * (p.label_wait_s if p.label_wait_s is not None else self.label_wait_s))


@dataclass(frozen=True, slots=True)
class Joined:
    """A graded prediction: what the windows need to place it and score it (see :class:`LabelJoin`)."""

    system: str
    series: int
    event_ts_ms: int
    score: float
    code: int
    slice: int
    label: float | int | str
    hit: int
    """Rankings: 1 when the labelled item was in the list (or the 0/1 label), else 0; -1 for other outputs."""
    label_delay_ms: int
    implicit: bool = False
    """The label is ``label_on_expiry`` (the wait ran out), not a received label."""


@dataclass
class JoinStats:
    predictions_added: int = 0
    predictions_duplicate: int = 0
    predictions_too_old: int = 0
    labels_joined: int = 0
    labels_duplicate: int = 0
    labels_late: int = 0
    labels_held: int = 0
    labels_unmatched: int = 0
    labels_unjoinable: int = 0
    held_joined: int = 0
    """Held labels whose prediction arrived (included in ``labels_joined``)."""
    held_expired: int = 0
    held_evicted: int = 0
    expired_unlabelled: int = 0
    expired_implicit: int = 0
    evicted_capacity: int = 0


def pack_items(items: Sequence[Any]) -> bytes:
    """A ranked list's item ids as packed 64-bit hashes (8 bytes an item, compared by :func:`label_key`)."""
    return array("q", [hash(label_key(i)) for i in items]).tobytes()


def _has_item(packed: bytes, item: Any) -> bool:
    return bool(np.any(np.frombuffer(packed, np.int64) == hash(label_key(item))))


class _Table:
    """One system's pending predictions: an id index over typed columns, expiry buckets, held labels."""

    def __init__(self, system: str, cfg: JoinConfig) -> None:
        self.system = system
        self.policy = cfg.policy(system)
        self.wait_ms = cfg.wait_ms(system)
        self.lateness_ms = int(1000 * cfg.allowed_lateness_s)
        self.orphan_wait_ms = int(1000 * cfg.orphan_wait_s)
        self.bucket_ms = max(1000, self.wait_ms // max(cfg.expiry_buckets, 1))
        self.index: dict[str, int] = {}  # prediction id -> slot, or DONE once labelled
        self.buckets: dict[int, list[str]] = {}  # event-time bucket -> ids (for expiry and eviction)
        self.heap: list[int] = []  # bucket numbers, oldest first
        # Columns by slot. array stores raw machine values: 8 bytes a float, not a 24-byte float object.
        self.series = array("i")
        self.ts = array("q")
        self.score = array("d")
        self.code = array("i")
        self.slice = array("i")
        self.items: list[bytes | None] | None = None  # allocated when the first ranked output arrives
        self.entity: list[str | None] | None = [] if self.policy.by_entity else None
        self.free = array("q")
        self.max_event = -(2**62)
        self.horizon_ms = -(2**62)  # max_event - lateness - wait, kept in step with max_event
        self.last_bucket = -(2**62)  # the bucket most records of an in-order stream go to, cached
        self.last_list: list[str] = []
        self.done = 0
        self.orphans: OrderedDict[str, tuple[float | int | str, int, int]] = OrderedDict()
        self.by_entity: dict[str, list[str]] = {}
        self.entity_labels: OrderedDict[tuple[str, int, str], None] = OrderedDict()

    @property
    def watermark(self) -> int:
        return self.max_event - self.lateness_ms

    # ---- slots ----------------------------------------------------------------------------------------
    def alloc(
        self, series: int, ts: int, score: float, code: int, slc: int, items: bytes | None, entity: str | None
    ) -> int:
        if self.free:
            slot = self.free.pop()
            self.series[slot], self.ts[slot], self.score[slot] = series, ts, score
            self.code[slot], self.slice[slot] = code, slc
            if self.items is not None:
                self.items[slot] = items
            if self.entity is not None:
                self.entity[slot] = entity
        else:
            slot = len(self.ts)
            self.series.append(series)
            self.ts.append(ts)
            self.score.append(score)
            self.code.append(code)
            self.slice.append(slc)
            if self.items is not None:
                self.items.append(items)
            if self.entity is not None:
                self.entity.append(entity)
        if items is not None and self.items is None:
            self.items = [None] * len(self.ts)
            self.items[slot] = items
        return slot

    def release(self, pid: str, slot: int) -> None:
        if self.items is not None:
            self.items[slot] = None
        if self.entity is not None:
            e = self.entity[slot]
            self.entity[slot] = None
            if e is not None:
                lst = self.by_entity.get(e)
                if lst is not None:
                    if pid in lst:
                        lst.remove(pid)
                    if not lst:
                        del self.by_entity[e]
        self.free.append(slot)

    def advance(self, event_ts_ms: int) -> None:
        self.max_event = event_ts_ms
        self.horizon_ms = event_ts_ms - self.lateness_ms - self.wait_ms

    def bucket_add(self, pid: str, ts: int) -> None:
        b = ts // self.bucket_ms
        if b == self.last_bucket:
            self.last_list.append(pid)
            return
        lst = self.buckets.get(b)
        if lst is None:
            self.buckets[b] = lst = []
            heapq.heappush(self.heap, b)
        lst.append(pid)
        self.last_bucket, self.last_list = b, lst

    def drop_bucket(self, b: int) -> list[str]:
        if b == self.last_bucket:
            self.last_bucket, self.last_list = -(2**62), []
        return self.buckets.pop(b, [])

    def joined(self, slot: int, label: float | int | str, label_ts_ms: int, implicit: bool = False) -> Joined:
        hit = -1
        if self.items is not None and (packed := self.items[slot]) is not None:
            graded_by_item = self.policy.item_labels and not implicit
            hit = int(_has_item(packed, label) if graded_by_item else _truthy(label))
        ts = self.ts[slot]
        return Joined(
            system=self.system,
            series=self.series[slot],
            event_ts_ms=ts,
            score=self.score[slot],
            code=self.code[slot],
            slice=self.slice[slot],
            label=label,
            hit=hit,
            label_delay_ms=max(0, label_ts_ms - ts),
            implicit=implicit,
        )


def _truthy(label: Any) -> bool:
    if isinstance(label, int | float):
        return label != 0 and not (isinstance(label, float) and math.isnan(label))
    return str(label).strip().lower() in {"1", "true", "yes", "click", "clicked", "hit"}


class LabelJoin:
    """Pending predictions per system, joined with labels by ``prediction_id`` (or entity), bounded in time and
    memory. Joined pairs — received labels, held labels meeting their prediction, implicit labels at expiry —
    queue up in :attr:`ready`; the caller drains them with :meth:`take`. Not thread-safe (one lock outside)."""

    def __init__(self, config: JoinConfig | None = None) -> None:
        self.config = config or JoinConfig()
        self.stats = JoinStats()
        self.ready: list[Joined] = []
        self._tables: dict[str, _Table] = {}
        self._entries = 0  # ids held over every table (pending + tombstones)

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> LabelJoin:
        """From :class:`~systems.monitoring.settings.MonitoringSettings` (``label_wait_s``, ``allowed_lateness_s``,
        ``max_pending``), with :class:`JoinConfig` fields as overrides."""
        fields: dict[str, Any] = {
            "label_wait_s": settings.label_wait_s,
            "allowed_lateness_s": settings.allowed_lateness_s,
            "max_pending": settings.max_pending,
        }
        return cls(JoinConfig(**(fields | overrides)))

    def _table(self, system: str) -> _Table:
        t = self._tables.get(system)
        if t is None:
            self._tables[system] = t = _Table(system, self.config)
        return t

    # ---- predictions ----------------------------------------------------------------------------------
    def add_prediction(
        self,
        system: str,
        prediction_id: str,
        series: int,
        event_ts_ms: int,
        score: float = math.nan,
        code: int = -1,
        slice: int = -1,
        items: bytes | None = None,
        entity_key: str | None = None,
    ) -> Added:
        """Start waiting for this prediction's label (``items``: :func:`pack_items` of a ranked list).

        Positional arguments are accepted (this runs once per record; keywords cost a little each time)."""
        t = self._tables.get(system) or self._table(system)
        if prediction_id in t.index:
            self.stats.predictions_duplicate += 1
            return Added.DUPLICATE
        if event_ts_ms > t.max_event:
            t.advance(event_ts_ms)
            if t.orphans or (t.heap and (t.heap[0] + 1) * t.bucket_ms <= t.horizon_ms):
                self._expire(t)
        if event_ts_ms < t.horizon_ms:
            self.stats.predictions_too_old += 1
            return Added.TOO_OLD
        if self._entries >= self.config.max_pending:
            self._evict_oldest()
        self.stats.predictions_added += 1
        self._entries += 1
        t.bucket_add(prediction_id, event_ts_ms)
        slot = t.alloc(series, event_ts_ms, score, code, slice, items, entity_key)
        held = t.orphans.pop(prediction_id, None) if t.orphans else None
        if held is not None:
            label, label_ts, _ = held
            self.ready.append(t.joined(slot, label, label_ts))
            t.index[prediction_id] = DONE
            t.done += 1
            t.release(prediction_id, slot)
            self.stats.labels_joined += 1
            self.stats.held_joined += 1
            return Added.ADDED
        t.index[prediction_id] = slot
        if entity_key is not None and t.entity is not None:
            lst = t.by_entity.setdefault(entity_key, [])
            lst.append(prediction_id)
            if len(lst) > self.config.max_per_entity:
                del lst[0]
        return Added.ADDED

    def _expire(self, t: _Table) -> None:
        """Drop every bucket whose event times have all waited ``label_wait_s``; expire held labels."""
        horizon = t.horizon_ms
        while t.heap and (t.heap[0] + 1) * t.bucket_ms <= horizon:
            b = heapq.heappop(t.heap)
            for pid in t.drop_bucket(b):
                self._drop(t, pid, expired=True)
        if t.orphans:
            wm = t.watermark
            while t.orphans:
                pid, (_, _, ts) = next(iter(t.orphans.items()))
                if ts + t.orphan_wait_ms > wm:
                    break
                t.orphans.popitem(last=False)
                self.stats.held_expired += 1

    def _drop(self, t: _Table, pid: str, *, expired: bool) -> None:
        slot = t.index.pop(pid, None)
        if slot is None:
            return
        self._entries -= 1
        if slot == DONE:
            t.done -= 1
            return
        if not expired:
            self.stats.evicted_capacity += 1
        elif t.policy.label_on_expiry is not None:
            self.ready.append(t.joined(slot, t.policy.label_on_expiry, t.ts[slot] + t.wait_ms, implicit=True))
            self.stats.expired_implicit += 1
        else:
            self.stats.expired_unlabelled += 1
        t.release(pid, slot)

    def _evict_oldest(self) -> None:
        """Make room for one id: drop one from the oldest bucket of any system."""
        tables = [t for t in self._tables.values() if t.heap]
        if not tables:
            return
        t = min(tables, key=lambda x: x.heap[0] * x.bucket_ms)
        b = t.heap[0]
        lst = t.buckets[b]
        pid = lst.pop()
        if not lst:
            t.drop_bucket(b)
            heapq.heappop(t.heap)
        self._drop(t, pid, expired=False)

    # ---- labels -----------------------------------------------------------------------------------------
    def add_label(
        self,
        system: str,
        label: float | int | str,
        *,
        label_ts_ms: int,
        prediction_id: str | None = None,
        entity_key: str | None = None,
        event_ts_ms: int | None = None,
    ) -> LabelOutcome:
        """Grade a waiting prediction with this label, or hold / count the label (see :class:`LabelOutcome`)."""
        t = self._tables.get(system) or self._table(system)
        ts = event_ts_ms if event_ts_ms is not None else label_ts_ms
        if prediction_id is None:
            return self._add_entity_label(t, label, label_ts_ms, entity_key, event_ts_ms)
        slot = t.index.get(prediction_id)
        if slot is not None:
            if slot == DONE:
                self.stats.labels_duplicate += 1
                return LabelOutcome.DUPLICATE
            self.ready.append(t.joined(slot, label, label_ts_ms))
            t.index[prediction_id] = DONE
            t.done += 1
            t.release(prediction_id, slot)
            self.stats.labels_joined += 1
            return LabelOutcome.JOINED
        if prediction_id in t.orphans:
            self.stats.labels_duplicate += 1
            return LabelOutcome.DUPLICATE
        if ts < t.horizon_ms:
            self.stats.labels_late += 1
            return LabelOutcome.LATE
        t.orphans[prediction_id] = (label, label_ts_ms, ts)
        self.stats.labels_held += 1
        if len(t.orphans) > self.config.max_orphans:
            t.orphans.popitem(last=False)
            self.stats.held_evicted += 1
        return LabelOutcome.HELD

    def _add_entity_label(
        self, t: _Table, label: float | int | str, label_ts_ms: int, entity: str | None, event_ts_ms: int | None
    ) -> LabelOutcome:
        if entity is None or t.entity is None:
            self.stats.labels_unjoinable += 1
            return LabelOutcome.UNJOINABLE
        key = (entity, label_ts_ms, label_key(label))
        if key in t.entity_labels:
            self.stats.labels_duplicate += 1
            return LabelOutcome.DUPLICATE
        candidates = [
            pid
            for pid in reversed(t.by_entity.get(entity, ()))
            if event_ts_ms is None or t.ts[t.index[pid]] <= event_ts_ms
        ]
        if not candidates:
            if (event_ts_ms if event_ts_ms is not None else label_ts_ms) < t.horizon_ms:
                self.stats.labels_late += 1
                return LabelOutcome.LATE
            self.stats.labels_unmatched += 1
            return LabelOutcome.UNMATCHED
        chosen = candidates[0]
        if t.items is not None and t.policy.item_labels:
            for pid in candidates:  # the newest list that showed the item gets the credit
                packed = t.items[t.index[pid]]
                if packed is not None and _has_item(packed, label):
                    chosen = pid
                    break
        t.entity_labels[key] = None
        if len(t.entity_labels) > self.config.max_entity_labels:
            t.entity_labels.popitem(last=False)
        slot = t.index[chosen]
        self.ready.append(t.joined(slot, label, label_ts_ms))
        t.index[chosen] = DONE
        t.done += 1
        t.release(chosen, slot)
        self.stats.labels_joined += 1
        return LabelOutcome.JOINED

    # ---- draining and inspection ------------------------------------------------------------------------
    def take(self) -> list[Joined]:
        """The joined pairs since the last call."""
        out, self.ready = self.ready, []
        return out

    @property
    def pending(self) -> int:
        """Predictions still waiting for a label."""
        return sum(len(t.index) - t.done for t in self._tables.values())

    @property
    def entries(self) -> int:
        """Ids held (waiting predictions plus tombstones): what ``max_pending`` bounds."""
        return self._entries

    @property
    def held(self) -> int:
        """Labels waiting for their prediction."""
        return sum(len(t.orphans) for t in self._tables.values())

    def watermark(self, system: str) -> int | None:
        t = self._tables.get(system)
        return None if t is None or t.max_event < 0 else t.watermark


# ============================================================================================ measurement


def _fill(join: LabelJoin, n: int, *, system: str, ranked: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.random(n).tolist()
    t0 = 1_700_000_000_000
    for i in range(n):
        if ranked:
            pid = f"{rng.integers(2**63):016x}{i:016x}"  # a 32-hex-digit request id, as recsys serves
            items = pack_items([int(x) for x in rng.integers(1, 1683, 10)])
            entity = str(1 + i % 943)
        else:
            pid = str(100_000_000 + i)  # a transaction id, as fraud serves
            items, entity = None, str(i % 5000)
        join.add_prediction(
            system,
            pid,
            series=0,
            event_ts_ms=t0 + i * 10,
            score=scores[i],
            code=int(scores[i] > 0.9),
            slice=i % 5,
            items=items,
            entity_key=entity,
        )


def bench_join_memory(n: int = 500_000, *, seed: int = 0) -> dict[str, Any]:
    """Bytes held by the join per pending prediction, measured with tracemalloc on a realistic fill.

    ``fraud``: 9-digit transaction ids, a score and a decision, no entity index (the fraud label names the
    transaction). ``recsys``: 32-hex-digit request ids, 10-item lists, the entity index (labels name users).
    Everything the join allocates is counted, the id strings included. ``mb_per_million`` is the fraud case.
    """
    out: dict[str, Any] = {"n": n}
    for name, ranked, system in (("fraud", False, "fraud"), ("recsys", True, "recsys")):
        policies = {"recsys": JoinPolicy(by_entity=True)}  # the recsys policy, without its 1-hour wait
        cfg = JoinConfig(max_pending=n + 1, label_wait_s=10 * 86_400.0, policies=policies)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        join = LabelJoin(cfg)
        _fill(join, n, system=system, ranked=ranked, seed=seed)
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert join.pending == n
        per = (after - before) / n
        out[name] = {"bytes_per_pending": round(per, 1), "mb_per_million": round(per * 1e6 / 2**20, 1)}
        del join
    out["mb_per_million"] = out["fraud"]["mb_per_million"]
    return out


def join_bytes_per_pending(n: int = 500_000) -> float:
    """Bytes per pending fraud prediction (see :func:`bench_join_memory`)."""
    return float(bench_join_memory(n)["fraud"]["bytes_per_pending"])
