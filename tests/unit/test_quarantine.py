"""The quarantine store: files written durably and atomically, the SQLite index beside them."""

from __future__ import annotations

import asyncio
import errno
import io
import itertools
import json
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from filterd.config import Config
from filterd.content import quarantine as qmod
from filterd.content.commands import _quarantine
from filterd.content.quarantine import Quarantine, QuarantineError
from tests.fixtures.sqlite import converting

MESSAGE = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: cheap\r\n\r\nbuy now\r\n"


def config(tmp_path: Path, extra: str = "") -> Config:
    return Config.from_text(f"data_directory = {tmp_path / 'data'}\n{extra}")


@pytest.fixture
async def quarantine(tmp_path: Path) -> AsyncIterator[Quarantine]:
    q = Quarantine(config(tmp_path))
    await q.open()
    yield q
    await q.close()


_mail_ids = itertools.count(1)


async def store_spam(q: Quarantine, raw: bytes = MESSAGE, **kw) -> str:
    args = dict(kind="spam", mail_id=f"Mail{next(_mail_ids):08d}", sender="a@example.org",
                recipients=["b@example.com", "c@example.com"],
                reason="BAYES_99=3.5,URIBL_BLACK=1.7", score=12.5, subject="cheap",
                client_address="192.0.2.7")
    args.update(kw)
    return await q.store(raw, **args)


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def index_rows(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "data" / "quarantine.db") as db:
        return db.execute("SELECT count(*) FROM quarantine").fetchone()[0]


# -- layout and configuration -------------------------------------------------------------


def test_default_directory_is_under_data_directory(tmp_path: Path) -> None:
    q = Quarantine(config(tmp_path))
    assert q.directory == tmp_path / "data" / "quarantine"
    assert q.database == tmp_path / "data" / "quarantine.db"


def test_quarantine_directory_can_be_set(tmp_path: Path) -> None:
    q = Quarantine(config(tmp_path, f"quarantine_directory = {tmp_path}/q\n"))
    assert q.directory == tmp_path / "q"


async def test_open_waits_for_another_worker_creating_the_index(tmp_path: Path) -> None:
    """Workers open the quarantine together; the one that does not convert the new index
    to WAL waits for the one that does instead of failing."""
    (tmp_path / "data").mkdir()
    other = converting(tmp_path / "data" / "quarantine.db")
    asyncio.get_running_loop().call_later(0.3, other.execute, "COMMIT")
    q = Quarantine(config(tmp_path))
    try:
        await q.open()
        await store_spam(q)
        assert index_rows(tmp_path) == 1
    finally:
        await q.close()
        other.close()


async def test_use_before_open_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not open"):
        await store_spam(Quarantine(config(tmp_path)))


# -- store, list, get, delete, release ------------------------------------------------------


async def test_store_writes_one_file_named_by_an_amavis_like_id(quarantine: Quarantine) -> None:
    qid = await store_spam(quarantine, mail_id="fbSD2R7xnBNZ")
    assert qid == "spam-fbSD2R7xnBNZ"  # <kind>-<mail_id>: the mail_id of the log line finds it
    assert files_in(quarantine.directory) == [qid]
    assert (quarantine.directory / qid).read_bytes() == MESSAGE
    assert (quarantine.directory / qid).stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("kind", qmod.KINDS)
async def test_every_amavis_kind_prefixes_the_id(quarantine: Quarantine, kind: str) -> None:
    assert (await store_spam(quarantine, kind=kind)).startswith(kind + "-")


async def test_unknown_kind_is_refused_before_anything_is_written(quarantine: Quarantine) -> None:
    with pytest.raises(ValueError, match="unknown quarantine kind 'ham'"):
        await store_spam(quarantine, kind="ham")
    assert files_in(quarantine.directory) == []


@pytest.mark.parametrize("mail_id", ["short", "../../etc/pw", "fbSD2R7xnBNZ0", "fbSD2R7xnBN-"])
async def test_bad_mail_id_is_refused_before_anything_is_written(quarantine: Quarantine, mail_id: str) -> None:
    with pytest.raises(ValueError, match="bad mail_id"):
        await store_spam(quarantine, mail_id=mail_id)
    assert files_in(quarantine.directory) == []


async def test_the_same_mail_id_twice_never_overwrites(quarantine: Quarantine) -> None:
    qid = await store_spam(quarantine, mail_id="fbSD2R7xnBNZ")
    with pytest.raises(QuarantineError, match="already exists"):
        await store_spam(quarantine, b"other", mail_id="fbSD2R7xnBNZ")
    assert (await quarantine.get(qid))[1] == MESSAGE
    assert await store_spam(quarantine, kind="virus", mail_id="fbSD2R7xnBNZ") == "virus-fbSD2R7xnBNZ"


async def test_an_entry_whose_file_is_gone_is_a_clear_error(quarantine: Quarantine) -> None:
    qid = await store_spam(quarantine)
    (quarantine.directory / qid).unlink()
    with pytest.raises(QuarantineError, match=f"{qid}: the message file .* is missing"):
        await quarantine.get(qid)
    await quarantine.delete(qid)  # and the entry can still be removed
    assert await quarantine.list() == []


async def test_get_returns_the_index_entry_and_the_exact_bytes(quarantine: Quarantine) -> None:
    raw = MESSAGE + bytes(range(256))  # arbitrary 8-bit content survives unchanged
    qid = await store_spam(quarantine, raw)
    entry, data = await quarantine.get(qid)
    assert data == raw
    assert (entry.id, entry.kind, entry.sender) == (qid, "spam", "a@example.org")
    assert entry.recipients == ["b@example.com", "c@example.com"]
    assert (entry.reason, entry.score, entry.size) == ("BAYES_99=3.5,URIBL_BLACK=1.7", 12.5, len(raw))
    assert (entry.subject, entry.client_address) == ("cheap", "192.0.2.7")
    assert entry.time > 0
    assert (entry.released_at, entry.released_how) == (None, None)


async def test_null_sender_and_no_score(quarantine: Quarantine) -> None:
    qid = await store_spam(quarantine, kind="virus", sender="", score=None, reason="Eicar-Test")
    entry, _ = await quarantine.get(qid)
    assert (entry.sender, entry.score, entry.subject) == ("", None, "cheap")


async def test_list_newest_first_filtered_and_limited(quarantine: Quarantine) -> None:
    ids = [await store_spam(quarantine, kind=k) for k in ("spam", "virus", "spam", "banned")]
    listed = await quarantine.list()
    assert sorted(e.id for e in listed) == sorted(ids)
    assert [e.time for e in listed] == sorted((e.time for e in listed), reverse=True)
    assert {e.id for e in await quarantine.list("spam")} == {ids[0], ids[2]}
    assert len(await quarantine.list(limit=2)) == 2
    assert await quarantine.list("badh") == []


@pytest.mark.parametrize("kind, limit", [("ham", 10), (None, 0), (None, -1)])
async def test_list_rejects_bad_arguments(quarantine: Quarantine, kind: str | None, limit: int) -> None:
    with pytest.raises(ValueError):
        await quarantine.list(kind, limit)


async def test_delete_removes_file_and_entry(quarantine: Quarantine, tmp_path: Path) -> None:
    keep = await store_spam(quarantine)
    gone = await store_spam(quarantine)
    await quarantine.delete(gone)
    assert files_in(quarantine.directory) == [keep]
    assert [e.id for e in await quarantine.list()] == [keep]
    with pytest.raises(KeyError):
        await quarantine.get(gone)
    with pytest.raises(KeyError):
        await quarantine.delete(gone)


async def test_mark_released_records_when_and_how(quarantine: Quarantine) -> None:
    qid = await store_spam(quarantine)
    await quarantine.mark_released(qid, "smtp:[127.0.0.1]:10025 250 2.0.0 Ok: queued as 4Xyz")
    entry, data = await quarantine.get(qid)
    assert entry.released_how == "smtp:[127.0.0.1]:10025 250 2.0.0 Ok: queued as 4Xyz"
    assert entry.released_at is not None and entry.released_at >= entry.time
    assert data == MESSAGE  # releasing does not remove the message


async def test_index_survives_reopening(tmp_path: Path) -> None:
    q = Quarantine(config(tmp_path))
    await q.open()
    qid = await store_spam(q)
    await q.close()
    q2 = Quarantine(config(tmp_path))
    await q2.open()
    try:
        entry, data = await q2.get(qid)
    finally:
        await q2.close()
    assert (entry.id, data) == (qid, MESSAGE)


# -- unknown and malformed ids ----------------------------------------------------------------


@pytest.mark.parametrize(
    "qid",
    ["spam-AAAAAAAAAAAA", "../quarantine.db", "spam-AbCdEf12345", "spam-AbCdEf1234567",
     "ham-AbCdEf123456", "spam-AbCdEf12345/", "", "spam-AbCdEf12345\n"],
)
async def test_unknown_or_malformed_id_is_a_key_error_naming_it(quarantine: Quarantine, qid: str) -> None:
    await store_spam(quarantine)
    for call in (quarantine.get(qid), quarantine.delete(qid), quarantine.mark_released(qid, "x")):
        with pytest.raises(KeyError, match="no quarantined message with id"):
            await call
    assert len(await quarantine.list()) == 1


# -- durability and failure ---------------------------------------------------------------------


async def test_file_is_fsynced_then_renamed_then_directory_fsynced(
    quarantine: Quarantine, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def rename(src: os.PathLike[str], dst: os.PathLike[str]) -> None:
        assert Path(src).name.startswith(".") and Path(src).name.endswith(".tmp")
        events.append("rename")
        real_rename(src, dst)

    monkeypatch.setattr(qmod.os, "fsync", fsync)
    monkeypatch.setattr(qmod.os, "rename", rename)
    await store_spam(quarantine)
    assert events == ["fsync-file", "rename", "fsync-dir"]


async def test_disk_full_raises_and_leaves_nothing(
    quarantine: Quarantine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    written: list[int] = []

    def write(fd: int, data: bytes) -> int:
        if written:  # the first chunk goes to disk, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(real_write(fd, data[:10]))
        return written[-1]

    monkeypatch.setattr(qmod.os, "write", write)
    with pytest.raises(QuarantineError, match="No space left on device"):
        await store_spam(quarantine)
    assert files_in(quarantine.directory) == []
    assert index_rows(tmp_path) == 0


async def test_fsync_failure_raises_and_leaves_nothing(
    quarantine: Quarantine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(qmod.os, "fsync", fsync)
    with pytest.raises(QuarantineError, match="Input/output error"):
        await store_spam(quarantine)
    assert files_in(quarantine.directory) == []
    assert index_rows(tmp_path) == 0


async def test_index_failure_removes_the_renamed_file(
    quarantine: Quarantine, tmp_path: Path
) -> None:
    await quarantine._conn.execute("DROP TABLE quarantine")
    await quarantine._conn.execute(
        "CREATE TABLE quarantine (id TEXT PRIMARY KEY, time REAL, kind TEXT, sender TEXT, "
        "recipients TEXT, reason TEXT, score REAL, size INTEGER, client_address TEXT, "
        "subject TEXT CHECK (subject != 'cheap'), released_at REAL, released_how TEXT)"
    )
    with pytest.raises(QuarantineError, match="cannot index spam message"):
        await store_spam(quarantine)
    assert files_in(quarantine.directory) == []
    assert index_rows(tmp_path) == 0


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
async def test_read_only_directory_raises_and_leaves_nothing(quarantine: Quarantine, tmp_path: Path) -> None:
    quarantine.directory.chmod(0o500)
    try:
        with pytest.raises(QuarantineError, match="Permission denied"):
            await store_spam(quarantine)
    finally:
        quarantine.directory.chmod(0o750)
    assert files_in(quarantine.directory) == []
    assert index_rows(tmp_path) == 0


async def test_open_removes_temporary_files_of_a_crashed_writer(tmp_path: Path) -> None:
    q = Quarantine(config(tmp_path))
    await q.open()
    qid = await store_spam(q)
    await q.close()
    (q.directory / ".spam-AAAAAAAAAAAA.tmp").write_bytes(b"half a mess")
    await q.open()
    try:
        assert files_in(q.directory) == [qid]
    finally:
        await q.close()


async def test_recipients_are_stored_as_json(quarantine: Quarantine, tmp_path: Path) -> None:
    qid = await store_spam(quarantine, recipients=['odd"name"@example.com'])
    with sqlite3.connect(tmp_path / "data" / "quarantine.db") as db:
        (raw,) = db.execute("SELECT recipients FROM quarantine WHERE id = ?", (qid,)).fetchone()
    assert json.loads(raw) == ['odd"name"@example.com']


# -- filterd quarantine ---------------------------------------------------------------------


async def test_list_says_when_the_quarantine_is_empty(tmp_path: Path) -> None:
    out = io.StringIO()
    assert await _quarantine(config(tmp_path), "list", [], None, 10, out) == 0
    assert out.getvalue() == "the quarantine is empty\n"
    out = io.StringIO()
    assert await _quarantine(config(tmp_path), "list", [], "virus", 10, out) == 0
    assert out.getvalue() == "the quarantine holds no virus messages\n"
    out = io.StringIO()
    assert await _quarantine(config(tmp_path), "list", [], None, 10, out, json_out=True) == 0
    assert out.getvalue() == ""


async def test_list_json_one_object_per_entry(tmp_path: Path) -> None:
    q = Quarantine(config(tmp_path))
    await q.open()
    try:
        ids = [await store_spam(q, kind=k, subject="a\r\nb") for k in ("spam", "virus")]
    finally:
        await q.close()
    out = io.StringIO()
    assert await _quarantine(config(tmp_path), "list", [], None, 10, out, json_out=True) == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(ids)
    assert rows[0]["recipients"] == ["b@example.com", "c@example.com"] and rows[0]["subject"] == "a\r\nb"
    assert set(rows[0]) == {"id", "time", "kind", "sender", "recipients", "reason", "score", "size",
                            "client_address", "subject", "released_at", "released_how"}


@pytest.mark.parametrize("action", ["show", "release"])
async def test_show_and_release_of_a_missing_file_is_an_error_not_a_traceback(
        tmp_path: Path, action: str, capsys: pytest.CaptureFixture[str]) -> None:
    q = Quarantine(config(tmp_path))
    await q.open()
    try:
        qid = await store_spam(q)
    finally:
        await q.close()
    (tmp_path / "data" / "quarantine" / qid).unlink()
    assert await _quarantine(config(tmp_path), action, [qid], None, 10, io.StringIO()) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"filterd: {qid}: the message file ") and "is missing" in err
    assert f"filterd quarantine delete {qid}" in err
