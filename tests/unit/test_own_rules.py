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

