"""The queue file format: round trip, every truncation detected, in-place flips survive."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from filterd.mta import queuefile as qf
from filterd.mta.queuefile import Recipient


def write(path: Path, content: bytes, recipients: list[Recipient] | None = None,
          sender: str = "alice@example.com") -> list[Recipient]:
    rcpts = recipients if recipients is not None else [
        Recipient("bob@example.net"), Recipient("carol@example.org", "Carol@Example.org", "FAILURE")]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        w = qf.QueueFileWriter(fd)
        w.envelope(1733466000.25, sender, rcpts, {"client_address": "192.0.2.7", "helo": "x=y"})
        for i in range(0, len(content), 1000):
            w.content(content[i:i + 1000])
        assert w.finish() == len(content)
    finally:
        os.close(fd)
    return rcpts


def read(path: Path) -> tuple[qf.Envelope, bytes]:
    fd = os.open(path, os.O_RDONLY)
    try:
        env = qf.read_envelope(fd)
        return env, qf.read_content(fd, env)
    finally:
        os.close(fd)


def test_round_trip(tmp_path: Path) -> None:
    body = b"Subject: hi\r\n\r\n" + b"x" * 200_000 + b"\r\n"
    write(tmp_path / "q", body)
    env, content = read(tmp_path / "q")
    assert content == body
    assert env.arrival == 1733466000.25
    assert env.sender == "alice@example.com"
    assert env.attributes == {"client_address": "192.0.2.7", "helo": "x=y"}
    assert [(r.address, r.orcpt, r.notify, r.done) for r in env.recipients] == [
        ("bob@example.net", "", "", False), ("carol@example.org", "Carol@Example.org", "FAILURE", False)]
    assert env.content_size == len(body)
    assert not env.warned


def test_null_sender_empty_body_and_raw_bytes(tmp_path: Path) -> None:
    raw_rcpt = b"j\xf6rg@example.com".decode("utf-8", "surrogateescape")
    write(tmp_path / "q", b"", [Recipient(raw_rcpt)], sender="")
    env, content = read(tmp_path / "q")
    assert env.sender == "" and content == b""
    assert env.recipients[0].address.encode("utf-8", "surrogateescape") == b"j\xf6rg@example.com"


def test_every_truncation_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "q"
    write(path, b"Subject: t\r\n\r\nbody\r\n" * 5)
    whole = path.read_bytes()
    cut = tmp_path / "cut"
    for size in range(len(whole)):
        cut.write_bytes(whole[:size])
        with pytest.raises(qf.QueueFileError):
            read(cut)


def test_every_flipped_content_byte_is_detected(tmp_path: Path) -> None:
    """Any single damaged byte (other than the flippable status bytes) is found."""
    path = tmp_path / "q"
    rcpts = write(path, b"Subject: t\r\n\r\nbody\r\n")
    whole = bytearray(path.read_bytes())
    status = {r.offset for r in rcpts}
    env, _ = read(path)
    status.add(env.warn_offset)
    bad = tmp_path / "bad"
    for i in range(len(whole)):
        if i in status:
            continue
        damaged = bytearray(whole)
        damaged[i] ^= 0x01
        bad.write_bytes(bytes(damaged))
        with pytest.raises(qf.QueueFileError):
            read(bad)


def test_done_flag_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "q"
    write(path, b"Subject: t\r\n\r\nbody\r\n")
    before = path.read_bytes()
    fd = os.open(path, os.O_RDWR)
    try:
        env = qf.read_envelope(fd)
        qf.mark_done(fd, [env.recipients[1]])
        qf.mark_done(fd, [env.recipients[1]])  # a repeat (after a crash) is harmless
        qf.mark_warned(fd, env)
    finally:
        os.close(fd)
    after = path.read_bytes()
    assert len(after) == len(before)
    assert sum(a != b for a, b in zip(before, after)) == 2  # two bytes flipped, nothing rewritten
    env, content = read(path)
    assert [r.done for r in env.recipients] == [False, True]
    assert [r.address for r in env.pending] == ["bob@example.net"]
    assert env.warned
    assert content == b"Subject: t\r\n\r\nbody\r\n"


def test_flip_refuses_a_byte_that_is_not_a_recipient(tmp_path: Path) -> None:
    path = tmp_path / "q"
    write(path, b"x")
    fd = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(qf.CorruptQueueFile):
            qf.mark_done(fd, [Recipient("a@b", offset=0)])
    finally:
        os.close(fd)


def test_writer_refuses_bad_envelopes(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "q", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(ValueError, match="at least one recipient"):
            qf.QueueFileWriter(fd).envelope(0, "a@b", [])
        with pytest.raises(ValueError, match="NUL"):
            qf.QueueFileWriter(fd).envelope(0, "a\0@b", [Recipient("c@d")])
        w = qf.QueueFileWriter(fd)
        with pytest.raises(RuntimeError):
            w.content(b"x")
    finally:
        os.close(fd)


def test_not_a_queue_file(tmp_path: Path) -> None:
    path = tmp_path / "q"
    write(path, b"x")
    data = bytearray(path.read_bytes())
    data[0:4] = b"XXXX"
    path.write_bytes(bytes(data))
    with pytest.raises(qf.CorruptQueueFile, match="magic"):
        read(path)
