"""After the verdict: the work every front end does the same way once a message is judged.

The content filter, the milter and the MTA each carry out a :class:`Verdict` in their own
protocol, but they name the message the same way (amavisd-new's ``mail_id``), keep it in
the quarantine the same way, log the same amavisd-new line, and send the same notice to
``virus_admin``. Nothing here speaks SMTP itself: the notice goes through the front
end's :class:`~filterd.smtp.client.Forwarder`.
"""

from __future__ import annotations

import email.utils
import logging
import time

from filterd.content.message import Message
from filterd.content.quarantine import Quarantine, QuarantineError
from filterd.content.verdict import Reply, Verdict, format_score
from filterd.smtp.client import Forwarder
from filterd.text import printable

log = logging.getLogger("filterd.content")

#: amavisd-new's log flags for the verdicts that end without passing the message on.
REFUSED_FLAGS = {"tempfail": "Tempfailed", "reject": "Rejected", "discard": "Discarded"}

async def keep(quarantine: Quarantine, msg: Message, verdict: Verdict, data: bytes,
               recipients: list[str], mail_id: str) -> tuple[Reply, str | None, str]:
    """Store a ``quarantine`` or ``hold`` verdict's message (``data``, edits applied):
    the reply for every recipient, the quarantine id, and the log flags. The verdict's
    2xx reply is given only once the file is on disk; a quarantine that cannot be written
    gives a 4xx (the client keeps the message)."""
    assert verdict.reply is not None and verdict.quarantine_kind is not None
    try:
        qid = await quarantine.store(
            data, kind=verdict.quarantine_kind, mail_id=mail_id, sender=msg.envelope.sender or "",
            recipients=recipients, reason=verdict.reason,
            score=verdict.score if verdict.spam_checked else None,
            subject=msg.subject[:200], client_address=msg.envelope.client_address)
    except QuarantineError as exc:
        log.error("(%s) %s", verdict.log_id, exc)
        reply = Reply(451, "4.5.0", f"Error in processing, id={verdict.log_id}, quarantine FAILED")
        return reply, None, "Tempfailed"
    flag = "Discarded,Quarantined" if verdict.action == "quarantine" else "Held,Quarantined"
    return verdict.reply, qid, flag


def log_line(msg: Message, verdict: Verdict, mail_id: str, client_port: str | None,
             flags: str, queued_as: str | None, quarantine_id: str | None, failure: Reply | None,
             started: float) -> str:
    """amavisd-new's one line per message: what was decided, for whom, and what was done
    (``flags``: ``Relayed``, ``Discarded,Quarantined``...); ``started`` is the monotonic
    time the message arrived, for the elapsed milliseconds at the end."""
    env = msg.envelope
    status = "Passed" if verdict.action == "pass" else (
        "Tempfailed" if verdict.action == "tempfail" else "Blocked")
    category = verdict.category
    if verdict.virus_names:
        category += f" ({_bounded(', '.join(verdict.virus_names))})"
    elif verdict.category == "BANNED":
        category += f" ({_bounded(verdict.reason[len('BANNED: '):])})"
    parts = [f"({verdict.log_id}) {status} {category} {{{flags}}}",
             f"[{env.client_address or 'unknown'}]"
             + (f":{client_port}" if client_port and client_port != "unknown" else "")
             + f" <{_bounded(env.sender or '')}> -> "
             + _bounded(",".join(f"<{r}>" for r in env.recipients), FIELD_MAX * 4)]
    if quarantine_id:
        parts.append(f"quarantine: {quarantine_id}")
    if env.queue_id:
        parts.append(f"Queue-ID: {env.queue_id}")
    message_id = msg.get("Message-ID")
    if message_id:
        parts.append(f"Message-ID: {printable(message_id)[:200]}")
    parts += [f"mail_id: {mail_id}", f"Hits: {verdict.hits}", f"size: {len(msg.raw)}"]
    if queued_as:
        parts.append(f"queued_as: {queued_as}")
    tests = ", ".join(f"{s.name}={format_score(s.score)}" for s in sorted(verdict.symbols, key=lambda s: s.name))
    parts.append(f"Tests: [{tests}]")
    if failure is not None:
        parts.append(f"reply: {failure}")
    parts.append(f"{int((time.monotonic() - started) * 1000)} ms")
    return ", ".join(parts)


def virus_report(msg: Message, verdict: Verdict, mail_id: str, quarantine_id: str | None,
                 hostname: str, admin: str) -> bytes:
    """The administrator's notification: what was found, in which message, what was done."""
    env = msg.envelope
    names = ", ".join(verdict.virus_names)
    done = {"pass": "delivered", "reject": "rejected", "discard": "discarded",
            "quarantine": "quarantined and discarded", "hold": "held in quarantine",
            "tempfail": "deferred"}[verdict.action]
    lines = [
        f"From: \"Content-filter at {hostname}\" <postmaster@{hostname}>",
        f"To: <{admin}>",
        f"Date: {email.utils.format_datetime(email.utils.localtime())}",
        f"Message-ID: <VA{mail_id}@{hostname}>",
        f"Subject: INFECTED ({printable(names)[:120]}) in mail FROM <{env.sender}>",
        "Auto-Submitted: auto-generated",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=UTF-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        f"A virus was found: {names}",
        "",
        f"Action taken: {done}",
    ]
    if quarantine_id:
        lines.append(f"Quarantine id: {quarantine_id} (filterd quarantine show {quarantine_id})")
    lines += [
        f"Client: [{env.client_address or 'unknown'}] {env.client_name}",
        f"Sender: <{env.sender}>",
        "Recipients: " + ", ".join(f"<{r}>" for r in env.recipients),
        f"Queue-ID: {env.queue_id or '-'}",
        f"Message-ID: {printable(msg.get('Message-ID'))[:200] or '-'}",
        f"Subject: {printable(msg.subject)[:200]}",
        f"mail_id: {mail_id}, log id: {verdict.log_id}",
        "",
    ]
    return "\r\n".join(lines).encode("utf-8", "replace")


async def notify_virus_admin(forwarder: Forwarder, msg: Message, verdict: Verdict, mail_id: str,
                             quarantine_id: str | None, hostname: str, admin: str) -> None:
    """Send :func:`virus_report` to ``admin`` from the null sender (a notice is never
    bounced) through ``forwarder``; a failure is logged, the message's fate is not
    changed by it (amavisd-new's admin notifications are best effort too)."""
    report = virus_report(msg, verdict, mail_id, quarantine_id, hostname, admin)
    result = await forwarder.send("", [admin], report)
    reply = result.replies.get(admin)
    if reply is None or not reply.ok:
        log.warning("(%s) virus notification to <%s> failed: %s", verdict.log_id, admin,
                    reply or "no reply from the next hop")


#: Longest text of one log field taken from a message or a client (Message-ID, sender,
#: the banned part names...): one hostile field cannot make a log line huge. Control
#: characters need no care here: the log writers escape every one of them.
FIELD_MAX = 500


def _bounded(text: str, limit: int = FIELD_MAX) -> str:
    return text if len(text) <= limit else text[:limit] + "...(cut)"
