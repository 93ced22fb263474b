"""`filterd serve` with a greylist store that is damaged, deleted, unopenable, or locked
by another process: every connection is answered, or the port is closed -- never a port
that accepts and leaves Postfix waiting for its policy timeout."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.filterd import Daemon, ask

pytestmark = pytest.mark.integration

GUARD = 20.0  # seconds: only stops a test that would otherwise wait for ever


def wait_for_log(d: Daemon, text: str, guard: float = GUARD) -> str:
    deadline = time.monotonic() + guard
    while True:
        log = d.log.read_text()
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.05)


def answered(d: Daemon, **attrs: str) -> str:
    """The answer to one request on a new connection; fails if none comes in GUARD."""
    with d.connect() as c:
        c.settimeout(GUARD)
        return ask(c, **attrs)


def damage(db: Path) -> None:
    """Overwrite the file's header, as a disk or a careless copy might."""
    with open(db, "r+b") as f:
        f.write(b"definitely not SQLite" * 5)


def test_a_damaged_database_at_start_is_moved_aside_and_mail_is_answered(tmp_path):
    """Before: with 2 workers, both died at start in a loop (two tracebacks a second)
    while the port stayed open, and no request was ever answered."""
    (tmp_path / "data").mkdir()
    damage_target = tmp_path / "data" / "greylist.db"
    damage_target.write_bytes(b"garbage" * 1000)
    d = Daemon(tmp_path, workers=2).start()
    try:
        assert answered(d).startswith("action=DEFER_IF_PERMIT 4.2.0 Greylisted")
        log = d.log.read_text()
        assert str(damage_target) in log and "moved it to" in log
        assert "worker failed" not in log
        assert list((tmp_path / "data").glob("greylist.db.damaged-*"))
    finally:
        assert d.stop() == 0


def test_a_store_that_cannot_be_opened_refuses_to_start_with_one_message(tmp_path):
    (tmp_path / "data" / "greylist.db").mkdir(parents=True)  # in the way of the database
    d = Daemon(tmp_path, workers=2)
    proc = subprocess.run([sys.executable, "-m", "filterd", "serve", "--config", str(d.config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    log = d.log.read_text()
    fatal = [line for line in log.splitlines() if "fatal:" in line]
    assert len(fatal) == 1 and str(tmp_path / "data" / "greylist.db") in fatal[0]
    assert "Traceback" not in log and "worker failed" not in log
    with socket.socket() as s:  # the port is closed: Postfix fails over at once (451 4.3.5)
        assert s.connect_ex(("127.0.0.1", d.port)) != 0


def test_a_database_damaged_between_runs_is_repaired_at_the_next_start(tmp_path):
    """Before: the damaged file stayed, and the restarted workers died on it for ever."""
    d = Daemon(tmp_path, "greylist_delay = 1s\n", workers=2).start()
    db = tmp_path / "data" / "greylist.db"
    try:
        assert answered(d).startswith("action=DEFER_IF_PERMIT")
    finally:
        assert d.stop() == 0
    damage(db)
    d.start()
    try:
        assert answered(d, sender="after@x.example").startswith("action=DEFER_IF_PERMIT")
        assert "moved it to" in d.log.read_text()
    finally:
        assert d.stop() == 0


def test_a_database_deleted_while_running_is_replaced_and_the_workers_restarted(tmp_path):
    """The running workers would go on writing to the deleted file, and a replacement
    worker died on what it left ('disk I/O error'); now the workers notice within
    seconds, stop, and the master makes a new database before starting new ones."""
    d = Daemon(tmp_path, "greylist_delay = 300s\n", workers=2).start()
    db = tmp_path / "data" / "greylist.db"
    try:
        assert answered(d).startswith("action=DEFER_IF_PERMIT")
        db.unlink()
        wait_for_log(d, "stopped for its greylist store")
        # The worker says why, in its own process (its line may follow the master's): one
        # that had the file open says it has gone; one still starting when it went makes
        # a new file, and then the others see theirs replaced.
        log = wait_for_log(d, "greylist store unusable")
        assert "has gone while in use" in log or "was replaced by another file while in use" in log
        deadline = time.monotonic() + GUARD
        while not db.exists():
            assert time.monotonic() < deadline, "no new database was made"
            time.sleep(0.05)
        assert answered(d, sender="later@x.example").startswith("action=DEFER_IF_PERMIT")
        d.wait_sighting("later@x.example")
        d.advance(301)
        # the new database keeps state: the retry after the delay passes
        assert answered(d, sender="later@x.example").startswith("action=PREPEND X-Greylist")
    finally:
        assert d.stop() == 0


def test_another_process_holding_the_write_lock_delays_no_answer(tmp_path):
    """Before: a worker stalled for up to 54 s while an auto-whitelist write waited for
    the lock, and the sightings made meanwhile were lost."""
    d = Daemon(tmp_path, "greylist_delay = 300s\ngreylist_auto_whitelist_clients = 1\n",
               workers=1).start()
    db = tmp_path / "data" / "greylist.db"
    try:
        assert answered(d, instance="m1").startswith("action=DEFER_IF_PERMIT")
        d.advance(301)
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # e.g. an administrator's sqlite3 shell
        try:
            # the pass counts the client for the auto-whitelist: that write must wait
            assert answered(d, instance="m2").startswith("action=PREPEND X-Greylist")
            for i in range(10):
                assert answered(d, sender=f"s{i}@other.example", client_address="198.51.100.9",
                                instance=f"n{i}").startswith("action=DEFER_IF_PERMIT")
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=60) == 0
        with sqlite3.connect(db) as conn:
            keys = {k for (k,) in conn.execute("SELECT key FROM triplet")}
            clients = list(conn.execute("SELECT key, count FROM client"))
        assert {f"198.51.100.0/s{i}@other.example/bob@example.com" for i in range(10)} <= keys
        assert clients == [("192.0.2.1", 1)]
    finally:
        if d.proc.poll() is None:
            d.stop()
