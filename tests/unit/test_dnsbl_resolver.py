"""Resolver pieces that need no network: name server syntax, negative TTLs, parameters."""

from __future__ import annotations

import dns.message
import dns.rrset
import pytest

from filterd.config import Config, ConfigError
from filterd.dnsbl.resolver import (
    DnsAnswer, DnsblResolver, _negative_ttl, as_nameservers, parse_nameserver,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("[::1]:5353", ("::1", 5353)),
        ("[::1]", ("::1", 53)),
        ("::1", ("::1", 53)),
        ("2001:db8::53", ("2001:db8::53", 53)),
        (" 192.0.2.53 ", ("192.0.2.53", 53)),
    ],
)
def test_nameserver_forms(text: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize(
    "text, why",
    [
        ("ns.example", "not an IP address"),
        ("ns.example:53", "not an IP address"),
        ("127.0.0.1:0", "outside 1..65535"),
        ("127.0.0.1:65536", "outside 1..65535"),
        ("127.0.0.1:x", "expected a name server"),
        ("[::1]:", "expected a name server"),
        ("[::1", "expected a name server"),
        ("", "expected a name server"),
        ("[ns.example]:53", "not an IP address"),
    ],
)
def test_bad_nameservers(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_nameserver(text)


def test_nameserver_list_and_parameter() -> None:
    assert as_nameservers("127.0.0.1:5353, [::1]:53 192.0.2.1") == [
        ("127.0.0.1", 5353), ("::1", 53), ("192.0.2.1", 53),
    ]
    assert as_nameservers("") == []
    cfg = Config.from_text("dns_nameservers = 127.0.0.1:5353\n")
    assert cfg.get("dns_nameservers") == [("127.0.0.1", 5353)]
    with pytest.raises(ConfigError, match="dns_nameservers"):
        Config.from_text("dns_nameservers = resolver.example\n")


def test_parameter_defaults() -> None:
    cfg = Config.from_text("")
    assert cfg.get("dns_nameservers") == []
    assert cfg.get("dnsbl_timeout") == 10.0
    assert cfg.get("dnsbl_cache_max_ttl") == 3600.0
    assert cfg.get("dnsbl_cache_size") == 10000
    assert cfg.get("dnsbl_failure_ttl") == 60.0
    assert cfg.get("dnsbl_threshold") == 1
    assert cfg.get("dnsbl_whitelist_threshold") == 0


def test_resolver_from_config() -> None:
    cfg = Config.from_text(
        "dns_nameservers = 127.0.0.1:5353\ndnsbl_timeout = 2s\ndnsbl_cache_max_ttl = 1m\n"
    )
    resolver = DnsblResolver.from_config(cfg)
    assert resolver.timeout == 2.0
    assert resolver.cache_max_ttl == 60.0


def test_dnsbl_timeout_is_the_budget_of_a_lookup_shared_by_the_servers() -> None:
    """Not the library's 2 s per try: each server has its share of dnsbl_timeout."""
    one = DnsblResolver([("127.0.0.1", 5353)], timeout=10.0)
    assert one._resolver.lifetime == 10.0 and one._resolver.timeout == 10.0
    two = DnsblResolver([("127.0.0.1", 5353), ("127.0.0.2", 5353)], timeout=10.0)
    assert two._resolver.lifetime == 10.0 and two._resolver.timeout == 5.0


def test_system_resolver_when_no_nameservers_given() -> None:
    # Reads /etc/resolv.conf (or falls back to 127.0.0.1); sends nothing.
    assert DnsblResolver().timeout == 10.0


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout"):
        DnsblResolver([("127.0.0.1", 53)], timeout=0)


def _nxdomain(soa_ttl: int, minimum: int) -> dns.message.Message:
    response = dns.message.make_response(dns.message.make_query("9.0.0.127.zen.test", "A"))
    response.authority.append(dns.rrset.from_text(
        "zen.test.", soa_ttl, "IN", "SOA", f"ns.test. hostmaster.test. 1 1200 120 3600 {minimum}",
    ))
    return response


def test_negative_ttl_is_the_smaller_of_soa_ttl_and_minimum() -> None:
    assert _negative_ttl(_nxdomain(300, 60)) == 60.0
    assert _negative_ttl(_nxdomain(30, 600)) == 30.0


def test_negative_answer_without_soa_is_not_cacheable() -> None:
    response = dns.message.make_response(dns.message.make_query("x.zen.test", "A"))
    assert _negative_ttl(response) == 0.0
    assert _negative_ttl(None) == 0.0


def test_answer_listed_flag() -> None:
    assert DnsAnswer("q", ("127.0.0.2",)).listed
    assert not DnsAnswer("q").listed
    assert not DnsAnswer("q", (), temporary_failure=True).listed
