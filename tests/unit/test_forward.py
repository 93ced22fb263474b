"""Reinjection connection reuse: one connection for many messages, and a dead pooled
connection never costs a message (a fresh connection takes it)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiosmtpd.smtp import SMTP

from filterd.smtp.client import Forwarder
from filterd.smtp.nexthop import parse_next_hop

MESSAGE = b"Subject: t\r\n\r\nbody\r\n"


class Sink:
    def __init__(self) -> None:
        self.connections = 0
        self.messages: list[bytes] = []
        self.transports: list[asyncio.Transport] = []

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.original_content)
        return "250 2.0.0 Ok: queued as ABC123"


async def start_sink() -> tuple[Sink, asyncio.AbstractServer, int]:
    sink = Sink()

    def factory() -> SMTP:
        sink.connections += 1
        proto = SMTP(sink, hostname="sink.example")
        orig = proto.connection_made

        def made(transport: asyncio.BaseTransport) -> None:
            sink.transports.append(transport)  # type: ignore[arg-type]
            orig(transport)

        proto.connection_made = made  # type: ignore[method-assign]
        return proto

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    return sink, server, server.sockets[0].getsockname()[1]


async def test_messages_share_one_connection():
    sink, server, port = await start_sink()
    fwd = Forwarder(parse_next_hop(f"smtp:[127.0.0.1]:{port}"), 10, "filter.example")
    for i in range(3):
        result = await fwd.send("a@example.org", [f"b{i}@example.com"], MESSAGE)
        assert result.all_ok and result.queued_as == "ABC123"
    assert len(sink.messages) == 3 and sink.connections == 1
    await fwd.close()
    server.close()


async def test_pooled_connection_closed_by_next_hop_is_replaced():
    sink, server, port = await start_sink()
    fwd = Forwarder(parse_next_hop(f"smtp:[127.0.0.1]:{port}"), 10, "filter.example")
    assert (await fwd.send("a@example.org", ["b@example.com"], MESSAGE)).all_ok
    for t in sink.transports:
        t.close()  # the next hop drops the idle connection (smtpd_timeout, restart...)
    await asyncio.sleep(0.05)
    result = await fwd.send("a@example.org", ["c@example.com"], MESSAGE)
    assert result.all_ok, result.replies
    assert len(sink.messages) == 2 and sink.connections == 2
    await fwd.close()
    server.close()


async def test_a_malformed_reply_from_the_next_hop_is_quoted_safely() -> None:
    """A next hop that answers garbage: a temporary failure whose text (quoted in our
    reply and our log) is one short printable line."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ok\r\n")
        await reader.readline()
        writer.write(b"XYZ \x1b[2J" + b"y" * 5000 + b"\r\n")
        await writer.drain()
        await reader.read()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    forwarder = Forwarder(parse_next_hop(f"smtp:[127.0.0.1]:{port}"), 10, "filter.example")
    result = await forwarder.send("a@example.org", ["b@example.com"], MESSAGE)
    server.close()
    reply = result.replies["b@example.com"]
    assert reply.temporary and reply.text.isascii() and reply.text.isprintable()
    assert len(str(reply)) < 300 and "[2J" in reply.text
