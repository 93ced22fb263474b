"""What a delivery agent is given and what it answers, and the agents that need no network.

A delivery agent (Postfix's smtp, lmtp, error, discard) takes one message and a batch
of its recipients for one next hop, tries them, and answers one result per recipient
with the remote server's own reply, plus whether the failure was of the whole session
(the host did not answer, greeted with 4xx, dropped the connection): only such *site*
failures slow a destination down and can declare it dead, as in Postfix's qmgr.

The SMTP and LMTP agents live with the SMTP plumbing; the three here are pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Protocol, Sequence

from filterd.mta.queuefile import Recipient

SENT = "sent"
DEFERRED = "deferred"
BOUNCED = "bounced"

_DSN = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")


@dataclass(frozen=True)
class Route:
    """Where a recipient goes: a transport (smtp, lmtp, error, discard, retry) and its
    next hop (``domain``, ``[host]:port``, ``unix:/path``, or the error text)."""

    transport: str
    nexthop: str


@dataclass(frozen=True)
class RecipientResult:
    """One recipient's outcome from one delivery attempt."""

    recipient: Recipient
    status: str
    """SENT, DEFERRED or BOUNCED."""
    dsn: str
    """RFC 3463 status, e.g. ``5.1.1``."""
    reason: str
    """What the log and the bounce say, e.g. ``host mx.example[192.0.2.1] said: 550 5.1.1
    <x@example>: User unknown (in reply to RCPT TO command)``."""
    relay: str = "none"
    """``host[address]:port`` of the server that answered, or ``none``."""
    remote_mta: str = ""
    """The remote host's name for the DSN Remote-MTA field; "" when none answered."""
    diagnostic: str = ""
    """The remote reply exactly (``550 5.1.1 User unknown``) for Diagnostic-Code; ""
    when the failure was local (no answer, error: transport)."""


@dataclass(frozen=True)
class DeliveryReport:
    """An agent's answer: one result per recipient it was given, and whether the
    failure was of the whole session to the next hop."""

    results: list[RecipientResult]
    site_failure: bool = False


@dataclass(frozen=True)
class OutgoingMessage:
    """The message as a delivery agent sees it."""

    qid: str
    sender: str
    arrival: float
    size: int
    attributes: Mapping[str, str] = field(default_factory=dict)
    content: Callable[[], Iterator[bytes]] = field(default=lambda: iter(()))
    """Opens the content afresh; a blocking iterator of chunks (read it in a thread)."""
    data: bytes | None = None
    """The whole content when the queue manager has it in memory already (a small
    message, read when it was taken): the agent then needs no thread to read it."""


class DeliveryAgent(Protocol):
    """A transport: smtp, lmtp, error, discard, retry."""

    async def deliver(self, message: OutgoingMessage, nexthop: str,
                      recipients: Sequence[Recipient]) -> DeliveryReport:
        """Try the recipients at ``nexthop``; one result each, never raising for a
        delivery failure (a crash of the agent is reported by the caller as deferred)."""
        ...


def split_status(text: str, default: str) -> tuple[str, str]:
    """``5.1.1 text`` -> (``5.1.1``, ``text``); no leading status -> (default, text)."""
    m = _DSN.match(text.strip())
    if m and (len(text.strip()) == m.end() or text.strip()[m.end()].isspace()):
        return m.group(0), text.strip()[m.end():].strip()
    return default, text.strip()


class ErrorAgent:
    """``error:[d.s.n ]text``: every recipient bounces with that text (Postfix error(8))."""

    async def deliver(self, message: OutgoingMessage, nexthop: str,
                      recipients: Sequence[Recipient]) -> DeliveryReport:
        dsn, text = split_status(nexthop, "5.0.0")
        if not dsn.startswith("5"):
            dsn = "5" + dsn[1:]
        reason = text or "delivery refused by the error transport"
        return DeliveryReport([RecipientResult(r, BOUNCED, dsn, reason) for r in recipients])


class RetryAgent:
    """``retry:[d.s.n ]text``: every recipient is deferred with that text (Postfix
    error(8) as retry), e.g. to hold mail for a destination that is being moved."""

    async def deliver(self, message: OutgoingMessage, nexthop: str,
                      recipients: Sequence[Recipient]) -> DeliveryReport:
        dsn, text = split_status(nexthop, "4.0.0")
        if not dsn.startswith("4"):
            dsn = "4" + dsn[1:]
        reason = text or "delivery temporarily suspended by the retry transport"
        return DeliveryReport([RecipientResult(r, DEFERRED, dsn, reason) for r in recipients])


class DiscardAgent:
    """``discard:[text]``: every recipient counts as delivered (Postfix discard(8))."""

    async def deliver(self, message: OutgoingMessage, nexthop: str,
                      recipients: Sequence[Recipient]) -> DeliveryReport:
        reason = nexthop.strip() or "discarded"
        return DeliveryReport([RecipientResult(r, SENT, "2.0.0", reason) for r in recipients])
