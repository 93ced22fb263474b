"""The two ways a lookup table can fail, kept apart because callers must react differently.

A :class:`MapError` is a configuration problem (a bad ``type:name`` or a bad line in a
table file): it is found when the table is opened and the administrator must fix it.
A :class:`MapTempError` happens at lookup time and means "no answer now": Postfix turns
it into ``451 4.3.5 Server configuration error`` so the client retries later instead of
getting a wrong permanent answer.
"""

from __future__ import annotations


class MapError(ValueError):
    """A table specification or table content that cannot be used.

    The message always says which table, where (line) and what was wrong, e.g.
    ``regexp:/etc/x line 3: missing closing '/'``.
    """


class MapTempError(Exception):
    """A lookup that cannot be answered now; the caller should defer (4xx), not decide."""
