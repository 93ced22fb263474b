"""The real-Postfix fixture itself: mail flows to the sink, and deferred mail is retried.

Every filterd integration test that puts Postfix in front of filterd trusts this fixture,
so it is checked against the two things those tests rely on: what Postfix delivers can be
read back with its headers, and mail that could not be delivered waits in the deferred
queue until the relay is back.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.fixtures.postfix import PostfixFactory, SinkMessage, amavis_master_cf, free_port

pytestmark = pytest.mark.integration

MESSAGE = (
    b"From: Alice <alice@sender.example>\r\n"
    b"To: Bob <bob@remote.example>\r\n"
    b"Subject: fixture check\r\n"
    b"Message-ID: <fixture-1@sender.example>\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
    b".leading dot survives dot-stuffing\r\n"
)


def test_plain_message_reaches_sink_with_headers(postfix_factory: PostfixFactory) -> None:
    postfix = postfix_factory()

    reply = postfix.send("alice@sender.example", ["bob@remote.example"], MESSAGE)

    assert reply.code == 250 and reply.stage == "DATA", reply
    assert reply.queue_id
    [message] = postfix.wait_messages(1)
    assert message.mail_from == "alice@sender.example"
    assert message.rcpt_to == ("bob@remote.example",)
    assert b"Subject: fixture check\n" in message.data
    assert b"Message-ID: <fixture-1@sender.example>\n" in message.data
    assert f"by {postfix.hostname} (Postfix) with ESMTP id {reply.queue_id}".encode() \
        in message.data
    assert message.data.endswith(b"\n.leading dot survives dot-stuffing\n")
    assert any(reply.queue_id in line and "status=sent" in line for line in postfix.log_lines())


def test_refused_recipient_is_reported_as_first_failure(postfix_factory: PostfixFactory) -> None:
    postfix = postfix_factory({
        "smtpd_recipient_restrictions":
            "check_recipient_access inline:{ { nobody@remote.example = REJECT no such user } }, "
            "permit_mynetworks, reject_unauth_destination",
    })

    refused_only = postfix.send("alice@sender.example", ["nobody@remote.example"], MESSAGE)
    mixed = postfix.send("alice@sender.example",
                         ["nobody@remote.example", "bob@remote.example"], MESSAGE)

    assert (refused_only.code, refused_only.stage) == (554, "RCPT")
    assert "no such user" in refused_only.text
    assert (mixed.code, mixed.stage) == (554, "RCPT")
    [message] = postfix.wait_messages(1)
    assert message.rcpt_to == ("bob@remote.example",)


def test_deferred_mail_waits_queued_until_the_relay_returns(postfix_factory: PostfixFactory) -> None:
    postfix = postfix_factory()
    postfix.sink.stop()

    reply = postfix.send("alice@sender.example", ["bob@remote.example"], MESSAGE)
    assert reply.code == 250, reply
    _wait_until(lambda: postfix.was_deferred(reply.queue_id, "Connection refused"),
                lambda: postfix.postqueue_listing())
    assert "Connection refused" in postfix.postqueue_listing()
    assert postfix.sink.messages() == []

    postfix.sink.start()
    postfix.flush()

    [data] = postfix.wait_delivered(1)
    assert b"Subject: fixture check\n" in data
    _wait_until(lambda: postfix.queue_ids() == [], lambda: postfix.postqueue_listing())


def test_instances_are_independent(postfix_factory: PostfixFactory) -> None:
    first = postfix_factory()
    second = postfix_factory()

    assert first.smtp_port != second.smtp_port
    assert first.send("a@sender.example", ["one@remote.example"], MESSAGE).code == 250
    assert second.send("a@sender.example", ["two@remote.example"], MESSAGE).code == 250

    assert [m.rcpt_to for m in first.wait_messages(1)] == [("one@remote.example",)]
    assert [m.rcpt_to for m in second.wait_messages(1)] == [("two@remote.example",)]


def test_content_filter_wiring_passes_mail_through_reinjection(
        postfix_factory: PostfixFactory) -> None:
    # No filter in between: the smtp-amavis transport delivers straight to the reinjection
    # listener. That listener needs its own hostname, or Postfix's smtp client sees its
    # own name in the EHLO reply and bounces the mail as looping back to itself.
    reinject = free_port()
    postfix = postfix_factory(
        {"content_filter": f"smtp-amavis:[127.0.0.1]:{reinject}"},
        amavis_master_cf(reinject) + "  -o myhostname=reinject.filterd.test\n",
    )

    reply = postfix.send("alice@sender.example", ["bob@remote.example"], MESSAGE)

    assert reply.code == 250, reply
    [data] = postfix.wait_delivered(1)
    assert b"by reinject.filterd.test (Postfix) with ESMTP" in data
    assert f"by {postfix.hostname} (Postfix) with ESMTP id {reply.queue_id}".encode() in data
    assert any(f"relay=127.0.0.1[127.0.0.1]:{reinject}" in line and "status=sent" in line
               for line in postfix.log_lines())


def test_sink_dump_without_received_record_is_rejected() -> None:
    with pytest.raises(ValueError):
        SinkMessage.parse(b"X-Client-Addr: 127.0.0.1\nX-Mail-Args: <a@b>\n\nbody\n\n")


def _wait_until(condition: Callable[[], bool], describe: Callable[[], str],
                timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"condition not met within {timeout}s:\n{describe()}")
        time.sleep(0.1)
