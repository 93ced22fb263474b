"""What smtpd writes into the queue (filterd.mta.receive) and its small parsers."""

from __future__ import annotations

import errno
import os

import pytest

from filterd.mta.cleanup import Rewriting
from filterd.mta.queue import INCOMING, Queue
from filterd.mta.queuefile import Recipient, read_content, read_envelope
from filterd.mta.receive import Incoming, WriteError, header_section, parse_header, split_header, write_message
from filterd.mta.smtpd import decode_xtext, parse_esmtp_params, parse_path


def incoming(**kw) -> Incoming:
    values = dict(sender="a@x.example", recipients=[Recipient("b@relay.example")], client_name="mx.x.example",
                  client_address="192.0.2.7", helo="mx.x.example", protocol="ESMTP", local_client=False,
                  arrival=1733466000.0)
    values.update(kw)
    return Incoming(**values)


@pytest.mark.parametrize("data, head, rest", [
    (b"A: 1\r\nB: 2\r\n\r\nbody\r\n", b"A: 1\r\nB: 2\r\n", b"\r\nbody\r\n"),
    (b"A: 1\r\n folded\r\n\r\nbody", b"A: 1\r\n folded\r\n", b"\r\nbody"),
    (b"no header here\r\nA: 1\r\n", b"", b"no header here\r\nA: 1\r\n"),
    (b" leading space\r\n", b"", b" leading space\r\n"),
    (b"A: 1\r\nnot a field\r\n", b"A: 1\r\n", b"not a field\r\n"),
    (b"A: 1", b"A: 1", b""),
    (b"", b"", b""),
])
def test_split_header(data, head, rest):
    assert split_header(data) == (head, rest)


def test_parse_header_keeps_folding():
    assert parse_header(b"Subject: a\r\n b\r\nTo:  x@y\r\n") == [("Subject", " a\r\n b"), ("To", "  x@y")]


def test_header_section_order_and_missing_headers():
    msg = incoming(prepend=["X-Checked: yes"], local_client=True)
    out = header_section(Rewriting(), msg, b"Subject: s\r\n", "ABC123", "gw.example")
    lines = out.decode().split("\r\n")
    assert lines[0] == "X-Checked: yes"
    assert lines[1] == "Received: from mx.x.example (mx.x.example [192.0.2.7])"
    assert "Subject: s" in lines
    names = [line.split(":")[0] for line in lines if line and line[0] not in " \t"]
    assert names[-4:] == ["Message-Id", "Date", "From", "To"]
    # a remote client gets no added headers (always_add_missing_headers = no)
    out = header_section(Rewriting(), incoming(), b"Subject: s\r\n", "ABC123", "gw.example")
    assert b"Message-Id" not in out


def test_header_addresses_are_rewritten_when_masquerading():
    rw = Rewriting(masquerade_domains=("x.example",))
    out = header_section(rw, incoming(), b"From: a@host.x.example\r\n", "ABC123", "gw.example")
    assert b"From: a@x.example\r\n" in out


def test_write_message_commits_a_readable_file(tmp_path):
    queue = Queue(str(tmp_path))
    queue.setup()
    new = queue.create()
    written = write_message(new, Rewriting(), incoming(attributes={"ret_flags": "HDRS"}),
                            b"Message-Id: <m@x>\r\n\r\n" + b"y" * 200000, "gw.example")
    assert written.message_id == "<m@x>"
    fd = queue.open(INCOMING, written.qid)
    try:
        env = read_envelope(fd)
        content = read_content(fd, env)
    finally:
        os.close(fd)
    assert env.attributes == {"ret_flags": "HDRS", "encoding": "7bit"}
    assert env.content_size == written.size == len(content)
    assert content.startswith(b"Received: ") and content.endswith(b"y" * 200000)


@pytest.mark.parametrize("declared, data, recorded", [
    ({}, b"Subject: caf\xc3\xa9\r\n\r\nbody\r\n", "8bit"),
    ({}, b"Subject: s\r\n\r\n" + b"x" * 300000 + b"\xe9\r\n", "8bit"),
    ({}, b"Subject: s\r\n\r\nplain\r\n", "7bit"),
    ({"encoding": "8bit"}, b"Subject: s\r\n\r\nplain\r\n", "8bit"),  # as declared
    ({"encoding": "7bit"}, b"Subject: s\r\n\r\n\xe9\r\n", "7bit"),
])
def test_the_encoding_is_recorded_even_when_not_declared(tmp_path, declared, data, recorded):
    """The smtp client decides BODY=8BITMIME from the envelope: a message sent without
    BODY= gets the encoding found in its content, so a large one is not read twice."""
    queue = Queue(str(tmp_path))
    queue.setup()
    written = write_message(queue.create(), Rewriting(), incoming(attributes=dict(declared)), data, "gw.example")
    assert queue.read_envelope(INCOMING, written.qid).attributes["encoding"] == recorded


def test_a_body_without_header_gets_its_empty_line(tmp_path):
    queue = Queue(str(tmp_path))
    queue.setup()
    written = write_message(queue.create(), Rewriting(), incoming(), b"just text\r\n", "gw.example")
    fd = queue.open(INCOMING, written.qid)
    try:
        content = read_content(fd, read_envelope(fd))
    finally:
        os.close(fd)
    head, _, body = content.partition(b"\r\n\r\n")
    assert head.startswith(b"Received: ") and body == b"just text\r\n"


def test_a_write_error_removes_the_partial_file(tmp_path, monkeypatch):
    queue = Queue(str(tmp_path))
    queue.setup()
    new = queue.create()

    def full(chunk: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(new.writer, "content", full)
    with pytest.raises(WriteError, match="queue file write error"):
        write_message(new, Rewriting(), incoming(), b"Subject: s\r\n\r\nbody\r\n", "gw.example")
    assert os.listdir(queue.dir(INCOMING)) == []


@pytest.mark.parametrize("text, decoded", [
    ("abc", "abc"), ("a+2Bb", "a+b"), ("a+3Db", "a=b"), ("a+2", None), ("a+zz", None),
    ("a=b", None), ("a b", None), ("a+0Ab", None), ("é", None),
])
def test_decode_xtext(text, decoded):
    assert decode_xtext(text) == decoded


def test_parse_esmtp_params():
    assert parse_esmtp_params("size=10 BODY=8BITMIME SMTPUTF8 ENVID=Ab") == [
        ("SIZE", "10"), ("BODY", "8BITMIME"), ("SMTPUTF8", None), ("ENVID", "Ab")]


@pytest.mark.parametrize("text, parsed", [
    ("<a@b.example>", ("a@b.example", "")),
    ("<a@b.example> SIZE=10 BODY=8BITMIME", ("a@b.example", "SIZE=10 BODY=8BITMIME")),
    ("<>", ("", "")),
    ("<> SIZE=1", ("", "SIZE=1")),
    ("a@b.example", ("a@b.example", "")),
    ("<@r1.example,@r2.example:a@b.example>", ("a@b.example", "")),
    ("<a@b.example.>", ("a@b.example", "")),
    ('<"a b>c"@b.example>', ('"a b>c"@b.example', "")),
    ("<a@other.example@b.example>", ("a@other.example@b.example", "")),
    ("<user>", ("user", "")),
    ("<a b@c>", None),
    ("<a@b", None),
    ("<a@b>x", None),
    ('<"a@b>', None),
    ("<@r1.example:>", None),
    ("<a(comment)@b>", None),
])
def test_parse_path(text, parsed):
    assert parse_path(text) == parsed


async def test_client_names_are_kept_a_short_while(monkeypatch):
    """A client that comes back within the TTL is named without another lookup (a
    thread hop each); after it, or past the size limit, it is looked up again."""
    from filterd.mta import smtpd

    asked: list[str] = []

    def lookup(address: str, found: list[str]) -> tuple[str, str]:
        asked.append(address)
        return f"host-{address}", f"host-{address}"

    monkeypatch.setattr(smtpd, "_lookup_peer", lookup)
    now = [1000.0]
    names = smtpd.PeerNames(ttl=60, limit=2, clock=lambda: now[0])
    assert await names.lookup("192.0.2.1") == ("host-192.0.2.1", "host-192.0.2.1")
    assert await names.lookup("192.0.2.1") == ("host-192.0.2.1", "host-192.0.2.1")
    assert asked == ["192.0.2.1"]
    now[0] += 61
    await names.lookup("192.0.2.1")
    assert asked == ["192.0.2.1"] * 2
    await names.lookup("192.0.2.2")
    await names.lookup("192.0.2.3")  # the limit drops the oldest, 192.0.2.1
    await names.lookup("192.0.2.1")
    assert asked[-3:] == ["192.0.2.2", "192.0.2.3", "192.0.2.1"]
