"""What makes SpamAssassin's heaviest rules cheap, and that it changes no result.

Three devices let Hyperscan pre-filter rules it used to refuse (see matcher and coarse):
coarse look-alike letters for ReplaceTags rules, the split of an over-long expression at
its largest alternation, and the match-end count for ``(?:X){n}`` rules. Each must only
ever widen what Hyperscan reports; ``regex`` decides every hit.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from filterd.content.message import Message
from filterd.content.rules import RuleSet
from filterd.content.rules.coarse import coarse_tag
from filterd.content.rules.expr import ExprError, compile_expr, compile_metas
from filterd.content.rules import matcher
from filterd.content.rules.matcher import PatternSet, hyperscan_available, split_alternation

needs_hyperscan = pytest.mark.skipif(not hyperscan_available(), reason="hyperscan module not installed")

# A look-alike letter in the style of ReplaceTags rule files (written for this test).
LETTER_A = (r"(?:[aA@\xe0]|[\xc3][\xa0-\xa5]|[\xc4][\x81\x83]|"
            r"[\xf0][\x9d](?:[\x90][\x9a\xb4]|[\x91][\x8e\xa8])|&\#(?:97|x61);)")


def test_coarse_letter_matches_everything_the_letter_matches() -> None:
    coarse = coarse_tag(LETTER_A)
    assert len(coarse) < len(LETTER_A)
    exact_re, coarse_re = re.compile(LETTER_A.encode()), re.compile(coarse.encode())
    samples = [bytes([b]) for b in range(256)] + [b"&#97;", b"&#x61;", b"rn"]
    samples += [chr(cp).encode("utf-8") for cp in range(0x80, 0x20000) if not 0xD800 <= cp < 0xE000]
    matched = [s for s in samples if exact_re.fullmatch(s)]
    assert len(matched) > 10
    assert all(coarse_re.fullmatch(s) for s in matched)
    assert not coarse_re.fullmatch(b"b")  # still a letter, not anything at all


def test_coarse_tag_leaves_other_tags_alone() -> None:
    for value in (r"(?:jpe?g|gif|png)", r"[\s\d_*]", r"(?:\d{1,3}\s?)", "plain"):
        assert coarse_tag(value) == value


@pytest.mark.parametrize("pattern, limit", [
    (r"(?:^|\s)(?:abc|def|(?:gh|ij)kl)[x]", 12),
    (r"(?i:ab|cd)(?:x|y)", 9),
    (r"x(?:a|b)y(?:c|d)z(?:e|f)", 12),
])
def test_split_alternation_pieces_match_what_the_pattern_matches(pattern: str, limit: int) -> None:
    pieces = split_alternation(pattern, limit)
    assert pieces is not None and len(pieces) > 1
    assert all(len(p) <= limit for p in pieces)
    whole = re.compile(pattern)
    parts = [re.compile(p) for p in pieces]
    for text in ("abcx", " defx", "ijklx", "ABy", "cdx", "CDY", "xaycze", "xbydzf", "xaydze", "abc", "cd"):
        assert bool(whole.search(text)) == any(p.search(text) for p in parts), text


def test_split_alternation_refuses_what_it_cannot_split() -> None:
    assert split_alternation(r"(?=a|b)cxxxxxx", 8) is None  # a look-ahead is not a choice of texts
    assert split_alternation(r"(a|b)cxxxxx\1", 8) is None  # back-references name groups by number
    assert split_alternation(r"(?:ab|cd)+xxxxxx", 8) is None  # a repeated group
    assert split_alternation(r"short", 8) == ["short"]


def _ruleset(tmp_path: Path, text: str) -> RuleSet:
    (tmp_path / "r.cf").write_text(text)
    return RuleSet.load([str(tmp_path / "r.cf")], engine="hyperscan")


def _fired(ruleset: RuleSet, body: str) -> set[str]:
    raw = ("From: a@example.com\nTo: b@example.com\nSubject: hello\n"
           "Content-Type: text/plain; charset=utf-8\n\n" + body).encode()
    return {s.name for s in ruleset.evaluate(Message(raw))}


@needs_hyperscan
def test_huge_look_alike_rule_is_prefiltered_by_hyperscan(tmp_path: Path) -> None:
    """A rule spelled with look-alike letters, expanded beyond Hyperscan's length limit,
    ran as a regex on every body line; now Hyperscan pre-filters it, with the same hits."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    tags = []
    for k, ch in enumerate(letters):
        # each letter: itself, upper case, and a run of two-byte look-alikes
        alts = [f"[{ch}{ch.upper()}]"] + [f"[\\x{0xc3 + k % 4:02x}][\\x{0x80 + j:02x}]" for j in range(40)]
        tags.append(f"replace_tag L{ch.upper()} (?:{'|'.join(alts)})\n")
    words = ["wire", "the", "payment", "today", "please", "urgent", "bitcoin", "wallet"] * 8
    phrase = r"\s".join("".join(f"<L{c.upper()}>" for c in w) for w in words[:3])
    alternatives = "|".join(r"\s".join("".join(f"<L{c.upper()}>" for c in w) for w in words[i:i + 3])
                            for i in range(0, 24, 3))
    rules = "".join(tags) + (
        f"body LOOKALIKE /(?:^|\\s)(?:{alternatives}|{phrase})\\b/i\n"
        "score LOOKALIKE 1.0\nreplace_rules LOOKALIKE\n")
    ruleset = _ruleset(tmp_path, rules)
    assert ruleset.stats.regex_only == 0
    assert ruleset.stats.hyperscan_prefilter == 1
    assert "LOOKALIKE" in _fired(ruleset, "Please wire the payment now.\n")
    assert "LOOKALIKE" in _fired(ruleset, "w\u00c3re the payment\n".replace("\u00c3", "\u00c2"))
    assert "LOOKALIKE" not in _fired(ruleset, "Please send the payment now.\n")


@needs_hyperscan
def test_repeated_group_rule_counts_where_its_body_ends(tmp_path: Path) -> None:
    rules = ("body FORM5 /(?:(?:name|address|city|phone)[:\\s,]{1,100}){5}/i\nscore FORM5 1.0\n"
             "body FORM3 /(?:(?:name|address|city|phone)[:\\s,]{1,100}){3,4}/i\nscore FORM3 1.0\n")
    ruleset = _ruleset(tmp_path, rules)
    body_set = ruleset._sets[next(iter(ruleset._sets))]
    assert len(body_set._repeats) == 2  # both got the match-end filter
    assert _fired(ruleset, "Name: address: city, phone: name:\n") == {"FORM5", "FORM3"}
    assert _fired(ruleset, "Name: address: city, phone\n") == {"FORM3"}
    assert _fired(ruleset, "Name: address\n") == set()
    assert _fired(ruleset, "name name name name name name\n") == {"FORM5", "FORM3"}


def test_metas_compiled_as_one_function_agree_with_each_expression() -> None:
    """compile_metas (every meta of a set in one function over locals) gives each meta the
    value its own expression gives, Perl's semantics included: && and || return the
    deciding operand, ! and comparisons give 1 or 0, division by zero gives 0, and a meta
    reads the metas before it."""
    metas = [
        ("M1", "A && B"),
        ("M2", "(A || B) + C"),
        ("M3", "!M1 && (C > 1 || D == 0)"),
        ("M4", "A / D + -B * 2"),
        ("M5", "M2 >= 2 && M3 != 1 || not M4"),
        ("M6", "(M1 + M2 + M3 + M4 + M5 + UNKNOWN) / (A - A)"),
        ("M7", "M6 <= 0 and (B < 1 or C)"),
    ]
    run = compile_metas(metas)
    single = {name: compile_expr(text)[0] for name, text in metas}
    for a in (0, 1, 3):
        for b in (0, 1, 2.5):
            for c in (0, 2):
                for d in (0, 4):
                    base = {k: v for k, v in (("A", a), ("B", b), ("C", c), ("D", d)) if v}
                    expected = dict(base)
                    for name, _ in metas:
                        value = single[name](expected)
                        if value:
                            expected[name] = value
                    got = dict(base)
                    run(got)
                    assert got == expected
                    assert list(got) == list(expected)


def test_meta_names_are_never_python() -> None:
    """A rule name that is a Python keyword or builtin is still just a rule name."""
    run = compile_metas([("lambda", "None + import"), ("class", "lambda && print")])
    hits: dict[str, float] = {"None": 1, "import": 2, "print": 3}
    run(hits)
    assert hits["lambda"] == 3 and hits["class"] == 3


@needs_hyperscan
def test_costly_sub_rule_runs_only_when_its_result_can_matter(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A sub-rule with a coarse Hyperscan filter (here the match-end count of a repeated
    group) is confirmed with the regex only when the scored rules depend on it; either
    way the rules that fire are those the full evaluation gives."""
    rules = ("body __FORM5 /(?:(?:name|address|city|phone)[:\\s,]{1,100}){5}/i\n"
             "body __LIST /mailing list/\n"
             "meta FORM_SPAM __FORM5 && !__LIST\nscore FORM_SPAM 1.0\n")
    ruleset = _ruleset(tmp_path, rules)
    confirmed: list[int] = []
    original = PatternSet.confirm

    def spy(self: PatternSet, i: int, texts: list[bytes]) -> object:
        confirmed.append(i)
        return original(self, i, texts)

    monkeypatch.setattr(PatternSet, "confirm", spy)
    form = "Name: address: city, phone: name:\n\n"
    assert _fired(ruleset, form + "mailing list\n") == set()
    assert confirmed == []  # FORM_SPAM is off whatever __FORM5 says: its regex never ran
    assert _fired(ruleset, form) == {"FORM_SPAM"}
    assert len(confirmed) == 1
    assert _fired(ruleset, "name address city phone\n\n") == set()  # filtered out by Hyperscan
    assert len(confirmed) == 1


def test_metas_run_again_with_clear_forget_what_no_longer_holds() -> None:
    """The function the evaluator re-runs over a dict holding an earlier result removes
    the metas that are now 0, so trying another value of a sub-rule leaves no trace."""
    run = compile_metas([("M1", "A && !B"), ("M2", "M1 || C")], clear=True)
    hits: dict[str, float] = {"A": 1}
    run(hits)
    assert hits == {"A": 1, "M1": 1.0, "M2": 1.0}
    hits["B"] = 1
    run(hits)
    assert hits == {"A": 1, "B": 1}


@needs_hyperscan
def test_open_ended_repeat_reaches_hyperscan_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``{n,}`` with a small n is no reason to loosen a pattern: SpamAssassin's
    __LONGWORDS_A, loosened to ``\\b(?:[a-z]+[\\s.]+)+``, sent every line to the regex."""
    ruleset = _ruleset(tmp_path, "body LONGWORDS /\\b(?:[a-z]{8,}[\\s\\.]+){6}/\nscore LONGWORDS 1.0\n")
    ran: list[str] = []
    original = matcher._run

    def spy(rule: matcher.PatternRule, text: bytes) -> matcher.Match | None:
        ran.append(rule.name)
        return original(rule, text)

    monkeypatch.setattr(matcher, "_run", spy)
    assert _fired(ruleset, "short words on this line only\n") == set()
    assert ran == []
    assert _fired(ruleset, "extremely lengthily sentences containing enormously elaborate vocabulary.\n") \
        == {"LONGWORDS"}
    assert ran == ["LONGWORDS"]


@needs_hyperscan
def test_pattern_with_an_embedded_anchor_is_prefiltered_without_it(tmp_path: Path) -> None:
    """Hyperscan refuses an end anchor inside a pattern (SpamAssassin's T_FUZZY_OPTOUT
    starts ``(?:$|\\W)``) even in prefilter mode; without its anchors it is a superset
    Hyperscan takes, instead of a regex run on every body line."""
    ruleset = _ruleset(tmp_path, "body OPTOUT /(?:$|\\W)(?=o)(?!opt[-\\s]?out)op+t[-\\s]?out(?:$|\\W)/i\n"
                                 "score OPTOUT 1.0\n")
    assert ruleset.stats.regex_only == 0 and ruleset.stats.hyperscan_prefilter == 1
    assert _fired(ruleset, "To opppt out, reply.\n") == {"OPTOUT"}
    assert _fired(ruleset, "To opt out, reply.\n") == set()
    assert _fired(ruleset, "Nothing here.\n") == set()


@pytest.mark.parametrize("text, problem", [
    (" + ".join(f"R{i}" for i in range(1000)), "nested deeper than 400 operations"),
    ("(" * 60 + "A" + ")" * 60, "nested deeper than 50 levels"),
    ("!" * 60 + "A", "nested deeper than 50 levels"),
])
def test_expression_too_deep_for_python_is_a_precise_error(text: str, problem: str) -> None:
    """A meta Python could not compile (or the parser follow) is refused by name, never
    a RecursionError that would stop the whole rule set from loading."""
    with pytest.raises(ExprError, match=problem):
        compile_expr(text)


def test_meta_too_deep_is_reported_and_the_rest_load(tmp_path: Path) -> None:
    deep = " + ".join(f"R{i}" for i in range(1000))
    (tmp_path / "r.cf").write_text(f"body R1 /x/\nmeta DEEP {deep}\nscore DEEP 1\nmeta OK R1\nscore OK 1\n")
    ruleset = RuleSet.load([str(tmp_path / "r.cf")], engine="regex")
    assert [p.rule for p in ruleset.stats.meta_errors] == ["DEEP"]
    assert "OK" in _fired(ruleset, "x\n")
