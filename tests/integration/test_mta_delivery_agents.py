"""The smtp and lmtp delivery agents against real servers: Postfix's smtp-sink failing on
command, a real Postfix as the next hop, and aiosmtpd servers with and without STARTTLS."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from filterd.config import Config
from filterd.mta.delivery import BOUNCED, DEFERRED, SENT, DeliveryReport, OutgoingMessage
from filterd.mta.queuefile import Recipient
from filterd.mta.routing import Target
from filterd.mta.smtp_agent import ClientSettings, LmtpAgent, SmtpAgent, network_agents
from tests.fixtures.postfix import PostfixFactory
from tests.fixtures.programs import free_port
from tests.fixtures.smtp_sink import Sink, sinks  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

BODY = (b"From: alice@example.org\nTo: bob@example.net\nSubject: agents\nMessage-ID: <agents@example.org>\n\n"
        b"first line\n.a line that starts with a dot\n.\nlast line\n")


def message(body: bytes = BODY, sender: str = "alice@example.org",
            attributes: dict[str, str] | None = None) -> OutgoingMessage:
    return OutgoingMessage("4AgentsQ1", sender, time.time(), len(body), attributes or {}, lambda: iter([body]))


def rcpts(*names: str) -> list[Recipient]:
    return [Recipient(f"{n}@example.net") for n in names]


def config(**params: str) -> Config:
    text = "myhostname = gw.example.test\ninet_protocols = ipv4\n" + \
        "".join(f"{k} = {v}\n" for k, v in params.items())
    return Config.from_text(text)


def smtp_agent(**params: str) -> SmtpAgent:
    agent = network_agents(config(**params))["smtp"]
    assert isinstance(agent, SmtpAgent)
    return agent


def start(sinks: list[Sink], tmp_path: Path, *flags: str, socket_path: str | None = None) -> Sink:
    sink = Sink(tuple(flags), socket_path=socket_path).start()
    sinks.append(sink)
    return sink


def statuses(report: DeliveryReport) -> list[str]:
    return [r.status for r in report.results]


# -- smtp-sink ---------------------------------------------------------------------------------
async def test_all_recipients_sent(sinks: list[Sink], tmp_path: Path) -> None:
    sink = start(sinks, tmp_path)
    agent = smtp_agent()
    report = await agent.deliver(message(), sink.hop, rcpts("bob", "carol"))
    await agent.close()
    assert statuses(report) == [SENT, SENT] and not report.site_failure, report
    r = report.results[0]
    assert r.relay == f"127.0.0.1[127.0.0.1]:{sink.port}" and r.dsn.startswith("2.") and r.reason.startswith("250")
    [got] = sink.messages()
    assert got.mail_from == "alice@example.org" and got.rcpt_to == ("bob@example.net", "carol@example.net")
    assert got.helo == "gw.example.test"
    assert got.data == BODY  # dot-stuffed on the wire, unstuffed by the sink: the same text


async def test_a_large_message_is_streamed_intact(sinks: list[Sink], tmp_path: Path) -> None:
    """Over PREFETCH, the body comes from the queue file in batches: chunks of odd sizes,
    lines of dots falling on every boundary, must arrive as they were."""
    sink = start(sinks, tmp_path)
    lines = [b"." * (i % 5) + b"line %d" % i for i in range(60000)]
    body = b"Subject: big\n\n" + b"\n".join(lines) + b"\n"
    chunks = [body[i:i + 7777] for i in range(0, len(body), 7777)]
    big = OutgoingMessage("4AgentsQ3", "alice@example.org", time.time(), len(body), {}, lambda: iter(chunks))
    report = await smtp_agent().deliver(big, sink.hop, rcpts("bob"))
    assert statuses(report) == [SENT]
    [got] = sink.messages()
    assert len(body) > 256 * 1024 and got.data == body


async def test_rcpt_4xx_defers_without_a_site_failure(sinks: list[Sink], tmp_path: Path) -> None:
    sink = start(sinks, tmp_path, "-r", "RCPT")
    report = await smtp_agent().deliver(message(), sink.hop, rcpts("bob"))
    [r] = report.results
    assert (r.status, r.dsn) == (DEFERRED, "4.3.0") and not report.site_failure
    assert r.reason == (f"host 127.0.0.1[127.0.0.1] said: 450 4.3.0 Error: command failed "
                        f"(in reply to RCPT TO command)")
    assert r.diagnostic == "450 4.3.0 Error: command failed"
    assert sink.messages() == []


async def test_rcpt_5xx_bounces(sinks: list[Sink], tmp_path: Path) -> None:
    sink = start(sinks, tmp_path, "-f", "RCPT")
    report = await smtp_agent().deliver(message(), sink.hop, rcpts("bob", "carol"))
    assert statuses(report) == [BOUNCED, BOUNCED] and not report.site_failure
    assert report.results[0].diagnostic == "500 5.3.0 Error: command failed"


@pytest.mark.parametrize("command, words", [("DATA", "(in reply to DATA command)"),
                                            (".", "(in reply to end of DATA command)")])
async def test_data_rejected(sinks: list[Sink], tmp_path: Path, command: str, words: str) -> None:
    sink = start(sinks, tmp_path, "-f", command)
    report = await smtp_agent().deliver(message(), sink.hop, rcpts("bob", "carol"))
    assert statuses(report) == [BOUNCED, BOUNCED] and not report.site_failure
    assert all(r.reason.endswith(words) and r.diagnostic.startswith("500 ") for r in report.results)


@pytest.mark.parametrize("command, stage", [
    ("RCPT", "sending RCPT TO"),
    ("DATA", "sending DATA command"),
    (".", "sending end of data -- message may be sent more than once"),
])
async def test_disconnect_mid_session_is_a_site_failure(sinks: list[Sink], tmp_path: Path,
                                                        command: str, stage: str) -> None:
    sink = start(sinks, tmp_path, "-q", command)
    report = await smtp_agent().deliver(message(), sink.hop, rcpts("bob", "carol"))
    assert statuses(report) == [DEFERRED, DEFERRED] and report.site_failure
    assert {r.reason for r in report.results} == {f"lost connection with 127.0.0.1[127.0.0.1] while {stage}"}
    assert {r.dsn for r in report.results} == {"4.4.2"}


async def test_greeting_421_is_a_site_failure(sinks: list[Sink], tmp_path: Path) -> None:
    sink = start(sinks, tmp_path, "-Q", "CONNECT")
    report = await smtp_agent().deliver(message(), sink.hop, rcpts("bob"))
    [r] = report.results
    assert r.status == DEFERRED and report.site_failure
    assert r.reason.startswith("host 127.0.0.1[127.0.0.1] refused to talk to me: 421 ")


@pytest.mark.parametrize("command, words", [("MAIL", "MAIL FROM"), ("RCPT", "RCPT TO")])
async def test_a_421_then_disconnect_quotes_the_421(sinks: list[Sink], tmp_path: Path,
                                                    command: str, words: str) -> None:
    sink = start(sinks, tmp_path, "-Q", command)
    report = await smtp_agent().deliver(message(), sink.hop, rcpts("bob", "carol"))
    assert statuses(report) == [DEFERRED, DEFERRED] and report.site_failure
    r = report.results[0]
    assert r.diagnostic.startswith("421 ") and r.reason.endswith(f"(in reply to {words} command)")


async def test_helo_refused_is_a_site_failure(sinks: list[Sink], tmp_path: Path) -> None:
    sink = start(sinks, tmp_path, "-r", "EHLO,HELO")
    report = await smtp_agent().deliver(message(), sink.hop, rcpts("bob"))
    [r] = report.results
    assert r.status == DEFERRED and report.site_failure
    assert r.reason.endswith("(in reply to HELO command)")


async def test_a_slow_server_times_out(sinks: list[Sink], tmp_path: Path) -> None:
    sink = start(sinks, tmp_path, "-W", ".:3")
    report = await smtp_agent(smtp_data_done_timeout="1s").deliver(message(), sink.hop, rcpts("bob"))
    [r] = report.results
    assert (r.status, r.dsn) == (DEFERRED, "4.4.2") and report.site_failure, r
    assert r.reason == ("conversation with 127.0.0.1[127.0.0.1] timed out while sending end of data -- "
                        "message may be sent more than once")


async def test_unreachable_port_is_deferred_as_a_site_failure() -> None:
    port = free_port()  # reserved for this test, nothing listens on it
    report = await smtp_agent().deliver(message(), f"[127.0.0.1]:{port}", rcpts("bob"))
    [r] = report.results
    assert (r.status, r.dsn, r.relay) == (DEFERRED, "4.4.1", "none") and report.site_failure
    assert r.reason == f"connect to 127.0.0.1[127.0.0.1]:{port}: Connection refused"
    assert r.diagnostic == ""


async def test_utf8_address_without_smtputf8_bounces_5_6_7(sinks: list[Sink], tmp_path: Path) -> None:
    sink = start(sinks, tmp_path)
    report = await smtp_agent().deliver(message(), sink.hop, [Recipient("jöran@example.net")])
    [r] = report.results
    assert (r.status, r.dsn) == (BOUNCED, "5.6.7")
    assert r.reason == "SMTPUTF8 is required, but was not offered by host 127.0.0.1[127.0.0.1]"


async def test_dsn_parameters_are_passed_on(sinks: list[Sink], tmp_path: Path) -> None:
    sink = start(sinks, tmp_path)
    body = BODY + "caf\u00e9\n".encode()
    msg = message(body, attributes={"envelope_id": "id+1", "ret_flags": "HDRS"})
    rs = [Recipient("bob@example.net", "rfc822;Bob@Example.NET", "SUCCESS,FAILURE"),
          Recipient("carol@example.net", "", "SUCCESS\r\nRSET")]  # not a NOTIFY value: left out
    report = await smtp_agent().deliver(msg, sink.hop, rs)
    assert statuses(report) == [SENT, SENT]
    dump = next(sink.dump_dir.glob("msg.*")).read_text(errors="replace")
    assert f"X-Mail-Args: <alice@example.org> BODY=8BITMIME RET=HDRS ENVID=id+2B1" in dump
    assert "X-Rcpt-Args: <bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob@Example.NET" in dump
    assert "X-Rcpt-Args: <carol@example.net>\n" in dump


async def test_connection_reuse(sinks: list[Sink], tmp_path: Path) -> None:
    """Three messages, one session: smtp-sink -c counts the sessions (plus one: the
    fixture's readiness probe connects once)."""
    sink = start(sinks, tmp_path, "-c")
    agent = smtp_agent()
    for name in ("bob", "carol", "dave"):
        report = await agent.deliver(message(), sink.hop, rcpts(name))
        assert statuses(report) == [SENT], report
    await agent.close()
    assert sorted(m.rcpt_to for m in sink.messages()) == [("bob@example.net",), ("carol@example.net",),
                                                          ("dave@example.net",)]
    await until(lambda: sink.counters().get("quit") == 1)
    assert sink.counters()["sess"] == 1 + 1 and sink.counters()["mesg"] == 3


async def test_no_reuse_when_the_cache_is_off(sinks: list[Sink], tmp_path: Path) -> None:
    sink = start(sinks, tmp_path, "-c")
    agent = smtp_agent(smtp_connection_cache_on_demand="no")
    for name in ("bob", "carol"):
        assert statuses(await agent.deliver(message(), sink.hop, rcpts(name))) == [SENT]
    await agent.close()
    await until(lambda: sink.counters().get("quit") == 2)
    assert sink.counters()["sess"] == 2 + 1  # and the readiness probe


async def test_an_idle_cached_connection_is_closed_after_its_time(sinks: list[Sink], tmp_path: Path) -> None:
    """The cache's timer ends an idle session (smtp_connection_cache_time_limit) without
    another delivery or close()."""
    sink = start(sinks, tmp_path, "-c")
    agent = smtp_agent(smtp_connection_cache_time_limit="0.2s")
    assert statuses(await agent.deliver(message(), sink.hop, rcpts("bob"))) == [SENT]
    await until(lambda: sink.counters().get("quit") == 1)
    assert agent.cache.take(sink.hop) is None


async def test_a_cached_connection_whose_rset_is_refused_is_not_used(sinks: list[Sink], tmp_path: Path) -> None:
    sink = start(sinks, tmp_path, "-c", "-r", "RSET")
    agent = smtp_agent()
    for name in ("bob", "carol"):
        assert statuses(await agent.deliver(message(), sink.hop, rcpts(name))) == [SENT]
    await agent.close()
    await until(lambda: sink.counters().get("quit") == 2)
    assert sink.counters()["sess"] == 2 + 1  # and the readiness probe


async def until(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30  # a guard, not a timing assertion
    while not done():
        assert time.monotonic() < deadline, "never got there"
        await asyncio.sleep(0.05)


async def test_a_dead_cached_connection_is_replaced(sinks: list[Sink], tmp_path: Path) -> None:
    sink = start(sinks, tmp_path)
    agent = smtp_agent(smtp_connection_cache_time_limit="60s")
    assert statuses(await agent.deliver(message(), sink.hop, rcpts("bob"))) == [SENT]
    sink.stop()  # the cached connection dies with the server
    sink.start()
    assert statuses(await agent.deliver(message(), sink.hop, rcpts("carol"))) == [SENT]
    await agent.close()
    assert sorted(m.rcpt_to for m in sink.messages()) == [("bob@example.net",), ("carol@example.net",)]


# -- LMTP ------------------------------------------------------------------------------------------
def lmtp_agent(**params: str) -> LmtpAgent:
    agent = network_agents(config(**params))["lmtp"]
    assert isinstance(agent, LmtpAgent)
    return agent


async def test_lmtp_over_tcp(sinks: list[Sink], tmp_path: Path) -> None:
    sink = start(sinks, tmp_path, "-L")
    report = await lmtp_agent().deliver(message(), f"inet:127.0.0.1:{sink.port}", rcpts("bob", "carol"))
    assert statuses(report) == [SENT, SENT]
    [got] = sink.messages()
    assert got.rcpt_to == ("bob@example.net", "carol@example.net") and got.data == BODY


async def test_lmtp_over_a_unix_socket(sinks: list[Sink], tmp_path: Path) -> None:
    path = str(tmp_path / "lmtp.sock")
    sink = start(sinks, tmp_path, "-L", socket_path=path)
    report = await lmtp_agent().deliver(message(), f"unix:{path}", rcpts("bob", "carol"))
    assert statuses(report) == [SENT, SENT]
    assert report.results[0].relay == f"gw.example.test[{path}]"
    assert len(sink.messages()) == 1


async def test_lmtp_per_recipient_failure_after_the_dot(sinks: list[Sink], tmp_path: Path) -> None:
    sink = start(sinks, tmp_path, "-L", "-f", ".")
    report = await lmtp_agent().deliver(message(), f"[127.0.0.1]:{sink.port}", rcpts("bob", "carol"))
    assert statuses(report) == [BOUNCED, BOUNCED]
    assert all(r.reason.endswith("(in reply to end of DATA command)") for r in report.results)


async def test_lmtp_one_reply_per_recipient_after_the_dot() -> None:
    """An LMTP server (aiosmtpd's) that stores the message for one recipient and not the
    other, in RCPT order after the dot (RFC 2033)."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.lmtp import LMTP

    class PerRecipient:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            return "\r\n".join("452 4.2.2 Mailbox full" if r.startswith("carol@") else "250 2.0.0 Saved"
                                 for r in getattr(envelope, "rcpt_tos"))

    class LmtpController(Controller):
        def factory(self) -> LMTP:
            return LMTP(self.handler)

    port = free_port()
    controller = LmtpController(PerRecipient(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        report = await lmtp_agent().deliver(message(), f"inet:127.0.0.1:{port}", rcpts("bob", "carol", "dave"))
    finally:
        controller.stop()
    assert statuses(report) == [SENT, DEFERRED, SENT] and not report.site_failure
    assert report.results[1].reason == ("host 127.0.0.1[127.0.0.1] said: 452 4.2.2 Mailbox full "
                                        "(in reply to end of DATA command)")


# -- a real Postfix as the next hop ------------------------------------------------------------
async def test_postfix_next_hop_refuses_one_recipient(postfix_factory: PostfixFactory) -> None:
    pf = postfix_factory({"smtpd_recipient_restrictions":
                          "check_recipient_access inline:{ { nobody@example.net = 550 5.1.1 No such user } }, "
                          "permit_mynetworks, reject"})
    report = await smtp_agent().deliver(message(), f"[127.0.0.1]:{pf.smtp_port}", rcpts("bob", "nobody", "carol"))
    assert statuses(report) == [SENT, BOUNCED, SENT] and not report.site_failure
    refused = report.results[1]
    assert refused.dsn == "5.1.1" and refused.diagnostic == "550 5.1.1 <nobody@example.net>: Recipient address " \
                                                           "rejected: No such user"
    assert refused.reason == (f"host 127.0.0.1[127.0.0.1] said: {refused.diagnostic} "
                              f"(in reply to RCPT TO command)")
    assert "queued as" in report.results[0].reason
    [got] = await asyncio.to_thread(pf.wait_messages, 1)
    assert set(got.rcpt_to) == {"bob@example.net", "carol@example.net"}
    assert b"\n.a line that starts with a dot\n.\nlast line\n" in got.data


# -- STARTTLS ----------------------------------------------------------------------------------------
class Handler:
    """aiosmtpd handler that records what it received and whether TLS was on."""

    def __init__(self) -> None:
        self.received: list[tuple[bool, list[str], bytes]] = []

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.received.append((getattr(session, "ssl", None) is not None, list(getattr(envelope, "rcpt_tos")),
                              bytes(getattr(envelope, "original_content") or b"")))
        return "250 2.0.0 Ok: queued"


@pytest.fixture
def tls_server() -> Iterator[tuple[Handler, int, ssl.SSLContext]]:
    trustme = pytest.importorskip("trustme")
    from aiosmtpd.controller import Controller

    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx.example.net").configure_cert(ctx)
    handler = Handler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, tls_context=ctx)
    controller.start()
    try:
        yield handler, port, ctx
    finally:
        controller.stop()


async def test_starttls_at_may(tls_server: tuple[Handler, int, ssl.SSLContext]) -> None:
    handler, port, _ = tls_server
    report = await smtp_agent().deliver(message(), f"[127.0.0.1]:{port}", rcpts("bob"))
    assert statuses(report) == [SENT]
    [(tls, rcpt_tos, _)] = handler.received
    assert tls and rcpt_tos == ["bob@example.net"]


async def test_no_starttls_offered_goes_in_plain_text() -> None:
    from aiosmtpd.controller import Controller

    handler = Handler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        report = await smtp_agent().deliver(message(), f"[127.0.0.1]:{port}", rcpts("bob"))
    finally:
        controller.stop()
    assert statuses(report) == [SENT]
    assert [tls for tls, _, _ in handler.received] == [False]


async def test_a_failed_tls_handshake_is_retried_in_plain_text(
        tls_server: tuple[Handler, int, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch) -> None:
    handler, port, _ = tls_server
    agent = smtp_agent()
    # A client that cannot agree on anything with the server: TLS 1.3 only, against a
    # server limited to TLS 1.2 below.
    strict = ssl.create_default_context()
    strict.check_hostname = False
    strict.verify_mode = ssl.CERT_NONE
    strict.minimum_version = ssl.TLSVersion.TLSv1_3
    _, _, server_ctx = tls_server
    server_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    agent._tls = strict
    report = await agent.deliver(message(), f"[127.0.0.1]:{port}", rcpts("bob"))
    assert statuses(report) == [SENT]
    assert [tls for tls, _, _ in handler.received] == [False]


async def test_tls_encrypt_level_defers_without_starttls(sinks: list[Sink], tmp_path: Path) -> None:
    sink = start(sinks, tmp_path)
    report = await smtp_agent(smtp_tls_security_level="encrypt").deliver(message(), sink.hop, rcpts("bob"))
    [r] = report.results
    assert (r.status, r.dsn) == (DEFERRED, "4.7.4")
    assert r.reason == "TLS is required, but was not offered by host 127.0.0.1[127.0.0.1]"
    assert sink.messages() == []


# -- several addresses (Postfix's backup MX behaviour) -----------------------------------------
class Addresses:
    """A resolver that answers a fixed address list (the MX lookups themselves are
    tested against dnsmasq in test_mta_mx_dnsmasq.py)."""

    def __init__(self, *targets: tuple[str, int]):
        self.targets = [Target(host, "127.0.0.1", port) for host, port in targets]

    async def resolve(self, nexthop: str, default_port: int = 25, mx: bool = True) -> list[Target]:
        return list(self.targets)


def agent_over(resolver: Addresses, **params: str) -> SmtpAgent:
    return SmtpAgent(ClientSettings.from_config(config(**params), "smtp"), resolver)  # type: ignore[arg-type]


async def test_next_address_after_a_refused_connection(sinks: list[Sink], tmp_path: Path) -> None:
    sink = start(sinks, tmp_path)
    dead = free_port()
    report = await agent_over(Addresses(("mx1.example.net", dead), ("mx2.example.net", sink.port))).deliver(
        message(), "example.net", rcpts("bob"))
    assert statuses(report) == [SENT] and not report.site_failure
    assert report.results[0].relay == f"mx2.example.net[127.0.0.1]:{sink.port}"
    assert len(sink.messages()) == 1


async def test_recipients_deferred_by_one_server_go_to_the_next(sinks: list[Sink], tmp_path: Path) -> None:
    busy = start(sinks, tmp_path, "-r", "RCPT")
    good = start(sinks, tmp_path)
    report = await agent_over(Addresses(("mx1.example.net", busy.port), ("mx2.example.net", good.port))).deliver(
        message(), "example.net", rcpts("bob", "carol"))
    assert statuses(report) == [SENT, SENT]
    [got] = good.messages()
    assert got.rcpt_to == ("bob@example.net", "carol@example.net")


async def test_session_limit_stops_after_two_sessions(sinks: list[Sink], tmp_path: Path) -> None:
    busy = [start(sinks, tmp_path, "-r", "RCPT") for _ in range(2)]
    good = start(sinks, tmp_path)
    resolver = Addresses(("mx1.example.net", busy[0].port), ("mx2.example.net", busy[1].port),
                         ("mx3.example.net", good.port))
    report = await agent_over(resolver).deliver(message(), "example.net", rcpts("bob"))
    [r] = report.results
    assert r.status == DEFERRED and r.relay == f"mx2.example.net[127.0.0.1]:{busy[1].port}"
    assert good.messages() == []
    report = await agent_over(resolver, smtp_mx_session_limit="0").deliver(message(), "example.net", rcpts("bob"))
    assert statuses(report) == [SENT]


async def test_a_5xx_is_final_and_not_tried_elsewhere(sinks: list[Sink], tmp_path: Path) -> None:
    refusing = start(sinks, tmp_path, "-f", "RCPT")
    good = start(sinks, tmp_path)
    report = await agent_over(Addresses(("mx1.example.net", refusing.port), ("mx2.example.net", good.port))).deliver(
        message(), "example.net", rcpts("bob"))
    assert statuses(report) == [BOUNCED] and good.messages() == []


async def test_queue_file_failing_mid_body_sends_no_final_dot(sinks: list[Sink], tmp_path: Path) -> None:
    sink = start(sinks, tmp_path)

    def content() -> Iterator[bytes]:
        yield BODY
        raise OSError(5, "Input/output error")

    big = OutgoingMessage("4AgentsQ2", "alice@example.org", time.time(), 2 << 20, {"encoding": "7bit"}, content)
    report = await smtp_agent().deliver(big, sink.hop, rcpts("bob"))
    [r] = report.results
    assert (r.status, r.dsn) == (DEFERRED, "4.3.0") and not report.site_failure
    assert r.reason.startswith("cannot read the queue file")
    await asyncio.sleep(0.5)  # let the sink notice the dropped connection
    assert sink.messages() == []


# -- MX lookups through a real DNS server ---------------------------------------------------------
MX_RECORDS = ["--mx-host=mx.test,mx1.mx.test,10", "--host-record=mx1.mx.test,127.0.0.1",
              "--mx-host=nullmx.test,.,0"]


@pytest.fixture
def mx_dns(tmp_path: Path) -> Iterator[int]:
    import subprocess

    from tests.fixtures.dnsmasq import dnsmasq_binary, free_udp_tcp_port
    from tests.fixtures.programs import stop_process

    binary = dnsmasq_binary()
    if binary is None:
        pytest.skip("dnsmasq is not installed (Debian package dnsmasq-base)")
    port = free_udp_tcp_port()
    process = subprocess.Popen(
        [binary, "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file=", f"--port={port}",
         "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts", "--local=/test/",
         *MX_RECORDS], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield port
    finally:
        stop_process(process, 10.0)


async def dns_agent(port: int) -> SmtpAgent:
    agent = smtp_agent(dns_nameservers=f"127.0.0.1:{port}")
    for _ in range(200):  # until dnsmasq answers
        if (await agent.resolver.mx("mx.test")).status == "ok":
            return agent
        await asyncio.sleep(0.05)
    raise RuntimeError("dnsmasq never answered")


async def test_delivery_by_mx(mx_dns: int, sinks: list[Sink], tmp_path: Path) -> None:
    sink = start(sinks, tmp_path)
    agent = await dns_agent(mx_dns)
    report = await agent.deliver(message(), f"mx.test:{sink.port}", rcpts("bob"))
    assert statuses(report) == [SENT]
    assert report.results[0].relay == f"mx1.mx.test[127.0.0.1]:{sink.port}"
    assert report.results[0].remote_mta == "mx1.mx.test"


async def test_null_mx_bounces_without_connecting(mx_dns: int) -> None:
    report = await (await dns_agent(mx_dns)).deliver(message(), "nullmx.test", rcpts("bob"))
    [r] = report.results
    assert (r.status, r.dsn, r.relay) == (BOUNCED, "5.1.10", "none") and not report.site_failure
    assert r.reason == "Domain nullmx.test does not accept mail (nullMX)"
