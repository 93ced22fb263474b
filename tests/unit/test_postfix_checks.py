"""Postfix header_checks / mime_header_checks / nested_header_checks / body_checks."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest

from filterd.config import Config
from filterd.content.message import HeaderEdits, Message
from filterd.restrict.transaction import Transaction
from filterd.content.postfix_checks import (
    BODY,
    HEADER,
    MIME_HEADER,
    NESTED_HEADER,
    PostfixChecks,
    TableList,
    inspected_lines,
    log_line,
    run_postfix_checks,
)
from filterd.maps import MapTempError

ENV = Transaction(sender="a@b.example", recipients=["c@d.example", "e@d.example"],
                  client_address="192.0.2.1", client_name="mx.b.example", helo_name="helo.b.example",
                  protocol_name="ESMTP", queue_id="4F1B2A")


def table(tmp_path: Path, name: str, text: str, kind: str = "regexp") -> str:
    path = tmp_path / name
    path.write_text(text)
    return f"{kind}:{path}"


def checks(tmp_path: Path, **params: str) -> PostfixChecks:
    """PostfixChecks from a config; each keyword is a parameter, its value a table text."""
    lines = []
    for name, value in params.items():
        if name.endswith("_checks"):
            value = table(tmp_path, name, value)
        lines.append(f"{name} = {value}")
    return PostfixChecks.from_config(Config.from_text("\n".join(lines) + "\n"))


def run(c: PostfixChecks, raw: bytes):
    return run_postfix_checks(c, Message(raw, ENV))


SIMPLE = (b"Received: from x by y\r\nSubject: hello world\r\nFrom: <a@b.example>\r\n"
          b"To: <c@d.example>\r\n\r\nbody line one\r\nbody line two\r\n")

MULTIPART = (
    b"Subject: outer\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"BOUND\"\r\n"
    b"\r\n"
    b"preamble text\r\n"
    b"--BOUND\r\n"
    b"Content-Type: text/plain\r\n"
    b"X-Part-Header: in a part\r\n"
    b"\r\n"
    b"plain part\r\n"
    b"--BOUND\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"Subject: inner subject\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"inner body\r\n"
    b"--BOUND\r\n"
    b"Content-Type: application/octet-stream; name=\"evil.exe\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    + base64.encodebytes(b"secret payload that says MAGICWORD inside").replace(b"\n", b"\r\n")
    + b"--BOUND--\r\n"
    b"epilogue\r\n"
)


# -- routing -------------------------------------------------------------------------------

def test_routing_of_every_line(tmp_path: Path) -> None:
    c = checks(tmp_path, header_checks="/^$/ DUNNO\n")
    seen = [(line.check_class, line.key) for line in inspected_lines(c, Message(MULTIPART))]
    assert seen == [
        (HEADER, "Subject: outer"),
        (MIME_HEADER, "MIME-Version: 1.0"),
        (MIME_HEADER, 'Content-Type: multipart/mixed; boundary="BOUND"'),
        (BODY, ""),
        (BODY, "preamble text"),
        (BODY, "--BOUND"),
        (MIME_HEADER, "Content-Type: text/plain"),
        (MIME_HEADER, "X-Part-Header: in a part"),  # every header of a body part
        (BODY, ""),
        (BODY, "plain part"),
        (BODY, "--BOUND"),
        (MIME_HEADER, "Content-Type: message/rfc822"),
        (BODY, ""),
        (NESTED_HEADER, "Subject: inner subject"),
        (MIME_HEADER, "Content-Type: text/plain; charset=us-ascii"),  # MIME header, nested
        (BODY, ""),
        (BODY, "inner body"),
        (BODY, "--BOUND"),
        (MIME_HEADER, 'Content-Type: application/octet-stream; name="evil.exe"'),
        (MIME_HEADER, "Content-Transfer-Encoding: base64"),
        (BODY, ""),
        (BODY, base64.encodebytes(b"secret payload that says MAGICWORD inside").decode().strip()),
        (BODY, "--BOUND--"),
        (BODY, "epilogue"),
    ]


def test_each_class_uses_its_own_tables(tmp_path: Path) -> None:
    c = checks(tmp_path,
               header_checks="/^(Subject):/ WARN primary $1\n",
               mime_header_checks="/^Content-Type: text\\/plain$/ WARN mime\n",
               nested_header_checks="/^Subject:/ WARN nested\n",
               body_checks="/^plain part$/ WARN body\n")
    r = run(c, MULTIPART)
    texts = [w.rsplit(": ", 1)[1] for w in r.warnings]
    assert texts == ["primary Subject", "mime", "body", "nested"]
    assert [s.name for s in r.symbols] == ["POSTFIX_HEADER_CHECKS", "POSTFIX_MIME_HEADER_CHECKS",
                                           "POSTFIX_BODY_CHECKS", "POSTFIX_NESTED_HEADER_CHECKS"]


def test_mime_and_nested_default_to_header_checks(tmp_path: Path) -> None:
    c = checks(tmp_path, header_checks="/^Subject:/ WARN subject\n/^Content-Type:/ WARN ctype\n")
    assert c.mime_header.tables == c.header.tables == c.nested_header.tables
    r = run(c, MULTIPART)
    assert sum(w.endswith(": subject") for w in r.warnings) == 2  # primary and nested
    assert sum(w.endswith(": ctype") for w in r.warnings) == 5


def test_disabled_classes_are_not_looked_up(tmp_path: Path) -> None:
    c = checks(tmp_path, header_checks="/Subject/ WARN x\n", mime_header_checks="", nested_header_checks="")
    r = run(c, MULTIPART)
    assert len(r.warnings) == 1


def test_no_tables_no_work() -> None:
    c = PostfixChecks(TableList(()), TableList(()), TableList(()), TableList(()))
    r = run(c, MULTIPART)
    assert r.reject is None and not r.symbols and not r.edits


# -- REJECT and friends -------------------------------------------------------------------

def test_reject_default_text_and_code(tmp_path: Path) -> None:
    r = run(checks(tmp_path, header_checks="/^Subject: hello/ REJECT\n"), SIMPLE)
    assert (r.reject.kind, r.reject.code, r.reject.dsn, r.reject.text) == (
        "REJECT", 550, "5.7.1", "message content rejected")


def test_reject_with_text_gets_default_dsn(tmp_path: Path) -> None:
    r = run(checks(tmp_path, header_checks="/^Subject: (hello)/ reject no $1 here\n"), SIMPLE)
    assert (r.reject.code, r.reject.dsn, r.reject.text) == (550, "5.7.1", "no hello here")


def test_reject_with_own_dsn(tmp_path: Path) -> None:
    r = run(checks(tmp_path, header_checks="/^Subject:/ REJECT 5.7.0 go away\n"), SIMPLE)
    assert (r.reject.code, r.reject.dsn, r.reject.text) == (550, "5.7.0", "go away")


def test_reject_with_4xx_dsn_defers(tmp_path: Path) -> None:
    r = run(checks(tmp_path, header_checks="/^Subject:/ REJECT 4.7.1 try later\n"), SIMPLE)
    assert (r.reject.kind, r.reject.code, r.reject.dsn, r.reject.text) == ("DEFER", 451, "4.7.1", "try later")


def test_reject_with_2xx_dsn_becomes_defer(tmp_path: Path) -> None:
    r = run(checks(tmp_path, header_checks="/^Subject:/ REJECT 2.0.0 odd\n"), SIMPLE)
    assert (r.reject.kind, r.reject.dsn) == ("DEFER", "4.0.0")


def test_reject_stops_all_further_checks(tmp_path: Path) -> None:
    c = checks(tmp_path, header_checks="/^Subject:/ REJECT\n/^From:/ WARN from\n",
               body_checks="/body/ WARN body\n")
    r = run(c, SIMPLE)
    assert r.reject is not None and r.warnings == []
    assert [s.description for s in r.symbols] == ["REJECT"]


def test_reject_in_body(tmp_path: Path) -> None:
    r = run(checks(tmp_path, body_checks="/line two/ REJECT body says no\n"), SIMPLE)
    assert r.reject.text == "body says no"
    assert r.symbols[0].name == "POSTFIX_BODY_CHECKS"
    assert "line two" in r.symbols[0].evidence


def test_discard_stops_checks(tmp_path: Path) -> None:
    c = checks(tmp_path, header_checks="/^Subject:/ DISCARD spam\n/^From:/ REJECT\n")
    r = run(c, SIMPLE)
    assert r.discard and r.reject is None


def test_hold_counts_once_and_does_not_stop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    c = checks(tmp_path, header_checks="/^(Subject|From):/ HOLD look at it\n/^To:/ WARN to\n")
    with caplog.at_level(logging.INFO, "filterd.content.postfix_checks"):
        r = run(c, SIMPLE)
    assert r.hold and len(r.warnings) == 1
    assert sum(": hold: " in m for m in caplog.messages) == 1


def test_filter_last_one_wins_and_needs_a_colon(tmp_path: Path) -> None:
    c = checks(tmp_path, header_checks="/^Received:/ FILTER smtp:[127.0.0.1]:10025\n"
               "/^Subject:/ FILTER scan:[127.0.0.1]:10030\n/^From:/ FILTER nocolon\n")
    r = run(c, SIMPLE)
    assert r.filter == "scan:[127.0.0.1]:10030"
    assert "ignored" in r.symbols[-1].evidence


def test_redirect_stops_checks(tmp_path: Path) -> None:
    c = checks(tmp_path, header_checks="/^Subject:/ REDIRECT spam@trap.example\n"
               "/^From:/ REDIRECT other@trap.example\n")
    r = run(c, SIMPLE)
    assert r.redirect == "spam@trap.example"


def test_redirect_without_address_is_ignored(tmp_path: Path) -> None:
    r = run(checks(tmp_path, header_checks="/^Subject:/ REDIRECT nobody\n"), SIMPLE)
    assert r.redirect is None


def test_bcc_accumulates(tmp_path: Path) -> None:
    c = checks(tmp_path, header_checks="/^Subject:/ BCC one@archive.example\n/^From:/ BCC two@archive.example\n")
    assert run(c, SIMPLE).bcc == ["one@archive.example", "two@archive.example"]


def test_pass_stops_checks_without_effect(tmp_path: Path) -> None:
    c = checks(tmp_path, header_checks="/^Subject:/ PASS trusted\n/^From:/ REJECT\n")
    r = run(c, SIMPLE)
    assert r.reject is None and r.symbols[0].description == "PASS"


def test_dunno_and_ok_end_the_search_for_that_line(tmp_path: Path) -> None:
    first = table(tmp_path, "first", "/^Subject: hello/ DUNNO\n/^From:/ OK\n")
    second = table(tmp_path, "second", "/^Subject:/ REJECT\n/^From:/ REJECT\n/^To:/ WARN to\n")
    c = PostfixChecks.from_config(Config.from_text(f"header_checks = {first}, {second}\n"))
    r = run(c, SIMPLE)
    assert r.reject is None and len(r.warnings) == 1


def test_unknown_action_is_ignored(tmp_path: Path) -> None:
    r = run(checks(tmp_path, header_checks="/^Subject:/ 550 numeric replies are for access maps\n"), SIMPLE)
    assert r.reject is None and "unknown command" in r.symbols[0].evidence


# -- header edits --------------------------------------------------------------------------

def _apply(r, raw: bytes) -> bytes:
    return r.edits.apply(Message(raw, ENV))


def test_prepend_goes_right_above_the_matched_header(tmp_path: Path) -> None:
    r = run(checks(tmp_path, header_checks="/^Subject:/ PREPEND X-Flag: subject seen\n"), SIMPLE)
    out = _apply(r, SIMPLE)
    assert out.startswith(b"Received: from x by y\r\nX-Flag: subject seen\r\nSubject: hello world\r\n")
    assert out.endswith(b"\r\n\r\nbody line one\r\nbody line two\r\n")


def test_prepend_needs_header_text(tmp_path: Path) -> None:
    r = run(checks(tmp_path, header_checks="/^Subject:/ PREPEND not a header\n"), SIMPLE)
    assert not r.edits and "ignored" in r.symbols[0].evidence


def test_replace_and_ignore_and_strip(tmp_path: Path) -> None:
    c = checks(tmp_path, header_checks="/^Subject: (.*)/ REPLACE Subject: [tagged] $1\n"
               "/^Received:/ IGNORE\n/^To:/ STRIP removed\n")
    r = run(c, SIMPLE)
    out = _apply(r, SIMPLE)
    assert out == (b"Subject: [tagged] hello world\r\nFrom: <a@b.example>\r\n\r\n"
                   b"body line one\r\nbody line two\r\n")


def test_replace_needs_header_text(tmp_path: Path) -> None:
    r = run(checks(tmp_path, header_checks="/^Subject:/ REPLACE nonsense\n"), SIMPLE)
    assert not r.edits


def test_primary_mime_header_can_be_edited(tmp_path: Path) -> None:
    c = checks(tmp_path, header_checks="", mime_header_checks="/^MIME-Version:/ REPLACE MIME-Version: 1.0 (checked)\n")
    r = run(c, MULTIPART)
    out = _apply(r, MULTIPART)
    assert b"MIME-Version: 1.0 (checked)\r\n" in out
    assert out[out.index(b"\r\n\r\n"):] == MULTIPART[MULTIPART.index(b"\r\n\r\n"):]


def test_edits_in_body_and_parts_are_reported_not_applied(tmp_path: Path) -> None:
    c = checks(tmp_path, header_checks="/^X-Part-Header:/ IGNORE\n/^Subject: inner/ REPLACE Subject: x\n",
               body_checks="/^plain part$/ REPLACE changed\n/^preamble/ IGNORE\n/^epilogue/ PREPEND added\n")
    r = run(c, MULTIPART)
    assert not r.edits
    notes = [s.evidence for s in r.symbols]
    assert len(notes) == 5 and all("not applied" in n for n in notes)
    assert HeaderEdits().apply(Message(MULTIPART)) == MULTIPART


def test_insert_before_a_removed_field_stays() -> None:
    edits = HeaderEdits()
    edits.insert_before(1, "X-New: 1")
    edits.remove(1)
    assert edits.apply(Message(SIMPLE)).startswith(b"Received: from x by y\r\nX-New: 1\r\nFrom:")


# -- folding, long and strange headers -----------------------------------------------------

FOLDED = b"Subject: first part\r\n\tsecond part\r\nTo: x@y\r\n\r\nbody\r\n"


def test_folded_header_is_one_key_with_the_newline_kept(tmp_path: Path) -> None:
    c = checks(tmp_path, header_checks="/^$/ DUNNO\n")
    keys = [line.key for line in inspected_lines(c, Message(FOLDED))]
    assert keys[0] == "Subject: first part\n\tsecond part"


def test_folded_header_matches_dot_across_the_fold(tmp_path: Path) -> None:
    r = run(checks(tmp_path, header_checks="/^Subject:.*second/ REJECT folded\n"), FOLDED)
    assert r.reject is not None and r.reject.text == "folded"


def test_space_before_colon_is_normalised(tmp_path: Path) -> None:
    raw = b"Subject : spaced\r\n\r\nx\r\n"
    r = run(checks(tmp_path, header_checks="/^Subject: spaced$/ REJECT\n"), raw)
    assert r.reject is not None


def test_eight_bit_header(tmp_path: Path) -> None:
    raw = "Subject: Gr\u00fc\u00dfe\r\n".encode() + b"X-Latin1: caf\xe9\r\n\r\nbody\r\n"
    c = checks(tmp_path, header_checks="/^Subject: Gr\u00fc\u00dfe$/ WARN utf8\n/^X-Latin1: caf/ REPLACE X-Latin1: cafe\n")
    r = run(c, raw)
    assert len(r.warnings) == 1 and "Gr\u00fc\u00dfe" in r.warnings[0]
    out = _apply(r, raw)
    assert out == "Subject: Gr\u00fc\u00dfe\r\n".encode() + b"X-Latin1: cafe\r\n\r\nbody\r\n"


def test_eight_bit_is_logged_printably(tmp_path: Path) -> None:
    raw = b"X-Latin1: caf\xe9\x01\r\n\r\nbody\r\n"
    r = run(checks(tmp_path, header_checks="/^X-Latin1/ WARN odd\n"), raw)
    assert "X-Latin1: caf??" in r.warnings[0]


def test_huge_folded_header_is_truncated_not_fatal(tmp_path: Path) -> None:
    folded = b"Subject: start" + b"".join(b"\r\n continuation %06d" % i for i in range(6000))
    raw = folded + b"\r\nX-After: yes\r\n\r\nbody\r\n"
    assert len(raw) > 100_000
    c = checks(tmp_path, header_checks="/^X-After:/ WARN after\n/continuation 005999/ REJECT tail\n")
    lines = list(inspected_lines(c, Message(raw)))
    assert len(lines[0].key) < 102400 + 100  # header_size_limit, as Postfix truncates
    r = run(c, raw)
    assert r.reject is None and len(r.warnings) == 1  # the excess is not inspected


def test_header_size_limit_is_configurable(tmp_path: Path) -> None:
    c = checks(tmp_path, header_checks="/x/ DUNNO\n", header_size_limit="20")
    key = next(inspected_lines(c, Message(b"Subject: " + b"y" * 100 + b"\r\n\r\n"))).key
    assert key == "Subject: " + "y" * 100  # one record is taken whole
    key = next(inspected_lines(c, Message(b"Subject: a\r\n b\r\n " + b"c" * 30 + b"\r\n d\r\n\r\n"))).key
    assert key == "Subject: a\n b\n " + "c" * 30


# -- body ----------------------------------------------------------------------------------

def test_base64_lines_are_checked_undecoded(tmp_path: Path) -> None:
    encoded = base64.encodebytes(b"secret payload that says MAGICWORD inside").decode().strip()
    c = checks(tmp_path, body_checks=f"/MAGICWORD/ REJECT decoded\n/^{encoded[:20]}/ WARN encoded\n")
    r = run(c, MULTIPART)
    assert r.reject is None and len(r.warnings) == 1


def test_boundaries_are_body_lines(tmp_path: Path) -> None:
    r = run(checks(tmp_path, body_checks="/^--BOUND--$/ REJECT closing boundary\n"), MULTIPART)
    assert r.reject is not None and r.reject.text == "closing boundary"


def test_body_checks_size_limit_per_segment(tmp_path: Path) -> None:
    filler = b"".join(b"filler line %05d\r\n" % i for i in range(4000))  # about 72 KB
    raw = (b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n\r\n" + filler
           + b"FIRSTTAIL\r\n--B\r\n\r\nSECONDHEAD\r\n--B--\r\n")
    c = checks(tmp_path, body_checks="/^FIRSTTAIL$/ WARN first\n/^SECONDHEAD$/ WARN second\n")
    r = run(c, raw)
    assert [w.rsplit(": ", 1)[1] for w in r.warnings] == ["second"]
    (tmp_path / "unlimited").mkdir()
    c = checks(tmp_path / "unlimited", body_checks="/^FIRSTTAIL$/ WARN first\n", body_checks_size_limit="0")
    assert len(run(c, raw).warnings) == 1


def test_long_lines_are_checked_in_pieces(tmp_path: Path) -> None:
    raw = b"Subject: x\r\n\r\n" + b"a" * 2048 + b"NEEDLE" + b"b" * 10 + b"\r\n"
    c = checks(tmp_path, body_checks="/^NEEDLE/ WARN piece\n/^a+NEEDLE/ REJECT whole line\n")
    r = run(c, raw)
    assert r.reject is None and len(r.warnings) == 1


def test_body_line_not_a_boundary_when_continued(tmp_path: Path) -> None:
    raw = (b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n\r\n" + b"x" * 2048
           + b"--B--\r\nstill part\r\n--B--\r\n")
    c = checks(tmp_path, body_checks="/x/ DUNNO\n")
    lines = [line.key for line in inspected_lines(c, Message(raw))]
    assert lines[-3:] == ["--B--", "still part", "--B--"]


def test_digest_parts_are_nested_messages(tmp_path: Path) -> None:
    raw = (b"Content-Type: multipart/digest; boundary=D\r\n\r\n--D\r\n\r\n"
           b"Subject: digest item\r\n\r\nitem body\r\n--D--\r\n")
    c = checks(tmp_path, header_checks="/^$/ DUNNO\n")
    classes = {line.key: line.check_class for line in inspected_lines(c, Message(raw))}
    assert classes["Subject: digest item"] == NESTED_HEADER


# -- logs and failures ---------------------------------------------------------------------

def test_log_line_shape(tmp_path: Path) -> None:
    r = run(checks(tmp_path, header_checks="/^Subject:/ WARN suspicious subject\n"), SIMPLE)
    assert r.warnings == [
        ("4F1B2A: warning: header Subject: hello world from mx.b.example[192.0.2.1]; "
         "from=<a@b.example> to=<c@d.example> proto=ESMTP helo=<helo.b.example>: suspicious subject")]


def test_log_line_without_client_and_text() -> None:
    msg = Message(SIMPLE, Transaction(sender="", recipients=[], protocol_name=""))
    assert log_line(msg, "info", "body", "x" * 300, "") == (
        f"NOQUEUE: info: body {'x' * 200} from unknown; from=<>")


def test_reject_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "filterd.content.postfix_checks"):
        run(checks(tmp_path, body_checks="/line one/ REJECT\n"), SIMPLE)
    assert any(m.startswith("4F1B2A: reject: body body line one from mx.b.example[192.0.2.1];")
               and m.endswith(": 5.7.1 message content rejected") for m in caplog.messages)


class _BrokenTable:
    spec = "test:broken"
    is_pattern = True

    def lookup(self, key: str) -> str | None:
        raise MapTempError("backend down")


def test_table_failure_defers() -> None:
    broken = TableList((_BrokenTable(),))
    c = PostfixChecks(broken, TableList(()), TableList(()), TableList(()))
    r = run(c, SIMPLE)
    assert (r.reject.kind, r.reject.code, r.reject.dsn) == ("DEFER", 451, "4.3.0")


# -- malformed input -----------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    b"",
    b"\r\n",
    b"no header at all\r\njust text\r\n",
    b"Subject: only headers",
    b"Subject: x\r\n broken\r\n\r\n",
    b"\r\n\r\n\r\n",
    b" leading space\r\nSubject: x\r\n\r\n",
    b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n--\r\n----\r\n",
    b"Content-Type: multipart/mixed\r\n\r\n--x\r\n",
    b"Content-Type: message/rfc822\r\n\r\nnot a header\r\n",
    b"Content-Type: ;;;\r\n\r\nx\r\n",
    b"\x00\xff\xfe:\r\n\r\n\xff",
    b"Subject: a\rb\rc\r\n\r\n",
])
def test_malformed_messages_do_not_raise(tmp_path: Path, raw: bytes) -> None:
    c = checks(tmp_path, header_checks="/./ WARN h\n", body_checks="/./ WARN b\n")
    run(c, raw)


def test_garbage_first_line_makes_everything_body(tmp_path: Path) -> None:
    raw = b"From someone Tue Jan 1\r\nSubject: x\r\n\r\nbody\r\n"
    c = checks(tmp_path, header_checks="/^$/ DUNNO\n")
    assert [(line.check_class, line.key) for line in inspected_lines(c, Message(raw))] == [
        (BODY, ""), (BODY, "From someone Tue Jan 1"), (BODY, "Subject: x"), (BODY, ""), (BODY, "body")]


def test_deep_multipart_nesting_is_bounded(tmp_path: Path) -> None:
    head = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(300))
    c = checks(tmp_path, header_checks="/^$/ DUNNO\n", mime_nesting_limit="10")
    lines = list(inspected_lines(c, Message(head + b"\r\nend\r\n")))
    assert lines[-1].key == "end"
