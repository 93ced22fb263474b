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
