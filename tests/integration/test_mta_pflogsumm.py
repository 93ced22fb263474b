"""Debian's pflogsumm summarises the gateway MTA's log lines as it does Postfix's."""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import pytest

from filterd.log import EventLog
from filterd.mta import maillog
from tests.fixtures.programs import find_program

pytestmark = pytest.mark.integration


def mail_log() -> str:
    out = io.StringIO()
    log = EventLog(out, "gw.example.test", "filterd")
    ev = log.line
    # 1: received from a client, one recipient delivered, one bounced, a bounce queued.
    ev("smtpd", maillog.client("1A2B3C0001", "mail.example.com", "192.0.2.7"))
    ev("cleanup", maillog.message_id("1A2B3C0001", "<m1@example.com>"))
    ev("qmgr", maillog.queued("1A2B3C0001", "alice@example.com", 1000, 2))
    ev("smtp", maillog.delivery("1A2B3C0001", "bob@example.net", "sent", "250 2.0.0 Ok: queued as 77",
                                relay="mx.example.net[192.0.2.25]:25", delay=0.5,
                                delays=(0.1, 0.01, 0.2, 0.19), dsn="2.0.0"))
    ev("smtp", maillog.delivery(
        "1A2B3C0001", "carol@example.net", "bounced",
        "host mx.example.net[192.0.2.25] said: 550 5.1.1 <carol@example.net>: User unknown "
        "(in reply to RCPT TO command)", relay="mx.example.net[192.0.2.25]:25", delay=0.5,
        delays=(0.1, 0.01, 0.2, 0.19), dsn="5.1.1"))
    ev("bounce", maillog.notification("1A2B3C0001", "bounce", "1A2B3C0003"))
    ev("qmgr", maillog.removed("1A2B3C0001"))
    ev("cleanup", maillog.message_id("1A2B3C0003", "<1.1A2B3C0003@gw.example.test>"))
    ev("qmgr", maillog.queued("1A2B3C0003", "", 2000, 1))
    ev("smtp", maillog.delivery("1A2B3C0003", "alice@example.com", "sent", "250 ok",
                                relay="mx.example.com[192.0.2.8]:25", delay=0.2, dsn="2.0.0"))
    ev("qmgr", maillog.removed("1A2B3C0003"))
    # 2: received, deferred.
    ev("smtpd", maillog.client("1A2B3C0002", "unknown", "198.51.100.4"))
    ev("qmgr", maillog.queued("1A2B3C0002", "dave@example.org", 500, 1))
    ev("smtp", maillog.delivery("1A2B3C0002", "erin@example.com", "deferred",
                                "connect to mx.example.com[192.0.2.8]:25: Connection refused",
                                delay=30, dsn="4.4.1"))
    # Two refusals before a queue file existed.
    for rcpt in ("x@relay.test", "y@relay.test"):
        ev("smtpd", maillog.reject("RCPT", "unknown", "203.0.113.5",
                                   f"554 5.7.1 <{rcpt}>: Relay access denied",
                                   sender="spam@example.biz", recipient=rcpt, helo="spammer"))
    log.flush()
    return out.getvalue()


def test_pflogsumm_counts_filterd_lines(tmp_path: Path) -> None:
    program = find_program("pflogsumm")
    if program is None:
        pytest.skip("pflogsumm is not installed (Debian package pflogsumm)")
    path = tmp_path / "mail.log"
    path.write_text(mail_log())
    result = subprocess.run([program, "--syslog-name=filterd", str(path)], capture_output=True,
                            text=True, timeout=60, check=True)
    report = result.stdout

    def total(label: str) -> int:
        m = re.search(rf"^\s+(\d+)\s+{label}", report, re.M)
        assert m, f"no '{label}' line in:\n{report}"
        return int(m.group(1))

    assert total("received") == 2
    assert total("delivered") == 2
    assert total("deferred") == 1
    assert total("bounced") == 1
    assert total("rejected") == 2
    assert total("bytes received") == 1500
    assert total("bytes delivered") == 3000
    assert "User unknown" in report
    assert "Connection refused" in report
    assert "Relay access denied" in report
