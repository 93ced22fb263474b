"""The one result type of every content check: a named symbol with score and evidence.

As in rspamd, every outcome is a named symbol, so every verdict explains itself: the
total is the sum of the symbols, and each says what matched.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Symbol:
    """One check that fired.

    ``name`` is the rule name (``GTUBE``, ``BAYES_99``, ``CLAMAV_VIRUS``...), ``score``
    what it adds to the total, ``description`` the rule's ``describe`` text, and
    ``evidence`` what matched (a header value, a URL, a virus name), kept short.
    """

    name: str
    score: float
    description: str = ""
    evidence: str = ""
