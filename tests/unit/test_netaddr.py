"""Address text from the network and from parameters: the C fast path must agree with
ipaddress on every input; one host:port parser for every endpoint."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from filterd.netaddr import HostPort, canonical_ipv4, is_ip, parse_host_port

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


@pytest.mark.parametrize("text, default, kwargs, expected", [
    ("[2001:db8::1]:25", None, {}, HostPort("2001:db8::1", 25, True)),
    ("[ipv6:2001:db8::1]", 25, {}, HostPort("ipv6:2001:db8::1", 25, True)),
    ("mx.example:2525", None, {}, HostPort("mx.example", 2525, False)),
    (" 127.0.0.1:10025 ", None, {}, HostPort("127.0.0.1", 10025, False)),
    ("mx.example", 25, {}, HostPort("mx.example", 25, False)),
    ("[mx.example]", 25, {}, HostPort("mx.example", 25, True)),
    ("[mx.example]:submission", 25, {"services": True}, HostPort("mx.example", 587, True)),
    ("2001:db8::53", 53, {"bare_ipv6": True}, HostPort("2001:db8::53", 53, False)),
    (":10023", None, {"default_host": "127.0.0.1"}, HostPort("127.0.0.1", 10023, False)),
    ("h:65535", None, {}, HostPort("h", 65535, False)),
])
def test_one_host_port_parser(text: str, default: int | None, kwargs: dict[str, Any],
                              expected: HostPort) -> None:
    assert parse_host_port(text, default, **kwargs) == expected


@pytest.mark.parametrize("text, default, kwargs, why", [
    ("", None, {}, "no host given"),
    ("", 25, {}, "no host given"),
    ("   ", 25, {}, "no host given"),
    ("[]:25", None, {}, "no host given"),
    ("mx.example", None, {}, "no port given"),
    ("[::1]", None, {}, "no port given"),
    ("h:0", None, {}, "port out of range: 0 is outside 1..65535"),
    ("h:65536", None, {}, "port out of range"),
    ("h:99999999999999999999", None, {}, "port out of range"),
    ("h:", None, {}, "bad port ''"),
    ("h:x", None, {}, "bad port 'x': expected a number"),
    ("h:\u0661\u0662", None, {}, "bad port"),  # Arabic-Indic digits are not a port
    ("h:smtp", None, {}, "bad port 'smtp'"),  # service names only where asked for
    ("[h]:nosuchservice", 25, {"services": True}, "unknown service 'nosuchservice'"),
    ("2001:db8::1", 25, {}, "expected host:port or \\[host\\]:port"),
    ("2001:db8::1:25", None, {"bare_ipv6": True}, "a port needs the address in brackets"),
    ("[::1", 25, {}, "expected host:port"),
    ("a b:25", None, {}, "expected host:port"),
    ("a]:25", None, {}, "expected host:port"),
    ("h:2\n5", None, {}, "expected host:port"),
])
def test_host_port_errors_say_what_was_wrong(text: str, default: int | None, kwargs: dict[str, Any],
                                             why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_host_port(text, default, **kwargs)
