"""The quarantine: messages held back from delivery, stored the way amavisd-new does.

Each message is one file in ``quarantine_directory`` named by its quarantine id, which
is amavisd-new's ``<kind>-<mail_id>`` (``spam-AbCdEf123456``, ``virus-...``,
``banned-...``, ``unchecked-...``, ``badh-...``): the mail_id is the one the content
filter's log line shows for the message, so an administrator who finds a message in the
log finds its quarantine file, and the files are where amavisd-new users expect them.
An index in SQLite (``$data_directory/quarantine.db``) answers "what was quarantined,
from whom, why" without opening files.

Nothing may be lost: the message is written to a temporary file, fsync'd, renamed to its
final name and the directory fsync'd before the index row is committed, and only then
does the caller acknowledge the message.  Any failure on the way raises
:class:`QuarantineError` (the caller answers 4xx, so the sender keeps the message) and
leaves neither a partial file nor an index row behind.  Temporary files left by a crash
are removed by :meth:`Quarantine.open`; a crash between the rename and the index commit
leaves a complete file without an index row, never a row without a file.

Releasing (reinjecting to the original recipients) is the content filter's job: it uses
:meth:`Quarantine.get` and records the outcome with :meth:`Quarantine.mark_released`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from filterd import sqlite_wal

KINDS = ("virus", "banned", "unchecked", "spam", "badh")
"""amavisd-new's quarantine kinds (badh: bad header)."""

_ID_LENGTH = 12  # amavisd-new's mail_id: 12 letters and digits
_MAIL_ID_RE = re.compile(rf"[A-Za-z0-9]{{{_ID_LENGTH}}}")
_ID_RE = re.compile(rf"(?:{'|'.join(KINDS)})-[A-Za-z0-9]{{{_ID_LENGTH}}}")
_TMP_SUFFIX = ".tmp"
_FILE_MODE = 0o640
_DIR_MODE = 0o750
BUSY_TIMEOUT = 5.0  # seconds a worker waits for another's lock on the index (sqlite3's default)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (
    id             TEXT PRIMARY KEY,
    time           REAL NOT NULL,
    kind           TEXT NOT NULL,
    sender         TEXT NOT NULL,
    recipients     TEXT NOT NULL,
    reason         TEXT NOT NULL,
    score          REAL,
    size           INTEGER NOT NULL,
    client_address TEXT NOT NULL,
    subject        TEXT NOT NULL,
    released_at    REAL,
    released_how   TEXT
);
CREATE INDEX IF NOT EXISTS quarantine_time ON quarantine (time);
CREATE INDEX IF NOT EXISTS quarantine_kind_time ON quarantine (kind, time);
"""

_COLUMNS = (
    "id, time, kind, sender, recipients, reason, score, size, client_address, subject, "
    "released_at, released_how"
)


class QuarantineError(Exception):
    """A message could not be quarantined; nothing of it was kept."""


@dataclass(frozen=True)
class QuarantineEntry:
    """One index row. ``reason`` is the summary: virus names, banned part, or spam symbols."""

    id: str
    time: float
    kind: str
    sender: str
    recipients: list[str]
    reason: str
    score: float | None
    size: int
    client_address: str
    subject: str
    released_at: float | None = None
    released_how: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row | tuple[Any, ...]) -> "QuarantineEntry":
        (qid, when, kind, sender, recipients, reason, score, size, client, subject,
         released_at, released_how) = row
        return cls(qid, when, kind, sender, json.loads(recipients), reason, score, size,
                   client, subject, released_at, released_how)


def quarantine_id(kind: str, mail_id: str) -> str:
    """amavisd-new's quarantine id (and file name): ``<kind>-<mail_id>``."""
    if kind not in KINDS:
        raise ValueError(f"unknown quarantine kind {kind!r} (expected one of {', '.join(KINDS)})")
    if not _MAIL_ID_RE.fullmatch(mail_id):
        raise ValueError(f"bad mail_id {mail_id!r} (expected {_ID_LENGTH} letters and digits)")
    return f"{kind}-{mail_id}"


def _fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable (the entry lives in the directory)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(directory: Path, qid: str, raw: bytes) -> None:
    """Temp file, every byte written, fsync, rename, directory fsync; or nothing at all."""
    tmp = directory / f".{qid}{_TMP_SUFFIX}"
    final = directory / qid
    if final.exists():  # the same mail_id twice (71 random bits): never overwrite a message
        raise FileExistsError(f"{final} already exists")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    try:
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        _fsync_directory(directory)
    except BaseException:
        final.unlink(missing_ok=True)
        raise


def _remove_durably(path: Path) -> None:
    path.unlink(missing_ok=True)
    _fsync_directory(path.parent)


def _prepare_directory(directory: Path) -> None:
    """Create the directory and remove temporary files a crashed writer left behind."""
    directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    for leftover in directory.glob(f".*{_TMP_SUFFIX}"):
        leftover.unlink(missing_ok=True)


def _check_id(qid: str) -> None:
    """Ids become file names: anything but a well-formed id is simply not in the quarantine."""
    if not isinstance(qid, str) or not _ID_RE.fullmatch(qid):
        raise KeyError(f"no quarantined message with id {qid!r} (ids look like spam-AbCdEf123456)")


class Quarantine:
    """The quarantine directory and its SQLite index."""

    def __init__(self, cfg: Any) -> None:
        self.directory = Path(cfg.get("quarantine_directory"))
        self.database = Path(cfg.get("data_directory")) / "quarantine.db"
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        await asyncio.to_thread(_prepare_directory, self.directory)
        self.database.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit: each statement is its own transaction, so concurrent store() calls
        # sharing this connection never commit or roll back each other's rows.
        # Every worker opens it at start: the first converts a new file to WAL.
        self._db = await sqlite_wal.connect(self.database, _SCHEMA, synchronous="FULL",
                                            timeout=BUSY_TIMEOUT)

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    @property
    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the quarantine is not open (call Quarantine.open() first)")
        return self._db

    async def store(
        self,
        raw: bytes,
        *,
        kind: str,
        mail_id: str,
        sender: str,
        recipients: list[str],
        reason: str,
        score: float | None = None,
        subject: str = "",
        client_address: str = "",
    ) -> str:
        """Keep ``raw`` durably and index it as ``<kind>-<mail_id>``; return that id.

        ``mail_id`` is the message's id in the content filter's log. Raises
        QuarantineError (nothing kept), or ValueError for a bad kind or mail_id.
        """
        qid = quarantine_id(kind, mail_id)
        db = self._conn
        try:
            await asyncio.to_thread(_write_durably, self.directory, qid, raw)
        except OSError as exc:
            raise QuarantineError(
                f"cannot write {kind} message to {self.directory}: {exc.strerror or exc}"
            ) from exc
        row = (qid, time.time(), kind, sender, json.dumps(recipients), reason, score, len(raw),
               client_address, subject)
        try:
            await db.execute(
                "INSERT INTO quarantine (id, time, kind, sender, recipients, reason, score, "
                "size, client_address, subject) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        except (sqlite3.Error, ValueError) as exc:
            await asyncio.to_thread(_remove_durably, self.directory / qid)
            raise QuarantineError(f"cannot index {kind} message in {self.database}: {exc}") from exc
        return qid

    async def list(self, kind: str | None = None, limit: int = 100) -> list[QuarantineEntry]:
        """The newest ``limit`` entries, optionally of one kind only."""
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown quarantine kind {kind!r} (expected one of {', '.join(KINDS)})")
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        where, args = ("WHERE kind = ?", (kind, limit)) if kind else ("", (limit,))
        async with self._conn.execute(
            f"SELECT {_COLUMNS} FROM quarantine {where} ORDER BY time DESC, id LIMIT ?", args
        ) as cursor:
            return [QuarantineEntry.from_row(row) for row in await cursor.fetchall()]

    async def _entry(self, qid: str) -> QuarantineEntry:
        _check_id(qid)
        async with self._conn.execute(
            f"SELECT {_COLUMNS} FROM quarantine WHERE id = ?", (qid,)
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise KeyError(f"no quarantined message with id {qid!r}")
        return QuarantineEntry.from_row(row)

    async def get(self, qid: str) -> tuple[QuarantineEntry, bytes]:
        """The index entry and the message exactly as it was stored.

        KeyError when the id is not in the index; QuarantineError when the entry is
        there but its file cannot be read (removed by hand, a disk problem).
        """
        entry = await self._entry(qid)
        path = self.directory / qid
        try:
            raw = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise QuarantineError(f"{qid}: the message file {path} is missing (its index entry "
                                  f"remains: 'filterd quarantine delete {qid}' removes it)") from None
        except OSError as exc:
            raise QuarantineError(f"{qid}: cannot read {path}: {exc.strerror or exc}") from None
        return entry, raw

    async def delete(self, qid: str) -> None:
        """Forget the entry, then remove the file (a crash in between leaves only a file)."""
        await self._entry(qid)
        await self._conn.execute("DELETE FROM quarantine WHERE id = ?", (qid,))
        await asyncio.to_thread(_remove_durably, self.directory / qid)

    async def mark_released(self, qid: str, how: str) -> None:
        """Record that the message was released, and how (e.g. the reinjection reply)."""
        _check_id(qid)
        cursor = await self._conn.execute(
            "UPDATE quarantine SET released_at = ?, released_how = ? WHERE id = ?",
            (time.time(), how, qid),
        )
        if cursor.rowcount == 0:
            raise KeyError(f"no quarantined message with id {qid!r}")
