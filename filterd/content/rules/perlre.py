"""Perl regular expressions, as SpamAssassin rule files write them, for Python and Hyperscan.

Rule files are byte-oriented Perl: a pattern such as ``/\\xc3\\xa9/`` means two bytes, ``\\w``
means an ASCII word character. filterd therefore matches rules against *bytes* (the UTF-8
encoding of the decoded text; raw header bytes as received) with *bytes* patterns: that is
what SpamAssassin does with ``normalize_charset`` off (its default), and it is also what
Hyperscan does natively, so both engines agree on what a character class means.

Two targets are produced from one Perl pattern:

* ``python``: the pattern rewritten for the ``regex`` module (the authority: every hit
  reported by filterd has been matched by it);
* ``hyperscan``: the pattern as PCRE syntax Hyperscan accepts, used only as a fast
  pre-filter that must never miss a match the ``python`` pattern would find.

Perl-only constructs handled: ``\\z``/``\\Z``/``\\A``, ``\\Q..\\E``, mid-pattern ``(?i)`` (scoped
to its enclosing group as in Perl), ``/x`` white space and comments, ``\\h \\H \\v \\V \\R``,
``\\x{..}``, brace runs that are not quantifiers (literal in Perl, e.g. ``{,5}``), and the
delimiters ``/../``, ``m{..}``, ``m(..)``, ``m[..]``, ``m<..>`` and ``m!..!``-style.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import regex

_PAIRS = {"{": "}", "(": ")", "[": "]", "<": ">"}
_KNOWN_MODS = frozenset("imsxgo")
_QUANT = re.compile(r"\{(\d+)(,(\d*))?\}")
_FLAG_GROUP = re.compile(r"\(\?\^?([a-zA-Z]*)(?:-([a-zA-Z]*))?\)")


class PerlRegexError(ValueError):
    """A pattern that cannot be read or translated (the rule using it is unsupported)."""


@dataclass(frozen=True)
class PerlRegex:
    """One Perl pattern with its modifiers, translated for both engines."""

    source: str  # the pattern as written, without delimiters
    mods: str  # the modifiers as written (``g`` and ``o`` kept, they are ignored)
    python: str  # pattern text for the ``regex`` module (compile as bytes, latin-1)
    hyperscan: str  # pattern text for Hyperscan (bytes, latin-1)
    hyperscan_loose: str  # a superset for Hyperscan: bounded repeats made unbounded

    @property
    def ignorecase(self) -> bool:
        return "i" in self.mods

    @property
    def multiline(self) -> bool:
        return "m" in self.mods

    @property
    def dotall(self) -> bool:
        return "s" in self.mods

    def compile(self) -> "regex.Pattern[bytes] | re.Pattern[bytes]":
        """Compile for matching; raises :class:`PerlRegexError` with the reason.

        The standard library's ``re`` takes most translated patterns and backtracks two
        to three times faster than ``regex`` on SpamAssassin's heaviest rules (measured
        on the corpus: __FILL_THIS_FORM_LONG2 0.93 s vs 2.19 s over 4,228 body lines), so
        it is used when it accepts the pattern; ``regex`` takes the rest (``\\p{..}``,
        variable-length look-behind...). Both are backtracking engines with Perl syntax.
        """
        data = self.python.encode("latin-1", "strict") if self.python.isascii() else None
        if data is not None:
            flags = (re.IGNORECASE if self.ignorecase else 0) | (re.MULTILINE if self.multiline else 0) \
                | (re.DOTALL if self.dotall else 0)
            try:
                with warnings.catch_warnings():
                    # re warns where its reading may differ from Perl's (e.g. POSIX
                    # [[:digit:]] classes, nested sets): those patterns go to regex.
                    warnings.simplefilter("error")
                    return re.compile(data, flags)
            except (re.error, OverflowError, RecursionError, Warning):
                pass
        flags = 0
        if self.ignorecase:
            flags |= regex.IGNORECASE
        if self.multiline:
            flags |= regex.MULTILINE
        if self.dotall:
            flags |= regex.DOTALL
        try:
            return regex.compile(self.python.encode("latin-1"), flags)
        except (regex.error, UnicodeEncodeError, OverflowError, RecursionError) as exc:
            raise PerlRegexError(f"does not compile: {exc}") from None


def split_regex_literal(text: str) -> tuple[str, str, str]:
    """Split ``/pat/mods rest`` (or ``m{pat}mods rest``...) into (pattern, mods, rest).

    The pattern is returned without its delimiters; escaped delimiters stay escaped (``\\/``
    matches ``/`` in both engines). Raises :class:`PerlRegexError` when the literal is
    unterminated or the delimiter is not one Perl allows.
    """
    s = text.lstrip()
    if s.startswith("/"):
        open_d, pos = "/", 1
    elif s.startswith("m") and len(s) > 1 and not s[1].isalnum() and not s[1].isspace() and s[1] != "_":
        open_d, pos = s[1], 2
    else:
        raise PerlRegexError(f"expected /pattern/ or m{{pattern}}, got {text[:40]!r}")
    close_d = _PAIRS.get(open_d, open_d)
    depth = 0
    i = pos
    while i < len(s):
        ch = s[i]
        if ch == "\\":
            i += 2
            continue
        if open_d != close_d and ch == open_d:
            depth += 1
        elif ch == close_d:
            if depth == 0:
                break
            depth -= 1
        i += 1
    else:
        raise PerlRegexError(f"unterminated pattern (missing closing {close_d!r})")
    pattern = s[pos:i]
    j = i + 1
    while j < len(s) and s[j].isalpha():
        j += 1
    mods = s[i + 1:j]
    bad = set(mods) - _KNOWN_MODS
    if bad:
        raise PerlRegexError(f"unsupported modifier(s) {''.join(sorted(bad))!r}")
    return pattern, mods, s[j:]


def parse_perl_regex(text: str) -> tuple[PerlRegex, str]:
    """Read one regex literal at the start of ``text``; returns it and the rest of the text."""
    pattern, mods, rest = split_regex_literal(text)
    return make_perl_regex(pattern, mods), rest


def make_perl_regex(pattern: str, mods: str = "") -> PerlRegex:
    """Translate a bare Perl pattern with modifiers for both engines."""
    extended = "x" in mods
    return PerlRegex(
        source=pattern,
        mods=mods,
        python=_translate(pattern, extended, for_hyperscan=False),
        hyperscan=_translate(pattern, extended, for_hyperscan=True),
        hyperscan_loose=_translate(pattern, extended, for_hyperscan=True, loose=True),
    )


def _translate(p: str, extended: bool, for_hyperscan: bool, loose: bool = False) -> str:
    """One pass over the pattern, rewriting what the target does not read like Perl.

    ``loose`` turns every ``{n,m}`` into ``*`` (n = 0) or ``+``: the language only grows,
    so the result is a valid pre-filter, and Hyperscan compiles it in a fraction of the
    time large bounded repeats cost it.
    """
    out: list[str] = []
    # one entry per open group: how many extra ')' its close must emit (for scoped (?i))
    groups: list[int] = [0]
    i, n = 0, len(p)
    in_class = False
    while i < n:
        ch = p[i]
        if ch == "\\":
            if i + 1 >= n:
                raise PerlRegexError("pattern ends with a lone backslash")
            nxt = p[i + 1]
            if nxt == "Q":
                end = p.find("\\E", i + 2)
                lit = p[i + 2:] if end < 0 else p[i + 2:end]
                out.append(_quote(lit))
                i = n if end < 0 else end + 2
                continue
            if nxt == "E":  # stray \E is a no-op in Perl
                i += 2
                continue
            if nxt == "x" and i + 2 < n and p[i + 2] == "{":
                end = p.find("}", i + 3)
                if end < 0:
                    raise PerlRegexError("unterminated \\x{...}")
                try:
                    code = int(p[i + 3:end] or "0", 16)
                except ValueError:
                    raise PerlRegexError(f"bad \\x{{{p[i + 3:end]}}}") from None
                if code > 0xFF:
                    raise PerlRegexError(f"\\x{{{p[i + 3:end]}}} is not a byte (patterns match bytes)")
                out.append(f"\\x{code:02x}")
                i = end + 1
                continue
            if nxt == "e":  # Perl's escape character
                out.append("\\x1b")
                i += 2
                continue
            if not in_class:
                if nxt == "z":
                    out.append("\\z" if for_hyperscan else "\\Z")
                    i += 2
                    continue
                if nxt == "Z":
                    out.append("\\Z" if for_hyperscan else "(?=\\n?\\Z)")
                    i += 2
                    continue
                if nxt == "R":
                    out.append("(?:\\r\\n|[\\n\\x0b\\f\\r\\x85])")
                    i += 2
                    continue
            if nxt in "hHvV":
                cls = {"h": "\\t\\x20\\xa0", "v": "\\n\\x0b\\f\\r\\x85"}[nxt.lower()]
                if in_class:
                    if nxt.isupper():
                        raise PerlRegexError(f"\\{nxt} inside a character class is not supported")
                    out.append(cls)
                else:
                    out.append(f"[{'^' if nxt.isupper() else ''}{cls}]")
                i += 2
                continue
            out.append(p[i:i + 2])
            i += 2
            continue
        if in_class:
            if ch == "[" and p.startswith("[:", i):
                end = p.find(":]", i + 2)
                if end >= 0:
                    out.append(p[i:end + 2])
                    i = end + 2
                    continue
            if ch == "[" and not for_hyperscan:
                out.append("\\[")  # a literal '[' in a class; regex V1 nesting must not apply
                i += 1
                continue
            if ch == "]":
                in_class = False
            out.append(ch)
            i += 1
            continue
        if extended and ch in " \t\r\n\f\v":
            i += 1
            continue
        if extended and ch == "#":
            end = p.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if ch == "[":
            in_class = True
            out.append(ch)
            i += 1
            # a ']' (or '^]') right after the opening bracket is a literal
            if i < n and p[i] == "^":
                out.append("^")
                i += 1
            if i < n and p[i] == "]":
                out.append("\\]")
                i += 1
            continue
        if ch == "(":
            m = _FLAG_GROUP.match(p, i)
            if m and (m.group(1) or m.group(2) is not None):
                on, off = m.group(1), m.group(2) or ""
                bad = set(on + off) - set("imsx")
                if bad:
                    raise PerlRegexError(f"unsupported inline flag(s) {''.join(sorted(bad))!r}")
                if "x" in on:
                    extended = True
                if "x" in off:
                    extended = False
                on, off = on.replace("x", ""), off.replace("x", "")
                if on or off:
                    # Perl scopes (?i) to the end of the enclosing group: say so explicitly
                    out.append(f"(?{on}{'-' + off if off else ''}:")
                    groups[-1] += 1
                i = m.end()
                continue
            if p.startswith("(?#", i):
                end = p.find(")", i)
                i = n if end < 0 else end + 1
                continue
            groups.append(0)
            out.append(ch)
            i += 1
            continue
        if ch == ")":
            if len(groups) == 1:
                raise PerlRegexError("unmatched ')'")
            out.append(")" * groups.pop())
            out.append(ch)
            i += 1
            continue
        if ch == "{":
            m = _QUANT.match(p, i)
            if m and out and not (out[-1] in ("(", "|") or out[-1].endswith("(")):
                out.append(("*" if m.group(1) == "0" else "+") if loose else m.group(0))
                i = m.end()
                continue
            out.append("\\{")  # not a quantifier: literal in Perl
            i += 1
            continue
        if ch == "}":
            out.append("\\}")
            i += 1
            continue
        out.append(ch)
        i += 1
    if in_class:
        raise PerlRegexError("unterminated character class")
    if len(groups) != 1:
        raise PerlRegexError("missing ')'")
    out.append(")" * groups[0])
    return "".join(out)


def _quote(lit: str) -> str:
    """Quote ``\\Q..\\E`` text so that it is literal in both engines."""
    return "".join(c if c.isalnum() or c == "_" else ("\\x%02x" % ord(c) if ord(c) < 256 else c) for c in lit)
