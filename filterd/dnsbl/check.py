"""DNSBL/RHSBL/URIBL checks and postscreen-style scoring, as the restriction engine uses them.

The engine asks two kinds of question: "is this client (or domain) listed by this one
list?" (``reject_rbl_client``, ``reject_rhsbl_*``, URIBL rules) and "what is this
client's combined score over all lists?" (``check_dnsbl_score`` with ``dnsbl_sites``,
``dnsbl_threshold`` and ``dnsbl_whitelist_threshold``, postscreen's semantics).  Both
are answered here on top of :class:`DnsblResolver`, so both share its cache.

Malformed input from mail (a client address that is not an address, a domain that
cannot be a DNS name) is logged and treated as not listed: it is not this layer's job
to reject it, and it must never become a query for some other name.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass
from typing import Protocol

from filterd.dnsbl.names import domain_query_name, ip_query_name, reverse_ip
from filterd.dnsbl.resolver import DnsAnswer
from filterd.dnsbl.sites import Site
from filterd.log import RateLimitedLog

log = logging.getLogger("filterd.dnsbl")
_limited = RateLimitedLog(log)  # the names come from mail: they may come in floods


@dataclass(frozen=True)
class DnsblHit:
    """One site that lists the client or domain.

    ``addresses`` are the A replies that passed the site's filter; ``text`` is the TXT
    record of the same name (Postfix's ``$rbl_reason``), None when the list has none.
    """

    zone: str
    query: str
    addresses: tuple[str, ...]
    text: str | None
    weight: int


class DnsblVerdict(enum.Enum):
    """What a combined score means (postscreen_dnsbl_threshold / _whitelist_threshold)."""

    LISTED = "listed"
    ALLOWLISTED = "allowlisted"
    NEUTRAL = "neutral"


def classify_score(total: int, threshold: int, whitelist_threshold: int) -> DnsblVerdict:
    """postscreen's rules: score >= threshold blocks; a negative whitelist threshold
    allowlists a client whose score is at or below it (0 disables allowlisting)."""
    if total >= threshold:
        return DnsblVerdict.LISTED
    if whitelist_threshold < 0 and total <= whitelist_threshold:
        return DnsblVerdict.ALLOWLISTED
    return DnsblVerdict.NEUTRAL


class Resolver(Protocol):
    """What the checker needs from a resolver (:class:`filterd.dnsbl.resolver.DnsblResolver`)."""

    async def lookup_a(self, qname: str) -> DnsAnswer: ...

    async def lookup_txt(self, qname: str) -> str | None: ...


class DnsblChecker:
    """Per-site queries and scores over a shared :class:`DnsblResolver`."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    async def query_ip(self, site: Site, ip: str) -> DnsblHit | None:
        """The hit if ``site`` lists address ``ip`` (IPv4 or IPv6), else None."""
        try:
            qname = ip_query_name(ip, site.zone)
        except ValueError as exc:
            _limited.warning("addresses not looked up", "DNSBL %s: not looking up %.60r: %s",
                             site.zone, ip, exc)
            return None
        return await self._query(site, qname)

    async def query_domain(self, site: Site, domain: str) -> DnsblHit | None:
        """The hit if ``site`` (an RHSBL/URIBL) lists ``domain``, else None."""
        try:
            qname = domain_query_name(domain, site.zone)
        except ValueError as exc:
            _limited.warning("domains not looked up", "RHSBL %s: not looking up %.60r: %s",
                             site.zone, domain, exc)
            return None
        return await self._query(site, qname)

    async def score_ip(self, sites: list[Site], ip: str) -> tuple[int, list[DnsblHit]]:
        """Query every site in parallel; sum the weights of the sites that list ``ip``.

        As in postscreen, a site whose zone answers with several matching addresses
        counts its weight once, and every matching entry counts (two entries for one
        zone with different filters may both add their weights; the shared cache and
        coalescing keep that to one query).  Hits keep the order of ``sites``.
        """
        try:
            reverse_ip(ip)
        except ValueError as exc:
            _limited.warning("addresses not looked up", "DNSBL score: not looking up %.60r: %s", ip, exc)
            return 0, []
        results = await asyncio.gather(*(self.query_ip(site, ip) for site in sites))
        hits = [hit for hit in results if hit is not None]
        return sum(hit.weight for hit in hits), hits

    async def _query(self, site: Site, qname: str) -> DnsblHit | None:
        answer = await self.resolver.lookup_a(qname)
        matched = site.matches(list(answer.records))
        if not matched:
            return None
        text = await self.resolver.lookup_txt(qname)
        return DnsblHit(site.zone, qname, tuple(matched), text, site.weight)
