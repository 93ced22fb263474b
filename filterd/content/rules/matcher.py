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

import threading
from dataclasses import dataclass

import regex

from filterd.content.rules.perlre import PerlRegex

try:
    import hyperscan
except ImportError:  # pragma: no cover - hyperscan is a declared dependency of the fast path
    hyperscan = None  # type: ignore[assignment]

EVIDENCE_MAX = 80


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
        assert hyperscan is not None
        exprs: list[bytes] = []
        ids: list[int] = []
        flags: list[int] = []
        always: list[int] = []
        for i, rule in enumerate(self.rules):
            base = hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_ALLOWEMPTY
            if rule.perl.ignorecase:
                base |= hyperscan.HS_FLAG_CASELESS
            if rule.perl.multiline:
                base |= hyperscan.HS_FLAG_MULTILINE
            if rule.perl.dotall:
                base |= hyperscan.HS_FLAG_DOTALL
            try:
                expr = rule.perl.hyperscan.encode("latin-1")
            except UnicodeEncodeError:
                always.append(i)
                continue
            for extra in (0, hyperscan.HS_FLAG_PREFILTER):
                if _hs_compiles(expr, base | extra):
                    exprs.append(expr)
                    ids.append(i)
                    flags.append(base | extra)
                    if extra:
                        self.hs_prefilter += 1
                    else:
                        self.hs_exact += 1
                    break
            else:
                always.append(i)
        if not exprs:
            return
        db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        try:
            db.compile(expressions=exprs, ids=ids, elements=len(exprs), flags=flags)
        except hyperscan.error:
            # all compiled one by one but not together (resource limits): regex does it all
            self.hs_exact = self.hs_prefilter = 0
            return
        self._db = db
        self._always = always

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


def _hs_compiles(expr: bytes, flags: int) -> bool:
    assert hyperscan is not None
    try:
        hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK).compile(
            expressions=[expr], ids=[0], elements=1, flags=[flags])
    except hyperscan.error:
        return False
    return True
