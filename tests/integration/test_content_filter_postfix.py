"""The content filter behind a real Postfix (content_filter = smtp-amavis:[127.0.0.1]:PORT),
reinjecting into Postfix's own 10025-style smtpd, with a real clamd.

filterd runs in-process on the test's event loop; Postfix is driven from threads
(``send_async``, ``wait_delivered_async``) so the filter keeps serving while Postfix waits.
Banned-file checks are left out of ``content_checks`` here: the EICAR fixture attaches a
``.com`` file, which the shipped banned table would reject before ClamAV ever saw it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from filterd.config import Config
from filterd.filter.server import ContentFilterServer
from tests.fixtures.clamd import ClamdServer, clean_message, eicar_mime_message
from tests.fixtures.postfix import PostfixFactory, PostfixInstance, amavis_master_cf, free_port

pytestmark = pytest.mark.integration

GTUBE_RULE = r"""
body     GTUBE  /XJS\*C4JDBQADN1\.NSBN3\*2IDNEN\*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL\*C\.34X/
describe GTUBE  Generic Test for Unsolicited Bulk Email
score    GTUBE  1000
"""
GTUBE_MESSAGE = (b"From: spammer@example.net\r\nTo: rcpt@example.com\r\nSubject: buy now\r\n"
                 b"Message-ID: <gtube@example.net>\r\n\r\n"
                 b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n")


class Relay:
    """A plain TCP relay that can be started later: the reinjection path "coming back"."""

    def __init__(self, port: int, target: int):
        self.port, self.target = port, target
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer), return_exceptions=True)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def rules_file(tmp_path: Path) -> Path | None:
    try:
        from filterd.content.rules.evaluator import RuleSet  # noqa: F401
    except ImportError:
        return None
    path = tmp_path / "gtube.cf"
    path.write_text(GTUBE_RULE)
    return path


@pytest.fixture
async def content_filter(tmp_path: Path, clamd_server: ClamdServer) -> AsyncIterator[Callable[..., Any]]:
    started: list[ContentFilterServer] = []

    async def start(forward_port: int, extra: str = "") -> tuple[ContentFilterServer, int]:
        cfg = Config.from_text(
            f"data_directory = {tmp_path / 'filterd'}\nmyhostname = filter.example\n"
            f"content_checks = postfix_checks clamav rules bayes\nrules_extra_directories =\n"
            f"clamav_socket = {clamd_server.spec_unix}\nclamav_timeout = 20s\n"
            f"spam_tag_level = -999\nfilter_forward = smtp:[127.0.0.1]:{forward_port}\n{extra}")
        server = ContentFilterServer.from_config(cfg)
        gtube = rules_file(tmp_path)
        if server.pipeline.ruleset is None and gtube is not None:
            from filterd.content.rules.evaluator import RuleSet

            server.pipeline.ruleset = RuleSet.load([str(gtube)])
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        sock.setblocking(False)
        await server.start(sock)
        started.append(server)
        return server, sock.getsockname()[1]

    yield start
    for server in started:
        await server.stop(5)


def postfix_with_filter(factory: PostfixFactory, filter_port: int, reinject_port: int) -> PostfixInstance:
    return factory({"content_filter": f"smtp-amavis:[127.0.0.1]:{filter_port}"},
                   amavis_master_cf(reinject_port))


def header_block(data: bytes) -> list[str]:
    head = data.split(b"\n\n", 1)[0].decode("utf-8", "replace")
    return head.replace("\n\t", " ").replace("\n ", " ").split("\n")


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0,
                   postfix: PostfixInstance | None = None) -> None:
    """Poll until ``predicate`` holds; on timeout, say what was awaited and, given the
    Postfix instance, what its queue and the end of its log looked like."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            state = ""
            if postfix is not None:
                state = ("\nqueue:\n" + postfix.postqueue_listing()
                         + "\nlog tail:\n" + "\n".join(postfix.log_lines()[-30:]))
            raise TimeoutError(what + state)
        await asyncio.sleep(0.2)


async def test_clean_spam_and_virus_through_postfix(postfix_factory: PostfixFactory,
                                                    content_filter: Any) -> None:
    reinject = free_port()
    server, filter_port = await content_filter(reinject)
    postfix = await asyncio.to_thread(postfix_with_filter, postfix_factory, filter_port, reinject)

    clean = await postfix.send_async("sender@example.org", ["rcpt@example.com"], clean_message())
    assert clean.ok, clean
    [message] = await asyncio.to_thread(postfix.wait_messages, 1)
    headers = header_block(message.data)
    assert headers[0].startswith("Received: from filter.example (localhost [127.0.0.1])")  # 10025
    assert headers[1:5] == ["X-Virus-Scanned: filterd at localdomain", "X-Spam-Flag: NO",
                            "X-Spam-Score: 0", "X-Spam-Level: "]
    assert headers[5].startswith("X-Spam-Status: No, score=0 tagged_above=-999 required=6.31 tests=[none]")
    assert headers[6].startswith(f"Received: from {postfix.hostname} ([127.0.0.1]) by filter.example "
                                 f"(filterd, port {filter_port}) with ESMTP id ")
    await wait_for(lambda: any(f"orig_queue_id={clean.queue_id}" in line for line in postfix.log_lines()),
                   "the reinjection smtpd logging the XFORWARDed original queue id")
    assert message.rcpt_to == ("rcpt@example.com",)
    body = clean_message().split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")
    assert message.data.split(b"\n\n", 1)[1].rstrip(b"\n") == body  # body unchanged
    await wait_for(lambda: any(f":{filter_port}," in line and "status=sent" in line
                               and "250 2.0.0 from MTA(smtp:[127.0.0.1]:" in line
                               for line in postfix.log_lines()), "Postfix's delivery to filterd")

    if server.pipeline.ruleset is None:
        pytest.skip("the score rules module is not part of this installation: no GTUBE")
    spam = await postfix.send_async("spammer@example.net", ["rcpt@example.com"], GTUBE_MESSAGE)
    assert spam.ok, spam
    messages = await asyncio.to_thread(postfix.wait_messages, 2)
    tagged = header_block(messages[1].data)
    assert "X-Spam-Flag: YES" in tagged and "Subject: ***Spam*** buy now" in tagged
    assert any(h.startswith("X-Spam-Status: Yes, score=1000") and "GTUBE=1000" in h for h in tagged)

    virus = await postfix.send_async("sender@example.org", ["rcpt@example.com"], eicar_mime_message())
    assert virus.ok, virus
    await wait_for(lambda: any(virus.queue_id in line and "250 2.7.0 Ok, discarded" in line
                               for line in postfix.log_lines()), "virus verdict in Postfix log")
    [entry] = await server.quarantine.list(kind="virus")
    assert entry.recipients == ["rcpt@example.com"] and "EICAR" in entry.reason
    assert len(postfix.sink.messages()) == 2  # the virus was not delivered


async def test_reinjection_down_keeps_mail_deferred_until_it_returns(
        postfix_factory: PostfixFactory, content_filter: Any) -> None:
    reinject = free_port()
    relay = Relay(free_port(), reinject)  # nothing listens on relay.port yet
    _, filter_port = await content_filter(relay.port)
    postfix = await asyncio.to_thread(postfix_with_filter, postfix_factory, filter_port, reinject)

    reply = await postfix.send_async("sender@example.org", ["rcpt@example.com"], clean_message())
    assert reply.ok, reply
    await wait_for(lambda: postfix.was_deferred(reply.queue_id, "451 4.4.1 Error in processing, forwarding to"),
                   "the message deferred with filterd's 451", postfix=postfix)
    assert postfix.sink.messages() == []

    await relay.start()
    try:
        await asyncio.to_thread(postfix.flush)
        [message] = await asyncio.to_thread(postfix.wait_messages, 1, 60)
        assert "X-Spam-Flag: NO" in header_block(message.data)
        await wait_for(lambda: not postfix.queue_ids(), "queue empty", postfix=postfix)
        assert len(postfix.sink.messages()) == 1  # delivered once, not twice
    finally:
        relay.close()


async def test_clamd_down_defers_until_it_returns(postfix_factory: PostfixFactory, content_filter: Any,
                                                  clamd_server: ClamdServer) -> None:
    reinject = free_port()
    _, filter_port = await content_filter(reinject)
    postfix = await asyncio.to_thread(postfix_with_filter, postfix_factory, filter_port, reinject)
    await asyncio.to_thread(clamd_server.stop)
    try:
        reply = await postfix.send_async("sender@example.org", ["rcpt@example.com"], clean_message())
        assert reply.ok, reply
        await wait_for(lambda: postfix.was_deferred(reply.queue_id, "451 4.5.0 Error in processing",
                                                    "virus_scan FAILED"),
                       "the message deferred with filterd's 451", postfix=postfix)
    finally:
        await asyncio.to_thread(clamd_server.start)
    await asyncio.to_thread(postfix.flush)
    [message] = await asyncio.to_thread(postfix.wait_messages, 1, 60)
    assert header_block(message.data)[1] == "X-Virus-Scanned: filterd at localdomain"


async def test_recipient_refused_by_the_next_hop_gets_a_dsn_the_others_the_message(
        postfix_factory: PostfixFactory, content_filter: Any) -> None:
    """The reinjection smtpd refuses one of two recipients for good: the other one gets
    the message, the sender a DSN from <> for the refused one, and Postfix hears 250, as
    amavisd-new answers over SMTP (before, the whole message was deferred until expiry)."""
    reinject = free_port()
    _, filter_port = await content_filter(reinject)
    master = amavis_master_cf(reinject).replace(
        "-o smtpd_recipient_restrictions=permit_mynetworks,reject",
        "-o smtpd_recipient_restrictions=$filterd_test_reinject_restrictions")
    postfix = await asyncio.to_thread(postfix_factory, {
        "content_filter": f"smtp-amavis:[127.0.0.1]:{filter_port}",
        "filterd_test_reinject_restrictions":
            "check_recipient_access inline:{ gone@example.com=REJECT }, permit_mynetworks, reject",
    }, master)

    reply = await postfix.send_async("sender@example.org", ["rcpt@example.com", "gone@example.com"],
                                      clean_message())
    assert reply.ok, reply
    messages = await asyncio.to_thread(postfix.wait_messages, 2, 60)
    [dsn] = [m for m in messages if m.mail_from == ""]
    [passed] = [m for m in messages if m.mail_from == "sender@example.org"]
    assert passed.rcpt_to == ("rcpt@example.com",)
    assert dsn.rcpt_to == ("sender@example.org",)
    text = dsn.data.decode("utf-8", "replace")
    assert "Final-Recipient: rfc822; gone@example.com\nAction: failed\nStatus: 5.7.1" in text
    assert "<gone@example.com>: Recipient address rejected: Access denied" in text
    await wait_for(lambda: sum(f":{filter_port}," in line and "status=sent" in line
                               for line in postfix.log_lines()) == 2,
                   "Postfix's delivery to filterd: sent, for both recipients", postfix=postfix)
    await wait_for(lambda: not postfix.queue_ids(), "queue empty", postfix=postfix)
    assert len(postfix.sink.messages()) == 2  # no bounce from Postfix itself
