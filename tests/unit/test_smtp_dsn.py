"""The one RFC 3464 builder, as the content filter's refusal notice uses it."""

from __future__ import annotations

import email
import email.policy
from email.message import Message

from filterd.content.dsn import HEADERS_MAX, refusal_report
from filterd.reply import Reply
from filterd.smtp.dsn import Original, RecipientStatus, delivery_report

ORIGINAL = (b"From: a@example.org\r\nTo: b@example.com, gone@example.com\r\nSubject: hi\r\n"
            b"Message-ID: <m1@example.org>\r\n\r\nthe body stays home\r\n")


def parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def refusal(refused: dict[str, Reply], original: bytes = ORIGINAL) -> bytes:
    return refusal_report(hostname="filter.test", sender="a@example.org", refused=refused,
                          original=original, queue_id="4F2A1B", mail_id="fbSD2R7xnBNZ")


def test_refusal_report_is_the_shared_multipart_report() -> None:
    raw = refusal({"gone@example.com": Reply(550, "5.1.1", "<gone@example.com>: User unknown")})
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "delivery-status"
    assert msg["From"] == "MAILER-DAEMON@filter.test (Mail Delivery System)"
    assert (msg["To"], msg["Auto-Submitted"]) == ("<a@example.org>", "auto-replied")
    text, report, headers = msg.get_payload()
    assert "<gone@example.com>: host refused the recipient: 550 5.1.1 <gone@example.com>: User unknown" \
        in text.get_payload()
    per_message, per_rcpt = report.get_payload()
    assert per_message["Reporting-MTA"] == "dns; filter.test"
    assert per_message["X-Filterd-Queue-ID"] == "4F2A1B"
    assert (per_rcpt["Final-Recipient"], per_rcpt["Action"], per_rcpt["Status"]) == \
        ("rfc822; gone@example.com", "failed", "5.1.1")
    assert per_rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 <gone@example.com>: User unknown"
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Message-ID: <m1@example.org>" in headers.get_payload()
    assert b"the body stays home" not in raw
    assert "Final-Recipient: rfc822; gone@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n" in raw.decode()


def test_hostile_next_hop_reply_and_address_cannot_add_parts_or_headers() -> None:
    evil = Reply(550, "5.0.0", "no\r\nBcc: victim@example.com\r\n\r\n--x\x00\xff\u202e")
    raw = refusal({"g\u00f6ne@example.com": evil})
    raw.decode("ascii")
    msg = parse(raw)
    assert msg["Bcc"] is None and len(msg.get_payload()) == 3
    per_rcpt = msg.get_payload()[1].get_payload()[1]
    assert per_rcpt["Bcc"] is None
    assert per_rcpt["Final-Recipient"] == "utf-8; g\\x{F6}ne@example.com"


def test_the_returned_header_section_is_bounded() -> None:
    huge = b"X-Pad: " + b"y" * (HEADERS_MAX * 2) + b"\r\n" + ORIGINAL
    returned = parse(refusal({"gone@example.com": Reply(550, "5.1.1", "no")}, huge)).get_payload()[2]
    assert HEADERS_MAX <= len(returned.get_payload()) <= HEADERS_MAX + 2


def test_the_boundary_never_occurs_in_the_original() -> None:
    content = b"Subject: x\r\n\r\n--Q1.100/h\r\n"
    original = Original("Q1", "a@example.org", 0.0, content, len(content))
    raw = delivery_report(hostname="h", original=original,
                          recipients=[RecipientStatus("b@example.com", "failed", "5.0.0", "local")],
                          to="a@example.org", subject="s", text="t\r\n", now=100.0,
                          return_whole=True, size_limit=1000)
    msg = parse(raw)
    assert msg.get_boundary() != "Q1.100/h" and len(msg.get_payload()) == 3
    assert msg.get_payload()[2].get_payload()[0]["Subject"] == "x"
