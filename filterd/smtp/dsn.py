"""Delivery status notifications (RFC 3464): the one builder of ``multipart/report``.

Two parts of filterd tell a sender what became of their message: the gateway MTA
(bounces, delay warnings, postmaster copies: :mod:`filterd.mta.bounce`) and the content
filter (recipients the next hop refused: :mod:`filterd.content.dsn`). Who is told and
what the human-readable part says is theirs; the report itself is built here, once, the
way Postfix's bounce(8) builds it, because that is what users and their mail clients
know: a ``multipart/report; report-type=delivery-status`` from ``MAILER-DAEMON`` with

1. the human-readable part (the caller's text),
2. the machine part: Reporting-MTA, the queue id, the sender, Arrival-Date, then per
   recipient Final-Recipient, Original-Recipient, Action, Status, Remote-MTA,
   ``Diagnostic-Code: smtp; <the remote server's reply>`` and Will-Retry-Until,
3. the original message, whole up to a size limit, else its header section.

Everything that came from outside (addresses, remote replies, the host name) is made
printable ASCII and folded before it goes into a header or a field of the report, so no
text can add a header or a MIME part.
"""

from __future__ import annotations

import email.utils
import re
import secrets
from dataclasses import dataclass
from typing import Sequence

from filterd.text import printable_ascii

MAILER_DAEMON = "MAILER-DAEMON"
FOLD_WIDTH = 78
_LONE_LF = re.compile(rb"(?<!\r)\n")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True)
class Original:
    """The message a notice is about."""

    qid: str
    sender: str
    arrival: float
    content: bytes
    """The message as far as it was read: all of it when size <= the size limit,
    else at least its header section."""
    size: int
    envelope_id: str = ""
    """The client's DSN ENVID (RFC 3461 4.4), returned as Original-Envelope-Id."""
    headers_only: bool = False
    """The client's DSN RET=HDRS: a failure notice returns only the header section."""


@dataclass(frozen=True)
class RecipientStatus:
    """One recipient's fields in the machine-readable part (RFC 3464 2.3)."""

    address: str
    action: str
    """``failed``, ``delayed`` (or ``delivered``, ``relayed``, ``expanded``)."""
    status: str
    """RFC 3463 status, e.g. ``5.1.1``."""
    reason: str
    """Our own words, for ``Diagnostic-Code: X-Filterd;`` when no server replied."""
    diagnostic: str = ""
    """The remote reply exactly (``550 5.1.1 User unknown``), for ``Diagnostic-Code: smtp;``."""
    original_recipient: str = ""
    """The ORCPT the client gave, if any."""
    remote_mta: str = ""
    will_retry_until: float | None = None


def fold(name: str, value: str) -> str:
    """One header field, printable ASCII, folded at spaces to FOLD_WIDTH columns;
    CRLF-terminated."""
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
    m = _HEADER_END.search(content)
    return content[:m.start()] + b"\r\n" if m else content


def _date(when: float) -> str:
    return email.utils.formatdate(when, localtime=True)


def _recipient_fields(r: RecipientStatus) -> str:
    out = "\r\n" + fold("Final-Recipient", address_type(r.address))
    if r.original_recipient:
        out += fold("Original-Recipient", address_type(r.original_recipient))
    out += f"Action: {r.action}\r\nStatus: {printable_ascii(r.status)}\r\n"
    if r.remote_mta:
        out += fold("Remote-MTA", f"dns; {r.remote_mta}")
    if r.diagnostic:
        out += fold("Diagnostic-Code", f"smtp; {r.diagnostic}")
    else:
        out += fold("Diagnostic-Code", f"X-Filterd; {r.reason}")
    if r.will_retry_until is not None:
        out += f"Will-Retry-Until: {_date(r.will_retry_until)}\r\n"
    return out


def delivery_report(*, hostname: str, original: Original, recipients: Sequence[RecipientStatus],
                    to: str, subject: str, text: str, now: float, return_whole: bool,
                    size_limit: int) -> bytes:
    """The notice to ``to`` about ``recipients`` of ``original``.

    ``text`` is the human-readable part, printable ASCII in CRLF lines (the caller's
    words: a bounce, a delay warning, a content filter's refusal notice). The original
    comes back whole when ``return_whole`` and it is at most ``size_limit`` octets and was
    read in full, else its header section.
    """
    host = printable_ascii(hostname)
    boundary = f"{original.qid}.{int(now)}/{host}"
    while boundary.encode() in original.content:
        boundary += "." + secrets.token_hex(4)

    def part(headers: str) -> str:
        return f"--{boundary}\r\n{headers}\r\n"

    if (return_whole and not original.headers_only and original.size <= size_limit
            and len(original.content) >= original.size):
        body = _LONE_LF.sub(b"\r\n", original.content)
        attached = "Content-Description: Undelivered Message\r\nContent-Type: message/rfc822\r\n"
    else:
        body = _LONE_LF.sub(b"\r\n", header_section(original.content))
        attached = "Content-Description: Undelivered Message Headers\r\nContent-Type: text/rfc822-headers\r\n"
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    attachment = part(attached).encode() + body
    seven_bit = all(b < 0x80 for b in attachment)
    status = ((fold("Original-Envelope-Id", original.envelope_id) if original.envelope_id else "")
              + f"Reporting-MTA: dns; {host}\r\n"
              f"X-Filterd-Queue-ID: {printable_ascii(original.qid)}\r\n"
              + fold("X-Filterd-Sender", address_type(original.sender))
              + f"Arrival-Date: {_date(original.arrival)}\r\n"
              + "".join(_recipient_fields(r) for r in recipients))
    head = (f"From: {MAILER_DAEMON}@{host} (Mail Delivery System)\r\n"
            f"Subject: {subject}\r\n"
            + fold("To", f"<{to}>")
            + "Auto-Submitted: auto-replied\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: multipart/report; report-type=delivery-status;\r\n"
            f"\tboundary=\"{boundary}\"\r\n"
            f"Content-Transfer-Encoding: {'7bit' if seven_bit else '8bit'}\r\n"
            f"Message-Id: <{int(now)}.{printable_ascii(original.qid)}.{secrets.token_hex(4)}@{host}>\r\n"
            f"Date: {_date(now)}\r\n"
            "\r\n"
            "This is a MIME-encapsulated message.\r\n"
            "\r\n")
    out = (head
           + part("Content-Description: Notification\r\nContent-Type: text/plain; charset=us-ascii\r\n")
           + _safe_lines(text)
           + "\r\n"
           + part("Content-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n")
           + status).encode("ascii")
    return out + b"\r\n" + attachment + f"\r\n--{boundary}--\r\n".encode()


def _safe_lines(text: str) -> str:
    """The human-readable part as the caller wrote it, each CRLF line printable ASCII:
    a stray CR or LF from outside cannot start a header or a MIME boundary line."""
    return "\r\n".join(printable_ascii(line) for line in text.split("\r\n"))
