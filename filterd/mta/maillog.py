"""The gateway MTA's log lines, in Postfix's exact shapes.

Administrators grep for these and pflogsumm counts them, so each builder returns the
text Postfix would log after ``program[pid]: `` (the program part is the caller's:
``smtpd``, ``cleanup``, ``qmgr``, ``smtp``, ``lmtp``, ``error``, ``discard``, ``bounce``,
``postsuper``), e.g.::

    smtpd    3A1F20C4D5: client=mail.example.com[192.0.2.7]
    cleanup  3A1F20C4D5: message-id=<m1@example.com>
    qmgr     3A1F20C4D5: from=<alice@example.com>, size=1234, nrcpt=2 (queue active)
    smtp     3A1F20C4D5: to=<bob@example.net>, relay=mx.example.net[192.0.2.25]:25,
             delay=1.2, delays=0.05/0.01/0.6/0.54, dsn=2.0.0, status=sent (250 2.0.0 Ok)
    qmgr     3A1F20C4D5: removed
    smtpd    NOQUEUE: reject: RCPT from x[192.0.2.9]: 554 5.7.1 <c@d>: Relay access
             denied; from=<a@b> to=<c@d> proto=ESMTP helo=<x>

Text that came from outside (addresses, remote replies, HELO names) passes through
:func:`filterd.text.printable_ascii` first (Postfix's printable_ascii()): a line cannot be split or forged.
"""

from __future__ import annotations

from typing import Sequence

from filterd.text import printable_ascii


def format_delay(seconds: float) -> str:
    """A delay as Postfix writes it: two decimals below 10 s (trailing zeros dropped),
    one below 100 s, whole seconds above."""
    seconds = max(0.0, seconds)
    if seconds >= 100:
        return f"{seconds:.0f}"
    if seconds >= 10:
        text = f"{seconds:.1f}"
    else:
        text = f"{seconds:.2f}"
    return text.rstrip("0").rstrip(".") or "0"


def client(qid: str, name: str, address: str) -> str:
    return f"{qid}: client={printable_ascii(name)}[{printable_ascii(address)}]"


def message_id(qid: str, value: str) -> str:
    return f"{qid}: message-id={printable_ascii(value)}"


def queued(qid: str, sender: str, size: int, nrcpt: int) -> str:
    """qmgr's line when a message enters the active queue."""
    return f"{qid}: from=<{printable_ascii(sender)}>, size={size}, nrcpt={nrcpt} (queue active)"


def delivery(qid: str, recipient: str, status: str, reason: str, *, relay: str = "none",
             delay: float = 0.0, delays: Sequence[float] = (0.0, 0.0, 0.0, 0.0), dsn: str = "",
             orig_to: str = "") -> str:
    """One recipient's attempt: ``status=sent|deferred|bounced (reason)``.

    ``delays`` are a/b/c/d: before the queue manager, in the queue manager, connection
    setup, transmission.
    """
    out = f"{qid}: to=<{printable_ascii(recipient)}>, "
    if orig_to and orig_to != recipient:
        out += f"orig_to=<{printable_ascii(orig_to)}>, "
    out += (f"relay={printable_ascii(relay)}, delay={format_delay(delay)}, "
            f"delays={'/'.join(format_delay(d) for d in delays)}, ")
    if dsn:
        out += f"dsn={printable_ascii(dsn)}, "
    return out + f"status={status} ({printable_ascii(reason)})"


def removed(qid: str) -> str:
    return f"{qid}: removed"


def expired(qid: str, sender: str) -> str:
    return f"{qid}: from=<{printable_ascii(sender)}>, status=expired, returned to sender"


NOTIFICATIONS = {
    "bounce": "sender non-delivery notification",
    "delay": "sender delay notification",
    "postmaster-bounce": "postmaster non-delivery notification",
    "postmaster-delay": "postmaster delay notification",
    "2bounce": "postmaster non-delivery notification",
}


def notification(qid: str, kind: str, new_qid: str) -> str:
    """bounce's line naming the queue id of the notice it queued."""
    return f"{qid}: {NOTIFICATIONS[kind]}: {new_qid}"


def reject(stage: str, client_name: str, client_address: str, reply: str, *, sender: str | None = None,
           recipient: str | None = None, proto: str = "ESMTP", helo: str | None = None,
           qid: str = "NOQUEUE") -> str:
    """smtpd's refusal: ``NOQUEUE: reject: RCPT from name[addr]: 554 ...; from=<> to=<>
    proto=ESMTP helo=<>`` (qid is the queue id once one exists, e.g. at DATA)."""
    out = (f"{qid}: reject: {stage} from {printable_ascii(client_name)}[{printable_ascii(client_address)}]: "
           f"{printable_ascii(reply)};")
    if sender is not None:
        out += f" from=<{printable_ascii(sender)}>"
    if recipient is not None:
        out += f" to=<{printable_ascii(recipient)}>"
    out += f" proto={proto}"
    if helo is not None:
        out += f" helo=<{printable_ascii(helo)}>"
    return out


def postsuper(qid: str, action: str) -> str:
    """The queue tools' lines: ``placed on hold``, ``released from hold``, ``requeued``,
    ``removed``."""
    return f"{qid}: {action}"
