"""The shared text helpers: one printable() and one printable_ascii(), one valid_hostname()."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from filterd.netaddr import valid_hostname
from filterd.text import printable, printable_ascii

# text, printable(text), printable_ascii(text)
CASES = [
    ("plain ascii ~", "plain ascii ~", "plain ascii ~"),
    ("", "", ""),
    ("caf\u00e9 \u00a0ok", "caf\u00e9 ?ok", "caf? ?ok"),  # no-break space: not printable to Python
    ("a\r\nb\tc\x00d\x1be", "a??b?c?d?e", "a??b?c?d?e"),  # C0 controls
    ("del\x7fx", "del?x", "del?x"),  # DEL
    ("c1\x85\x9bx", "c1??x", "c1??x"),  # C1 controls: NEL and CSI
    ("line\u2028sep\u200bzw", "line?sep?zw", "line?sep?zw"),
    ("evil\u202egpj.exe", "evil?gpj.exe", "evil?gpj.exe"),  # bidi override
    ("\u2066iso\u2069", "?iso?", "?iso?"),  # bidi isolates
    ("bad\udcffbyte\ud800", "bad?byte?", "bad?byte?"),  # lone surrogates (undecodable bytes)
    ("\U0001f600 ok", "\U0001f600 ok", "? ok"),  # printable astral: kept by printable() only
]


@pytest.mark.parametrize("text, expected, _ascii", CASES)
def test_printable_keeps_printable_text_and_only_that(text: str, expected: str, _ascii: str) -> None:
    assert printable(text) == expected


@pytest.mark.parametrize("text, _unicode, expected", CASES)
def test_printable_ascii_keeps_printable_ascii_and_only_that(text: str, _unicode: str, expected: str) -> None:
    out = printable_ascii(text)
    assert out == expected
    assert out.isascii() and out.isprintable()


@pytest.mark.parametrize("helper", [printable, printable_ascii])
def test_long_input_keeps_its_length_and_loses_every_control(helper: Callable[[str], str]) -> None:
    """Replaced, never dropped: a megabyte of mixed text comes back as long, one line."""
    text = ("ab\r\n\x00\u202e\x85\udcff\u00e9" * 131_072)
    out = helper(text)
    assert len(out) == len(text)
    assert out.isprintable() and "\n" not in out and "\u202e" not in out


@pytest.mark.parametrize("name, strict, helo", [
    ("mx.example.com", True, True),
    ("under_score.example", True, True),
    ("mx.example.com.", False, True),  # the absolute form: HELO checks only
    ("host.", False, False),
    (".example.com", False, False),
    ("a..b", False, False),
    ("-bad.example", False, False),
    ("bad-.example", False, False),
    ("1.2.3.4", False, False),
    ("x" * 64 + ".example", False, False),
    ("", False, False),
    ("a." * 128 + "b", False, False),
])
def test_one_host_name_rule_with_the_helo_checks_absolute_form(name: str, strict: bool, helo: bool) -> None:
    assert valid_hostname(name) is strict
    assert valid_hostname(name, trailing_dot=True) is helo
