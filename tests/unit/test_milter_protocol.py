"""The milter codec: framing, command parsing, negotiation, reply encoding."""

from __future__ import annotations

import struct

import pytest

from filterd.milter import protocol as p
from filterd.reply import Reply


def packet(code: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + code + data


# -- framing ---------------------------------------------------------------------------
def test_commands_split_anywhere_are_reassembled() -> None:
    stream = (packet(b"C", b"mx.example\x004\x00\x19192.0.2.1\x00")
              + packet(b"H", b"helo.example\x00")
              + packet(b"M", b"<a@example.org>\x00SIZE=100\x00"))
    for cut in range(1, len(stream)):
        dec = p.FrameDecoder()
        got = dec.feed(stream[:cut]) + dec.feed(stream[cut:])
        assert got == [p.Connect("mx.example", "4", 25, "192.0.2.1"), p.Helo("helo.example"),
                       p.Mail(["<a@example.org>", "SIZE=100"])]
        assert dec.pending == 0


def test_pending_counts_an_unfinished_packet() -> None:
    dec = p.FrameDecoder()
    assert dec.feed(packet(b"H", b"x\x00")[:5]) == []
    assert dec.pending == 5


def test_length_over_the_limit_fails_before_the_data_arrives() -> None:
    dec = p.FrameDecoder(limit=1000)
    [error] = dec.feed(struct.pack(">I", 1001) + b"B")
    assert isinstance(error, p.ProtocolError) and str(error) == "packet length 1001 exceeds the limit of 1000 bytes"
    assert dec.pending == 0
    [again] = dec.feed(packet(b"Q"))
    assert isinstance(again, p.ProtocolError) and "after a protocol error" in str(again)


def test_commands_before_a_bad_packet_are_kept() -> None:
    got = p.FrameDecoder().feed(packet(b"H", b"a\x00") + packet(b"z") + packet(b"Q"))
    assert got[0] == p.Helo("a") and isinstance(got[1], p.ProtocolError) and len(got) == 2


def fails(data: bytes, match: str) -> None:
    [error] = p.FrameDecoder().feed(data)
    assert isinstance(error, p.ProtocolError), error
    assert match in str(error)


def test_huge_length_is_refused_without_buffering() -> None:
    fails(b"\xff\xff\xff\xff", "exceeds the limit")


def test_zero_length_is_an_error() -> None:
    fails(b"\0\0\0\0", "length 0")


def test_unknown_command_is_an_error() -> None:
    fails(packet(b"z"), "unknown command 0x7a")


def test_body_chunk_over_64k_is_an_error() -> None:
    fails(packet(b"B", b"x" * 65536), "SMFIC_BODY: chunk of 65536 bytes")
    assert p.FrameDecoder().feed(packet(b"B", b"x" * 65535)) == [p.Body(b"x" * 65535)]


# -- command parsing -------------------------------------------------------------------
def test_optneg() -> None:
    assert p.parse_command(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF)) == p.OptNeg(6, 0x1FF, 0x1FFFFF)
    with pytest.raises(p.ProtocolError, match="OPTNEG: 8 bytes"):
        p.parse_command(b"O", b"\0" * 8)


def test_macros_with_short_and_long_names() -> None:
    cmd = p.parse_command(b"D", b"Cj\x00mx.example\x00{daemon_name}\x00smtpd\x00daemon_addr\x00127.0.0.1\x00")
    assert cmd == p.Macros(b"C", {"j": "mx.example", "{daemon_name}": "smtpd",
                                  "{daemon_addr}": "127.0.0.1"})
    assert p.parse_command(b"D", b"T") == p.Macros(b"T", {})
    with pytest.raises(p.ProtocolError, match="name without a value"):
        p.parse_command(b"D", b"Ci\x00")
    with pytest.raises(p.ProtocolError, match="no command byte"):
        p.parse_command(b"D", b"")


def test_connect_families() -> None:
    assert p.parse_command(b"C", b"host\x00U") == p.Connect("host", "U", 0, "")
    assert p.parse_command(b"C", b"[2001:db8::1]\x006\x01\xbb2001:db8::1\x00") == \
        p.Connect("[2001:db8::1]", "6", 443, "2001:db8::1")
    assert p.parse_command(b"C", b"localhost\x00L\x00\x00/var/run/sock\x00") == \
        p.Connect("localhost", "L", 0, "/var/run/sock")
    with pytest.raises(p.ProtocolError, match="unknown address family 'X'"):
        p.parse_command(b"C", b"host\x00X\x00\x19a\x00")
    with pytest.raises(p.ProtocolError, match="truncated port"):
        p.parse_command(b"C", b"host\x004\x00")
    with pytest.raises(p.ProtocolError, match="no host name"):
        p.parse_command(b"C", b"host")


def test_strings_must_be_nul_terminated() -> None:
    for code in (b"H", b"M", b"R", b"L", b"U"):
        with pytest.raises(p.ProtocolError, match="does not end with a NUL"):
            p.parse_command(code, b"abc")


def test_header_keeps_bytes_and_needs_two_strings() -> None:
    assert p.parse_command(b"L", b"Subject\x00 caf\xc3\xa9\n\tmore\x00") == \
        p.Header(b"Subject", b" caf\xc3\xa9\n\tmore")
    with pytest.raises(p.ProtocolError, match="expected a name and a value"):
        p.parse_command(b"L", b"Subject\x00")
    with pytest.raises(p.ProtocolError, match="empty header name"):
        p.parse_command(b"L", b"\x00value\x00")


def test_rcpt_with_empty_address_is_an_error() -> None:
    with pytest.raises(p.ProtocolError, match="SMFIC_RCPT: empty address"):
        p.parse_command(b"R", b"\x00")
    assert p.parse_command(b"M", b"<>\x00") == p.Mail(["<>"])


def test_commands_without_data() -> None:
    for code in (b"T", b"N", b"A", b"Q", b"K"):
        assert p.parse_command(code, b"") == p.Simple(code)
    with pytest.raises(p.ProtocolError, match="SMFIC_QUIT: unexpected 1 bytes"):
        p.parse_command(b"Q", b"x")


def test_eob_and_unknown() -> None:
    assert p.parse_command(b"E", b"") == p.EndOfMessage(b"")
    assert p.parse_command(b"E", b"tail") == p.EndOfMessage(b"tail")
    assert p.parse_command(b"U", b"XYZZY now\x00") == p.Unknown("XYZZY now")


def test_invalid_utf8_is_shown_not_trusted() -> None:
    assert p.parse_command(b"H", b"h\xffx\x00") == p.Helo("h\ufffdx")


def test_encode_command_round_trips() -> None:
    cmds: list[p.Command] = [
        p.OptNeg(6, 0x1FF, 0x1FFFFF), p.Macros(b"C", {"j": "mx", "{daemon_name}": "smtpd"}),
        p.Connect("mx.example", "4", 25, "192.0.2.1"), p.Connect("x", "U", 0, ""), p.Helo("h"),
        p.Mail(["<a@b>", "SIZE=1"]), p.Rcpt(["<c@d>"]), p.Header(b"To", b" c@d"), p.Body(b"b\r\n"),
        p.EndOfMessage(b""), p.Unknown("FOO"), p.Simple(b"T"), p.Simple(b"K"),
    ]
    assert p.FrameDecoder().feed(b"".join(p.encode_command(c) for c in cmds)) == cmds


# -- negotiation -----------------------------------------------------------------------
POSTFIX_OFFER = p.OptNeg(6, 0x1FF, 0x1FFFFF)  # what Postfix 3.7 offers with milter_protocol = 6


def test_negotiation_asks_only_for_needed_steps() -> None:
    wants = p.Wants(steps=frozenset({p.SMFIC_CONNECT, p.SMFIC_HELO, p.SMFIC_MAIL, p.SMFIC_RCPT,
                                     p.SMFIC_HEADER, p.SMFIC_BODY}),
                    answers=frozenset({p.SMFIC_RCPT}),
                    actions=p.SMFIF_ADDHDRS | p.SMFIF_CHGHDRS | p.SMFIF_QUARANTINE)
    agreement, reply = p.negotiate(POSTFIX_OFFER, wants)
    [resp], rest = p.decode_responses(reply)
    assert rest == b"" and resp.code == b"O"
    version, actions, protocol = struct.unpack(">III", resp.data)
    assert (version, actions, protocol) == (6, agreement.actions, agreement.protocol)
    assert actions == p.SMFIF_ADDHDRS | p.SMFIF_CHGHDRS | p.SMFIF_QUARANTINE
    for bit in (p.SMFIP_NODATA, p.SMFIP_NOEOH, p.SMFIP_NOUNKNOWN, p.SMFIP_NR_CONN, p.SMFIP_NR_HELO,
                p.SMFIP_NR_MAIL, p.SMFIP_NR_HDR, p.SMFIP_NR_BODY, p.SMFIP_HDR_LEADSPC):
        assert protocol & bit, hex(bit)
    for bit in (p.SMFIP_NOCONNECT, p.SMFIP_NOHELO, p.SMFIP_NOMAIL, p.SMFIP_NORCPT, p.SMFIP_NOHDRS,
                p.SMFIP_NOBODY, p.SMFIP_NR_RCPT, p.SMFIP_SKIP, p.SMFIP_RCPT_REJ):
        assert not protocol & bit, hex(bit)
    assert agreement.replies(p.SMFIC_RCPT) and not agreement.replies(p.SMFIC_HELO)
    assert agreement.replies(p.SMFIC_BODYEOB)  # end of message is always answered


def test_negotiation_never_asks_for_more_than_offered() -> None:
    offer = p.OptNeg(6, p.SMFIF_ADDHDRS, p.SMFIP_NOUNKNOWN | p.SMFIP_NR_HDR)
    wants = p.Wants(frozenset(), frozenset(), p.SMFIF_ADDHDRS | p.SMFIF_QUARANTINE)
    agreement, _ = p.negotiate(offer, wants)
    assert agreement.actions == p.SMFIF_ADDHDRS and not agreement.may(p.SMFIF_QUARANTINE)
    assert agreement.protocol == p.SMFIP_NOUNKNOWN | p.SMFIP_NR_HDR
    assert agreement.replies(p.SMFIC_HELO)  # could not be made reply-less: answered


def test_old_protocol_versions_are_refused() -> None:
    with pytest.raises(p.ProtocolError, match="unsupported milter protocol version 2"):
        p.negotiate(p.OptNeg(2, 0x3F, 0x7F), p.Wants(frozenset(), frozenset(), 0))


# -- replies ---------------------------------------------------------------------------
def reply_text(data: bytes) -> str:
    [resp], _ = p.decode_responses(data)
    assert resp.code == b"y" and resp.data.endswith(b"\0")
    return resp.data[:-1].decode()


def test_replycode_single_line() -> None:
    assert reply_text(p.encode_reply(Reply(450, "4.2.0", "<b@x>: Recipient address rejected: Greylisted"))) \
        == "450 4.2.0 <b@x>: Recipient address rejected: Greylisted"


def test_replycode_multi_line_and_percent() -> None:
    text = reply_text(p.encode_reply(Reply(554, "5.7.1", "first 100%\nsecond")))
    assert text == "554-5.7.1 first 100%%\r\n554 5.7.1 second"


def test_replycode_wraps_long_text_and_strips_controls() -> None:
    text = reply_text(p.encode_reply(Reply(550, "5.7.1", ("word " * 200) + "\x00\x07end")))
    lines = text.split("\r\n")
    assert len(lines) > 1 and all(len(line) <= 512 for line in lines)
    assert all(line.startswith("550-5.7.1 ") for line in lines[:-1]) and lines[-1].startswith("550 5.7.1 ")
    assert "\x00" not in text and "\x07" not in text and text.endswith("end")


def test_replycode_is_printable_ascii_as_every_reply() -> None:
    """Postfix hands the milter's reply to the SMTP client: ASCII, as the filter's replies."""
    text = reply_text(p.encode_reply(Reply(550, "5.7.1", "caf\u00e9\u202e\x85\ttab")))
    assert text == "550 5.7.1 caf????tab"


def test_replycode_forces_a_class_postfix_accepts() -> None:
    assert reply_text(p.encode_reply(Reply(250, "2.0.0", "odd"))) == "451 4.0.0 odd"
    assert reply_text(p.encode_reply(Reply(550, "4.7.1", "mismatch"))) == "550 5.0.0 mismatch"


def test_header_actions() -> None:
    [add], _ = p.decode_responses(p.encode_addheader("X-Spam-Flag", " NO"))
    assert (add.code, add.data) == (b"h", b"X-Spam-Flag\0 NO\0")
    [chg], _ = p.decode_responses(p.encode_chgheader(2, "Subject", " [SPAM] hi"))
    assert (chg.code, chg.data) == (b"m", b"\0\0\0\x02Subject\0 [SPAM] hi\0")
    [ins], _ = p.decode_responses(p.encode_insheader(0, "X-A", " b"))
    assert (ins.code, ins.data) == (b"i", b"\0\0\0\0X-A\0 b\0")
    [q], _ = p.decode_responses(p.encode_quarantine("spam\r\nx\u202e"))
    assert (q.code, q.data) == (b"q", b"spam??x?\0")
    [add_rcpt, del_rcpt], _ = p.decode_responses(p.encode_addrcpt("a@b") + p.encode_delrcpt("c@d"))
    assert (add_rcpt.code, add_rcpt.data) == (b"+", b"<a@b>\0")
    assert (del_rcpt.code, del_rcpt.data) == (b"-", b"<c@d>\0")


def test_simple_replies() -> None:
    assert p.CONTINUE == b"\0\0\0\x01c" and p.DISCARD == b"\0\0\0\x01d"
