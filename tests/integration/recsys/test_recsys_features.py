"""The Feast online store of live sessions, sqlite and a real redis-server: what the stream pushes is what the
API reads, for integer and string ids, through both the fast reader and Feast's public API."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from systems.recsys.feature_store import SessionReader, apply_definitions, push_sessions, read_session
from systems.recsys.settings import RecsysSettings

pytestmark = pytest.mark.integration

ROWS = [
    {"user_id": 42, "session_items": [50, "sku-7"], "last_event_ms": 5},
    {"user_id": "u-x", "session_items": ["American President, The (1995)"], "last_event_ms": 9},
]


def _roundtrip(s: RecsysSettings) -> Any:
    store = apply_definitions(s)
    push_sessions(store, ROWS)
    reader = SessionReader(store)
    for r in ROWS:
        want = [str(i) for i in r["session_items"]]
        assert reader.read(r["user_id"]) == read_session(store, r["user_id"]) == want
        assert reader.read(str(r["user_id"])) == want  # keys are text: 42 and "42" are one shopper
    assert reader.read("nobody") == [] and read_session(store, "nobody") == []
    push_sessions(store, [{"user_id": 42, "session_items": ["sku-8"], "last_event_ms": 6}])  # an upsert
    assert reader.read(42) == ["sku-8"]
    return reader


def test_sqlite_session_store_in_wal_mode(tmp_path: Path, make_settings: Any) -> None:
    s = make_settings(RecsysSettings, tmp_path)
    reader = _roundtrip(s)
    assert not reader.is_async
    with sqlite3.connect(s.feast_dir / "online.db") as db:  # a writer (the stream) never blocks a reader
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_redis_session_store(tmp_path: Path, make_settings: Any, redis_server: str) -> None:
    s = make_settings(RecsysSettings, tmp_path, online_store="redis", redis_url=redis_server)
    reader = _roundtrip(s)
    assert reader.is_async and asyncio.run(reader.read_async("u-x")) == ["American President, The (1995)"]
