"""Native eval tests added for SpamAssassin's shipped rules: Date/Received skew, image-only
HTML, recipient name in the Subject."""

from __future__ import annotations

from pathlib import Path

import pytest

from filterd.content.message import Message
from filterd.content.rules import RuleSet
from filterd.content.rules.evals import date_diff
from filterd.content.rules.views import MessageViews

DATE_RULES = r"""
header PAST_03_06    eval:check_for_shifted_date('-6', '-3')
header PAST_96_XX    eval:check_for_shifted_date('undef', '-96')
header FUTURE_03_06  eval:check_for_shifted_date('3', '6')
header FUTURE_Q_PLUS eval:check_for_shifted_date('2920', 'undef')
header BAD_ARGS      eval:check_for_shifted_date('soon', '6')
"""


def load(tmp_path: Path, text: str) -> RuleSet:
    f = tmp_path / "t.cf"
    f.write_text(text)
    return RuleSet.load([str(f)], engine="regex")


def names(rs: RuleSet, raw: bytes) -> set[str]:
    return {s.name for s in rs.evaluate(Message(raw))}


def msg(date: str | None, *received: str, extra: str = "") -> bytes:
    lines = [f"Received: {r}" for r in received]
    if date is not None:
        lines.append(f"Date: {date}")
    return ("\n".join(lines) + f"\nFrom: a@example.com\nTo: bob@example.org\n{extra}\nbody\n").encode()


RCVD = "from mx.example.net ([192.0.2.7]) by gw.example.org; Tue, 20 Aug 2002 12:00:00 +0000"


def test_date_diff_uses_the_nearest_received_date() -> None:
    raw = msg("Tue, 20 Aug 2002 08:00:00 +0000", RCVD,
              "from a by b; Tue, 20 Aug 2002 08:30:00 +0000")
    assert date_diff(MessageViews(Message(raw))) == -1800.0


def test_date_diff_reads_time_zones() -> None:
    raw = msg("Tue, 20 Aug 2002 14:00:00 +0200", RCVD)
    assert date_diff(MessageViews(Message(raw))) == 0.0


@pytest.mark.parametrize("date, expected", [
    ("Tue, 20 Aug 2002 07:00:00 +0000", {"PAST_03_06"}),
    ("Fri, 16 Aug 2002 11:00:00 +0000", {"PAST_96_XX"}),
    ("Tue, 20 Aug 2002 16:00:00 +0000", {"FUTURE_03_06"}),
    ("Tue, 20 Aug 2002 12:10:00 +0000", set()),
    ("Mon, 20 Jan 2003 12:00:00 +0000", {"FUTURE_Q_PLUS"}),
])
def test_shifted_date_bands(tmp_path: Path, date: str, expected: set[str]) -> None:
    rs = load(tmp_path, DATE_RULES)
    assert names(rs, msg(date, RCVD)) == expected
    assert rs.stats.unsupported_eval == {"check_for_shifted_date('soon', '6')": ["BAD_ARGS"]}


def test_shifted_date_compares_the_message_with_itself_not_the_clock(tmp_path: Path) -> None:
    # a 1990s message whose Date agrees with its Received header is not "in the past"
    rs = load(tmp_path, DATE_RULES)
    assert names(rs, msg("Mon, 01 Jan 1996 10:00:00 +0000",
                         "from a by b; Mon, 01 Jan 1996 10:00:05 +0000")) == set()


@pytest.mark.parametrize("raw", [
    msg(None, RCVD),                                    # no Date
    msg("Tue, 20 Aug 2002 07:00:00 +0000"),             # no Received
    msg("not a date at all", RCVD),                     # unparsable Date
    msg("Tue, 20 Aug 2002 07:00:00 +0000", "from a by b; garbage 99 Foo 12 99:99:99 +9999"),
    msg("Tue, 99 Aug 99999999 07:00:00 +0000", RCVD),   # out of range
])
def test_shifted_date_on_missing_or_broken_dates_does_not_fire(tmp_path: Path, raw: bytes) -> None:
    assert names(load(tmp_path, DATE_RULES), raw) == set()


def test_local_fetchmail_hops_are_set_aside() -> None:
    raw = msg("Tue, 20 Aug 2002 12:00:00 +0000",
              "from localhost [127.0.0.1] by home with POP3; Sat, 24 Aug 2002 12:00:00 +0000",
              "from mail by localhost with POP3 (fetchmail-5.9.0); Sat, 24 Aug 2002 11:59:00 +0000",
              RCVD)
    assert date_diff(MessageViews(Message(raw))) == 0.0


HTML_RULES = r"""
body IMAGE_ONLY_04 eval:html_image_only('0000','0400')
body IMAGE_ONLY_08 eval:html_image_only('0400','0800')
"""


def html(body: str) -> bytes:
    return f"From: a@example.com\nSubject: hi\nContent-Type: text/html\n\n{body}\n".encode()


def test_html_image_only_by_html_length(tmp_path: Path) -> None:
    rs = load(tmp_path, HTML_RULES)
    assert names(rs, html("<html><body><img src='http://x.example/a.gif'>Buy</body></html>")) == {"IMAGE_ONLY_04"}
    # the length counts the source: markup around little text makes it long
    assert names(rs, html("<html><img src=a.gif>" + "<b>w</b> " * 50 + "</html>")) == {"IMAGE_ONLY_08"}
    assert names(rs, html("<html><img src=a.gif>" + "word " * 200 + "</html>")) == set()
    assert names(rs, html("<html>" + "word " * 10 + "</html>")) == set()  # no image
    assert names(rs, html("<html><imgx src=a.gif></html>")) == set()
    plain = b"From: a@example.com\nSubject: hi\n\n<img src=a.gif>\n"
    assert names(rs, plain) == set()  # text/plain is not HTML


@pytest.mark.parametrize("to, subject, fires", [
    ("bob@example.org", "bob, your invoice", True),
    ("bob@example.org", "Re: bob", True),
    ("bob@example.org", "bob", True),
    ("bob@example.org", "News for bob", False),  # anchored at the start, as in SpamAssassin
    ("bob@example.org", "Bob: meeting", False),  # the salutation form is case-sensitive
    ("bob@example.org", "bobby tables", False),
    ("b.o+b@example.org", "b.o+b: hi", True),
    ("b.o+b@example.org", "bxo+b: hi", False),  # regex characters are literal
    ("", "bob, hi", False),
])
def test_to_in_subject(tmp_path: Path, to: str, subject: str, fires: bool) -> None:
    rs = load(tmp_path, "header LOCALPART eval:check_for_to_in_subject('user')\n"
                        "header WHOLE eval:check_for_to_in_subject('address')\n")
    raw = f"From: a@example.com\nTo: {to}\nSubject: {subject}\n\nbody\n".encode()
    assert ("LOCALPART" in names(rs, raw)) is fires
    whole = f"From: a@example.com\nTo: {to}\nSubject: about {to} today\n\nbody\n".encode()
    assert ("WHOLE" in names(rs, whole)) is bool(to)
