"""Asynchronous A/TXT lookups for DNSBLs: bounded time, cached, coalesced, never raising.

A DNSBL is advice, not a dependency: when a list is slow, broken or gone, mail must
keep flowing.  So every lookup ends within ``dnsbl_timeout`` and every failure (timeout,
SERVFAIL, REFUSED, network error) is reported as "not listed" with a logged warning and
a ``temporary_failure`` flag for the rare caller that prefers to defer.  This is what
Postfix does for ``reject_rbl_client`` and postscreen does for its DNSBL score.

``dnsbl_timeout`` is the whole budget of a lookup, and each name server is given its
share of it to answer in (all of it when there is one): the resolver library's own
per-try default (2 s) made every answer slower than that be dropped and asked again,
whatever ``dnsbl_timeout`` said.

Answers, positive and negative (NXDOMAIN or no A record, cached for the SOA's negative
TTL as RFC 2308 says), are kept for their TTL capped by ``dnsbl_cache_max_ttl``.
Failures are cached too, for ``dnsbl_failure_ttl`` (RFC 2308 section 7 allows up to five
minutes): otherwise, while a list is down, every request from the same client waits
the whole timeout again.  Identical lookups that are in flight at the same time share
one query, so a burst of connections from one host costs one packet per list.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from dns.rdatatype import RdataType

from filterd.config import Config
from filterd.config.types import split_list
from filterd.dnsbl.cache import TtlCache
from filterd.log import RateLimitedLog
from filterd.netaddr import parse_host_port

log = logging.getLogger("filterd.dnsbl")
_limited = RateLimitedLog(log)  # a list that is down fails every lookup

_QueryKey = tuple[str, RdataType]  # (name, record type): what is cached and shared

def parse_nameserver(text: str) -> tuple[str, int]:
    """``host[:port]``, ``[v6]:port`` or a bare IPv6 address; the host must be an IP address.

    Names are refused, as in resolv.conf: resolving the resolver's own name would need
    a resolver.
    """
    try:
        host, port, _ = parse_host_port(text, 53, bare_ipv6=True)
    except ValueError as exc:
        raise ValueError(f"expected a name server as ip, ip:port or [ipv6]:port, got {text!r}: {exc}") from None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"name server {text!r} is not an IP address") from None
    return host, port


def as_nameservers(value: str) -> list[tuple[str, int]]:
    """Param converter for ``dns_nameservers``; empty means the system resolver."""
    return [parse_nameserver(item) for item in split_list(value)]


@dataclass(frozen=True)
class DnsAnswer:
    """The outcome of one lookup: the records found (empty = not listed).

    ``records`` holds dotted quads for A lookups and the text of each record for TXT.
    ``temporary_failure`` is set when the list could not be asked (timeout, SERVFAIL,
    REFUSED, network error); the records are then empty.
    """

    qname: str
    records: tuple[str, ...] = ()
    temporary_failure: bool = False

    @property
    def listed(self) -> bool:
        return bool(self.records)


def _negative_ttl(response: dns.message.Message | None) -> float:
    """RFC 2308: min(SOA TTL, SOA MINIMUM) from the authority section; 0 without a SOA."""
    if response is None:
        return 0.0
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return float(min(rrset.ttl, rrset[0].minimum))
    return 0.0


def _record_text(rdata: Any) -> str:
    """A TXT record's character-strings are one text split at 255 octets: join them."""
    return b"".join(rdata.strings).decode("utf-8", "replace")


class DnsblResolver:
    """A/TXT lookups against the configured name servers (or /etc/resolv.conf).

    ``lookups_sent`` counts lookups that went to the network (cache misses that were
    not coalesced with another in-flight lookup); ``cache_hits`` counts answers served
    from the cache.  Both exist so operators and tests can see the cache working.
    """

    def __init__(
        self,
        nameservers: list[tuple[str, int]] | None = None,
        timeout: float = 10.0,
        cache_max_ttl: float = 3600.0,
        cache_size: int = 10000,
        failure_ttl: float = 60.0,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"DNSBL timeout must be > 0, got {timeout}")
        self.timeout = timeout
        self.cache_max_ttl = cache_max_ttl
        self.failure_ttl = failure_ttl
        self._resolver = self.make_resolver(nameservers or [])
        # The budget is the lifetime of a lookup; each server has its share to answer in.
        self._resolver.lifetime = timeout
        self._resolver.timeout = timeout / max(1, len(self._resolver.nameservers))
        self._cache: TtlCache[_QueryKey, DnsAnswer] = TtlCache(cache_size)
        self._inflight: dict[_QueryKey, asyncio.Task[DnsAnswer]] = {}
        self.lookups_sent = 0
        self.cache_hits = 0

    @classmethod
    def from_config(cls, cfg: Config) -> "DnsblResolver":
        """Build from a :class:`filterd.config.Config` (parameters in dnsbl/params.py)."""
        return cls(
            nameservers=cfg.get("dns_nameservers"),
            timeout=cfg.get("dnsbl_timeout"),
            cache_max_ttl=cfg.get("dnsbl_cache_max_ttl"),
            cache_size=cfg.get("dnsbl_cache_size"),
            failure_ttl=cfg.get("dnsbl_failure_ttl"),
        )

    @staticmethod
    def make_resolver(nameservers: list[tuple[str, int]]) -> dns.asyncresolver.Resolver:
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in nameservers]
            return resolver
        try:
            return dns.asyncresolver.Resolver(configure=True)
        except dns.resolver.NoResolverConfiguration as exc:
            # What the C library does without a resolv.conf: ask a server on this host.
            log.warning("no usable /etc/resolv.conf (%s); using 127.0.0.1 for DNSBL lookups", exc)
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = ["127.0.0.1"]
            return resolver

    async def lookup_a(self, qname: str) -> DnsAnswer:
        """A records of ``qname``; NXDOMAIN, no data and every failure give no records."""
        return await self._lookup(qname, dns.rdatatype.A)

    async def lookup_txt(self, qname: str) -> str | None:
        """The TXT text of ``qname`` (several records joined by a space), or None."""
        answer = await self._lookup(qname, dns.rdatatype.TXT)
        return " ".join(answer.records) if answer.records else None

    async def _lookup(self, qname: str, rdtype: RdataType) -> DnsAnswer:
        key = (qname.lower().rstrip("."), rdtype)
        cached = self._cache.get(key, asyncio.get_running_loop().time())
        if cached is not None:
            self.cache_hits += 1
            return cached
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fetch(key))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        # shield: one impatient caller being cancelled must not cancel the shared lookup.
        return await asyncio.shield(task)

    def _forget(self, key: _QueryKey, task: asyncio.Task[DnsAnswer]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]

    async def _fetch(self, key: _QueryKey) -> DnsAnswer:
        qname, rdtype = key
        self.lookups_sent += 1
        answer, ttl = await self._query(qname, rdtype)
        self._cache.put(key, answer, min(ttl, self.cache_max_ttl), asyncio.get_running_loop().time())
        return answer

    def _failed(self, qname: str, rdtype: RdataType, why: str) -> tuple[DnsAnswer, float]:
        _limited.warning(
            "failed DNSBL lookups",
            "DNSBL lookup of %s %s failed: %s; treating it as not listed for %gs",
            qname, dns.rdatatype.to_text(rdtype), why, self.failure_ttl,
        )
        return DnsAnswer(qname, (), True), self.failure_ttl

    async def _query(self, qname: str, rdtype: RdataType) -> tuple[DnsAnswer, float]:
        """One resolver call, mapped to (answer, seconds it may be cached)."""
        try:
            name = dns.name.from_text(qname)
            result = await self._resolver.resolve(
                name, rdtype, search=False, raise_on_no_answer=False, lifetime=self.timeout,
            )
        except dns.resolver.NXDOMAIN as exc:
            responses = exc.kwargs.get("responses") or {}
            return DnsAnswer(qname), _negative_ttl(next(iter(responses.values()), None))
        except dns.exception.Timeout:
            return self._failed(qname, rdtype, f"no answer within {self.timeout:g}s")
        except dns.resolver.NoNameservers as exc:
            return self._failed(qname, rdtype, f"server failure ({exc})")
        except (dns.exception.DNSException, OSError) as exc:
            return self._failed(qname, rdtype, f"{type(exc).__name__}: {exc}")
        if result.rrset is None:
            return DnsAnswer(qname), _negative_ttl(result.response)
        if rdtype == dns.rdatatype.TXT:
            records = tuple(_record_text(rdata) for rdata in result.rrset)
        else:
            records = tuple(rdata.address for rdata in result.rrset)
        return DnsAnswer(qname, records), float(result.rrset.ttl)
