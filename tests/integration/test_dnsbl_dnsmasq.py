"""DNSBL/RHSBL lookups against a real DNS server (dnsmasq serving test zones on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import dns.message
import dns.rrset
import pytest

from filterd.dnsbl.check import DnsblChecker, DnsblHit
from filterd.dnsbl.resolver import DnsblResolver, parse_nameserver
from filterd.dnsbl.sites import parse_site
from tests.fixtures.dnsmasq import (
    BAD_DOMAIN, LISTED_V4, LISTED_V6, MULTI_V4, NO_TXT_V4, UNLISTED_V4, DnsmasqServer,
)

pytestmark = pytest.mark.integration

HANG_GUARD = 30.0
"""Not a timing assertion: only stops a test that would otherwise hang forever."""


@pytest.fixture
def resolver(dnsmasq_server: DnsmasqServer) -> DnsblResolver:
    return DnsblResolver([parse_nameserver(dnsmasq_server.nameserver)], timeout=5.0)


@pytest.fixture
def checker(resolver: DnsblResolver) -> DnsblChecker:
    return DnsblChecker(resolver)


class _SlowServer(asyncio.DatagramProtocol):
    """Answers every A query with 127.0.0.2 (TTL 300), ``delay`` seconds after it came."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.queries = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queries += 1
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.answer.append(dns.rrset.from_text(query.question[0].name, 300, "IN", "A", "127.0.0.2"))
        asyncio.get_running_loop().call_later(self.delay, self._send, response.to_wire(), addr)

    def _send(self, wire: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(wire, addr)


@pytest.fixture
async def slow_dns() -> AsyncIterator[tuple[int, _SlowServer]]:
    """A DNS server on 127.0.0.1 that lists everything, answering 2.5 s after each query
    (slower than the resolver library's own 2 s per try)."""
    transport, server = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _SlowServer(2.5), local_addr=("127.0.0.1", 0),
    )
    try:
        yield transport.get_extra_info("sockname")[1], server
    finally:
        transport.close()


async def test_an_answer_slower_than_two_seconds_counts_within_dnsbl_timeout(
    slow_dns: tuple[int, _SlowServer],
) -> None:
    """Before: each try gave up after the library's 2 s and asked again, so a list that
    answers in 2.5 s was never heard, whatever dnsbl_timeout said."""
    port, server = slow_dns
    resolver = DnsblResolver([("127.0.0.1", port)], timeout=8.0)
    answer = await asyncio.wait_for(resolver.lookup_a("2.0.0.127.zen.test"), HANG_GUARD)
    assert answer.listed and not answer.temporary_failure
    assert server.queries == 1


async def test_a_failed_lookup_is_remembered_for_dnsbl_failure_ttl(
    silent_udp_port: int, caplog: pytest.LogCaptureFixture,
) -> None:
    """Every request from a client must not wait for the timeout again while a list is
    down; the failure is remembered as one (temporary_failure), briefly."""
    resolver = DnsblResolver([("127.0.0.1", silent_udp_port)], timeout=0.5, failure_ttl=60)
    checker = DnsblChecker(resolver)
    site = parse_site("zen.test")
    with caplog.at_level(logging.WARNING, logger="filterd.dnsbl"):
        for _ in range(5):
            assert await asyncio.wait_for(checker.query_ip(site, LISTED_V4), HANG_GUARD) is None
    assert resolver.lookups_sent == 1 and resolver.cache_hits == 4
    assert (await resolver.lookup_a("2.0.0.127.zen.test")).temporary_failure
    assert sum("failed" in r.getMessage() for r in caplog.records) == 1


async def test_dnsbl_failure_ttl_zero_asks_every_time(silent_udp_port: int) -> None:
    resolver = DnsblResolver([("127.0.0.1", silent_udp_port)], timeout=0.3, failure_ttl=0)
    for _ in range(2):
        assert (await asyncio.wait_for(resolver.lookup_a("2.0.0.127.zen.test"), HANG_GUARD)).temporary_failure
    assert resolver.lookups_sent == 2


@pytest.fixture
async def silent_udp_port() -> AsyncIterator[int]:
    """A UDP port on 127.0.0.1 that reads every query and never answers."""
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0),
    )
    try:
        yield transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


async def test_listed_address_with_txt_reason(checker: DnsblChecker, dnsmasq_server: DnsmasqServer) -> None:
    hit = await checker.query_ip(parse_site(dnsmasq_server.zen), LISTED_V4)
    qname = f"2.0.0.127.{dnsmasq_server.zen}"
    assert hit == DnsblHit(
        dnsmasq_server.zen, qname, ("127.0.0.2",), dnsmasq_server.txt_records[qname], 1,
    )


async def test_unlisted_address(checker: DnsblChecker, resolver: DnsblResolver, dnsmasq_server: DnsmasqServer) -> None:
    assert await checker.query_ip(parse_site(dnsmasq_server.zen), UNLISTED_V4) is None
    answer = await resolver.lookup_a(f"1.2.0.192.{dnsmasq_server.zen}")
    assert not answer.listed and not answer.temporary_failure


async def test_listed_without_txt_record(checker: DnsblChecker, dnsmasq_server: DnsmasqServer) -> None:
    hit = await checker.query_ip(parse_site(dnsmasq_server.zen), NO_TXT_V4)
    assert hit is not None
    assert (hit.addresses, hit.text) == (("127.0.0.11",), None)


@pytest.mark.parametrize(
    "site_suffix, matched",
    [
        ("", {"127.0.0.2", "127.0.0.4"}),
        ("&0.0.0.4", {"127.0.0.4"}),
        ("&0.0.0.6", {"127.0.0.2", "127.0.0.4"}),
        ("&0.0.0.8", None),
        ("=127.0.0.[3..5]", {"127.0.0.4"}),
        ("=127.0.0.[2;9]", {"127.0.0.2"}),
        ("=127.0.0.[5..11]", None),
    ],
)
async def test_multi_answer_with_filters(
    checker: DnsblChecker, dnsmasq_server: DnsmasqServer, site_suffix: str, matched: set[str] | None,
) -> None:
    hit = await checker.query_ip(parse_site(dnsmasq_server.zen + site_suffix), MULTI_V4)
    if matched is None:
        assert hit is None
    else:
        assert hit is not None and set(hit.addresses) == matched


async def test_ipv6_listing(checker: DnsblChecker, dnsmasq_server: DnsmasqServer) -> None:
    hit = await checker.query_ip(parse_site(dnsmasq_server.zen), LISTED_V6)
    assert hit is not None
    assert hit.addresses == ("127.0.0.3",)
    assert hit.text == "IPv6 client listed in zen.test"
    assert await checker.query_ip(parse_site(dnsmasq_server.zen), "2001:db8::2") is None


async def test_rhsbl_domain(checker: DnsblChecker, dnsmasq_server: DnsmasqServer) -> None:
    site = parse_site(dnsmasq_server.dbl)
    hit = await checker.query_domain(site, "BAD.example.")
    assert hit is not None
    assert (hit.query, hit.addresses) == (f"{BAD_DOMAIN}.{dnsmasq_server.dbl}", ("127.0.1.2",))
    assert hit.text == "bad.example is a spam domain"
    assert await checker.query_domain(site, "good.example") is None


async def test_score_over_block_and_allow_lists(checker: DnsblChecker, dnsmasq_server: DnsmasqServer) -> None:
    sites = [
        parse_site(f"{dnsmasq_server.zen}=127.0.0.[2..11]*3"),
        parse_site(f"{dnsmasq_server.dnswl}=127.0.[0..255].[1..3]*-2"),
        parse_site(f"{dnsmasq_server.zen}&0.0.0.8*5"),
    ]
    total, hits = await checker.score_ip(sites, LISTED_V4)
    assert total == 1
    assert [(h.zone, h.weight) for h in hits] == [(dnsmasq_server.zen, 3), (dnsmasq_server.dnswl, -2)]
    assert await checker.score_ip(sites, UNLISTED_V4) == (0, [])


async def test_repeated_lookups_are_served_from_the_cache(
    checker: DnsblChecker, resolver: DnsblResolver, dnsmasq_server: DnsmasqServer,
) -> None:
    site = parse_site(dnsmasq_server.zen)
    first = await checker.query_ip(site, LISTED_V4)
    sent = resolver.lookups_sent
    assert sent == 2  # A, then TXT for the hit
    assert await checker.query_ip(site, LISTED_V4) == first
    assert resolver.lookups_sent == sent
    assert resolver.cache_hits == 2


async def test_negative_answers_are_cached_for_the_soa_ttl(
    resolver: DnsblResolver, dnsmasq_server: DnsmasqServer,
) -> None:
    qname = f"1.2.0.192.{dnsmasq_server.zen}"
    await resolver.lookup_a(qname)
    await resolver.lookup_a(qname)
    await resolver.lookup_a(qname.upper())
    assert (resolver.lookups_sent, resolver.cache_hits) == (1, 2)


async def test_cache_max_ttl_zero_disables_caching(dnsmasq_server: DnsmasqServer) -> None:
    resolver = DnsblResolver([parse_nameserver(dnsmasq_server.nameserver)], cache_max_ttl=0)
    for _ in range(2):
        assert (await resolver.lookup_a(f"2.0.0.127.{dnsmasq_server.zen}")).listed
    assert resolver.lookups_sent == 2


async def test_concurrent_identical_lookups_share_one_query(
    resolver: DnsblResolver, dnsmasq_server: DnsmasqServer,
) -> None:
    qname = f"10.0.0.127.{dnsmasq_server.zen}"
    answers = await asyncio.gather(*(resolver.lookup_a(qname) for _ in range(20)))
    assert resolver.lookups_sent == 1
    assert {frozenset(a.records) for a in answers} == {frozenset({"127.0.0.2", "127.0.0.4"})}


async def test_refused_is_not_listed_with_a_warning_and_a_temporary_failure_flag(
    resolver: DnsblResolver, dnsmasq_server: DnsmasqServer, caplog: pytest.LogCaptureFixture,
) -> None:
    qname = f"2.0.0.127.{dnsmasq_server.refused_zone}"
    with caplog.at_level(logging.WARNING, logger="filterd.dnsbl"):
        answer = await asyncio.wait_for(resolver.lookup_a(qname), HANG_GUARD)
    assert not answer.listed and answer.temporary_failure
    assert qname in caplog.text and "REFUSED" in caplog.text
    again = await resolver.lookup_a(qname)
    assert again.temporary_failure  # from the cache: a failure is remembered for a while
    assert resolver.lookups_sent == 1
    site = parse_site(dnsmasq_server.refused_zone)
    assert await DnsblChecker(resolver).score_ip([site], LISTED_V4) == (0, [])


async def test_silent_server_times_out_as_not_listed_with_a_warning(
    silent_udp_port: int, caplog: pytest.LogCaptureFixture,
) -> None:
    resolver = DnsblResolver([("127.0.0.1", silent_udp_port)], timeout=1.0)
    checker = DnsblChecker(resolver)
    with caplog.at_level(logging.WARNING, logger="filterd.dnsbl"):
        hit = await asyncio.wait_for(checker.query_ip(parse_site("zen.test"), LISTED_V4), HANG_GUARD)
    assert hit is None
    assert "2.0.0.127.zen.test" in caplog.text and "no answer within 1s" in caplog.text
    answer = await asyncio.wait_for(resolver.lookup_a("2.0.0.127.zen.test"), HANG_GUARD)
    assert answer.temporary_failure and not answer.listed
