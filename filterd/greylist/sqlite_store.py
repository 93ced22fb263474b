"""The embedded greylisting store: one SQLite file shared by every worker process.

Decisions read; sightings are written behind them. A decision reads the triplet's row,
and whether its client is auto-whitelisted, in one SELECT, then applies postgrey's rules
in Python (:func:`~filterd.greylist.store.advance`) -- to this worker's own newest state
of the triplet when it has sightings not written yet. The sighting itself is queued and
written within WRITE_DELAY, with every other sighting queued meanwhile, in one
transaction. Each is *replayed*: an upsert applies the same rules to the row as it is
then, so sightings from several workers merge as if applied one by one in the order
they were written, and nothing a worker read earlier is ever written back.

Why: a commit (locks, WAL frames, the WAL index) costs twice the statement, and with a
write and commit per request, storage was the largest part of a new triplet's cost.
What it costs: another worker learns of a sighting up to WRITE_DELAY late (a retry that
soon is deferred either way, since greylist_delay is minutes), and a crash forgets at
most WRITE_DELAY of sightings (those triplets are greylisted once more; ``close``
writes everything).

WAL mode with synchronous=NORMAL: readers never wait for the writer, and a commit costs
a write(2), not an fsync. Each read transaction takes and drops a lock on the shared
WAL index with two fcntl(2) calls, more than half the cost of a read; so the reads of
READ_SPAN share one read transaction. What another worker wrote is then seen up to
READ_SPAN later (on top of its WRITE_DELAY); a write of this store's own ends the read
transaction first, so this worker always reads what it wrote. Ending it every
READ_SPAN also lets checkpoints catch up and the WAL file start over, as with short
reads. The reads and writes run on a second, non-waiting connection
in the event-loop thread (a hop to aiosqlite's thread and back costs more than the
statement). That connection never waits (busy timeout 0) and never checkpoints
(``wal_autocheckpoint = 0``), so it cannot block the loop on another process's lock or
on an fsync: when the database is busy, the same work goes through aiosqlite, whose
thread may wait; checkpoints run there too, every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Sequence
from typing import Any, cast

import aiosqlite

from filterd import sqlite_wal
from filterd.greylist.store import (
    CleanupStats,
    ClientState,
    GreylistStore,
    Sighting,
    Timing,
    TripletState,
    advance,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS triplet (
    key    TEXT PRIMARY KEY,        -- lower-case "client network/sender/recipient"
    first  INTEGER NOT NULL,        -- first seen (unix time)
    last   INTEGER NOT NULL,        -- last seen
    passed INTEGER NOT NULL         -- unused (0 on insert): derived from first and last
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

# ?1 triplet key, ?2 client, ?3 now, ?4 max age, ?5 awl threshold (0: no auto-whitelist):
# the triplet's (first, last) -- NULLs when unknown -- and whether the client is
# auto-whitelisted.
_READ = """
SELECT t.first, t.last, ?5 > 0 AND EXISTS (
    SELECT 1 FROM client AS c WHERE c.key = ?2 AND c.count >= ?5 AND ?3 - c.last <= ?4)
FROM (SELECT 1) LEFT JOIN triplet AS t ON t.key = ?1
"""

# ?1 now, ?2 delay, ?3 retry window, ?4 max age, ?5 key: one sighting, replayed on the
# row as it is now by the rules of store.advance(). (Whether the client was
# auto-whitelisted was settled when the sighting was decided: such sightings are not
# queued.) In the SET clause every column name refers to the row as it was before.
_REPLAY = """
INSERT INTO triplet (key, first, last, passed) VALUES (?5, ?1, ?1, 0)
ON CONFLICT (key) DO UPDATE SET
    first = CASE
        WHEN ?1 - last > ?4 THEN ?1
        WHEN last - first < ?2 AND ?1 - first > ?3 THEN ?1
        WHEN first > ?1 THEN ?1
        ELSE first END,
    last = ?1
"""

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
WRITE_DELAY = 0.1  # seconds a sighting may wait to be written with others
WRITE_AT = 500  # sightings queued that are written at once (about 1 ms of work for the loop)
READ_SPAN = 0.01  # seconds of reads that share one read transaction

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
        self._loop: asyncio.AbstractEventLoop | None = None  # get_running_loop() costs a getpid()
        self._sql: dict[tuple[str, int], str] = {}
        self._checkpointer: asyncio.Task[None] | None = None
        self._dirty = False
        #: Sightings not written yet, as _REPLAY's parameters, in the order they were seen.
        self._queued: list[tuple[int, int, int, int, str]] = []
        #: Triplet key -> (first, last) after this worker's newest sighting not written yet;
        #: ``_writing`` holds the same for sightings in aiosqlite's thread right now.
        self._latest: dict[str, tuple[int, int]] = {}
        self._writing: dict[str, tuple[int, int]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._writer: asyncio.Task[None] | None = None
        self._reading = False  # a read transaction is open on the fast connection
        #: How often the non-waiting path found the database busy (the work then went
        #: through aiosqlite): a figure for operators and tests.
        self.busy_fallbacks = 0

    async def start(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        # Autocommit: each statement is its own transaction and costs one thread hop (no
        # separate COMMIT call).
        self._db = await sqlite_wal.connect(self.path, _SCHEMA, synchronous="NORMAL",
                                            timeout=self._busy_timeout, cached_statements=512)
        fast = sqlite3.connect(self.path, isolation_level=None, timeout=0, cached_statements=512)
        fast.execute("PRAGMA synchronous=NORMAL")
        fast.execute("PRAGMA wal_autocheckpoint=0")
        self._fast = fast
        self._loop = asyncio.get_running_loop()
        self._checkpointer = self._loop.create_task(self._checkpoint_loop())

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
        """A write that needs its result: non-waiting connection first, aiosqlite when
        busy. Both auto-whitelist writes go this way, so one process's writes stay in
        order (the next decision reads the count the previous pass wrote)."""
        db = self._conn()
        self._end_read()
        rows = self._run_fast(sql, params)
        if rows is None:
            rows = await _fetch_all(db, sql, params)
        return rows

    def _run_fast(self, sql: str, params: Sequence[object]) -> list[tuple] | None:
        """Run on the non-waiting connection; None if the database is busy right now."""
        fast = self._fast
        assert fast is not None
        try:
            rows = fast.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if not sqlite_wal.is_busy(exc):
                raise
            self.busy_fallbacks += 1
            return None
        return rows

    async def sync(self) -> None:
        self._write_queued()
        while self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
            self._write_queued()

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            self._checkpointer = None
        if self._fast is not None:
            self._end_read()
            await self.sync()
            self._fast.close()
            self._fast = None
            if self.busy_fallbacks:
                log.info("greylist: %s was busy %d times; the work waited in a thread",
                         self.path, self.busy_fallbacks)
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError(f"greylist store {self.path} is not open")
        return self._db

    def _text(self, kind: str, n: int) -> str:
        """SQL text for ``n`` rows; cached, so sqlite3's statement cache can reuse it."""
        sql = self._sql.get((kind, n))
        if sql is None:
            if kind == "count":
                sql = _COUNT.format(rows=", ".join(f"(?{3 + i})" for i in range(n)))
            else:
                sql = _TOUCH.format(rows=", ".join(f"?{2 + i}" for i in range(n)))
            self._sql[(kind, n)] = sql
        return sql

    # -- decisions ----------------------------------------------------------------------
    def see_now(self, sightings: Sequence[Sighting], now: int,
                timing: Timing) -> list[TripletState | None] | None:
        if self._fast is None:
            return None  # not open: see() reports it
        rows = []
        for s in sightings:
            found = self._read(_read_params(s, now, timing))
            if found is None:
                return None
            rows.append(found[0])  # _READ always yields one row
        return self._decide(sightings, rows, now, timing)

    def _read(self, params: tuple[object, ...]) -> list[tuple] | None:
        """_READ on the fast connection, inside the read transaction of the last
        READ_SPAN (see the module's text). None if the database is busy."""
        if not self._reading:
            assert self._fast is not None and self._loop is not None  # see_now checked
            self._fast.execute("BEGIN")  # deferred: the first SELECT takes the snapshot
            self._reading = True
            # A write may end it sooner; then this timer ends a later one early: harmless.
            self._loop.call_later(READ_SPAN, self._end_read)
        return self._run_fast(_READ, params)

    def _end_read(self) -> None:
        """End the read transaction, if one is open (after READ_SPAN, before any write)."""
        if self._reading:
            self._reading = False
            fast = self._fast
            if fast is not None and fast.in_transaction:
                try:
                    fast.execute("COMMIT")
                except sqlite3.Error:  # nothing to keep in a read transaction
                    fast.execute("ROLLBACK")

    async def see(self, sightings: Sequence[Sighting], now: int,
                  timing: Timing) -> list[TripletState | None]:
        db = self._conn()
        states = self.see_now(sightings, now, timing)
        if states is not None:
            return states
        rows = [(await _fetch_all(db, _READ, _read_params(s, now, timing)))[0]
                for s in sightings]
        return self._decide(sightings, rows, now, timing)

    def _decide(self, sightings: Sequence[Sighting], rows: list[tuple], now: int,
                timing: Timing) -> list[TripletState | None]:
        """Apply each sighting to the newest state this worker knows, and queue it."""
        states: list[TripletState | None] = []
        for s, (first, last, whitelisted) in zip(sightings, rows):
            if whitelisted:
                states.append(None)  # the triplet is left alone: nothing is queued
                continue
            before = self._latest.get(s.key) or self._writing.get(s.key)
            if before is None and first is not None:
                before = (first, last)
            state = advance(before, now, timing)
            states.append(state)
            self._latest[s.key] = (state.first, now)
            self._queued.append((now, timing.delay, timing.retry_window, timing.max_age, s.key))
        if len(self._queued) >= WRITE_AT:
            self._write_queued()
        elif self._queued and self._timer is None:
            assert self._loop is not None
            self._timer = self._loop.call_later(WRITE_DELAY, self._write_queued)
        return states

    # -- writing sightings behind the decisions -----------------------------------------
    def _write_queued(self) -> None:
        """Replay every queued sighting in one transaction, or hand them to the thread."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._queued or self._fast is None:
            return
        if self._writer is not None:  # one write at a time keeps the order
            assert self._loop is not None
            self._timer = self._loop.call_later(WRITE_DELAY, self._write_queued)
            return
        batch, self._queued = self._queued, []
        latest, self._latest = self._latest, {}
        fast = self._fast
        self._end_read()
        try:
            fast.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not sqlite_wal.is_busy(exc):
                self._lost(len(batch), exc)
                return
            self.busy_fallbacks += 1
            self._writing = latest
            assert self._loop is not None
            self._writer = self._loop.create_task(self._write_in_thread(batch))
            return
        try:
            fast.executemany(_REPLAY, batch)
            fast.execute("COMMIT")
            self._dirty = True
        except sqlite3.Error as exc:
            self._lost(len(batch), exc)
            if fast.in_transaction:
                fast.execute("ROLLBACK")

    def _lost(self, count: int, exc: Exception) -> None:
        # The replies are out; losing these sightings only means those triplets are
        # greylisted once more when they retry.
        log.error("greylist: writing %d sightings to %s failed: %s; those triplets will be "
                  "greylisted again", count, self.path, exc)

    async def _write_in_thread(self, batch: list[tuple[int, int, int, int, str]]) -> None:
        """The database is busy: replay in aiosqlite's thread, which may wait. Each
        sighting commits alone there, so no other work of this store's ever runs inside
        a transaction of these."""
        try:
            await self._conn().executemany(_REPLAY, batch)
            self._dirty = True
        except Exception as exc:  # noqa: BLE001 - logged, and the service goes on
            self._lost(len(batch), exc)
        finally:
            self._writing = {}
            self._writer = None

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
            rows = await _fetch_all(db, chunk_end, (after, _CHUNK))
            upto = rows[0][0] if rows else None
            if upto is None:
                return deleted
            deleted += len(await _fetch_all(db, delete, (after, upto, *args)))
            after = upto


def _read_params(s: Sighting, now: int, timing: Timing) -> tuple[object, ...]:
    return (s.key, s.client, now, timing.max_age, timing.awl_clients)


async def _fetch_all(db: aiosqlite.Connection, sql: str,
                     params: Sequence[object]) -> list[tuple[Any, ...]]:
    """aiosqlite's ``execute_fetchall`` as what it returns here: a list of tuples (it is
    typed as rows; this store sets no row factory)."""
    return cast("list[tuple[Any, ...]]", list(await db.execute_fetchall(sql, params)))
