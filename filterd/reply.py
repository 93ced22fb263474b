"""An SMTP reply, the one type every front end and engine uses for what a client sees."""

from __future__ import annotations

from typing import NamedTuple


class Reply(NamedTuple):
    """One SMTP reply: code, enhanced status code (RFC 3463) and text.

    A named tuple, not a frozen dataclass: as immutable, and built for every decision
    at a third of the cost.
    """

    code: int
    dsn: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.dsn} {self.text}"

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500
