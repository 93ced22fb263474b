"""access(5) search order over lookup tables, as Postfix's smtpd_check.c applies it.

Addresses (check_sender_access, check_recipient_access; mail_addr_find.c):
``user+ext@domain``, ``user@domain``, the domain and its parents (see below),
``user+ext@``, ``user@``.  The null sender is looked up once, as
``smtpd_null_access_lookup_key`` (``<>``).

Domains: with ``smtpd_access_maps`` in ``parent_domain_matches_subdomains`` (Postfix's
default) the keys are ``a.b.example.com``, ``b.example.com``, ``example.com``, ``com``:
an entry ``example.com`` matches its subdomains.  Without it they are
``a.b.example.com``, ``.b.example.com``, ``.example.com``, ``.com``: only an entry
``.example.com`` matches subdomains.  (A ``.example.com`` entry is never looked up in
the default style.)  A host name that is an IP address gets no parent lookups.

IP addresses (check_client_access): IPv4 ``1.2.3.4``, ``1.2.3``, ``1.2``, ``1``; IPv6 the
compressed form, then repeatedly cut at the last ``:`` (``2001:db8::1``, ``2001:db8:``,
``2001:db8``, ``2001``).

Several tables form one search path like Postfix's MAPS: each key is tried in every
table, in order, before the next (shorter) key.  Pattern tables (regexp, pcre, cidr)
only see the first, whole key - never parent domains, ``user@`` or prefixes.  The first
key found ends the search, whatever its value (``DUNNO`` included).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Sequence

from filterd.maps.base import LookupTable
from filterd.netaddr import is_ip

#: Local parts that split_addr() never splits at the recipient delimiter.
_NEVER_SPLIT = frozenset({"postmaster", "mailer-daemon", "double-bounce"})


@dataclass(frozen=True, slots=True)
class Match:
    """Which table answered, for which search key, with what value."""

    table: str
    key: str
    value: str


def _find(tables: Sequence[LookupTable], key: str, partial: bool) -> Match | None:
    for table in tables:
        if partial and table.is_pattern:
            continue
        value = table.lookup(key)
        if value is not None:
            return Match(table.spec, key, value)
    return None


def strip_extension(address: str, delimiters: str) -> str | None:
    """``user+ext@domain`` -> ``user@domain``; None when there is nothing to strip.

    As Postfix's split_addr(): splits at the first of any delimiter character; never
    splits postmaster, MAILER-DAEMON or double-bounce, nor (when ``-`` is a delimiter)
    ``owner-foo`` and ``foo-request``; never leaves an empty local part.
    """
    if not delimiters:
        return None
    at = address.rfind("@")
    local, domain = (address[:at], address[at:]) if at >= 0 else (address, "")
    low = local.lower()
    if low in _NEVER_SPLIT:
        return None
    if "-" in delimiters and (low.startswith("owner-") or (len(low) > 8 and low.endswith("-request"))):
        return None
    cut = next((i for i, ch in enumerate(local) if ch in delimiters), -1)
    if cut <= 0:
        return None
    return local[:cut] + domain


def _domain_keys(domain: str, parent_matches_subdomains: bool) -> list[str]:
    keys: list[str] = []
    name = domain
    while name:
        keys.append(name)
        nxt = name.find(".", 1)
        if nxt < 0:
            break
        name = name[nxt + 1:] if parent_matches_subdomains else name[nxt:]
    return keys


def lookup_address(
    tables: Sequence[LookupTable],
    address: str,
    *,
    parent_matches_subdomains: bool = True,
    rcpt_delim: str = "",
    null_key: str = "<>",
) -> Match | None:
    """Search a sender or recipient address in access(5) order."""
    if address in ("", "<>"):
        return _find(tables, null_key, False)
    bare = strip_extension(address, rcpt_delim)
    match = _find(tables, address, False)
    if match is None and bare is not None:
        match = _find(tables, bare, True)
    at = address.rfind("@")
    if match is not None or at < 0:
        return match
    for key in _domain_keys(address[at + 1:], parent_matches_subdomains):
        match = _find(tables, key, True)
        if match is not None:
            return match
    match = _find(tables, address[:at + 1], True)
    if match is None and bare is not None:
        match = _find(tables, bare[:bare.rfind("@") + 1], True)
    return match


def lookup_domain(
    tables: Sequence[LookupTable], domain: str, *, parent_matches_subdomains: bool = True
) -> Match | None:
    """Search a host name (client name, HELO name) and its parent domains."""
    if is_ip(domain):
        return _find(tables, domain, False)
    for i, key in enumerate(_domain_keys(domain, parent_matches_subdomains)):
        match = _find(tables, key, i > 0)
        if match is not None:
            return match
    return None


def lookup_ip(tables: Sequence[LookupTable], ip: str) -> Match | None:
    """Search a client IP address, then its shorter octet (IPv6: ``:``-field) prefixes.

    An IPv6 address is first put in compressed form (Postfix logs and looks up that
    form); an IPv4-mapped IPv6 address is looked up as the IPv4 address, as Postfix's
    smtpd converts it on connect.
    """
    addr = ip.strip()
    if addr.startswith("[") and addr.endswith("]"):
        addr = addr[1:-1]
    if ":" in addr:
        try:
            parsed = ipaddress.IPv6Address(addr)
        except ValueError:
            pass
        else:
            mapped = parsed.ipv4_mapped
            addr = str(mapped) if mapped is not None else parsed.compressed
    delim = ":" if ":" in addr else "."
    partial = False
    while addr:
        match = _find(tables, addr, partial)
        if match is not None:
            return match
        cut = addr.rfind(delim)
        if cut < 0:
            break
        addr = addr[:cut]
        partial = True
    return None
