"""Query-name building: reversed IPv4, IPv6 nibbles, RHSBL domains, and refusals."""

from __future__ import annotations

import pytest

from filterd.dnsbl.names import (
    MAX_NAME, domain_query_name, ip_query_name, normalize_domain, reverse_ip,
)


def test_ipv4_reversed_octets() -> None:
    assert ip_query_name("192.0.2.1", "zen.test") == "1.2.0.192.zen.test"
    assert ip_query_name(" 127.0.0.2 ", "Zen.Test.") == "2.0.0.127.zen.test"


def test_ipv6_nibbles() -> None:
    name = ip_query_name("2001:db8::1", "zen.test")
    assert name == "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.test"
    assert len(reverse_ip("2001:db8::1").split(".")) == 32


def test_ipv6_upper_case_and_full_form_give_the_same_name() -> None:
    assert reverse_ip("2001:DB8:0:0:0:0:0:1") == reverse_ip("2001:db8::1")
    assert reverse_ip("2001:db8:85a3::8a2e:370:7334").startswith("4.3.3.7.0.7.3.0.e.2.a.8")


def test_ipv4_mapped_ipv6_is_looked_up_as_ipv4() -> None:
    assert reverse_ip("::ffff:192.0.2.1") == "1.2.0.192"


@pytest.mark.parametrize(
    "ip", ["", "unknown", "192.0.2", "192.0.2.256", "1.2.3.4.5", "2001:db8:::1", "1.2.3.4/32",
           "zen.test", "[192.0.2.1]"],
)
def test_bad_addresses_are_refused(ip: str) -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        ip_query_name(ip, "zen.test")


def test_domain_names() -> None:
    assert domain_query_name("Bad.Example.", "dbl.test") == "bad.example.dbl.test"
    assert domain_query_name("mail_01.example-host.org", "dbl.test") == (
        "mail_01.example-host.org.dbl.test"
    )


def test_internationalized_domain_is_queried_as_a_labels() -> None:
    assert normalize_domain("Bücher.Example") == "xn--bcher-kva.example"
    assert domain_query_name("bücher.example", "dbl.test") == "xn--bcher-kva.example.dbl.test"


@pytest.mark.parametrize(
    "domain, why",
    [
        ("", "empty domain"),
        (".", "empty domain"),
        ("a..example", "empty label"),
        (".example", "empty label"),
        ("example..", "empty label"),
        ("a" * 64 + ".example", "longer than 63"),
        ("exa mple.org", "characters other than"),
        ("evil.example\\.other", "characters other than"),
        ('ex"ample.org', "characters other than"),
        ("example.org\x00", "characters other than"),
        ("user@example.org", "characters other than"),
        ("\u200b.example", "not valid IDNA"),
        ("ex\uff0fample.org", "characters other than"),  # full-width '/' maps to '/'
        ("x" * 70 + "\u00fc.example", "not valid IDNA"),
        (".".join(["a" * 60] * 5), f"longer than {MAX_NAME}"),
    ],
)
def test_bad_domains_are_refused(domain: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        domain_query_name(domain, "dbl.test")


def test_query_name_longer_than_253_is_refused() -> None:
    domain = ".".join(["a" * 61] * 4)  # 247 characters: valid alone
    assert normalize_domain(domain) == domain
    with pytest.raises(ValueError, match="query name .* longer than 253"):
        domain_query_name(domain, "dbl.test")


def test_bad_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="empty label"):
        ip_query_name("192.0.2.1", "zen..test")
