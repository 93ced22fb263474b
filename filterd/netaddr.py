"""Client addresses as text from the network: is it an IP address, and the fast form of one.

Every request carries a client address (a policy attribute, XFORWARD ADDR, the peer of a
connection), and it is hostile input like everything else. ``ipaddress`` is exact but
costs dozens of Python calls per address; a canonical dotted quad -- what Postfix sends
nearly always -- is checked and converted by the C parser in one step, and everything
else (IPv6, leading zeros, garbage) takes ``ipaddress``'s careful path.
"""

from __future__ import annotations

import ipaddress
import socket


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
