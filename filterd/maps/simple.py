"""Tables whose contents are in the specification itself, and the combining tables.

``static:`` (one answer for every key), ``inline:{ key=value, ... }``, ``fail:`` (every
lookup is a temporary error, for testing how callers defer), ``unionmap:{a, b}`` (all
answers joined with commas) and ``pipemap:{a, b}`` (each answer is the next key).
"""

from __future__ import annotations

from typing import Callable

from filterd.maps.base import LookupTable
from filterd.maps.errors import MapError, MapTempError
from filterd.maps.source import braced, split_braced_list


class StaticTable:
    """``static:value`` or ``static:{ text with spaces }``: always ``value``."""

    is_pattern = False

    def __init__(self, spec: str, name: str):
        self.spec = spec
        value = braced(spec, name) if name.lstrip().startswith("{") else name.strip()
        if not value:
            raise MapError(f"{spec}: static: needs a value (static:value or static:{{ text }})")
        self._value = value

    def lookup(self, key: str) -> str | None:
        return self._value


class InlineTable:
    """``inline:{ key=value, { key = text with spaces } }``; the last duplicate wins.

    Keys are case-folded like any fixed-string table; values may not be empty (Postfix
    refuses an empty lookup result).
    """

    is_pattern = False

    def __init__(self, spec: str, name: str):
        self.spec = spec
        items = split_braced_list(spec, braced(spec, name))
        if not items:
            raise MapError(f"{spec}: bad syntax: need inline:{{name=value...}}")
        table: dict[str, str] = {}
        for item in items:
            text = braced(spec, item) if item.startswith("{") else item
            key, sep, value = text.partition("=")
            key, value = key.strip(), value.strip()
            if not sep:
                raise MapError(f"{spec}: missing '=' after attribute name {item!r}; "
                               f"need inline:{{name=value...}} (write {{ name = text }} when "
                               f"the text has spaces)")
            if not key:
                raise MapError(f"{spec}: missing name before '=' in {item!r}")
            if not value:
                raise MapError(f"{spec}: empty value for {key!r}")
            table[key.casefold()] = value
        self._table = table

    def lookup(self, key: str) -> str | None:
        return self._table.get(key.casefold())


class FailTable:
    """``fail:name``: every lookup fails with a temporary error (Postfix 3.0)."""

    is_pattern = True

    def __init__(self, spec: str, name: str):
        self.spec = spec

    def lookup(self, key: str) -> str | None:
        raise MapTempError(f"{self.spec}: lookup of {key!r} failed (fail: table)")


TableOpener = Callable[[str], LookupTable]


def _components(spec: str, name: str, opener: TableOpener, minimum: int) -> list[LookupTable]:
    kind = spec.partition(":")[0]
    items = split_braced_list(spec, braced(spec, name))
    if len(items) < minimum or any(":" not in item for item in items):
        need = "type:name, type:name..." if minimum > 1 else "type:name..."
        raise MapError(f"{spec}: bad syntax: need {kind}:{{{need}}}")
    return [opener(item) for item in items]


class UnionTable:
    """``unionmap:{a, b, ...}``: every table's answer, joined with commas.

    As in Postfix, the first table decides whether the union is a pattern table.
    """

    def __init__(self, spec: str, name: str, opener: TableOpener):
        self.spec = spec
        self._tables = _components(spec, name, opener, 1)
        self.is_pattern = self._tables[0].is_pattern

    def lookup(self, key: str) -> str | None:
        found = [v for v in (t.lookup(key) for t in self._tables) if v is not None]
        return ",".join(found) if found else None


class PipeTable:
    """``pipemap:{a, b, ...}``: a's answer is looked up in b, and so on."""

    def __init__(self, spec: str, name: str, opener: TableOpener):
        self.spec = spec
        self._tables = _components(spec, name, opener, 2)
        self.is_pattern = self._tables[0].is_pattern

    def lookup(self, key: str) -> str | None:
        value = key
        for table in self._tables:
            result = table.lookup(value)
            if result is None:
                return None
            value = result
        return value
