"""Matching many patterns against the same texts: Hyperscan as a pre-filter, ``regex`` decides.

A :class:`PatternSet` holds every pattern of one rule type (or of one header). With the
Hyperscan engine, all patterns Hyperscan can compile go into one database and each text
is scanned once; only the patterns Hyperscan reports are then run with ``regex``, which
confirms the hit, counts ``tflags multiple`` matches and captures evidence. Patterns
Hyperscan cannot compile exactly (back-references, look-around, atomic groups...) are
compiled in its prefilter mode, a superset approximation, and confirmed the same way;
the few it rejects even then run with ``regex`` on every text. Because ``regex`` has the
last word on every hit, both engines report identical results; Hyperscan only decides
how little work that takes.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import regex

from filterd.content.rules.perlre import PerlRegex

try:
    import hyperscan
except ImportError:  # pragma: no cover - hyperscan is a declared dependency of the fast path
    hyperscan = None  # type: ignore[assignment]

EVIDENCE_MAX = 80
# Hyperscan's compile time explodes on long alternations (ReplaceTags expansions) combined
# with bounded repeats (``.{0,200}``): minutes for a few dozen rules. Such patterns are
# given to it with every bounded repeat made unbounded (a superset, see perlre).
HS_MAX_PATTERN = 1000
HS_MAX_REPEAT = 100
_BOUNDED = re.compile(r"\{(\d+)(?:,(\d*))?\}")
# constructs Hyperscan only takes in prefilter mode
_HS_UNSUPPORTED = re.compile(
    r"\\[1-9gkKG]|\(\?(?:[=!>(]|<[=!]|P?<\w+>|\?)|(?<!\\)[*+?}]\+|\(\?[-imsx]*\)(?!$)")


def hyperscan_available() -> bool:
    return hyperscan is not None


@dataclass
class PatternRule:
    """One compiled pattern rule inside a :class:`PatternSet`."""

    name: str
    perl: PerlRegex
    compiled: regex.Pattern[bytes]
    multiple: bool = False
    maxhits: int = 0  # 0 = unlimited (only meaningful with ``multiple``)


@dataclass(frozen=True)
class Match:
    count: int
    evidence: bytes


class PatternSet:
    """Patterns matched together against a list of texts (paragraphs, URIs, one header...)."""

    def __init__(self, rules: list[PatternRule], use_hyperscan: bool):
        self.rules = rules
        self.hs_exact = self.hs_prefilter = 0
        self._db = None
        self._always: list[int] = list(range(len(rules)))  # indexes checked with regex on every text
        self._local = threading.local()
        if use_hyperscan and hyperscan is not None and rules:
            self._build_hyperscan()
        # what each pattern does with an empty text (absent headers are empty strings)
        self._empty = self._regex_only([b""], list(range(len(rules))))

    @property
    def regex_only(self) -> int:
        return len(self._always) if self._db is not None else len(self.rules)

    def _build_hyperscan(self) -> None:
        """One database for the set; per-pattern compiles only if the whole set fails.

        Whether a pattern needs prefilter mode is decided from its syntax (Hyperscan lacks
        back-references, look-around, atomic groups, possessive quantifiers...), so the
        usual case is a single compile call.
        """
        assert hyperscan is not None
        entries: list[tuple[int, bytes, int]] = []
        for i, rule in enumerate(self.rules):
            flags = hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_ALLOWEMPTY
            if rule.perl.ignorecase:
                flags |= hyperscan.HS_FLAG_CASELESS
            if rule.perl.multiline:
                flags |= hyperscan.HS_FLAG_MULTILINE
            if rule.perl.dotall:
                flags |= hyperscan.HS_FLAG_DOTALL
            text = rule.perl.hyperscan if _hs_suitable(rule.perl.hyperscan) else rule.perl.hyperscan_loose
            if _HS_UNSUPPORTED.search(text):
                flags |= hyperscan.HS_FLAG_PREFILTER
            entries.append((i, text.encode("latin-1"), flags))
        db = _hs_database(entries)
        always: list[int] = []
        if db is None:  # find the patterns Hyperscan refuses, one by one
            kept: list[tuple[int, bytes, int]] = []
            for i, expr, flags in entries:
                for extra in (0, hyperscan.HS_FLAG_PREFILTER):
                    if _hs_database([(i, expr, flags | extra)]) is not None:
                        kept.append((i, expr, flags | extra))
                        break
                else:
                    always.append(i)
            entries = kept
            db = _hs_database(entries) if entries else None
            if db is None:
                return
        self._db = db
        self._always = always
        self.hs_prefilter = sum(1 for _, _, f in entries if f & hyperscan.HS_FLAG_PREFILTER)
        self.hs_exact = len(entries) - self.hs_prefilter

    def _scratch(self) -> object:
        """One Hyperscan scratch per thread: a scratch cannot be shared by concurrent scans."""
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            assert hyperscan is not None
            scratch = self._local.scratch = hyperscan.Scratch(self._db)
        return scratch

    def match(self, texts: list[bytes]) -> dict[int, Match]:
        """Rule index -> Match for every rule matching at least one of ``texts``."""
        if self._db is None:
            return self._regex_only(texts, range(len(self.rules)))
        found: dict[int, Match] = {}
        rules = self.rules
        scratch = self._scratch()
        for text in texts:
            if not text:
                for i, m in self._empty.items():
                    _add(found, i, m, rules[i])
                continue
            candidates: list[int] = []
            self._db.scan(text, match_event_handler=_collect, context=candidates, scratch=scratch)
            candidates.extend(self._always)
            for i in candidates:
                rule = rules[i]
                if i in found and not rule.multiple:
                    continue
                m = _run(rule, text)
                if m is not None:
                    _add(found, i, m, rule)
        return found

    def _regex_only(self, texts: list[bytes], indexes: "range | list[int]") -> dict[int, Match]:
        found: dict[int, Match] = {}
        rules = self.rules
        for i in indexes:
            rule = rules[i]
            for text in texts:
                m = _run(rule, text)
                if m is not None:
                    _add(found, i, m, rule)
                    if not rule.multiple:
                        break
        return found


def _collect(rule_id: int, start: int, end: int, flags: int, context: list[int]) -> None:
    context.append(rule_id)


def _run(rule: PatternRule, text: bytes) -> Match | None:
    if not rule.multiple:
        m = rule.compiled.search(text)
        return None if m is None else Match(1, m.group(0)[:EVIDENCE_MAX])
    count = 0
    evidence = b""
    for m in rule.compiled.finditer(text):
        if not count:
            evidence = m.group(0)[:EVIDENCE_MAX]
        count += 1
        if rule.maxhits and count >= rule.maxhits:
            break
    return Match(count, evidence) if count else None


def _add(found: dict[int, Match], i: int, m: Match, rule: PatternRule) -> None:
    old = found.get(i)
    if old is None:
        found[i] = m
        return
    count = old.count + m.count
    if rule.maxhits:
        count = min(count, rule.maxhits)
    found[i] = Match(count, old.evidence)


def _hs_suitable(pattern: str) -> bool:
    if len(pattern) > HS_MAX_PATTERN:
        return False
    for m in _BOUNDED.finditer(pattern):
        upper = m.group(2)
        if upper == "" or int(upper if upper is not None else m.group(1)) >= HS_MAX_REPEAT:
            return False
    return True


def _hs_database(entries: list[tuple[int, bytes, int]]) -> object | None:
    assert hyperscan is not None
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    try:
        db.compile(expressions=[e for _, e, _ in entries], ids=[i for i, _, _ in entries],
                   elements=len(entries), flags=[f for _, _, f in entries])
    except hyperscan.error:
        return None
    return db
