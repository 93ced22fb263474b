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
from filterd.content.server import LINE_LIMIT, ContentFilterServer
from tests.fixtures.programs import free_port

MESSAGE = (b"From: a@example.org\r\nTo: b@example.com\r\nSubject: hello\r\n"
           b"Message-ID: <m1@example.org>\r\n\r\nHello.\r\n.leading dot\r\n")


@dataclass
class SinkHandler:
    """The next hop: records what it got; can refuse recipients."""

    messages: list[Any] = field(default_factory=list)
    xforward: list[str] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)

    async def handle_EHLO(self, server: SMTP, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        return responses[:-1] + ["250-XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT", responses[-1]]

    async def handle_RCPT(self, server: SMTP, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if address in self.refuse:
            return "550 5.1.1 <%s>: Recipient address rejected" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return f"250 2.0.0 Ok: queued as SINK{len(self.messages)}"


class SinkSMTP(SMTP):
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


async def test_smtp_mode_partial_refusal_sends_nothing_and_defers(sink: Any, start_filter: Any) -> None:
    handler, sink_port = sink
    handler.refuse.add("gone@example.com")
    _, port = await start_filter(sink_port)
    client, _ = await Client.connect(port)
    [reply] = await client.transaction(["b@example.com", "gone@example.com"])
    client.close()
    assert reply.startswith("451 4.5.0 Error in processing, not forwarded")
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
    while not server.tasks:
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


async def test_over_long_line_500_and_the_session_goes_on(sink: Any, start_filter: Any) -> None:
    """A line over the server's line limit refuses the message (Postfix keeps and retries
    it); the end-of-data line is still found and the next command, pipelined right behind
    it, is answered."""
    handler, sink_port = sink
    _, port = await start_filter(sink_port, "message_size_limit = 0")
    client, _ = await Client.connect(port)
    await client.cmd("EHLO pf.example")
    assert (await client.cmd("MAIL FROM:<a@example.org>")).startswith("250")
    assert (await client.cmd("RCPT TO:<b@example.com>")).startswith("250")
    assert (await client.cmd("DATA")).startswith("354")
    client.writer.write(MESSAGE + b"x" * (LINE_LIMIT + 10) + b"\r\n.\r\nRSET\r\n")
    assert await client.reply() == "500 Line too long (see RFC5321 4.5.3.1.6)"
    assert (await client.reply()).startswith("250")  # RSET
    assert handler.messages == []
    [reply] = await client.transaction(["b@example.com"])
    client.close()
    assert reply.startswith("250 2.0.0 from MTA")
    assert len(handler.messages) == 1
