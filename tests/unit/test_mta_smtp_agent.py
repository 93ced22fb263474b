"""The smtp/lmtp agents' pure parts: replies as results, address choice, the wire helpers."""

from __future__ import annotations

import asyncio

import pytest

from filterd.mta.delivery import BOUNCED, DEFERRED, SENT
from filterd.mta.queuefile import Recipient
from filterd.mta.routing import Target
from filterd.mta.smtp_agent import (
    ClientSettings, Peer, reply_dsn, reply_result, select_targets, session_result,
)
from filterd.smtp.conversation import (
    LOST, MAX_REPLY_LINE, PROTOCOL, TIMEOUT, Connection, ConversationError, DotStuffer, ServerReply,
    parse_extensions, safe_text,
)
from filterd.smtp.xforward import xtext_encode

PEER = Peer("mx.example.net", "192.0.2.25", 25)
BOB = Recipient("bob@example.net")


def reply(*lines: str) -> ServerReply:
    return ServerReply(int(lines[0][:3]), tuple(lines))


# -- replies -> results ------------------------------------------------------------------
def test_a_rcpt_refusal_bounces_in_postfix_words() -> None:
    r = reply_result(BOB, reply("550 5.1.1 <bob@example.net>: User unknown"), "RCPT TO", PEER)
    assert (r.status, r.dsn) == (BOUNCED, "5.1.1")
    assert r.reason == ("host mx.example.net[192.0.2.25] said: 550 5.1.1 <bob@example.net>: User unknown "
                        "(in reply to RCPT TO command)")
    assert r.relay == "mx.example.net[192.0.2.25]:25" and r.remote_mta == "mx.example.net"
    assert r.diagnostic == "550 5.1.1 <bob@example.net>: User unknown"


def test_a_4xx_defers_and_a_missing_enhanced_code_is_derived() -> None:
    r = reply_result(BOB, reply("451 Try again later"), "end of DATA", PEER)
    assert (r.status, r.dsn) == (DEFERRED, "4.0.0")
    assert r.reason.endswith("said: 451 Try again later (in reply to end of DATA command)")
    assert reply_dsn(reply("554 no")) == "5.0.0"


def test_an_enhanced_code_of_another_class_is_not_believed() -> None:
    assert reply_dsn(reply("550 4.1.1 odd")) == "5.0.0"
    assert reply_dsn(reply("250 2.0.0 Ok: queued as ABC")) == "2.0.0"
    assert reply_dsn(reply("550 5.7.01 zero-padded")) == "5.7.1"


def test_success_reason_is_the_reply() -> None:
    r = reply_result(BOB, reply("250 2.0.0 Ok: queued as 4BgTn"), "end of DATA", PEER)
    assert (r.status, r.dsn, r.reason) == (SENT, "2.0.0", "250 2.0.0 Ok: queued as 4BgTn")


def test_an_unexpected_code_defers() -> None:
    r = reply_result(BOB, reply("354 go ahead"), "RCPT TO", PEER)
    assert (r.status, r.dsn) == (DEFERRED, "4.0.0")


def test_a_multiline_reply_is_quoted_as_postfix_does() -> None:
    rep = reply("550-5.1.1 The account does not exist.", "550 5.1.1 https://support.example/?p=x")
    r = reply_result(BOB, rep, "RCPT TO", PEER)
    assert r.diagnostic == "550-5.1.1 The account does not exist. 550 5.1.1 https://support.example/?p=x"
    assert r.dsn == "5.1.1"


def test_session_failures_are_deferred_4_4_2() -> None:
    lost = session_result(BOB, ConversationError(LOST, "sending message body"), PEER)
    assert (lost.status, lost.dsn) == (DEFERRED, "4.4.2")
    assert lost.reason == "lost connection with mx.example.net[192.0.2.25] while sending message body"
    slow = session_result(BOB, ConversationError(TIMEOUT, "sending RCPT TO"), PEER)
    assert slow.reason == "conversation with mx.example.net[192.0.2.25] timed out while sending RCPT TO"
    assert lost.diagnostic == "" and slow.status == DEFERRED


def test_unix_peer_names() -> None:
    p = Peer("gw.example.test", "/run/lmtp.sock")
    assert p.relay == p.name == "gw.example.test[/run/lmtp.sock]"


# -- address choice ---------------------------------------------------------------------------
def test_select_targets_keeps_order_families_and_limit() -> None:
    ts = [Target("mx1", "192.0.2.1", 25), Target("mx1", "2001:db8::1", 25), Target("mx2", "192.0.2.2", 25),
          Target("mx3", "192.0.2.1", 25), Target("mx4", "192.0.2.4", 25)]
    assert [p.address for p in select_targets(ts, ["all"], 0)] == \
        ["192.0.2.1", "2001:db8::1", "192.0.2.2", "192.0.2.4"]
    assert [p.address for p in select_targets(ts, ["ipv4"], 0)] == ["192.0.2.1", "192.0.2.2", "192.0.2.4"]
    assert [p.address for p in select_targets(ts, ["ipv6"], 0)] == ["2001:db8::1"]
    assert [p.name for p in select_targets(ts, ["all"], 2)] == ["mx1[192.0.2.1]", "mx1[2001:db8::1]"]


def test_settings_from_config_use_postfix_names() -> None:
    import filterd.registry  # noqa: F401  (installs the parameter table)
    from filterd.config import Config

    cfg = Config.from_text("myhostname = gw.example.test\nsmtp_rcpt_timeout = 7s\nlmtp_lhlo_name = lmtp.gw\n"
                           "inet_protocols = ipv4\n")
    smtp, lmtp = ClientSettings.from_config(cfg, "smtp"), ClientSettings.from_config(cfg, "lmtp")
    assert smtp.helo_name == "gw.example.test" and smtp.rcpt_timeout == 7.0 and smtp.tls_level == "may"
    assert smtp.connect_timeout == 30 and smtp.data_done_timeout == 600 and smtp.address_limit == 5
    assert lmtp.helo_name == "lmtp.gw" and lmtp.tls_level == "none" and lmtp.default_port == 24
    assert smtp.families == ("ipv4",)


def test_unsupported_tls_levels_are_refused_by_name() -> None:
    from filterd.config import Config, ConfigError

    with pytest.raises(ConfigError) as e:
        Config.from_text("smtp_tls_security_level = dane\n")
    assert "smtp_tls_security_level" in str(e.value) and "expected none, may or encrypt" in str(e.value)


def test_xtext() -> None:
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext_encode("é") == "+C3+A9"


# -- the wire ------------------------------------------------------------------------------------
def stuff(*chunks: bytes) -> bytes:
    s = DotStuffer()
    return b"".join(s.feed(c) for c in chunks) + s.end()


def test_dot_stuffing_and_line_ends() -> None:
    assert stuff(b"Subject: x\n\n.hidden\nbody\n") == b"Subject: x\r\n\r\n..hidden\r\nbody\r\n.\r\n"
    assert stuff(b".first\r\nlast") == b"..first\r\nlast\r\n.\r\n"
    assert stuff(b"a\r", b"\n.", b"b\n") == b"a\r\n..b\r\n.\r\n"
    assert stuff(b"x\n", b".\n") == b"x\r\n..\r\n.\r\n"  # a lone dot line never ends DATA early
    assert stuff(b"a\rb\n") == b"a\rb\r\n.\r\n"
    assert stuff(b"") == b".\r\n"


def test_a_very_long_line_is_passed_on_in_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    from filterd.smtp import conversation
    monkeypatch.setattr(conversation, "LONG_LINE_FLUSH", 8)
    s = DotStuffer()
    out = s.feed(b".0123456789\r")
    assert out == b"..0123456789" and s.feed(b"\n.x") == b"\r\n" and s.end() == b"..x\r\n.\r\n"


def test_safe_text_leaves_nothing_that_can_break_a_line() -> None:
    assert safe_text(b"550 bad\x00\x1b[31m\xc2\x85\xe2\x80\xa8text\xff") == "550 bad??[31m??text?"


def test_a_huge_reply_is_quoted_cut() -> None:
    from filterd.smtp.conversation import MAX_REPLY_TEXT
    rep = reply(*(["550-" + "x" * 1000] * 50), "550 end")
    assert len(rep.text) == MAX_REPLY_TEXT and rep.text.endswith("...")


async def read(data: bytes) -> ServerReply:
    reader = asyncio.StreamReader(limit=MAX_REPLY_LINE)
    reader.feed_data(data)
    reader.feed_eof()
    return await Connection(reader, None).read_reply(5, "sending RCPT TO")  # type: ignore[arg-type]


async def test_reply_reader_multiline_and_extensions() -> None:
    r = await read(b"250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 STARTTLS\r\n")
    assert r.code == 250 and parse_extensions(r) == {"PIPELINING": "", "SIZE": "1000", "STARTTLS": ""}
    assert (await read(b"220\r\n")).lines == ("220",)


@pytest.mark.parametrize("data, kind", [
    (b"250-first\r\n", LOST), (b"", LOST), (b"hello\r\n", PROTOCOL), (b"25\r\n", PROTOCOL),
    (b"250x\r\n", PROTOCOL), (b"250 " + b"x" * (MAX_REPLY_LINE + 10) + b"\r\n", PROTOCOL),
])
async def test_reply_reader_refuses_what_is_not_a_reply(data: bytes, kind: str) -> None:
    with pytest.raises(ConversationError) as e:
        await read(data)
    assert e.value.kind == kind and e.value.stage == "sending RCPT TO"


class _RecordingWriter:
    """Stands in for the stream writer: records each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    async def drain(self) -> None:
        return None


async def _chunks(*parts: bytes):  # type: ignore[no-untyped-def]
    for part in parts:
        yield part


async def test_a_message_held_whole_goes_out_with_its_final_dot_in_one_write() -> None:
    writer = _RecordingWriter()
    conn = Connection(asyncio.StreamReader(), writer)  # type: ignore[arg-type]
    await conn.send_body(_chunks(b"Subject: x\r\n\r\n.dot\r\nbody"), 5)
    assert writer.writes == [b"Subject: x\r\n\r\n..dot\r\nbody\r\n.\r\n"]


async def test_a_streamed_message_is_written_piece_by_piece_the_last_with_the_dot() -> None:
    writer = _RecordingWriter()
    conn = Connection(asyncio.StreamReader(), writer)  # type: ignore[arg-type]
    await conn.send_body(_chunks(b"a\r\n", b"b\r\n", b"c\r\n"), 5)
    assert writer.writes == [b"a\r\n", b"b\r\n", b"c\r\n.\r\n"]
