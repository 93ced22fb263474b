"""Fast paths for the two costly steps of receiving a message with aiosmtpd.

aiosmtpd reads DATA one line at a time (an ``await`` and a few Python statements per
line, then a second pass to undo dot-stuffing) and parses every MAIL/RCPT address with
the email package's RFC 5322 header parser. For the content filter, whose client is
Postfix sending ordinary addresses and whole messages back to back, that was a third of
the CPU the SMTP side costs per message. This module does the same work in bulk:

* :func:`plain_path` recognises the overwhelmingly common ``<local@domain>`` form (a
  dot-atom local part, a host-name domain) with a regular expression and returns exactly
  what aiosmtpd's parser returns for it; anything else (quoted local parts, comments,
  address literals, source routes) is left to aiosmtpd.
* :func:`read_data` reads the message up to the lone ``.`` line with a few
  ``readuntil`` calls and removes dot-stuffing with one ``replace``. Unlike aiosmtpd it
  takes lines of any length (as Postfix's smtpd does): only the size is limited.
* :func:`address_problem` says whether a MAIL or RCPT address can be passed on at
  all, so that one that cannot is refused at once instead of failing after DATA.

plain_path gives results identical to aiosmtpd's parser, and read_data the same
content (the unit tests compare them on many inputs).
"""

from __future__ import annotations

import asyncio
import enum
import re
from dataclasses import dataclass

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(
    rf"<((?:{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)?)>(?=[ \t]|$)")

END = b"\r\n.\r\n"


def plain_path(arg: str) -> tuple[str, str] | None:
    """``(address, rest)`` as aiosmtpd's ``_getaddr`` gives for a plain ``<a@b> ...``.

    ``<>`` is returned as ``"<>"`` with the rest untouched, a real address with the
    white space after ``>`` removed (the parser takes it as folding white space). None
    means: not a plain path (or followed by a comment), use the full parser.
    """
    m = _PLAIN_PATH.match(arg)
    if m is None:
        return None
    rest = arg[m.end():]
    if not m.group(1):
        return "<>", rest
    rest = rest.lstrip(" \t")
    if rest.startswith("("):
        return None
    return m.group(1), rest


def address_problem(address: str, smtputf8: bool) -> str | None:
    """What is wrong with a parsed MAIL/RCPT address: None (nothing), ``"utf8"`` (non-ASCII
    without the SMTPUTF8 parameter, RFC 6531 3.4) or ``"syntax"``.

    A syntax problem is any character that is not printable: controls (in a quoted
    local part, where aiosmtpd's parser lets them through), undecodable bytes (kept as
    surrogates), line separators and other format characters. Such an address cannot
    be written on the next hop's command line, nor safely into a header or a log.
    """
    if address.isascii():
        return None if address.isprintable() else "syntax"
    if not address.isprintable():
        return "syntax"
    return None if smtputf8 else "utf8"


class DataState(enum.Enum):
    """The outcomes of reading DATA."""

    NOMINAL = enum.auto()
    TOO_MUCH = enum.auto()  # more than the size limit: 552


@dataclass
class DataResult:
    state: DataState
    content: bytes  # dot-stuffing removed; empty unless NOMINAL


class _Collector:
    """Received DATA bytes, fed in arbitrary pieces, counted against the size limit.

    Lines may be of any length (Postfix's smtpd takes them too; refusing one with a 5xx
    would make Postfix bounce a message it has already accepted), so only the total is
    limited: every byte received counts, dots still stuffed, as aiosmtpd counts. Once
    the limit is passed the data is dropped and the rest only counted, so a message
    over the limit holds no memory while its end is looked for.
    """

    def __init__(self, size_limit: int | None) -> None:
        self.size_limit = size_limit
        self.pieces: list[bytes] = []
        self.total = 0
        self.state = DataState.NOMINAL

    def feed(self, data: bytes) -> None:
        if self.state is not DataState.NOMINAL:
            return
        self.total += len(data)
        if self.size_limit and self.total > self.size_limit:
            self.state = DataState.TOO_MUCH
            self.pieces = []
            return
        self.pieces.append(data)

    def result(self) -> DataResult:
        if self.state is not DataState.NOMINAL:
            return DataResult(self.state, b"")
        data = b"".join(self.pieces)
        if data.startswith(b"."):
            data = data[1:]
        return DataResult(DataState.NOMINAL, data.replace(b"\r\n.", b"\r\n"))


_START, _AFTER_CR, _INSIDE = range(3)


async def read_data(reader: asyncio.StreamReader, size_limit: int | None) -> DataResult:
    """Read a DATA section up to and including its ``.`` line; undo dot-stuffing.

    The end is a line holding only ``.``: ``\\r\\n.\\r\\n`` in the stream, or ``.\\r\\n``
    right at the start. A search for ``\\r\\n.\\r\\n`` finds it only if none of its
    bytes was consumed yet, i.e. when the last byte consumed is neither a line's end nor
    a CR. So at a line start one byte is read: unless it is ``.`` (that line may be the
    end; it is read whole) or CR (one more byte decides), the rest is one bulk search.
    Nothing after the end line is consumed: Postfix may pipeline its next command.
    """
    out = _Collector(size_limit)
    try:
        return await _read_into(reader, out)
    except BaseException:
        # The client went away or was cut off: drop what it sent now. The exception's
        # traceback keeps this frame alive in a reference cycle with the connection,
        # which only a full garbage collection would free, megabytes per client.
        out.pieces = []
        raise


async def _read_into(reader: asyncio.StreamReader, out: _Collector) -> DataResult:
    state = _START
    while True:
        if state == _START:
            first = await reader.readexactly(1)
            if first == b".":
                line = first + await _rest_of_line(reader)
                if line == b".\r\n":
                    return out.result()
                out.feed(line)
                state = _START if line.endswith(b"\r\n") else _INSIDE
                continue
            out.feed(first)
            state = _AFTER_CR if first == b"\r" else _INSIDE
        elif state == _AFTER_CR:
            byte = await reader.readexactly(1)
            out.feed(byte)
            state = _START if byte == b"\n" else _AFTER_CR if byte == b"\r" else _INSIDE
        else:
            try:
                chunk = await reader.readuntil(END)
            except asyncio.LimitOverrunError as exc:
                # no end within the reader's limit: take what cannot hold its start
                out.feed(await reader.readexactly(exc.consumed))
                continue
            out.feed(chunk[:-3])  # up to the CRLF that ends the last line
            return out.result()


async def _rest_of_line(reader: asyncio.StreamReader) -> bytes:
    """The line up to its CRLF; a line beyond the reader's limit comes back cut short
    (without its CRLF, which is still unread), as aiosmtpd drains such a line."""
    try:
        return await reader.readuntil(b"\r\n")
    except asyncio.LimitOverrunError as exc:
        return await reader.readexactly(exc.consumed)
