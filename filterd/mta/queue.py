"""The mail queue on disk: directories, queue ids, durable creation, moves, recovery.

Postfix's layout, under ``queue_directory``: a message is one file named by its queue
id, and which directory holds it says where it is in its life:

``incoming``  written by the receiving side; mode 0600 while being written, 0700 once
              complete and fsync'd (Postfix's own "file is complete" mark)
``active``    taken by the queue manager for delivery
``deferred``  waiting for a retry; the file's mtime is the time of the next attempt
``hold``      kept aside by the administrator until released
``corrupt``   unreadable files, kept for a human to look at

``defer/<id>`` holds the last delay reason of each pending recipient (Postfix's defer
logs), shown by ``filterd queue list`` and quoted when the message finally bounces.

Every file operation here blocks: callers on the event loop run them in a thread.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import secrets
import stat
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from filterd.mta.queuefile import Envelope, QueueFileWriter, read_envelope

log = logging.getLogger("filterd.qmgr")

INCOMING = "incoming"
ACTIVE = "active"
DEFERRED = "deferred"
HOLD = "hold"
CORRUPT = "corrupt"
QUEUE_NAMES = (INCOMING, ACTIVE, DEFERRED, HOLD, CORRUPT)
DEFER_LOG = "defer"

MODE_WRITING = 0o600
MODE_COMPLETE = 0o700
TEMP_PREFIX = ".tmp-"
QUEUE_ID = re.compile(r"[0-9A-F]{6,24}")
"""Queue ids: five hex digits of the creation microsecond then the inode in hex, as
Postfix's short ids; the check keeps a tool argument from naming any other path."""
FLUSHED_MTIME = 0.0
"""The mtime a flushed file gets in ``incoming`` (a time no new file has): the queue
manager then ignores defer_transports for it, as Postfix does after postqueue -f."""
MAX_REASON = 1000
"""Longest delay reason kept per recipient in a defer log."""


class QueueError(Exception):
    """A queue operation that cannot be done (bad id, message not in that queue)."""


def queue_id(usec: int, inode: int) -> str:
    """The id of a new file: microsecond and inode, unique while the file exists
    (no two live files share an inode) and in creation order within a second."""
    return f"{usec % 1_000_000:05X}{inode:X}"


def check_queue_id(qid: str) -> str:
    """The id itself, or QueueError when it is not a queue id."""
    if not QUEUE_ID.fullmatch(qid):
        raise QueueError(f"bad queue id {qid[:40]!r}: expected 6 to 24 hexadecimal digits")
    return qid


def fsync_directory(path: str) -> None:
    """fsync a directory, so that a new or renamed entry in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectorySync:
    """Group commit of one directory's fsync, shared by the threads that need it.

    A directory fsync covers every entry change made before it began. A caller that
    needs its new entry on disk waits for a sync that begins after its change: if one
    is under way (it may have begun too early), it waits for that one to end and then
    for the next; whoever finds none running starts it. Several messages committed
    together (parallel sessions) then share one directory fsync instead of queueing
    one each behind the journal, and none of them is told it is on disk before a sync
    that began after its own change has completed.
    """

    def __init__(self, path: str):
        self.path = path
        self._cond = threading.Condition()
        self._started = 0
        """Syncs begun so far (the number of the latest)."""
        self._done = 0
        """The latest sync that completed."""
        self._running = False

    def sync(self) -> None:
        """Return once a directory fsync that began after this call has completed
        (OSError when the one this caller ran failed)."""
        with self._cond:
            needed = self._started + 1
            while self._done < needed:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                self._started += 1
                number = self._started
                self._cond.release()
                try:
                    fsync_directory(self.path)
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()
                self._done = max(self._done, number)


@dataclass(frozen=True)
class QueueEntry:
    """One file seen by a scan: its queue, id, mtime (retry time in deferred) and size."""

    queue: str
    qid: str
    mtime: float
    size: int
    complete: bool
    """False for an incoming file still being written (mode 0600)."""


class NewMessage:
    """A queue file being written into ``incoming``; commit() makes it durable.

    Used as a context manager, an exception before commit() removes the file, so a
    refused message leaves nothing behind.
    """

    def __init__(self, queue: "Queue", qid: str, fd: int):
        self.queue = queue
        self.qid = qid
        self.fd = fd
        self.writer = QueueFileWriter(fd)
        self.committed = False
        self.where = INCOMING
        self.entry_synced = False
        """The file's name in ``incoming`` is on disk already (:meth:`sync_entry`)."""

    @property
    def path(self) -> str:
        return self.queue.path(self.where, self.qid)

    def sync_entry(self) -> None:
        """Make the file's directory entry durable now, before the message is written:
        smtpd does this while the client is still sending, so that the commit after the
        final dot needs only the file's own fsync. Nothing changes the entry afterwards
        (the commit only changes the file's mode, which the file's fsync covers)."""
        self.queue.sync_dir(INCOMING)
        self.entry_synced = True

    def commit(self, into: str = INCOMING) -> int:
        """End record, mode 0700 (complete), fsync, fsync the directory (unless
        :meth:`sync_entry` did already).

        Only after this returns may the sender be told 250. Returns the content size.
        One fsync covers the data and the mode, as in Postfix's cleanup: a crash before
        it completes may leave a mode-0700 file without its end record, which the
        reader refuses (corrupt/) -- and no 250 was sent for it.

        ``into = HOLD`` (a HOLD action): the file moves to ``hold`` while it is still
        incomplete, which the queue manager never takes, so it can never be delivered
        instead of held; both directories are then synced.
        """
        size = self.writer.finish(sync=False)
        if into != INCOMING:
            os.rename(self.path, self.queue.path(into, self.qid))
            self.where = into
        os.fchmod(self.fd, MODE_COMPLETE)
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        if self.where == INCOMING:
            if not self.entry_synced:
                self.queue.sync_dir(INCOMING)
        else:
            self.queue.sync_dir(self.where)
            self.queue.sync_dir(INCOMING)
        self.committed = True
        return size

    def abort(self) -> None:
        """Remove the unfinished file."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if not self.committed:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "NewMessage":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.committed:
            self.abort()


@dataclass
class Recovery:
    """What recover() did at start."""

    discarded: int = 0
    requeued: int = 0


class Queue:
    """The queue directory and the operations on its files."""

    def __init__(self, directory: str):
        self.directory = directory
        self._syncs = {name: DirectorySync(os.path.join(directory, name)) for name in QUEUE_NAMES}

    def sync_dir(self, queue: str) -> None:
        """fsync one queue's directory, shared with the other threads committing there
        at the same time (:class:`DirectorySync`)."""
        if queue not in self._syncs:
            raise QueueError(f"no such queue {queue!r}")
        self._syncs[queue].sync()

    def dir(self, queue: str) -> str:
        if queue not in QUEUE_NAMES and queue != DEFER_LOG:
            raise QueueError(f"no such queue {queue!r}")
        return os.path.join(self.directory, queue)

    def path(self, queue: str, qid: str) -> str:
        return os.path.join(self.dir(queue), check_queue_id(qid))

    def setup(self) -> None:
        """Create the queue directories (mode 0700) that do not exist yet."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        for name in QUEUE_NAMES + (DEFER_LOG,):
            os.makedirs(os.path.join(self.directory, name), mode=0o700, exist_ok=True)

    # -- creating ---------------------------------------------------------------
    def create(self) -> NewMessage:
        """Open a new file in ``incoming`` under a fresh queue id (mode 0600)."""
        incoming = self.dir(INCOMING)
        for _ in range(10):
            temp = os.path.join(incoming, f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}")
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, MODE_WRITING)
            # Locked while being written (released when the file is closed, or when the
            # writer dies): recovery must not take a file another process is still
            # receiving for an abandoned one.
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                qid = queue_id(time.time_ns() // 1000, os.fstat(fd).st_ino)
                os.link(temp, os.path.join(incoming, qid))  # never replaces an existing file
            except FileExistsError:
                os.close(fd)
                os.unlink(temp)
                continue
            except BaseException:
                os.close(fd)
                os.unlink(temp)
                raise
            os.unlink(temp)
            return NewMessage(self, qid, fd)
        raise QueueError("could not find a free queue id")

    # -- moving and removing -----------------------------------------------------
    def move(self, qid: str, src: str, dst: str, retry_at: float | None = None) -> None:
        """Rename a file from one queue to another; in ``deferred`` its mtime is the
        time of the next attempt (set before the rename, so a scan never sees it stale)."""
        source = self.path(src, qid)
        if retry_at is not None:
            try:
                os.utime(source, (time.time(), retry_at))
            except FileNotFoundError:
                raise QueueError(f"{qid}: not in the {src} queue") from None
        try:
            os.rename(source, self.path(dst, qid))
        except FileNotFoundError:
            raise QueueError(f"{qid}: not in the {src} queue") from None

    def remove(self, queue: str, qid: str) -> None:
        """Delete a message and its defer log."""
        try:
            os.unlink(self.path(queue, qid))
        except FileNotFoundError:
            raise QueueError(f"{qid}: not in the {queue} queue") from None
        self.remove_defer_log(qid)

    def to_corrupt(self, queue: str, qid: str) -> None:
        """Move an unreadable file to ``corrupt`` (the caller logs why)."""
        try:
            self.move(qid, queue, CORRUPT)
        except QueueError:
            pass

    def open(self, queue: str, qid: str, writable: bool = False) -> int:
        """A descriptor on the file (read-write to flip status bytes); QueueError if absent."""
        try:
            return os.open(self.path(queue, qid), (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
        except FileNotFoundError:
            raise QueueError(f"{qid}: not in the {queue} queue") from None

    def read_envelope(self, queue: str, qid: str) -> Envelope:
        """The envelope of one message (QueueFileError when the file is unreadable)."""
        fd = self.open(queue, qid)
        try:
            return read_envelope(fd)
        finally:
            os.close(fd)

    def find(self, qid: str) -> str | None:
        """The queue that holds ``qid`` now, or None."""
        for name in QUEUE_NAMES:
            if os.path.exists(self.path(name, qid)):
                return name
        return None

    # -- scanning ----------------------------------------------------------------
    def scan(self, queue: str) -> Iterator[QueueEntry]:
        """The files in one queue, one at a time (never the whole list in memory).

        Files that vanish during the scan (moved by the queue manager or a tool) are
        skipped; temporary files and anything not named like a queue id are ignored.
        """
        with os.scandir(self.dir(queue)) as it:
            for entry in it:
                if not QUEUE_ID.fullmatch(entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                yield QueueEntry(queue, entry.name, st.st_mtime, st.st_size,
                                 stat.S_IMODE(st.st_mode) & 0o100 != 0)

    # -- recovery ------------------------------------------------------------------
    def recover(self) -> Recovery:
        """At start, before any delivery: discard what was never completely written and
        put what was being delivered back in ``incoming``.

        An incoming file still at mode 0600 that no process holds locked was being
        received when its writer died; no 250 was sent for it, so it is removed. One that
        is locked is being received right now (smtpd in another worker: the queue manager
        starts again when its worker is replaced) and is left alone. Files in ``active`` were being
        delivered: their done recipients are marked in them, so they go back to
        ``incoming`` and are delivered to the rest. (Unreadable files are found when
        the queue manager opens them, and moved to ``corrupt``.)
        """
        self.setup()
        result = Recovery()
        incoming = self.dir(INCOMING)
        with os.scandir(incoming) as it:
            for entry in it:
                incomplete = entry.name.startswith(TEMP_PREFIX)
                if not incomplete and QUEUE_ID.fullmatch(entry.name):
                    try:
                        incomplete = stat.S_IMODE(entry.stat().st_mode) & 0o100 == 0
                    except FileNotFoundError:
                        continue
                if incomplete and _abandoned(entry.path):
                    log.warning("%s: discarding an incompletely written queue file", entry.name)
                    try:
                        os.unlink(entry.path)
                    except FileNotFoundError:
                        pass
                    result.discarded += 1
        for item in self.scan(ACTIVE):
            try:
                self.move(item.qid, ACTIVE, INCOMING)
            except QueueError:
                continue
            result.requeued += 1
        if result.discarded or result.requeued:
            fsync_directory(incoming)
        return result

    # -- defer logs ------------------------------------------------------------------
    def write_defer_log(self, qid: str, reasons: dict[str, str]) -> None:
        """Replace the message's delay reasons (address -> reason).

        Not fsync'd: losing it after a crash loses only the text shown by ``queue list``.
        """
        path = os.path.join(self.dir(DEFER_LOG), check_queue_id(qid))
        temp = f"{path}.{os.getpid()}.tmp"
        with open(temp, "w", encoding="utf-8", errors="surrogateescape") as f:
            for address, reason in reasons.items():
                f.write(f"{_one_line(address)}\t{_one_line(reason)[:MAX_REASON]}\n")
        os.rename(temp, path)

    def read_defer_log(self, qid: str) -> dict[str, str]:
        """The delay reasons last written for ``qid`` (empty when there are none)."""
        path = os.path.join(self.dir(DEFER_LOG), check_queue_id(qid))
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                lines = f.read(1 << 20).splitlines()
        except FileNotFoundError:
            return {}
        out: dict[str, str] = {}
        for line in lines:
            address, _, reason = line.partition("\t")
            out[address] = reason
        return out

    def remove_defer_log(self, qid: str) -> None:
        try:
            os.unlink(os.path.join(self.dir(DEFER_LOG), check_queue_id(qid)))
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise


def _abandoned(path: str) -> bool:
    """Whether no process is writing the incomplete file at ``path`` (its writer holds
    an exclusive lock on it until it is committed or aborted)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def _one_line(text: str) -> str:
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")
