"""Postfix actions, as written in access(5) tables, header_checks(5) and policy replies.

One parser for every place an administrator (or a policy service) writes an action, so
``REJECT 5.7.1 go away`` means the same in a ``check_sender_access`` table, a
``header_checks`` file and an ``action=`` line from a chained policy service.
"""

from __future__ import annotations

import re
from typing import NamedTuple

#: Keywords with a fixed meaning; anything else in an access table is a restriction name.
KEYWORDS = frozenset(
    {
        "OK", "REJECT", "DEFER", "DEFER_IF_PERMIT", "DEFER_IF_REJECT", "DUNNO",
        "HOLD", "DISCARD", "FILTER", "REDIRECT", "PREPEND", "WARN", "INFO", "BCC",
        "IGNORE", "REPLACE", "PERMIT",
    }
)

_DSN = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")
_CODE = re.compile(r"([245]\d\d)(?:\s+|$)")


class Action(NamedTuple):
    """A parsed action.

    ``kind`` is the upper-case keyword; a numeric reply (``554 text``) has kind ``CODE``
    with ``code`` set; an all-numerical value is ``OK`` (access(5)); a value that is no
    keyword is ``RESTRICTION`` with the restriction list in ``text`` (access(5) lets a
    table value name restrictions or a restriction class).
    """

    kind: str
    code: int | None = None
    dsn: str | None = None
    text: str = ""

    @property
    def is_reject(self) -> bool:
        return self.kind == "REJECT" or (self.kind == "CODE" and self.code is not None and self.code >= 500)

    @property
    def is_defer(self) -> bool:
        return self.kind == "DEFER" or (self.kind == "CODE" and self.code is not None and 400 <= self.code < 500)

    def __str__(self) -> str:
        parts: list[str] = [str(self.code) if self.kind == "CODE" else self.kind]
        if self.dsn:
            parts.append(self.dsn)
        if self.text:
            parts.append(self.text)
        return " ".join(parts)


def split_dsn(text: str) -> tuple[str | None, str]:
    """Split a leading enhanced status code (``5.7.1``) off a reply text."""
    m = _DSN.match(text)
    if not m:
        return None, text
    return f"{m.group(1)}.{m.group(2)}.{m.group(3)}", text[m.end():]


def parse_action(value: str) -> Action:
    """Parse an action value; never raises (unknown words become RESTRICTION)."""
    value = value.strip()
    if not value:
        return Action("DUNNO")
    if value.isdigit():
        return Action("OK")
    m = _CODE.match(value)
    if m:
        dsn, text = split_dsn(value[m.end():])
        return Action("CODE", int(m.group(1)), dsn, text.strip())
    word, _, rest = value.partition(" ")
    key = word.upper()
    rest = rest.strip()
    if key not in KEYWORDS:
        return Action("RESTRICTION", text=value)
    if key == "PERMIT":
        key = "OK"
    if key in ("REJECT", "DEFER", "DEFER_IF_PERMIT", "DEFER_IF_REJECT"):
        dsn, rest = split_dsn(rest)
        return Action(key, None, dsn, rest.strip())
    return Action(key, text=rest)


def dsn_class_fix(dsn: str | None, code: int, default_detail: str) -> str:
    """Make an enhanced status code agree with the reply class, as Postfix's smtpd_dsn_fix.

    A 4xx reply with a 5.x.x DSN (or vice versa) gets its first digit corrected; a
    missing DSN gets ``default_detail`` (e.g. ``7.1``) under the reply's class.
    """
    cls = str(code)[0]
    if not dsn:
        return f"{cls}.{default_detail}"
    return cls + dsn[1:]
