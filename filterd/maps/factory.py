"""``open_table("type:name")``: the one place that turns a table specification into a table.

Opened tables are cached for the life of the process, keyed by the specification, so
every restriction, parameter and request that names ``hash:/etc/postfix/access`` shares
one parsed copy (file tables re-read themselves when the file changes).
"""

from __future__ import annotations

import threading
from typing import Callable

from filterd.maps.base import LookupTable
from filterd.maps.cidr import CidrTable
from filterd.maps.errors import MapError
from filterd.maps.hashfile import INDEXED_SUFFIXES, HashTable
from filterd.maps.regexp import PcreDialect, PosixDialect, RegexpTable
from filterd.maps.simple import FailTable, InlineTable, PipeTable, StaticTable, UnionTable

Opener = Callable[[str, str], LookupTable]


def _flat_file(kind: str) -> Opener:
    return lambda spec, name: HashTable(spec, _path(spec, name), kind)


_OPENERS: dict[str, Opener] = {
    **{kind: _flat_file(kind) for kind in ("texthash", *INDEXED_SUFFIXES)},
    "regexp": lambda spec, name: RegexpTable(spec, _path(spec, name), PosixDialect()),
    "pcre": lambda spec, name: RegexpTable(spec, _path(spec, name), PcreDialect()),
    "cidr": lambda spec, name: CidrTable(spec, _path(spec, name)),
    "static": StaticTable,
    "inline": InlineTable,
    "fail": FailTable,
    "unionmap": lambda spec, name: UnionTable(spec, name, open_table),
    "pipemap": lambda spec, name: PipeTable(spec, name, open_table),
}

#: Postfix table types that filterd does not read, named for the error message.
_UNSUPPORTED = {
    "mysql": "SQL", "pgsql": "SQL", "sqlite": "SQL", "ldap": "LDAP", "memcache": "memcache",
    "tcp": "TCP", "socketmap": "socketmap", "nis": "NIS", "nisplus": "NIS+",
    "environ": "environment", "unix": "UNIX passwd/group", "randmap": "random",
    "internal": "internal", "netinfo": "NetInfo",
}

_cache: dict[str, LookupTable] = {}
_lock = threading.RLock()


def _path(spec: str, name: str) -> str:
    """File-based types need a file name (or, for regexp/pcre/cidr, ``{ {rule} ... }``)."""
    if not name.strip():
        raise MapError(f"{spec}: missing file name after the table type")
    return name.strip()


def split_spec(spec: str) -> tuple[str, str]:
    """``type:name`` -> (type, name); MapError when there is no type."""
    kind, sep, name = spec.strip().partition(":")
    if not sep or not kind or not kind.replace("_", "").isalnum():
        raise MapError(f"{spec!r}: expected a table as type:name (e.g. hash:/etc/postfix/access)")
    return kind.lower(), name


def open_table(spec: str) -> LookupTable:
    """Open (or return the already opened) table ``spec``; MapError when unusable.

    ``proxy:type:name`` (Postfix's proxymap) opens ``type:name`` directly.
    """
    spec = spec.strip()
    with _lock:
        table = _cache.get(spec)
        if table is not None:
            return table
        kind, name = split_spec(spec)
        if kind == "proxy":
            table = open_table(name)
        else:
            opener = _OPENERS.get(kind)
            if opener is None:
                supported = ", ".join(sorted(_OPENERS))
                what = _UNSUPPORTED.get(kind)
                if what:
                    raise MapError(f"{spec}: {what} tables ({kind}:) are not supported by "
                                   f"filterd; supported types: {supported}")
                raise MapError(f"{spec}: unknown table type {kind!r}; supported types: {supported}")
            table = opener(spec, name)
        _cache[spec] = table
        return table
