"""The milter behind a real Postfix (``smtpd_milters``, ``milter_protocol = 6``).

Postfix (Debian's, private instance) → milter → ``filterd serve`` (a real process, two
workers) with greylisting in SQLite, a real clamd, and a GTUBE score rule; accepted
mail goes to Postfix's smtp-sink, where the test reads what arrived. The milter answers
before the queue, so every verdict is a reply the SMTP client sees.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.fixtures.clamd import ClamdServer, clean_message, eicar_mime_message
from tests.fixtures.filterd import Daemon, wait_port
from tests.fixtures.postfix import PostfixFactory, PostfixInstance
from tests.fixtures.programs import free_port

pytestmark = pytest.mark.integration

GTUBE_RULE = r"""
body     GTUBE  /XJS\*C4JDBQADN1\.NSBN3\*2IDNEN\*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL\*C\.34X/
describe GTUBE  Generic Test for Unsolicited Bulk Email
score    GTUBE  1000
"""
GTUBE_MESSAGE = (b"From: spammer@example.net\r\nTo: rcpt@example.com\r\nSubject: buy now\r\n"
                 b"X-Spam-Flag: NO\r\nMessage-ID: <gtube@example.net>\r\n\r\n"
                 b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n")


class MilterDaemon(Daemon):
    """``filterd serve`` with the milter on a free port (and the policy port as fixture's)."""

    def __init__(self, tmp: Path, clamd: ClamdServer, extra: str = "", milter_port: int | None = None):
        self.milter_port = milter_port or free_port()
        rules = tmp / "rules"
        rules.mkdir(exist_ok=True)
        (rules / "gtube.cf").write_text(GTUBE_RULE)
        super().__init__(tmp, f"milter_listen = inet:127.0.0.1:{self.milter_port}\n"
                              "content_checks = postfix_checks clamav rules\n"
                              f"rules_directory = {rules}\nrules_extra_directories =\n"
                              f"clamav_socket = {clamd.spec_unix}\nclamav_timeout = 20s\n"
                              "spam_tag_level = -999\nmyhostname = filter.example\n"
                              "greylist_delay = 300s\n" + extra)

    def start(self) -> "MilterDaemon":
        super().start()
        wait_port(self.milter_port)
        return self


@pytest.fixture
def milter_daemon(tmp_path: Path, clamd_server: ClamdServer):
    started: list[MilterDaemon] = []

    def start(extra: str = "", milter_port: int | None = None) -> MilterDaemon:
        directory = tmp_path / f"d{len(started)}"
        directory.mkdir()
        daemon = MilterDaemon(directory, clamd_server, extra, milter_port)
        started.append(daemon.start())
        return daemon

    yield start
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop()


def postfix_with_milter(factory: PostfixFactory, port: int) -> PostfixInstance:
    return factory({"smtpd_milters": f"inet:127.0.0.1:{port}", "milter_protocol": "6",
                    "milter_default_action": "tempfail"})


def wait_log(daemon: Daemon, *texts: str, timeout: float = 20.0) -> str:
    """The daemon's log once it holds every one of ``texts`` (lines are written in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        log = daemon.log.read_text()
        if all(text in log for text in texts) or time.monotonic() > deadline:
            return log
        time.sleep(0.1)


def headers_of(data: bytes) -> list[str]:
    head = data.split(b"\n\n", 1)[0].decode("utf-8", "replace")
    return head.replace("\n\t", " ").replace("\n ", " ").split("\n")


def test_greylisting_at_rcpt_then_delivered_once(postfix_factory: PostfixFactory, milter_daemon) -> None:
    daemon = milter_daemon()
    postfix = postfix_with_milter(postfix_factory, daemon.milter_port)
    first = postfix.send("alice@sender.example", ["bob@remote.example"], clean_message())
    assert (first.code, first.stage) == (450, "RCPT"), first
    assert first.text.startswith("4.2.0 <bob@remote.example>: Recipient address rejected: Greylisted")
    daemon.wait_sighting("alice@sender.example")  # seen by every worker from now on
    daemon.advance(301)  # the daemon's greylist clock, not the wall clock
    retry = postfix.send("alice@sender.example", ["bob@remote.example"], clean_message())
    assert retry.ok, retry
    [message] = postfix.wait_messages(1)
    headers = headers_of(message.data)
    assert any(h.startswith("X-Greylist: delayed ") for h in headers)
    assert any(h.startswith("X-Spam-Status: No, score=0") for h in headers)
    time.sleep(1)
    assert len(postfix.sink.messages()) == 1 and postfix.queue_ids() == []  # once, nothing left
    assert "by=check_greylist" in wait_log(daemon, "by=check_greylist")


def test_clean_spam_and_virus(postfix_factory: PostfixFactory, milter_daemon) -> None:
    daemon = milter_daemon("milter_rcpt_restrictions =\nspam_action = reject\nvirus_action = reject\n")
    postfix = postfix_with_milter(postfix_factory, daemon.milter_port)

    clean = postfix.send("sender@example.org", ["rcpt@example.com"], clean_message())
    assert clean.ok, clean
    [message] = postfix.wait_messages(1)
    headers = headers_of(message.data)
    assert "X-Virus-Scanned: filterd at localdomain" in headers or any(
        h.startswith("X-Virus-Scanned: filterd") for h in headers)
    assert any(h.startswith("X-Spam-Status: No, score=0 tagged_above=-999 required=6.31") for h in headers)
    assert headers.count("X-Spam-Flag: NO") == 1

    spam = postfix.send("spammer@example.net", ["rcpt@example.com"], GTUBE_MESSAGE)
    assert (spam.code, spam.stage) == (554, "DATA"), spam
    assert spam.text.startswith("5.7.0 Reject, id=")

    virus = postfix.send("sender@example.org", ["rcpt@example.com"], eicar_mime_message())
    assert (virus.code, virus.stage) == (554, "DATA"), virus
    assert "INFECTED" in virus.text
    log = wait_log(daemon, f"Queue-ID: {clean.queue_id}", "Blocked SPAM {Rejected}", "Blocked INFECTED")
    assert f"Queue-ID: {clean.queue_id}" in log
    assert "Blocked SPAM {Rejected}" in log and "Blocked INFECTED" in log
    time.sleep(1)
    assert len(postfix.sink.messages()) == 1 and postfix.queue_ids() == []


def test_spam_is_tagged_replacing_the_senders_spam_headers(postfix_factory: PostfixFactory,
                                                          milter_daemon) -> None:
    daemon = milter_daemon("milter_rcpt_restrictions =\n")
    postfix = postfix_with_milter(postfix_factory, daemon.milter_port)
    spam = postfix.send("spammer@example.net", ["rcpt@example.com"], GTUBE_MESSAGE)
    assert spam.ok, spam
    [message] = postfix.wait_messages(1)
    headers = headers_of(message.data)
    assert [h for h in headers if h.startswith("X-Spam-Flag:")] == ["X-Spam-Flag: YES"]
    assert "Subject: ***Spam*** buy now" in headers
    assert any(h.startswith("X-Spam-Status: Yes, score=1000") and "GTUBE=1000" in h for h in headers)


def test_virus_quarantined_and_discarded(postfix_factory: PostfixFactory, milter_daemon) -> None:
    daemon = milter_daemon("milter_rcpt_restrictions =\n")  # virus_action = quarantine (default)
    postfix = postfix_with_milter(postfix_factory, daemon.milter_port)
    virus = postfix.send("sender@example.org", ["rcpt@example.com"], eicar_mime_message())
    assert virus.ok, virus  # accepted, then dropped: the forged sender gets no bounce
    log = wait_log(daemon, "Discarded,Quarantined")
    assert "Blocked INFECTED" in log and "quarantine: virus-" in log and f"Queue-ID: {virus.queue_id}" in log
    assert any(virus.queue_id in line and "milter-discard" in line for line in postfix.log_lines())
    time.sleep(1)
    assert postfix.sink.messages() == [] and postfix.queue_ids() == []


def test_virus_notice_goes_to_virus_admin_as_the_filters_does(postfix_factory: PostfixFactory,
                                                              milter_daemon) -> None:
    """The milter's after-verdict work is the content filter's: EICAR is quarantined and
    ``virus_admin`` gets the notice from <>, through ``filter_forward`` (here Postfix's
    own smtpd, so the notice is itself filtered and relayed to the sink)."""
    milter_port = free_port()
    postfix = postfix_with_milter(postfix_factory, milter_port)
    daemon = milter_daemon("milter_rcpt_restrictions =\nvirus_admin = virus-admin@example.com\n"
                           f"filter_forward = smtp:[127.0.0.1]:{postfix.smtp_port}\n", milter_port)
    virus = postfix.send("sender@example.org", ["rcpt@example.com"], eicar_mime_message())
    assert virus.ok, virus
    [notice] = postfix.wait_messages(1)
    assert (notice.mail_from, notice.rcpt_to) == ("", ("virus-admin@example.com",))
    text = notice.data.decode("utf-8", "replace")
    assert "Subject: INFECTED (" in text and "in mail FROM <sender@example.org>" in text
    assert "Action taken: quarantined and discarded" in text
    assert f"Queue-ID: {virus.queue_id}" in text and "Quarantine id: virus-" in text
    log = wait_log(daemon, "Discarded,Quarantined")
    mail_id = log.split("mail_id: ", 1)[1].split(",", 1)[0]
    assert f"quarantine: virus-{mail_id}" in log and f"mail_id: {mail_id}, log id:" in text


def test_filterd_down_gives_tempfail(postfix_factory: PostfixFactory, milter_daemon) -> None:
    daemon = milter_daemon("milter_rcpt_restrictions =\n")
    postfix = postfix_with_milter(postfix_factory, daemon.milter_port)
    assert daemon.stop() == 0
    down = postfix.send("sender@example.org", ["rcpt@example.com"], clean_message())
    assert down.code == 451 and down.text.startswith("4.7.1"), down
    assert postfix.sink.messages() == [] and postfix.queue_ids() == []
