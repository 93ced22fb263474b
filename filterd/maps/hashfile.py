"""``texthash:`` and ``hash:`` tables: flat ``key value`` files read directly.

Postfix's ``hash:/etc/postfix/access`` is the Berkeley DB file ``access.db`` that
``postmap`` builds from the source file ``access``.  filterd reads the source file
itself (no compile step), so a ``hash:`` line pasted from main.cf keeps working.  The
other indexed types built from the same source format (btree, lmdb, cdb, dbm, sdbm)
are read the same way.

Parsing follows postmap(1): the key is the text up to the first white space, the value
the rest with surrounding white space removed; keys are folded to lower case; when a
key occurs twice the first entry wins (postmap warns "duplicate entry").
"""

from __future__ import annotations

import logging
import os

from filterd.maps.errors import MapError
from filterd.maps.source import FileSource, Line, where

log = logging.getLogger("filterd.maps")

#: Suffix of the file postmap builds for each indexed type, to explain a missing source.
INDEXED_SUFFIXES = {
    "hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb", "dbm": ".pag", "sdbm": ".pag",
}


def parse_pairs(spec: str, lines: list[Line]) -> dict[str, str]:
    """Turn logical lines into a case-folded key -> value dict (first occurrence wins)."""
    table: dict[str, str] = {}
    for number, text in lines:
        parts = text.split(None, 1)
        key = parts[0]
        value = parts[1].strip() if len(parts) == 2 else ""
        if not value:
            raise MapError(f"{where(spec, number)}: expected format: key whitespace value "
                           f"(no value after {key!r})")
        if key.endswith(":"):
            log.warning('%s line %d: record is in "key: value" format; is this an alias file?',
                        spec, number)
        folded = key.casefold()
        if folded in table:
            log.warning('%s line %d: duplicate entry "%s" ignored (the first one wins, as with postmap)',
                        spec, number, folded)
            continue
        table[folded] = value
    return table


class HashTable:
    """A flat ``key value`` file, reloaded when it changes."""

    is_pattern = False

    def __init__(self, spec: str, path: str, kind: str):
        self.spec = spec
        if not os.path.exists(path):
            compiled = path + INDEXED_SUFFIXES.get(kind, ".db")
            if os.path.exists(compiled):
                raise MapError(
                    f"{spec}: {path} does not exist, only the compiled {compiled}; filterd "
                    f"cannot read Berkeley DB or other compiled files - point it at the "
                    f"source file that postmap was given (it reads {kind}:FILE as the text FILE)"
                )
        self._source: FileSource[dict[str, str]] = FileSource(spec, path, parse_pairs)

    def lookup(self, key: str) -> str | None:
        return self._source.get().get(key.casefold())
