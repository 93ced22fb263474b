"""filterd's own rules (rules/*.cf): each catches the trick it names and leaves the mail
that merely looks like it alone. Run through the regex engine, as the other rule tests."""

from __future__ import annotations

import pytest

from filterd.content.message import Message
from filterd.content.rules import RuleSet
from filterd.content.rules.paths import shipped_rules_directory


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return RuleSet.load([shipped_rules_directory()], engine="regex")


def hits(rules: RuleSet, raw: bytes) -> set[str]:
    return {s.name for s in rules.evaluate(Message(raw))}


def html_mail(content_type: bytes) -> bytes:
    return (b"From: a@example.org\nTo: b@example.com\nSubject: hi\nMIME-Version: 1.0\n"
            b"Content-Type: " + content_type + b"\n\n<html><body>Hello</body></html>\n")


@pytest.mark.parametrize("content_type", [b"text/html", b"text/html; format=flowed", b"text/html;"])
def test_html_without_charset_is_caught(rules: RuleSet, content_type: bytes) -> None:
    assert "FD_MIME_HTML_NO_CHARSET" in hits(rules, html_mail(content_type))


@pytest.mark.parametrize("content_type", [b'text/html; charset="us-ascii"', b"text/html;charset=utf-8",
                                          b"text/html; format=flowed; charset=iso-8859-1"])
def test_html_with_a_charset_is_not_caught(rules: RuleSet, content_type: bytes) -> None:
    # the space before "charset" used to slip past the lookahead: every HTML mail hit
    assert "FD_MIME_HTML_NO_CHARSET" not in hits(rules, html_mail(content_type))


def plain(subject: bytes, body: bytes) -> bytes:
    return (b"From: a@example.org\nTo: b@example.com\nSubject: " + subject +
            b"\nDate: Mon, 2 Sep 2002 10:00:00 +0000\nMessage-Id: <1@example.org>\n\n" + body + b"\n")


TRICKS = [
    ("FD_DEAR_NOBODY", plain(b"hello", b"Dear Friend,\nI write to you today.")),
    ("FD_ADVANCE_FEE_STORY", plain(b"hello", b"I contact you in the strictest confidence about US$25.5 million.")),
    ("FD_CLAIMS_NOT_SPAM", plain(b"hello", b"This message is not spam: you signed up.")),
    ("FD_REMOVE_FROM_LIST", plain(b"hello", b"Reply with REMOVE to be removed from our mailing list.")),
    ("FD_CALL_ORDER_NOW", plain(b"hello", b"Call toll-free 1-888-555-1234 today.")),
    ("FD_SUBJ_RANDOM_TAG", plain(b"CLEARANCE SALE!        DJHL", b"cheap")),
    ("FD_BODY_CAPS_HEADLINE", plain(b"hello", b"intro\n\nORDER TODAY AND SAVE BIG!\n\nmore")),
    ("FD_HTML_FONT_HUGE", b"From: a@example.org\nTo: b@example.com\nSubject: hi\nMIME-Version: 1.0\n"
     b"Content-Type: text/html; charset=us-ascii\n\n<html><font size=\"+5\">Deal</font></html>\n"),
]
# What each rule must leave alone: the ordinary mail closest to its trick.
NEAR_MISSES = [
    ("FD_DEAR_NOBODY", plain(b"hello", b"Dear Alice,\nthe friend I mentioned: dear sir Bob says hi.")),
    ("FD_ADVANCE_FEE_STORY", plain(b"hello", b"We spent $25 on the confidence tests.")),
    ("FD_CLAIMS_NOT_SPAM", plain(b"hello", b"Is this spam? The filter said so.")),
    ("FD_REMOVE_FROM_LIST", plain(b"hello", b"I removed the file from our list of builds.")),
    ("FD_CALL_ORDER_NOW", plain(b"hello", b"In order to call the function, pass 1-800 as the port.")),
    ("FD_SUBJ_RANDOM_TAG", plain(b"Re: meeting at 10", b"ok")),
    ("FD_BODY_CAPS_HEADLINE", plain(b"hello", b"intro\n\nREADME and INSTALL updated!\n\nmore")),
    ("FD_HTML_FONT_HUGE", b"From: a@example.org\nTo: b@example.com\nSubject: hi\nMIME-Version: 1.0\n"
     b"Content-Type: text/html; charset=us-ascii\n\n<html><font size=\"2\">Deal</font></html>\n"),
]


@pytest.mark.parametrize("name,raw", TRICKS, ids=[t[0] for t in TRICKS])
def test_own_rule_catches_its_trick(rules: RuleSet, name: str, raw: bytes) -> None:
    assert name in hits(rules, raw)


@pytest.mark.parametrize("name,raw", NEAR_MISSES, ids=[t[0] for t in NEAR_MISSES])
def test_own_rule_leaves_the_near_miss_alone(rules: RuleSet, name: str, raw: bytes) -> None:
    assert name not in hits(rules, raw)
