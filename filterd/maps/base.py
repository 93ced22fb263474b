"""The lookup-table interface every table type implements.

Lookups are synchronous and in memory because they run on the hot path of every policy
request; anything slow (file parsing) happens when a table is opened or reloaded.
"""

from __future__ import annotations

from typing import Protocol


class LookupTable(Protocol):
    """One opened ``type:name`` table.

    ``is_pattern`` mirrors Postfix's DICT_FLAG_PATTERN: pattern tables (regexp, pcre,
    cidr, fail) are applied to the whole search string only, so access(5) searches
    skip them for partial keys (parent domains, ``user@``, network prefixes).
    Fixed-string tables fold the key to lower case themselves, as Postfix's dict layer
    does, so callers always pass the original string.
    """

    spec: str
    is_pattern: bool

    def lookup(self, key: str) -> str | None:
        """The value for ``key``; None when not found; MapTempError when unanswerable."""
        ...
