"""Drift: mergeable per-window summaries, and drift statistics computed from summaries alone.

Why summaries. A monitoring consumer sees a stream of :class:`~systems.common.predictions.PredictionRecord`
and has to answer "has this window drifted from the reference?" for many windows (per minute, per hour, per
model version), over several consumers in one group, and against references that move (last week, the
training set). Keeping raw rows for that costs memory linear in traffic and a full re-scan per question.
Instead each consumer folds its rows into a fixed-size summary per column; summaries merge exactly
(``a.merge(b)``, associative and commutative), so an hour is the merge of its minutes, a rolling reference is
the merge of its windows, and two consumers' partitions combine without either seeing the other's rows.

What makes merging possible is that every summary of a column is binned on the *same* layout, fixed once
from the reference (:func:`fit_schema`):

- numerical: quantile edges of the reference plus two open-ended overflow bins, with a count *and a sum* per
  bin, and the column's count / nulls / min / max / sum / M2 (M2, the sum of squared deviations, merged
  with Chan's formula instead of a raw sum of squares, which cancels catastrophically when ``|mean| >> std``);
- categorical: the reference's top-K categories plus ``__other__``, nulls, and the count of categories never
  seen in the reference;
- embedding: a bottom-k sample (each row draws a random priority, a summary keeps the k smallest), which is
  a uniform sample that merges exactly by keeping the k smallest of the union.

Statistics (see ``DRIFT.md`` for their sensitivity to sample size):

- numerical: the Wasserstein distance divided by the reference std (Evidently 0.7's default ``wasserstein``
  method: ``wasserstein_distance(ref, cur) / max(np.std(ref), 0.001)``, population std), the KS statistic
  and its asymptotic p-value from the binned CDFs, and PSI over reference deciles;
- categorical: the Jensen–Shannon *distance* with the natural log (what Evidently computes:
  ``scipy.spatial.distance.jensenshannon(p, q)`` with ``base=None``, at most ``sqrt(ln 2) ≈ 0.83``), the
  chi-squared p-value of the 2×k contingency table, and PSI;
- embedding: MMD² (unbiased, RBF kernel, median-heuristic bandwidth) with a permutation p-value.

The binned Wasserstein distance is exact except inside bins where the two CDFs cross: with the per-bin sums,
``∫ F`` over every bin is known exactly (``∫_a^b F = (C_<a (b - a) + n_bin b - sum_bin) / n``), so
``Σ_bins |∫_bin (F_ref - F_cur)|`` equals the true ``∫ |F_ref - F_cur|`` wherever the sign of the difference
is constant within a bin, including the open-ended tails. A shifted or rescaled window crosses the
reference in at most a few bins; an undrifted window crosses often, but then the distance is small anyway.

Decisions use Evidently's defaults for the methods it picks on references above 1,000 rows (normed
Wasserstein ≥ 0.1 numerical, Jensen–Shannon ≥ 0.1 categorical, Jensen–Shannon for numerical columns with at
most 5 distinct reference values; dataset drift when the share of drifted feature columns is ≥ 0.5), so a
decision here can be read against an Evidently report on the same data.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import numpy as np
import orjson
import pandas as pd

from systems.common.predictions import PredictionRecord

OTHER = "__other__"
"""The bucket of a categorical summary for values outside the reference's top-K."""

PREDICTION_PREFIX = "output."
"""Columns named ``output.<key>`` (from :func:`frame_from_records`) are the model's outputs: prediction drift."""

META_PREFIX = "meta."
"""Record metadata columns (system, model version, event time): used to slice windows, never drift-tested."""

Role = Literal["feature", "prediction"]
NumMethod = Literal["wasserstein", "ks", "psi"]
CatMethod = Literal["jensenshannon", "chisquare", "psi"]
EmbMethod = Literal["mmd", "mmd_permutation"]

DEFAULT_THRESHOLDS: Mapping[str, float] = {
    "wasserstein": 0.1,  # Evidently's default for normed Wasserstein (numerical, reference > 1000 rows)
    "jensenshannon": 0.1,  # Evidently's default for Jensen–Shannon distance (categorical, reference > 1000 rows)
    "psi": 0.1,  # Evidently's default PSI threshold (the credit-scoring folklore uses 0.1 "watch", 0.25 "act")
    "ks": 0.05,  # a p-value: drift when p < 0.05
    "chisquare": 0.05,  # a p-value: drift when p < 0.05
    "mmd": 0.015,  # Evidently's default for its MMD embedding method (on MMD², same kernel convention)
    "mmd_permutation": 0.05,  # a p-value
}
P_VALUE_METHODS = frozenset({"ks", "chisquare", "mmd_permutation"})
"""Methods whose statistic is a p-value: drift when it is *below* the threshold (distances: at or above)."""

_STD_FLOOR = 0.001  # Evidently's floor on the reference std in the normed Wasserstein distance
_PSI_EPS = 1e-4  # what Evidently substitutes for an empty bucket in PSI


# ============================================================================================ column specs


@dataclass(frozen=True, kw_only=True)
class NumericalSpec:
    """The bin layout of a numerical column, fixed from the reference so that every summary merges.

    Bins: ``[0]`` holds values below ``edges[0]``, ``[i]`` holds ``[edges[i-1], edges[i])``, ``[-1]`` holds
    values at or above ``edges[-1]``: ``len(edges) + 1`` bins. Continuous columns get reference quantiles
    (the last nudged up one ulp so the reference maximum falls inside); ``discrete`` columns (at most
    ``max_discrete`` distinct reference values) get the distinct values themselves, one bin per value.
    """

    name: str
    role: Role = "feature"
    edges: tuple[float, ...]
    discrete: bool = False

    @property
    def kind(self) -> Literal["numerical"]:
        return "numerical"

    @property
    def n_bins(self) -> int:
        return len(self.edges) + 1


@dataclass(frozen=True, kw_only=True)
class CategoricalSpec:
    """The vocabulary of a categorical column: the reference's top-K (``categories``) and up to
    ``max_known`` reference categories (``known``), against which a value counts as unseen."""

    name: str
    role: Role = "feature"
    categories: tuple[str, ...]
    known: frozenset[str]

    @property
    def kind(self) -> Literal["categorical"]:
        return "categorical"


@dataclass(frozen=True, kw_only=True)
class EmbeddingSpec:
    """An embedding column: vectors of ``dim`` floats, summarised by a uniform sample of ``capacity`` rows."""

    name: str
    role: Role = "feature"
    dim: int
    capacity: int = 500

    @property
    def kind(self) -> Literal["embedding"]:
        return "embedding"


ColumnSpec: TypeAlias = NumericalSpec | CategoricalSpec | EmbeddingSpec


def _same_spec(a: ColumnSpec, b: ColumnSpec) -> None:
    if a is not b and a != b:
        raise ValueError(f"column {a.name!r}: summaries binned on different layouts cannot be merged or compared")


# ============================================================================================== summaries


def _as_float(values: Any) -> np.ndarray:
    """A float64 array with NaN for anything missing or non-numeric (None, pd.NA, strings)."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return values.astype(np.float64, copy=False)
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    if series.dtype.kind not in "fiub":
        series = pd.to_numeric(series, errors="coerce")
    return series.to_numpy(dtype=np.float64, na_value=np.nan)


_GRID_CELLS = 1 << 14
_GRID_MAX_STEPS = 8


@functools.lru_cache(maxsize=512)
def _grid(edges: tuple[float, ...]) -> tuple[float, float, np.ndarray, np.ndarray, int] | None:
    """A uniform grid over [edges[0], edges[-1]] for :func:`bin_index`: per cell, a lower bound of the bin
    index of any value mapped there, and how many upward steps can be needed (None: use searchsorted)."""
    e = np.asarray(edges, np.float64)
    if e.size < 2:
        return None
    lo, hi = float(e[0]), float(e[-1])
    width = (hi - lo) / _GRID_CELLS
    if not (math.isfinite(width) and width > 0 and math.isfinite(1.0 / width)):
        return None  # a range so narrow that 1 / width overflows: 0 * inf would give NaN cells
    start = lo + np.arange(_GRID_CELLS) * width
    # One cell of slack on each side absorbs the rounding of (x - lo) / width near cell boundaries.
    base = np.searchsorted(e, start - width, side="right")
    top = np.searchsorted(e, start + 2 * width, side="right")
    steps = int((top - base).max()) + 1
    if steps > _GRID_MAX_STEPS:  # edges crowded into few cells (a far outlier stretched the range)
        return None
    return lo, 1.0 / width, base, np.append(e, np.inf), steps


def bin_index(edges: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    """``np.searchsorted(edges, x, side="right")`` for finite ``x``, ~3x faster on quantile edges.

    A binary search mispredicts a branch at nearly every level; instead a uniform grid gives each value a
    lower bound of its bin in one multiply and one gather, and a few vectorised ``x >= edges[idx]`` steps
    finish the job (at most 2-3 for quantile edges of ordinary data). Equality with searchsorted is tested.
    """
    g = _grid(edges)
    if g is None:
        return np.searchsorted(np.asarray(edges), x, side="right")
    lo, inv, base, pad, steps = g
    t = (x - lo) * inv
    np.clip(t, 0, _GRID_CELLS - 1, out=t)
    idx = base[t.astype(np.intp)]
    for _ in range(steps):
        idx += x >= pad[idx]
    return idx


@dataclass(kw_only=True, eq=False)
class NumericalSummary:
    """One window of one numerical column: a histogram on the spec's bins plus moments.

    Non-finite values (NaN, ±inf, None) are counted in ``nulls`` and excluded from everything else, as
    Evidently drops them before testing drift.
    """

    spec: NumericalSpec
    counts: np.ndarray  # (n_bins,) int64: values per bin
    sums: np.ndarray  # (n_bins,) float64: sum of the values in each bin (makes tail integrals exact)
    nulls: int = 0
    total: float = 0.0  # sum of the finite values
    m2: float = 0.0  # sum of squared deviations from the mean (Chan et al. merge)
    min: float = math.inf
    max: float = -math.inf

    @classmethod
    def empty(cls, spec: NumericalSpec) -> NumericalSummary:
        return cls(spec=spec, counts=np.zeros(spec.n_bins, np.int64), sums=np.zeros(spec.n_bins))

    @classmethod
    def build(cls, spec: NumericalSpec, values: Any) -> NumericalSummary:
        """Summarise a column in a few vectorised passes (searchsorted + two bincounts + moments)."""
        x = _as_float(values)
        finite = np.isfinite(x)
        nulls = int(x.size - np.count_nonzero(finite))
        if nulls:
            x = x[finite]
        if x.size == 0:
            out = cls.empty(spec)
            out.nulls = nulls
            return out
        idx = bin_index(spec.edges, x)  # (n,) bin index in 0..len(edges)
        counts = np.bincount(idx, minlength=spec.n_bins).astype(np.int64)
        sums = np.bincount(idx, weights=x, minlength=spec.n_bins)
        mean = float(x.mean())
        return cls(
            spec=spec,
            counts=counts,
            sums=sums,
            nulls=nulls,
            total=float(x.sum()),
            m2=float(np.square(x - mean).sum()),
            min=float(x.min()),
            max=float(x.max()),
        )

    @property
    def count(self) -> int:
        """Finite values summarised."""
        return int(self.counts.sum())

    @property
    def mean(self) -> float:
        n = self.count
        return self.total / n if n else math.nan

    @property
    def std(self) -> float:
        """Population std (ddof=0), as ``np.std`` in Evidently's normalisation."""
        n = self.count
        return math.sqrt(max(self.m2, 0.0) / n) if n else math.nan

    @property
    def sumsq(self) -> float:
        """Sum of squares, derived (M2 is what is stored, for numerical stability)."""
        n = self.count
        return self.m2 + (self.total * self.total / n if n else 0.0)

    def merge(self, other: NumericalSummary) -> NumericalSummary:
        """The summary of both windows' rows. Counts, nulls, min and max merge exactly; sums and M2 up to
        float rounding."""
        _same_spec(self.spec, other.spec)
        na, nb = self.count, other.count
        n = na + nb
        if na and nb:
            delta = other.total / nb - self.total / na
            m2 = self.m2 + other.m2 + delta * delta * (na * nb / n)
        else:
            m2 = self.m2 + other.m2
        return NumericalSummary(
            spec=self.spec,
            counts=self.counts + other.counts,
            sums=self.sums + other.sums,
            nulls=self.nulls + other.nulls,
            total=self.total + other.total,
            m2=m2,
            min=min(self.min, other.min),
            max=max(self.max, other.max),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "numerical",
            "counts": self.counts.tolist(),
            "sums": self.sums.tolist(),
            "nulls": self.nulls,
            "total": self.total,
            "m2": self.m2,
            "min": _finite_or_none(self.min),
            "max": _finite_or_none(self.max),
        }

    @classmethod
    def from_dict(cls, spec: NumericalSpec, d: Mapping[str, Any]) -> NumericalSummary:
        return cls(
            spec=spec,
            counts=np.asarray(d["counts"], np.int64),
            sums=np.asarray(d["sums"], np.float64),
            nulls=int(d["nulls"]),
            total=float(d["total"]),
            m2=float(d["m2"]),
            min=math.inf if d["min"] is None else float(d["min"]),
            max=-math.inf if d["max"] is None else float(d["max"]),
        )


@dataclass(kw_only=True, eq=False)
class CategoricalSummary:
    """One window of one categorical column: counts over the spec's top-K categories plus ``__other__``.

    Values are compared as strings (``str(value)``), so ``3`` and ``"3"`` are one category: records arrive
    as JSON, where that distinction is not reliable. ``unseen`` counts values (inside ``__other__``) that
    are not among the reference's known categories: a new category is a drift signal of its own.
    """

    spec: CategoricalSpec
    counts: np.ndarray  # (len(categories) + 1,) int64; the last entry is __other__
    nulls: int = 0
    unseen: int = 0

    @classmethod
    def empty(cls, spec: CategoricalSpec) -> CategoricalSummary:
        return cls(spec=spec, counts=np.zeros(len(spec.categories) + 1, np.int64))

    @classmethod
    def build(cls, spec: CategoricalSpec, values: Any) -> CategoricalSummary:
        """Factorise once (vectorised), then map the few distinct values onto the vocabulary."""
        keys, per_key, nulls = _value_counts(values)
        index = {c: i for i, c in enumerate(spec.categories)}
        other = len(spec.categories)
        slots = np.fromiter((index.get(k, other) for k in keys), np.int64, len(keys))
        is_unseen = np.fromiter((k not in spec.known for k in keys), bool, len(keys))
        counts = np.bincount(slots, weights=per_key, minlength=other + 1).astype(np.int64)
        return cls(spec=spec, counts=counts, nulls=nulls, unseen=int(per_key[is_unseen].sum()))

    @property
    def count(self) -> int:
        """Non-null values summarised."""
        return int(self.counts.sum())

    def as_mapping(self) -> dict[str, int]:
        """Category → count, with ``__other__`` last."""
        return dict(zip((*self.spec.categories, OTHER), self.counts.tolist(), strict=True))

    def merge(self, other: CategoricalSummary) -> CategoricalSummary:
        """The summary of both windows' rows (exact: integer counts on a shared vocabulary)."""
        _same_spec(self.spec, other.spec)
        return CategoricalSummary(
            spec=self.spec,
            counts=self.counts + other.counts,
            nulls=self.nulls + other.nulls,
            unseen=self.unseen + other.unseen,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "categorical", "counts": self.counts.tolist(), "nulls": self.nulls, "unseen": self.unseen}

    @classmethod
    def from_dict(cls, spec: CategoricalSpec, d: Mapping[str, Any]) -> CategoricalSummary:
        return cls(spec=spec, counts=np.asarray(d["counts"], np.int64), nulls=int(d["nulls"]), unseen=int(d["unseen"]))


@dataclass(kw_only=True, eq=False)
class EmbeddingSummary:
    """One window of one embedding column: a bottom-k uniform sample of its vectors.

    Each row draws a priority uniform in [0, 1); the summary keeps the ``capacity`` rows of smallest
    priority. Merging keeps the smallest of the union, which is again a uniform sample of the union's rows,
    so the merge is exact, associative and commutative. Windows summarised separately must draw their
    priorities from different seeds (e.g. the window start), or their samples pick the same positions.
    """

    spec: EmbeddingSpec
    priorities: np.ndarray  # (k,) float64, ascending, k <= capacity
    vectors: np.ndarray  # (k, dim) float32, in priority order
    count: int = 0  # finite vectors seen
    nulls: int = 0  # missing vectors, or vectors with a non-finite entry

    @classmethod
    def empty(cls, spec: EmbeddingSpec) -> EmbeddingSummary:
        return cls(spec=spec, priorities=np.zeros(0), vectors=np.zeros((0, spec.dim), np.float32))

    @classmethod
    def build(cls, spec: EmbeddingSpec, values: Any, *, seed: int | np.random.Generator = 0) -> EmbeddingSummary:
        x, nulls = _as_matrix(values, spec.dim)
        ok = np.isfinite(x).all(axis=1)
        nulls += int(x.shape[0] - np.count_nonzero(ok))
        x = x[ok]
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        pr = rng.random(x.shape[0])
        keep = np.argsort(pr, kind="stable")[: spec.capacity]
        return cls(spec=spec, priorities=pr[keep], vectors=x[keep], count=int(x.shape[0]), nulls=nulls)

    def merge(self, other: EmbeddingSummary) -> EmbeddingSummary:
        _same_spec(self.spec, other.spec)
        pr = np.concatenate([self.priorities, other.priorities])
        vec = np.concatenate([self.vectors, other.vectors])
        keep = np.argsort(pr, kind="stable")[: self.spec.capacity]
        return EmbeddingSummary(
            spec=self.spec,
            priorities=pr[keep],
            vectors=vec[keep],
            count=self.count + other.count,
            nulls=self.nulls + other.nulls,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "embedding",
            "priorities": self.priorities.tolist(),
            "vectors": self.vectors.tolist(),
            "count": self.count,
            "nulls": self.nulls,
        }

    @classmethod
    def from_dict(cls, spec: EmbeddingSpec, d: Mapping[str, Any]) -> EmbeddingSummary:
        vectors = np.asarray(d["vectors"], np.float32).reshape(-1, spec.dim)
        return cls(
            spec=spec,
            priorities=np.asarray(d["priorities"], np.float64),
            vectors=vectors,
            count=int(d["count"]),
            nulls=int(d["nulls"]),
        )


ColumnSummary: TypeAlias = NumericalSummary | CategoricalSummary | EmbeddingSummary


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _value_counts(values: Any) -> tuple[list[str], np.ndarray, int]:
    """(distinct values as strings, their counts, nulls) from one vectorised factorise; ``str`` runs once
    per distinct value, not per row. Two values that print alike (``1``, ``"1"``) give two equal keys."""
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    valid = codes[codes >= 0]
    per_key = np.bincount(valid, minlength=len(uniques)).astype(np.int64)
    return [str(u) for u in uniques], per_key, int(codes.size - valid.size)


def _as_matrix(values: Any, dim: int) -> tuple[np.ndarray, int]:
    """(n, dim) float32 from a 2-D array or a sequence of vectors; missing rows dropped and counted."""
    if isinstance(values, np.ndarray) and values.ndim == 2:
        if values.shape[1] != dim:
            raise ValueError(f"embedding of width {values.shape[1]}, expected {dim}")
        return values.astype(np.float32, copy=False), 0
    rows = list(values.tolist() if isinstance(values, pd.Series | np.ndarray) else values)
    kept = [r for r in rows if r is not None and not (isinstance(r, float) and math.isnan(r))]
    if not kept:
        return np.zeros((0, dim), np.float32), len(rows)
    x = np.asarray(kept, np.float32)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"embedding rows of shape {x.shape[1:]}, expected ({dim},)")
    return x, len(rows) - len(kept)


# ========================================================================================= schema & sets


@dataclass(frozen=True)
class DriftSchema:
    """The fixed layout of every column's summaries, derived once from a reference (:func:`fit_schema`).

    Everything that is compared or merged must be summarised with the same schema; its ``fingerprint``
    travels with serialised summaries so a window binned on another reference is refused, not misread.
    """

    columns: tuple[ColumnSpec, ...]

    def __getitem__(self, name: str) -> ColumnSpec:
        for spec in self.columns:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def summarize(self, data: Mapping[str, Any] | pd.DataFrame, *, seed: int = 0) -> SummarySet:
        """Summaries of one window: ``data`` maps each schema column to its values (a DataFrame, or a dict
        of arrays; an embedding column may be an (n, dim) array). ``seed`` drives the embedding samples:
        give separately summarised windows different seeds."""
        rng = np.random.default_rng(seed)
        out: dict[str, ColumnSummary] = {}
        for spec in self.columns:
            if spec.name not in data:
                raise KeyError(f"column {spec.name!r} of the schema is missing from the data")
            values = data[spec.name]
            if isinstance(spec, NumericalSpec):
                out[spec.name] = NumericalSummary.build(spec, values)
            elif isinstance(spec, CategoricalSpec):
                out[spec.name] = CategoricalSummary.build(spec, values)
            else:
                out[spec.name] = EmbeddingSummary.build(spec, values, seed=rng)
        return SummarySet(schema=self, columns=out)

    def empty(self) -> SummarySet:
        """The merge identity: ``schema.empty().merge(s)`` has the same content as ``s``."""
        out: dict[str, ColumnSummary] = {}
        for spec in self.columns:
            if isinstance(spec, NumericalSpec):
                out[spec.name] = NumericalSummary.empty(spec)
            elif isinstance(spec, CategoricalSpec):
                out[spec.name] = CategoricalSummary.empty(spec)
            else:
                out[spec.name] = EmbeddingSummary.empty(spec)
        return SummarySet(schema=self, columns=out)

    def to_dict(self) -> dict[str, Any]:
        cols: list[dict[str, Any]] = []
        for s in self.columns:
            base: dict[str, Any] = {"name": s.name, "kind": s.kind, "role": s.role}
            if isinstance(s, NumericalSpec):
                base |= {"edges": list(s.edges), "discrete": s.discrete}
            elif isinstance(s, CategoricalSpec):
                base |= {"categories": list(s.categories), "known": sorted(s.known)}
            else:
                base |= {"dim": s.dim, "capacity": s.capacity}
            cols.append(base)
        return {"columns": cols}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DriftSchema:
        specs: list[ColumnSpec] = []
        for c in d["columns"]:
            if c["kind"] == "numerical":
                specs.append(
                    NumericalSpec(
                        name=c["name"], role=c["role"], edges=tuple(map(float, c["edges"])), discrete=c["discrete"]
                    )
                )
            elif c["kind"] == "categorical":
                specs.append(
                    CategoricalSpec(
                        name=c["name"], role=c["role"], categories=tuple(c["categories"]), known=frozenset(c["known"])
                    )
                )
            elif c["kind"] == "embedding":
                specs.append(EmbeddingSpec(name=c["name"], role=c["role"], dim=c["dim"], capacity=c["capacity"]))
            else:
                raise ValueError(f"unknown column kind {c['kind']!r}")
        return cls(tuple(specs))

    @property
    def fingerprint(self) -> str:
        """sha256 of the schema's JSON: identical layouts, identical fingerprints."""
        return hashlib.sha256(orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


@dataclass(kw_only=True, eq=False)
class SummarySet:
    """The summaries of every schema column for one window (or a merge of windows)."""

    schema: DriftSchema
    columns: dict[str, ColumnSummary] = field(default_factory=dict)

    def __getitem__(self, name: str) -> ColumnSummary:
        return self.columns[name]

    def merge(self, other: SummarySet) -> SummarySet:
        """Column-wise merge; both sets must come from the same schema."""
        if self.columns.keys() != other.columns.keys():
            raise ValueError(
                f"cannot merge summaries of different columns: {sorted(self.columns)} vs {sorted(other.columns)}"
            )
        merged: dict[str, ColumnSummary] = {}
        for name, a in self.columns.items():
            merged[name] = _merge_one(a, other.columns[name])
        return SummarySet(schema=self.schema, columns=merged)

    @property
    def rows(self) -> int:
        """Rows summarised (non-null plus null values of the first column)."""
        if not self.columns:
            return 0
        s = next(iter(self.columns.values()))
        return s.count + s.nulls

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, compact: the schema is referenced by fingerprint, not repeated in every window."""
        return {
            "schema_fingerprint": self.schema.fingerprint,
            "columns": {k: v.to_dict() for k, v in self.columns.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], schema: DriftSchema) -> SummarySet:
        if d["schema_fingerprint"] != schema.fingerprint:
            raise ValueError("these summaries were binned on another schema (fingerprint mismatch)")
        out: dict[str, ColumnSummary] = {}
        for name, col in d["columns"].items():
            spec = schema[name]
            if isinstance(spec, NumericalSpec):
                out[name] = NumericalSummary.from_dict(spec, col)
            elif isinstance(spec, CategoricalSpec):
                out[name] = CategoricalSummary.from_dict(spec, col)
            else:
                out[name] = EmbeddingSummary.from_dict(spec, col)
        return cls(schema=schema, columns=out)


def _merge_one(a: ColumnSummary, b: ColumnSummary) -> ColumnSummary:
    if isinstance(a, NumericalSummary) and isinstance(b, NumericalSummary):
        return a.merge(b)
    if isinstance(a, CategoricalSummary) and isinstance(b, CategoricalSummary):
        return a.merge(b)
    if isinstance(a, EmbeddingSummary) and isinstance(b, EmbeddingSummary):
        return a.merge(b)
    raise ValueError(f"cannot merge a {type(a).__name__} with a {type(b).__name__}")


def merge_all(sets: Iterable[SummarySet]) -> SummarySet:
    """The merge of any number of windows (order does not matter)."""
    it = iter(sets)
    try:
        acc = next(it)
    except StopIteration:
        raise ValueError("merge_all needs at least one summary set") from None
    for s in it:
        acc = acc.merge(s)
    return acc


# ================================================================================================ fitting


def fit_numerical(
    name: str,
    values: Any,
    *,
    n_bins: int = 100,
    max_discrete: int = 5,
    sample: int = 200_000,
    role: Role = "feature",
) -> NumericalSpec:
    """Quantile edges of the reference (``n_bins`` equal-mass bins), or its distinct values when it has at
    most ``max_discrete`` of them (Evidently tests such columns with Jensen–Shannon, not Wasserstein).

    Interior quantiles come from an evenly strided subsample of at most ``sample`` values (the layout only
    needs bins of roughly equal mass: the statistics are exact for any edges, see ``wasserstein_normed``);
    the outer edges are the reference's true min and max.
    """
    x = _as_float(values)
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise ValueError(f"numerical column {name!r} has no finite values in the reference")
    sub = np.sort(x[:: max(1, -(-x.size // sample))])
    if int(np.count_nonzero(np.diff(sub))) + 1 <= max_discrete:
        distinct = np.unique(x)  # confirm on every value: a rare one may be missing from the subsample
        if distinct.size <= max_discrete:
            return NumericalSpec(name=name, role=role, edges=tuple(distinct.tolist()), discrete=True)
    q = np.quantile(sub, np.linspace(0.0, 1.0, n_bins + 1), method="linear")
    q[0], q[-1] = x.min(), x.max()
    edges = np.unique(q)
    edges[-1] = np.nextafter(edges[-1], np.inf)  # the reference max falls in the last interior bin
    return NumericalSpec(name=name, role=role, edges=tuple(edges.tolist()))


def fit_categorical(
    name: str, values: Any, *, top_k: int = 100, max_known: int = 10_000, role: Role = "feature"
) -> CategoricalSpec:
    """The reference's ``top_k`` most frequent categories (ties by name, so fitting is deterministic)."""
    keys, per_key, _ = _value_counts(values)
    totals: dict[str, int] = {}
    for k, c in zip(keys, per_key.tolist(), strict=True):
        totals[k] = totals.get(k, 0) + c
    ranked = sorted(totals, key=lambda k: (-totals[k], k))
    return CategoricalSpec(name=name, role=role, categories=tuple(ranked[:top_k]), known=frozenset(ranked[:max_known]))


def _infer_kind(series: pd.Series) -> Literal["numerical", "categorical", "embedding"] | None:
    if pd.api.types.is_bool_dtype(series.dtype):
        return "categorical"
    if pd.api.types.is_numeric_dtype(series.dtype):
        return "numerical"
    first = series.dropna()
    if first.empty:
        return None
    v = first.iloc[0]
    if isinstance(v, list | tuple | np.ndarray):
        items = list(v)
        if items and all(isinstance(i, int | float | np.floating | np.integer) for i in items):
            return "embedding"
        return None  # lists of ids (recsys items): not a distribution these methods compare
    return "categorical"


def fit_schema(
    reference: pd.DataFrame | Mapping[str, Any],
    *,
    numerical: Sequence[str] | None = None,
    categorical: Sequence[str] | None = None,
    embedding: Sequence[str] | None = None,
    predictions: Sequence[str] | None = None,
    n_bins: int = 100,
    top_k: int = 100,
    max_known: int = 10_000,
    embedding_capacity: int = 500,
) -> DriftSchema:
    """Fix every column's bin layout from the reference.

    With none of ``numerical`` / ``categorical`` / ``embedding`` given, every column is typed from its dtype
    (bool and strings categorical, numbers numerical, lists of numbers embeddings; ``meta.*`` columns and
    lists of ids skipped); otherwise exactly the listed columns are used. ``predictions`` names the output
    columns (default: those named ``output.*``), reported as prediction drift rather than counted in the
    share of drifted features.
    """
    frame = reference if isinstance(reference, pd.DataFrame) else None
    kinds: dict[str, str] = {}
    if numerical is None and categorical is None and embedding is None:
        if frame is None:
            frame = pd.DataFrame({k: v for k, v in reference.items() if not isinstance(v, np.ndarray) or v.ndim == 1})
            for k, v in reference.items():
                if isinstance(v, np.ndarray) and v.ndim == 2:
                    kinds[k] = "embedding"
        for col in frame.columns:
            if str(col).startswith(META_PREFIX) or col in kinds:
                continue
            inferred = _infer_kind(frame[col])
            if inferred is not None:
                kinds[str(col)] = inferred
    else:
        kinds |= dict.fromkeys(numerical or (), "numerical")
        kinds |= dict.fromkeys(categorical or (), "categorical")
        kinds |= dict.fromkeys(embedding or (), "embedding")
    pred = set(predictions) if predictions is not None else {k for k in kinds if k.startswith(PREDICTION_PREFIX)}
    specs: list[ColumnSpec] = []
    for name, kind in kinds.items():
        role: Role = "prediction" if name in pred else "feature"
        values = reference[name]
        if kind == "numerical":
            specs.append(fit_numerical(name, values, n_bins=n_bins, role=role))
        elif kind == "categorical":
            specs.append(fit_categorical(name, values, top_k=top_k, max_known=max_known, role=role))
        else:
            x, _ = _as_matrix(values, _width(values))
            specs.append(EmbeddingSpec(name=name, role=role, dim=int(x.shape[1]), capacity=embedding_capacity))
    return DriftSchema(tuple(specs))


def _width(values: Any) -> int:
    if isinstance(values, np.ndarray) and values.ndim == 2:
        return int(values.shape[1])
    for v in values.tolist() if isinstance(values, pd.Series | np.ndarray) else values:
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            return len(v)
    raise ValueError("embedding column with no vectors in the reference")


def frame_from_records(records: Iterable[PredictionRecord]) -> pd.DataFrame:
    """Shared prediction records as one row each: features by name, outputs as ``output.<key>`` and the
    record's slicing keys as ``meta.system`` / ``meta.model_name`` / ``meta.model_version`` /
    ``meta.event_ts_ms``. Decoding is per record by nature; everything after it is columnar."""
    rows: list[dict[str, Any]] = []
    for r in records:
        row: dict[str, Any] = {
            "meta.system": r.system,
            "meta.model_name": r.model_name,
            "meta.model_version": r.model_version,
            "meta.event_ts_ms": r.event_ts_ms,
        }
        row |= r.features
        row |= {PREDICTION_PREFIX + k: v for k, v in r.output.items()}
        rows.append(row)
    return pd.DataFrame.from_records(rows)


# ============================================================================================= statistics


def _bin_integrals(s: NumericalSummary) -> np.ndarray:
    """Per bin, ∫F over the lower-overflow and interior bins and ∫(1 - F) over the upper overflow, exact
    from the per-bin counts and sums (units of the column, divided by the count)."""
    e = np.asarray(s.spec.edges)  # (B + 1,)
    c = s.counts.astype(np.float64)  # (B + 2,)
    out = np.empty_like(c)
    out[0] = c[0] * e[0] - s.sums[0]  # Σ (e0 - x) over x < e0
    before = np.cumsum(c)[:-2]  # (B,) values below each interior bin
    out[1:-1] = before * np.diff(e) + c[1:-1] * e[1:] - s.sums[1:-1]
    out[-1] = s.sums[-1] - c[-1] * e[-1]  # Σ (x - e_B) over x >= e_B
    return out / s.count


def wasserstein_normed(reference: NumericalSummary, current: NumericalSummary) -> float:
    """W1(reference, current) / max(std(reference), 0.001), Evidently's normed Wasserstein, from summaries.

    ``Σ_bins |∫_bin (F_ref - F_cur)|``: exact where the CDFs do not cross inside a bin (module docstring).
    """
    _same_spec(reference.spec, current.spec)
    w = float(np.abs(_bin_integrals(reference) - _bin_integrals(current)).sum())
    return w / max(reference.std, _STD_FLOOR)


def _cdf_at_edges(s: NumericalSummary) -> np.ndarray:
    return np.cumsum(s.counts)[:-1] / s.count  # (B + 1,) fraction of values below each edge


def warm_up() -> None:
    """Import the scipy modules the tests below use (~1 s the first time), so that a stream pays it when it
    starts and not inside its first window close, where it stalls ingest for that second."""
    import scipy.spatial.distance
    import scipy.stats  # noqa: F401


def ks_binned(reference: NumericalSummary, current: NumericalSummary) -> tuple[float, float]:
    """(KS statistic, asymptotic two-sample p-value) with the CDFs evaluated at the bin edges.

    The statistic is a lower bound of the exact one (the supremum can fall inside a bin); the p-value is
    scipy's ``ks_2samp(method="asymp")`` formula, ``kstwo.sf(D, round(n m / (n + m)))``, or its limit.
    """
    from scipy.stats import kstwo, kstwobign

    _same_spec(reference.spec, current.spec)
    d = float(np.abs(_cdf_at_edges(reference) - _cdf_at_edges(current)).max())
    n, m = reference.count, current.count
    en = n * m / (n + m)
    # kstwo's exact-n series costs ~20 ms at some (d, n); above 10k effective samples the limiting
    # Kolmogorov distribution agrees with it to ~1e-3 relative and costs microseconds.
    p = kstwobign.sf(d * math.sqrt(en)) if en >= 10_000 else kstwo.sf(d, max(round(en), 1))
    return d, float(np.clip(p, 0.0, 1.0))


def _psi(p: np.ndarray, q: np.ndarray) -> float:
    p = np.where(p == 0, _PSI_EPS, p)
    q = np.where(q == 0, _PSI_EPS, q)
    return float(np.sum((p - q) * np.log(p / q)))


def psi_numerical(reference: NumericalSummary, current: NumericalSummary, *, groups: int = 10) -> float:
    """PSI over ``groups`` runs of reference-quantile bins (deciles by default), the two overflow bins
    kept as groups of their own (mass outside the reference's range is drift, not noise)."""
    _same_spec(reference.spec, current.spec)
    interior = np.arange(1, reference.spec.n_bins - 1)
    if reference.spec.discrete or interior.size <= groups:
        rc, cc = reference.counts, current.counts
    else:
        parts = np.array_split(interior, groups)
        starts = np.array([0] + [p[0] for p in parts] + [reference.spec.n_bins - 1])
        rc, cc = np.add.reduceat(reference.counts, starts), np.add.reduceat(current.counts, starts)
    return _psi(rc / reference.count, cc / current.count)


def jensen_shannon(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen–Shannon distance (natural log, in [0, sqrt(ln 2)]) of two count vectors, as Evidently.

    Lumping categories absent from the reference into one bucket does not change it: each contributes
    ``q_i ln 2 / 2`` to the divergence, linear in ``q_i``.
    """
    from scipy.spatial.distance import jensenshannon

    return float(jensenshannon(reference / reference.sum(), current / current.sum()))


def chi_squared_p(reference: np.ndarray, current: np.ndarray) -> float:
    """p-value of the chi-squared test of homogeneity on the 2×k table of counts (empty columns dropped)."""
    from scipy.stats import chi2_contingency

    table = np.vstack([reference, current]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 1.0
    return float(chi2_contingency(table, correction=False).pvalue)


def mmd_test(
    reference: np.ndarray, current: np.ndarray, *, permutations: int = 200, seed: int = 0
) -> tuple[float, float, float]:
    """(unbiased MMD², permutation p-value, kernel gamma) between two samples of vectors.

    Kernel ``exp(-gamma ||x - y||²)`` with ``gamma = 1 / median²`` of the pooled pairwise distances (the
    median heuristic; the kernel convention of Evidently's ``mmd``). The permutations are evaluated all at
    once as ``S^T K S`` products over indicator columns, one BLAS call instead of a Python loop per draw.
    """
    x = np.asarray(reference, np.float64)
    y = np.asarray(current, np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        return math.nan, math.nan, math.nan
    z = np.vstack([x, y])  # (N, d)
    sq = np.einsum("ij,ij->i", z, z)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)  # (N, N) squared distances
    iu = np.triu_indices(len(z), k=1)
    med2 = float(np.median(d2[iu]))
    gamma = 1.0 / med2 if med2 > 0 else 1.0
    k = np.exp(-gamma * d2)
    np.fill_diagonal(k, 0.0)  # the unbiased estimator leaves out i == j
    rng = np.random.default_rng(seed)
    big_n = m + n
    s = np.zeros((big_n, permutations + 1))  # column 0 is the observed split, the rest permutations
    s[:m, 0] = 1.0
    for j in range(1, permutations + 1):
        s[rng.permutation(big_n)[:m], j] = 1.0
    rowsum = k.sum(axis=1)  # (N,)
    total = float(rowsum.sum())
    sxx = np.einsum("ij,ij->j", s, k @ s)  # (P + 1,) sum of K over pairs inside X
    sx1 = s.T @ rowsum  # (P + 1,) sum of K over X rows
    sxy = sx1 - sxx
    syy = total - 2.0 * sx1 + sxx
    mmd2 = sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2.0 * sxy / (m * n)
    observed = float(mmd2[0])
    p = (1.0 + float(np.count_nonzero(mmd2[1:] >= observed))) / (1.0 + permutations)
    return observed, p, gamma


# ================================================================================================= report


@dataclass(frozen=True, kw_only=True)
class DriftConfig:
    """Which method decides each kind of column, and at what threshold.

    Defaults follow Evidently 0.7 on references of more than 1,000 rows; ``thresholds`` overrides a
    method's default, ``per_column_threshold`` one column's.
    """

    num_method: NumMethod = "wasserstein"
    cat_method: CatMethod = "jensenshannon"
    embedding_method: EmbMethod = "mmd"
    thresholds: Mapping[str, float] = field(default_factory=dict)
    per_column_threshold: Mapping[str, float] = field(default_factory=dict)
    drift_share: float = 0.5
    mmd_permutations: int = 200
    seed: int = 0

    def threshold(self, column: str, method: str) -> float:
        if column in self.per_column_threshold:
            return float(self.per_column_threshold[column])
        return float(self.thresholds.get(method, DEFAULT_THRESHOLDS[method]))


@dataclass(frozen=True, kw_only=True)
class ColumnDrift:
    """One column's verdict: the deciding method, its statistic and threshold, and every statistic computed."""

    column: str
    kind: str
    role: Role
    method: str
    statistic: float | None  # None when a side has no values
    threshold: float
    drifted: bool
    reference_count: int
    current_count: int
    reference_null_share: float
    current_null_share: float
    stats: dict[str, float | None]


@dataclass(frozen=True, kw_only=True)
class DriftReport:
    """Per-column drift plus the dataset verdict (Evidently's rule: drifted share of features ≥ drift_share)."""

    columns: list[ColumnDrift]
    drift_share: float
    number_of_columns: int  # feature columns
    number_of_drifted_columns: int
    share_of_drifted_columns: float
    dataset_drift: bool
    prediction_drift: bool  # any prediction (output.*) column drifted

    def __getitem__(self, name: str) -> ColumnDrift:
        for c in self.columns:
            if c.column == name:
                return c
        raise KeyError(name)

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (NaN and infinities become None)."""
        return {
            "drift_share": self.drift_share,
            "number_of_columns": self.number_of_columns,
            "number_of_drifted_columns": self.number_of_drifted_columns,
            "share_of_drifted_columns": self.share_of_drifted_columns,
            "dataset_drift": self.dataset_drift,
            "prediction_drift": self.prediction_drift,
            "drifted_columns": self.drifted_columns,
            "columns": [
                {
                    "column": c.column,
                    "kind": c.kind,
                    "role": c.role,
                    "method": c.method,
                    "statistic": _json_float(c.statistic),
                    "threshold": c.threshold,
                    "drifted": c.drifted,
                    "reference_count": c.reference_count,
                    "current_count": c.current_count,
                    "reference_null_share": c.reference_null_share,
                    "current_null_share": c.current_null_share,
                    "stats": {k: _json_float(v) for k, v in c.stats.items()},
                }
                for c in self.columns
            ],
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def _json_float(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _null_share(nulls: int, count: int) -> float:
    return nulls / (nulls + count) if nulls + count else 0.0


def _decide(method: str, statistic: float | None, threshold: float) -> bool:
    if statistic is None or not math.isfinite(statistic):
        return False
    return statistic < threshold if method in P_VALUE_METHODS else statistic >= threshold


def _verdict(
    kind: str,
    ref: NumericalSummary | CategoricalSummary | EmbeddingSummary,
    cur: NumericalSummary | CategoricalSummary | EmbeddingSummary,
    cfg: DriftConfig,
    method: str,
    statistic: float | None,
    stats: dict[str, float | None],
) -> ColumnDrift:
    """One column's verdict, the same way for every kind: the method's threshold decides."""
    spec = ref.spec
    threshold = cfg.threshold(spec.name, method)
    return ColumnDrift(
        column=spec.name,
        kind=kind,
        role=spec.role,
        method=method,
        statistic=statistic,
        threshold=threshold,
        drifted=_decide(method, statistic, threshold),
        reference_count=ref.count,
        current_count=cur.count,
        reference_null_share=_null_share(ref.nulls, ref.count),
        current_null_share=_null_share(cur.nulls, cur.count),
        stats=stats,
    )


def _numerical_drift(ref: NumericalSummary, cur: NumericalSummary, cfg: DriftConfig) -> ColumnDrift:
    spec = ref.spec
    stats: dict[str, float | None] = {}
    if ref.count and cur.count:
        ks, ks_p = ks_binned(ref, cur)
        stats = {
            "wasserstein_normed": wasserstein_normed(ref, cur),
            "ks": ks,
            "ks_p_value": ks_p,
            "psi": psi_numerical(ref, cur),
            "jensenshannon": jensen_shannon(ref.counts, cur.counts) if spec.discrete else None,
            "reference_mean": ref.mean,
            "current_mean": cur.mean,
            "reference_std": ref.std,
            "current_std": cur.std,
            "outside_reference_share": float((cur.counts[0] + cur.counts[-1]) / cur.count),
        }
    # A column with at most 5 distinct reference values is tested as categorical over its values (Evidently).
    method: str = "jensenshannon" if spec.discrete and cfg.num_method == "wasserstein" else cfg.num_method
    key = {"wasserstein": "wasserstein_normed", "ks": "ks_p_value"}.get(method, method)
    statistic = stats.get(key)
    return _verdict("numerical", ref, cur, cfg, method, statistic, stats)


def _categorical_drift(ref: CategoricalSummary, cur: CategoricalSummary, cfg: DriftConfig) -> ColumnDrift:
    stats: dict[str, float | None] = {}
    if ref.count and cur.count:
        stats = {
            "jensenshannon": jensen_shannon(ref.counts, cur.counts),
            "chisquare_p_value": chi_squared_p(ref.counts, cur.counts),
            "psi": _psi(ref.counts / ref.count, cur.counts / cur.count),
            "unseen_share": cur.unseen / cur.count,
            "other_share": float(cur.counts[-1] / cur.count),
        }
    method: str = cfg.cat_method
    statistic = stats.get({"chisquare": "chisquare_p_value"}.get(method, method))
    return _verdict("categorical", ref, cur, cfg, method, statistic, stats)


def _embedding_drift(ref: EmbeddingSummary, cur: EmbeddingSummary, cfg: DriftConfig) -> ColumnDrift:
    mmd2, p, gamma = mmd_test(ref.vectors, cur.vectors, permutations=cfg.mmd_permutations, seed=cfg.seed)
    stats: dict[str, float | None] = {
        "mmd2": mmd2,
        "mmd_p_value": p,
        "gamma": gamma,
        "reference_sample": float(len(ref.vectors)),
        "current_sample": float(len(cur.vectors)),
    }
    method: str = cfg.embedding_method
    statistic = stats["mmd2" if method == "mmd" else "mmd_p_value"]
    return _verdict("embedding", ref, cur, cfg, method, statistic, stats)


def detect_drift(reference: SummarySet, current: SummarySet, config: DriftConfig | None = None) -> DriftReport:
    """Compare a window's summaries with the reference's, column by column, from summaries alone.

    Costs O(bins) per tabular column whatever the window size, and one MMD on at most ``capacity`` vectors
    a side per embedding column.
    """
    cfg = config or DriftConfig()
    if reference.columns.keys() != current.columns.keys():
        missing = sorted(set(reference.columns) ^ set(current.columns))
        raise ValueError(f"reference and current summarise different columns: {missing}")
    results: list[ColumnDrift] = []
    for name, ref in reference.columns.items():
        cur = current.columns[name]
        if isinstance(ref, NumericalSummary) and isinstance(cur, NumericalSummary):
            results.append(_numerical_drift(ref, cur, cfg))
        elif isinstance(ref, CategoricalSummary) and isinstance(cur, CategoricalSummary):
            _same_spec(ref.spec, cur.spec)
            results.append(_categorical_drift(ref, cur, cfg))
        elif isinstance(ref, EmbeddingSummary) and isinstance(cur, EmbeddingSummary):
            _same_spec(ref.spec, cur.spec)
            results.append(_embedding_drift(ref, cur, cfg))
        else:
            raise ValueError(f"column {name!r}: {type(ref).__name__} vs {type(cur).__name__}")
    features = [c for c in results if c.role == "feature"]
    drifted = sum(c.drifted for c in features)
    share = drifted / len(features) if features else 0.0
    return DriftReport(
        columns=results,
        drift_share=cfg.drift_share,
        number_of_columns=len(features),
        number_of_drifted_columns=drifted,
        share_of_drifted_columns=share,
        dataset_drift=bool(features) and share >= cfg.drift_share,
        prediction_drift=any(c.drifted for c in results if c.role == "prediction"),
    )
