"""DNSBL site entries in Postfix's ``postscreen_dnsbl_sites`` syntax.

An entry is ``zone[=filter|&mask][*weight]``::

    zen.spamhaus.org                         any A reply is a listing, weight 1
    zen.spamhaus.org=127.0.0.[2..11]*3       only these replies, weight 3
    list.dnswl.org=127.0.[0..255].[1..3]*-2  an allowlist: matching lowers the score
    bl.example&0.0.0.4                       replies with bit 0.0.0.4 set

A filter pattern has four dot-separated fields; each field is a decimal number or a
``[...]`` list of ``;``-separated numbers and ``lo..hi`` ranges (``;`` because ``,``
already separates list elements in filterd.cf).  The bit mask form, which Postfix lacks,
is what list operators such as multi.surbl.org document: the list encodes several
sub-lists as bits of one reply address, and a reply matches when it shares any bit with
the mask.  The same filter syntax is used for ``reject_rbl_client zone=127.0.0.2``.

Parsing and matching are pure: no DNS here, so the engine and the tests can reason about
a site without a network.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from filterd.config.types import split_list
from filterd.dnsbl.names import normalize_zone

_RANGE = re.compile(r"(\d{1,3})(?:\.\.(\d{1,3}))?")
_WEIGHT = re.compile(r"[+-]?\d{1,9}")
_SYNTAX = "zone[=d.d.d.d|&d.d.d.d][*weight]"


@dataclass(frozen=True)
class AddressPattern:
    """An IPv4 reply pattern: for each octet, the inclusive ranges it may fall in."""

    octets: tuple[tuple[tuple[int, int], ...], ...]

    def match(self, address: ipaddress.IPv4Address) -> bool:
        return all(
            any(lo <= value <= hi for lo, hi in ranges)
            for value, ranges in zip(address.packed, self.octets)
        )

    def __str__(self) -> str:
        fields = []
        for ranges in self.octets:
            if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
                fields.append(str(ranges[0][0]))
                continue
            items = [str(lo) if lo == hi else f"{lo}..{hi}" for lo, hi in ranges]
            fields.append("[" + ";".join(items) + "]")
        return "=" + ".".join(fields)


@dataclass(frozen=True)
class BitMask:
    """A reply matches when it has at least one bit of ``mask`` set."""

    mask: int

    def match(self, address: ipaddress.IPv4Address) -> bool:
        return bool(int(address) & self.mask)

    def __str__(self) -> str:
        return "&" + str(ipaddress.IPv4Address(self.mask))


Filter = AddressPattern | BitMask


@dataclass(frozen=True)
class Site:
    """One DNSBL/DNSWL zone with an optional reply filter and a score weight."""

    zone: str
    filter: Filter | None = None
    weight: int = 1

    def matches(self, addresses: list[str]) -> list[str]:
        """The replies that count as a listing for this site (all of them without a filter).

        Replies that are not IPv4 addresses never match: a DNSBL answers with A records,
        and anything else is a broken or hostile server.
        """
        out = []
        for text in addresses:
            try:
                address = ipaddress.IPv4Address(text)
            except ValueError:
                continue
            if self.filter is None or self.filter.match(address):
                out.append(text)
        return out

    def __str__(self) -> str:
        text = self.zone + (str(self.filter) if self.filter is not None else "")
        return text if self.weight == 1 else f"{text}*{self.weight}"


def _bad(entry: str, why: str) -> ValueError:
    return ValueError(f"bad DNSBL site {entry!r}: {why} (expected {_SYNTAX})")


def _parse_field(entry: str, field: str) -> tuple[tuple[int, int], ...]:
    """One octet of a pattern: ``n`` or ``[n;lo..hi;...]`` (callers split on dots first)."""
    bracketed = len(field) > 2 and field.startswith("[") and field.endswith("]")
    items = field[1:-1].split(";") if bracketed else [field]
    ranges = []
    for item in items:
        m = _RANGE.fullmatch(item)
        if m is None:
            raise _bad(entry, f"filter field {field!r} is not a number 0..255 or a [n;lo..hi] list")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi > 255 or lo > 255:
            raise _bad(entry, f"filter field {field!r} has a number above 255")
        if lo > hi:
            raise _bad(entry, f"filter field {field!r} has a range whose start exceeds its end")
        ranges.append((lo, hi))
    return tuple(ranges)


def _parse_pattern(entry: str, text: str) -> AddressPattern:
    fields = _split_outside_brackets(entry, text)
    if len(fields) != 4:
        raise _bad(entry, f"filter {text!r} does not have four dot-separated fields")
    return AddressPattern(tuple(_parse_field(entry, f) for f in fields))


def _split_outside_brackets(entry: str, text: str) -> list[str]:
    """Split on dots that are not inside ``[...]`` (ranges contain ``..`` themselves)."""
    fields: list[str] = []
    buf: list[str] = []
    depth = 0
    for ch in text:
        if ch == "[":
            if depth:
                raise _bad(entry, f"filter {text!r} has nested '['")
            depth = 1
        elif ch == "]":
            if not depth:
                raise _bad(entry, f"filter {text!r} has ']' without '['")
            depth = 0
        if ch == "." and not depth:
            fields.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    if depth:
        raise _bad(entry, f"filter {text!r} has '[' without ']'")
    fields.append("".join(buf))
    return fields


def _parse_mask(entry: str, text: str) -> BitMask:
    try:
        mask = int(ipaddress.IPv4Address(text))
    except ValueError:
        raise _bad(entry, f"bit mask {text!r} is not a dotted quad like 0.0.0.4") from None
    if mask == 0:
        raise _bad(entry, "bit mask 0.0.0.0 can never match")
    return BitMask(mask)


def parse_site(entry: str, allow_weight: bool = True) -> Site:
    """Parse one entry; ``allow_weight=False`` for ``reject_rbl_client`` arguments.

    Raises ValueError naming the entry and what was expected.
    """
    text = entry.strip()
    weight = 1
    if "*" in text:
        if not allow_weight:
            raise _bad(entry, "a *weight is only meaningful in a scored site list")
        text, _, weight_text = text.rpartition("*")
        if not _WEIGHT.fullmatch(weight_text):
            raise _bad(entry, f"weight {weight_text!r} is not an integer")
        weight = int(weight_text)
    cut = min((i for i in (text.find("="), text.find("&")) if i >= 0), default=-1)
    zone_text, kind, filter_text = (text, "", "") if cut < 0 else (text[:cut], text[cut], text[cut + 1:])
    try:
        zone = normalize_zone(zone_text)
    except ValueError as exc:
        raise _bad(entry, str(exc)) from None
    site_filter: Filter | None = None
    if kind == "=":
        site_filter = _parse_pattern(entry, filter_text)
    elif kind == "&":
        site_filter = _parse_mask(entry, filter_text)
    return Site(zone, site_filter, weight)


def as_dnsbl_sites(value: str) -> list[Site]:
    """Param converter for ``postscreen_dnsbl_sites``-style lists."""
    return [parse_site(item) for item in split_list(value)]
