"""Triplet parts: postgrey's sender substitutions and client networks."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from filterd.greylist.triplet import normalise_sender, parse_client, recipient_domain


@pytest.mark.parametrize("sender, expected", [
    ("", ""),  # null sender: no @, kept
    ("MAILER-DAEMON", "MAILER-DAEMON"),
    ("John.Doe@Example.COM", "John.Doe@Example.COM"),  # case kept here, key is lc'd
    ("user+list-123@example.com", "user@example.com"),  # +extension dropped
    ("a+b+c@example.com", "a@example.com"),
    ("bounce-12345-678@lists.example.com", "bounce-#-#@lists.example.com"),  # VERP digits
    ("news2024@example.com", "news2024@example.com"),  # digits inside a word stay
    ("123@example.com", "#@example.com"),
    ("a.42.b@example.com", "a.#.b@example.com"),
    ("x_1@example.com", "x_1@example.com"),  # _ is a word character, no boundary
    # BATV: prvs=TAG=USER, and the reversed prvs=USER=TAG
    ("prvs=0123456789=user@example.com", "user@example.com"),
    ("prvs=user=0123456789@example.com", "user@example.com"),
    ("prvs=abcdefghij=klmnopqrst@example.com", "klmnopqrst@example.com"),  # both tags
    ("prvs=ABCDEFGHIJ=user@example.com", "user@example.com"),  # neither: take the third
    ("prvs=only@example.com", "prvs=only@example.com"),  # two parts: left alone
    ("prvs=0123456789=user=@example.com", "user@example.com"),  # Perl drops empty tail
    ("prvs=a=b=c@example.com", "prvs=a=b=c@example.com"),
    ("PRVS=0123456789=user@example.com", "PRVS=#=user@example.com"),  # case-sensitive
    ("prvs=0123456789=bounce-77@example.com", "bounce-#@example.com"),
    ("a@b@c", "a@b@c"),  # split at the first @
])
def test_normalise_sender(sender: str, expected: str) -> None:
    assert normalise_sender(sender) == expected


def test_recipient_domain() -> None:
    assert recipient_domain("user@example.org") == "example.org"
    assert recipient_domain('"a@b"@example.org') == "example.org"
    assert recipient_domain("postmaster") == "postmaster"


def test_ipv4_network_and_host() -> None:
    c = parse_client("192.0.2.77", True, 24, 64)
    assert (c.net, c.awl_key, c.ip) == ("192.0.2.0", "192.0.2.77",
                                       (4, int(ipaddress.ip_address("192.0.2.77"))))
    assert parse_client("192.0.2.77", True, 16, 64).net == "192.0.0.0"
    assert parse_client("192.0.2.77", True, 0, 64).net == "0.0.0.0"
    assert parse_client("192.0.2.77", False, 24, 64).net == "192.0.2.77"


def test_ipv6_network_in_postgrey_text_form() -> None:
    c = parse_client("2001:DB8:0:0:1::5", True, 24, 64)
    assert c.net == "2001:db8:0:0:0:0:0:0"  # NetAddr::IP's form, lower-cased
    assert c.awl_key == "2001:db8:0:0:1:0:0:5"
    assert parse_client("2001:db8:aa:bb:1::5", True, 24, 48).net == "2001:db8:aa:0:0:0:0:0"
    assert parse_client("2001:db8::5", False, 24, 64).net == "2001:db8:0:0:0:0:0:5"


@pytest.mark.parametrize("address", ["not-an-ip", "", "999.1.2.3", "unknown", "[1.2.3.4]"])
def test_weird_client_address_is_its_own_network(address: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="filterd.greylist"):
        c = parse_client(address, True, 24, 64)
    assert c.ip is None
    assert c.net == c.awl_key == address.lower()
    assert "not an IP address" in caplog.text
