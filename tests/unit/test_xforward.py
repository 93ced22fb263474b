"""XFORWARD value coding: the plain-text fast paths give what the character walk gives."""

from __future__ import annotations

import pytest

from filterd.smtp.xforward import (
    Xforward,
    XforwardError,
    parse_xforward,
    xtext_decode,
    xtext_encode,
)


@pytest.mark.parametrize("text, decoded", [
    ("mail.example.org", "mail.example.org"),
    ("", ""),
    ("a+2Bb", "a+b"),
    ("a+3Db", "a=b"),
    ("a=b", None),  # '=' must be encoded
    ("a b", None),  # so must white space
    ("caf\u00e9", None),  # and anything outside printable ASCII
    ("a+2", None),  # truncated escape
    ("a+zz", None),  # not hex
])
def test_xtext_decode(text: str, decoded: str | None) -> None:
    assert xtext_decode(text) == decoded


@pytest.mark.parametrize("text, encoded", [
    ("mail.example.org", "mail.example.org"),
    ("a+b", "a+2Bb"),
    ("a=b", "a+3Db"),
    ("a b", "a+20b"),
    ("caf\u00e9", "caf+C3+A9"),
])
def test_xtext_encode(text: str, encoded: str) -> None:
    assert xtext_encode(text) == encoded
    assert xtext_decode(encoded) == text.encode().decode("latin-1")


def test_values_are_made_printable() -> None:
    xf = parse_xforward("HELO=a+09b IDENT=ABC", Xforward())
    assert xf.get("HELO") == "a?b"  # a decoded TAB is not printable
    assert xf.get("IDENT") == "ABC"


def test_undecodable_value_is_taken_as_written() -> None:
    assert parse_xforward("IDENT=a=b", Xforward()).get("IDENT") == "a=b"
    with pytest.raises(XforwardError):
        parse_xforward("NAME=bad_host!", Xforward())
