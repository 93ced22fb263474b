"""Where a recipient goes: transport_maps and relayhost, then the next hop's hosts by MX.

The decisions are pure functions over lookup results, so they are tested without a
network; :class:`MxResolver` is the thin dnspython layer that feeds them.

Routing (Postfix trivial-rewrite, for a gateway: everything is remote):

- ``transport_maps`` is searched for the full address, the domain, each parent as
  ``.parent``, then ``*``; the result is ``transport:nexthop`` (either part may be empty).
- Otherwise ``default_transport`` (``smtp``) is used.
- The next hop, in decreasing precedence: the transport_maps result, the nexthop of
  ``default_transport``, ``relayhost``, the recipient domain.
- ``error:text``, ``retry:text`` and ``discard:text`` carry their text as next hop.

Hosts of a next hop (Postfix smtp(8)):

- ``[host]`` or ``[host]:port`` skips the MX lookup: the host's own addresses.
- ``domain`` or ``domain:port``: the MX records in preference order (equal preferences
  shuffled with ``smtp_randomize_addresses``); no MX record means the domain's own
  A/AAAA (RFC 5321 implicit MX); a null MX (RFC 7505, a single MX ``.``) bounces with
  5.1.10; a domain that does not exist bounces with 5.4.4; a lookup that fails is
  deferred with 4.4.3; an MX list that names this host stops before this host, and
  bounces (5.4.6 "loops back to myself") when this host is the best one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from filterd.mta.delivery import BOUNCED, DEFERRED, Route
from filterd.netaddr import parse_host_port

if TYPE_CHECKING:
    from filterd.config import Config

NO_MX_TRANSPORTS = frozenset({"error", "retry", "discard"})
"""Transports whose next hop is a text, not a place."""

Lookup = Callable[[str], "str | None"]


def split_transport(value: str) -> tuple[str, str]:
    """``transport:nexthop`` -> (transport, nexthop); either may be empty."""
    transport, _, nexthop = value.strip().partition(":")
    return transport.strip(), nexthop.strip()


def transport_keys(address: str) -> list[str]:
    """transport(5) search order: address, domain, .parent domains, ``*``."""
    local, at, domain = address.rpartition("@")
    if not at:
        return ["*"]
    domain = domain.lower().rstrip(".")
    keys = [address] if local else []
    if domain:
        keys.append(domain)
        labels = domain.split(".")
        keys += ["." + ".".join(labels[i:]) for i in range(1, len(labels))]
    keys.append("*")
    return keys


def route(address: str, lookups: Sequence[Lookup], default_transport: str = "smtp",
          relayhost: str = "") -> Route:
    """The route of one recipient. ``lookups`` are the transport_maps tables in order;
    a MapTempError from one propagates (the caller defers the recipient)."""
    found: tuple[str, str] | None = None
    for key in transport_keys(address):
        for lookup in lookups:
            value = lookup(key)
            if value is not None:
                found = split_transport(value)
                break
        if found is not None:
            break
    default_name, default_hop = split_transport(default_transport)
    transport = (found[0] if found and found[0] else default_name) or "smtp"
    nexthop = found[1] if found and found[1] else ""
    if transport in NO_MX_TRANSPORTS:
        # error:/retry:/discard: carry their text; default_transport's when it is theirs
        return Route(transport, nexthop or ("" if found and found[0] else default_hop))
    domain = address.rpartition("@")[2].lower().rstrip(".")
    return Route(transport, nexthop or default_hop or relayhost.strip() or domain)


@dataclass(frozen=True)
class NextHop:
    """A parsed next hop: host, port, and whether MX records are looked up."""

    host: str
    port: int
    use_mx: bool


def parse_nexthop(nexthop: str, default_port: int = 25) -> NextHop:
    """``[host]:port``, ``[host]``, ``host:port`` or ``host`` (ports may be service names)."""
    text = nexthop.strip()
    for prefix in ("inet:", "smtp:", "lmtp:"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    try:
        hop = parse_host_port(text, default_port, services=True)
    except ValueError as exc:
        raise ValueError(f"bad next hop {nexthop!r}: expected domain, host:port or [host]:port: {exc}") from None
    host = hop.host.rstrip(".")
    return NextHop(host, hop.port, not hop.bracketed and not _is_address(host))


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.removeprefix("ipv6:").removeprefix("IPv6:"))
        return True
    except ValueError:
        return False


# -- lookup results and the decisions over them --------------------------------------
OK = "ok"
NOT_FOUND = "nxdomain"
NO_DATA = "nodata"
TEMP_FAIL = "tempfail"


@dataclass(frozen=True)
class MxAnswer:
    """The outcome of an MX lookup."""

    status: str
    records: tuple[tuple[int, str], ...] = ()
    """(preference, exchange) with exchange lower case, no trailing dot; "" = null MX."""
    error: str = ""


@dataclass(frozen=True)
class Failure:
    """Why no host can be tried: deferred or bounced, with Postfix's words."""

    status: str
    dsn: str
    reason: str


def is_null_mx(records: Iterable[tuple[int, str]]) -> bool:
    """RFC 7505: a single MX record whose exchange is the root."""
    records = list(records)
    return len(records) == 1 and records[0][1] == ""


def order_mx(records: Iterable[tuple[int, str]], rng: random.Random | None = None) -> list[str]:
    """Exchanges by preference; equal preferences shuffled when ``rng`` is given.
    Null-MX entries mixed with real ones are dropped, duplicates kept once."""
    by_pref: dict[int, list[str]] = {}
    for pref, host in records:
        if host:
            by_pref.setdefault(pref, []).append(host)
    out: list[str] = []
    for pref in sorted(by_pref):
        hosts = list(dict.fromkeys(by_pref[pref]))
        if rng is not None:
            rng.shuffle(hosts)
        out += [h for h in hosts if h not in out]
    return out


def mx_hosts(domain: str, answer: MxAnswer, myhostnames: Iterable[str] = (),
             rng: random.Random | None = None) -> list[str] | Failure:
    """The hosts to try for ``domain``, or why there are none."""
    if answer.status == TEMP_FAIL:
        return Failure(DEFERRED, "4.4.3", f"Host or domain name not found. Name service error for "
                                          f"name={domain} type=MX: Host not found, try again")
    if answer.status == NOT_FOUND:
        return Failure(BOUNCED, "5.4.4", f"Host or domain name not found. Name service error for "
                                         f"name={domain} type=MX: Host not found")
    if answer.status == NO_DATA or not answer.records:
        return [domain]  # implicit MX: the domain's own addresses
    if is_null_mx(answer.records):
        return Failure(BOUNCED, "5.1.10", f"Domain {domain} does not accept mail (nullMX)")
    hosts = order_mx(answer.records, rng)
    mine = {h.lower().rstrip(".") for h in myhostnames}
    for i, host in enumerate(hosts):
        if host in mine:
            if i == 0:
                return Failure(BOUNCED, "5.4.6", f"mail for {domain} loops back to myself")
            return hosts[:i]  # only hosts better than this one (Postfix: best MX is me)
    return hosts


@dataclass(frozen=True)
class AddressAnswer:
    """A/AAAA lookup outcome for one host."""

    status: str
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    """One address to connect to, with the name it came from (for relay= and Remote-MTA)."""

    host: str
    address: str
    port: int

    @property
    def relay(self) -> str:
        """``host[address]:port``, as Postfix logs ``relay=``."""
        return f"{self.host}[{self.address}]:{self.port}"


def targets(hosts: Sequence[str], answers: Sequence[AddressAnswer], port: int,
            rng: random.Random | None = None) -> list[Target] | Failure:
    """Addresses of the hosts in order (each host's own addresses shuffled when ``rng``
    is given), or why there are none: 4.4.3 when a lookup failed, else 5.4.4."""
    out: list[Target] = []
    failed_temp = False
    for host, answer in zip(hosts, answers):
        if answer.status == TEMP_FAIL:
            failed_temp = True
            continue
        addresses = list(dict.fromkeys(answer.addresses))
        if rng is not None:
            rng.shuffle(addresses)
        out += [Target(host, a, port) for a in addresses]
    if out:
        return out
    name = hosts[0] if hosts else "?"
    if failed_temp:
        return Failure(DEFERRED, "4.4.3", f"Host or domain name not found. Name service error for "
                                          f"name={name} type=A: Host not found, try again")
    return Failure(BOUNCED, "5.4.4", f"Host or domain name not found. Name service error for "
                                     f"name={name} type=A: Host not found")


# -- dnspython --------------------------------------------------------------------------
class MxResolver:
    """MX and address lookups through dnspython, mapped onto the answers above."""

    def __init__(self, resolver: dns.asyncresolver.Resolver, timeout: float = 10.0,
                 families: Iterable[str] = ("ipv4", "ipv6"), randomize: bool = True,
                 myhostnames: Iterable[str] = (), rng: random.Random | None = None):
        self.resolver = resolver
        self.timeout = timeout
        fams = set(families)
        self.rdtypes = ([dns.rdatatype.A] if fams & {"ipv4", "all"} else []) + \
                       ([dns.rdatatype.AAAA] if fams & {"ipv6", "all"} else [])
        self.myhostnames = tuple(myhostnames)
        self.rng = (rng or random.Random()) if randomize else None

    @classmethod
    def from_config(cls, cfg: "Config") -> "MxResolver":
        from filterd.dnsbl.resolver import DnsblResolver

        return cls(DnsblResolver.make_resolver(cfg.get("dns_nameservers")),
                   families=cfg.get("inet_protocols"),
                   randomize=cfg.get("smtp_randomize_addresses"),
                   myhostnames=[cfg.get("myhostname")])

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> tuple[str, list[Any]]:
        try:
            answer = await self.resolver.resolve(dns.name.from_text(name), rdtype, search=False,
                                                 raise_on_no_answer=False, lifetime=self.timeout)
        except dns.resolver.NXDOMAIN:
            return NOT_FOUND, []
        except (dns.exception.DNSException, OSError, ValueError):
            return TEMP_FAIL, []
        if answer.rrset is None:
            return NO_DATA, []
        return OK, list(answer.rrset)

    async def mx(self, domain: str) -> MxAnswer:
        status, rdatas = await self._query(domain, dns.rdatatype.MX)
        records = tuple((int(r.preference), r.exchange.to_text(omit_final_dot=True).lower().rstrip("."))
                        for r in rdatas)
        return MxAnswer(status, tuple((p, "" if h in ("", "@") else h) for p, h in records))

    async def addresses(self, host: str) -> AddressAnswer:
        if _is_address(host):
            return AddressAnswer(OK, (host.removeprefix("ipv6:").removeprefix("IPv6:"),))
        results = await asyncio.gather(*(self._query(host, t) for t in self.rdtypes))
        found = tuple(r.address for _, rdatas in results for r in rdatas)
        if found:
            return AddressAnswer(OK, found)
        if any(status == TEMP_FAIL for status, _ in results):
            return AddressAnswer(TEMP_FAIL)
        return AddressAnswer(NOT_FOUND)

    async def resolve(self, nexthop: str, default_port: int = 25, mx: bool = True) -> list[Target] | Failure:
        """The addresses to try for a next hop, in order, or why there are none.
        ``mx = False`` (lmtp): a domain is a host name, never looked up by MX."""
        try:
            hop = parse_nexthop(nexthop, default_port)
        except ValueError as exc:
            return Failure(DEFERRED, "4.3.5", f"mail transport configuration error: {exc}")
        if hop.use_mx and mx:
            hosts = mx_hosts(hop.host, await self.mx(hop.host), self.myhostnames, self.rng)
            if isinstance(hosts, Failure):
                return hosts
        else:
            hosts = [hop.host]
        answers = await asyncio.gather(*(self.addresses(h) for h in hosts))
        return targets(hosts, answers, hop.port, self.rng)
