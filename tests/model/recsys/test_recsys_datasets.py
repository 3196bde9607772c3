"""The interaction logs behind the quality study, loaded through the one adapter interface."""

from __future__ import annotations

import numpy as np
import pytest

from systems.recsys.dataset import load_log

pytestmark = pytest.mark.model


def test_movielens_1m_has_string_ids_and_no_user_features(settings) -> None:  # type: ignore[no-untyped-def]
    log = load_log("movielens-1m", settings)
    assert (log.n_users, log.n_items, len(log.interactions)) == (6_040, 3_706, 1_000_209)
    assert all(isinstance(u, str) and u.startswith("1m_") for u in log.users.ids[:100])
    assert "Toy Story (1995)" in log.items.ids  # titles are the item ids in this copy
    assert log.user_features is None and log.item_categories is not None
    toy = log.items.index_of("Toy Story (1995)")
    assert sorted(log.item_categories[toy]) == ["Animation", "Children's", "Comedy"]
    ts = log.interactions["ts"].to_numpy()
    assert np.all(np.diff(ts) >= 0) and log.summary()["span_days"] > 1_000  # time-sorted, ~3 years


def test_movielens_100k_keeps_integer_ids_and_user_features(settings) -> None:  # type: ignore[no-untyped-def]
    log = load_log("movielens-100k", settings)
    assert (log.n_users, log.n_items, len(log.interactions)) == (943, 1_682, 100_000)
    assert all(type(i) is int for i in log.items.ids) and log.items.index_of(50) >= 0
    assert log.title(log.items.index_of(50)) == "Star Wars (1977)"
    assert log.user_features is not None and set(log.user_features.columns) == {"gender", "occupation", "age_bucket"}
    # indices come from the data (order of first appearance in time), not from id arithmetic
    first = log.interactions["item_idx"].iloc[0]
    assert first == 0 and log.items.ids[0] != 1
