"""Matching many patterns against the same texts: Hyperscan as a pre-filter, ``regex`` decides.

A :class:`PatternSet` holds every pattern of one rule type (or of one header). With the
Hyperscan engine, all patterns Hyperscan can compile go into one database and each text
is scanned once; only the patterns Hyperscan reports are then run with ``regex``, which
confirms the hit, counts ``tflags multiple`` matches and captures evidence. Patterns
Hyperscan cannot compile exactly (back-references, look-around, atomic groups...) are
compiled in its prefilter mode, a superset approximation, and confirmed the same way;
the few it rejects even then get one more try without their anchors (a superset too),
and any it still rejects run with ``regex`` on every text. Because ``regex`` has the
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

from filterd.content.rules.coarse import _sre_c, parse_tree
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
#: Longer expressions are split at their largest alternation (see :func:`split_alternation`):
#: Hyperscan refuses any over 16,384 bytes ("Pattern length exceeds limit") and takes
#: those over a few thousand (SpamAssassin's look-alike spellings of ``__PAY_ME``) only
#: in prefilter mode, so approximately that it reported 3 of 4 body lines (pieces of at
#: most 4,000 bytes compile exactly and reported none of the 1,174 lines of 100 messages).
HS_SPLIT_LENGTH = 4_000
#: Hyperscan's own limit on an expression's length (16,384 bytes), with a margin.
HS_MAX_LENGTH = 16_000
#: Most expressions one rule is split into; beyond, it is left to ``regex`` alone.
HS_MAX_PIECES = 64
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
    #: A superset of ``perl`` Hyperscan scans instead, when ``perl`` is too big for it
    #: (ReplaceTags look-alike letters, see :mod:`coarse`); ``regex`` still decides.
    prefilter: PerlRegex | None = None


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
        self._split = False  # some rule is several Hyperscan expressions (one id, maybe reported twice)
        self._repeats: dict[int, tuple[hyperscan.Database, int]] = {}  # rule index -> (its body's database, count)
        if use_hyperscan and hyperscan is not None and rules:
            self._build_hyperscan()
        # what each pattern does with an empty text (absent headers are empty strings)
        self._empty = self._regex_only([b""], list(range(len(rules))))
        #: Rules whose Hyperscan filter is coarse (look-alike letters, the match-end count
        #: of a repeated group), so that its candidates are mostly lines the rule does not
        #: match, at up to milliseconds of backtracking each: worth deferring (see match).
        self.costly = frozenset(i for i, rule in enumerate(rules)
                                if (i in self._repeats or rule.prefilter is not None) and not rule.multiple)

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
        Entry = tuple[int, bytes, int]
        light: list[Entry] = []
        heavy: list[list[Entry]] = []  # per rule: its expressions (several when split)
        for i, rule in enumerate(self.rules):
            flags = hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_ALLOWEMPTY
            if rule.perl.ignorecase:
                flags |= hyperscan.HS_FLAG_CASELESS
            if rule.perl.multiline:
                flags |= hyperscan.HS_FLAG_MULTILINE
            if rule.perl.dotall:
                flags |= hyperscan.HS_FLAG_DOTALL
            perl = rule.prefilter or rule.perl
            suitable = _hs_suitable(perl.hyperscan)
            text = perl.hyperscan if suitable else perl.hyperscan_loose
            if _HS_UNSUPPORTED.search(text):
                flags |= hyperscan.HS_FLAG_PREFILTER
            pieces = _pieces(text)
            if len(pieces) > 1:
                self._split = True
            entries = [(i, piece.encode("latin-1"), flags) for piece in pieces]
            if suitable and not flags & hyperscan.HS_FLAG_PREFILTER and rule.prefilter is None:
                light.extend(entries)
            else:
                heavy.append(entries)
        groups = [light] + [[e for rule in heavy[k:k + HS_HEAVY_GROUP] for e in rule]
                            for k in range(0, len(heavy), HS_HEAVY_GROUP)]
        always: list[int] = []
        for group in groups:
            if not group:
                continue
            db = _hs_database(group, self._cache)
            if db is None:  # find the patterns Hyperscan refuses, one rule (all its pieces) at a time
                kept: list[Entry] = []
                by_rule: dict[int, list[Entry]] = {}
                for entry in group:
                    by_rule.setdefault(entry[0], []).append(entry)
                for i, entries in by_rule.items():
                    # as written, in prefilter mode, then without anchors (a superset:
                    # Hyperscan refuses an end anchor inside a pattern, "(?:$|\W)foo")
                    unanchored = [(j, _without_anchors(expr), flags) for j, expr, flags in entries]
                    for extra, tried in ((0, entries), (hyperscan.HS_FLAG_PREFILTER, entries),
                                         (hyperscan.HS_FLAG_PREFILTER, unanchored)):
                        mine = [(j, expr, flags | extra) for j, expr, flags in tried]
                        if _hs_database(mine, self._cache) is not None:
                            kept.extend(mine)
                            break
                    else:
                        always.append(i)
                group = kept
                db = _hs_database(group, self._cache) if group else None
                if db is None:
                    always.extend(dict.fromkeys(i for i, _, _ in group))
                    continue
            self._dbs.append(db)
            ids = {i: f for i, _, f in group}
            prefilter = sum(1 for i, f in ids.items()
                            if f & hyperscan.HS_FLAG_PREFILTER or self.rules[i].prefilter is not None)
            self.hs_prefilter += prefilter
            self.hs_exact += len(ids) - prefilter
        self._always = sorted(always)
        for i, rule in enumerate(self.rules):
            if i not in always and (filt := _repeat_filter(rule, self._cache)) is not None:
                self._repeats[i] = filt

    def _scratches(self) -> list[object]:
        """Hyperscan scratch space per thread: a scratch cannot serve two scans at once."""
        scratches = getattr(self._local, "scratches", None)
        if scratches is None:
            assert hyperscan is not None
            scratches = self._local.scratches = [hyperscan.Scratch(db) for db in self._dbs]
            self._local.repeat_scratches = {i: hyperscan.Scratch(db) for i, (db, _) in self._repeats.items()}
        return scratches

    def match(self, texts: list[bytes], defer: frozenset[int] = frozenset(),
              pending: dict[int, list[bytes]] | None = None) -> dict[int, Match]:
        """Rule index -> Match for every rule matching at least one of ``texts``.

        The rules in ``defer`` are not run: the texts Hyperscan names them for go to
        ``pending[index]`` instead, for :meth:`confirm` once it is known their result can
        matter (a rule none of whose candidates is confirmed does not match).
        """
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
            for i in (dict.fromkeys(candidates) if self._split else candidates):
                rule = rules[i]
                if i in found and not rule.multiple:
                    continue
                if i in self._repeats and not self._repeated(i, text):
                    continue
                if i in defer and pending is not None:
                    pending.setdefault(i, []).append(text)
                    continue
                m = _run(rule, text)
                if m is not None:
                    _add(found, i, m, rule)
        return found

    def confirm(self, i: int, texts: list[bytes]) -> Match | None:
        """Whether rule ``i`` matches one of ``texts`` (its deferred candidates)."""
        return self._regex_only(texts, [i]).get(i)

    def _repeated(self, i: int, text: bytes) -> bool:
        """Whether the body X of rule ``i`` (``(?:X){n}``) ends at ``n`` different places in
        ``text``: a match of the rule is n non-empty matches of X in a row, which end at n
        different offsets, and Hyperscan reports every offset where a match of X ends."""
        db, count = self._repeats[i]
        ends: set[int] = set()
        db.scan(text, match_event_handler=_collect_end, context=ends, scratch=self._local.repeat_scratches[i])
        return len(ends) >= count

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


def _without_anchors(expr: bytes) -> bytes:
    """A Hyperscan expression with its anchors (``^ $ \\A \\z \\Z \\G``, outside
    classes) removed: an assertion removed only lets more texts match, so the result
    is a superset of the expression, fit for pre-filtering."""
    out = bytearray()
    i, n, in_class = 0, len(expr), False
    while i < n:
        ch = expr[i:i + 1]
        if ch == b"\\" and i + 1 < n:
            if in_class or expr[i + 1:i + 2] not in (b"A", b"z", b"Z", b"G"):
                out += expr[i:i + 2]
            i += 2
            continue
        if in_class:
            in_class = ch != b"]"
        elif ch == b"[":
            in_class = True
            j = i + 1
            if expr[j:j + 1] == b"^":
                j += 1
            if expr[j:j + 1] == b"]":
                j += 1
            out += expr[i:j]
            i = j
            continue
        elif ch in (b"^", b"$"):
            i += 1
            continue
        out += ch
        i += 1
    return bytes(out)


def _collect(rule_id: int, start: int, end: int, flags: int, context: list[int]) -> None:
    context.append(rule_id)


def _collect_end(rule_id: int, start: int, end: int, flags: int, context: object) -> None:
    assert isinstance(context, set)
    context.add(end)


def _repeat_filter(rule: PatternRule, cache: "HsCache | None") -> tuple[hyperscan.Database, int] | None:
    """For a rule that is one group repeated ``{n}`` or ``{n,m}`` times (n >= 2) whose body
    never matches the empty string (SpamAssassin's __FILL_THIS_FORM_LONG2), a Hyperscan
    database of the body (loosened, so a superset) reporting every match end, and n.

    Hyperscan takes such rules only loosened (``{5}`` becomes ``+``), so its pre-filter
    passes every line where the body matches once: a quarter of all body lines, each
    then costing the backtracking regex most of a millisecond. Counting where the body's
    matches end (see :meth:`PatternSet._repeated`) passes a fifth of those.
    """
    assert hyperscan is not None
    tree = parse_tree(rule.perl.python)
    if tree is None:
        return None
    tree = list(tree)
    if len(tree) != 1 or tree[0][0] is not _sre_c.MAX_REPEAT:
        return None
    low, _, body = tree[0][1]
    if low < 2 or body.getwidth()[0] == 0:
        return None
    loose = (rule.prefilter or rule.perl).hyperscan_loose
    inner = loose.rstrip("+*")
    if not inner.startswith("(") or len(loose) - len(inner) != 1 or _group_end(inner) != len(inner) - 1:
        return None
    flags = 0
    if rule.perl.ignorecase:
        flags |= hyperscan.HS_FLAG_CASELESS
    if rule.perl.multiline:
        flags |= hyperscan.HS_FLAG_MULTILINE
    if rule.perl.dotall:
        flags |= hyperscan.HS_FLAG_DOTALL
    db = _hs_database([(0, inner.encode("latin-1"), flags)], cache)
    return None if db is None else (db, low)


def _group_end(text: str) -> int:
    """Index of the ``)`` closing the group that opens ``text`` (-1 when unbalanced)."""
    depth, i, in_class = 0, 0, False
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
            j = i + 1
            if j < len(text) and text[j] == "^":
                j += 1
            if j < len(text) and text[j] == "]":
                i = j
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


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
    """Whether Hyperscan gets ``pattern`` as written: short, and no counted repeat of
    :data:`HS_MAX_REPEAT` or more (``{n,}`` below it is taken as written: loosened to
    ``+``, SpamAssassin's ``(?:[a-z]{8,}[\\s.]+){6}`` let every line through)."""
    if len(pattern) > HS_MAX_PATTERN:
        return False
    for m in _BOUNDED.finditer(pattern):
        upper = m.group(2)
        if int(m.group(1) if upper == "" or upper is None else upper) >= HS_MAX_REPEAT:
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


def _pieces(text: str) -> list[str]:
    """``text`` as Hyperscan expressions: itself, or split into pieces as small as the
    split allows (a pattern whose alternatives multiply may only split into bigger
    pieces within :data:`HS_MAX_PIECES`)."""
    if len(text) <= HS_SPLIT_LENGTH:
        return [text]
    for limit in (HS_SPLIT_LENGTH, 2 * HS_SPLIT_LENGTH, HS_MAX_LENGTH):
        pieces = split_alternation(text, limit)
        if pieces is not None:
            return pieces
    return [text]


def split_alternation(text: str, limit: int) -> list[str] | None:
    """Expressions whose union matches what ``text`` matches, each at most ``limit`` long.

    ``P(?:A|B|C)S``, with the group its largest unquantified top-level group, is the
    union of ``P(?:A)S``, ``P(?:B)S`` and ``P(?:C)S``; a piece still too long is split
    again (a group of one alternative is unwrapped first). Used for Hyperscan, whose
    expression length is bounded: each piece keeps the rule's id, so a hit on any piece
    sends the rule to ``regex``. None when ``text`` cannot be split that way within
    :data:`HS_MAX_PIECES` pieces.
    """
    if re.search(r"\\[1-9gk]", text):
        return None  # unwrapping a group would renumber what a back-reference names
    done: list[str] = []
    todo = [text]
    while todo:
        piece = todo.pop()
        if len(piece) <= limit:
            done.append(piece)
            continue
        group = _largest_group(piece)
        if group is None:
            return None
        start, body, end, alts = group
        prefix, suffix = piece[:start], piece[end + 1:]
        if len(alts) == 1:
            todo.append(prefix + alts[0] + suffix)
        else:
            opener = piece[start:body]
            todo.extend(f"{prefix}{opener}{alt}){suffix}" for alt in alts)
        if len(done) + len(todo) > HS_MAX_PIECES:
            return None
    return done[::-1]


_GROUP_OPENER = re.compile(r"\((?:\?[imsx]*(?:-[imsx]*)?:)?")


def _largest_group(text: str) -> tuple[int, int, int, list[str]] | None:
    """(start, body start, end, alternatives) of the longest top-level group that is
    plain or non-capturing and not quantified (one with inline flags only when it has
    alternatives: unwrapping it would drop its flags)."""
    best: tuple[int, int, int, list[str]] | None = None
    stack: list[tuple[int, list[int]]] = []  # per open group: its start, its '|' positions
    i, n, in_class = 0, len(text), False
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
            j = i + 1
            if j < n and text[j] == "^":
                j += 1
            if j < n and text[j] == "]":
                i = j  # a literal ']' first in a class
        elif ch == "(":
            stack.append((i, []))
        elif ch == "|" and stack:
            stack[-1][1].append(i)
        elif ch == ")":
            if not stack:
                return None
            start, bars = stack.pop()
            quantified = i + 1 < n and text[i + 1] in "?*+{"
            m = _GROUP_OPENER.match(text, start)  # always matches: text[start] is "("
            opener = m.end() - start if m is not None else 0
            plain = opener == 3 or (opener == 1 and text[start + 1:start + 2] != "?")  # "(?:" or "("
            flagged = m is not None and not plain and text[m.end() - 1] == ":"  # "(?i:", kept when split
            if not stack and not quantified and (plain or (flagged and bars)) \
                    and (best is None or i - start > best[2] - best[0]):
                body = start + opener
                cuts = [body - 1, *bars, i]
                best = (start, body, i, [text[a + 1:b] for a, b in zip(cuts, cuts[1:])])
        i += 1
    return best
