"""The queue directory: ids, durable creation, moves, recovery, streaming scans."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from filterd.mta import queue as q
from filterd.mta.queuefile import QueueFileError, Recipient


def make(queue: q.Queue, body: bytes = b"Subject: x\r\n\r\nhi\r\n", rcpts: int = 1) -> str:
    with queue.create() as msg:
        msg.writer.envelope(time.time(), "a@example.com",
                            [Recipient(f"r{i}@example.net") for i in range(rcpts)])
        msg.writer.content(body)
        msg.commit()
        return msg.qid


@pytest.fixture
def queue(tmp_path: Path) -> q.Queue:
    qu = q.Queue(str(tmp_path / "queue"))
    qu.setup()
    return qu


def test_create_commit_and_read(queue: q.Queue) -> None:
    qid = make(queue, rcpts=3)
    assert q.QUEUE_ID.fullmatch(qid)
    st = os.stat(queue.path(q.INCOMING, qid))
    assert stat.S_IMODE(st.st_mode) == q.MODE_COMPLETE
    env = queue.read_envelope(q.INCOMING, qid)
    assert [r.address for r in env.recipients] == ["r0@example.net", "r1@example.net", "r2@example.net"]
    assert os.listdir(queue.dir(q.INCOMING)) == [qid]  # no temporary file left


def test_ids_are_unique(queue: q.Queue) -> None:
    ids = {make(queue) for _ in range(100)}
    assert len(ids) == 100


def test_a_refused_message_leaves_nothing(queue: q.Queue) -> None:
    with pytest.raises(ValueError):
        with queue.create() as msg:
            msg.writer.envelope(time.time(), "a@b", [])
    assert os.listdir(queue.dir(q.INCOMING)) == []


def test_move_sets_retry_time_and_find(queue: q.Queue) -> None:
    qid = make(queue)
    queue.move(qid, q.INCOMING, q.ACTIVE)
    retry = time.time() + 1234
    queue.move(qid, q.ACTIVE, q.DEFERRED, retry_at=retry)
    assert queue.find(qid) == q.DEFERRED
    [entry] = list(queue.scan(q.DEFERRED))
    assert entry.qid == qid and abs(entry.mtime - retry) < 1
    with pytest.raises(q.QueueError, match="not in the active queue"):
        queue.move(qid, q.ACTIVE, q.HOLD)


def test_bad_ids_never_name_another_path(queue: q.Queue) -> None:
    for bad in ("../etc/passwd", "abc", "", "0123456789abcdef"):
        with pytest.raises(q.QueueError, match="bad queue id"):
            queue.path(q.DEFERRED, bad)


def test_recovery(queue: q.Queue) -> None:
    done = make(queue)
    active = make(queue)
    queue.move(active, q.INCOMING, q.ACTIVE)
    unfinished = queue.create()  # the daemon died while receiving this one
    unfinished.writer.envelope(time.time(), "a@b", [Recipient("c@d")])
    os.close(unfinished.fd)
    Path(queue.dir(q.INCOMING), q.TEMP_PREFIX + "1-2").write_bytes(b"")
    result = queue.recover()
    assert (result.discarded, result.requeued) == (2, 1)
    assert sorted(os.listdir(queue.dir(q.INCOMING))) == sorted([done, active])
    assert os.listdir(queue.dir(q.ACTIVE)) == []


def test_recovery_leaves_a_file_another_process_is_still_writing(queue: q.Queue) -> None:
    """The queue manager starts again while smtpd in another worker receives: the file
    that smtpd holds open (and will commit, then answer 250 for) must survive recovery.
    (It was discarded, and its message lost after the 250, in a SIGKILL test.)"""
    receiving = queue.create()
    receiving.writer.envelope(time.time(), "a@b", [Recipient("c@d")])
    result = queue.recover()
    assert result.discarded == 0
    receiving.writer.content(b"Subject: x\r\n\r\nbody\r\n")
    receiving.commit()
    assert queue.read_envelope(q.INCOMING, receiving.qid).sender == "a@b"


def test_a_held_message_is_never_complete_in_incoming(queue: q.Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """A HOLD is committed straight into ``hold``: before, the file was completed in
    ``incoming`` and moved afterwards, and a queue manager scanning meanwhile delivered
    it instead of holding it. Every scan of incoming during the commit sees it
    incomplete (or not at all)."""
    seen: list[list[q.QueueEntry]] = []
    real_fsync = os.fsync

    def fsync_and_look(fd: int) -> None:
        real_fsync(fd)
        seen.append([e for e in queue.scan(q.INCOMING) if e.complete])
    monkeypatch.setattr(os, "fsync", fsync_and_look)
    new = queue.create()
    new.writer.envelope(time.time(), "a@b", [Recipient("c@d")])
    new.writer.content(b"Subject: x\r\n\r\nbody\r\n")
    new.commit(q.HOLD)
    assert seen and all(entries == [] for entries in seen)
    assert queue.find(new.qid) == q.HOLD
    assert queue.read_envelope(q.HOLD, new.qid).sender == "a@b"


def test_corrupt_file_goes_to_corrupt(queue: q.Queue) -> None:
    qid = make(queue)
    path = queue.path(q.INCOMING, qid)
    os.truncate(path, os.path.getsize(path) - 1)
    with pytest.raises(QueueFileError):
        queue.read_envelope(q.INCOMING, qid)
    queue.to_corrupt(q.INCOMING, qid)
    assert queue.find(qid) == q.CORRUPT


def test_scan_skips_strangers_and_incomplete_files_are_marked(queue: q.Queue) -> None:
    qid = make(queue)
    writing = queue.create()
    Path(queue.dir(q.INCOMING), "README").write_text("x")
    entries = {e.qid: e.complete for e in queue.scan(q.INCOMING)}
    assert entries == {qid: True, writing.qid: False}
    writing.abort()


def test_defer_log_round_trip(queue: q.Queue) -> None:
    qid = make(queue)
    queue.write_defer_log(qid, {"a@b": "connect to x[1.2.3.4]:25: refused\r\nforged", "c@d": "t\tab"})
    assert queue.read_defer_log(qid) == {"a@b": "connect to x[1.2.3.4]:25: refused  forged", "c@d": "t ab"}
    queue.remove(q.INCOMING, qid)
    assert queue.read_defer_log(qid) == {}
    assert queue.find(qid) is None


def test_parallel_commits_share_directory_fsyncs_but_each_waits_for_one_begun_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Group commit: many threads needing the same directory synced share fsyncs, and
    none returns before a sync that began after its own call has ended."""
    import threading

    syncs: list[tuple[float, float]] = []
    lock = threading.Lock()

    def slow_fsync(path: str) -> None:
        began = time.monotonic()
        time.sleep(0.02)
        with lock:
            syncs.append((began, time.monotonic()))

    monkeypatch.setattr(q, "fsync_directory", slow_fsync)
    shared = q.DirectorySync(str(tmp_path))
    calls: list[tuple[float, float]] = []

    def caller() -> None:
        called = time.monotonic()
        shared.sync()
        with lock:
            calls.append((called, time.monotonic()))

    threads = [threading.Thread(target=caller) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(calls) == 20
    assert len(syncs) < 20  # shared
    for called, returned in calls:
        assert any(began >= called and ended <= returned for began, ended in syncs)


def test_a_failed_directory_fsync_is_raised_and_the_next_caller_tries_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outcomes = [OSError(5, "Input/output error"), None]

    def flaky(path: str) -> None:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(q, "fsync_directory", flaky)
    shared = q.DirectorySync(str(tmp_path))
    with pytest.raises(OSError):
        shared.sync()
    shared.sync()
    assert outcomes == []


def test_an_entry_synced_early_is_not_synced_again_at_commit(queue: q.Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """smtpd syncs the new file's name while the client still sends; the commit then
    fsyncs only the file, and a HOLD commit still syncs both directories it touches."""
    synced: list[str] = []
    real = q.fsync_directory
    monkeypatch.setattr(q, "fsync_directory", lambda path: (synced.append(os.path.basename(path)), real(path)))
    for into, expected in ((q.INCOMING, ["incoming"]), (q.HOLD, ["incoming", "hold", "incoming"])):
        synced.clear()
        with queue.create() as msg:
            msg.sync_entry()
            msg.writer.envelope(time.time(), "a@example.com", [Recipient("r@example.net")])
            msg.writer.content(b"Subject: x\r\n\r\nhi\r\n")
            msg.commit(into)
        assert synced == expected
        assert queue.find(msg.qid) == into
