"""The embedded greylisting store: one SQLite file shared by every worker process.

Each decision is one SQL statement -- a multi-row upsert whose ``ON CONFLICT DO UPDATE``
computes postgrey's new state from the old row and whose ``RETURNING`` hands it back --
so it is atomic across processes without explicit transactions. WAL mode with
synchronous=NORMAL: readers never wait for the writer, and a commit costs a write(2), not
an fsync (a power cut may forget the last moments of greylisting state, which only means
a few extra deferrals).

The decision statement runs first on a second, non-waiting connection in the event-loop
thread: an uncontended commit costs ~20 µs, while a hop to aiosqlite's thread and back
costs more than the statement itself. That connection never waits (busy timeout 0) and
never checkpoints (``wal_autocheckpoint = 0``), so it cannot block the loop on another
process's lock or on an fsync: when the database is busy, the same statement goes
through aiosqlite, whose thread may wait; checkpoints run there too, every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Sequence

import aiosqlite

from filterd.greylist.store import (
    CleanupStats,
    ClientState,
    GreylistStore,
    Sighting,
    Timing,
    TripletState,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS triplet (
    key    TEXT PRIMARY KEY,        -- lower-case "client network/sender/recipient"
    first  INTEGER NOT NULL,        -- first seen (unix time)
    last   INTEGER NOT NULL,        -- last seen
    passed INTEGER NOT NULL         -- 1: had passed before the last sighting
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS client (
    key    TEXT PRIMARY KEY,        -- client address
    count  INTEGER NOT NULL,        -- greylisting passes counted (at most one per hour)
    last   INTEGER NOT NULL         -- when last counted or refreshed
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name   TEXT PRIMARY KEY,
    value  INTEGER NOT NULL
) WITHOUT ROWID;
"""

# ?1 now, ?2 delay, ?3 retry window, ?4 max age, ?5 awl threshold; the rows follow.
# In the SET clause every column name refers to the row as it was before the update.
_SEE = """
INSERT INTO triplet (key, first, last, passed)
SELECT v.column1, ?1, ?1, 0 FROM (VALUES {rows}) AS v
WHERE {awl_filter}
ON CONFLICT (key) DO UPDATE SET
    passed = (last - first >= ?2 AND ?1 - last <= ?4),
    first = CASE
        WHEN ?1 - last > ?4 THEN ?1
        WHEN last - first < ?2 AND ?1 - first > ?3 THEN ?1
        WHEN first > ?1 THEN ?1
        ELSE first END,
    last = ?1
RETURNING key, first, passed
"""
_NOT_AWL = ("NOT EXISTS (SELECT 1 FROM client AS c WHERE c.key = v.column2 "
            "AND c.count >= ?5 AND ?1 - c.last <= ?4)")

# ?1 now, ?2 max age. postgrey counts a pass when the client was never counted or
# last counted an hour ago or more.
_COUNT = """
INSERT INTO client (key, count, last)
SELECT column1, 1, ?1 FROM (VALUES {rows}) WHERE true
ON CONFLICT (key) DO UPDATE SET
    count = CASE WHEN ?1 - last > ?2 THEN 1 ELSE count + 1 END,
    last = ?1
WHERE ?1 >= last + 3600
RETURNING key, count, last
"""

# ?1 now. postgrey refreshes a whitelisted client once an hour (or when last is in the
# future); the row is returned either way so the caller learns when to refresh next.
_TOUCH = """
UPDATE client SET
    count = CASE WHEN ?1 >= last + 3600 OR last > ?1 THEN count + 1 ELSE count END,
    last = CASE WHEN ?1 >= last + 3600 OR last > ?1 THEN ?1 ELSE last END
WHERE key IN ({rows})
RETURNING key, count, last
"""

_CLAIM_CLEANUP = """
INSERT INTO meta (name, value) VALUES ('last_cleanup', ?1)
ON CONFLICT (name) DO UPDATE SET value = ?1 WHERE value <= ?1 - ?2 OR value > ?1
RETURNING value
"""

log = logging.getLogger("filterd.greylist")

CHECKPOINT_INTERVAL = 5.0  # seconds between WAL checkpoints from aiosqlite's thread

_CHUNK = 2000
_CHUNK_END = "SELECT max(key) FROM (SELECT key FROM {table} WHERE key > ?1 ORDER BY key LIMIT ?2)"
_DELETE_TRIPLETS = """
DELETE FROM triplet WHERE key > ?1 AND key <= ?2
AND (?3 - last > ?4 OR (last - first < ?5 AND ?3 - last > ?6))
RETURNING 1
"""
_DELETE_CLIENTS = ("DELETE FROM client WHERE key > ?1 AND key <= ?2 AND ?3 - last > ?4 "
                   "RETURNING 1")


class SqliteGreylistStore(GreylistStore):
    """Greylisting state in an SQLite file (``$data_directory/greylist.db``)."""

    def __init__(self, path: str, busy_timeout: float = 30.0):
        self.path = path
        self._busy_timeout = busy_timeout
        self._db: aiosqlite.Connection | None = None
        self._fast: sqlite3.Connection | None = None
        self._sql: dict[tuple[str, int, bool], str] = {}
        self._checkpointer: asyncio.Task[None] | None = None
        self._dirty = False
        self._turn_writes = 0  # writes on the fast connection in this event-loop turn
        #: How often the non-waiting path found the database busy (the statement then
        #: went through aiosqlite): a figure for operators and tests.
        self.busy_fallbacks = 0

    async def start(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        # isolation_level=None: autocommit, so each statement is its own transaction and
        # costs one thread hop (no separate COMMIT call).
        db = await aiosqlite.connect(self.path, isolation_level=None,
                                     timeout=self._busy_timeout, cached_statements=512)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.executescript(_SCHEMA)
        except BaseException:
            await db.close()
            raise
        self._db = db
        fast = sqlite3.connect(self.path, isolation_level=None, timeout=0, cached_statements=512)
        fast.execute("PRAGMA synchronous=NORMAL")
        fast.execute("PRAGMA wal_autocheckpoint=0")
        self._fast = fast
        self._checkpointer = asyncio.get_running_loop().create_task(self._checkpoint_loop())

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            if self._dirty and self._db is not None:
                self._dirty = False
                try:
                    await self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    log.warning("greylist: WAL checkpoint of %s failed: %s", self.path, exc)

    async def _execute(self, sql: str, params: Sequence[object]) -> list[tuple]:
        """Non-waiting connection first, aiosqlite when busy. Decisions and auto-whitelist
        writes both go this way, so one process's writes stay in order (the next
        decision sees the count the previous pass wrote)."""
        db = self._conn()
        rows = self._run_fast(sql, params)
        if rows is None:
            rows = list(await db.execute_fetchall(sql, params))
        return rows

    def _run_fast(self, sql: str, params: Sequence[object]) -> list[tuple] | None:
        """Run on the non-waiting connection; None if the database is busy right now.

        A commit costs about twice a statement (locks, WAL frames, the WAL index). The
        first write of an event-loop turn commits at once -- with one request per turn
        there is nothing to share it with -- but when a second one comes in the same
        turn (many clients at once), it opens a transaction that the rest of the turn
        joins and the next turn commits, so a busy worker commits once per turn.
        """
        fast = self._fast
        assert fast is not None
        try:
            if self._turn_writes == 1:
                fast.execute("BEGIN IMMEDIATE")
            rows = fast.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            self.busy_fallbacks += 1
            return None
        self._dirty = True
        self._turn_writes += 1
        if self._turn_writes == 1:
            asyncio.get_running_loop().call_soon(self._end_turn)
        return rows

    async def sync(self) -> None:
        self._end_turn()

    def _end_turn(self) -> None:
        """Commit the turn's shared transaction, if one was opened."""
        self._turn_writes = 0
        if self._fast is not None and self._fast.in_transaction:
            try:
                self._fast.execute("COMMIT")
            except sqlite3.Error as exc:
                # The replies are out; losing this turn's greylisting state only means
                # those triplets are greylisted once more when they retry.
                log.error("greylist: commit to %s failed: %s", self.path, exc)
                if self._fast.in_transaction:
                    self._fast.execute("ROLLBACK")

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            self._checkpointer = None
        if self._fast is not None:
            self._end_turn()
            self._fast.close()
            self._fast = None
            if self.busy_fallbacks:
                log.info("greylist: %d statements found %s busy and waited in a thread",
                         self.busy_fallbacks, self.path)
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError(f"greylist store {self.path} is not open")
        return self._db

    def _text(self, kind: str, n: int, awl: bool = False) -> str:
        """SQL text for ``n`` rows; cached, so sqlite3's statement cache can reuse it."""
        sql = self._sql.get((kind, n, awl))
        if sql is None:
            if kind == "see":
                rows = ", ".join(f"(?{6 + 2 * i}, ?{7 + 2 * i})" for i in range(n))
                sql = _SEE.format(rows=rows, awl_filter=_NOT_AWL if awl else "true")
            elif kind == "count":
                sql = _COUNT.format(rows=", ".join(f"(?{3 + i})" for i in range(n)))
            else:
                sql = _TOUCH.format(rows=", ".join(f"?{2 + i}" for i in range(n)))
            self._sql[(kind, n, awl)] = sql
        return sql

    async def see(self, sightings: Sequence[Sighting], now: int,
                  timing: Timing) -> list[TripletState | None]:
        if not sightings:
            return []
        rows = await self._execute(*self._see_statement(sightings, now, timing))
        return _states(sightings, rows)

    def _see_statement(self, sightings: Sequence[Sighting], now: int,
                       timing: Timing) -> tuple[str, list[object]]:
        params: list[object] = [now, timing.delay, timing.retry_window, timing.max_age,
                                timing.awl_clients]
        for s in sightings:
            params.append(s.key)
            params.append(s.client)
        return self._text("see", len(sightings), timing.awl_clients > 0), params

    def see_now(self, sightings: Sequence[Sighting], now: int,
                timing: Timing) -> list[TripletState | None] | None:
        if self._fast is None:
            return None  # not open: see() reports it
        rows = self._run_fast(*self._see_statement(sightings, now, timing))
        return None if rows is None else _states(sightings, rows)

    async def count_passes(self, clients: Sequence[str], now: int,
                           timing: Timing) -> list[ClientState | None]:
        if not clients:
            return []
        sql = self._text("count", len(clients))
        rows = await self._execute(sql, [now, timing.max_age, *clients])
        states = {key: ClientState(count, last) for key, count, last in rows}
        return [states.get(c) for c in clients]

    async def touch_clients(self, clients: Sequence[str], now: int) -> list[ClientState | None]:
        if not clients:
            return []
        unique = list(dict.fromkeys(clients))
        rows = await self._execute(self._text("touch", len(unique)), [now, *unique])
        states = {key: ClientState(count, last) for key, count, last in rows}
        return [states.get(c) for c in clients]

    async def cleanup(self, now: int, timing: Timing, interval: int) -> CleanupStats | None:
        db = self._conn()
        if not await db.execute_fetchall(_CLAIM_CLEANUP, (now, interval)):
            return None
        triplets = await self._delete_chunked(
            "triplet", _DELETE_TRIPLETS,
            (now, timing.max_age, timing.delay, timing.retry_window))
        clients = await self._delete_chunked("client", _DELETE_CLIENTS, (now, timing.max_age))
        return CleanupStats(triplets, clients)

    async def _delete_chunked(self, table: str, delete: str, args: tuple[int, ...]) -> int:
        """Delete in key ranges of a few thousand rows, so request batches interleave."""
        db = self._conn()
        chunk_end = _CHUNK_END.format(table=table)
        after = ""
        deleted = 0
        while True:
            rows = await db.execute_fetchall(chunk_end, (after, _CHUNK))
            upto = rows[0][0] if rows else None
            if upto is None:
                return deleted
            deleted += len(await db.execute_fetchall(delete, (after, upto, *args)))
            after = upto


def _states(sightings: Sequence[Sighting], rows: list[tuple]) -> list[TripletState | None]:
    """Each sighting's state from the upsert's RETURNING rows (None: auto-whitelisted)."""
    states = {key: TripletState(first, bool(passed)) for key, first, passed in rows}
    return [states.get(s.key) for s in sightings]
