"""Event-time windows per system, model and version: what closes, when, and what a closed window says.

Why event time. A window means "the predictions made between 12:00 and 12:01", whenever their records
reach us: after a consumer restart an hour of backlog arrives in seconds, and a processing-time window would
put that hour into one window and call the jump drift. Each record is placed by ``event_ts_ms``; a window
closes when the **watermark** — the largest event time seen for that system, minus ``allowed_lateness_s`` —
passes its end, so records up to ``allowed_lateness_s`` out of order still land in their window. A record
for a window that has already closed is *late*: counted in that window's ``late`` and used for nothing the
window computed at close (count, drift, data quality, latency, estimates), but still joined, because its
label is real ground truth for delayed-label performance. The watermark is per system (each producer has its
own clock), so fraud's simulated event times and recsys's wall-clock ones never close each other's windows.

Panes. With ``slide_s > 0`` windows of ``window_s`` start every ``slide_s`` (``window_s`` a multiple of
``slide_s``); the windows aligned on multiples of ``window_s`` are the tumbling ones, so sliding mode reports
those too. Records go into panes of ``slide_s`` (of ``window_s`` when tumbling) and a window is the merge of
its panes: drift summaries merge exactly (``drift.SummarySet.merge``), so a record is summarised once
however many windows it falls in.

What a closed window says (:class:`~systems.monitoring.results.WindowResult`):

- drift against the reference of (system, model name): per-column statistics and verdicts from
  ``drift.detect_drift`` on the window's merged summaries (no reference: empty). References are fitted from a
  reference frame (training data, a healthy period) or loaded from ``settings.references``;
- data quality: per feature the null share (a missing key counts as null) and, with a reference, the share
  of categories the reference never had — a broken pipeline shows here before drift does;
- latency p99, and performance estimated from calibrated scores at close (CBPE, ``performance.py``);
- realised performance, overall and per slice, on the labels joined so far. Labels keep arriving after the
  close, so a closed window stays until its label wait is over and is **re-emitted** (``revision`` + 1) as
  labels or late records arrive (at most every ``update_interval_s`` of wall time: a bootstrap is not free),
  then once more with ``final=True``.

Re-baselining. A retrained version is trained on the recent data and scores on its own scale, so judging it
against its predecessor's reference keeps reporting the very shift it was trained on. :meth:`Windows.rebaseline`
makes a version's first ``windows`` windows (from its next pane) its own reference: their rows are sampled
(a reservoir of ``max_rows``) while they are summarised as before; when the watermark passes the last of
them a reference is fitted on the sample with the predecessor's columns and its performance targets (a
retrain must not lower the bar), and panes from the next one on are summarised against it. A window whose
panes straddle the switch reports no drift (it is not judged, so it counts neither way for an incident).
The service re-baselines every version a retrain request produced and persists the result as
``<references>/<system>/<model_name>/<version>.json``.

Slices are generic: ``slices`` maps a system to the name of a function of the record's features
(:data:`SLICE_FUNCTIONS`), whose value names the segment (fraud's spending band, recsys's age group,
textclf's department); each segment gets the same realised metrics, under the same minimum-sample guard.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from systems.common.predictions import PredictionRecord
from systems.monitoring.drift import (
    PREDICTION_PREFIX,
    CategoricalSummary,
    DriftConfig,
    DriftSchema,
    NumericalSpec,
    SummarySet,
    detect_drift,
    fit_schema,
    frame_from_records,
    merge_all,
    warm_up,
)
from systems.monitoring.join import DEFAULT_POLICIES, Joined, JoinPolicy, pack_items
from systems.monitoring.performance import (
    DEFAULT_OUTPUT,
    ClassProbabilitySums,
    MetricConfig,
    Outcomes,
    OutputKind,
    OutputSpec,
    decision_code,
    estimate_binary,
    estimate_multiclass,
    infer_kind,
    is_positive,
    label_key,
    realised_metrics,
)
from systems.monitoring.results import Metric, WindowKey, WindowResult

# ================================================================================================== slices

SliceFn = Callable[[Mapping[str, Any]], str | None]

SPENDING_BANDS: tuple[tuple[float, str], ...] = ((10.0, "<10"), (50.0, "10-50"), (200.0, "50-200"), (1000.0, "200-1k"))


def amount_band(features: Mapping[str, Any]) -> str | None:
    """Fraud: the transaction amount's spending band (customers who spend little are scored on few signals)."""
    a = features.get("amount")
    if not isinstance(a, int | float) or isinstance(a, bool) or math.isnan(a):
        return None
    for upper, name in SPENDING_BANDS:
        if a < upper:
            return name
    return ">=1k"


AGE_GROUPS: tuple[str, ...] = ("<10", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+")


def age_group(features: Mapping[str, Any]) -> str | None:
    """Recsys: the user's age group, the first of ``user_cats`` (age bucket, gender, occupation); 8 = unknown."""
    cats = features.get("user_cats")
    if not isinstance(cats, list) or not cats or not isinstance(cats[0], int):
        return None
    return AGE_GROUPS[cats[0]] if 0 <= cats[0] < len(AGE_GROUPS) else "unknown"


def department(features: Mapping[str, Any]) -> str | None:
    """Textclf: the product department of the review."""
    d = features.get("department")
    return None if d is None else str(d)


SLICE_FUNCTIONS: Mapping[str, SliceFn] = {"amount_band": amount_band, "age_group": age_group, "department": department}
DEFAULT_SLICES: Mapping[str, str] = {"fraud": "amount_band", "recsys": "age_group", "textclf": "department"}


# =============================================================================================== references


@dataclass(frozen=True)
class Reference:
    """The reference of one (system, model name): the bin layout and its summaries (training data or a
    chosen healthy period). Persisted as ``<references>/<system>/<model_name>.json``."""

    schema: DriftSchema
    summary: SummarySet
    metrics: Mapping[str, float] = field(default_factory=dict)
    """The model's performance on this reference (e.g. validation ``{"ap": 0.71}``): the alert targets."""
    slice_metrics: Mapping[str, float] = field(default_factory=dict)
    """The same per segment, keyed ``"<slice>:<metric>"`` (e.g. ``"amount_band=<10:ap"``)."""

    @classmethod
    def fit(cls, frame: pd.DataFrame, **fit_kwargs: Any) -> Reference:
        """Fix the layout on ``frame`` (``drift.fit_schema``) and summarise it."""
        schema = fit_schema(frame, **fit_kwargs)
        return cls(schema, schema.summarize(frame))

    @classmethod
    def from_records(cls, records: Iterable[PredictionRecord], **fit_kwargs: Any) -> Reference:
        """A reference from prediction records of a healthy period (features and ``output.*`` columns)."""
        return cls.fit(frame_from_records(records), **fit_kwargs)

    def with_metrics(self, metrics: Mapping[str, float], slice_metrics: Mapping[str, float] | None = None) -> Reference:
        return replace(self, metrics=dict(metrics), slice_metrics=dict(slice_metrics or {}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema.to_dict(),
            "summary": self.summary.to_dict(),
            "metrics": dict(self.metrics),
            "slice_metrics": dict(self.slice_metrics),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Reference:
        schema = DriftSchema.from_dict(d["schema"])
        return cls(
            schema,
            SummarySet.from_dict(d["summary"], schema),
            {k: float(v) for k, v in (d.get("metrics") or {}).items()},
            {k: float(v) for k, v in (d.get("slice_metrics") or {}).items()},
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: Path) -> Reference:
        return cls.from_dict(orjson.loads(path.read_bytes()))


def reference_path(root: Path, system: str, model_name: str) -> Path:
    return root / system / f"{model_name}.json"


def version_reference_path(root: Path, system: str, model_name: str, model_version: str) -> Path:
    return root / system / model_name / f"{model_version}.json"


def load_version_references(root: Path) -> dict[tuple[str, str, str], Reference]:
    """Every ``<root>/<system>/<model_name>/<version>.json``: references of one version (re-baselined)."""
    if not root.is_dir():
        return {}
    return {(p.parent.parent.name, p.parent.name, p.stem): Reference.load(p) for p in sorted(root.glob("*/*/*.json"))}


def refit_like(prior: Reference | None, frame: pd.DataFrame) -> Reference:
    """A reference on ``frame`` with ``prior``'s columns, kinds and performance targets (all of the frame's
    columns by dtype without one)."""
    if prior is None:
        return Reference.fit(frame)
    by_kind: dict[str, list[str]] = {"numerical": [], "categorical": [], "embedding": []}
    for spec in prior.schema.columns:
        if spec.name in frame.columns:
            kind = "numerical" if isinstance(spec, NumericalSpec) else type(spec).__name__.removesuffix("Spec").lower()
            by_kind[kind].append(spec.name)
    predictions = [c.name for c in prior.schema.columns if c.role == "prediction"]
    fitted = Reference.fit(frame, **by_kind, predictions=predictions)
    return fitted.with_metrics(prior.metrics, prior.slice_metrics)


def load_references(root: Path) -> dict[tuple[str, str], Reference]:
    """Every ``<root>/<system>/<model_name>.json`` (an absent folder: no references, no drift)."""
    out: dict[tuple[str, str], Reference] = {}
    if not root.is_dir():
        return out
    for path in sorted(root.glob("*/*.json")):
        out[(path.parent.name, path.stem)] = Reference.load(path)
    return out


# ================================================================================================== config


@dataclass(frozen=True, kw_only=True)
class WindowConfig:
    """Window geometry, metric settings and per-system choices (slices, label waits)."""

    window_s: float = 60.0
    slide_s: float = 0.0
    allowed_lateness_s: float = 30.0
    label_wait_s: float = 8 * 86_400.0
    metrics: MetricConfig = field(default_factory=MetricConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    output: OutputSpec = DEFAULT_OUTPUT
    slices: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_SLICES))
    policies: Mapping[str, JoinPolicy] = field(default_factory=lambda: dict(DEFAULT_POLICIES))
    update_interval_s: float = 5.0
    """Wall-clock seconds between two re-emissions of one closed window (0: every poll)."""
    chunk_rows: int = 4096
    """Rows buffered per pane before they are summarised (vectorised) and dropped."""

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.slide_s < 0 or self.allowed_lateness_s < 0:
            raise ValueError("window_s must be > 0, slide_s and allowed_lateness_s >= 0")
        if self.slide_s > 0:
            ratio = self.window_s / self.slide_s
            if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
                raise ValueError(f"window_s ({self.window_s}) must be a multiple of slide_s ({self.slide_s})")
        unknown = sorted(set(self.slices.values()) - set(SLICE_FUNCTIONS))
        if unknown:
            raise ValueError(f"unknown slice functions {unknown}; known: {sorted(SLICE_FUNCTIONS)}")

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> WindowConfig:
        """From :class:`~systems.monitoring.settings.MonitoringSettings`, with any field overridden."""
        fields: dict[str, Any] = {
            "window_s": settings.window_s,
            "slide_s": settings.slide_s,
            "allowed_lateness_s": settings.allowed_lateness_s,
            "label_wait_s": settings.label_wait_s,
            "metrics": MetricConfig(min_samples=settings.min_samples),
        }
        return cls(**(fields | overrides))

    @property
    def window_ms(self) -> int:
        return round(self.window_s * 1000)

    @property
    def pane_ms(self) -> int:
        return round((self.slide_s or self.window_s) * 1000)

    @property
    def lateness_ms(self) -> int:
        return round(self.allowed_lateness_s * 1000)

    def wait_ms(self, system: str) -> int:
        p = self.policies.get(system)
        wait = p.label_wait_s if p is not None and p.label_wait_s is not None else self.label_wait_s
        return round(wait * 1000)


# =================================================================================================== state


class _Pane:
    """Records of one pane. Pre-close data (rows to summarise, summaries, latencies, estimate inputs) is
    freed once the last window containing the pane has closed; labelled outcomes stay until it is final."""

    __slots__ = (
        "chunks",
        "class_sums",
        "count",
        "decisions",
        "feats",
        "late",
        "latency",
        "nulls",
        "o_delay",
        "o_pred",
        "o_score",
        "o_slice",
        "o_y",
        "observed",
        "outs",
        "scores",
        "start",
        "summary",
    )

    def __init__(self, start: int) -> None:
        self.start = start
        self.count = 0
        self.late = 0
        self.feats: list[Mapping[str, Any]] = []
        self.outs: list[Mapping[str, Any]] = []
        self.chunks = 0
        self.summary: SummarySet | None = None
        self.nulls: dict[str, int] = {}
        self.observed: dict[str, int] = {}
        self.latency = array("d")
        self.scores = array("d")
        self.decisions = array("b")
        self.class_sums: ClassProbabilitySums | None = None
        self.o_score = array("d")
        self.o_y = array("q")
        self.o_pred = array("q")
        self.o_slice = array("i")
        self.o_delay = array("d")  # seconds; NaN for implicit labels

    def free_pre_close(self) -> None:
        self.feats, self.outs, self.summary = [], [], None
        self.nulls, self.observed = {}, {}
        self.latency, self.scores, self.decisions = array("d"), array("d"), array("b")
        self.class_sums = None


@dataclass
class _Closed:
    result: WindowResult
    last_emit: float
    final_at_ms: int


class Series:
    """One (system, model name, model version): its output kind, reference, slice vocabulary and windows."""

    def __init__(
        self, index: int, key: tuple[str, str, str], kind: OutputKind | None, reference: Reference | None
    ) -> None:
        self.index = index
        self.system, self.model_name, self.model_version = key
        self.kind = kind
        self.reference = reference
        self.clock = _Clock()  # the system's event-time clock, shared by its series (set by Windows)
        self.panes: dict[int, _Pane] = {}
        self.last_start = -(2**62)  # the pane of the previous record (reset whenever panes close)
        self.last_pane = _Pane(self.last_start)
        self.heap: list[int] = []  # starts of open windows
        self.open: set[int] = set()
        self.closed: dict[int, _Closed] = {}
        self.close_order: deque[int] = deque()
        self.dirty: set[int] = set()
        self.columns: list[str] = []  # data-quality columns (the reference's features, else keys seen)
        self._columns_set: set[str] = set()
        # Columns read as one float matrix (numbers, None -> NaN) vs. as Python lists (categories, lists).
        self.numeric: list[str] = []
        self.other: list[str] = []
        self.out_numeric: list[str] = []  # output keys of the reference's ``output.*`` columns
        self.out_other: list[str] = []
        self.slice_fn_name: str | None = None
        self.slice_fn: SliceFn | None = None
        self.slice_names: list[str] = []
        self.slice_codes: dict[str, int] = {}
        self.prior_reference: Reference | None = None
        """After a re-baseline: the reference of panes before ``reference_from_ms``."""
        self.reference_from_ms: int | None = None
        self.baseline: _Baseline | None = None
        if reference is not None:
            self.columns_from(reference)

    def columns_from(self, reference: Reference) -> None:
        """Read the reference's feature and output columns (added to those known already)."""
        for spec in reference.schema.columns:
            numeric = isinstance(spec, NumericalSpec)
            if spec.name.startswith(PREDICTION_PREFIX):
                out_key = spec.name[len(PREDICTION_PREFIX) :]
                cols = self.out_numeric if numeric else self.out_other
                if out_key not in self.out_numeric and out_key not in self.out_other:
                    cols.append(out_key)
            else:
                self._add_column(spec.name, numeric)

    def reference_at(self, pane_start: int) -> Reference | None:
        """The reference a pane starting at ``pane_start`` is summarised against."""
        if self.reference_from_ms is None or pane_start >= self.reference_from_ms:
            return self.reference
        return self.prior_reference

    def _add_column(self, name: str, numeric: bool) -> None:
        if name not in self._columns_set:
            self._columns_set.add(name)
            self.columns.append(name)
            (self.numeric if numeric else self.other).append(name)

    def discover(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Without a reference: learn the feature keys (and whether each holds numbers) from the rows."""
        keys: set[str] = set().union(*rows)
        for k in sorted(keys - self._columns_set):
            first = next((r[k] for r in rows if r.get(k) is not None), None)
            numeric = isinstance(first, int | float) and not isinstance(first, bool)
            self._add_column(k, numeric)

    def slice_code(self, features: Mapping[str, Any]) -> int:
        if self.slice_fn is None:
            return -1
        name = self.slice_fn(features)
        if name is None:
            return -1
        code = self.slice_codes.get(name)
        if code is None:
            code = self.slice_codes[name] = len(self.slice_names)
            self.slice_names.append(name)
        return code


@dataclass
class _Baseline:
    """A version's first windows being sampled to become its reference (:meth:`Windows.rebaseline`)."""

    windows: int
    max_rows: int
    rng: random.Random
    from_ms: int | None = None
    """First pane collected (None: the series' first summarised pane)."""
    until_ms: int = 0
    feats: list[Mapping[str, Any]] = field(default_factory=list)
    outs: list[Mapping[str, Any]] = field(default_factory=list)
    seen: int = 0

    def begin(self, from_ms: int, window_ms: int) -> None:
        """Collect the panes of ``windows`` windows from ``from_ms`` (a pane boundary)."""
        self.from_ms, self.until_ms = from_ms, from_ms + self.windows * window_ms

    def collects(self, pane_start: int) -> bool:
        return self.from_ms is not None and self.from_ms <= pane_start < self.until_ms

    def offer(self, feats: Sequence[Mapping[str, Any]], outs: Sequence[Mapping[str, Any]]) -> None:
        """Reservoir sampling (algorithm R): every row seen so far is kept with the same probability."""
        for f, o in zip(feats, outs, strict=True):
            self.seen += 1
            if len(self.feats) < self.max_rows:
                self.feats.append(f)
                self.outs.append(o)
            else:
                j = self.rng.randrange(self.seen)
                if j < self.max_rows:
                    self.feats[j], self.outs[j] = f, o


@dataclass
class _Clock:
    max_event: int = -(2**62)
    frontier: int = -(2**62)
    """The watermark at the last poll: windows ending at or before it are closed."""
    series: list[Series] = field(default_factory=list)


@dataclass
class WindowStats:
    windows_closed: int = 0
    updates_emitted: int = 0
    windows_final: int = 0
    late: int = 0
    late_dropped: int = 0
    """Late records for windows already final (nothing left to count them in)."""
    outcomes_dropped: int = 0
    """Labels joined for windows already final."""
    rebaselined: int = 0
    """References fitted on a version's own first windows."""


Extracted = tuple[float, int, bytes | None]
"""What the join keeps of an output: the score (or served class probability), an int code (the served
decision or class), the packed item ids of a ranking. A plain tuple: built once per record."""

_NONE: Extracted = (math.nan, -1, None)


class Windows:
    """Event-time windows over prediction records and their joined labels (see module docstring).

    Feed it with :meth:`add` (per prediction, after the join accepted it) and :meth:`add_outcomes` (joined
    pairs), then :meth:`poll` for the results that closed, changed or became final. Not thread-safe.
    """

    def __init__(
        self,
        config: WindowConfig | None = None,
        references: Mapping[tuple[str, str], Reference] | None = None,
        version_references: Mapping[tuple[str, str, str], Reference] | None = None,
    ):
        self.config = config or WindowConfig()
        self.references: dict[tuple[str, str], Reference] = dict(references or {})
        self.version_references: dict[tuple[str, str, str], Reference] = dict(version_references or {})
        """References of one version (re-baselined); a version without one uses its model's."""
        self.on_reference: Callable[[tuple[str, str, str], Reference], None] | None = None
        """Called with each reference a re-baseline fitted (the service persists it)."""
        self._rebaseline: dict[tuple[str, str, str], tuple[int, int]] = {}
        if self.references or self.version_references:
            warm_up()
        self.stats = WindowStats()
        self._series: dict[tuple[str, str, str], Series] = {}
        self._by_index: list[Series] = []
        self._clocks: dict[str, _Clock] = {}
        self._classes: dict[str, dict[str, int]] = {}
        self._window_ms = self.config.window_ms
        self._pane_ms = self.config.pane_ms
        self._lateness_ms = self.config.lateness_ms

    def set_reference(self, system: str, model_name: str, reference: Reference) -> None:
        """Install (or replace) the reference of a model: series created from now on (its next version) are
        judged against it; a series seen already keeps what it had, since its open panes are summarised on the
        old layout (or none) and summaries on two layouts cannot be compared."""
        warm_up()
        self.references[(system, model_name)] = reference

    def rebaseline(
        self, system: str, model_name: str, model_version: str, *, windows: int = 1, max_rows: int = 20_000
    ) -> bool:
        """Make this version's next ``windows`` windows its reference (module docstring, "Re-baselining").

        Applies to the series now, or when its first record arrives. False (nothing done) when the version
        already has its own reference or is being re-baselined: asking twice is harmless.
        """
        if windows < 1 or max_rows < 1:
            raise ValueError("windows and max_rows must be >= 1")
        key = (system, model_name, model_version)
        s = self._series.get(key)
        if key in self.version_references or key in self._rebaseline or (s is not None and s.baseline is not None):
            return False
        if s is None:
            self._rebaseline[key] = (windows, max_rows)
        else:
            self._start_baseline(s, windows, max_rows)
        return True

    def _start_baseline(self, s: Series, windows: int, max_rows: int) -> None:
        warm_up()
        b = _Baseline(windows, max_rows, random.Random(f"{s.system}/{s.model_name}/{s.model_version}"))
        if s.panes or s.closed:  # the series has records: start at the pane after the newest event
            pane = self._pane_ms
            b.begin((s.clock.max_event // pane + 1) * pane, self._window_ms)
        s.baseline = b

    def _maybe_fit_baseline(self, s: Series, wm: int) -> None:
        b = s.baseline
        assert b is not None
        if b.from_ms is None and s.panes:  # a new series: from its first pane
            b.begin(min(s.panes), self._window_ms)
        if b.from_ms is not None and b.until_ms <= wm:
            self._fit_baseline(s)

    def _fit_baseline(self, s: Series) -> None:
        b = s.baseline
        assert b is not None and b.from_ms is not None
        for st, p in s.panes.items():  # rows of the collected panes not summarised yet
            if b.collects(st) and p.feats:
                self._summarise(s, p)
        if not b.feats:  # no traffic in those windows: collect the next ones
            b.until_ms += b.windows * self._window_ms
            return
        frame = pd.DataFrame.from_records(
            [{**f, **{PREDICTION_PREFIX + k: v for k, v in o.items()}} for f, o in zip(b.feats, b.outs, strict=True)]
        )
        reference = refit_like(s.reference, frame)
        s.prior_reference, s.reference = s.reference, reference
        # The switch is at the first pane after the collected ones that nothing was summarised in yet: a pane
        # summarised (a full chunk) against the prior reference stays on it, rows still buffered go on the new.
        summarised = [st for st, p in s.panes.items() if st >= b.until_ms and p.chunks]
        s.reference_from_ms = max(summarised) + self._pane_ms if summarised else b.until_ms
        s.baseline = None
        s.columns_from(reference)
        key = (s.system, s.model_name, s.model_version)
        self.version_references[key] = reference
        self.stats.rebaselined += 1
        if self.on_reference is not None:
            self.on_reference(key, reference)

    # ---- series -------------------------------------------------------------------------------------------
    def series(self, system: str, model_name: str, model_version: str, output: Mapping[str, Any]) -> Series:
        """The series of this record (created on first sight: the output kind is inferred from it)."""
        key = (system, model_name, model_version)
        s = self._series.get(key)
        if s is None:
            reference = self.version_references.get(key) or self.references.get(key[:2])
            s = Series(len(self._by_index), key, infer_kind(output, self.config.output), reference)
            name = self.config.slices.get(system)
            if name is not None:
                s.slice_fn_name, s.slice_fn = name, SLICE_FUNCTIONS[name]
            self._series[key] = s
            self._by_index.append(s)
            s.clock = self._clock(system)
            s.clock.series.append(s)
            if (pending := self._rebaseline.pop(key, None)) is not None:
                self._start_baseline(s, *pending)
        return s

    def _clock(self, system: str) -> _Clock:
        c = self._clocks.get(system)
        if c is None:
            self._clocks[system] = c = _Clock()
        return c

    def _class_code(self, system: str, value: Any) -> int:
        vocab = self._classes.get(system)
        if vocab is None:
            self._classes[system] = vocab = {}
        k = label_key(value)
        code = vocab.get(k)
        if code is None:
            code = vocab[k] = len(vocab)
        return code

    def extract(self, s: Series, output: Mapping[str, Any]) -> Extracted:
        """What the join keeps of this output, by the series' output kind."""
        spec = self.config.output
        if s.kind == "binary":
            v = output.get(spec.score_key)
            score = float(v) if isinstance(v, int | float) else math.nan
            return (score, decision_code(output, score, spec), None)
        if s.kind == "multiclass":
            pred = output.get(spec.class_key)
            if pred is None:
                return _NONE
            return (_confidence(output, pred, spec), self._class_code(s.system, pred), None)
        if s.kind == "ranked":
            items = output.get(spec.items_key)
            return (math.nan, -1, pack_items(items) if isinstance(items, list) else None)
        return _NONE

    # ---- predictions ----------------------------------------------------------------------------------------
    def add(
        self,
        s: Series,
        event_ts_ms: int,
        features: Mapping[str, Any],
        output: Mapping[str, Any],
        latency_ms: float,
        ex: Extracted,
    ) -> bool:
        """Place one (non-duplicate) prediction in its pane; False when it is late (counted only)."""
        clock = s.clock
        if event_ts_ms > clock.max_event:
            clock.max_event = event_ts_ms
        pane_ms = self._pane_ms
        start = event_ts_ms - event_ts_ms % pane_ms
        if start == s.last_start:  # in-order streams hit the same pane record after record
            p = s.last_pane
        else:
            if start + pane_ms <= clock.frontier:
                self._late(s, start, clock)
                return False
            got = s.panes.get(start)
            if got is None:
                got = s.panes[start] = _Pane(start)
                self._open_windows(s, start)
            s.last_start, s.last_pane = start, got
            p = got
        p.count += 1
        p.feats.append(features)
        p.outs.append(output)
        p.latency.append(latency_ms)
        if s.kind == "binary":
            p.scores.append(ex[0])
            p.decisions.append(ex[1])
        elif s.kind == "multiclass":
            p.scores.append(ex[0])
            spec = self.config.output
            classes, probs = output.get(spec.classes_key), output.get(spec.probs_key)
            if isinstance(classes, list) and isinstance(probs, list):
                if p.class_sums is None:
                    p.class_sums = ClassProbabilitySums()
                p.class_sums.add(label_key(output.get(spec.class_key)), classes, probs)
        if len(p.feats) >= self.config.chunk_rows:
            self._summarise(s, p)
        return True

    def _open_windows(self, s: Series, pane_start: int) -> None:
        w, step = self._window_ms, self._pane_ms
        for st in range(pane_start - w + step, pane_start + 1, step):
            if st not in s.open and st not in s.closed:
                s.open.add(st)
                heapq.heappush(s.heap, st)

    def _windows_of(self, pane_start: int) -> range:
        return range(pane_start - self._window_ms + self._pane_ms, pane_start + 1, self._pane_ms)

    def _late(self, s: Series, start: int, clock: _Clock) -> None:
        self.stats.late += 1
        p = self._kept_pane(s, start)
        if p is None:
            self.stats.late_dropped += 1  # no window containing it is kept (final, or never had records)
            return
        p.late += 1
        for st in self._windows_of(start):
            if st in s.closed:
                s.dirty.add(st)

    def _kept_pane(self, s: Series, start: int) -> _Pane | None:
        """The pane at ``start``, created empty when a kept (closed, not final) window contains it."""
        p = s.panes.get(start)
        if p is None and any(st in s.closed for st in self._windows_of(start)):
            p = s.panes[start] = _Pane(start)
        return p

    def count_late(self, s: Series, event_ts_ms: int) -> None:
        """A prediction the join refused as too old: late for its windows, if they are still kept."""
        clock = self._clocks[s.system]
        start = event_ts_ms - event_ts_ms % self._pane_ms
        self._late(s, start, clock)

    def _summarise(self, s: Series, p: _Pane) -> None:
        """Fold the pane's buffered rows into its summaries and null counts, then drop the rows."""
        feats, outs = p.feats, p.outs
        if not feats:
            return
        p.feats, p.outs = [], []
        n = len(feats)
        b = s.baseline
        if b is not None:
            if b.from_ms is None:
                b.begin(p.start, self._window_ms)
            if b.collects(p.start):
                b.offer(feats, outs)
        reference = s.reference_at(p.start)
        if s.reference is None:
            s.discover(feats)
        values = _float_columns(feats, s.numeric) | _list_columns(feats, s.other)
        for col, v in values.items():
            nulls = int(np.count_nonzero(np.isnan(v))) if isinstance(v, np.ndarray) else _nulls(v)
            p.nulls[col] = p.nulls.get(col, 0) + nulls
            p.observed[col] = p.observed.get(col, 0) + n
        if reference is not None:
            out_values = _float_columns(outs, s.out_numeric) | _list_columns(outs, s.out_other)
            values |= {PREDICTION_PREFIX + k: v for k, v in out_values.items()}
            summary = reference.schema.summarize(values, seed=p.start + p.chunks)
            p.summary = summary if p.summary is None else p.summary.merge(summary)
        p.chunks += 1

    # ---- labels ---------------------------------------------------------------------------------------------
    def add_outcomes(self, joined: Iterable[Joined]) -> None:
        """Record joined labels in their prediction's pane; closed windows they change are re-emitted."""
        spec = self.config.output
        for j in joined:
            s = self._by_index[j.series]
            start = j.event_ts_ms - j.event_ts_ms % self._pane_ms
            p = self._kept_pane(s, start)
            if p is None:
                self.stats.outcomes_dropped += 1
                continue
            if s.kind == "binary":
                y, pred = int(is_positive(j.label, spec)), j.code
            elif s.kind == "multiclass":
                y, pred = self._class_code(s.system, j.label), j.code
            elif s.kind == "ranked":
                y, pred = max(j.hit, 0), -1
            else:
                continue
            p.o_score.append(j.score)
            p.o_y.append(y)
            p.o_pred.append(pred)
            p.o_slice.append(j.slice)
            p.o_delay.append(math.nan if j.implicit else j.label_delay_ms / 1000.0)
            for st in self._windows_of(start):
                if st in s.closed:
                    s.dirty.add(st)

    # ---- closing ---------------------------------------------------------------------------------------------
    def poll(self, now: float | None = None) -> list[WindowResult]:
        """Close windows the watermark has passed, re-emit changed closed windows (rate-limited), emit and
        drop windows whose label wait is over."""
        now = time.monotonic() if now is None else now
        out: list[WindowResult] = []
        for clock in self._clocks.values():
            wm = clock.max_event - self._lateness_ms
            if wm > clock.frontier:
                for s in clock.series:
                    if s.baseline is not None:
                        self._maybe_fit_baseline(s, wm)  # before closing: later windows are judged against it
                    while s.heap and s.heap[0] + self._window_ms <= wm:
                        out.append(self._close(s, heapq.heappop(s.heap), now))
                clock.frontier = wm
            for s in clock.series:
                out.extend(self._finalise(s, wm, now))
                out.extend(self._updates(s, now))
        return out

    def flush(self, *, final: bool = False, now: float | None = None) -> list[WindowResult]:
        """Close every open window now, whatever the watermark (shutdown, end of a replay); with ``final``
        also emit every kept window as final and drop it."""
        now = time.monotonic() if now is None else now
        out: list[WindowResult] = []
        for clock in self._clocks.values():
            for s in clock.series:
                while s.heap:
                    out.append(self._close(s, heapq.heappop(s.heap), now))
            if final:
                for s in clock.series:
                    out.extend(self._finalise(s, 2**62, now))
            else:
                for s in clock.series:
                    out.extend(self._updates(s, now, force=True))
        return out

    def _panes(self, s: Series, start: int) -> list[_Pane]:
        return [p for st in range(start, start + self._window_ms, self._pane_ms) if (p := s.panes.get(st))]

    def _close(self, s: Series, start: int, now: float) -> WindowResult:
        s.open.discard(start)
        s.last_start = -(2**62)
        panes = self._panes(s, start)
        for p in panes:
            self._summarise(s, p)
        count = sum(p.count for p in panes)
        key = WindowKey(s.system, s.model_name, s.model_version, start, start + self._window_ms)
        current: SummarySet | None = None
        drift: dict[str, Any] = {}
        reference = self._window_reference(s, start)
        if reference is not None and count > 0:
            current = merge_all(p.summary for p in panes if p.summary is not None)
            drift = detect_drift(reference.summary, current, self.config.drift).to_dict()
            drift |= {"rows": count, "min_samples_met": count >= self.config.metrics.min_samples}
        latencies = np.concatenate([np.frombuffer(p.latency, np.float64) for p in panes]) if panes else np.zeros(0)
        result = WindowResult(
            key=key,
            count=count,
            drift=drift,
            data_quality=self._data_quality(s, panes, current, count),
            estimated=self._estimated(s, panes),
            latency_ms_p99=float(np.percentile(latencies, 99)) if latencies.size else None,
            output_kind=s.kind,
        )
        result = self._with_labels(s, start, result, revision=0, final=False)
        final_at = start + self._window_ms + self.config.wait_ms(s.system)
        s.closed[start] = _Closed(result, now, final_at)
        s.close_order.append(start)
        s.dirty.discard(start)
        # Pane ``start`` is in no later window: what only closing needed can go.
        if (p0 := s.panes.get(start)) is not None:
            p0.free_pre_close()
        self.stats.windows_closed += 1
        return result

    def _window_reference(self, s: Series, start: int) -> Reference | None:
        """The reference a window is judged against: None when its panes straddle a re-baseline."""
        first, last = s.reference_at(start), s.reference_at(start + self._window_ms - self._pane_ms)
        return first if first is last else None

    def _data_quality(
        self, s: Series, panes: Sequence[_Pane], current: SummarySet | None, count: int
    ) -> dict[str, Any]:
        features: dict[str, dict[str, float | None]] = {}
        for col in s.columns:
            observed = sum(p.observed.get(col, 0) for p in panes)
            if not observed:
                continue
            nulls = sum(p.nulls.get(col, 0) for p in panes)
            unseen: float | None = None
            if current is not None and col in current.columns:
                summ = current.columns[col]
                if isinstance(summ, CategoricalSummary):
                    unseen = summ.unseen / summ.count if summ.count else 0.0
            features[col] = {"null_share": nulls / observed, "unseen_share": unseen}
        nulls_ = [f["null_share"] or 0.0 for f in features.values()]
        unseen_ = [f["unseen_share"] or 0.0 for f in features.values()]
        return {
            "rows": count,
            "features": features,
            "max_null_share": max(nulls_, default=0.0),
            "max_unseen_share": max(unseen_, default=0.0),
        }

    def _estimated(self, s: Series, panes: Sequence[_Pane]) -> list[Metric]:
        cfg = self.config.metrics
        if s.kind not in ("binary", "multiclass") or not panes:
            return []
        scores = np.concatenate([np.frombuffer(p.scores, np.float64) for p in panes])
        if s.kind == "binary":
            decisions = np.concatenate([np.frombuffer(p.decisions, np.int8) for p in panes]).astype(np.int64)
            return estimate_binary(scores, decisions if np.any(decisions >= 0) else None, cfg)
        sums = [p.class_sums for p in panes if p.class_sums is not None]
        merged = None
        for x in sums:
            merged = x if merged is None else merged.merge(x)
        return estimate_multiclass(scores, merged, cfg)

    def _outcomes(self, s: Series, panes: Sequence[_Pane]) -> tuple[Outcomes, np.ndarray, np.ndarray] | None:
        if s.kind is None:
            return None

        def cat(name: str, dtype: Any) -> np.ndarray:
            parts = [np.frombuffer(getattr(p, name), dtype) for p in panes]
            return np.concatenate(parts) if parts else np.zeros(0, dtype)

        o = Outcomes(s.kind, cat("o_score", np.float64), cat("o_y", np.int64), cat("o_pred", np.int64))
        return o, cat("o_slice", np.int32), cat("o_delay", np.float64)

    def _with_labels(self, s: Series, start: int, base: WindowResult, *, revision: int, final: bool) -> WindowResult:
        """``base`` with the realised metrics, slices, label counts and late count as of now."""
        panes = self._panes(s, start)
        late = sum(p.late for p in panes)
        got = self._outcomes(s, panes)
        if got is None:
            return replace(base, late=late, revision=revision, final=final)
        o, slc, delay = got
        cfg = self.config.metrics
        slices: dict[str, list[Metric]] = {}
        if s.slice_fn_name is not None and len(o):
            for code in np.unique(slc[slc >= 0]).tolist():
                slices[f"{s.slice_fn_name}={s.slice_names[code]}"] = realised_metrics(o.take(slc == code), cfg)
        received = delay[~np.isnan(delay)]
        return replace(
            base,
            late=late,
            labelled=len(o),
            realised=realised_metrics(o, cfg) if len(o) else [],
            slices=slices,
            label_delay_s_p50=float(np.median(received)) if received.size else None,
            revision=revision,
            final=final,
        )

    def _updates(self, s: Series, now: float, *, force: bool = False) -> list[WindowResult]:
        out: list[WindowResult] = []
        interval = self.config.update_interval_s
        for st in sorted(s.dirty):
            c = s.closed.get(st)
            if c is None:
                s.dirty.discard(st)
                continue
            if not force and now - c.last_emit < interval:
                continue
            c.result = self._with_labels(s, st, c.result, revision=c.result.revision + 1, final=False)
            c.last_emit = now
            s.dirty.discard(st)
            self.stats.updates_emitted += 1
            out.append(c.result)
        return out

    def _finalise(self, s: Series, watermark: int, now: float) -> list[WindowResult]:
        out: list[WindowResult] = []
        while s.close_order and s.closed[s.close_order[0]].final_at_ms <= watermark:
            st = s.close_order.popleft()
            c = s.closed.pop(st)
            s.last_start = -(2**62)
            s.dirty.discard(st)
            out.append(self._with_labels(s, st, c.result, revision=c.result.revision + 1, final=True))
            self.stats.windows_final += 1
        if out:
            # A pane before the earliest kept (closed or open) window is in no window anyone will read again.
            lo = min(s.close_order[0] if s.close_order else 2**62, s.heap[0] if s.heap else 2**62)
            for q in [q for q in s.panes if q < lo]:
                del s.panes[q]
        return out

    # ---- inspection --------------------------------------------------------------------------------------
    def watermark(self, system: str) -> int | None:
        c = self._clocks.get(system)
        return None if c is None or c.max_event < -(2**61) else c.max_event - self._lateness_ms

    def all_series(self) -> list[Series]:
        return list(self._by_index)

    def kept(self) -> list[WindowResult]:
        """The latest result of every closed window still waiting for labels."""
        return [c.result for s in self._by_index for c in s.closed.values()]


def _float_columns(rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> dict[str, Any]:
    """Numeric columns of dict rows as float64 arrays in one ``itemgetter`` pass: ``np.fromiter`` over the
    flattened values (~40 ns a value), else ``np.array`` (which turns None into NaN), else per-column lists
    when a key is missing or a value is not a number."""
    if not cols:
        return {}
    get = itemgetter(*cols)
    n, k = len(rows), len(cols)
    try:
        picked = list(map(get, rows)) if k > 1 else [(v,) for v in map(get, rows)]
    except KeyError:
        return _list_columns(rows, cols)
    try:
        m = np.fromiter(chain.from_iterable(picked), np.float64, n * k).reshape(n, k)
    except (TypeError, ValueError):  # a None (a null), a string or a list among the values
        try:
            m = np.array(picked, dtype=np.float64)  # (n, k); None -> NaN
        except (TypeError, ValueError):
            return _list_columns(rows, cols)
    return {c: m[:, i] for i, c in enumerate(cols)}


def _list_columns(rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> dict[str, Any]:
    # A missing key reads as None: a null, as a broken pipeline emits.
    return {c: [r.get(c) for r in rows] for c in cols}


def _nulls(values: list[Any]) -> int:
    # JSON has no NaN (the encoder writes null), so a decoded record's nulls are None; NaN counts too.
    return values.count(None) + sum(1 for v in values if isinstance(v, float) and v != v)


def _confidence(output: Mapping[str, Any], pred: Any, spec: OutputSpec) -> float:
    """The served class's probability: ``confidence``, else its entry in ``probs``, else the max of ``probs``."""
    c = output.get(spec.confidence_key)
    if isinstance(c, int | float) and not isinstance(c, bool):
        return float(c)
    probs, classes = output.get(spec.probs_key), output.get(spec.classes_key)
    if isinstance(probs, list) and probs:
        nums = [float(x) for x in probs if isinstance(x, int | float) and not isinstance(x, bool)]
        if isinstance(classes, list) and len(classes) == len(probs):
            k = label_key(pred)
            for cl, pr in zip(classes, probs, strict=True):
                if label_key(cl) == k and isinstance(pr, int | float):
                    return float(pr)
        return max(nums) if nums else math.nan
    return math.nan
