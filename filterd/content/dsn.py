"""The delivery status notification for recipients the next hop refused (RFC 3464).

Over SMTP Postfix gets one reply for the whole message, so when the next hop accepts
some recipients and permanently refuses others, the content filter does what
amavisd-new does: it passes the message to the accepted ones, answers 250, and tells
the sender itself about the refused ones with a DSN, sent from the null sender (so it
can never cause a bounce loop) and never to the null sender. Its words are this
module's; the report is built by :mod:`filterd.smtp.dsn`, as the MTA's bounces are.
"""

from __future__ import annotations

import time

from filterd.reply import Reply, safe_reply
from filterd.smtp.dsn import Original, RecipientStatus, delivery_report, header_section

#: The original header section is returned (``text/rfc822-headers``) up to this size.
HEADERS_MAX = 64 * 1024


def refusal_report(*, hostname: str, sender: str, refused: dict[str, Reply], original: bytes,
                   queue_id: str, mail_id: str) -> bytes:
    """The DSN to ``sender`` for the ``refused`` recipients of the message ``original``.

    Each refusal is one line of the human-readable part, made safe by :func:`safe_reply`
    (one line, printable ASCII), as the next hop's reply is quoted whole there.
    """
    now = time.time()
    lines = [
        f"This is the mail system at host {hostname}.",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients. It's attached below.",
        "The other recipients were sent the message.",
        "",
        *(safe_reply(f"<{rcpt}>: host refused the recipient: {reply}") for rcpt, reply in refused.items()),
        "",
    ]
    headers = header_section(original)[:HEADERS_MAX]
    return delivery_report(
        hostname=hostname,
        original=Original(queue_id or mail_id, sender, now, headers, len(original)),
        recipients=[RecipientStatus(rcpt, "failed", reply.dsn, str(reply), diagnostic=str(reply))
                    for rcpt, reply in refused.items()],
        to=sender, subject="Undelivered Mail Returned to Sender", text="\r\n".join(lines),
        now=now, return_whole=False, size_limit=0)
