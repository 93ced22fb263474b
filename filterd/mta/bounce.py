"""Delivery status notifications (RFC 3464): bounces, delay warnings, postmaster notices.

Built the way Postfix's bounce(8) builds them, because that is what users and their
mail clients know: a ``multipart/report; report-type=delivery-status`` from ``<>``
(``MAILER-DAEMON``) with a human part ("This is the mail system at host ..."), the
machine part (Reporting-MTA, Arrival-Date, then per recipient Final-Recipient, Action,
Status, Remote-MTA and ``Diagnostic-Code: smtp; <the remote server's reply>``), and
the original message (whole up to ``bounce_size_limit``, else its headers).

Who is told what (:func:`notices`) follows Postfix: the sender gets the bounce or the
delay warning, unless the sender is ``<>`` (a bounce is never bounced); the postmaster
gets a headers-only copy of bounces when ``notify_classes`` has ``bounce``, of delay
warnings with ``delay``, and the undeliverable bounces themselves with ``2bounce``.
DSN NOTIFY of each recipient is honoured (NEVER; FAILURE or DELAY not asked for).

This module is the MTA's policy (who is told, and the words of each notice); the
report itself is built by :mod:`filterd.smtp.dsn`, which the content filter shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from filterd.mta.delivery import RecipientResult
from filterd.smtp.dsn import Original, RecipientStatus, delivery_report, wrap
from filterd.text import printable_ascii

__all__ = ["NoticeSettings", "Notice", "Original", "notices", "failure_report", "delay_report"]


@dataclass(frozen=True)
class Notice:
    """A notification to queue: always from ``<>``."""

    kind: str
    """``bounce``, ``delay``, ``postmaster-bounce``, ``postmaster-delay``, ``2bounce``."""
    recipient: str
    content: bytes


def _status(result: RecipientResult, action: str, will_retry_until: float | None) -> RecipientStatus:
    r = result.recipient
    return RecipientStatus(r.address, action, result.dsn, result.reason, diagnostic=result.diagnostic,
                           original_recipient=r.orcpt, remote_mta=result.remote_mta,
                           will_retry_until=will_retry_until)


def _problems(results: Iterable[RecipientResult]) -> str:
    return "".join(wrap(f"<{r.recipient.address}>: {r.reason}") + "\r\n" for r in results)


def failure_report(hostname: str, original: Original, failed: Sequence[RecipientResult], now: float,
                   bounce_size_limit: int, to: str | None = None, postmaster: bool = False) -> bytes:
    """The non-delivery notification ("Undelivered Mail Returned to Sender"); the
    postmaster's copy carries the headers only."""
    host = printable_ascii(hostname)
    if postmaster:
        subject = "Postmaster Copy: Undelivered Mail"
        intro = (f"This is the mail system at host {host}.\r\n\r\n"
                 "Enclosed is a copy of the headers of a message that could not be\r\n"
                 f"delivered to one or more recipients (queue id {original.qid}, sender\r\n"
                 f"<{printable_ascii(original.sender)}>).\r\n")
    else:
        subject = "Undelivered Mail Returned to Sender"
        intro = (f"This is the mail system at host {host}.\r\n\r\n"
                 "I'm sorry to have to inform you that your message could not\r\n"
                 "be delivered to one or more recipients. It's attached below.\r\n\r\n"
                 "For further assistance, please send mail to postmaster.\r\n\r\n"
                 "If you do so, please include this problem report. You can\r\n"
                 "delete your own text from the attached returned message.\r\n")
    text = intro + "\r\n                   The mail system\r\n\r\n" + _problems(failed)
    return delivery_report(hostname=hostname, original=original,
                           recipients=[_status(r, "failed", None) for r in failed],
                           to=to if to is not None else original.sender, subject=subject, text=text,
                           now=now, return_whole=not postmaster, size_limit=bounce_size_limit)


def delay_report(hostname: str, original: Original, delayed: Sequence[RecipientResult], now: float,
                 give_up_at: float, to: str | None = None, postmaster: bool = False) -> bytes:
    """The delay warning ("Delayed Mail (still being retried)"), headers attached."""
    hours = max(0.0, (now - original.arrival) / 3600)
    lifetime_days = max(0.0, (give_up_at - original.arrival) / 86400)
    subject = "Postmaster Copy: Delayed Mail" if postmaster else "Delayed Mail (still being retried)"
    text = (f"This is the mail system at host {printable_ascii(hostname)}.\r\n\r\n"
            "####################################################################\r\n"
            "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\r\n"
            "####################################################################\r\n\r\n"
            f"Your message could not be delivered for more than {hours:.0f} hour(s).\r\n"
            f"It will be retried until it is {lifetime_days:.0f} day(s) old.\r\n\r\n"
            "For further assistance, please send mail to postmaster.\r\n\r\n"
            "                   The mail system\r\n\r\n" + _problems(delayed))
    return delivery_report(hostname=hostname, original=original,
                           recipients=[_status(r, "delayed", give_up_at) for r in delayed],
                           to=to if to is not None else original.sender, subject=subject, text=text,
                           now=now, return_whole=False, size_limit=0)


def _wants(result: RecipientResult, what: str) -> bool:
    """DSN NOTIFY: nothing given means failures and delays are reported."""
    notify = {n.strip().upper() for n in result.recipient.notify.split(",") if n.strip()}
    return not notify or (what in notify and "NEVER" not in notify)


@dataclass(frozen=True)
class NoticeSettings:
    """The parameters that decide who is told."""

    hostname: str
    notify_classes: frozenset[str]
    bounce_notice_recipient: str = "postmaster"
    double_bounce_recipient: str = "postmaster"
    delay_notice_recipient: str = "postmaster"
    bounce_size_limit: int = 50000


def notices(settings: NoticeSettings, original: Original, bounced: Sequence[RecipientResult],
            delayed: Sequence[RecipientResult], now: float, give_up_at: float) -> list[Notice]:
    """The notifications one finished delivery pass calls for (``delayed`` only when a
    delay warning is due)."""
    out: list[Notice] = []
    host = settings.hostname
    classes = settings.notify_classes
    if bounced:
        if original.sender == "":
            if "2bounce" in classes:
                out.append(Notice("2bounce", settings.double_bounce_recipient, failure_report(
                    host, original, bounced, now, settings.bounce_size_limit,
                    to=settings.double_bounce_recipient, postmaster=True)))
        else:
            wanted = [r for r in bounced if _wants(r, "FAILURE")]
            if wanted:
                out.append(Notice("bounce", original.sender, failure_report(
                    host, original, wanted, now, settings.bounce_size_limit)))
            if "bounce" in classes:
                out.append(Notice("postmaster-bounce", settings.bounce_notice_recipient, failure_report(
                    host, original, bounced, now, settings.bounce_size_limit,
                    to=settings.bounce_notice_recipient, postmaster=True)))
    if delayed and original.sender != "":
        wanted = [r for r in delayed if _wants(r, "DELAY")]
        if wanted:
            out.append(Notice("delay", original.sender, delay_report(host, original, wanted, now, give_up_at)))
        if "delay" in classes:
            out.append(Notice("postmaster-delay", settings.delay_notice_recipient, delay_report(
                host, original, delayed, now, give_up_at, to=settings.delay_notice_recipient,
                postmaster=True)))
    return out
