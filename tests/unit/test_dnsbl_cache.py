"""The DNSBL answer cache: TTL expiry, LRU bound, uncachable TTLs."""

from __future__ import annotations

import pytest

from filterd.dnsbl.cache import TtlCache


def test_value_lives_until_its_ttl() -> None:
    cache: TtlCache[str, str] = TtlCache(10)
    cache.put("k", "v", ttl=30, now=100.0)
    assert cache.get("k", now=129.9) == "v"
    assert cache.get("k", now=130.0) is None
    assert len(cache) == 0  # the expired entry is dropped, not kept around


def test_zero_or_negative_ttl_is_not_cached() -> None:
    cache: TtlCache[str, str] = TtlCache(10)
    cache.put("zero", "v", ttl=0, now=0.0)
    cache.put("negative", "v", ttl=-5, now=0.0)
    assert len(cache) == 0


def test_least_recently_used_entry_is_dropped_first() -> None:
    cache: TtlCache[str, int] = TtlCache(2)
    cache.put("a", 1, ttl=60, now=0.0)
    cache.put("b", 2, ttl=60, now=0.0)
    assert cache.get("a", now=1.0) == 1  # a is now more recent than b
    cache.put("c", 3, ttl=60, now=2.0)
    assert cache.get("b", now=3.0) is None
    assert cache.get("a", now=3.0) == 1
    assert cache.get("c", now=3.0) == 3
    assert len(cache) == 2


def test_replacing_a_value_refreshes_it() -> None:
    cache: TtlCache[str, int] = TtlCache(2)
    cache.put("a", 1, ttl=10, now=0.0)
    cache.put("a", 2, ttl=10, now=5.0)
    assert cache.get("a", now=14.0) == 2


def test_size_zero_disables_caching() -> None:
    cache: TtlCache[str, int] = TtlCache(0)
    cache.put("a", 1, ttl=10, now=0.0)
    assert cache.get("a", now=0.0) is None


def test_negative_size_is_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        TtlCache(-1)
