"""Coarse supersets of ReplaceTags letters, so Hyperscan can pre-filter the rules using them.

SpamAssassin's ``25_replace.cf`` spells each letter as every look-alike it knows: ``<A>``
is ``(?:[aA@...]|[\\xc3][\\x80\\x81...]|[\\xf0][\\x9d](?:[\\x90][\\x80...]|...)|...)``, a
few hundred characters of UTF-8 byte sequences. A rule written with them
(``__PAY_ME``, ``__MY_MALWARE``...) expands to 40-220 kB of pattern, which Hyperscan
refuses ("Pattern length exceeds limit"), so these rules ran as backtracking regexes
on every body line, a third of the time SpamAssassin's rules cost per message.

The byte sequences only serve to say *which* non-ASCII letter it is; a pre-filter does
not need to know. :func:`coarse_tag` keeps a letter's single-byte alternatives
(``[aA@\\xc0...]``) and any multi-character ASCII ones (``rn`` for ``m``), and replaces
all the alternatives made only of bytes 0x80-0xff by ``[\\x80-\\xff]{lo,hi}`` (their
shortest and longest length). Every string the letter matched, the coarse letter still
matches, so a rule built from coarse letters matches a superset of the real rule's
lines: fit for Hyperscan's pre-filter, whose every hit the real pattern confirms.
"""

from __future__ import annotations

import importlib
import re
import warnings
from typing import Any

# The standard library's regex parser (widths and a syntax tree of a pattern); private
# modules of ``re`` since Python 3.11, hence imported by name and typed loosely.
_sre_parse: Any = importlib.import_module("re._parser")
_sre_c: Any = importlib.import_module("re._constants")

_HIGH = 0x80


def coarse_tag(value: str) -> str:
    """A superset of the tag text ``value`` that is short where the letter is long.

    ``value`` unchanged when it is not one group of alternatives, or when nothing in it
    can be made coarser.
    """
    alts = _top_alternatives(value)
    if alts is None or len(alts) < 2:
        return value
    single: set[int] = set()
    kept: list[str] = []
    lo, hi = -1, -1
    for alt in alts:
        tree = parse_tree(alt)
        if tree is None:
            kept.append(alt)
            continue
        width = tree.getwidth()
        members = _single_byte(tree)
        if members is not None:
            single |= members
        elif _high_only(tree) and width[0] >= 1 and width[1] < _sre_c.MAXREPEAT:
            lo = width[0] if lo < 0 else min(lo, width[0])
            hi = max(hi, width[1])
        else:
            kept.append(alt)
    if hi < 0:
        return value
    parts = []
    if single:
        parts.append("[" + "".join(f"\\x{b:02x}" for b in sorted(single)) + "]")
    parts += kept
    parts.append(f"[\\x80-\\xff]{{{lo},{hi}}}" if lo != hi else f"[\\x80-\\xff]{{{lo}}}")
    out = "(?:" + "|".join(parts) + ")"
    return out if len(out) < len(value) else value


def _top_alternatives(value: str) -> list[str] | None:
    """The alternatives of ``(?:a|b|...)`` when ``value`` is exactly one such group."""
    if not (value.startswith("(?:") and value.endswith(")")):
        return None
    body = value[3:-1]
    alts: list[str] = []
    depth, start, i, in_class = 0, 0, 0, False
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
            if body.startswith("]", i + 1) or body.startswith("^]", i + 1):
                i += body.index("]", i + 1) - i
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return None  # the first group closes before the end: not one group
        elif ch == "|" and depth == 0:
            alts.append(body[start:i])
            start = i + 1
        i += 1
    if depth or in_class:
        return None
    alts.append(body[start:])
    return alts


def parse_tree(pattern: str) -> Any:
    """The standard library parser's tree of a (latin-1) bytes pattern, None if it
    cannot read it. Only the tree's shape is used, so its warnings about what a future
    Python may read differently are beside the point and silenced."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _sre_parse.parse(pattern.encode("latin-1"))
    except (re.error, UnicodeEncodeError, OverflowError, RecursionError):
        return None


def _single_byte(tree: Any) -> set[int] | None:
    """The bytes of an alternative that is exactly one literal byte or one plain class."""
    items = list(tree)
    if len(items) != 1:
        return None
    op, arg = items[0]
    if op is _sre_c.LITERAL:
        return {arg}
    if op is not _sre_c.IN:
        return None
    members: set[int] = set()
    for cop, carg in arg:
        if cop is _sre_c.LITERAL:
            members.add(carg)
        elif cop is _sre_c.RANGE:
            members.update(range(carg[0], carg[1] + 1))
        else:  # NEGATE, CATEGORY (\w, \s...): not a plain list of bytes
            return None
    return members


def _high_only(tree: Any) -> bool:
    """Whether every string the subpattern matches consists of bytes 0x80-0xff only."""
    for op, arg in tree:
        if op is _sre_c.LITERAL:
            if arg < _HIGH:
                return False
        elif op is _sre_c.IN:
            for cop, carg in arg:
                if cop is _sre_c.LITERAL and carg >= _HIGH:
                    continue
                if cop is _sre_c.RANGE and carg[0] >= _HIGH:
                    continue
                return False
        elif op is _sre_c.SUBPATTERN:
            if arg[1] or arg[2] or not _high_only(arg[3]):  # inline flags: keep it exact
                return False
        elif op is _sre_c.BRANCH:
            if not all(_high_only(branch) for branch in arg[1]):
                return False
        else:  # repeats, anchors, categories, back-references...
            return False
    return True
