"""Client address text: the C fast path must agree with ipaddress on every input."""

from __future__ import annotations

import ipaddress

import pytest

from filterd.netaddr import canonical_ipv4, is_ip

CASES = ["192.0.2.1", "0.0.0.0", "255.255.255.255", "2001:db8::1", "::ffff:192.0.2.1",
         "fe80::1%eth0", "010.1.1.1", "1.2.3", "256.1.1.1", "1.2.3.4 ", " 1.2.3.4", "1.2.3.4\x00",
         "not-an-ip", "", "1.2.3.4.5", "[192.0.2.1]", "1.2.3.04"]


def _ipaddress_says(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("text", CASES)
def test_is_ip_agrees_with_ipaddress(text: str) -> None:
    assert is_ip(text) == _ipaddress_says(text)


@pytest.mark.parametrize("text", CASES)
def test_canonical_ipv4_only_for_dotted_quads_ipaddress_prints_back(text: str) -> None:
    value = canonical_ipv4(text)
    if value is None:
        assert not (_ipaddress_says(text) and ipaddress.ip_address(text).version == 4
                    and str(ipaddress.ip_address(text)) == text)
    else:
        assert value == int(ipaddress.IPv4Address(text))
