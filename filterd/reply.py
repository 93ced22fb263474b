"""An SMTP reply, the one type every front end and engine uses for what a client sees.

Reply texts are often built from what a client or a message supplied (an attachment
name, an address, a next hop's own reply). Whatever their origin, a reply line that
leaves filterd goes through :func:`safe_reply`: one line, printable ASCII only, at most
RFC 5321's 512 octets. A CR or LF left in a reply would let the text forge replies of
its own, which a pipelining client takes as the answers to its next commands.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from filterd.text import printable_ascii

#: RFC 5321 4.5.3.1.5: a reply line is at most 512 octets, its CRLF included.
REPLY_LINE_MAX = 510


class Reply(NamedTuple):
    """One SMTP reply: code, enhanced status code (RFC 3463) and text.

    A named tuple, not a frozen dataclass: as immutable, and built for every decision
    at a third of the cost.
    """

    code: int
    dsn: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.dsn} {self.text}"

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500


def safe_reply(line: str) -> str:
    """``line`` as one safe reply line: every character outside printable ASCII becomes
    ``?`` (as Postfix's smtpd prints client text), and the line is cut to 510 characters.
    """
    line = printable_ascii(line)
    return line if len(line) <= REPLY_LINE_MAX else line[:REPLY_LINE_MAX - 3] + "..."


def join_replies(lines: Iterable[str]) -> str:
    """Several replies in one write (LMTP's one reply per recipient after DATA), each
    made safe first, then joined with CRLF: no text can add or merge lines."""
    return "\r\n".join(safe_reply(line) for line in lines)
