"""Perl regex literals and their translation for the regex module and Hyperscan."""

from __future__ import annotations

import pytest

from filterd.content.rules.perlre import PerlRegexError, make_perl_regex, parse_perl_regex, split_regex_literal


def matches(literal: str, data: bytes) -> bool:
    perl, rest = parse_perl_regex(literal)
    assert rest.strip() == ""
    return perl.compile().search(data) is not None


@pytest.mark.parametrize("literal,pattern,mods,rest", [
    ("/abc/i", "abc", "i", ""),
    ("m{a{1,2}b}s rest", "a{1,2}b", "s", " rest"),
    ("m!a/b!", "a/b", "", ""),
    ("m#x#", "x", "", ""),
    ("m(a(b)c)x", "a(b)c", "x", ""),
    ("m[ab]", "ab", "", ""),
    ("m<ab>g", "ab", "g", ""),
    ("/a\\/b/ [if-unset: x]", "a\\/b", "", " [if-unset: x]"),
])
def test_delimiters(literal: str, pattern: str, mods: str, rest: str) -> None:
    assert split_regex_literal(literal) == (pattern, mods, rest)


@pytest.mark.parametrize("literal", ["/abc", "m{abc", "abc", "/x/q", "/x/e"])
def test_bad_literals(literal: str) -> None:
    with pytest.raises(PerlRegexError):
        split_regex_literal(literal)


@pytest.mark.parametrize("literal,data,expected", [
    ("/foo\\z/", b"foo\n", False),  # \z: very end only
    ("/foo\\z/", b"foo", True),
    ("/foo\\Z/", b"foo\n", True),  # \Z: before a final newline too
    ("/foo$/", b"foo\n", True),  # $ without /m: same as Perl
    ("/^bar/m", b"foo\nbar", True),
    ("/a.b/", b"a\nb", False),
    ("/a.b/s", b"a\nb", True),
    ("/a (?i)b c/x", b"aBC", True),  # /x drops white space; (?i) scoped from there on
    ("/(?:a(?i)b)c/", b"aBc", True),
    ("/(?:a(?i)b)c/", b"aBC", False),  # (?i) ends with its group, as in Perl
    ("/x # comment (with paren\n y/x", b"xy", True),
    ("/\\Qa.b*\\E+/", b"a.b*a.b*", True),
    ("/\\Qa.b\\E/", b"axb", False),
    ("/a++b/", b"aaab", True),  # possessive
    ("/(?>a+)b/", b"aab", True),  # atomic group
    ("/\\x{41}/", b"A", True),
    ("/\\e/", b"\x1b", True),
    ("/a\\h+b/", b"a \t b", True),
    ("/a\\Rb/", b"a\r\nb", True),
    ("/a{,2}/", b"a{,2}", True),  # not a quantifier in Perl: literal braces
    ("/x{2}/", b"xx", True),
    ("/[]a]/", b"]", True),
    ("/[^]a]/", b"]", False),
    ("/[[:digit:]]+/", b"42", True),
    ("/caf\xe9/", b"caf\xe9", True),  # byte patterns match bytes
    ("/\\xc3\\xa9/", "é".encode(), True),
    ("/\\w+\\b/", "é".encode(), False),  # \w is ASCII, as in Perl on byte strings
    ("/(a)\\1/", b"aa", True),
    ("/(?<=a)b/", b"ab", True),
    ("/x(?#comment)y/", b"xy", True),
])
def test_translation_semantics(literal: str, data: bytes, expected: bool) -> None:
    assert matches(literal, data) is expected


@pytest.mark.parametrize("pattern,error", [
    ("a)", "unmatched"),
    ("(a", "missing"),
    ("[a", "unterminated character class"),
    ("\\x{263a}", "not a byte"),
    ("a\\", "lone backslash"),
    ("(?u)a", "inline flag"),
])
def test_untranslatable_patterns(pattern: str, error: str) -> None:
    with pytest.raises(PerlRegexError, match=error):
        make_perl_regex(pattern)


def test_compile_error_has_reason() -> None:
    with pytest.raises(PerlRegexError, match="does not compile"):
        make_perl_regex("a{2,1}").compile()


def test_hyperscan_forms() -> None:
    perl = make_perl_regex("a\\zb{0,300}c{2,5}")
    assert perl.python == "a\\Zb{0,300}c{2,5}"
    assert perl.hyperscan == "a\\zb{0,300}c{2,5}"
    assert perl.hyperscan_loose == "a\\zb*c+"
