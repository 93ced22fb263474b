"""Postfix lookup tables: ``type:name`` specifications, the table types, access(5) search.

``open_table("hash:/etc/postfix/access")`` reads the same files Postfix does (the source
files, no postmap step) and :mod:`filterd.maps.access` applies Postfix's access(5)
search order to them.
"""

from __future__ import annotations

from filterd.maps.base import LookupTable
from filterd.maps.errors import MapError, MapTempError
from filterd.maps.factory import open_table, split_spec

__all__ = ["LookupTable", "MapError", "MapTempError", "open_table", "split_spec"]
