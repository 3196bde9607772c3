"""The decision and label stores on sqlite *and* a real PostgreSQL: idempotent inserts, exactly one decision
per transaction after a re-delivered batch, and the matured-labels join retraining reads."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from systems.fraud.store import DecisionStore, LabelStore, features_matrix

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgres"])
def store_urls(request: pytest.FixtureRequest, tmp_path) -> Iterator[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(decisions URL, labels URL): two sqlite files, or one fresh Postgres database holding both tables."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'd.db'}", f"sqlite:///{tmp_path / 'l.db'}"
        return
    import psycopg2

    server: str = request.getfixturevalue("postgres_server")
    name = f"fraud_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(server)
    admin.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    url = server.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url, url
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


def _row(tx_id: int, score: float) -> tuple:  # type: ignore[type-arg]
    x = np.arange(3, dtype=np.float64) + tx_id
    return (tx_id, 1, 2, 1_600_000_000 + tx_id, 10.0, score, "approve", "1", 3.5, 0, x.tobytes())


def test_insert_or_ignore_keeps_the_first_decision(store_urls: tuple[str, str]) -> None:
    store = DecisionStore(store_urls[0])
    assert store.put_many([_row(i, 0.1) for i in range(100)]) == 100
    # the same batch again (a crash before the offset commit), overlapping a new one
    assert store.put_many([_row(i, 0.9) for i in range(50, 150)]) == 50
    assert store.put_many([_row(i, 0.9) for i in range(150)]) == 0
    assert store.count()[0] == 150
    # the first write of each transaction wins: a re-delivered batch cannot change a stored decision
    scores = store.frame().set_index("tx_id")["score"].sort_index()
    assert (scores.loc[:99] == 0.1).all() and (scores.loc[100:] == 0.9).all()
    assert store.get(60)["score"] == pytest.approx(0.1)  # type: ignore[index]
    assert store.get(10_000) is None
    df = store.frame(with_features=True)
    assert len(df) == 150 and set(df["score"].round(3)) == {0.1, 0.9}
    X = features_matrix(df["features"].tolist(), 3)
    np.testing.assert_array_equal(X[:, 0], df["tx_id"].to_numpy())
    assert len(store.frame(since_ts_s=1_600_000_000 + 140)) == 10
    store.close()


def test_two_writers_racing_leave_exactly_one_decision(store_urls: tuple[str, str]) -> None:
    """A rebalance can hand a batch to a second scorer while the first still writes it: both insert, at once."""
    import threading

    a, b = DecisionStore(store_urls[0]), DecisionStore(store_urls[0])
    go, inserted = threading.Barrier(2), {}

    def write(name: str, store: DecisionStore, lo: int, hi: int, score: float) -> None:
        go.wait()
        inserted[name] = sum(store.put_many([_row(i, score)]) for i in range(lo, hi))  # interleaved commits

    threads = [
        threading.Thread(target=write, args=("a", a, 0, 80, 0.2)),
        threading.Thread(target=write, args=("b", b, 40, 120, 0.7)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # every insert that reported success is a stored row, and each overlapping id was stored by one writer
    assert inserted["a"] + inserted["b"] == 120 == a.count()[0]
    scores = a.frame().set_index("tx_id")["score"].sort_index()
    assert (scores.loc[:39] == 0.2).all() and (scores.loc[80:] == 0.7).all()
    overlap = scores.loc[40:79]
    assert set(overlap.round(1)) <= {0.2, 0.7}
    assert inserted["a"] == 40 + int((overlap.round(1) == 0.2).sum())
    a.close()
    b.close()


def test_labels_join_only_matured(store_urls: tuple[str, str]) -> None:
    dec_url, lab_url = store_urls
    store = DecisionStore(dec_url)
    store.put_many([_row(i, 0.5) for i in range(10)])
    labels = LabelStore(lab_url)
    rows = [(i, 1, 2, 1_600_000_000 + i, i % 2, 1_600_000_000 + i + 100) for i in range(10)]
    assert labels.put_many(rows) == 10 and labels.put_many(rows) == 0
    assert labels.count() == 10
    got = labels.matured_with_decisions(dec_url, as_of_s=1_600_000_000 + 104)
    assert sorted(got["tx_id"]) == [0, 1, 2, 3, 4]
    assert list(got.sort_values("tx_id")["fraud"]) == [0, 1, 0, 1, 0]
    X = features_matrix(got.sort_values("tx_id")["features"].tolist(), 3)
    np.testing.assert_array_equal(X[:, 0], [0, 1, 2, 3, 4])
    store.close()
    labels.close()
