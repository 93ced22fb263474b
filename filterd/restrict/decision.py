"""What the restriction engine hands back: a decision, its reply, and why.

A :class:`Decision` carries both forms a front end may need: the full SMTP reply a
client would see (``554 5.7.1 <bob@example.com>: Recipient address rejected: ...``),
and the deciding action as written in access(5) form (``REJECT ...`` from a table,
``DEFER_IF_PERMIT 4.2.0 Greylisted ...``), from which the policy front end builds its
answer (:mod:`filterd.policy.action`) so that Postfix itself builds that reply.
Every outcome records its evidence: stage, restriction, table/key or DNSBL zone/reply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from filterd.reply import Reply

__all__ = ["Decision", "Evidence", "Reply", "PERMIT", "REJECT", "DEFER", "DUNNO"]


class Evidence(NamedTuple):
    """Why something happened: which restriction, and what it looked at."""

    stage: str
    restriction: str
    detail: str

    def __str__(self) -> str:
        return f"{self.restriction} ({self.detail})" if self.detail else self.restriction


# Decisive results of a restriction or of a whole list.
PERMIT = "permit"
REJECT = "reject"
DEFER = "defer"
DUNNO = "dunno"


@dataclass(slots=True)
class Decision:
    """The outcome of evaluating a restriction list for one transaction stage.

    ``result`` is ``permit`` (explicit OK), ``reject`` (5xx), ``defer`` (4xx) or
    ``dunno`` (the list ended without a decisive result: an implicit permit).
    ``action`` is the deciding action in access(5) form: ``OK``, ``DISCARD text``,
    ``REJECT text``, ``DEFER_IF_PERMIT text``, or the whole reply (``450 4.7.1 ...``)
    where a restriction built its own; empty when nothing decided.
    The side-effect fields collect non-decisive actions seen on the way, as Postfix's
    smtpd does (HOLD, DISCARD, FILTER, REDIRECT, PREPEND, WARN, BCC).
    """

    result: str = DUNNO
    reply: Reply | None = None
    action: str = ""
    decided_by: Evidence | None = None
    evidence: list[Evidence] = field(default_factory=list)
    prepend: list[str] = field(default_factory=list)
    hold: str | None = None
    discard: str | None = None
    filter: str | None = None
    redirect: str | None = None
    bcc: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        """One line for logs: the deciding restriction and what it saw."""
        if self.decided_by is not None:
            return str(self.decided_by)
        return "; ".join(str(e) for e in self.evidence) or "no restriction matched"
