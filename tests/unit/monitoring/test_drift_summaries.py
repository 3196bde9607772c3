"""Summaries merge exactly: associative, commutative, with an identity, and equal to summarising the union.

This is what lets windows, rolling references and several consumers' partitions be combined without raw
rows; a merge that is only "roughly" associative would make an hour's drift depend on how its minutes were
grouped.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from systems.monitoring.drift import (
    OTHER,
    CategoricalSummary,
    DriftSchema,
    EmbeddingSpec,
    EmbeddingSummary,
    NumericalSummary,
    SummarySet,
    bin_index,
    fit_categorical,
    fit_numerical,
    fit_schema,
    merge_all,
)

pytestmark = pytest.mark.unit

_RNG = np.random.default_rng(0)
CONTINUOUS = fit_numerical("x", _RNG.normal(0.0, 1.0, 5000))
DISCRETE = fit_numerical("k", np.array([0.0, 1.0, 1.0, 2.0, 2.0, 2.0]))
CATEGORICAL = fit_categorical("c", ["a"] * 5 + ["b"] * 3 + ["c"], top_k=2)
EMBEDDING = EmbeddingSpec(name="e", dim=3, capacity=7)

values = st.lists(
    st.one_of(
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
        st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1.0, 2.0]),
        st.none(),
    ),
    max_size=40,
)
categories = st.lists(st.sampled_from(["a", "b", "c", "d", "zz", None, 1, "1", True]), max_size=40)


def _num_equal(a: NumericalSummary, b: NumericalSummary) -> None:
    """Counts, nulls, min and max exactly; float sums to rounding."""
    np.testing.assert_array_equal(a.counts, b.counts)
    assert a.nulls == b.nulls
    assert a.min == b.min and a.max == b.max
    np.testing.assert_allclose(a.sums, b.sums, rtol=1e-9, atol=1e-6)
    assert a.total == pytest.approx(b.total, rel=1e-9, abs=1e-6)
    assert a.m2 == pytest.approx(b.m2, rel=1e-7, abs=1e-3)


def _cat_equal(a: CategoricalSummary, b: CategoricalSummary) -> None:
    np.testing.assert_array_equal(a.counts, b.counts)
    assert (a.nulls, a.unseen) == (b.nulls, b.unseen)


@pytest.mark.parametrize("spec", [CONTINUOUS, DISCRETE], ids=["quantile-edges", "discrete"])
@settings(max_examples=60, deadline=None)
@given(a=values, b=values, c=values)
def test_numerical_merge_is_associative_commutative_and_equals_the_union(
    spec: Any, a: list[Any], b: list[Any], c: list[Any]
) -> None:
    sa, sb, sc = (NumericalSummary.build(spec, v) for v in (a, b, c))
    _num_equal(sa.merge(sb), sb.merge(sa))
    _num_equal(sa.merge(sb).merge(sc), sa.merge(sb.merge(sc)))
    _num_equal(sa.merge(sb).merge(sc), NumericalSummary.build(spec, a + b + c))
    _num_equal(NumericalSummary.empty(spec).merge(sa), sa)


@settings(max_examples=60, deadline=None)
@given(a=categories, b=categories, c=categories)
def test_categorical_merge_is_exact(a: list[Any], b: list[Any], c: list[Any]) -> None:
    sa, sb, sc = (CategoricalSummary.build(CATEGORICAL, v) for v in (a, b, c))
    _cat_equal(sa.merge(sb), sb.merge(sa))
    _cat_equal(sa.merge(sb).merge(sc), sa.merge(sb.merge(sc)))
    _cat_equal(sa.merge(sb).merge(sc), CategoricalSummary.build(CATEGORICAL, a + b + c))
    _cat_equal(CategoricalSummary.empty(CATEGORICAL).merge(sa), sa)


def test_categorical_counts_other_and_unseen() -> None:
    s = CategoricalSummary.build(CATEGORICAL, ["a", "a", "b", "c", "d", "d", None, float("nan")])
    # top-2 is (a, b); "c" was in the reference (other, not unseen); "d" never was (other and unseen)
    assert s.as_mapping() == {"a": 2, "b": 1, OTHER: 3}
    assert (s.nulls, s.unseen, s.count) == (2, 2, 6)


@settings(max_examples=40, deadline=None)
@given(sizes=st.tuples(*[st.integers(0, 12)] * 3), seeds=st.tuples(*[st.integers(0, 2**31)] * 3))
def test_embedding_bottom_k_merge_is_exact(sizes: tuple[int, int, int], seeds: tuple[int, int, int]) -> None:
    parts = [
        EmbeddingSummary.build(EMBEDDING, np.random.default_rng(s).normal(size=(n, 3)), seed=s)
        for n, s in zip(sizes, seeds, strict=True)
    ]
    a, b, c = parts
    ab_c, a_bc, ba = a.merge(b).merge(c), a.merge(b.merge(c)), b.merge(a)
    np.testing.assert_array_equal(ab_c.priorities, a_bc.priorities)
    np.testing.assert_array_equal(ab_c.vectors, a_bc.vectors)
    np.testing.assert_array_equal(a.merge(b).priorities, ba.priorities)
    # the merge keeps exactly the capacity smallest priorities of the union: a uniform sample of it
    union = np.sort(np.concatenate([p.priorities for p in parts]))[: EMBEDDING.capacity]
    np.testing.assert_array_equal(ab_c.priorities, union)
    assert ab_c.count == sum(sizes)


def test_numerical_summary_fields() -> None:
    x = np.array([1.0, 2.0, np.nan, np.inf, 4.0, -1.0])
    s = NumericalSummary.build(CONTINUOUS, x)
    assert (s.count, s.nulls, s.min, s.max) == (4, 2, -1.0, 4.0)
    assert s.total == pytest.approx(6.0)
    assert s.std == pytest.approx(np.std([1.0, 2.0, 4.0, -1.0]))
    assert s.sumsq == pytest.approx(1 + 4 + 16 + 1)
    assert s.counts.sum() == 4 and s.counts[-1] == 1  # 4.0 is above the reference's max: upper overflow


def test_moments_survive_a_large_offset() -> None:
    """M2 merged by Chan's formula keeps the std where a raw sum of squares would cancel to noise."""
    spec = fit_numerical("big", 1e9 + _RNG.normal(0, 1, 1000))
    parts = [NumericalSummary.build(spec, 1e9 + _RNG.normal(0, 1, 10_000)) for _ in range(4)]
    assert merge_all(parts).std == pytest.approx(1.0, abs=0.02)


@settings(max_examples=80, deadline=None)
@given(
    ref=st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=200),
    outlier=st.sampled_from([0.0, 1e6, -1e9]),
    xs=st.lists(st.floats(-2e3, 2e3), max_size=100),
)
def test_bin_index_equals_searchsorted(ref: list[float], outlier: float, xs: list[float]) -> None:
    spec = fit_numerical("x", np.array([*ref, outlier]), n_bins=50, max_discrete=0)
    x = np.array(xs + list(spec.edges) + [np.nextafter(e, -np.inf) for e in spec.edges])
    np.testing.assert_array_equal(bin_index(spec.edges, x), np.searchsorted(np.asarray(spec.edges), x, side="right"))


def test_summary_set_round_trips_through_json_and_refuses_another_schema() -> None:
    frame = {
        "x": _RNG.normal(size=200),
        "c": np.array(["u", "v", "w", "u"] * 50, dtype=object),
        "e": _RNG.normal(size=(200, 4)),
    }
    schema = fit_schema(frame, embedding_capacity=16)
    assert [(s.name, s.kind) for s in schema.columns] == [("e", "embedding"), ("x", "numerical"), ("c", "categorical")]
    window = schema.summarize(frame, seed=3)
    restored_schema = DriftSchema.from_dict(json.loads(json.dumps(schema.to_dict())))
    restored = SummarySet.from_dict(json.loads(json.dumps(window.to_dict())), restored_schema)
    assert restored_schema.fingerprint == schema.fingerprint
    twice = restored.merge(window)  # a restored summary merges with a live one: same layout
    assert twice["x"].count == 400 and twice["c"].count == 400 and twice["e"].count == 400
    other = fit_schema({"x": _RNG.normal(size=200) + 5, "c": frame["c"], "e": frame["e"]})
    with pytest.raises(ValueError, match="fingerprint"):
        SummarySet.from_dict(window.to_dict(), other)
    with pytest.raises(ValueError, match="different layouts"):
        window.merge(other.summarize(frame))


def test_empty_set_is_the_merge_identity() -> None:
    frame = {"x": _RNG.normal(size=50), "c": np.array(["u", "v"] * 25, dtype=object)}
    schema = fit_schema(frame)
    s = schema.summarize(frame)
    m = schema.empty().merge(s)
    assert m.to_dict() == s.to_dict()
    assert m.rows == 50
