"""The SQLite store: decisions read, sightings are written behind them and replayed."""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from filterd.greylist import sqlite_store
from filterd.greylist.sqlite_store import SqliteGreylistStore
from filterd.greylist.store import ClientState, Sighting, Timing, TripletState, advance
from tests.fixtures.sqlite import converting

NOW = 1_700_000_000
TIMING = Timing(delay=300, retry_window=2 * 86400, max_age=35 * 86400, awl_clients=5)


def sighting(n: int) -> Sighting:
    return Sighting(f"192.0.2.0/s{n}@sender.test/r@example.org", "192.0.2.10")


def other_worker_sees(db: Path) -> list[tuple[str, int, int]]:
    """The triplet rows another process reads right now."""
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT key, first, last FROM triplet ORDER BY key"))


async def open_store(path: Path) -> SqliteGreylistStore:
    s = SqliteGreylistStore(str(path), busy_timeout=5)
    await s.start()
    return s


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteGreylistStore]:
    s = await open_store(tmp_path / "g.db")
    yield s
    await s.close()


async def test_a_sighting_is_written_within_the_write_delay(store: SqliteGreylistStore,
                                                           tmp_path: Path) -> None:
    assert store.see_now([sighting(1)], NOW, TIMING) == [TripletState(NOW, False)]
    assert other_worker_sees(tmp_path / "g.db") == []  # queued, with whatever comes next
    await asyncio.sleep(sqlite_store.WRITE_DELAY * 3)
    assert other_worker_sees(tmp_path / "g.db") == [(sighting(1).key, NOW, NOW)]


async def test_sync_and_close_write_everything(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "g.db")
    store.see_now([sighting(1)], NOW, TIMING)
    await store.sync()
    assert len(other_worker_sees(tmp_path / "g.db")) == 1
    store.see_now([sighting(2)], NOW, TIMING)
    await store.close()
    assert len(other_worker_sees(tmp_path / "g.db")) == 2


async def test_a_full_queue_is_written_at_once(store: SqliteGreylistStore, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "WRITE_AT", 3)
    for n in (1, 2, 3):
        store.see_now([sighting(n)], NOW, TIMING)
    assert len(other_worker_sees(tmp_path / "g.db")) == 3


async def test_sightings_not_yet_written_decide_the_next_answer(
        store: SqliteGreylistStore) -> None:
    assert store.see_now([sighting(1)], NOW, TIMING) == [TripletState(NOW, False)]
    # Retried after the delay, before the first sighting was written: it passes ...
    assert store.see_now([sighting(1)], NOW + 300, TIMING) == [TripletState(NOW, False)]
    # ... and the sighting after that knows the triplet had passed.
    assert store.see_now([sighting(1)], NOW + 301, TIMING) == [TripletState(NOW, True)]


async def test_two_workers_sightings_merge_when_replayed(tmp_path: Path) -> None:
    a = await open_store(tmp_path / "g.db")
    b = await open_store(tmp_path / "g.db")
    try:
        assert a.see_now([sighting(1)], NOW, TIMING) == [TripletState(NOW, False)]
        # b has not seen a's sighting yet (it is not written): new to b as well.
        assert b.see_now([sighting(1)], NOW + 5, TIMING) == [TripletState(NOW + 5, False)]
        await a.sync()
        await b.sync()
        # Replayed in order, b's sighting was an early retry of a's triplet.
        assert other_worker_sees(tmp_path / "g.db") == [(sighting(1).key, NOW, NOW + 5)]
        assert b.see_now([sighting(1)], NOW + 300, TIMING) == [TripletState(NOW, False)]
    finally:
        await a.close()
        await b.close()


async def test_an_auto_whitelisted_client_leaves_the_triplet_alone(
        store: SqliteGreylistStore, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "g.db") as conn:
        conn.execute("INSERT INTO client VALUES ('192.0.2.10', 5, ?)", (NOW - 60,))
    assert store.see_now([sighting(1)], NOW, TIMING) == [None]
    no_awl = Timing(TIMING.delay, TIMING.retry_window, TIMING.max_age, awl_clients=0)
    assert store.see_now([sighting(1)], NOW, no_awl) == [TripletState(NOW, False)]
    await store.sync()
    assert other_worker_sees(tmp_path / "g.db") == [(sighting(1).key, NOW, NOW)]


async def test_a_new_database_being_converted_by_another_worker_is_waited_for(
        tmp_path: Path) -> None:
    """Workers start together: one converts the new file to WAL, the others are told
    "database is locked" at once (SQLite does not wait where it could deadlock)."""
    path = tmp_path / "g.db"
    other = converting(path)
    asyncio.get_running_loop().call_later(0.3, other.execute, "COMMIT")
    store = SqliteGreylistStore(str(path), busy_timeout=5.0)
    try:
        await store.start()
        with closing(sqlite3.connect(path)) as fresh:
            assert fresh.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert store.see_now([sighting(1)], NOW, TIMING) == [TripletState(NOW, False)]
    finally:
        await store.close()
        other.close()


async def test_a_database_locked_past_the_busy_timeout_fails_the_start(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    other = converting(path)
    store = SqliteGreylistStore(str(path), busy_timeout=0.3)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await store.start()
    finally:
        other.execute("ROLLBACK")
        other.close()


async def test_a_busy_database_delays_the_write_not_the_answer(
        store: SqliteGreylistStore, tmp_path: Path) -> None:
    other = sqlite3.connect(tmp_path / "g.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another worker is writing
    try:
        store.see_now([sighting(1)], NOW, TIMING)
        await asyncio.sleep(sqlite_store.WRITE_DELAY * 2)  # the write found it busy
        assert store.busy_fallbacks == 1
        # Reads are not blocked, and the write waiting in the thread still counts.
        assert store.see_now([sighting(1)], NOW + 300, TIMING) == [TripletState(NOW, False)]
        other.execute("COMMIT")
        await store.sync()
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
    assert other_worker_sees(tmp_path / "g.db") == [(sighting(1).key, NOW, NOW + 300)]


async def test_reads_share_one_read_transaction_for_the_read_span(
        store: SqliteGreylistStore) -> None:
    assert store._fast is not None
    store.see_now([sighting(1)], NOW, TIMING)
    store.see_now([sighting(2)], NOW, TIMING)
    assert store._fast.in_transaction
    await asyncio.sleep(sqlite_store.READ_SPAN * 3)
    assert not store._fast.in_transaction  # ended, even with no read after it


async def test_another_workers_write_is_read_after_the_read_span(
        store: SqliteGreylistStore, tmp_path: Path) -> None:
    store.see_now([sighting(1)], NOW, TIMING)  # a read transaction is open now
    with sqlite3.connect(tmp_path / "g.db") as conn:  # another worker's sighting
        conn.execute("INSERT INTO triplet VALUES (?, ?, ?, 0)", (sighting(3).key, NOW - 400, NOW - 400))
    await asyncio.sleep(sqlite_store.READ_SPAN * 3)
    assert store.see_now([sighting(3)], NOW, TIMING) == [TripletState(NOW - 400, False)]


async def test_a_write_during_a_read_transaction_is_committed_at_once(
        store: SqliteGreylistStore, tmp_path: Path) -> None:
    store.see_now([sighting(1)], NOW, TIMING)
    store.see_now([sighting(2)], NOW, TIMING)  # a read transaction is open now
    assert await store.count_passes(["192.0.2.10"], NOW, TIMING) == [ClientState(1, NOW)]
    with sqlite3.connect(tmp_path / "g.db") as conn:
        assert list(conn.execute("SELECT key, count FROM client")) == [("192.0.2.10", 1)]
    store.see_now([sighting(3)], NOW, TIMING)  # and reading goes on
    await store.sync()
    assert len(other_worker_sees(tmp_path / "g.db")) == 3


class BusyReads:
    """The non-waiting connection as it behaves while another process holds a lock that
    stops readers (SQLite recovery or an exclusive-mode writer): reads fail at once."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def execute(self, sql: str, params: object = ()) -> sqlite3.Cursor:
        if sql.lstrip().startswith("SELECT"):
            raise sqlite3.OperationalError("database is locked")
        return self.conn.execute(sql, params)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)


async def test_a_read_that_finds_the_database_busy_waits_in_the_thread(
        store: SqliteGreylistStore) -> None:
    fast = store._fast
    assert fast is not None
    store._fast = BusyReads(fast)  # type: ignore[assignment]
    try:
        assert store.see_now([sighting(1)], NOW, TIMING) is None  # never waits
        assert await store.see([sighting(1)], NOW, TIMING) == [TripletState(NOW, False)]
        assert store.busy_fallbacks == 2
    finally:
        store._fast = fast


async def test_a_failed_write_is_logged_and_the_service_goes_on(
        store: SqliteGreylistStore, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert store._fast is not None
    store._fast.execute("PRAGMA query_only = 1")  # every write now fails, as on a full disk
    store.see_now([sighting(1)], NOW, TIMING)
    with caplog.at_level(logging.ERROR, logger="filterd.greylist"):
        await store.sync()
    assert "writing 1 sightings to" in caplog.text and "readonly" in caplog.text
    store._fast.execute("PRAGMA query_only = 0")
    assert store.see_now([sighting(2)], NOW, TIMING) == [TripletState(NOW, False)]
    await store.sync()
    assert [k for k, *_ in other_worker_sees(tmp_path / "g.db")] == [sighting(2).key]


def test_the_replay_statement_applies_the_same_rules_as_advance() -> None:
    """store.advance (the answer) and _REPLAY (the stored row) must never disagree.
    In memory: the SQL is under test, not the disk (3,600 autocommits took seconds)."""
    timing = Timing(delay=10, retry_window=50, max_age=200, awl_clients=0)
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(sqlite_store._SCHEMA)
    rng = random.Random(7)
    for case in range(300):
        key = f"k{case}"
        row: tuple[int, int] | None = None
        now = 1000
        for _ in range(12):
            now += rng.choice((-30, 0, 1, 5, 9, 10, 11, 49, 51, 150, 201, 400))
            state = advance(row, now, timing)
            row = (state.first, now)
            conn.execute(sqlite_store._REPLAY,
                         (now, timing.delay, timing.retry_window, timing.max_age, key))
            stored = conn.execute("SELECT first, last FROM triplet WHERE key = ?", (key,))
            assert stored.fetchone() == row, (case, now)
    conn.close()


async def test_sightings_wait_queued_while_another_process_holds_the_lock_and_are_not_lost(
        tmp_path: Path) -> None:
    """Before: the write waited in aiosqlite's thread for the busy timeout, then the
    sightings were dropped; now nothing waits and they are written once the lock is free."""
    path = tmp_path / "g.db"
    store = SqliteGreylistStore(str(path), busy_timeout=0.3)
    await store.start()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        for n in range(5):
            assert store.see_now([sighting(n)], NOW, TIMING) == [TripletState(NOW, False)]
        await asyncio.sleep(1.0)  # longer than the busy timeout: the old code gave up here
        assert store.busy_fallbacks >= 2  # tried, and tried again
        # Reads see this worker's own sightings although they are not written yet.
        assert store.see_now([sighting(0)], NOW + 60, TIMING) == [TripletState(NOW, False)]
    finally:
        other.execute("ROLLBACK")
        other.close()
    await store.sync()
    assert [k for k, *_ in other_worker_sees(path)] == sorted(sighting(n).key for n in range(5))
    assert other_worker_sees(path)[0][2] == NOW + 60
    await store.close()


async def test_the_sightings_kept_while_locked_are_bounded(
        store: SqliteGreylistStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sqlite_store, "MAX_QUEUED", 10)
    other = sqlite3.connect(tmp_path / "g.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with caplog.at_level(logging.ERROR, logger="filterd.greylist"):
            for n in range(25):
                store.see_now([sighting(n)], NOW, TIMING)
            await asyncio.sleep(sqlite_store.WRITE_DELAY * 3)
        assert len(store._queued) == 10 and len(store._latest) == 10
        assert "dropped the 15 oldest" in caplog.text
    finally:
        other.execute("ROLLBACK")
        other.close()
    await store.sync()
    assert len(other_worker_sees(tmp_path / "g.db")) == 10


async def test_an_auto_whitelist_write_never_waits_for_the_lock(
        store: SqliteGreylistStore, tmp_path: Path) -> None:
    from filterd.greylist.store import StoreBusy

    other = sqlite3.connect(tmp_path / "g.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreBusy):
            await asyncio.wait_for(store.count_passes(["192.0.2.10"], NOW, TIMING), 10)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await store.count_passes(["192.0.2.10"], NOW, TIMING) == [ClientState(1, NOW)]


# -- a damaged, deleted or unopenable database ------------------------------------------

def test_verify_makes_a_new_database_and_keeps_nothing_damaged(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    path.write_bytes(b"this is not an SQLite database" * 100)
    store = SqliteGreylistStore(str(path))
    note = store.verify()
    assert note is not None and str(path) in note and "damaged" in note
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("g.db.damaged-")]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM triplet").fetchone() == (0,)
    assert store.verify() is None  # sound now: nothing to say


def test_verify_finds_damage_inside_the_file(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(sqlite_store._SCHEMA)
        conn.executemany("INSERT INTO triplet VALUES (?, 1, 1, 0)",
                         [(f"key{n:05d}" + "x" * 200,) for n in range(2000)])
        conn.commit()
    data = bytearray(path.read_bytes())
    data[8192:8192 + 4096] = b"\xff" * 4096  # a page in the middle of the table
    path.write_bytes(bytes(data))
    note = SqliteGreylistStore(str(path)).verify()
    assert note is not None and "damaged" in note


def test_verify_moves_aside_what_a_deleted_database_left(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    (tmp_path / "g.db-wal").write_bytes(b"x" * 100)
    (tmp_path / "g.db-shm").write_bytes(b"y" * 100)
    note = SqliteGreylistStore(str(path)).verify()
    assert note is not None and "deleted" in note
    assert sorted(p.name.split(".damaged-")[0] for p in tmp_path.glob("*.damaged-*")) == [
        "g.db-shm", "g.db-wal"]
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM triplet").fetchone() == (0,)


def test_verify_refuses_a_store_that_cannot_be_opened_naming_it(tmp_path: Path) -> None:
    from filterd.greylist.store import StoreUnavailable

    path = tmp_path / "g.db"
    path.mkdir()  # a directory where the database should be
    with pytest.raises(StoreUnavailable, match=str(path)):
        SqliteGreylistStore(str(path)).verify()
    assert path.is_dir()  # not moved: it is not a damaged database


async def test_a_database_deleted_while_in_use_is_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_INTERVAL", 0.05)
    store = await open_store(tmp_path / "g.db")
    reported: list[str] = []
    store.on_damaged = reported.append
    try:
        (tmp_path / "g.db").unlink()
        for _ in range(200):  # a guard: the check runs every 0.05 s here
            if reported:
                break
            await asyncio.sleep(0.05)
        assert reported and "gone" in reported[0]
    finally:
        await store.close()


class MalformedReads(BusyReads):
    """The non-waiting connection on a file whose pages were overwritten."""

    def execute(self, sql: str, params: object = ()) -> sqlite3.Cursor:
        if sql.lstrip().startswith("SELECT"):
            raise sqlite3.DatabaseError("database disk image is malformed")
        return self.conn.execute(sql, params)  # type: ignore[arg-type]


async def test_a_damaged_page_found_while_serving_is_reported_once(
        store: SqliteGreylistStore) -> None:
    reported: list[str] = []
    store.on_damaged = reported.append
    fast = store._fast
    assert fast is not None
    store._fast = MalformedReads(fast)  # type: ignore[assignment]
    try:
        for _ in range(3):
            with pytest.raises(sqlite3.DatabaseError):  # the request gets the safe answer
                store.see_now([sighting(1)], NOW, TIMING)
    finally:
        store._fast = fast
    assert len(reported) == 1 and "malformed" in reported[0]


def test_verify_does_not_refuse_a_database_another_process_has_locked(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    other = converting(path)  # holds the write lock of a new, rollback-journal file
    try:
        note = SqliteGreylistStore(str(path), busy_timeout=0.2).verify()
        assert note is not None and "not checked" in note and "locked" in note
        assert path.exists() and not list(tmp_path.glob("*.damaged-*"))
    finally:
        other.execute("ROLLBACK")
        other.close()
