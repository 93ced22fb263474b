"""A bounded, TTL-respecting answer cache (plain object, the caller supplies the clock).

DNSBL traffic is dominated by repeats: the same client address is checked at CONNECT,
RCPT and again by the next message from the same host, and most clients are not listed.
Caching positive and negative answers for their DNS TTL (capped by the administrator)
makes those repeats free, while the size bound keeps a flood of distinct addresses from
growing memory without limit: the least recently used entry is dropped first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Maps keys to values until their expiry time; at most ``max_entries`` of them."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError(f"cache size must be >= 0, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K, now: float) -> V | None:
        """The live value for ``key`` (and mark it recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if now >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V, ttl: float, now: float) -> None:
        """Store ``value`` for ``ttl`` seconds; a TTL of zero or less is not cached."""
        if ttl <= 0 or self.max_entries == 0:
            return
        self._entries[key] = (now + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
