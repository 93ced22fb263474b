"""The content filter over real sockets, with a real aiosmtpd server as the next hop."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP

from filterd.config import Config
from filterd.filter.server import ContentFilterServer
from filterd.smtp.server import LINE_LIMIT
from tests.fixtures.programs import free_port

MESSAGE = (b"From: a@example.org\r\nTo: b@example.com\r\nSubject: hello\r\n"
           b"Message-ID: <m1@example.org>\r\n\r\nHello.\r\n.leading dot\r\n")


@dataclass
class SinkHandler:
    """The next hop: records what it got; can refuse recipients."""

    messages: list[Any] = field(default_factory=list)
    xforward: list[str] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    defer: set[str] = field(default_factory=set)

    async def handle_EHLO(self, server: SMTP, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        return responses[:-1] + ["250-XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT", responses[-1]]

    async def handle_RCPT(self, server: SMTP, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if address in self.refuse:
            return "550 5.1.1 <%s>: Recipient address rejected" % address
        if address in self.defer:
            return "450 4.2.0 <%s>: Recipient address rejected: Greylisted" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return f"250 2.0.0 Ok: queued as SINK{len(self.messages)}"


class SinkSMTP(SMTP):
    line_length_limit = 1 << 22  # as Postfix's smtpd, the next hop takes long lines

    async def smtp_XFORWARD(self, arg: str) -> None:
        self.event_handler.xforward.append(arg)
        await self.push("250 2.0.0 Ok")


@pytest.fixture
async def sink() -> AsyncIterator[tuple[SinkHandler, int]]:
    handler = SinkHandler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SinkSMTP(handler, loop=loop), "127.0.0.1", 0)
    yield handler, server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
def header_checks(tmp_path: Path) -> str:
    path = tmp_path / "header_checks"
    path.write_text("/^Subject: reject me/ REJECT 5.7.1 go away\n/^Subject: hold me/ HOLD\n")
    return f"regexp:{path}"


@pytest.fixture
async def start_filter(tmp_path: Path, header_checks: str) -> AsyncIterator[Any]:
    servers: list[ContentFilterServer] = []

    async def start(forward_port: int, extra: str = "") -> tuple[ContentFilterServer, int]:
        cfg = Config.from_text(
            f"data_directory = {tmp_path}\nmyhostname = filter.example\n"
            f"content_checks = postfix_checks\nheader_checks = {header_checks}\n"
            f"spam_tag_level = -999\nfilter_forward = smtp:[127.0.0.1]:{forward_port}\n"
            f"filter_timeout = 20s\n{extra}")
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        server = ContentFilterServer.from_config(cfg)
        await server.start(sock)
        servers.append(server)
        return server, sock.getsockname()[1]

    yield start
    for server in servers:
        await server.stop(5)


class Client:
    """A plain SMTP/LMTP client: exact replies, including several after one DATA."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> tuple["Client", str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        return client, await client.reply()

    async def reply(self) -> str:
        lines = []
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 30)).decode().rstrip("\r\n")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return "\n".join(lines)

    async def cmd(self, line: str) -> str:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def send_data(self, data: bytes, replies: int = 1) -> list[str]:
        assert (await self.cmd("DATA")).startswith("354")
        stuffed = b"\r\n".join(b"." + l if l.startswith(b".") else l for l in data.split(b"\r\n"))
        self.writer.write(stuffed + (b"" if stuffed.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        await self.writer.drain()
        return [await self.reply() for _ in range(replies)]

    async def transaction(self, rcpts: list[str], data: bytes = MESSAGE, helo: str = "EHLO pf.example",
                          xforward: str | None = None) -> list[str]:
        assert (await self.cmd(helo)).startswith("250")
        if xforward:
            assert await self.cmd(f"XFORWARD {xforward}") == "250 2.0.0 Ok"
        assert (await self.cmd("MAIL FROM:<a@example.org>")).startswith("250")
        for r in rcpts:
            assert (await self.cmd(f"RCPT TO:<{r}>")).startswith("250")
        return await self.send_data(data, len(rcpts) if helo.startswith("LHLO") else 1)

    def close(self) -> None:
        self.writer.close()


async def test_clean_message_passed_with_headers_and_xforward(sink: Any, start_filter: Any) -> None:
    handler, sink_port = sink
    _, port = await start_filter(sink_port)
    client, greeting = await Client.connect(port)
    assert greeting == "220 filter.example SMTP filterd service ready"
    ehlo = await client.cmd("EHLO pf.example")
    assert "250-XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT" in ehlo.splitlines()
    [reply] = await client.transaction(
        ["b@example.com"], helo="EHLO pf.example",
        xforward="NAME=mx.sender.example ADDR=192.0.2.7 PORT=4711 PROTO=ESMTP HELO=mx.sender.example "
                 "IDENT=ABC123 SOURCE=REMOTE")
    client.close()
    assert reply == f"250 2.0.0 from MTA(smtp:[127.0.0.1]:{sink_port}): 250 2.0.0 Ok: queued as SINK1"
    [got] = handler.messages
    assert got.mail_from == "a@example.org" and got.rcpt_tos == ["b@example.com"]
    content = got.original_content
    head, body = content.split(b"\r\n\r\n", 1)
    assert body == b"Hello.\r\n.leading dot\r\n"  # body bytes untouched, dot-stuffing undone
    lines = head.decode().replace("\r\n\t", " ").split("\r\n")
    assert lines[0] == "X-Spam-Flag: NO"
    assert lines[3].startswith("X-Spam-Status: No, score=0 tagged_above=-999 required=6.31 tests=[none]")
    assert lines[4].startswith("Received: from pf.example ([127.0.0.1]) by filter.example "
                               f"(filterd, port {port}) with ESMTP id ")
    assert lines[5:] == ["From: a@example.org", "To: b@example.com", "Subject: hello",
                         "Message-ID: <m1@example.org>"]
    assert handler.xforward == ["NAME=mx.sender.example ADDR=192.0.2.7 PROTO=ESMTP "
                                "HELO=mx.sender.example SOURCE=REMOTE PORT=4711 IDENT=ABC123"]


async def test_reject_gives_5xx_and_nothing_forwarded(sink: Any, start_filter: Any) -> None:
    handler, sink_port = sink
    _, port = await start_filter(sink_port)
    client, _ = await Client.connect(port)
    [reply] = await client.transaction(["b@example.com"], data=b"Subject: reject me\r\n\r\nx\r\n")
    client.close()
    assert reply == "550 5.7.1 go away"
    assert handler.messages == []


async def test_next_hop_down_gives_451_never_250(start_filter: Any) -> None:
    dead = free_port()
    _, port = await start_filter(dead)
    client, _ = await Client.connect(port)
    [reply] = await client.transaction(["b@example.com"])
    # the connection stays usable after the failure
    assert (await client.cmd("RSET")).startswith("250")
    client.close()
    assert reply.startswith(f"451 4.4.1 Error in processing, forwarding to smtp:[127.0.0.1]:{dead} FAILED: ")


async def test_lmtp_replies_per_recipient(sink: Any, start_filter: Any) -> None:
    handler, sink_port = sink
    handler.refuse.add("gone@example.com")
    _, port = await start_filter(sink_port, "filter_protocol = lmtp")
    client, greeting = await Client.connect(port)
    assert greeting == "220 filter.example LMTP filterd service ready"
    replies = await client.transaction(["b@example.com", "gone@example.com", "c@example.com"],
                                       helo="LHLO pf.example")
    client.close()
    hop = f"smtp:[127.0.0.1]:{sink_port}"
    assert replies == [
        f"250 2.0.0 from MTA({hop}): 250 2.0.0 Ok: queued as SINK1",
        f"550 5.1.1 from MTA({hop}): 550 5.1.1 <gone@example.com>: Recipient address rejected",
        f"250 2.0.0 from MTA({hop}): 250 2.0.0 Ok: queued as SINK1",
    ]
    assert handler.messages[0].rcpt_tos == ["b@example.com", "c@example.com"]


async def test_smtp_mode_permanent_refusal_of_one_recipient_delivers_the_others(
        sink: Any, start_filter: Any) -> None:
    """As amavisd-new: the accepted recipient gets the message, the sender gets a DSN
    (from <>, sent before the message) for the refused one, Postfix gets 250."""
    handler, sink_port = sink
    handler.refuse.add("gone@example.com")
    _, port = await start_filter(sink_port)
    client, _ = await Client.connect(port)
    [reply] = await client.transaction(["b@example.com", "gone@example.com"])
    client.close()
    assert reply == f"250 2.0.0 from MTA(smtp:[127.0.0.1]:{sink_port}): 250 2.0.0 Ok: queued as SINK2"
    dsn, message = handler.messages
    assert (dsn.mail_from, dsn.rcpt_tos) == ("<>", ["a@example.org"])
    text = dsn.original_content.decode()
    assert "report-type=delivery-status" in text and "Subject: Undelivered Mail Returned to Sender" in text
    assert "Final-Recipient: rfc822; gone@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n" in text
    assert "Message-ID: <m1@example.org>" in text  # the original headers come back
    assert message.rcpt_tos == ["b@example.com"]


async def test_smtp_mode_refusal_to_the_null_sender_sends_no_dsn(sink: Any, start_filter: Any) -> None:
    handler, sink_port = sink
    handler.refuse.add("gone@example.com")
    _, port = await start_filter(sink_port)
    client, _ = await Client.connect(port)
    assert (await client.cmd("EHLO pf.example")).startswith("250")
    assert (await client.cmd("MAIL FROM:<>")).startswith("250")
    assert (await client.cmd("RCPT TO:<b@example.com>")).startswith("250")
    assert (await client.cmd("RCPT TO:<gone@example.com>")).startswith("250")
    [reply] = await client.send_data(MESSAGE)
    client.close()
    assert reply.startswith("250 2.0.0 from MTA(")
    [message] = handler.messages
    assert message.rcpt_tos == ["b@example.com"]


async def test_smtp_mode_temporary_refusal_sends_nothing_and_defers(sink: Any, start_filter: Any) -> None:
    """One reply for all: a recipient refused for now defers the whole message, and no
    one gets it yet (on the retry nobody gets it twice)."""
    handler, sink_port = sink
    handler.defer.add("later@example.com")
    handler.refuse.add("gone@example.com")
    _, port = await start_filter(sink_port)
    client, _ = await Client.connect(port)
    [reply] = await client.transaction(["b@example.com", "later@example.com", "gone@example.com"])
    client.close()
    assert reply.startswith("450 4.2.0 from MTA(")
    assert handler.messages == []


@pytest.mark.parametrize("args, reply", [
    ("", "501 5.5.4 Syntax: XFORWARD attribute=value..."),
    ("NAME", "501 5.5.4 Error: attribute=value expected"),
    ("NAME=", "501 5.5.4 Error: attribute=value expected"),
    ("FOO=bar", "501 5.5.4 Bad XFORWARD attribute name: FOO"),
    ("ADDR=not-an-ip", "501 5.5.4 Bad ADDR syntax: not-an-ip"),
    ("ADDR=IPv6:zz::1", "501 5.5.4 Bad ADDR syntax: IPv6:zz::1"),
    ("PORT=70000x", "501 5.5.4 Bad PORT syntax: 70000x"),
    ("NAME=bad..name", "501 5.5.4 Bad NAME syntax: bad..name"),
    ("SOURCE=ELSEWHERE", "501 5.5.4 Bad SOURCE syntax: ELSEWHERE"),
    ("HELO=" + "x" * 256, "501 5.5.4 Error: attribute value too long"),
    ("NAME=[UNAVAILABLE] ADDR=[TEMPUNAVAIL] HELO=+5Bx+5D", "250 2.0.0 Ok"),
    ("addr=IPv6:2001:db8::1 name=host.example", "250 2.0.0 Ok"),
])
async def test_xforward_replies(sink: Any, start_filter: Any, args: str, reply: str) -> None:
    _, port = await start_filter(sink[1])
    client, _ = await Client.connect(port)
    await client.cmd("EHLO pf.example")
    assert await client.cmd(f"XFORWARD {args}".rstrip()) == reply
    client.close()


async def test_xforward_inside_transaction_refused(sink: Any, start_filter: Any) -> None:
    _, port = await start_filter(sink[1])
    client, _ = await Client.connect(port)
    await client.cmd("EHLO pf.example")
    await client.cmd("MAIL FROM:<a@example.org>")
    assert await client.cmd("XFORWARD ADDR=192.0.2.1") == "503 5.5.1 Error: MAIL transaction in progress"
    client.close()


async def test_oversize_message_552(sink: Any, start_filter: Any) -> None:
    handler, sink_port = sink
    _, port = await start_filter(sink_port, "message_size_limit = 1000")
    client, _ = await Client.connect(port)
    assert "250-SIZE 1000" in (await client.cmd("EHLO pf.example")).splitlines()
    assert await client.cmd("MAIL FROM:<a@example.org> SIZE=5000") == \
        "552 5.3.4 Message size exceeds fixed limit"
    assert (await client.cmd("MAIL FROM:<a@example.org>")).startswith("250")
    assert (await client.cmd("RCPT TO:<b@example.com>")).startswith("250")
    [reply] = await client.send_data(MESSAGE + b"x" * 2000 + b"\r\n")
    client.close()
    assert reply == "552 5.3.4 Error: message file too big"
    assert handler.messages == []


async def test_too_many_connections_421(sink: Any, start_filter: Any) -> None:
    _, port = await start_filter(sink[1], "filter_max_connections = 1")
    first, greeting = await Client.connect(port)
    assert greeting.startswith("220 ")
    second, refused = await Client.connect(port)
    assert refused == "421 4.3.2 Too many connections, try again later"
    assert await second.reader.read() == b""  # and closed
    second.close()
    assert (await first.cmd("NOOP")).startswith("250")
    first.close()


async def test_hold_is_quarantined_before_250(sink: Any, start_filter: Any, tmp_path: Path) -> None:
    handler, sink_port = sink
    server, port = await start_filter(sink_port)
    client, _ = await Client.connect(port)
    [reply] = await client.transaction(["b@example.com"], data=b"Subject: hold me\r\n\r\nx\r\n")
    client.close()
    assert reply.startswith("250 2.7.0 Ok, held, id=") and reply.endswith(" - header/body checks")
    [entry] = await server.quarantine.list()
    assert entry.kind == "badh" and entry.recipients == ["b@example.com"]
    assert (tmp_path / "quarantine" / entry.id).exists()
    assert handler.messages == []


async def test_quarantine_failure_gives_451(sink: Any, start_filter: Any, tmp_path: Path) -> None:
    handler, sink_port = sink
    _, port = await start_filter(sink_port)
    directory = tmp_path / "quarantine"
    shutil.rmtree(directory)
    directory.write_text("not a directory")
    client, _ = await Client.connect(port)
    [reply] = await client.transaction(["b@example.com"], data=b"Subject: hold me\r\n\r\nx\r\n")
    client.close()
    assert reply.startswith("451 4.5.0 Error in processing, id=") and reply.endswith("quarantine FAILED")


async def test_stop_finishes_message_in_flight(tmp_path: Path, start_filter: Any) -> None:
    """A next hop that answers slowly: stop() waits for the reply, then the client gets 421."""
    gate = asyncio.Event()

    class Slow(SinkHandler):
        async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
            await gate.wait()
            return await super().handle_DATA(server, session, envelope)

    handler = Slow()
    loop = asyncio.get_running_loop()
    slow = await loop.create_server(lambda: SinkSMTP(handler, loop=loop), "127.0.0.1", 0)
    server, port = await start_filter(slow.sockets[0].getsockname()[1])
    client, _ = await Client.connect(port)
    pending = asyncio.create_task(client.transaction(["b@example.com"]))
    while not server.handler.tasks:
        await asyncio.sleep(0.01)
    stopping = asyncio.create_task(server.stop(10))
    await asyncio.sleep(0.1)
    assert not stopping.done()
    gate.set()
    [reply] = await pending
    assert reply.startswith("250 2.0.0 from MTA(")
    assert await client.reply() == "421 4.3.2 Service shutting down, try again later"
    await stopping
    client.close()
    slow.close()


async def test_quarantine_release_reinjects_and_check_reports(sink: Any, start_filter: Any,
                                                              tmp_path: Path) -> None:
    import io
    import json

    from filterd.content.commands import _check, _quarantine

    handler, sink_port = sink
    _, port = await start_filter(sink_port)
    client, _ = await Client.connect(port)
    await client.transaction(["b@example.com", "c@example.com"], data=b"Subject: hold me\r\n\r\nx\r\n")
    client.close()
    cfg = Config.from_text(f"data_directory = {tmp_path}\nfilter_forward = smtp:[127.0.0.1]:{sink_port}\n"
                           f"content_checks = postfix_checks\n")
    out = io.StringIO()
    assert await _quarantine(cfg, "list", [], None, 10, out) == 0
    qid = out.getvalue().split()[0]
    assert qid.startswith("badh-") and "<b@example.com>,<c@example.com>" in out.getvalue()
    out = io.StringIO()
    assert await _quarantine(cfg, "release", [qid], None, 10, out) == 0
    assert out.getvalue().startswith(f"{qid}: released to <b@example.com>, <c@example.com>: 250 2.0.0 from MTA(")
    [released] = handler.messages
    assert released.rcpt_tos == ["b@example.com", "c@example.com"]
    assert b"Subject: hold me\r\n" in released.original_content
    assert await _quarantine(cfg, "release", ["spam-nonexistent"], None, 10, io.StringIO()) == 1
    assert await _quarantine(cfg, "delete", [qid], None, 10, io.StringIO()) == 0

    path = tmp_path / "m.eml"
    path.write_bytes(b"Subject: reject me\r\n\r\nx\r\n")
    cfg = Config.from_text(f"data_directory = {tmp_path}\ncontent_checks = postfix_checks\n"
                           f"header_checks = regexp:{tmp_path / 'header_checks'}\n")
    out = io.StringIO()
    assert await _check(cfg, [str(path), str(tmp_path / "missing.eml")], True, out) == 2  # EXIT_ERROR
    report = json.loads(out.getvalue())
    assert (report["action"], report["reply"]) == ("reject", "550 5.7.1 go away")
    assert report["symbols"][0]["name"] == "POSTFIX_HEADER_CHECKS"
    out = io.StringIO()
    assert await _check(cfg, [str(path)], False, out) == 1  # EXIT_FOUND: header checks reject it
    assert f"{path}: reject (POSTFIX-CHECKS), score 0" in out.getvalue()


async def test_over_long_line_is_taken_and_the_session_goes_on(sink: Any, start_filter: Any) -> None:
    """A DATA line far over the reader's limit is no reason to refuse a message (a 5xx
    would make Postfix bounce what it had accepted): the message goes on whole, and the
    next command, pipelined right behind the end-of-data line, is answered."""
    handler, sink_port = sink
    _, port = await start_filter(sink_port, "message_size_limit = 0")
    client, _ = await Client.connect(port)
    await client.cmd("EHLO pf.example")
    assert (await client.cmd("MAIL FROM:<a@example.org>")).startswith("250")
    assert (await client.cmd("RCPT TO:<b@example.com>")).startswith("250")
    assert (await client.cmd("DATA")).startswith("354")
    long_line = b"x" * (LINE_LIMIT + 10)
    client.writer.write(MESSAGE + long_line + b"\r\n.\r\nRSET\r\n")
    assert (await client.reply()).startswith("250 2.0.0 from MTA")
    assert (await client.reply()).startswith("250")  # RSET
    [got] = handler.messages
    assert got.original_content.endswith(b"\r\n\r\nHello.\r\nleading dot\r\n" + long_line + b"\r\n")
    client.close()


#: The attack of issue 11: an attachment name, RFC 2047-encoded, holding CR LF and fake
#: replies. Banned (.exe), its name lands in the 554 reply text.
INJECTED_NAME = "=?utf-8?q?x=0D=0A250_2.0.0_Ok=0D=0A250_2.0.0_Ok=0D=0A=00=1B=0B=0C=C2=85=E2=80=A8y.exe?="
BANNED_MESSAGE = (
    b"From: a@example.org\r\nTo: b@example.com\r\nSubject: banned\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BB\r\n\r\n"
    b"--BB\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
    b"--BB\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Disposition: attachment; filename=\"" + INJECTED_NAME.encode() + b"\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAA\r\n--BB--\r\n")


@pytest.mark.parametrize("protocol", ["smtp", "lmtp"])
async def test_reply_injection_from_a_banned_name_stays_one_reply(sink: Any, start_filter: Any,
                                                                   protocol: str) -> None:
    """Each reply after DATA is one line of printable ASCII: the fake replies in the
    attachment name stay inside it, and the next pipelined transaction gets its own."""
    handler, sink_port = sink
    _, port = await start_filter(sink_port, f"content_checks = banned\nbanned_action = reject\n"
                                             f"filter_protocol = {protocol}")
    client, _ = await Client.connect(port)
    helo = "LHLO" if protocol == "lmtp" else "EHLO"
    await client.cmd(f"{helo} pf.example")
    stuffed = BANNED_MESSAGE + b".\r\n"
    rcpts = ["b@example.com", "c@example.com"]
    client.writer.write(b"MAIL FROM:<a@example.org>\r\n"
                        + b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts)
                        + b"DATA\r\n" + stuffed
                        + b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    replies = [await client.reply() for _ in range(4)]
    assert [r[:3] for r in replies] == ["250", "250", "250", "354"]
    after_data = [await client.reply() for _ in range(len(rcpts) if protocol == "lmtp" else 1)]
    for reply in after_data:
        assert reply.startswith("554 5.7.0 Reject, id=")
        assert reply.isascii() and reply.isprintable() and len(reply) <= 510
        assert "x??250 2.0.0 Ok??250 2.0.0 Ok" in reply
    # the next transaction's replies are its own: MAIL, RCPT, DATA
    assert [(await client.reply())[:3] for _ in range(3)] == ["250", "250", "354"]
    client.writer.write(MESSAGE + b".\r\nQUIT\r\n")
    assert (await client.reply()).startswith("250 2.0.0 from MTA(")
    assert (await client.reply()).startswith("221")
    client.close()
    [passed] = handler.messages
    assert passed.rcpt_tos == ["b@example.com"]


async def test_client_stalled_inside_data_is_timed_out(sink: Any, start_filter: Any,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """filter_timeout limits every wait for the client, inside DATA too (Postfix's
    smtpd_timeout): a stalled client is cut off, its connection slot and memory freed."""
    caplog.set_level("INFO", "filterd.content")
    handler, sink_port = sink
    server, port = await start_filter(sink_port, "filter_timeout = 1s\nfilter_max_connections = 1")
    client, _ = await Client.connect(port)
    await client.cmd("EHLO pf.example")
    await client.cmd("MAIL FROM:<a@example.org>")
    await client.cmd("RCPT TO:<b@example.com>")
    assert (await client.cmd("DATA")).startswith("354")
    client.writer.write(MESSAGE + b"x" * 100_000)  # then nothing more, no end of data
    await client.writer.drain()
    assert await asyncio.wait_for(client.reader.read(), 30) == b""  # closed by the server
    client.close()
    assert any(r.getMessage().startswith("timeout after DATA from [127.0.0.1]:") for r in caplog.records)
    while server.connections:  # the slot is free again: a new client is served
        await asyncio.sleep(0.05)
    again, greeting = await Client.connect(port)
    assert greeting.startswith("220 ")
    again.close()
    assert handler.messages == []


async def test_slow_processing_is_not_the_clients_idle_time(sink: Any, start_filter: Any) -> None:
    """The time a message takes to be checked is not the client's: checks slower than
    filter_timeout do not cut the session, and the reply still comes."""
    release = asyncio.Event()
    handler, sink_port = sink
    server, port = await start_filter(sink_port, "filter_timeout = 1s")
    scan = server.pipeline.scan

    async def slow_scan(*args: Any) -> Any:
        await release.wait()
        return await scan(*args)

    server.pipeline.scan = slow_scan  # a content check that takes long
    client, _ = await Client.connect(port)
    pending = asyncio.create_task(client.transaction(["b@example.com"]))
    while not server.handler.tasks:
        await asyncio.sleep(0.01)
    await asyncio.sleep(2.5)  # more than the timeout passes while the message is checked
    release.set()
    [reply] = await pending
    assert reply.startswith("250 2.0.0 from MTA(")
    assert (await client.cmd("NOOP")).startswith("250")
    client.close()


@pytest.mark.parametrize("command, reply", [
    ("MAIL FROM:<j\u00fcrgen@example.org>", "553 5.6.7 Must declare SMTPUTF8 to send unicode address"),
    ("MAIL FROM:<\"a\x01b\"@example.org>", "501 5.1.7 Bad sender address syntax"),
    ("MAIL FROM:<\"a\x1bb\"@example.org> SMTPUTF8", "501 5.1.7 Bad sender address syntax"),
    ("MAIL FROM:<a\u2028b@example.org> SMTPUTF8", "501 5.1.7 Bad sender address syntax"),
    ("MAIL FROM:<j\u00fcrgen@example.org> SMTPUTF8", "250 2.1.0 Ok"),
    ("RCPT TO:<j\u00fcrgen@example.com>", "553 5.6.7 Must declare SMTPUTF8 to send unicode address"),
    ("RCPT TO:<\"b\x7fc\"@example.com>", "501 5.1.3 Bad recipient address syntax"),
    ("RCPT TO:<\"b\x00c\"@example.com>", "501 5.1.3 Bad recipient address syntax"),
    ("RCPT TO:<\"b c\"@example.com>", "250 2.1.5 Ok"),
])
async def test_unusable_addresses_refused_up_front(sink: Any, start_filter: Any, command: str,
                                                   reply: str) -> None:
    """An address that could not be passed on gets Postfix's 5xx at MAIL/RCPT, not 250
    and then a 4xx after DATA that Postfix retries until the message expires."""
    _, port = await start_filter(sink[1])
    client, _ = await Client.connect(port)
    await client.cmd("EHLO pf.example")
    if command.startswith("RCPT"):
        assert (await client.cmd("MAIL FROM:<a@example.org>")).startswith("250")
    client.writer.write(command.encode("utf-8") + b"\r\n")
    assert await client.reply() == reply
    client.close()


async def test_addresses_go_on_as_received(start_filter: Any) -> None:
    """A quoted local part and a UTF-8 address with SMTPUTF8 reach the next hop as they
    were received (MAIL and RCPT are written by the forwarder, not reparsed)."""
    handler = SinkHandler()
    loop = asyncio.get_running_loop()
    utf8_sink = await loop.create_server(lambda: SinkSMTP(handler, loop=loop, enable_SMTPUTF8=True),
                                         "127.0.0.1", 0)
    _, port = await start_filter(utf8_sink.sockets[0].getsockname()[1])
    client, _ = await Client.connect(port)
    await client.cmd("EHLO pf.example")
    assert (await client.cmd(r'MAIL FROM:<"a\\b c"@example.org> SMTPUTF8')).startswith("250")
    client.writer.write("RCPT TO:<j\u00fcrgen@example.com>\r\n".encode())
    assert (await client.reply()).startswith("250")
    [reply] = await client.send_data(MESSAGE)
    client.close()
    assert reply.startswith("250 2.0.0 from MTA(")
    [got] = handler.messages
    assert (got.mail_from, got.rcpt_tos) == (r'"a\\b c"@example.org', ["j\u00fcrgen@example.com"])
    utf8_sink.close()


async def test_utf8_address_to_a_next_hop_without_smtputf8(sink: Any, start_filter: Any) -> None:
    """As Postfix's smtp client: SMTPUTF8 is required but not offered; nothing is sent."""
    handler, sink_port = sink
    _, port = await start_filter(sink_port)
    client, _ = await Client.connect(port)
    await client.cmd("EHLO pf.example")
    assert (await client.cmd("MAIL FROM:<a@example.org> SMTPUTF8")).startswith("250")
    client.writer.write("RCPT TO:<j\u00fcrgen@example.com>\r\n".encode())
    assert (await client.reply()).startswith("250")
    [reply] = await client.send_data(MESSAGE)
    client.close()
    assert reply == f"554 5.6.7 SMTPUTF8 is required, but was not offered by host smtp:[127.0.0.1]:{sink_port}"
    assert handler.messages == []


async def test_helo_is_neutered_before_it_reaches_the_received_header(sink: Any, start_filter: Any) -> None:
    handler, sink_port = sink
    _, port = await start_filter(sink_port)
    client, _ = await Client.connect(port)
    [reply] = await client.transaction(["b@example.com"], helo="EHLO evil\rX-Injected: 1")
    client.close()
    assert reply.startswith("250 2.0.0 from MTA(")
    [got] = handler.messages
    assert b"Received: from evil?X-Injected:?1 ([127.0.0.1])" in got.original_content
    assert b"\rX-Injected" not in got.original_content


async def test_a_bug_in_a_command_is_a_temporary_error(sink: Any, start_filter: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Never a 5xx for a reason that is not a verdict: aiosmtpd's own answer to an
    exception is 500 with the exception's text."""
    import filterd.smtp.server as server_module

    def broken(arg: str | None, current: Any) -> Any:
        raise RuntimeError("boom\r\n250 fake")

    monkeypatch.setattr(server_module, "parse_xforward", broken)
    _, port = await start_filter(sink[1])
    client, _ = await Client.connect(port)
    await client.cmd("EHLO pf.example")
    assert await client.cmd("XFORWARD ADDR=192.0.2.1") == "451 4.3.0 Error: internal error"
    assert (await client.cmd("NOOP")).startswith("250")
    client.close()
