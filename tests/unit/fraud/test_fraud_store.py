"""The decision store is idempotent: a re-delivered batch leaves exactly one decision per transaction."""

from __future__ import annotations

import numpy as np
import pytest

from systems.fraud.store import DecisionStore, LabelStore, features_matrix

pytestmark = pytest.mark.unit


def _row(tx_id: int, score: float) -> tuple:  # type: ignore[type-arg]
    x = np.arange(3, dtype=np.float64) + tx_id
    return (tx_id, 1, 2, 1_600_000_000 + tx_id, 10.0, score, "approve", "1", 3.5, 0, x.tobytes())


def test_insert_or_ignore_keeps_the_first_decision(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = DecisionStore(f"sqlite:///{tmp_path / 'd.db'}")
    assert store.put_many([_row(i, 0.1) for i in range(100)]) == 100
    # the same batch again (a crash before the offset commit), overlapping a new one
    assert store.put_many([_row(i, 0.9) for i in range(50, 150)]) == 50
    assert store.count() == (150, 150)
    assert store.get(60)["score"] == pytest.approx(0.1)  # type: ignore[index]
    df = store.frame(with_features=True)
    X = features_matrix(df["features"].tolist(), 3)
    np.testing.assert_array_equal(X[:, 0], df["tx_id"].to_numpy())
    store.close()


def test_labels_join_only_matured(tmp_path) -> None:  # type: ignore[no-untyped-def]
    dec_url = f"sqlite:///{tmp_path / 'd.db'}"
    store = DecisionStore(dec_url)
    store.put_many([_row(i, 0.5) for i in range(10)])
    labels = LabelStore(f"sqlite:///{tmp_path / 'l.db'}")
    rows = [(i, 1, 2, 1_600_000_000 + i, i % 2, 1_600_000_000 + i + 100) for i in range(10)]
    assert labels.put_many(rows) == 10 and labels.put_many(rows) == 0
    got = labels.matured_with_decisions(dec_url, as_of_s=1_600_000_000 + 104)
    assert sorted(got["tx_id"]) == [0, 1, 2, 3, 4]
    store.close()
    labels.close()
