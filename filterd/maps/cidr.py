"""``cidr:`` tables (cidr_table(5)): IPv4/IPv6 networks matched in file order.

A rule is ``network/prefix result`` or ``address result`` (an exact match), optionally
written in ``[]``; ``!pattern result`` matches keys outside the network and
``if [!]pattern`` ... ``endif`` blocks nest (Postfix 3.2).  Host bits under the prefix
must be zero.  A key that is not an IP address matches nothing; an IPv4-mapped IPv6 key
(``::ffff:1.2.3.4``) is IPv6 and does not match IPv4 rules, and a rule of the other
address family never fires, not even a negated one - exactly as postmap -q.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from filterd.maps.blocks import IfBlocks
from filterd.maps.errors import MapError
from filterd.maps.source import FileSource, InlineSource, Line, inline_rules


@dataclass(slots=True)
class CidrRule:
    version: int
    network: int
    mask: int
    negate: bool
    is_if: bool
    result: str
    skip: int = 0


def parse_network(text: str, place: str) -> tuple[int, int, int]:
    """``addr``, ``addr/len``, ``[addr]`` or ``[addr]/len`` -> (version, network, mask)."""
    addr_text, slash, length_text = text.partition("/")
    if addr_text.startswith("[") and addr_text.endswith("]"):
        addr_text = addr_text[1:-1]
    try:
        addr = ipaddress.ip_address(addr_text)
    except ValueError:
        raise MapError(f"{place}: bad address pattern {text!r}") from None
    bits = addr.max_prefixlen
    if slash:
        if not length_text.isdigit() or int(length_text) > bits:
            raise MapError(f"{place}: bad mask length in {text!r} (0 to {bits})")
        length = int(length_text)
    else:
        length = bits
    mask = ((1 << bits) - 1) ^ ((1 << (bits - length)) - 1)
    value = int(addr)
    if value & ~mask:
        net = ipaddress.ip_network(f"{addr_text}/{length}", strict=False)
        raise MapError(f"{place}: non-null host address bits in {text!r}, perhaps you "
                       f"should use {net} instead")
    return addr.version, value, mask


def parse_cidr(spec: str, lines: list[Line]) -> list[CidrRule]:
    rules: list[CidrRule] = []
    blocks = IfBlocks(spec)
    for place, number, is_if, body in blocks.lines(rules, lines):
        negate = body.startswith("!")
        if negate:
            body = body[1:].lstrip()
        fields = body.split(None, 1)
        if not fields:
            raise MapError(f"{place}: missing address pattern")
        version, network, mask = parse_network(fields[0], place)
        result = fields[1].strip() if len(fields) == 2 else ""
        if is_if:
            if result:
                raise MapError(f"{place}: unexpected text after if pattern: {result!r} "
                               f"(rules inside if..endif must not start with white space)")
            blocks.open(rules, CidrRule(version, network, mask, negate, True, ""), number)
            continue
        if not result:
            raise MapError(f"{place}: no lookup result after {fields[0]!r}")
        rules.append(CidrRule(version, network, mask, negate, False, result))
    return rules


class CidrTable:
    """A cidr: table from a file or from ``cidr:{ {rule}, ... }``."""

    is_pattern = True

    def __init__(self, spec: str, name: str):
        self.spec = spec
        self._source: FileSource[list[CidrRule]] | InlineSource[list[CidrRule]]
        if name.startswith("{"):
            self._source = InlineSource(parse_cidr(spec, inline_rules(spec, name)))
        else:
            self._source = FileSource(spec, name, parse_cidr)

    def lookup(self, key: str) -> str | None:
        rules = self._source.get()
        try:
            addr = ipaddress.ip_address(key)
        except ValueError:
            return None
        version, value = addr.version, int(addr)
        i, n = 0, len(rules)
        while i < n:
            rule = rules[i]
            # A rule of the other address family never fires, negated or not (Postfix).
            hit = rule.version == version and ((value & rule.mask) == rule.network) != rule.negate
            if rule.is_if:
                i = i + 1 if hit else rule.skip
            elif hit:
                return rule.result
            else:
                i += 1
        return None
