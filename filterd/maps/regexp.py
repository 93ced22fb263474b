"""``regexp:`` and ``pcre:`` tables (regexp_table(5), pcre_table(5)), using ``regex``.

A rule is ``/pattern/flags result`` or ``!/pattern/flags result``; ``if /pattern/flags``
(or ``if !/pattern/``) ... ``endif`` blocks nest.  The delimiter may be any character
that is neither alphanumeric nor white space; a backslash escapes it.  Rules are tried
in file order against the whole key (never case-folded); the first match wins and its
result gets ``$1``-style groups substituted.

Flags toggle the defaults, as in Postfix:

- ``regexp:`` (POSIX): ``i`` case sensitivity (default insensitive), ``m`` REG_NEWLINE
  (default off: ``.`` matches a newline and ``^``/``$`` only anchor the whole key).
  ``x`` (POSIX *basic* syntax) is refused.  GNU escapes ``\\<``, ``\\>``, ``\\```,
  ``\\'`` are translated; a backslash inside ``[...]`` is a literal backslash, and an
  escaped letter that POSIX does not define (``\\d``) is that letter - as glibc, and so
  Postfix, reads them (a warning says so).
- ``pcre:``: ``i`` (default on), ``m`` multi-line, ``s`` dot-all (default on), ``x`` extended,
  ``A`` anchored.  ``E``, ``U`` and ``X`` have no equivalent here and are refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import regex

from filterd.maps.blocks import IfBlocks
from filterd.maps.errors import MapError
from filterd.maps.source import FileSource, InlineSource, Line, inline_rules
from filterd.maps.template import Template, expand, parse_template

log = logging.getLogger("filterd.maps")


@dataclass(slots=True)
class Rule:
    """One pattern line; ``is_if`` rules jump to ``skip`` when their test fails."""

    test: Callable[[str], Any]
    negate: bool
    is_if: bool
    text: str | None  # result without substitutions
    template: Template | None  # result with substitutions
    skip: int = 0


# -- POSIX (regexp:) to Python syntax -----------------------------------------------

_GNU_ESCAPES = {"<": r"\b(?=\w)", ">": r"\b(?<=\w)", "`": r"\A", "'": r"\Z"}
_POSIX_LETTER_ESCAPES = set("wWsSbB123456789")


def posix_to_python(pattern: str, place: str) -> str:
    """Rewrite the few POSIX/GNU regex constructs whose meaning differs in Python."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if nxt in _GNU_ESCAPES:
                out.append(_GNU_ESCAPES[nxt])
            elif nxt.isalnum() and nxt not in _POSIX_LETTER_ESCAPES:
                log.warning("%s: \\%s in a POSIX regular expression means the letter %r "
                            "(use a pcre: table for Perl escapes)", place, nxt, nxt)
                out.append(regex.escape(nxt))
            else:
                out.append(ch + nxt)
            i += 2
            continue
        if ch == "[":
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                if pattern[j] == "[" and j + 1 < n and pattern[j + 1] in ":=.":
                    end = pattern.find(pattern[j + 1] + "]", j + 2)
                    j = n if end < 0 else end + 2
                else:
                    j += 1
            body = pattern[i + 1:j]
            out.append("[" + body.replace("\\", "\\\\") + ("]" if j < n else ""))
            i = j + 1
            continue
        out.append(ch)
        i += 1
    return "".join(out)


# -- rule parsing ---------------------------------------------------------------------

class Dialect(Protocol):
    """How one table type reads flags and patterns."""

    name: str

    def compile(self, pattern: str, flags: str, place: str) -> tuple[Any, bool]:
        """(compiled pattern, anchored at the start of the key)."""
        ...


class PosixDialect:
    name = "regexp"

    def compile(self, pattern: str, flags: str, place: str) -> tuple[Any, bool]:
        icase, newline = True, False
        for f in flags:
            if f == "i":
                icase = not icase
            elif f == "m":
                newline = not newline
            elif f == "x":
                raise MapError(f"{place}: flag 'x' (POSIX basic regular expressions) is not "
                               f"supported; write the pattern in extended syntax")
            else:
                raise MapError(f"{place}: unknown regexp flag {f!r} (known: i, m, x)")
        options = (regex.IGNORECASE if icase else 0) | (regex.MULTILINE if newline else regex.DOTALL)
        return _compile(posix_to_python(pattern, place), options, place), False


class PcreDialect:
    name = "pcre"

    def compile(self, pattern: str, flags: str, place: str) -> tuple[Any, bool]:
        options = regex.IGNORECASE | regex.DOTALL  # pcre_table(5): i and s default on
        anchored = False
        toggles = {"i": regex.IGNORECASE, "m": regex.MULTILINE, "s": regex.DOTALL, "x": regex.VERBOSE}
        for f in flags:
            if f in toggles:
                options ^= toggles[f]
            elif f == "A":
                anchored = not anchored
            elif f in "EUX":
                raise MapError(f"{place}: pcre flag {f!r} is not supported by filterd")
            else:
                raise MapError(f"{place}: unknown pcre flag {f!r} (known: i, m, s, x, A)")
        return _compile(pattern, options, place), anchored


def _compile(pattern: str, options: int, place: str) -> Any:
    try:
        return regex.compile(pattern, options)
    except regex.error as exc:
        raise MapError(f"{place}: bad regular expression {pattern!r}: {exc}") from None


def _split_pattern(text: str, place: str) -> tuple[bool, str, str, str]:
    """``[!]/pattern/flags rest`` -> (negate, pattern, flags, rest)."""
    negate = text.startswith("!")
    p = text[1:] if negate else text
    if not p or p[0].isalnum() or p[0].isspace():
        raise MapError(f"{place}: expected /pattern/flags result, if /pattern/ or endif, "
                       f"got {text!r}")
    delim = p[0]
    i, n = 1, len(p)
    while i < n and p[i] != delim:
        i += 2 if p[i] == "\\" else 1
    if i >= n:
        raise MapError(f"{place}: missing closing {delim!r}")
    pattern = p[1:i]
    rest = p[i + 1:]
    j = 0
    while j < len(rest) and not rest[j].isspace():
        j += 1
    return negate, pattern, rest[:j], rest[j:].strip()


def parse_rules(dialect: Dialect) -> Callable[[str, list[Line]], list[Rule]]:
    """A parser for ``dialect`` usable by :class:`FileSource`."""

    def parse(spec: str, lines: list[Line]) -> list[Rule]:
        rules: list[Rule] = []
        blocks = IfBlocks(spec)
        for place, number, is_if, body in blocks.lines(rules, lines):
            negate, pattern, flags, rest = _split_pattern(body, place)
            compiled, anchored = dialect.compile(pattern, flags, place)
            test = compiled.match if anchored else compiled.search
            if is_if:
                if rest:
                    raise MapError(f"{place}: unexpected text after if /pattern/: {rest!r} "
                                   f"(rules inside if..endif must not start with white space)")
                blocks.open(rules, Rule(test, negate, True, None, None), number)
                continue
            if not rest:
                raise MapError(f"{place}: missing result after {dialect.name} pattern")
            try:
                template = parse_template(rest, compiled.groups, negate)
            except ValueError as exc:
                raise MapError(f"{place}: {exc}") from None
            if all(isinstance(p, str) for p in template):
                rules.append(Rule(test, negate, False, "".join(map(str, template)), None))
            else:
                rules.append(Rule(test, negate, False, None, template))
        return rules

    return parse


class RegexpTable:
    """A regexp: or pcre: table from a file or from ``type:{ {rule}, ... }``."""

    is_pattern = True

    def __init__(self, spec: str, name: str, dialect: Dialect):
        self.spec = spec
        parse = parse_rules(dialect)
        self._source: FileSource[list[Rule]] | InlineSource[list[Rule]]
        if name.startswith("{"):
            self._source = InlineSource(parse(spec, inline_rules(spec, name)))
        else:
            self._source = FileSource(spec, name, parse)

    def lookup(self, key: str) -> str | None:
        rules = self._source.get()
        i, n = 0, len(rules)
        while i < n:
            rule = rules[i]
            m = rule.test(key)
            hit = (m is None) if rule.negate else (m is not None)
            if rule.is_if:
                i = i + 1 if hit else rule.skip
            elif hit:
                return rule.text if rule.template is None else expand(rule.template, m)
            else:
                i += 1
        return None
