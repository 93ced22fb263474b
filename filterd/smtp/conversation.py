"""One SMTP or LMTP client conversation on one connection: the wire, and no policy.

The MTA's delivery agents (smtp, lmtp) need what the content filter's reinjection does
not: commands sent in one write when the server offers PIPELINING (RFC 2920), LMTP's
one reply per recipient after the dot (RFC 2033), a message body streamed from the queue
file rather than held in memory, STARTTLS, and a separate time limit for every stage,
named after Postfix's (smtp_helo_timeout, smtp_data_done_timeout, ...). aiosmtplib
offers none of the first three, so this module speaks the protocol itself over asyncio
streams.

Everything read from the server is bounded (a reply line is at most
:data:`MAX_REPLY_LINE` bytes, a reply at most :data:`MAX_REPLY_LINES` lines) and made
printable ASCII before anyone sees it, so a server's text can neither forge a log line
nor a header of the bounce that quotes it. A conversation that breaks raises
:class:`ConversationError` naming the stage, in the words Postfix's smtp(8) uses
("while sending message body").
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

from filterd.text import printable_ascii

MAX_REPLY_LINE = 4096
"""Longest reply line read, CRLF included; a longer one is a protocol error."""
MAX_REPLY_LINES = 200
"""Most lines in one (multi-line) reply."""
MAX_REPLY_TEXT = 4000
"""Longest reply text quoted in a result (a log line, a bounce's Diagnostic-Code)."""
LONG_LINE_FLUSH = 1 << 20
"""A message line longer than this is passed on in pieces (it is still one line)."""

LOST = "lost"
TIMEOUT = "timeout"
PROTOCOL = "protocol"

_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?:\s|$)")


class ConversationError(Exception):
    """The conversation broke: the server closed the connection (LOST), did not answer
    in time (TIMEOUT) or sent something that is not SMTP (PROTOCOL). ``stage`` is what
    the client was doing, in Postfix's words (``sending message body``)."""

    def __init__(self, kind: str, stage: str, detail: str = ""):
        super().__init__(f"{kind} while {stage}{': ' + detail if detail else ''}")
        self.kind = kind
        self.stage = stage
        self.detail = detail


def safe_text(raw: bytes) -> str:
    """Server text for a log line or a bounce: printable ASCII only (anything else is
    ``?``), so no line break or control character survives."""
    return printable_ascii(raw.decode("utf-8", "replace"))


@dataclass(frozen=True)
class ServerReply:
    """One complete reply: its code and its lines as received (made safe), each with
    its code prefix (``550-5.1.1 ...``, ``550 5.1.1 ...``)."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The whole reply on one line, as Postfix quotes it: the lines joined by a
        space, their code prefixes kept (``550-5.1.1 The account ... 550 5.1.1 ...``);
        cut at MAX_REPLY_TEXT characters for the log line and the bounce that quote it."""
        text = " ".join(self.lines)
        return text if len(text) <= MAX_REPLY_TEXT else text[:MAX_REPLY_TEXT - 3] + "..."

    @property
    def enhanced(self) -> str | None:
        """The RFC 3463 status at the start of the first line's text, when its class
        agrees with the reply code; else None."""
        first = self.lines[0][4:] if self.lines else ""
        m = _ENHANCED.match(first)
        if m and m.group(1) == str(self.code)[0]:
            return f"{m.group(1)}.{int(m.group(2))}.{int(m.group(3))}"
        return None

    def messages(self) -> list[str]:
        """Each line's text without its code (for EHLO keywords)."""
        return [line[4:] for line in self.lines]


def parse_extensions(reply: ServerReply) -> dict[str, str]:
    """EHLO/LHLO keywords (upper case) and their parameters; the first line is the
    server's greeting name, not a keyword."""
    out: dict[str, str] = {}
    for text in reply.messages()[1:]:
        keyword, _, params = text.strip().partition(" ")
        if keyword:
            out[keyword.upper()] = params.strip()
    return out


class DotStuffer:
    """The message as DATA sends it: every line ended by CRLF (a bare LF becomes CRLF;
    a CR inside a line stays), a line that starts with ``.`` gets a second one, and the
    text ends with CRLF before the final dot. Fed in chunks of any size: a line cut
    between two chunks is held until its end arrives (up to LONG_LINE_FLUSH bytes)."""

    def __init__(self) -> None:
        self._carry = b""
        self._line_start = True

    def feed(self, chunk: bytes) -> bytes:
        data = self._carry + chunk
        cut = data.rfind(b"\n") + 1
        out = b""
        if cut:
            out = self._lines(data[:cut])
            self._line_start = True
            data = data[cut:]
        if len(data) > LONG_LINE_FLUSH:
            keep = 1 if data.endswith(b"\r") else 0  # a CR that may start a CRLF
            out += self._piece(data[:len(data) - keep])
            data = data[len(data) - keep:]
        self._carry = data
        return out

    def end(self) -> bytes:
        """The rest, a CRLF if the message did not end with one, and the final dot."""
        tail = b""
        if self._carry:
            tail = self._piece(self._carry) + b"\r\n"
            self._carry = b""
        elif not self._line_start:
            tail = b"\r\n"
        return tail + b".\r\n"

    def _lines(self, block: bytes) -> bytes:
        """Whole lines: CRLF endings, dots doubled at line starts."""
        block = block.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self._line_start and block.startswith(b"."):
            block = b"." + block
        return block.replace(b"\r\n.", b"\r\n..")

    def _piece(self, piece: bytes) -> bytes:
        """Part of a line with no line end in it."""
        if self._line_start and piece.startswith(b"."):
            piece = b"." + piece
        self._line_start = False
        return piece


class Connection:
    """An open SMTP/LMTP connection: replies read with a time limit each, commands
    written (several in one write when pipelining), the body streamed, STARTTLS."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self._pending = bytearray()

    @classmethod
    async def open_tcp(cls, address: str, port: int, timeout: float) -> "Connection":
        """Connect to an IP address (no name lookup here: the caller chose the address).
        Raises OSError (TimeoutError when ``timeout`` passes)."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address, port, limit=MAX_REPLY_LINE,
                                    flags=socket.AI_NUMERICHOST), timeout)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    @classmethod
    async def open_unix(cls, path: str, timeout: float) -> "Connection":
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(path, limit=MAX_REPLY_LINE), timeout)
        return cls(reader, writer)

    # -- replies ---------------------------------------------------------------------
    async def read_reply(self, timeout: float, stage: str) -> ServerReply:
        """The next complete reply, read within ``timeout`` seconds in all.

        The limits use asyncio.timeout rather than wait_for, which in Python 3.11 runs
        the wait in a task of its own: several tasks per delivery, each costing loop turns."""
        try:
            async with asyncio.timeout(timeout):
                return await self._read_reply(stage)
        except TimeoutError:
            raise ConversationError(TIMEOUT, stage) from None

    async def _read_reply(self, stage: str) -> ServerReply:
        lines: list[str] = []
        code = 0
        while True:
            try:
                raw = await self.reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                raise ConversationError(LOST, stage) from None
            except asyncio.LimitOverrunError:
                raise ConversationError(PROTOCOL, stage, "reply line too long") from None
            except (ConnectionError, OSError):
                raise ConversationError(LOST, stage) from None
            line = safe_text(raw.rstrip(b"\r\n"))
            if len(line) < 3 or not line[:3].isdigit() or line[0] not in "12345" \
                    or (len(line) > 3 and line[3] not in " -"):
                raise ConversationError(PROTOCOL, stage, f"malformed reply: {line[:100]}")
            if not lines:
                code = int(line[:3])
            lines.append(line)
            if len(line) == 3 or line[3] == " ":
                return ServerReply(code, tuple(lines))
            if len(lines) >= MAX_REPLY_LINES:
                raise ConversationError(PROTOCOL, stage, f"reply longer than {MAX_REPLY_LINES} lines")

    # -- commands ----------------------------------------------------------------------
    def queue(self, line: bytes) -> None:
        """Add a command (without CRLF) to the next write."""
        self._pending += line + b"\r\n"

    async def flush(self, timeout: float, stage: str) -> None:
        """Write the queued commands within ``timeout``."""
        if self._pending:
            data = bytes(self._pending)
            self._pending.clear()
            await self.write(data, timeout, stage)

    async def write(self, data: bytes, timeout: float, stage: str) -> None:
        try:
            self.writer.write(data)
            async with asyncio.timeout(timeout):
                await self.writer.drain()
        except TimeoutError:
            raise ConversationError(TIMEOUT, stage) from None
        except (ConnectionError, OSError, RuntimeError):
            raise ConversationError(LOST, stage) from None

    async def command(self, line: bytes, timeout: float, stage: str) -> ServerReply:
        """Send one command and read its reply, each within ``timeout``."""
        self.queue(line)
        await self.flush(timeout, stage)
        return await self.read_reply(timeout, stage)

    async def send_body(self, chunks: AsyncIterator[bytes], timeout: float,
                        stage: str = "sending message body") -> None:
        """Stream the message, dot-stuffed, and the final dot; each write within
        ``timeout`` (Postfix's smtp_data_xfer_timeout is per write, not for the whole).
        Each piece is written once the next is known, so the last one goes out with the
        final dot: a message held whole costs one write, not two."""
        stuffer = DotStuffer()
        held = b""
        async for chunk in chunks:
            out = stuffer.feed(chunk)
            if out:
                if held:
                    await self.write(held, timeout, stage)
                held = out
        await self.write(held + stuffer.end(), timeout, stage)

    async def starttls(self, context: ssl.SSLContext, server_hostname: str | None,
                       timeout: float) -> None:
        """The TLS handshake after a 220 to STARTTLS; raises ssl.SSLError, OSError or
        TimeoutError when it fails."""
        await self.writer.start_tls(context, server_hostname=server_hostname,
                                    ssl_handshake_timeout=timeout)

    def tls_summary(self) -> str | None:
        """``TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)`` once TLS is on."""
        obj = self.writer.get_extra_info("ssl_object")
        if obj is None:
            return None
        cipher = obj.cipher()
        if cipher is None:
            return f"{obj.version()}"
        name, _, bits = cipher
        return f"{obj.version()} with cipher {name} ({bits}/{bits} bits)"

    @property
    def closed(self) -> bool:
        return self.writer.is_closing() or self.reader.at_eof()

    def close(self) -> None:
        """Drop the connection (no QUIT)."""
        self.writer.close()

    async def quit(self, timeout: float) -> None:
        """QUIT, its reply awaited at most ``timeout``, then close; never raises."""
        try:
            if not self.closed:
                await self.command(b"QUIT", timeout, "sending QUIT")
        except ConversationError:
            pass
        finally:
            self.writer.close()
