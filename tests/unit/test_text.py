"""The shared text helpers: one printable(), one valid_hostname()."""

from __future__ import annotations

import re

import pytest

from filterd.netaddr import valid_hostname
from filterd.text import printable


@pytest.mark.parametrize("text, expected", [
    ("plain ascii ~", "plain ascii ~"),
    ("caf\u00e9 \u00a0ok", "caf\u00e9 ?ok"),  # no-break space: not printable to Python
    ("a\r\nb\tc\x00d\x7fe\x85f", "a??b?c?d?e?f"),
    ("line\u2028sep\u200bzw", "line?sep?zw"),
    ("bad\udcffbyte", "bad?byte"),
])
def test_printable_keeps_printable_text_and_only_that(text: str, expected: str) -> None:
    assert printable(text) == expected


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
