"""SpamAssassin's MIMEEval counters (check_for_mime, check_for_mime_html[_only],
check_mime_multipart_ratio) on crafted messages."""

from __future__ import annotations

import base64

import pytest

from filterd.content.message import Message
from filterd.content.rules import RuleSet
from filterd.content.rules.evals_mime import mime_summary, summary, text_part_counts
from filterd.content.rules.views import MessageViews
from tests.unit.rulesets import load_rules

RULES = r"""
rawbody B64        eval:check_for_mime('mime_base64_count')
rawbody QP         eval:check_for_mime('mime_qp_count')
body    ATTACH     eval:check_for_mime('mime_attachment')
rawbody B64_TEXT   eval:check_for_mime('mime_base64_encoded_text')
rawbody QP_LONG    eval:check_for_mime('mime_qp_long_line')
body    MIME_HTML  eval:check_for_mime_html()
body    HTML_ONLY  eval:check_for_mime_html_only()
body    HTML_MOSTLY eval:check_mime_multipart_ratio('0.00', '0.01')
body    UNKNOWN    eval:check_for_mime('mime_faraway_charset')
body    B64_78_79  eval:check_base64_length('78', '79')
body    B64_79_INF eval:check_base64_length('79')
"""


@pytest.fixture(scope="module")
def rs(tmp_path_factory: pytest.TempPathFactory) -> RuleSet:
    return load_rules(tmp_path_factory, RULES, "t.cf")


def names(rs: RuleSet, raw: bytes) -> set[str]:
    return {s.name for s in rs.evaluate(Message(raw))}


def multipart(*parts: str, kind: str = "mixed") -> bytes:
    body = "".join(f"--XX\n{p}\n" for p in parts)
    return (f"From: a@example.com\nTo: b@example.org\nSubject: s\nMIME-Version: 1.0\n"
            f"Content-Type: multipart/{kind}; boundary=XX\n\n{body}--XX--\n").encode()


def test_unsupported_counter_is_reported(rs: RuleSet) -> None:
    assert rs.stats.unsupported_eval == {"check_for_mime('mime_faraway_charset')": ["UNKNOWN"]}


def test_plain_mail_fires_nothing(rs: RuleSet) -> None:
    assert names(rs, b"From: a@example.com\nTo: b@example.org\n\nhello\n") == set()


def test_base64_ascii_text_and_attachment(rs: RuleSet) -> None:
    text = base64.b64encode(b"hello world").decode()
    raw = multipart(f"Content-Type: text/plain; charset=us-ascii\nContent-Transfer-Encoding: base64\n\n{text}",
                    "Content-Type: application/pdf\nContent-Disposition: attachment; filename=a.pdf\n"
                    "Content-Transfer-Encoding: base64\n\nJVBERi0=")
    assert names(rs, raw) == {"B64", "B64_TEXT", "ATTACH"}
    # base64 text in another charset, or declared inline, is ordinary
    latin = multipart(f"Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: base64\n\n{text}")
    assert names(rs, latin) == {"B64"}


def test_quoted_printable_counts_needless_escapes(rs: RuleSet) -> None:
    needless = multipart("Content-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\n=48=65llo")
    assert "QP" in names(rs, needless)
    # QP that only escapes what must be escaped is not "mime_qp_count" (SpamAssassin's quirk)
    proper = multipart("Content-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\ncaf=E9 ok=20")
    assert "QP" not in names(rs, proper)
    s = mime_summary(Message(needless).tree)
    assert s.qp_count == 2


def test_quoted_printable_long_line(rs: RuleSet) -> None:
    raw = multipart("Content-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\n" + "a" * 79 + "\nend")
    assert "QP_LONG" in names(rs, raw)
    ok = multipart("Content-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\n" + "a" * 78 + "\nend")
    assert "QP_LONG" not in names(rs, ok)


def test_html_parts_and_ratio(rs: RuleSet) -> None:
    html_only = b"From: a@example.com\nContent-Type: text/html\n\n<p>hi</p>\n"
    assert names(rs, html_only) == {"MIME_HTML", "HTML_ONLY"}
    mostly = multipart("Content-Type: text/plain\n\n.", "Content-Type: text/html\n\n<p>" + "x" * 500 + "</p>",
                       kind="alternative")
    assert names(rs, mostly) == {"MIME_HTML", "HTML_MOSTLY"}
    balanced = multipart("Content-Type: text/plain\n\n" + "x" * 400, "Content-Type: text/html\n\n<p>" + "x" * 400,
                         kind="alternative")
    assert names(rs, balanced) == {"MIME_HTML"}
    assert mime_summary(Message(balanced).tree).multipart_ratio == pytest.approx(1.0, abs=0.05)


def test_base64_line_length(rs: RuleSet) -> None:
    def b64(width: int, ctype: str = "application/octet-stream") -> bytes:
        data = base64.b64encode(bytes(range(256)) * 2).decode()
        lines = "\n".join(data[i:i + width] for i in range(0, len(data), width))
        return multipart(f"Content-Type: {ctype}\nContent-Transfer-Encoding: base64\n\n{lines}")
    assert not {"B64_78_79", "B64_79_INF"} & names(rs, b64(76))  # 76 + newline
    assert "B64_78_79" in names(rs, b64(78))
    assert "B64_79_INF" in names(rs, b64(120))
    assert "B64_79_INF" not in names(rs, b64(120, "application/ics"))  # calendar invites


@pytest.mark.parametrize("raw", [
    b"Content-Type: multipart/mixed\n\nno boundary at all\n",
    b"Content-Type: multipart/alternative; boundary=X\n\n--X\nContent-Type: text/html\n\n<p>",
    b"Content-Transfer-Encoding: quoted-printable\n\n=ZZ=\n=4",
    b"Content-Type: text/plain; charset=\"\xff\"\nContent-Transfer-Encoding: base64\n\n!!!!\n",
    b"Content-Type: message/rfc822\n\nContent-Type: text/html\n\n<b>inner</b>\n",
])
def test_malformed_mime_never_raises(rs: RuleSet, raw: bytes) -> None:
    names(rs, b"From: a@example.com\n" + raw)


@pytest.mark.parametrize("raw", [
    multipart("Content-Type: text/html\n\n<b>x</b>", "Content-Type: image/gif\n\nGIF"),
    multipart("Content-Type: text/plain\n\nx", "Content-Type: text/html\n\n<b>x</b>", kind="alternative"),
    multipart("Content-Type: text/x-vcard\n\nBEGIN", "Content-Type: application/pdf\n\n%PDF"),
    b"From: a@example.com\nContent-Type: text/html\n\n<b>x</b>\n",
    b"From: a@example.com\n\nplain\n",
])
def test_text_part_counts_agree_with_the_summary(raw: bytes) -> None:
    msg = Message(raw)
    views = MessageViews(msg)
    s = mime_summary(msg.tree)
    assert text_part_counts(views) == (s.html_count, s.text_count)  # body lines not read
    assert summary(views) == s  # now made and kept for the message
    assert text_part_counts(views) == (s.html_count, s.text_count)  # taken from the summary


def test_html_only_with_and_without_the_full_summary(rs: RuleSet, tmp_path_factory: pytest.TempPathFactory) -> None:
    alone = load_rules(tmp_path_factory, "body HTML_ONLY eval:check_for_mime_html_only()\n")
    html = multipart("Content-Type: text/html\n\n<b>x</b>", "Content-Type: image/gif\n\nGIF")
    both = multipart("Content-Type: text/plain\n\nx", "Content-Type: text/html\n\n<b>x</b>", kind="alternative")
    for ruleset in (alone, rs):
        assert "HTML_ONLY" in names(ruleset, html)
        assert "HTML_ONLY" not in names(ruleset, both)
