"""The policy delegation protocol codec, without sockets."""

from __future__ import annotations

from pathlib import Path

from filterd.restrict.delegation.protocol import (
    MAX_LINE, MAX_REQUEST, FramingError, PolicyParser, PolicyRequest, encode_reply,
    encode_request, from_transaction, to_transaction,
)
from filterd.restrict.transaction import Stage

# A copy of shared/fixtures/postfix-3.7-policy-requests.txt: real requests from Postfix 3.7.11.
FIXTURE = Path(__file__).resolve().parents[1] / "data" / "postfix-3.7-policy-requests.txt"


def postfix_requests() -> list[bytes]:
    """The requests Postfix 3.7 really sent (RCPT, DATA, END-OF-MESSAGE)."""
    text = FIXTURE.read_text()
    return [b.strip("\n").encode() + b"\n\n" for b in text.split("----") if b.strip()]


def test_real_postfix_requests_parse_into_transactions():
    reqs = postfix_requests()
    assert len(reqs) == 3
    parser = PolicyParser()
    items = parser.feed(b"".join(reqs))
    assert [type(i) for i in items] == [PolicyRequest] * 3
    txns = [to_transaction(i.attrs) for i in items]
    assert [t.stage for t, _ in txns] == [Stage.RCPT, Stage.DATA, Stage.END_OF_MESSAGE]
    rcpt, faults = txns[0]
    assert faults == []
    assert rcpt.client_address == "127.0.0.1" and rcpt.helo_name == "helo.client.example"
    assert rcpt.sender == "alice@sender.example" and rcpt.recipient == "bob@remote.example"
    assert rcpt.recipient_count == 0 and rcpt.queue_id == ""
    assert rcpt.policy_context == "benchctx" and rcpt.extra == {}


def test_byte_at_a_time_and_several_per_packet():
    data = b"".join(postfix_requests())
    parser = PolicyParser()
    got = []
    for i in range(len(data)):
        got.extend(parser.feed(data[i:i + 1]))
    assert len(got) == 3 and parser.pending == 0


def test_whole_request_per_read_parses_as_the_buffered_path_does():
    """One whole request per read (what smtpd sends) skips the buffer; the result is the
    same as feeding the same bytes in pieces, an empty request included."""
    reads = [*postfix_requests(), b"\n\n", b"request=x\nno equals here\n\n", b"a=1\n\nb=2\n\n"]
    whole, pieces = PolicyParser(), PolicyParser()
    for data in reads:
        fast = whole.feed(data)
        slow = pieces.feed(data[:1]) + pieces.feed(data[1:])
        assert [(r.attrs, r.faults) for r in fast] == [(r.attrs, r.faults) for r in slow]
        assert whole.pending == pieces.pending == 0
    assert whole.feed(b"c=3\n") == [] and whole.feed(b"\n") != [] and whole.pending == 0


def test_crlf_and_stray_empty_lines_are_tolerated():
    parser = PolicyParser()
    items = parser.feed(b"request=smtpd_access_policy\r\nprotocol_state=RCPT\r\n\r\n\n\nrequest=smtpd_access_policy\n\n")
    assert len(items) == 2 and items[0].attrs["protocol_state"] == "RCPT"


def test_unknown_attributes_kept_and_passed_on():
    txn, faults = to_transaction({"request": "smtpd_access_policy", "protocol_state": "RCPT",
                                  "mail_version": "3.9.0", "compatibility_level": "3.6"})
    assert not faults and txn.extra == {"mail_version": "3.9.0", "compatibility_level": "3.6"}
    attrs = from_transaction(txn)
    assert attrs["mail_version"] == "3.9.0" and attrs["request"] == "smtpd_access_policy"


def test_line_without_equals_and_binary_garbage_are_faults_not_crashes():
    parser = PolicyParser()
    (req,) = parser.feed(b"request=smtpd_access_policy\nthis is garbage\n\x00\xff\xfe=\x80\n=empty\n\n")
    assert req.attrs["request"] == "smtpd_access_policy"
    assert any("line without '='" in f for f in req.faults)
    assert any("not ASCII" in f for f in req.faults)
    assert any("empty attribute name" in f for f in req.faults)


def test_overlong_line_is_a_fault_and_overlong_request_a_framing_error():
    parser = PolicyParser()
    (req,) = parser.feed(b"request=smtpd_access_policy\nsender=" + b"a" * MAX_LINE + b"\n\n")
    assert "sender" not in req.attrs and "longer than" in req.faults[0]
    items = parser.feed(b"x=" + b"y" * (MAX_REQUEST + 10))
    assert isinstance(items[-1], FramingError) and parser.pending == 0


def test_bad_numbers_and_states_are_reported():
    txn, faults = to_transaction({"protocol_state": "BOGUS", "size": "12x", "recipient_count": "1"})
    assert txn.stage is Stage.RCPT and txn.size == 0 and txn.recipient_count == 1
    assert any("BOGUS" in f for f in faults) and any("size" in f for f in faults)
    _, faults = to_transaction({})
    assert faults == ["no protocol_state attribute (assuming RCPT)"]


def test_encoding_is_single_line():
    assert encode_reply("REJECT bad\r\nX-Injected: 1") == b"action=REJECT bad X-Injected: 1\n\n"
    assert encode_request({"a": "1\n2"}) == b"a=1 2\n\n"
