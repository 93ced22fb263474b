"""Table types: parsing as postmap does, error messages with line numbers, reloads."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from filterd.maps import MapError, MapTempError, open_table, split_spec
from filterd.maps import source


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


# -- texthash / hash ------------------------------------------------------------------

def test_texthash_lines_comments_continuations(tmp_path: Path) -> None:
    f = write(tmp_path / "access", (
        "Foo first\n"
        "bar  a b  \n"
        "  continued\n"
        "# comment\n"
        "  # indented comment inside an entry\n"
        "\n"
        "   \n"
        "qux v\n"
        "#c\n"
        " continuation after comment\n"
        "tab\tseparated value\n"
    ))
    t = open_table(f"texthash:{f}")
    assert t.lookup("foo") == "first"
    assert t.lookup("FOO") == "first"  # keys and queries are case-folded
    assert t.lookup("bar") == "a b    continued"  # joined as written, like postmap
    assert t.lookup("qux") == "v continuation after comment"
    assert t.lookup("tab") == "separated value"
    assert t.lookup("# comment") is None
    assert t.lookup("missing") is None
    assert t.is_pattern is False


def test_texthash_duplicate_first_wins(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = write(tmp_path / "dup", "Foo first\nfoo second\n")
    with caplog.at_level(logging.WARNING, "filterd.maps"):
        t = open_table(f"texthash:{f}")
    assert t.lookup("foo") == "first"
    assert "line 2: duplicate entry" in caplog.text


def test_texthash_alias_style_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = write(tmp_path / "aliases", "k:  v\n")
    with caplog.at_level(logging.WARNING, "filterd.maps"):
        t = open_table(f"texthash:{f}")
    assert t.lookup("k:") == "v"
    assert t.lookup("k") is None
    assert "is this an alias file?" in caplog.text


def test_casefold_non_ascii(tmp_path: Path) -> None:
    f = write(tmp_path / "u", "STRASSE@Example.DE one\n")
    assert open_table(f"texthash:{f}").lookup("strasse@example.de") == "one"


@pytest.mark.parametrize("text, message", [
    ("key\n", "line 1: expected format: key whitespace value (no value after 'key')"),
    ("a b\nkey   \n", "line 2: expected format: key whitespace value"),
    ("  leading value\n", "line 1: logical line must not start with white space"),
])
def test_texthash_bad_lines(tmp_path: Path, text: str, message: str) -> None:
    f = write(tmp_path / "bad", text)
    with pytest.raises(MapError) as exc:
        open_table(f"texthash:{f}")
    assert str(exc.value) == f"texthash:{f} {message}" or message in str(exc.value)
    assert str(exc.value).startswith(f"texthash:{f} line ")


def test_texthash_bad_utf8_names_line(tmp_path: Path) -> None:
    p = tmp_path / "bin"
    p.write_bytes(b"a 1\nb \xff\n")
    with pytest.raises(MapError, match=r"line 2: not valid UTF-8"):
        open_table(f"texthash:{p}")


def test_hash_reads_source_file(tmp_path: Path) -> None:
    f = write(tmp_path / "access", "example.com REJECT\n")
    assert open_table(f"hash:{f}").lookup("Example.COM") == "REJECT"
    assert open_table(f"btree:{f}").lookup("example.com") == "REJECT"


def test_hash_only_db_file_explains(tmp_path: Path) -> None:
    (tmp_path / "access.db").write_bytes(b"\0" * 16)
    with pytest.raises(MapError, match=r"cannot read Berkeley DB.*source file"):
        open_table(f"hash:{tmp_path / 'access'}")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MapError, match=r"cannot read .*nope: No such file"):
        open_table(f"texthash:{tmp_path / 'nope'}")


# -- reload ---------------------------------------------------------------------------

@pytest.fixture
def instant_reload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source, "CHECK_INTERVAL", 0.0)


def _touch_later(path: str, seconds: int) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def test_reload_on_change(tmp_path: Path, instant_reload: None) -> None:
    f = write(tmp_path / "t", "a 1\n")
    t = open_table(f"texthash:{f}")
    assert t.lookup("a") == "1"
    write(tmp_path / "t", "a 2\nb 3\n")
    _touch_later(f, 5)
    assert t.lookup("a") == "2"
    assert t.lookup("b") == "3"


def test_reload_same_size_new_mtime(tmp_path: Path, instant_reload: None) -> None:
    f = write(tmp_path / "t", "a 1\n")
    t = open_table(f"texthash:{f}")
    write(tmp_path / "t", "a 9\n")
    _touch_later(f, 7)
    assert t.lookup("a") == "9"


def test_reload_broken_file_keeps_last_good(tmp_path: Path, instant_reload: None,
                                            caplog: pytest.LogCaptureFixture) -> None:
    f = write(tmp_path / "t", "a 1\n")
    t = open_table(f"texthash:{f}")
    write(tmp_path / "t", "a 1\nbroken\n")
    _touch_later(f, 5)
    with caplog.at_level(logging.ERROR, "filterd.maps"):
        assert t.lookup("a") == "1"
    assert "line 2: expected format" in caplog.text
    write(tmp_path / "t", "a 3\n")
    _touch_later(f, 10)
    assert t.lookup("a") == "3"


def test_reload_vanished_file_keeps_last_good(tmp_path: Path, instant_reload: None,
                                              caplog: pytest.LogCaptureFixture) -> None:
    f = write(tmp_path / "t", "a 1\n")
    t = open_table(f"texthash:{f}")
    os.unlink(f)
    with caplog.at_level(logging.ERROR, "filterd.maps"):
        assert t.lookup("a") == "1"
    assert "cannot stat" in caplog.text


def test_reload_checked_at_most_once_per_interval(tmp_path: Path) -> None:
    f = write(tmp_path / "t", "a 1\n")
    t = open_table(f"texthash:{f}")
    write(tmp_path / "t", "a 2\n")
    _touch_later(f, 5)
    assert t.lookup("a") == "1"  # within CHECK_INTERVAL of opening: not re-read yet


def test_regexp_and_cidr_files_reload(tmp_path: Path, instant_reload: None) -> None:
    r = write(tmp_path / "r", "/^a/ one\n")
    c = write(tmp_path / "c", "10.0.0.0/8 one\n")
    rt, ct = open_table(f"regexp:{r}"), open_table(f"cidr:{c}")
    write(tmp_path / "r", "/^a/ two\n")
    write(tmp_path / "c", "10.0.0.0/8 two\n")
    _touch_later(r, 5)
    _touch_later(c, 5)
    assert rt.lookup("abc") == "two"
    assert ct.lookup("10.1.1.1") == "two"


# -- regexp / pcre --------------------------------------------------------------------

def test_regexp_basics(tmp_path: Path) -> None:
    f = write(tmp_path / "r", (
        "/^foo(.*)@(.*)$/  got $1 at ${2} $$ end\n"
        "/^CASE$/i caseoff\n"
        "/^upper$/  casedefault\n"
        "|^pi/pe\\|x| pipe-delim\n"
        "%^hash(x)%   $(1)y\n"
        "!/^nomatch/ negated\n"
    ))
    t = open_table(f"regexp:{f}")
    assert t.is_pattern
    assert t.lookup("foobar@Example.com") == "got bar at Example.com $ end"
    assert t.lookup("CASE") == "caseoff"
    assert t.lookup("UPPER") == "casedefault"  # case-insensitive by default
    assert t.lookup("pi/pe|x") == "pipe-delim"  # any delimiter, escaped inside
    assert t.lookup("hashx") == "xy"
    assert t.lookup("case") == "negated"
    assert t.lookup("nomatch-here") is None


def test_regexp_if_endif_nesting(tmp_path: Path) -> None:
    f = write(tmp_path / "r", (
        "if /@example\\.com$/\n"
        "if !/^admin@/\n"
        "/^(.*)@/ user $1\n"
        "endif\n"
        "/./ admin-in-example\n"
        "ENDIF\n"
        "IF/^x/\n"
        "/^x(y)/\n"
        "   continued $1\n"
        "endif\n"
        "/^z/ last\n"
    ))
    t = open_table(f"regexp:{f}")
    assert t.lookup("bob@example.com") == "user bob"
    assert t.lookup("admin@example.com") == "admin-in-example"
    assert t.lookup("bob@other.com") is None
    assert t.lookup("xyz") == "continued y"
    assert t.lookup("xz") is None
    assert t.lookup("zed") == "last"


def test_regexp_key_not_case_folded_for_substitution(tmp_path: Path) -> None:
    f = write(tmp_path / "r", "/^(.*)$/ [$1]\n")
    assert open_table(f"regexp:{f}").lookup("MiXeD") == "[MiXeD]"


def test_regexp_unmatched_group_is_empty(tmp_path: Path) -> None:
    f = write(tmp_path / "r", "/(a)|(b)/ [$2]\n")
    assert open_table(f"regexp:{f}").lookup("a") == "[]"


def test_regexp_newline_flag(tmp_path: Path) -> None:
    f = write(tmp_path / "r", "/^b$/m multi\n/a.b/ dotall\n")
    t = open_table(f"regexp:{f}")
    assert t.lookup("a\nb") == "multi"
    f2 = write(tmp_path / "r2", "/^b$/ anchored\n/a.b/ dotall\n")
    assert open_table(f"regexp:{f2}").lookup("a\nb") == "dotall"


def test_regexp_posix_translation(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = write(tmp_path / "r", (
        "/\\<word\\>/ gnu-word\n"
        "/^[[:digit:]]+[\\]$/ backslash-in-brackets\n"
        "/^\\d$/ literal-d\n"
    ))
    with caplog.at_level(logging.WARNING, "filterd.maps"):
        t = open_table(f"regexp:{f}")
    assert t.lookup("a word here") == "gnu-word"
    assert t.lookup("swordfish") is None
    assert t.lookup("12\\") == "backslash-in-brackets"
    assert t.lookup("d") == "literal-d"
    assert t.lookup("5") is None
    assert "means the letter 'd'" in caplog.text


def test_pcre_flags(tmp_path: Path) -> None:
    f = write(tmp_path / "p", (
        "/^\\d+$/ digits\n"
        "/^a b$/x spaced\n"
        "/^x.y$/ dotall\n"
        "/bc/A anchored\n"
        "/^Q$/i exact-case\n"
        "/(?<name>z)(\\w)/ $2\n"
    ))
    t = open_table(f"pcre:{f}")
    assert t.lookup("123") == "digits"
    assert t.lookup("ab") == "spaced"
    assert t.lookup("x\ny") == "dotall"
    assert t.lookup("xbc") is None  # anchored: bc must be at the start
    assert t.lookup("bcd") == "anchored"
    assert t.lookup("q") is None
    assert t.lookup("Q") == "exact-case"
    assert t.lookup("zk") == "k"


def test_inline_regexp_and_cidr() -> None:
    t = open_table("regexp:{ {/^a/ first}, { /./ second one } }")
    assert t.lookup("abc") == "first"
    assert t.lookup("b") == "second one"
    c = open_table("cidr:{ {10.0.0.0/8 ten}, {!10.0.0.0/8 other} }")
    assert c.lookup("10.2.3.4") == "ten"
    assert c.lookup("192.0.2.1") == "other"


@pytest.mark.parametrize("rule, message", [
    ("/abc", "line 1: missing closing '/'"),
    ("/abc/", "line 1: missing result after regexp pattern"),
    ("/abc/q x", "line 1: unknown regexp flag 'q'"),
    ("/abc/x x", "line 1: flag 'x' (POSIX basic regular expressions) is not supported"),
    ("foo bar", "line 1: expected /pattern/flags result, if /pattern/ or endif"),
    ("/a(/ x", "line 1: bad regular expression 'a('"),
    ("/a/ $3", "line 1: out of range replacement index 3: the pattern has 0 groups"),
    ("/(a)/ $0", "line 1: out of range replacement index 0"),
    ("/(a)/ $1x", "line 1: non-numeric replacement index '1x'"),
    ("/(a)/ x$", "line 1: empty macro name after '$'"),
    ("/(a)/ ${1", "line 1: truncated macro reference"),
    ("!/(a)/ $1", "line 1: $1 in the result of a negated (!) pattern"),
    ("endif", "line 1: endif without matching if"),
    ("/a/ x\nif /a/\n/b/ y", "line 2: if has no matching endif"),
    ("if /a/ extra", "line 1: unexpected text after if /pattern/: 'extra'"),
    ("if /a/\n /b/ x\nendif", "line 1: unexpected text after if /pattern/"),
    ("if /a/\nendif junk", "line 2: unexpected text after endif: 'junk'"),
    ("/a/ x\n\n# c\n/b", "line 4: missing closing '/'"),
])
def test_regexp_errors(tmp_path: Path, rule: str, message: str) -> None:
    f = write(tmp_path / "bad", rule + "\n")
    with pytest.raises(MapError) as exc:
        open_table(f"regexp:{f}")
    assert str(exc.value).startswith(f"regexp:{f} {message}")


@pytest.mark.parametrize("rule, message", [
    ("/a/E x", "pcre flag 'E' is not supported"),
    ("/a/U x", "pcre flag 'U' is not supported"),
    ("/a/z x", "unknown pcre flag 'z'"),
])
def test_pcre_errors(tmp_path: Path, rule: str, message: str) -> None:
    f = write(tmp_path / "bad", rule + "\n")
    with pytest.raises(MapError, match=f"line 1: {message}"):
        open_table(f"pcre:{f}")


def test_inline_regexp_rules_need_braces() -> None:
    with pytest.raises(MapError, match=r"rule 1: expected '\{'"):
        open_table("regexp:{/a/ first}")
    with pytest.raises(MapError, match=r"rule 2: missing result"):
        open_table("regexp:{ {/a/ x}, {/b/} }")
    with pytest.raises(MapError, match=r"no rules"):
        open_table("regexp:{ }")


# -- cidr -----------------------------------------------------------------------------

def test_cidr(tmp_path: Path) -> None:
    f = write(tmp_path / "c", (
        "192.168.1.1   one\n"
        "!10.0.0.0/8   not-ten\n"
        "if 10.0.0.0/8\n"
        "10.1.0.0/16   ten-one\n"
        "endif\n"
        "[2001:db8::1] v6-one\n"
        "2001:DB8::/32 v6-net\n"
        "10.2.3.4/32\n"
        "   cont-value\n"
        "0.0.0.0/0 any4\n"
    ))
    t = open_table(f"cidr:{f}")
    assert t.is_pattern
    assert t.lookup("192.168.1.1") == "one"
    assert t.lookup("192.168.1.2") == "not-ten"
    assert t.lookup("10.1.2.3") == "ten-one"
    assert t.lookup("10.2.3.4") == "cont-value"  # the if block did not match; rules after it
    assert t.lookup("10.9.9.9") == "any4"
    assert t.lookup("2001:db8::1") == "v6-one"  # the negated IPv4 rule does not fire
    assert t.lookup("2001:0db8:0::1") == "v6-one"
    assert t.lookup("2001:db8:1::5") == "v6-net"
    assert t.lookup("2001:db9::1") is None
    assert t.lookup("::ffff:192.168.1.1") is None  # IPv6, not the IPv4 rule
    assert t.lookup("192.168.1.01") is None
    assert t.lookup("[2001:db8::1]") is None
    assert t.lookup("garbage") is None


def test_cidr_if_negated(tmp_path: Path) -> None:
    f = write(tmp_path / "c", "IF !10.0.0.0/8\n0.0.0.0/0 outside\nENDIF\n10.0.0.0/8 inside\n")
    t = open_table(f"cidr:{f}")
    assert t.lookup("11.0.0.1") == "outside"
    assert t.lookup("10.0.0.1") == "inside"


@pytest.mark.parametrize("rule, message", [
    ("10.0.0.1/8 x", "line 1: non-null host address bits in '10.0.0.1/8', perhaps you should use 10.0.0.0/8 instead"),
    ("10.0.0.0/33 x", "line 1: bad mask length in '10.0.0.0/33' (0 to 32)"),
    ("2001:db8::/129 x", "line 1: bad mask length in '2001:db8::/129' (0 to 128)"),
    ("10.0.0.0/x x", "line 1: bad mask length"),
    ("300.1.1.1 x", "line 1: bad address pattern '300.1.1.1'"),
    ("1.2.3 x", "line 1: bad address pattern '1.2.3'"),
    ("010.1.1.1 x", "line 1: bad address pattern '010.1.1.1'"),
    ("10.0.0.0/8", "line 1: no lookup result after '10.0.0.0/8'"),
    ("if 10.0.0.0/8 x", "line 1: unexpected text after if pattern: 'x'"),
    ("if !10.0.0.0/8", "line 1: if has no matching endif"),
    ("endif", "line 1: endif without matching if"),
    ("!", "line 1: missing address pattern"),
])
def test_cidr_errors(tmp_path: Path, rule: str, message: str) -> None:
    f = write(tmp_path / "bad", rule + "\n")
    with pytest.raises(MapError) as exc:
        open_table(f"cidr:{f}")
    assert str(exc.value).startswith(f"cidr:{f} {message}")


# -- static, inline, fail, unionmap, pipemap -----------------------------------------

def test_static() -> None:
    assert open_table("static:OK").lookup("anything") == "OK"
    assert open_table("static:{ REJECT go away  now }").lookup("x") == "REJECT go away  now"
    assert open_table("static:OK").is_pattern is False


@pytest.mark.parametrize("spec, message", [
    ("static:", "static: needs a value"),
    ("static:{ }", "static: needs a value"),
    ("static:{a b", "missing '}'"),
])
def test_static_errors(spec: str, message: str) -> None:
    with pytest.raises(MapError, match=message):
        open_table(spec)


def test_inline() -> None:
    t = open_table("inline:{ k=v, { k2 = two words }, K3=x, dup=1, dup=2 }")
    assert t.lookup("K") == "v"
    assert t.lookup("k2") == "two words"
    assert t.lookup("k3") == "x"
    assert t.lookup("dup") == "2"  # last wins, as Postfix's inline:
    assert t.lookup("nope") is None


@pytest.mark.parametrize("spec, message", [
    ("inline:{ k=v, bad }", r"missing '=' after attribute name 'bad'"),
    ("inline:{}", r"bad syntax: need inline:\{name=value...\}"),
    ("inline:{ =v }", r"missing name before '='"),
    ("inline:{ k= }", r"empty value for 'k'"),
    ("inline:k=v", r"expected '\{'"),
    ("inline:{ k=v", r"missing '\}'"),
    ("inline:{ {k=v }", r"unbalanced"),
])
def test_inline_errors(spec: str, message: str) -> None:
    with pytest.raises(MapError, match=message):
        open_table(spec)


def test_fail() -> None:
    t = open_table("fail:test")
    assert t.is_pattern
    with pytest.raises(MapTempError, match="fail:test"):
        t.lookup("x")


def test_unionmap_and_pipemap() -> None:
    u = open_table("unionmap:{ inline:{a=1}, static:2, inline:{b=3} }")
    assert u.lookup("a") == "1,2"
    assert u.is_pattern is False
    assert open_table("unionmap:{ regexp:{ {/^z/ z} }, static:s }").is_pattern is True
    p = open_table("pipemap:{ inline:{a=b}, inline:{b=final} }")
    assert p.lookup("A") == "final"
    assert p.lookup("b") is None
    with pytest.raises(MapTempError):
        open_table("unionmap:{ static:x, fail:u }").lookup("k")
    with pytest.raises(MapError, match=r"need pipemap:\{type:name, type:name...\}"):
        open_table("pipemap:{ static:x }")
    with pytest.raises(MapError, match=r"need unionmap:\{type:name...\}"):
        open_table("unionmap:{ notatable }")


# -- factory --------------------------------------------------------------------------

def test_cache_same_object(tmp_path: Path) -> None:
    f = write(tmp_path / "t", "a 1\n")
    assert open_table(f"texthash:{f}") is open_table(f" texthash:{f} ")
    assert open_table("static:x") is open_table("static:x")


def test_proxy_prefix(tmp_path: Path) -> None:
    f = write(tmp_path / "t", "a 1\n")
    assert open_table(f"proxy:texthash:{f}") is open_table(f"texthash:{f}")


@pytest.mark.parametrize("spec, message", [
    ("/etc/postfix/access", r"expected a table as type:name"),
    (":x", r"expected a table as type:name"),
    ("nosuch:/x", r"unknown table type 'nosuch'; supported types: "),
    ("mysql:/etc/postfix/my.cf", r"SQL tables \(mysql:\) are not supported"),
    ("texthash:", r"texthash:: missing file name"),
])
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(MapError, match=message):
        open_table(spec)


def test_map_error_is_value_error() -> None:
    assert issubclass(MapError, ValueError)
    assert split_spec("HASH:/x") == ("hash", "/x")


def test_pcre_dot_matches_newline_by_default_like_postfix(tmp_path):
    """pcre_table(5): the s flag (PCRE_DOTALL) is on by default, so folded headers match."""
    from filterd.maps import open_table

    f = tmp_path / "hdr.pcre"
    f.write_text("/^Subject:.*bar/ REJECT folded\n/^X-A:.*z/s DUNNO\n")
    t = open_table(f"pcre:{f}")
    assert t.lookup("Subject: foo\n\tbar") == "REJECT folded"
    assert t.lookup("X-A: y\n z") is None  # s toggles DOTALL off
