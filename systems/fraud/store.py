"""Decision and label stores: idempotent writes keyed by transaction id.

sqlite by default (one file under the data dir, WAL mode), Postgres when the URL says ``postgresql://``
(compose). Idempotence is the store's job: at-least-once delivery re-sends a batch after a crash,
and ``INSERT OR IGNORE`` / ``ON CONFLICT DO NOTHING`` on the primary key turns the re-send into a
no-op, so every transaction keeps exactly one decision (the first one written).

Each decision row also keeps the feature vector the model saw (float64 bytes), so retraining learns
from exactly the features served (no training/serving skew) once the label has matured.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

_DECISIONS_DDL = """
CREATE TABLE IF NOT EXISTS decisions (
    tx_id BIGINT PRIMARY KEY,
    customer_id BIGINT NOT NULL,
    terminal_id BIGINT NOT NULL,
    ts_s BIGINT NOT NULL,
    amount DOUBLE PRECISION NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    decision TEXT NOT NULL,
    model_version TEXT NOT NULL,
    latency_ms DOUBLE PRECISION,
    decided_ms BIGINT NOT NULL,
    features BYTEA,
    threshold DOUBLE PRECISION
)"""

_LABELS_DDL = """
CREATE TABLE IF NOT EXISTS labels (
    tx_id BIGINT PRIMARY KEY,
    customer_id BIGINT NOT NULL,
    terminal_id BIGINT NOT NULL,
    ts_s BIGINT NOT NULL,
    fraud INTEGER NOT NULL,
    label_ts_s BIGINT NOT NULL
)"""

# The scorer's per-customer state and, per transactions partition, how far it has applied and published: written
# in the same transaction as the decisions, so state, decisions and offsets can never disagree (see stream.py).
_STATE_DDL = """
CREATE TABLE IF NOT EXISTS customer_state (
    customer_id BIGINT PRIMARY KEY,
    part INTEGER NOT NULL,
    state BYTEA NOT NULL
)"""

_OFFSETS_DDL = """
CREATE TABLE IF NOT EXISTS stream_offsets (
    topic TEXT NOT NULL,
    part INTEGER NOT NULL,
    applied BIGINT NOT NULL,
    published BIGINT NOT NULL,
    PRIMARY KEY (topic, part)
)"""

DecisionRow = tuple[int, int, int, int, float, float, str, str, float | None, int, bytes]
ScoredRow = tuple[int, int, int, int, float, float, str, str, float | None, int, bytes, float]
"""A DecisionRow with the model's threshold, as the scorer writes it."""
StateRow = tuple[int, int, bytes]
"""(customer_id, partition, exported state)"""
LabelRow = tuple[int, int, int, int, int, int]


def _enable_wal(conn: sqlite3.Connection, attempts: int = 100) -> None:
    """Switch the database file to WAL (persistent, so usually already on).

    Changing the journal mode needs an exclusive lock and SQLite does not wait for it (the busy timeout does
    not apply), so two connections opening the same file at once can see "database is locked": retry.
    """
    for _ in range(attempts):
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            time.sleep(0.05)
    raise sqlite3.OperationalError("could not switch the decision store to WAL: database stays locked")


class _Sql:
    """A thin connection wrapper hiding the sqlite / Postgres differences we need."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pg = url.startswith(("postgresql://", "postgres://"))
        self.conn: Any
        if self.pg:
            import psycopg2

            self.conn = psycopg2.connect(url)
            self.ph = "%s"
        else:
            path = Path(url.removeprefix("sqlite:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
            # autocommit mode; we open explicit transactions per batch
            self.conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
            _enable_wal(self.conn)  # readers do not block the scorer's writes
            # WAL + synchronous=NORMAL: a commit appends to the WAL without fsync (fsync at checkpoints).
            # A *process* crash (the SIGKILL the fault test uses) loses nothing: the write already reached the
            # OS. Only an OS crash / power cut can roll back the last commits -- whose Kafka offsets may be
            # committed -- and the embedded broker (tansu, in memory) loses every topic and offset then anyway,
            # so FULL (an fsync per scorer commit, ~1-10 ms here) would buy no end-to-end guarantee. In
            # compose the store is Postgres, durable at commit.
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.ph = "?"

    def ddl(self, sql: str) -> None:
        sql = sql if self.pg else sql.replace("BYTEA", "BLOB").replace("DOUBLE PRECISION", "REAL")
        if self.pg:
            with self.conn, self.conn.cursor() as cur:
                cur.execute(sql)
        else:
            self.conn.execute(sql)

    def insert_ignore(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> int:
        """Insert rows, skipping existing primary keys, in one transaction; returns rows inserted."""
        if not rows:
            return 0
        cols = ", ".join(columns)
        marks = ", ".join([self.ph] * len(columns))
        if self.pg:
            sql = f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING"
            with self.conn, self.conn.cursor() as cur:
                cur.executemany(sql, rows)
                return int(cur.rowcount)
        before = self.conn.total_changes
        self.conn.execute("BEGIN")
        try:
            self.conn.executemany(f"INSERT OR IGNORE INTO {table} ({cols}) VALUES ({marks})", rows)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return int(self.conn.total_changes - before)

    def add_column(self, table: str, column: str, sql_type: str) -> None:
        """Add a nullable column that a table created by an older version lacks."""
        if self.pg:
            have = self.query("SELECT column_name FROM information_schema.columns WHERE table_name = ?", (table,))
        else:
            have = [(r[1],) for r in self.conn.execute(f"PRAGMA table_info({table})").fetchall()]
        if column not in {r[0] for r in have}:
            self.ddl(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}")

    def transaction(self, statements: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> int:
        """Run ``executemany`` for each (sql with ``?`` marks, rows) in one transaction; returns rows changed
        by the first statement."""
        if self.pg:
            with self.conn, self.conn.cursor() as cur:
                first = -1
                for sql, rows in statements:
                    if rows:
                        cur.executemany(sql.replace("?", "%s"), rows)
                        first = int(cur.rowcount) if first < 0 else first
                    elif first < 0:
                        first = 0
                return max(first, 0)
        before = self.conn.total_changes
        first = -1
        self.conn.execute("BEGIN")
        try:
            for sql, rows in statements:
                if rows:
                    self.conn.executemany(sql, rows)
                if first < 0:
                    first = self.conn.total_changes - before
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return max(first, 0)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        sql = sql.replace("?", self.ph)
        if self.pg:
            with self.conn, self.conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        return list(self.conn.execute(sql, params).fetchall())

    def frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        if self.pg:  # pandas only supports DBAPI connections for sqlite (it warns for psycopg2)
            with self.conn, self.conn.cursor() as cur:
                cur.execute(sql.replace("?", self.ph), list(params))
                cols = [d[0] for d in cur.description]
                rows = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in cur.fetchall()]
            return pd.DataFrame.from_records(rows, columns=cols)
        return pd.read_sql_query(sql, self.conn, params=list(params))

    def close(self) -> None:
        self.conn.close()


DECISION_COLUMNS = (
    "tx_id",
    "customer_id",
    "terminal_id",
    "ts_s",
    "amount",
    "score",
    "decision",
    "model_version",
    "latency_ms",
    "decided_ms",
    "features",
)
LABEL_COLUMNS = ("tx_id", "customer_id", "terminal_id", "ts_s", "fraud", "label_ts_s")


class DecisionStore:
    """One row per transaction id; writes are idempotent."""

    def __init__(self, url: str) -> None:
        self._db = _Sql(url)
        self._db.ddl(_DECISIONS_DDL)
        self._db.add_column("decisions", "threshold", "DOUBLE PRECISION")  # a store from before the column
        self._db.ddl(_STATE_DDL)
        self._db.ddl(_OFFSETS_DDL)

    def commit_batch(
        self, rows: Sequence[ScoredRow], states: Sequence[StateRow], applied: dict[tuple[str, int], int]
    ) -> int:
        """Decisions, the state of the customers they changed and each partition's next offset to apply, in
        one transaction; returns decisions newly stored. Nothing is half-written: a crash before the commit
        leaves the previous batch's state and offsets, which the next owner resumes from."""
        decisions = ", ".join((*DECISION_COLUMNS, "threshold"))
        marks = ", ".join("?" * (len(DECISION_COLUMNS) + 1))
        insert = "INSERT OR IGNORE INTO" if not self._db.pg else "INSERT INTO"
        conflict = "" if not self._db.pg else " ON CONFLICT DO NOTHING"
        return self._db.transaction(
            [
                (f"{insert} decisions ({decisions}) VALUES ({marks}){conflict}", rows),
                (
                    "INSERT INTO customer_state (customer_id, part, state) VALUES (?, ?, ?)"
                    " ON CONFLICT (customer_id) DO UPDATE SET part = excluded.part, state = excluded.state",
                    states,
                ),
                (
                    "INSERT INTO stream_offsets (topic, part, applied, published) VALUES (?, ?, ?, 0)"
                    " ON CONFLICT (topic, part) DO UPDATE SET applied = excluded.applied",
                    [(t, p, o) for (t, p), o in applied.items()],
                ),
            ]
        )

    def mark_published(self, published: dict[tuple[str, int], int]) -> None:
        """Every decision of these partitions below these offsets has reached the decisions topic."""
        self._db.transaction(
            [
                (
                    "UPDATE stream_offsets SET published = ? WHERE topic = ? AND part = ?",
                    [(o, t, p) for (t, p), o in published.items()],
                )
            ]
        )

    def load_partitions(
        self, topic: str, parts: Sequence[int]
    ) -> tuple[list[tuple[int, bytes]], dict[int, tuple[int, int]]]:
        """What a new owner of ``parts`` restores: the customers' states and, per partition, (applied,
        published) next offsets."""
        if not parts:
            return [], {}
        marks = ", ".join("?" * len(parts))
        states = [
            (int(c), bytes(b))
            for c, b in self._db.query(f"SELECT customer_id, state FROM customer_state WHERE part IN ({marks})", parts)
        ]
        offsets = {
            int(p): (int(a), int(pub))
            for p, a, pub in self._db.query(
                f"SELECT part, applied, published FROM stream_offsets WHERE topic = ? AND part IN ({marks})",
                [topic, *parts],
            )
        }
        return states, offsets

    def get_many(self, tx_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Stored decisions by transaction id (the ones that exist)."""
        out: dict[int, dict[str, Any]] = {}
        cols = (*DECISION_COLUMNS[:-1], "threshold")
        for k in range(0, len(tx_ids), 500):
            chunk = list(tx_ids[k : k + 500])
            sql = f"SELECT {', '.join(cols)} FROM decisions WHERE tx_id IN ({', '.join('?' * len(chunk))})"
            for row in self._db.query(sql, chunk):
                out[int(row[0])] = dict(zip(cols, row, strict=True))
        return out

    def put_many(self, rows: Sequence[DecisionRow]) -> int:
        """Store a batch in one transaction (INSERT OR IGNORE by tx_id); returns rows newly stored."""
        return self._db.insert_ignore("decisions", DECISION_COLUMNS, rows)

    def count(self) -> tuple[int, int]:
        """(rows, distinct tx ids). The primary key makes them equal by construction, so duplicates are never
        counted here: the fault checks count them on the ``decisions`` topic, where they can occur."""
        r = self._db.query("SELECT COUNT(*), COUNT(DISTINCT tx_id) FROM decisions")[0]
        return int(r[0]), int(r[1])

    def rows(self) -> int:
        """Rows stored, cheaply enough to poll while a scorer writes (sqlite: the largest rowid, O(log n); rows
        are never deleted, and an ignored insert takes no rowid)."""
        if self._db.pg:
            return int(self._db.query("SELECT COUNT(*) FROM decisions")[0][0])
        return int(self._db.query("SELECT COALESCE(MAX(rowid), 0) FROM decisions")[0][0])

    def get(self, tx_id: int) -> dict[str, Any] | None:
        rows = self._db.query(f"SELECT {', '.join(DECISION_COLUMNS[:-1])} FROM decisions WHERE tx_id = ?", (tx_id,))
        return dict(zip(DECISION_COLUMNS[:-1], rows[0], strict=True)) if rows else None

    def frame(self, *, with_features: bool = False, since_ts_s: int | None = None) -> pd.DataFrame:
        cols = DECISION_COLUMNS if with_features else DECISION_COLUMNS[:-1]
        sql = f"SELECT {', '.join(cols)} FROM decisions"
        params: tuple[Any, ...] = ()
        if since_ts_s is not None:
            sql += " WHERE ts_s >= ?"
            params = (since_ts_s,)
        return self._db.frame(sql, params)

    def close(self) -> None:
        self._db.close()


def features_matrix(blobs: Sequence[bytes], n_features: int) -> np.ndarray:
    """Stack stored float64 feature blobs into (N, F)."""
    return np.frombuffer(b"".join(blobs), dtype=np.float64).reshape(-1, n_features)


class ScoreStore:
    """``POST /score`` answers by transaction id: a retry gets the stored answer, never a second decision.

    ``request`` is the scored fields as the client sent them, so a tx_id reused for a different transaction is
    told apart from a retry; ``response`` is the exact JSON body answered the first time; ``features`` what the
    model saw. The customer's state after the transaction is written in the same transaction as the answer, so
    an API restarted after ``kill -9`` resumes every customer exactly where its last stored answer left it.
    """

    def __init__(self, url: str) -> None:
        self._db = _Sql(url)
        self._db.ddl(
            "CREATE TABLE IF NOT EXISTS score_answers (tx_id BIGINT PRIMARY KEY, request TEXT NOT NULL,"
            " response TEXT NOT NULL, decided_ms BIGINT NOT NULL, features BYTEA)"
        )
        self._db.ddl(_STATE_DDL)

    def get(self, tx_id: int) -> tuple[str, bytes] | None:
        rows = self._db.query("SELECT request, response FROM score_answers WHERE tx_id = ?", (tx_id,))
        return (str(rows[0][0]), str(rows[0][1]).encode()) if rows else None

    def put(self, tx_id: int, request: str, response: bytes, decided_ms: int, features: bytes, state: StateRow) -> bool:
        """Store the first answer for ``tx_id`` with the customer's new state; False (and nothing written) if an
        answer was already there (another worker's)."""
        answer = (tx_id, request, response.decode(), decided_ms, features)
        upsert = (
            "INSERT INTO customer_state (customer_id, part, state) VALUES (?, ?, ?)"
            " ON CONFLICT (customer_id) DO UPDATE SET part = excluded.part, state = excluded.state"
        )
        if self._db.pg:
            with self._db.conn, self._db.conn.cursor() as cur:
                cur.execute("INSERT INTO score_answers VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING", answer)
                if cur.rowcount != 1:
                    return False
                cur.execute(upsert.replace("?", "%s"), state)
                return True
        conn = self._db.conn
        conn.execute("BEGIN")
        try:
            inserted = conn.execute("INSERT OR IGNORE INTO score_answers VALUES (?, ?, ?, ?, ?)", answer).rowcount
            if inserted == 1:
                conn.execute(upsert, state)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return inserted == 1

    def customer_states(self) -> list[tuple[int, bytes]]:
        """Every customer state written with an answer (restored at start)."""
        return [(int(c), bytes(b)) for c, b in self._db.query("SELECT customer_id, state FROM customer_state")]

    def features(self) -> pd.DataFrame:
        """tx_id and the features each answer was computed from (float64 bytes)."""
        return self._db.frame("SELECT tx_id, features FROM score_answers")

    def close(self) -> None:
        self._db.close()


class LabelStore:
    """Matured labels keyed by tx id (a re-delivered label is a no-op)."""

    def __init__(self, url: str) -> None:
        self._db = _Sql(url)
        self._db.ddl(_LABELS_DDL)

    def put_many(self, rows: Sequence[LabelRow]) -> int:
        return self._db.insert_ignore("labels", LABEL_COLUMNS, rows)

    def count(self) -> int:
        return int(self._db.query("SELECT COUNT(*) FROM labels")[0][0])

    def matured_with_decisions(self, decisions_url: str, *, as_of_s: int) -> pd.DataFrame:
        """Labels known at ``as_of_s`` joined to the served features (sqlite stores in two files)."""
        if self._db.pg:
            return self._db.frame(
                "SELECT d.*, l.fraud, l.label_ts_s FROM decisions d JOIN labels l USING (tx_id)"
                " WHERE l.label_ts_s <= ?",
                (as_of_s,),
            )
        path = decisions_url.removeprefix("sqlite:///")
        self._db.conn.execute("ATTACH DATABASE ? AS dec", (path,))
        try:
            return self._db.frame(
                "SELECT d.*, l.fraud, l.label_ts_s FROM dec.decisions d JOIN labels l ON d.tx_id = l.tx_id"
                " WHERE l.label_ts_s <= ?",
                (as_of_s,),
            )
        finally:
            self._db.conn.execute("DETACH DATABASE dec")

    def close(self) -> None:
        self._db.close()
