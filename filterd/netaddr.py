"""Client addresses as text from the network: is it an IP address, and the fast form of one.

Every request carries a client address (a policy attribute, XFORWARD ADDR, the peer of a
connection), and it is hostile input like everything else. ``ipaddress`` is exact but
costs dozens of Python calls per address; a canonical dotted quad -- what Postfix sends
nearly always -- is checked and converted by the C parser in one step, and everything
else (IPv6, leading zeros, garbage) takes ``ipaddress``'s careful path.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import NamedTuple


def canonical_ipv4(address: str) -> int | None:
    """``address`` as a number if it is a dotted quad in canonical form, else None."""
    try:
        packed = socket.inet_pton(socket.AF_INET, address)
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None
    return int.from_bytes(packed, "big") if socket.inet_ntoa(packed) == address else None


def is_ip(text: str) -> bool:
    """``text`` is an IPv4 or IPv6 address (as ``ipaddress.ip_address`` accepts it)."""
    if canonical_ipv4(text) is not None:
        return True
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


#: One label of a host name: letters, digits, ``_`` and ``-``, 1 to 63, no ``-`` at an end.
_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def valid_hostname(name: str, *, trailing_dot: bool = False) -> bool:
    """Postfix's valid_hostname(): dot-separated labels of letters, digits, ``-`` and
    ``_``, at most 255 characters; a name made only of digits and dots is not a host name
    (it would be an address). ``trailing_dot`` accepts the absolute form
    (``mx.example.com.``), as smtpd's HELO checks do, but not a bare ``host.``."""
    if not name or len(name) > 255:
        return False
    if trailing_dot and name.endswith("."):
        if name.count(".") == 1:
            return False
        name = name.rstrip(".")
    if name.startswith(".") or name.endswith("."):
        return False
    labels = name.split(".")
    if all(label.isdigit() for label in labels):
        return False
    return all(_HOST_LABEL.fullmatch(label) for label in labels)


class HostPort(NamedTuple):
    """A host and a port as written in a parameter: ``[host]:port``, ``host:port``..."""

    host: str
    port: int
    bracketed: bool
    """Written ``[host]``: Postfix's "no MX lookup" for a next hop."""


#: ``[host]`` or ``host``, then optionally ``:port``. Brackets enclose IPv6 addresses;
#: an unbracketed host has no colon. Neither holds white space or stray brackets.
_HOST_PORT = re.compile(r"\[([^\[\]\s]*)\](?::([^:\[\]\s]*))?|([^:\[\]\s]*)(?::([^:\[\]\s]*))?")


def parse_host_port(text: str, default_port: int | None = None, *, services: bool = False,
                    bare_ipv6: bool = False, default_host: str | None = None) -> HostPort:
    """The one host:port parser: ``[host]:port`` and ``host:port``, and ``[host]`` and
    ``host`` alone when there is a ``default_port``.

    ``services`` also takes a port by its service name (``[mx]:submission``, as Postfix
    next hops); ``bare_ipv6`` takes an unbracketed text with two colons or more as an IPv6
    address alone (``2001:db8::53``, as resolv.conf writes name servers);
    ``default_host`` stands for an empty host (``inet::10023``), which is an error
    without it. Surrounding white space is ignored. A ValueError says what was wrong;
    callers add which parameter it was.
    """
    item = text.strip()
    if bare_ipv6 and item.count(":") >= 2 and not item.startswith("["):
        if default_port is None:
            raise ValueError(f"a port needs the address in brackets: [{item}]:port")
        return HostPort(item, default_port, False)
    m = _HOST_PORT.fullmatch(item)
    if m is None:
        raise ValueError("expected host:port or [host]:port (IPv6 addresses in brackets)")
    bracketed = m.group(1) is not None
    host = m.group(1) if bracketed else m.group(3)
    port_text = m.group(2) if bracketed else m.group(4)
    if not host:
        if default_host is None:
            raise ValueError("no host given")
        host = default_host
    if port_text is None:
        if default_port is None:
            raise ValueError("no port given")
        return HostPort(host, default_port, bracketed)
    return HostPort(host, _port(port_text, services), bracketed)


def _port(text: str, services: bool) -> int:
    """A port number in 1..65535, or a TCP service's port when ``services``."""
    if text.isascii() and text.isdigit():
        port = int(text) if len(text) <= 5 else 0
        if not 0 < port < 65536:
            raise ValueError(f"port out of range: {text} is outside 1..65535")
        return port
    if not (services and re.fullmatch(r"[A-Za-z0-9][\w-]*", text)):
        raise ValueError(f"bad port {text!r}: expected a number" + (" or a service name" if services else ""))
    try:
        return socket.getservbyname(text, "tcp")
    except OSError:
        raise ValueError(f"unknown service {text!r}") from None
