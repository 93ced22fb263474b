"""The SQLite store's fast path: writes shared per event-loop turn, busy database fallback."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from filterd.greylist.sqlite_store import SqliteGreylistStore
from filterd.greylist.store import Sighting, Timing

NOW = 1_700_000_000
TIMING = Timing(delay=300, retry_window=2 * 86400, max_age=35 * 86400, awl_clients=5)


def sighting(n: int) -> Sighting:
    return Sighting(f"192.0.2.0/s{n}@sender.test/r@example.org", "192.0.2.10")


def other_worker_sees(db: Path) -> list[str]:
    """The triplet keys another process reads right now."""
    with sqlite3.connect(db) as conn:
        return [k for (k,) in conn.execute("SELECT key FROM triplet ORDER BY key")]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteGreylistStore]:
    s = SqliteGreylistStore(str(tmp_path / "g.db"), busy_timeout=5)
    await s.start()
    yield s
    await s.close()


async def test_one_write_in_a_turn_is_committed_at_once(store: SqliteGreylistStore,
                                                        tmp_path: Path) -> None:
    [state] = store.see_now([sighting(1)], NOW, TIMING)  # type: ignore[misc]
    assert state is not None and state.first == NOW and not state.passed
    assert other_worker_sees(tmp_path / "g.db") == [sighting(1).key]


async def test_writes_of_one_busy_turn_share_a_commit_at_the_next_turn(
        store: SqliteGreylistStore, tmp_path: Path) -> None:
    for n in (1, 2, 3):  # three clients answered in the same turn
        assert store.see_now([sighting(n)], NOW, TIMING) is not None
    assert other_worker_sees(tmp_path / "g.db") == [sighting(1).key]  # 2 and 3: pending
    await asyncio.sleep(0)  # the next turn commits
    assert other_worker_sees(tmp_path / "g.db") == [sighting(n).key for n in (1, 2, 3)]


async def test_sync_commits_the_turn_now(store: SqliteGreylistStore, tmp_path: Path) -> None:
    for n in (1, 2):
        store.see_now([sighting(n)], NOW, TIMING)
    await store.sync()
    assert len(other_worker_sees(tmp_path / "g.db")) == 2


async def test_busy_database_falls_back_to_the_waiting_connection(
        store: SqliteGreylistStore, tmp_path: Path) -> None:
    other = sqlite3.connect(tmp_path / "g.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another worker is writing
    try:
        assert store.see_now([sighting(1)], NOW, TIMING) is None  # never waits
        assert store.busy_fallbacks == 1
        asyncio.get_running_loop().call_later(0.05, other.execute, "COMMIT")
        [state] = await store.see([sighting(1)], NOW, TIMING)  # waits in aiosqlite's thread
        assert state is not None and state.first == NOW
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
    assert other_worker_sees(tmp_path / "g.db") == [sighting(1).key]


async def test_a_turn_that_cannot_begin_its_shared_transaction_falls_back(
        store: SqliteGreylistStore, tmp_path: Path) -> None:
    assert store.see_now([sighting(1)], NOW, TIMING) is not None  # committed at once
    other = sqlite3.connect(tmp_path / "g.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        assert store.see_now([sighting(2)], NOW, TIMING) is None  # BEGIN was busy
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.see_now([sighting(2)], NOW, TIMING) is not None  # and now it can
    await store.sync()
    assert len(other_worker_sees(tmp_path / "g.db")) == 2
