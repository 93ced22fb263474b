"""``filterd map query type:name KEY...``: filterd's ``postmap -q``.

One key prints the bare value, as ``postmap -q``.  Several keys (or ``-`` to read keys
from standard input, one a line) print ``key<TAB>value`` for each key found, as
``postmap -q -``.  Exit status: 0 when something was found, 1 when nothing was, 2 when
the table cannot be opened or a lookup fails.
"""

from __future__ import annotations

import sys

from filterd.maps.errors import MapError, MapTempError
from filterd.maps.factory import open_table


def query_command(spec: str, keys: list[str]) -> int:
    """Run the query; print results on stdout and problems on stderr; return the exit code."""
    try:
        table = open_table(spec)
    except MapError as exc:
        print(f"filterd: error: {exc}", file=sys.stderr)
        return 2
    if keys == ["-"]:
        keys = [line.rstrip("\r\n") for line in sys.stdin]
        tabbed = True
    else:
        tabbed = len(keys) != 1
    found = False
    for key in keys:
        try:
            value = table.lookup(key)
        except MapTempError as exc:
            print(f"filterd: error: {exc}", file=sys.stderr)
            return 2
        if value is None:
            continue
        found = True
        print(f"{key}\t{value}" if tabbed else value)
    return 0 if found else 1
