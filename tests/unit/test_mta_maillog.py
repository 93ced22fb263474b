"""Log line builders: Postfix's shapes, and nothing from outside can split a line."""

from __future__ import annotations

import pytest

from filterd.mta import maillog


@pytest.mark.parametrize("seconds, text", [
    (0, "0"), (0.004, "0"), (0.05, "0.05"), (0.1, "0.1"), (1.234, "1.23"), (2.0, "2"),
    (12.34, "12.3"), (150.7, "151"), (-1, "0"),
])
def test_format_delay(seconds: float, text: str) -> None:
    assert maillog.format_delay(seconds) == text


def test_shapes() -> None:
    assert maillog.client("3A1F20C4D5", "mail.example.com", "192.0.2.7") == \
        "3A1F20C4D5: client=mail.example.com[192.0.2.7]"
    assert maillog.message_id("3A1F20C4D5", "<m1@example.com>") == "3A1F20C4D5: message-id=<m1@example.com>"
    assert maillog.queued("3A1F20C4D5", "", 1234, 2) == "3A1F20C4D5: from=<>, size=1234, nrcpt=2 (queue active)"
    assert maillog.delivery(
        "3A1F20C4D5", "bob@example.net", "sent", "250 2.0.0 Ok: queued as 9F",
        relay="mx.example.net[192.0.2.25]:25", delay=1.2, delays=(0.05, 0.01, 0.6, 0.54), dsn="2.0.0",
        orig_to="Bob@Example.net") == (
        "3A1F20C4D5: to=<bob@example.net>, orig_to=<Bob@Example.net>, relay=mx.example.net[192.0.2.25]:25, "
        "delay=1.2, delays=0.05/0.01/0.6/0.54, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 9F)")
    assert maillog.removed("3A1F20C4D5") == "3A1F20C4D5: removed"
    assert maillog.expired("3A1F20C4D5", "a@b") == "3A1F20C4D5: from=<a@b>, status=expired, returned to sender"
    assert maillog.notification("3A1F20C4D5", "bounce", "4B2") == \
        "3A1F20C4D5: sender non-delivery notification: 4B2"
    assert maillog.reject("RCPT", "unknown", "192.0.2.9", "554 5.7.1 <c@d>: Relay access denied",
                          sender="a@b", recipient="c@d", helo="x") == (
        "NOQUEUE: reject: RCPT from unknown[192.0.2.9]: 554 5.7.1 <c@d>: Relay access denied; "
        "from=<a@b> to=<c@d> proto=ESMTP helo=<x>")


def test_outside_text_cannot_forge_lines() -> None:
    line = maillog.delivery("3A1F20C4D5", "a\r\nb@x", "bounced", "550 no\nFeb  1 00:00:00 h filterd/qmgr[1]: X: removed",
                            relay="h\x00[1.2.3.4]:25")
    assert "\n" not in line and "\r" not in line and "\x00" not in line
    assert line.startswith("3A1F20C4D5: to=<a??b@x>, relay=h?[1.2.3.4]:25,")
