"""Building DNSBL query names: reversed IPv4 octets, IPv6 nibbles, RHSBL domains.

Names that come from mail (client addresses, HELO names, sender domains, URIs) are
untrusted.  Everything here either returns a name that is a valid DNS query below the
zone, or raises ValueError: a malformed name must never turn into a query for a
different name (an empty label, an escape sequence or an over-long name would).
"""

from __future__ import annotations

import encodings.idna
import ipaddress
import re

MAX_NAME = 253
"""Longest domain name in text form without the trailing dot (255 octets on the wire)."""

MAX_LABEL = 63

_LDH = re.compile(r"[a-z0-9_-]+")
"""Letters, digits, hyphen, plus underscore, which real host names in mail do contain."""


def _label_to_ascii(label: str, name: str) -> str:
    if not label:
        raise ValueError(f"domain {name!r} has an empty label")
    if label.isascii():
        ascii_label = label.lower()
    else:
        try:
            ascii_label = encodings.idna.ToASCII(label).decode("ascii").lower()
        except UnicodeError as exc:
            raise ValueError(f"domain {name!r} has a label that is not valid IDNA: {exc}") from None
    if len(ascii_label) > MAX_LABEL:
        raise ValueError(f"domain {name!r} has a label longer than {MAX_LABEL} characters")
    if not _LDH.fullmatch(ascii_label):
        raise ValueError(
            f"domain {name!r} has a label with characters other than letters, digits, '-' or '_'"
        )
    return ascii_label


def normalize_domain(domain: str) -> str:
    """Lower-case ASCII form of a domain name (IDNA A-labels), without the trailing dot."""
    name = domain.strip()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise ValueError("empty domain name")
    ascii_name = ".".join(_label_to_ascii(label, domain) for label in name.split("."))
    if len(ascii_name) > MAX_NAME:
        raise ValueError(f"domain {domain!r} is longer than {MAX_NAME} characters")
    return ascii_name


normalize_zone = normalize_domain
"""A DNSBL zone obeys the same rules as any domain it is queried with."""


def _join(prefix: str, zone: str) -> str:
    qname = f"{prefix}.{normalize_zone(zone)}"
    if len(qname) > MAX_NAME:
        raise ValueError(f"query name {qname!r} would be longer than {MAX_NAME} characters")
    return qname


def reverse_ip(ip: str) -> str:
    """The DNSBL key of an address: 4 reversed octets (IPv4) or 32 reversed nibbles (IPv6).

    An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``, what a dual-stack socket reports
    for an IPv4 client) is looked up as the IPv4 address it is.
    """
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        raise ValueError(f"not an IP address: {ip!r}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        return ".".join(str(octet) for octet in reversed(address.packed))
    return ".".join(reversed(address.packed.hex()))


def ip_query_name(ip: str, zone: str) -> str:
    """``192.0.2.1`` below ``zen.test`` gives ``1.2.0.192.zen.test``."""
    return _join(reverse_ip(ip), zone)


def domain_query_name(domain: str, zone: str) -> str:
    """``Bad.Example.`` below ``dbl.test`` gives ``bad.example.dbl.test`` (RHSBL/URIBL)."""
    return _join(normalize_domain(domain), zone)
