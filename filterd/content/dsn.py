"""The delivery status notification for recipients the next hop refused (RFC 3464).

Over SMTP Postfix gets one reply for the whole message, so when the next hop accepts
some recipients and permanently refuses others, the content filter does what
amavisd-new does: it passes the message to the accepted ones, answers 250, and tells
the sender itself about the refused ones with a DSN, sent from the null sender (so it
can never cause a bounce loop) and never to the null sender. Its text follows the
shape of Postfix's bounce(8) notices, which administrators and users know.
"""

from __future__ import annotations

import email.utils

from filterd.reply import Reply, safe_reply

#: The original header section is returned (``text/rfc822-headers``) up to this size.
HEADERS_MAX = 64 * 1024


def _address_type(address: str) -> str:
    """RFC 3464 address type: ``rfc822`` for ASCII, ``utf-8`` (RFC 6533) otherwise."""
    return "rfc822" if address.isascii() else "utf-8"


def refusal_report(*, hostname: str, sender: str, refused: dict[str, Reply], original: bytes,
                   queue_id: str, mail_id: str, boundary: str) -> bytes:
    """The DSN to ``sender`` for the ``refused`` recipients of the message ``original``.

    Every text from the message or the next hop goes through :func:`safe_reply` (one
    line, printable ASCII), so nothing can add headers or MIME parts to the report.
    """
    date = email.utils.format_datetime(email.utils.localtime())
    headers = original.split(b"\r\n\r\n", 1)[0][:HEADERS_MAX]
    if not headers.endswith(b"\r\n"):
        headers += b"\r\n"
    lines = [
        f"From: MAILER-DAEMON@{hostname} (Mail Delivery System)",
        f"To: <{sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {date}",
        f"Message-ID: <DSN{mail_id}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        f"This is the mail system at host {hostname}.",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients. It's attached below.",
        "The other recipients were sent the message.",
        "",
    ]
    for rcpt, reply in refused.items():
        lines.append(safe_reply(f"<{rcpt}>: host refused the recipient: {reply}"))
    lines += [
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {hostname}",
        f"X-Postfix-Queue-ID: {safe_reply(queue_id) or mail_id}",
        f"X-Postfix-Sender: {_address_type(sender)}; {sender}",
        f"Arrival-Date: {date}",
    ]
    for rcpt, reply in refused.items():
        lines += [
            "",
            f"Final-Recipient: {_address_type(rcpt)}; {rcpt}",
            "Action: failed",
            f"Status: {reply.dsn}",
            safe_reply(f"Diagnostic-Code: smtp; {reply}"),
        ]
    lines += [
        "",
        f"--{boundary}",
        "Content-Description: Undelivered Message Headers",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    body = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    return body + headers + f"\r\n--{boundary}--\r\n".encode("ascii")
