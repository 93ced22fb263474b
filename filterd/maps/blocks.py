"""``if`` / ``endif`` nesting shared by regexp, pcre and cidr tables.

Rules are kept in one flat list; an ``if`` rule records the index just past its
``endif`` so that a lookup that fails the ``if`` test jumps over the whole block
without recursion.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, TypeVar

from filterd.maps.errors import MapError
from filterd.maps.source import where


class _HasSkip(Protocol):
    skip: int


_Rule = TypeVar("_Rule", bound=_HasSkip)


def keyword(text: str) -> tuple[str, str] | None:
    """Recognize ``if``/``endif`` (any case, as Postfix): (keyword, rest of the line)."""
    low = text[:5].lower()
    if low == "endif" and (len(text) == 5 or not text[5].isalnum()):
        return "endif", text[5:].strip()
    if low[:2] == "if" and (len(text) == 2 or not text[2].isalnum()):
        return "if", text[2:].strip()
    return None


class IfBlocks:
    """Matches each ``endif`` with its ``if`` while a table is parsed."""

    def __init__(self, spec: str):
        self.spec = spec
        self._open: list[tuple[int, int]] = []  # (rule index, line number)

    def open(self, rules: list[_Rule], rule: _Rule, line: int) -> None:
        """Append the ``if`` rule; its skip index is set by the matching :meth:`close`."""
        self._open.append((len(rules), line))
        rules.append(rule)

    def close(self, rules: list[_Rule], line: int, rest: str) -> None:
        if rest:
            raise MapError(f"{where(self.spec, line)}: unexpected text after endif: {rest!r}")
        if not self._open:
            raise MapError(f"{where(self.spec, line)}: endif without matching if")
        index, _ = self._open.pop()
        rules[index].skip = len(rules)

    def lines(self, rules: list[_Rule],
              lines: list[tuple[int, str]]) -> Iterator[tuple[str, int, bool, str]]:
        """The rule lines of a table: (place, line number, is an ``if``, text after ``if``).

        ``endif`` lines are consumed here (closing their block), and when the lines run
        out an ``if`` still open is an error; callers only parse rule bodies.
        """
        for number, text in lines:
            kw = keyword(text)
            if kw and kw[0] == "endif":
                self.close(rules, number, kw[1])
                continue
            yield where(self.spec, number), number, kw is not None, kw[1] if kw else text
        self.finish()

    def finish(self) -> None:
        if self._open:
            line = self._open[-1][1]
            raise MapError(f"{where(self.spec, line)}: if has no matching endif")
