"""RFC 3464 notifications: structure, the remote reply quoted, who is told, safe text."""

from __future__ import annotations

import email
import email.policy
from email.message import Message

from filterd.mta import bounce
from filterd.mta.delivery import BOUNCED, DEFERRED, RecipientResult
from filterd.mta.queuefile import Recipient

NOW = 1_765_000_000.0
ORIGINAL = (b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: lunch\r\n"
            b"Message-ID: <m1@example.com>\r\n\r\nSee you at noon.\r\n")
SETTINGS = bounce.NoticeSettings("mx.gateway.test", frozenset({"resource", "software"}))


def original(sender: str = "alice@example.com", content: bytes = ORIGINAL) -> bounce.Original:
    return bounce.Original("3A1B2C4D5E", sender, NOW - 7200, content, len(content))


def remote_failure(address: str = "bob@example.net", notify: str = "") -> RecipientResult:
    reply = "550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown"
    return RecipientResult(Recipient(address, notify=notify), BOUNCED, "5.1.1",
                           f"host mx.example.net[192.0.2.25] said: {reply} (in reply to RCPT TO command)",
                           "mx.example.net[192.0.2.25]:25", "mx.example.net", reply)


def parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def test_failure_report_structure() -> None:
    raw = bounce.failure_report("mx.gateway.test", original(), [remote_failure()], NOW, 50000)
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["From"] == "MAILER-DAEMON@mx.gateway.test (Mail Delivery System)"
    assert msg["To"] == "<alice@example.com>"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Auto-Submitted"] == "auto-replied"
    text, report, returned = msg.get_payload()
    body = text.get_payload()
    assert body.startswith("This is the mail system at host mx.gateway.test.")
    assert "<bob@example.net>: host mx.example.net[192.0.2.25] said: 550 5.1.1" in body
    assert report.get_content_type() == "message/delivery-status"
    per_message, per_rcpt = report.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mx.gateway.test"
    assert per_message["Arrival-Date"]
    assert per_rcpt["Final-Recipient"] == "rfc822; bob@example.net"
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"] == "5.1.1"
    assert per_rcpt["Remote-MTA"] == "dns; mx.example.net"
    diag = " ".join(per_rcpt["Diagnostic-Code"].split())
    assert diag == "smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown"
    assert returned.get_content_type() == "message/rfc822"
    assert returned.get_payload()[0]["Subject"] == "lunch"
    assert b"See you at noon." in raw
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


def test_large_messages_return_headers_only() -> None:
    big = ORIGINAL + b"x" * 60000
    raw = bounce.failure_report("mx.gateway.test", original(content=big), [remote_failure()], NOW, 50000)
    returned = parse(raw).get_payload()[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert "Subject: lunch" in returned.get_payload()
    assert b"xxxxxxxx" not in raw


def test_local_failure_and_original_recipient() -> None:
    r = RecipientResult(Recipient("j@example.org", orcpt="John@Example.org"), BOUNCED, "5.1.10",
                        "Domain example.org does not accept mail (nullMX)")
    per_rcpt = parse(bounce.failure_report("h", original(), [r], NOW, 50000)).get_payload()[1].get_payload()[1]
    assert per_rcpt["Original-Recipient"] == "rfc822; John@Example.org"
    assert per_rcpt["Remote-MTA"] is None
    assert per_rcpt["Diagnostic-Code"] == "X-Filterd; Domain example.org does not accept mail (nullMX)"


def test_hostile_reply_text_cannot_forge_headers_or_parts() -> None:
    evil = "550 no\r\nBcc: victim@example.com\r\n\r\n--boundary\x00\xff"
    r = RecipientResult(Recipient("b\u00fcb@example.net"), BOUNCED, "5.0.0", evil, remote_mta="x", diagnostic=evil)
    raw = bounce.failure_report("h", original(), [r], NOW, 50000)
    msg = parse(raw)
    assert msg["Bcc"] is None
    per_rcpt = msg.get_payload()[1].get_payload()[1]
    assert per_rcpt["Bcc"] is None
    assert per_rcpt["Final-Recipient"] == "utf-8; b\\x{FC}b@example.net"
    raw.decode("ascii")  # everything from outside was made printable ASCII


def test_delay_report() -> None:
    r = RecipientResult(Recipient("bob@example.net"), DEFERRED, "4.4.1",
                        "connect to mx.example.net[192.0.2.25]:25: Connection refused")
    raw = bounce.delay_report("mx.gateway.test", original(), [r], NOW, NOW + 86400)
    msg = parse(raw)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    text, report, headers = msg.get_payload()
    assert "THIS IS A WARNING ONLY" in text.get_payload()
    per_rcpt = report.get_payload()[1]
    assert per_rcpt["Action"] == "delayed" and per_rcpt["Status"] == "4.4.1"
    assert per_rcpt["Will-Retry-Until"]
    assert headers.get_content_type() == "text/rfc822-headers"


def test_who_is_told() -> None:
    failed = [remote_failure()]
    kinds = [n.kind for n in bounce.notices(SETTINGS, original(), failed, [], NOW, NOW)]
    assert kinds == ["bounce"]
    # A bounce that cannot be delivered is never bounced; the postmaster only with 2bounce.
    assert bounce.notices(SETTINGS, original(sender=""), failed, [], NOW, NOW) == []
    loud = bounce.NoticeSettings("h", frozenset({"2bounce", "bounce", "delay"}))
    [double] = bounce.notices(loud, original(sender=""), failed, [], NOW, NOW)
    assert (double.kind, double.recipient) == ("2bounce", "postmaster")
    assert parse(double.content)["Subject"] == "Postmaster Copy: Undelivered Mail"
    assert parse(double.content).get_payload()[2].get_content_type() == "text/rfc822-headers"
    both = bounce.notices(loud, original(), failed, failed, NOW, NOW)
    assert [(n.kind, n.recipient) for n in both] == [
        ("bounce", "alice@example.com"), ("postmaster-bounce", "postmaster"),
        ("delay", "alice@example.com"), ("postmaster-delay", "postmaster")]


def test_dsn_notify_is_honoured() -> None:
    never = [remote_failure(notify="NEVER")]
    assert bounce.notices(SETTINGS, original(), never, never, NOW, NOW) == []
    only_success = [remote_failure(notify="SUCCESS")]
    assert bounce.notices(SETTINGS, original(), only_success, [], NOW, NOW) == []
    failure = [remote_failure(notify="FAILURE")]
    assert [n.kind for n in bounce.notices(SETTINGS, original(), failure, failure, NOW, NOW)] == ["bounce"]


def test_ret_hdrs_returns_the_headers_and_envid_is_quoted() -> None:
    """RFC 3461: RET=HDRS asks for the header section only; ENVID comes back as
    Original-Envelope-Id in the per-message fields."""
    o = bounce.Original("3A1B2C4D5E", "alice@example.com", NOW - 7200, ORIGINAL, len(ORIGINAL),
                        envelope_id="batch-42", headers_only=True)
    raw = bounce.failure_report("mx.gateway.test", o, [remote_failure()], NOW, 50000)
    text, report, returned = parse(raw).get_payload()
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"See you at noon." not in raw
    assert report.get_payload()[0]["Original-Envelope-Id"] == "batch-42"
    whole = bounce.failure_report("mx.gateway.test", original(), [remote_failure()], NOW, 50000)
    assert b"Original-Envelope-Id" not in whole and b"See you at noon." in whole
