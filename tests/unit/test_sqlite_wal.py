"""sqlite_wal.prepare: a new database shared by workers that open it at the same moment."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import aiosqlite
import pytest

from filterd import sqlite_wal
from tests.fixtures.sqlite import converting

SCHEMA = "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY);"


async def test_a_lock_another_worker_holds_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    other = converting(path)
    asyncio.get_running_loop().call_later(0.3, other.execute, "COMMIT")
    async with aiosqlite.connect(path, isolation_level=None, timeout=5) as db:
        # Without the retry, the first PRAGMA fails at once: SQLite does not wait here.
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await db.execute("PRAGMA journal_mode=WAL")
        started = time.monotonic()
        await sqlite_wal.prepare(db, SCHEMA, "NORMAL", timeout=5)
        assert time.monotonic() - started >= 0.1
    other.close()
    with closing(sqlite3.connect(path)) as fresh:
        assert fresh.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert fresh.execute("SELECT name FROM sqlite_master WHERE name = 't'").fetchone() == ("t",)


async def test_a_lock_held_past_the_timeout_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    other = converting(path)
    try:
        async with aiosqlite.connect(path, isolation_level=None, timeout=5) as db:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                await sqlite_wal.prepare(db, SCHEMA, "NORMAL", timeout=0.3)
    finally:
        other.execute("ROLLBACK")
        other.close()


async def test_any_other_failure_is_not_retried(tmp_path: Path) -> None:
    async with aiosqlite.connect(tmp_path / "shared.db", isolation_level=None) as db:
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="syntax error"):
            await sqlite_wal.prepare(db, "CREATE TABLE (", "NORMAL", timeout=5)
        assert time.monotonic() - started < 1


def test_busy_and_locked_are_told_from_other_errors() -> None:
    assert sqlite_wal.is_busy(sqlite3.OperationalError("database is locked"))
    assert sqlite_wal.is_busy(sqlite3.OperationalError("database table is busy"))
    assert not sqlite_wal.is_busy(sqlite3.OperationalError("disk I/O error"))
