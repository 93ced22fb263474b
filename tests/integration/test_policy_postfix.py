"""A real Postfix asking filterd's policy service: greylisting and a DNSBL reject.

Postfix (Debian's, private instance) → check_policy_service → `filterd serve` (a real
process) → greylist state in SQLite and a real DNS server (dnsmasq) for the DNSBL;
accepted mail is relayed to Postfix's smtp-sink, where the test reads what arrived.
"""

from __future__ import annotations

import smtplib

import pytest

from tests.fixtures.dnsmasq import LISTED_V4, ZEN
from tests.fixtures.filterd import Daemon

pytestmark = pytest.mark.integration

MESSAGE = b"From: alice@sender.example\r\nTo: bob@remote.example\r\nSubject: greylist me\r\n\r\nHello.\r\n"


@pytest.fixture
def policy_daemon(tmp_path, dnsmasq_server):
    d = Daemon(tmp_path, f"greylist_delay = 300s\n"
                         f"dns_nameservers = {dnsmasq_server.nameserver}\n"
                         f"policy_restrictions = reject_rbl_client {ZEN}, check_greylist\n")
    d.start()
    yield d
    if d.proc and d.proc.poll() is None:
        d.stop()


@pytest.fixture
def postfix(postfix_factory, policy_daemon):
    return postfix_factory({
        "smtpd_recipient_restrictions":
            f"check_policy_service inet:127.0.0.1:{policy_daemon.port}, permit_mynetworks, reject_unauth_destination",
    })


def test_greylisting_through_postfix(postfix, policy_daemon):
    first = postfix.send("alice@sender.example", ["bob@remote.example"], MESSAGE)
    assert first.code == 450, first
    assert first.text.startswith("4.2.0 <bob@remote.example>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/remote.example.html")
    early = postfix.send("alice@sender.example", ["bob@remote.example"], MESSAGE)
    assert early.code == 450
    policy_daemon.wait_sighting("alice@sender.example")  # seen by every worker from now on
    policy_daemon.advance(301)  # the daemon's greylist clock, not the wall clock
    retry = postfix.send("alice@sender.example", ["bob@remote.example"], MESSAGE)
    assert retry.code == 250, retry
    [message] = postfix.wait_messages(1)
    headers = message.data.split(b"\n\n", 1)[0].decode()
    assert "X-Greylist: delayed " in headers and "by filterd-" in headers
    log = policy_daemon.log.read_text()
    assert "by=check_greylist (defer: new triplet)" in log


def test_dnsbl_listed_client_gets_postfix_554_with_txt(postfix):
    # Connect from 127.0.0.2, which the test zone lists (any 127/8 address is local).
    with smtplib.SMTP("127.0.0.1", postfix.smtp_port, local_hostname="listed.example",
                      source_address=(LISTED_V4, 0), timeout=30) as client:
        client.ehlo("listed.example")
        assert client.mail("spammer@sender.example")[0] == 250
        code, text = client.rcpt("bob@remote.example")
    assert code == 554
    text = text.decode()
    assert f"Service unavailable; Client host [{LISTED_V4}] blocked using {ZEN}" in text
    assert "Listed in zen.test see https://zen.test/127.0.0.2" in text
