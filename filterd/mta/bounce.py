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

Everything that came from outside (addresses, remote replies) is made printable
ASCII and folded before it goes into a header or a line of the report.
"""

from __future__ import annotations

import email.utils
import re
import secrets
from dataclasses import dataclass
from typing import Iterable, Sequence

from filterd.mta.delivery import RecipientResult
from filterd.text import printable_ascii

MAILER_DAEMON = "MAILER-DAEMON"
_LONE_LF = re.compile(rb"(?<!\r)\n")
FOLD_WIDTH = 78


@dataclass(frozen=True)
class Original:
    """The message a notice is about."""

    qid: str
    sender: str
    arrival: float
    content: bytes
    """The message as far as it was read: all of it when size <= bounce_size_limit,
    else at least its header section."""
    size: int


@dataclass(frozen=True)
class Notice:
    """A notification to queue: always from ``<>``."""

    kind: str
    """``bounce``, ``delay``, ``postmaster-bounce``, ``postmaster-delay``, ``2bounce``."""
    recipient: str
    content: bytes


def fold(name: str, value: str) -> str:
    """One header field, folded at spaces to FOLD_WIDTH columns; CRLF-terminated."""
    words = printable_ascii(value).split(" ")
    lines: list[str] = []
    line = f"{name}:"
    for word in words:
        if len(line) + 1 + len(word) > FOLD_WIDTH and line.strip() and not line.endswith(":"):
            lines.append(line)
            line = "    " + word
        else:
            line = f"{line} {word}"
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def wrap(text: str, indent: str = "    ") -> str:
    """A paragraph of the human-readable part, printable ASCII, wrapped at spaces."""
    return fold("X", text)[3:].replace("\r\n    ", "\r\n" + indent)


def address_type(address: str) -> str:
    """``rfc822; addr`` for ASCII addresses, RFC 6533 ``utf-8; addr`` (\\x{HEX}) otherwise."""
    if address.isascii():
        return f"rfc822; {printable_ascii(address)}"
    encoded = "".join(c if 0x20 < ord(c) < 0x7f and c != "\\" else f"\\x{{{ord(c):X}}}" for c in address)
    return f"utf-8; {encoded}"


def header_section(content: bytes) -> bytes:
    """The message's header section (everything before the first empty line)."""
    m = re.search(rb"\r?\n\r?\n", content)
    return content[:m.start()] + b"\r\n" if m else content


def _date(when: float) -> str:
    return email.utils.formatdate(when, localtime=True)


class _Report:
    """The parts every notice shares."""

    def __init__(self, hostname: str, original: Original, now: float):
        self.hostname = printable_ascii(hostname)
        self.original = original
        self.now = now
        self.boundary = f"{original.qid}.{int(now)}/{self.hostname}"
        while self.boundary.encode() in original.content:
            self.boundary += "." + secrets.token_hex(4)

    def head(self, to: str, subject: str, seven_bit: bool) -> str:
        o = self.original
        return (
            f"From: {MAILER_DAEMON}@{self.hostname} (Mail Delivery System)\r\n"
            f"Subject: {subject}\r\n"
            + fold("To", f"<{printable_ascii(to)}>")
            + "Auto-Submitted: auto-replied\r\n"
            "MIME-Version: 1.0\r\n"
            f"Content-Type: multipart/report; report-type=delivery-status;\r\n"
            f"\tboundary=\"{self.boundary}\"\r\n"
            f"Content-Transfer-Encoding: {'7bit' if seven_bit else '8bit'}\r\n"
            f"Message-Id: <{int(self.now)}.{o.qid}.{secrets.token_hex(4)}@{self.hostname}>\r\n"
            f"Date: {_date(self.now)}\r\n"
            "\r\n"
            "This is a MIME-encapsulated message.\r\n"
            "\r\n"
        )

    def part(self, headers: str) -> str:
        return f"--{self.boundary}\r\n{headers}\r\n"

    def status_fields(self) -> str:
        o = self.original
        return (f"Reporting-MTA: dns; {self.hostname}\r\n"
                f"X-Filterd-Queue-ID: {o.qid}\r\n"
                + fold("X-Filterd-Sender", address_type(o.sender))
                + f"Arrival-Date: {_date(o.arrival)}\r\n")

    def recipient_fields(self, result: RecipientResult, action: str, will_retry_until: float | None) -> str:
        r = result.recipient
        out = "\r\n" + fold("Final-Recipient", address_type(r.address))
        if r.orcpt:
            out += fold("Original-Recipient", address_type(r.orcpt))
        out += f"Action: {action}\r\nStatus: {printable_ascii(result.dsn)}\r\n"
        if result.remote_mta:
            out += fold("Remote-MTA", f"dns; {result.remote_mta}")
        if result.diagnostic:
            out += fold("Diagnostic-Code", f"smtp; {result.diagnostic}")
        else:
            out += fold("Diagnostic-Code", f"X-Filterd; {result.reason}")
        if will_retry_until is not None:
            out += f"Will-Retry-Until: {_date(will_retry_until)}\r\n"
        return out

    def attachment(self, whole_allowed: bool, bounce_size_limit: int) -> bytes:
        o = self.original
        if whole_allowed and o.size <= bounce_size_limit and len(o.content) >= o.size:
            body = _LONE_LF.sub(b"\r\n", o.content)
            if not body.endswith(b"\r\n"):
                body += b"\r\n"
            return (self.part("Content-Description: Undelivered Message\r\nContent-Type: message/rfc822\r\n")
                    .encode() + body)
        headers = _LONE_LF.sub(b"\r\n", header_section(o.content))
        return (self.part("Content-Description: Undelivered Message Headers\r\n"
                          "Content-Type: text/rfc822-headers\r\n").encode() + headers)

    def finish(self, text: str, status: str, attachment: bytes, to: str, subject: str) -> bytes:
        seven_bit = all(b < 0x80 for b in attachment)
        out = (self.head(to, subject, seven_bit)
               + self.part("Content-Description: Notification\r\nContent-Type: text/plain; charset=us-ascii\r\n")
               + text
               + "\r\n"
               + self.part("Content-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n")
               + status).encode("ascii")
        return out + b"\r\n" + attachment + f"\r\n--{self.boundary}--\r\n".encode()


def _problems(results: Iterable[RecipientResult]) -> str:
    return "".join(wrap(f"<{r.recipient.address}>: {r.reason}") + "\r\n" for r in results)


def failure_report(hostname: str, original: Original, failed: Sequence[RecipientResult], now: float,
                   bounce_size_limit: int, to: str | None = None, postmaster: bool = False) -> bytes:
    """The non-delivery notification ("Undelivered Mail Returned to Sender")."""
    rep = _Report(hostname, original, now)
    if postmaster:
        subject = "Postmaster Copy: Undelivered Mail"
        intro = (f"This is the mail system at host {rep.hostname}.\r\n\r\n"
                 "Enclosed is a copy of the headers of a message that could not be\r\n"
                 f"delivered to one or more recipients (queue id {original.qid}, sender\r\n"
                 f"<{printable_ascii(original.sender)}>).\r\n")
    else:
        subject = "Undelivered Mail Returned to Sender"
        intro = (f"This is the mail system at host {rep.hostname}.\r\n\r\n"
                 "I'm sorry to have to inform you that your message could not\r\n"
                 "be delivered to one or more recipients. It's attached below.\r\n\r\n"
                 "For further assistance, please send mail to postmaster.\r\n\r\n"
                 "If you do so, please include this problem report. You can\r\n"
                 "delete your own text from the attached returned message.\r\n")
    text = intro + "\r\n                   The mail system\r\n\r\n" + _problems(failed)
    status = rep.status_fields() + "".join(rep.recipient_fields(r, "failed", None) for r in failed)
    return rep.finish(text, status, rep.attachment(not postmaster, bounce_size_limit),
                      to if to is not None else original.sender, subject)


def delay_report(hostname: str, original: Original, delayed: Sequence[RecipientResult], now: float,
                 give_up_at: float, to: str | None = None, postmaster: bool = False) -> bytes:
    """The delay warning ("Delayed Mail (still being retried)"), headers attached."""
    rep = _Report(hostname, original, now)
    hours = max(0.0, (now - original.arrival) / 3600)
    lifetime_days = max(0.0, (give_up_at - original.arrival) / 86400)
    subject = "Postmaster Copy: Delayed Mail" if postmaster else "Delayed Mail (still being retried)"
    text = (f"This is the mail system at host {rep.hostname}.\r\n\r\n"
            "####################################################################\r\n"
            "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\r\n"
            "####################################################################\r\n\r\n"
            f"Your message could not be delivered for more than {hours:.0f} hour(s).\r\n"
            f"It will be retried until it is {lifetime_days:.0f} day(s) old.\r\n\r\n"
            "For further assistance, please send mail to postmaster.\r\n\r\n"
            "                   The mail system\r\n\r\n" + _problems(delayed))
    status = rep.status_fields() + "".join(rep.recipient_fields(r, "delayed", give_up_at) for r in delayed)
    return rep.finish(text, status, rep.attachment(False, 0),
                      to if to is not None else original.sender, subject)


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
