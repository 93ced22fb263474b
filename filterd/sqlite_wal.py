"""Opening a SQLite database that several worker processes share, in WAL mode.

Workers start together, so a new database file is converted to WAL by whichever gets
there first. One that tries at the same moment is told "database is locked" at once:
SQLite does not wait for a lock where waiting could deadlock, whatever the busy
timeout. :func:`prepare` tries again until its timeout has passed.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import aiosqlite


def is_busy(exc: sqlite3.OperationalError) -> bool:
    """Another connection holds the lock (as opposed to a real failure)."""
    text = str(exc)
    return "locked" in text or "busy" in text


async def connect(path: str | Path, schema: str, *, synchronous: str,
                  timeout: float, cached_statements: int = 128) -> aiosqlite.Connection:
    """An autocommit aiosqlite connection (each statement its own transaction) to the
    shared database at ``path``, in WAL mode with ``schema`` in place. ``timeout`` is both
    the busy timeout of the connection and how long :func:`prepare` keeps trying."""
    db = await aiosqlite.connect(path, isolation_level=None, timeout=timeout,
                                 cached_statements=cached_statements)
    try:
        await prepare(db, schema, synchronous, timeout)
    except BaseException:
        await db.close()
        raise
    return db


async def prepare(db: aiosqlite.Connection, schema: str, synchronous: str, timeout: float) -> None:
    """WAL mode, ``PRAGMA synchronous``, and ``schema`` (idempotent statements), retried
    while another process holds the lock, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute(f"PRAGMA synchronous={synchronous}")
            await db.executescript(schema)
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(0.05)
