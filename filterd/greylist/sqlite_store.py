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
on an fsync; checkpoints run in aiosqlite's thread, every few seconds.

Nothing waits for another process's lock for long (another process holding the write
lock used to stall a worker for 54 s and lose the sightings made meanwhile). A write
that finds the database locked is not waited for: sightings stay queued (at most
MAX_QUEUED, the oldest dropped beyond that, with an error) and are tried again after
a growing pause of up to RETRY_MAX; auto-whitelist writes raise StoreBusy and their
caller keeps them for later the same way. A read that finds the database busy (rare in
WAL mode) goes through aiosqlite, whose thread waits at most LOCK_WAIT.

A damaged database (not a database, malformed pages) or one deleted or replaced while
in use is reported through ``on_damaged``: the worker stops and the master repairs it
(:meth:`SqliteGreylistStore.verify`: the damaged file is moved aside, next to it, and
a new one is made -- greylisting state is only a cache of whom to trust, so mail is
delayed once more, never lost) before starting a new worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, cast

import aiosqlite

from filterd import sqlite_wal
from filterd.greylist.store import (
    CleanupStats,
    ClientState,
    GreylistStore,
    Sighting,
    StoreBusy,
    StoreUnavailable,
    Timing,
    TripletState,
    advance,
)
from filterd.log import RateLimitedLog

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
_limited = RateLimitedLog(log)

CHECKPOINT_INTERVAL = 5.0  # seconds between WAL checkpoints from aiosqlite's thread
LOCK_WAIT = 0.25  # longest wait for another process's lock (aiosqlite's busy timeout)
RETRY_MAX = 1.0  # longest pause before trying a locked write again
MAX_QUEUED = 100_000  # sightings kept while the database stays locked (some 20 MB)
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
        #: Triplet key -> (first, last) after this worker's newest sighting not written yet.
        self._latest: dict[str, tuple[int, int]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._retry_delay = WRITE_DELAY  # grows while the database stays locked
        self._reading = False  # a read transaction is open on the fast connection
        self._identity: tuple[int, int] | None = None  # (device, inode) of the open file
        self._damage: str | None = None  # reported once through on_damaged
        #: How often the non-waiting path found the database busy (a read then went
        #: through aiosqlite, a write was tried again later): a figure for operators and tests.
        self.busy_fallbacks = 0

    async def start(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        # Autocommit: each statement is its own transaction and costs one thread hop (no
        # separate COMMIT call).
        self._db = await sqlite_wal.connect(self.path, _SCHEMA, synchronous="NORMAL",
                                            timeout=self._busy_timeout, cached_statements=512)
        # The start may wait for another worker creating the file; serving never waits long.
        await self._db.execute(f"PRAGMA busy_timeout = {int(LOCK_WAIT * 1000)}")
        self._identity = _identity(self.path)
        fast = sqlite3.connect(self.path, isolation_level=None, timeout=0, cached_statements=512)
        fast.execute("PRAGMA synchronous=NORMAL")
        fast.execute("PRAGMA wal_autocheckpoint=0")
        self._fast = fast
        self._loop = asyncio.get_running_loop()
        self._checkpointer = self._loop.create_task(self._checkpoint_loop())

    async def _checkpoint_loop(self) -> None:
        """Checkpoint the WAL every few seconds, and notice a database file that was
        deleted or replaced under the running workers (one stat(2) each time)."""
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            try:
                identity = _identity(self.path)
            except OSError as exc:
                self._damaged(f"{self.path} has gone while in use ({exc.strerror or exc})")
                continue
            if identity != self._identity:
                self._damaged(f"{self.path} was replaced by another file while in use")
                continue
            if self._dirty and self._db is not None:
                self._dirty = False
                try:
                    await self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    self._check(exc)
                    log.warning("greylist: WAL checkpoint of %s failed: %s", self.path, exc)

    def _check(self, exc: BaseException) -> None:
        """Report ``exc`` through on_damaged if it says the file is damaged."""
        if isinstance(exc, sqlite3.DatabaseError) and is_damage(exc):
            self._damaged(f"{self.path} is damaged ({exc})")

    def _damaged(self, what: str) -> None:
        if self._damage is None:
            self._damage = what
            log.error("greylist: %s", what)
            if self.on_damaged is not None:
                self.on_damaged(what)

    async def _execute(self, sql: str, params: Sequence[object]) -> list[tuple]:
        """A write that needs its result, on the non-waiting connection; StoreBusy when
        another process holds the lock (the caller keeps the work for later). Both
        auto-whitelist writes go this way, so one process's writes stay in order (the
        next decision reads the count the previous pass wrote)."""
        self._conn()
        self._end_read()
        rows = self._run_fast(sql, params)
        if rows is None:
            raise StoreBusy(f"{self.path} is locked by another process")
        return rows

    def _run_fast(self, sql: str, params: Sequence[object]) -> list[tuple] | None:
        """Run on the non-waiting connection; None if the database is busy right now."""
        fast = self._fast
        assert fast is not None
        try:
            rows = fast.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if not sqlite_wal.is_busy(exc):
                self._check(exc)
                raise
            self.busy_fallbacks += 1
            return None
        except sqlite3.DatabaseError as exc:
            self._check(exc)
            raise
        return rows

    async def sync(self, patience: float | None = None) -> None:
        """Write every queued sighting now. While another process holds the lock this
        tries again for up to ``patience`` seconds (default: the busy timeout), then
        gives them up with an error: it is for shutting down and tests, never for a
        request."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._busy_timeout if patience is None else patience)
        self._write_queued()
        while self._queued and self._fast is not None and loop.time() < deadline:
            await asyncio.sleep(0.05)
            self._write_queued()
        if self._queued:
            self._lost(len(self._queued), f"{self.path} is still locked by another process")
            self._queued, self._latest = [], {}
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

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
        try:
            rows = [(await _fetch_all(db, _READ, _read_params(s, now, timing)))[0]
                    for s in sightings]
        except sqlite3.DatabaseError as exc:
            self._check(exc)
            raise
        return self._decide(sightings, rows, now, timing)

    def _decide(self, sightings: Sequence[Sighting], rows: list[tuple], now: int,
                timing: Timing) -> list[TripletState | None]:
        """Apply each sighting to the newest state this worker knows, and queue it."""
        states: list[TripletState | None] = []
        for s, (first, last, whitelisted) in zip(sightings, rows):
            if whitelisted:
                states.append(None)  # the triplet is left alone: nothing is queued
                continue
            before = self._latest.get(s.key)
            if before is None and first is not None:
                before = (first, last)
            state = advance(before, now, timing)
            states.append(state)
            self._latest[s.key] = (state.first, now)
            self._queued.append((now, timing.delay, timing.retry_window, timing.max_age, s.key))
        if len(self._queued) >= WRITE_AT and self._retry_delay == WRITE_DELAY:
            self._write_queued()  # (not while the database is locked: the timer retries)
        elif self._queued and self._timer is None:
            assert self._loop is not None
            self._timer = self._loop.call_later(WRITE_DELAY, self._write_queued)
        return states

    # -- writing sightings behind the decisions -----------------------------------------
    def _write_queued(self) -> None:
        """Replay every queued sighting in one transaction. When another process holds
        the write lock, nothing waits: the sightings stay queued and the write is tried
        again after a pause that grows to RETRY_MAX."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        fast = self._fast
        if not self._queued or fast is None:
            return
        self._end_read()
        batch = self._queued
        try:
            fast.execute("BEGIN IMMEDIATE")
            fast.executemany(_REPLAY, batch)
            fast.execute("COMMIT")
        except sqlite3.Error as exc:
            if fast.in_transaction:
                fast.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and sqlite_wal.is_busy(exc):
                self.busy_fallbacks += 1
                self._retry_later()
                return
            self._check(exc)
            self._lost(len(batch), exc)
        else:
            self._dirty = True
        self._queued, self._latest = [], {}
        self._retry_delay = WRITE_DELAY

    def _retry_later(self) -> None:
        """The database is locked: keep the queue (bounded) and try again later."""
        excess = len(self._queued) - MAX_QUEUED
        if excess > 0:
            del self._queued[:excess]
            kept = {params[4] for params in self._queued}
            self._latest = {k: v for k, v in self._latest.items() if k in kept}
            _limited.error("sightings dropped", "greylist: %s has been locked by another "
                           "process for long; dropped the %d oldest of the sightings waiting "
                           "to be written (those triplets will be greylisted again)",
                           self.path, excess)
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
        assert self._loop is not None
        self._timer = self._loop.call_later(self._retry_delay, self._write_queued)

    def _lost(self, count: int, exc: Exception | str) -> None:
        # The replies are out; losing these sightings only means those triplets are
        # greylisted once more when they retry.
        _limited.error("failed sighting writes", "greylist: writing %d sightings to %s failed: %s; "
                       "those triplets will be greylisted again", count, self.path, exc)

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
        try:
            return await self._cleanup(now, timing, interval)
        except sqlite3.OperationalError as exc:
            if sqlite_wal.is_busy(exc):
                raise StoreBusy(f"{self.path} is locked by another process") from None
            raise

    async def _cleanup(self, now: int, timing: Timing, interval: int) -> CleanupStats | None:
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


    # -- before the workers start ---------------------------------------------------------
    def verify(self) -> str | None:
        """Open the database as a worker will and check every page (``PRAGMA
        quick_check``: a third of a second for a million triplets). A damaged file --
        not a database, malformed, or a WAL left behind by a deleted database -- is
        moved aside and a new one made; anything else (permissions, a directory in the
        way, a failing disk) is refused with a message naming the file."""
        notes = []
        if not os.path.exists(self.path):
            leftovers = [p for p in (self.path + "-wal", self.path + "-shm") if os.path.exists(p)]
            if leftovers:
                moved = _move_aside(leftovers)
                notes.append(f"greylist store {self.path} had been deleted, leaving "
                             f"{', '.join(leftovers)}; moved them to {', '.join(moved)}")
        try:
            self._verify_file()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and sqlite_wal.is_busy(exc):
                # Locked by another process for the whole busy timeout: not a fault of
                # the file, and the workers wait for such a lock themselves.
                return "; ".join([*notes, f"greylist store {self.path} not checked: {exc}"])
            if not is_damage(exc):
                raise StoreUnavailable(f"greylist store {self.path} cannot be opened: "
                                       f"{exc}") from None
            present = [p for p in (self.path, self.path + "-wal", self.path + "-shm")
                       if os.path.exists(p)]
            moved = _move_aside(present)
            notes.append(f"greylist store {self.path} is damaged ({exc}); moved it to "
                         f"{moved[0]} and started a new one: greylisting starts over (each "
                         f"triplet is deferred once more, auto-whitelisted clients are "
                         f"counted again); no mail is lost")
            try:
                self._verify_file()
            except sqlite3.Error as again:
                raise StoreUnavailable(f"greylist store {self.path} cannot be made anew: "
                                       f"{again}") from None
        except OSError as exc:
            raise StoreUnavailable(f"greylist store {self.path} cannot be opened: "
                                   f"{exc.strerror or exc}") from None
        return "; ".join(notes) or None

    def _verify_file(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=self._busy_timeout)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("database disk image is malformed: "
                                            + "; ".join(problems))
        finally:
            conn.close()


def is_damage(exc: sqlite3.DatabaseError) -> bool:
    """SQLite says the file is not a database, or is malformed, or cannot be read."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT", "SQLITE_IOERR")):
        return True
    text = str(exc)
    return "malformed" in text or "not a database" in text


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _move_aside(paths: list[str]) -> list[str]:
    """Rename each file to ``NAME.damaged-YYYYmmddTHHMMSS`` beside it (kept for a look,
    never reused); returns the new names."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = []
    for path in paths:
        target = f"{path}.damaged-{stamp}"
        os.replace(path, target)
        moved.append(target)
    return moved


def _read_params(s: Sighting, now: int, timing: Timing) -> tuple[object, ...]:
    return (s.key, s.client, now, timing.max_age, timing.awl_clients)


async def _fetch_all(db: aiosqlite.Connection, sql: str,
                     params: Sequence[object]) -> list[tuple[Any, ...]]:
    """aiosqlite's ``execute_fetchall`` as what it returns here: a list of tuples (it is
    typed as rows; this store sets no row factory)."""
    return cast("list[tuple[Any, ...]]", list(await db.execute_fetchall(sql, params)))
