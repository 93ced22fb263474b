"""Evaluating rules on crafted messages, with both engines."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from filterd.content.message import Message
from filterd.restrict.transaction import Transaction
from filterd.content.rules import RuleSet
from filterd.content.rules.check import rules_check_command
from filterd.content.rules.evals import uppercase_percent
from filterd.content.rules.matcher import hyperscan_available
from filterd.content.rules.paths import shipped_rules_directory

ENGINES = ["regex", pytest.param("hyperscan", marks=pytest.mark.skipif(
    not hyperscan_available(), reason="hyperscan module not installed"))]

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

MSG = (
    b"Received: from mx.example.net (mx.example.net [192.0.2.7]) by gw\n"
    b"From: \"Jane Doe\" <jane@example.com>\n"
    b"To: bob@example.org\n"
    b"Cc: =?utf-8?q?Caf=C3=A9?= <cafe@example.org>\n"
    b"Subject: =?utf-8?q?Great_offer_caf=C3=A9?=\n"
    b"Message-Id: <123@example.com>\n"
    b"X-Folded: first\n\tsecond\n"
    b"X-Twice: one\n"
    b"X-Twice: two\n"
    b"Content-Type: text/plain; charset=utf-8\n"
    b"\n"
    b"First paragraph line one\nline two of the same paragraph.\n"
    b"\n"
    b"Money money money. Visit http://www.example.biz/path now.\n"
)


def load(tmp_path: Path, text: str, engine: str) -> RuleSet:
    f = tmp_path / "t.cf"
    f.write_text(text, encoding="latin-1")
    return RuleSet.load([str(f)], engine=engine)


def names(ruleset: RuleSet, raw: bytes = MSG, envelope: Transaction | None = None) -> set[str]:
    return {s.name for s in ruleset.evaluate(Message(raw, envelope))}


@pytest.mark.parametrize("engine", ENGINES)
def test_header_rules_and_modifiers(tmp_path: Path, engine: str) -> None:
    rs = load(tmp_path, r"""
header SUBJ_DECODED   Subject =~ /offer caf\xc3\xa9$/
header SUBJ_RAW       Subject:raw =~ /=\?utf-8\?q\?/
header FROM_ADDR      From:addr =~ /^jane\@example\.com$/
header FROM_NAME      From:name =~ /^Jane Doe$/
header FROM_NAME_NOT  From:name =~ /jane\@/
header TOCC           ToCc =~ /bob\@example\.org.*\n.*Caf\xc3\xa9/s
header TOCC_ADDR      ToCc:addr =~ /^cafe\@example\.org$/m
header FOLD_DECODED   X-Folded =~ /^first second$/
header FOLD_RAW       X-Folded:raw =~ /first\n\tsecond/
header TWICE          X-Twice =~ /^one\ntwo\n$/
header TWICE_FIRST    X-Twice:first =~ /^one$/
header TWICE_LAST     X-Twice:last =~ /^two$/
header MSGID          MESSAGEID =~ /^<123\@example\.com>$/
header ENVFROM        EnvelopeFrom =~ /^bounce\@example\.net$/
header ALL_HDRS       ALL =~ /^X-Twice: two$/m
header ALL_RAW        ALL:raw =~ /^Cc: =\?utf-8/m
header ABSENT_NEG     X-Absent !~ /./
header ABSENT_EMPTY   X-Absent =~ /^$/
header PRESENT_NEG    Subject !~ /offer/
header UNSET          X-Absent =~ /^fallback$/ [if-unset: fallback]
header EXISTS         exists:X-Folded
header EXISTS_NOT     exists:X-Absent
header CASE_INSENS    subject =~ /GREAT/i
""", engine)
    got = names(rs, envelope=Transaction(sender="bounce@example.net"))
    assert got == {"SUBJ_DECODED", "SUBJ_RAW", "FROM_ADDR", "FROM_NAME", "TOCC", "TOCC_ADDR",
                   "FOLD_DECODED", "FOLD_RAW", "TWICE", "TWICE_FIRST", "TWICE_LAST", "MSGID",
                   "ENVFROM", "ALL_HDRS", "ALL_RAW", "ABSENT_NEG", "ABSENT_EMPTY", "UNSET",
                   "EXISTS", "CASE_INSENS"}
    assert rs.stats.ok


@pytest.mark.parametrize("engine", ENGINES)
def test_body_is_matched_per_paragraph(tmp_path: Path, engine: str) -> None:
    rs = load(tmp_path, r"""
body SUBJECT_IS_FIRST  /^Great offer caf\xc3\xa9$/
body JOINED_LINES      /line one line two/
body ACROSS_PARAGRAPHS /paragraph\..*Money/s
body PARA_START        /^Money money/
body MULTI             /money/i
tflags MULTI multiple
meta MULTI_3           MULTI >= 3
meta MULTI_4           MULTI >= 4
body CAPPED            /money/i
tflags CAPPED multiple maxhits=2
meta CAPPED_2          CAPPED == 2
""", engine)
    got = names(rs)
    assert got == {"SUBJECT_IS_FIRST", "JOINED_LINES", "PARA_START", "MULTI", "MULTI_3", "CAPPED", "CAPPED_2"}
    multi = next(s for s in rs.evaluate(Message(MSG)) if s.name == "MULTI")
    assert multi.evidence == "Money"


@pytest.mark.parametrize("engine", ENGINES)
def test_rawbody_uri_full(tmp_path: Path, engine: str) -> None:
    html = (b"From: a@example.com\nContent-Type: text/html\nContent-Transfer-Encoding: base64\n\n"
            + __import__("base64").encodebytes(b"<html><body><b>Bold</b> <a href='http://evil.example/x'>go</a></body></html>"))
    rs = load(tmp_path, r"""
rawbody RAW_TAG   /<b>Bold<\/b>/
body    BODY_TAG  /<b>/
body    BODY_TEXT /Bold go/
uri     URI_EVIL  m{^http://evil\.example/}
uri     URI_NONE  /nothing/
full    FULL_B64  /^Content-Transfer-Encoding: base64$/m
full    FULL_DEC  /Bold/
""", engine)
    assert names(rs, html) == {"RAW_TAG", "BODY_TEXT", "URI_EVIL", "FULL_B64"}


@pytest.mark.parametrize("engine", ENGINES)
def test_meta_boolean_and_arithmetic(tmp_path: Path, engine: str) -> None:
    rs = load(tmp_path, r"""
body __A /Money/
body __B /Visit/
body __C /absent-text/
meta AND     __A && __B
meta OR      __C || __B
meta NOT     !__C
meta GROUP   (__A || __C) && !(__C && __B)
meta SUM     __A + __B + __C == 2
meta GT      __A + __B > 1
meta LT      __A + __C < 1
meta LE      (__A + __B) * 2 <= 4
meta DIV     (__A + __B) / 2 >= 1
meta DIV0    __A / __C
meta MINUS   __A - __B
meta UNDEF   __A && !UNDEFINED_RULE
meta ON_META AND && OR && !MINUS
meta NEVER   __C
""", engine)
    assert names(rs) == {"AND", "OR", "NOT", "GROUP", "SUM", "GT", "LE", "DIV", "UNDEF", "ON_META"}
    assert rs.stats.meta_errors == []


def test_meta_errors_and_loops(tmp_path: Path) -> None:
    rs = load(tmp_path, "meta BAD (A &&\nmeta L1 L2\nmeta L2 L1 || 1\nmeta WORD A == = B\n", "regex")
    errors = {p.rule: p.message for p in rs.stats.meta_errors}
    assert set(errors) == {"BAD", "L1", "L2", "WORD"}
    assert errors["L1"] == "meta dependency loop: L1 -> L2 -> L1"
    assert errors["L2"] == "depends on broken meta L1"
    assert not rs.stats.ok
    assert names(rs) == set()


def test_scores_describe_and_defaults(tmp_path: Path) -> None:
    rs = load(tmp_path, r"""
body ONE    /Money/
score ONE   3.5
describe ONE Talks about money
body FOUR   /Money/
score FOUR  1 2 3 4
body DEFAULT /Money/
body T_TEST /Money/
body NICE   /Money/
tflags NICE nice
body ZERO   /Money/
score ZERO  0
meta SEES_ZERO ZERO
body __HIDDEN /Money/
meta SEES_HIDDEN __HIDDEN
score NOT_A_RULE 5
""", "regex")
    got = {s.name: (s.score, s.description) for s in rs.evaluate(Message(MSG))}
    assert got == {"ONE": (3.5, "Talks about money"), "FOUR": (3.0, ""), "DEFAULT": (1.0, ""),
                   "T_TEST": (0.01, ""), "NICE": (-1.0, ""), "SEES_HIDDEN": (1.0, "")}
    assert rs.stats.disabled_zero_score == 1
    assert [s.name for s in rs.evaluate(Message(MSG))] == sorted(got)


@pytest.mark.parametrize("engine", ENGINES)
def test_gtube_fires_with_shipped_rules(engine: str) -> None:
    rs = RuleSet.load([shipped_rules_directory()], engine=engine)
    assert rs.stats.ok, rs.stats
    raw = b"From: a@example.com\nTo: b@example.org\nSubject: test\n\n" + GTUBE.encode() + b"\n"
    gtube = [s for s in rs.evaluate(Message(raw)) if s.name == "GTUBE"]
    assert gtube and gtube[0].score == 1000.0 and gtube[0].evidence == GTUBE


def test_unsupported_eval_is_counted_and_native_ones_run(tmp_path: Path) -> None:
    rs = load(tmp_path, r"""
header MISSING_TO  eval:check_for_missing_to_header()
header SUBJ_CAPS   eval:subject_is_all_caps()
body   HTML_ONLY   eval:check_for_mime_html_only()
body   FANCY       eval:check_for_fancy_thing('1')
body   FANCY2      eval:check_for_fancy_thing('2')
rawbody MIME_X     eval:check_for_mime('mime_unknown_arg')
header COUNT       eval:check_header_count_range('X-Twice', '2', '3')
meta   ON_FANCY    FANCY || MISSING_TO
""", "regex")
    assert rs.stats.unsupported_eval == {"check_for_fancy_thing": ["FANCY", "FANCY2"],
                                         "check_for_mime('mime_unknown_arg')": ["MIME_X"]}
    assert rs.stats.ok  # unsupported eval tests do not fail a load
    raw = b"From: a@example.com\nSubject: BUY THIS GREAT STUFF NOW\nX-Twice: 1\nX-Twice: 2\n\nhello\n"
    assert names(rs, raw) == {"MISSING_TO", "SUBJ_CAPS", "COUNT", "ON_FANCY"}


def test_native_evals_on_crafted_messages(tmp_path: Path) -> None:
    rs = load(tmp_path, r"""
body   UPPER      eval:check_for_uppercase('50', '100')
header ILLEGAL    eval:check_illegal_chars('From', '0.1', '2')
body   HTML       eval:html_test('html')
body   HTML_ONLY  eval:check_for_mime_html_only()
body   TAG_CENTER eval:html_tag_exists('center')
body   SHORT      eval:check_body_length('100')
header TRUSTED    eval:check_all_trusted()
header ENV_MATCH  eval:check_for_matching_env_and_hdr_from()
rawbody B64       eval:check_for_mime('mime_base64_count')
""", "regex")
    shout = b"From: \xe9\xe9\xe9 <a@example.com>\nTo: b@example.org\n\n" + b"THIS IS ALL SHOUTING TEXT. " * 10 + b"\n"
    assert names(rs, shout, Transaction(sender="a@example.com")) == {"UPPER", "ILLEGAL", "ENV_MATCH"}
    html = (b"Received: from x ([10.0.0.1]) by y\nFrom: a@example.com\nContent-Type: text/html\n"
            b"Content-Transfer-Encoding: base64\n\n" + __import__("base64").encodebytes(b"<center>hi</center>"))
    assert names(rs, html, Transaction(client_address="127.0.0.1")) == {
        "HTML", "HTML_ONLY", "TAG_CENTER", "SHORT", "TRUSTED", "B64"}


@pytest.mark.parametrize("engine", ENGINES)
def test_replace_tags(tmp_path: Path, engine: str) -> None:
    rs = load(tmp_path, r"""
replace_tag   V   (?:v|\\\/)
replace_tag   I   [i1!|]
replace_tag   AG  (?:<A><G>)
replace_tag   A   [a4@]
replace_tag   G   [g9]
replace_inter W1  \W?
body   FUZZY   /\b<inter W1><V><I><AG><R>\b/i
replace_tag   R   [r]
replace_rules FUZZY
body   LITERAL /<V>/
""", engine)
    raw = b"Subject: x\n\nbuy v.1.49.r today\n"
    assert names(rs, raw) == {"FUZZY"}
    assert names(rs, b"Subject: x\n\nthe <V> tag\n") == {"LITERAL"}


@pytest.mark.parametrize("engine", ENGINES)
def test_bad_regex_makes_only_that_rule_unsupported(tmp_path: Path, engine: str) -> None:
    rs = load(tmp_path, "body GOOD /Money/\nbody BAD /a{2,1}/\nheader BADMOD Subject:bogus =~ /x/\n"
                        "body EMPTY_OK /(?:)/\n", engine)
    assert [p.rule for p in rs.stats.regex_errors] == ["BAD", "BADMOD"]
    assert "does not compile" in rs.stats.regex_errors[0].message
    assert rs.stats.regex_errors[0].where.endswith("t.cf:2")
    assert names(rs) == {"GOOD", "EMPTY_OK"}


@pytest.mark.parametrize("engine", ENGINES)
def test_hostile_messages_do_not_raise(tmp_path: Path, engine: str) -> None:
    rs = RuleSet.load([shipped_rules_directory()], engine=engine)
    for raw in (b"", b"\n\n", b"garbage without headers", b"Subject: \xff\xfe\n\n\xff" * 3,
                b"Content-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: text/html\n\n<a href='",
                b"From: <<<>>>@@@\nTo: ,,,\n\nx"):
        rs.evaluate(Message(raw))


def test_unknown_engine_is_an_error() -> None:
    with pytest.raises(ValueError, match="rules_engine"):
        RuleSet.load([], engine="pcre")


def test_check_command(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    (good / "a.cf").write_text("body A /x/\nbody E eval:nope()\nheader H exists:X\nmeta M A && E\n")
    out = io.StringIO()
    assert rules_check_command([str(good)], out=out) == 0
    text = out.getvalue()
    assert "rules loaded: 3" in text and "nope: 1 (E)" in text and "result: OK" in text
    bad = tmp_path / "bad.cf"
    bad.write_text("body A /x/\nbody B /a{2,1}/\nbody C /unterminated\n")
    out = io.StringIO()
    assert rules_check_command([str(bad)], out=out) == 1
    text = out.getvalue()
    assert "regex errors: 1" in text and f"{bad}:2: B: does not compile" in text
    assert "parse errors: 1" in text and f"{bad}:3: C:" in text and "result: FAILED" in text


def _uppercase_by_walking(lines: list[bytes]) -> float:
    """check_for_uppercase's percentage counted byte by byte (the reference)."""
    length = lower = upper = 0
    for line in lines:
        if not re.search(rb"\S\s+\S", line) or re.match(rb"^(?:[A-Za-z0-9+/=]{60,76} ){2}", line):
            continue
        length += len(line)
        lower += sum(1 for b in line if 97 <= b <= 122 or 48 <= b <= 57)
        upper += sum(1 for b in line if 65 <= b <= 90)
    return 0.0 if length < 200 or upper + lower == 0 else upper / (upper + lower) * 100


@pytest.mark.parametrize("lines", [
    [b"THIS IS ALL SHOUTING TEXT. " * 10],
    [b"Mixed Case words 123 and MORE caps \xc3\xa9\xff here\n"] * 8,
    [b"short LINE\n"],  # under 200 bytes: 0
    [b"nospaces" * 40, b"QUIET\n"],  # no inner space: not counted
    [(b"QUJD" * 16 + b" ") * 3 + b"tail\n"] * 5,  # base64-looking lines are skipped
    [b"... --- !!! ??? *** " * 20],  # no letters at all: 0
    [],
])
def test_uppercase_percent_counts_like_a_byte_walk(lines: list[bytes]) -> None:
    assert uppercase_percent(lines) == _uppercase_by_walking(lines)


def test_uppercase_rules_share_one_count(tmp_path: Path) -> None:
    rs = load(tmp_path, """
body   UPPER_50   eval:check_for_uppercase('50', '100')
body   UPPER_25   eval:check_for_uppercase('25', '50')
body   UPPER_0    eval:check_for_uppercase('0', '25')
""", "regex")
    shout = b"From: a@example.com\nTo: b@example.org\n\n" + b"THIS IS ALL SHOUTING TEXT. " * 10 + b"\n"
    third = b"From: a@example.com\nTo: b@example.org\n\n" + b"SHOUT some more words in lower case. " * 10 + b"\n"
    assert names(rs, shout) == {"UPPER_50"}
    assert names(rs, third) == {"UPPER_0"}
