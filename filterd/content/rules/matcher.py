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

import hashlib
import os
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
HS_HEAVY_GROUP = 16
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
    compiled: regex.Pattern[bytes] | re.Pattern[bytes]
    multiple: bool = False
    maxhits: int = 0  # 0 = unlimited (only meaningful with ``multiple``)


@dataclass(frozen=True)
class Match:
    count: int
    evidence: bytes


class PatternSet:
    """Patterns matched together against a list of texts (paragraphs, URIs, one header...)."""

    def __init__(self, rules: list[PatternRule], use_hyperscan: bool, cache: "HsCache | None" = None):
        self.rules = rules
        self.hs_exact = self.hs_prefilter = 0
        self._dbs: list = []
        self._always: list[int] = list(range(len(rules)))  # indexes checked with regex on every text
        self._local = threading.local()
        self._cache = cache
        if use_hyperscan and hyperscan is not None and rules:
            self._build_hyperscan()
        # what each pattern does with an empty text (absent headers are empty strings)
        self._empty = self._regex_only([b""], list(range(len(rules))))

    @property
    def regex_only(self) -> int:
        return len(self._always) if self._dbs else len(self.rules)

    def _build_hyperscan(self) -> None:
        """Hyperscan databases for the set: one for plain patterns, small ones for heavy ones.

        Whether a pattern needs prefilter mode is decided from its syntax (Hyperscan lacks
        back-references, look-around, atomic groups, possessive quantifiers...), so the
        usual case is one compile call per database. Heavy patterns (prefilter mode or
        loosened, see :data:`HS_MAX_PATTERN`) go in groups of :data:`HS_HEAVY_GROUP`:
        compiling them together costs far more than apart, and scanning a few more small
        databases costs microseconds.
        """
        assert hyperscan is not None
        light: list[tuple[int, bytes, int]] = []
        heavy: list[tuple[int, bytes, int]] = []
        for i, rule in enumerate(self.rules):
            flags = hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_ALLOWEMPTY
            if rule.perl.ignorecase:
                flags |= hyperscan.HS_FLAG_CASELESS
            if rule.perl.multiline:
                flags |= hyperscan.HS_FLAG_MULTILINE
            if rule.perl.dotall:
                flags |= hyperscan.HS_FLAG_DOTALL
            suitable = _hs_suitable(rule.perl.hyperscan)
            text = rule.perl.hyperscan if suitable else rule.perl.hyperscan_loose
            if _HS_UNSUPPORTED.search(text):
                flags |= hyperscan.HS_FLAG_PREFILTER
            entry = (i, text.encode("latin-1"), flags)
            (light if suitable and not flags & hyperscan.HS_FLAG_PREFILTER else heavy).append(entry)
        groups = [light] + [heavy[k:k + HS_HEAVY_GROUP] for k in range(0, len(heavy), HS_HEAVY_GROUP)]
        always: list[int] = []
        for group in groups:
            if not group:
                continue
            db = _hs_database(group, self._cache)
            if db is None:  # find the patterns Hyperscan refuses, one by one
                kept: list[tuple[int, bytes, int]] = []
                for i, expr, flags in group:
                    for extra in (0, hyperscan.HS_FLAG_PREFILTER):
                        if _hs_database([(i, expr, flags | extra)], self._cache) is not None:
                            kept.append((i, expr, flags | extra))
                            break
                    else:
                        always.append(i)
                group = kept
                db = _hs_database(group, self._cache) if group else None
                if db is None:
                    always.extend(i for i, _, _ in group)
                    continue
            self._dbs.append(db)
            prefilter = sum(1 for _, _, f in group if f & hyperscan.HS_FLAG_PREFILTER)
            self.hs_prefilter += prefilter
            self.hs_exact += len(group) - prefilter
        self._always = sorted(always)

    def _scratches(self) -> list[object]:
        """Hyperscan scratch space per thread: a scratch cannot serve two scans at once."""
        scratches = getattr(self._local, "scratches", None)
        if scratches is None:
            assert hyperscan is not None
            scratches = self._local.scratches = [hyperscan.Scratch(db) for db in self._dbs]
        return scratches

    def match(self, texts: list[bytes]) -> dict[int, Match]:
        """Rule index -> Match for every rule matching at least one of ``texts``."""
        if not self._dbs:
            return self._regex_only(texts, range(len(self.rules)))
        found: dict[int, Match] = {}
        rules = self.rules
        dbs = list(zip(self._dbs, self._scratches()))
        for text in texts:
            if not text:
                for i, empty in self._empty.items():
                    _add(found, i, empty, rules[i])
                continue
            candidates: list[int] = []
            for db, scratch in dbs:
                db.scan(text, match_event_handler=_collect, context=candidates, scratch=scratch)
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


def _hs_database(entries: list[tuple[int, bytes, int]],
                 cache: HsCache | None = None) -> hyperscan.Database | None:
    assert hyperscan is not None
    key = cache.key(entries) if cache is not None else ""
    if cache is not None:
        cached = cache.get(key)
        if cached is not None:
            return None if isinstance(cached, bytes) else cached  # b"": a compile failure
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    try:
        db.compile(expressions=[e for _, e, _ in entries], ids=[i for i, _, _ in entries],
                   elements=len(entries), flags=[f for _, _, f in entries])
    except hyperscan.error:
        if cache is not None:
            cache.put(key, None)
        return None
    if cache is not None:
        cache.put(key, db)
    return db


class HsCache:
    """Compiled Hyperscan databases on disk, so a restart does not recompile every rule.

    Compiling Debian's whole SpamAssassin rule set takes tens of seconds; loading the
    compiled databases takes milliseconds. A database is stored under the SHA-256 of
    the Hyperscan version and exactly what was compiled (expressions, ids, flags), with
    a SHA-256 of its bytes that is checked before Hyperscan is given them (Hyperscan's
    own deserialisation does not detect every corruption). The files are Hyperscan's
    serialisation format, never pickle; a compile failure is remembered as an empty
    entry. Any problem with the cache only means compiling again.
    """

    MAGIC = b"filterd-hsdb-1\n"

    def __init__(self, directory: str):
        self.directory = directory

    def key(self, entries: list[tuple[int, bytes, int]]) -> str:
        h = hashlib.sha256(getattr(hyperscan, "__version__", "").encode())
        for i, expr, flags in entries:
            h.update(b"%d\0%d\0%d\0" % (i, flags, len(expr)))
            h.update(expr)
        return h.hexdigest()

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, key[:2], key)

    def get(self, key: str) -> hyperscan.Database | bytes | None:
        """The database, ``b""`` for a remembered failure, or None when not cached."""
        try:
            with open(self._path(key), "rb") as fh:
                data = fh.read()
        except OSError:
            return None
        if not data.startswith(self.MAGIC):
            return None
        digest, _, payload = data[len(self.MAGIC):].partition(b"\n")
        if hashlib.sha256(payload).hexdigest().encode() != digest:
            return None
        if not payload:
            return b""
        try:
            return hyperscan.loadb(payload, mode=hyperscan.HS_MODE_BLOCK)
        except hyperscan.error:
            return None

    def put(self, key: str, db: hyperscan.Database | None) -> None:
        payload = hyperscan.dumpb(db) if db is not None else b""
        data = self.MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload
        path = self._path(key)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except OSError:
            pass  # a cache that cannot be written costs compile time, nothing else
