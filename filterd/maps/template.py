"""``$1``-style substitution in regexp/pcre results (regexp_table(5) TEXT SUBSTITUTION).

The result is parsed once, when the table is loaded, into literal text and group
numbers, so a lookup only joins strings.  Syntax as Postfix's mac_parse: ``$n``,
``${n}``, ``$(n)``, ``$$`` for a dollar; a name is a run of letters, digits and ``_``
(so ``$1x`` is the name ``1x`` and an error, write ``${1}x``).
"""

from __future__ import annotations

import re
from typing import Any

_NAME = re.compile(r"[A-Za-z0-9_]+")

#: Parsed result: literal strings and group numbers, in order.
Template = tuple[str | int, ...]


def parse_template(text: str, groups: int, negated: bool) -> Template:
    """Parse ``text``; ValueError says what is wrong (the caller adds file and line)."""
    parts: list[str | int] = []
    literal: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch != "$":
            literal.append(ch)
            i += 1
            continue
        if i + 1 < n and text[i + 1] == "$":
            literal.append("$")
            i += 2
            continue
        if i + 1 < n and text[i + 1] in "{(":
            close = "}" if text[i + 1] == "{" else ")"
            end = text.find(close, i + 2)
            if end < 0:
                raise ValueError(f"truncated macro reference in {text!r}: missing {close!r}")
            name = text[i + 2:end]
            i = end + 1
        else:
            m = _NAME.match(text, i + 1)
            if not m:
                raise ValueError(f"empty macro name after '$' in {text!r} (write $$ for a dollar)")
            name = m.group(0)
            i = m.end()
        if not name.isdigit():
            raise ValueError(f"non-numeric replacement index {name!r} in {text!r} "
                             f"(write ${{1}}x when text follows a number)")
        if negated:
            raise ValueError(f"${name} in the result of a negated (!) pattern: "
                             f"there is no match to take groups from")
        index = int(name)
        if index < 1 or index > groups:
            raise ValueError(f"out of range replacement index {index}: the pattern has "
                             f"{groups} group{'s' if groups != 1 else ''}")
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(index)
    if literal:
        parts.append("".join(literal))
    return tuple(parts)


def expand(template: Template, match: Any) -> str:
    """Fill in the groups of ``match`` (a group that did not take part is empty)."""
    return "".join(p if isinstance(p, str) else (match.group(p) or "") for p in template)
