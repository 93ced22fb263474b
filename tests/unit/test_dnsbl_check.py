"""Scoring and hit building over an in-memory resolver (the DNS side is tested with dnsmasq)."""

from __future__ import annotations

import logging

import pytest

from filterd.dnsbl.check import DnsblChecker, DnsblHit, DnsblVerdict, classify_score
from filterd.dnsbl.resolver import DnsAnswer
from filterd.dnsbl.sites import parse_site


class MemoryResolver:
    """Fixed answers, and a record of which names were asked for which type."""

    def __init__(self, a: dict[str, list[str]], txt: dict[str, str]) -> None:
        self.a = a
        self.txt = txt
        self.asked: list[tuple[str, str]] = []

    async def lookup_a(self, qname: str) -> DnsAnswer:
        self.asked.append(("A", qname))
        return DnsAnswer(qname, tuple(self.a.get(qname, [])))

    async def lookup_txt(self, qname: str) -> str | None:
        self.asked.append(("TXT", qname))
        return self.txt.get(qname)


@pytest.fixture
def resolver() -> MemoryResolver:
    return MemoryResolver(
        a={
            "2.0.0.127.zen.test": ["127.0.0.2", "127.0.0.4"],
            "2.0.0.127.bl.test": ["127.0.0.2"],
            "2.0.0.127.wl.test": ["127.0.2.3"],
            "bad.example.dbl.test": ["127.0.1.2"],
        },
        txt={"2.0.0.127.zen.test": "listed in zen"},
    )


async def test_hit_carries_zone_query_matched_answers_text_and_weight(resolver: MemoryResolver) -> None:
    hit = await DnsblChecker(resolver).query_ip(parse_site("zen.test&0.0.0.4*3"), "127.0.0.2")
    assert hit == DnsblHit("zen.test", "2.0.0.127.zen.test", ("127.0.0.4",), "listed in zen", 3)


async def test_filter_that_matches_nothing_is_no_hit_and_asks_no_txt(resolver: MemoryResolver) -> None:
    checker = DnsblChecker(resolver)
    assert await checker.query_ip(parse_site("zen.test=127.0.0.[5..11]"), "127.0.0.2") is None
    assert await checker.query_ip(parse_site("zen.test"), "192.0.2.1") is None
    assert [kind for kind, _ in resolver.asked] == ["A", "A"]


async def test_hit_without_txt_record(resolver: MemoryResolver) -> None:
    hit = await DnsblChecker(resolver).query_ip(parse_site("bl.test"), "127.0.0.2")
    assert hit is not None and hit.text is None


async def test_domain_query(resolver: MemoryResolver) -> None:
    hit = await DnsblChecker(resolver).query_domain(parse_site("dbl.test"), "Bad.Example.")
    assert hit is not None
    assert (hit.query, hit.addresses) == ("bad.example.dbl.test", ("127.0.1.2",))


async def test_score_sums_the_weights_of_matching_sites(resolver: MemoryResolver) -> None:
    sites = [
        parse_site("zen.test=127.0.0.[2..11]*3"),   # two matching answers: weight once
        parse_site("bl.test"),
        parse_site("wl.test=127.0.[0..255].[1..3]*-2"),
        parse_site("zen.test=127.0.0.10*5"),         # same zone, filter does not match
        parse_site("none.test*7"),
    ]
    total, hits = await DnsblChecker(resolver).score_ip(sites, "127.0.0.2")
    assert total == 3 + 1 - 2
    assert [h.zone for h in hits] == ["zen.test", "bl.test", "wl.test"]


async def test_score_of_unlisted_client_is_zero(resolver: MemoryResolver) -> None:
    assert await DnsblChecker(resolver).score_ip([parse_site("zen.test")], "192.0.2.1") == (0, [])
    assert await DnsblChecker(resolver).score_ip([], "127.0.0.2") == (0, [])


@pytest.mark.parametrize("ip", ["unknown", "", "999.1.1.1"])
async def test_malformed_client_address_is_not_listed_and_logged(
    resolver: MemoryResolver, caplog: pytest.LogCaptureFixture, ip: str,
) -> None:
    with caplog.at_level(logging.WARNING, logger="filterd.dnsbl"):
        assert await DnsblChecker(resolver).score_ip([parse_site("zen.test")], ip) == (0, [])
    assert resolver.asked == []
    assert "not an IP address" in caplog.text


@pytest.mark.parametrize("domain", ["bad..example", "bad example", "x" * 300])
async def test_malformed_domain_is_not_listed_and_logged(
    resolver: MemoryResolver, caplog: pytest.LogCaptureFixture, domain: str,
) -> None:
    with caplog.at_level(logging.WARNING, logger="filterd.dnsbl"):
        assert await DnsblChecker(resolver).query_domain(parse_site("dbl.test"), domain) is None
    assert resolver.asked == []
    assert "not looking up" in caplog.text


@pytest.mark.parametrize(
    "total, threshold, whitelist, verdict",
    [
        (0, 1, 0, DnsblVerdict.NEUTRAL),
        (1, 1, 0, DnsblVerdict.LISTED),
        (5, 3, 0, DnsblVerdict.LISTED),
        (2, 3, 0, DnsblVerdict.NEUTRAL),
        (-2, 1, 0, DnsblVerdict.NEUTRAL),      # 0 disables allowlisting
        (-2, 1, -1, DnsblVerdict.ALLOWLISTED),
        (-1, 1, -1, DnsblVerdict.ALLOWLISTED),
        (0, 1, -1, DnsblVerdict.NEUTRAL),
        (-3, -4, -1, DnsblVerdict.LISTED),     # blocking wins, as in postscreen
    ],
)
def test_classify_score(total: int, threshold: int, whitelist: int, verdict: DnsblVerdict) -> None:
    assert classify_score(total, threshold, whitelist) is verdict
