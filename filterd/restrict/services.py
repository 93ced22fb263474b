"""What restrictions need from the world: networks, domains, DNS, greylisting, chaining.

Built once per worker process and shared by every evaluation. Expensive parts (DNS
resolvers, the greylist store) are created on first use, so a restriction list that
never asks DNS never builds a resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING

from filterd.config import Config
from filterd.config.types import is_network
from filterd.maps import open_table
from filterd.maps.access import lookup_domain, lookup_ip
from filterd.restrict.delegation.client import PolicyClient, ServiceSpec
from filterd.restrict.localnets import style_networks

#: SIGHUP's whitelist reload is logged as the master's work, as before front ends had
#: services of their own.
log = logging.getLogger("filterd.master")

if TYPE_CHECKING:  # imported where first used: a process that never looks one up never loads it
    from filterd.dnsbl.check import DnsblChecker
    from filterd.greylist.greylister import Greylister
    from filterd.restrict.dnsrestrict import DomainLookup

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class NetworkMatcher:
    """``mynetworks``: CIDR networks and lookup tables (e.g. ``cidr:/etc/.../trusted``)."""

    def __init__(self, items: list[str]):
        self.networks: list[Network] = []
        self.tables = []
        for item in items:
            if ":" in item and not is_network(item):
                self.tables.append(open_table(item))
            else:
                self.networks.append(ipaddress.ip_network(item, strict=False))

    def match(self, address: str) -> str | None:
        """The network or table entry that contains ``address``, else None."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        for net in self.networks:
            if ip.version == net.version and ip in net:
                return str(net)
        for table in self.tables:
            m = lookup_ip([table], str(ip))
            if m is not None and m.value.strip().upper() not in ("REJECT", "DUNNO"):
                return f"{m.table}: {m.key}"
        return None


class DomainList:
    """A Postfix domain list (``mydestination``, ``relay_domains``): names and tables."""

    def __init__(self, items: list[str], parent_matches: bool):
        self.names = {i.lower().rstrip(".") for i in items if ":" not in i}
        self.tables = [open_table(i) for i in items if ":" in i]
        self.parent_matches = parent_matches

    def contains(self, domain: str) -> bool:
        domain = domain.lower().rstrip(".")
        if domain in self.names:
            return True
        labels = domain.split(".")
        for i in range(1, len(labels)):
            parent = ".".join(labels[i:])
            if ("." + parent) in self.names or (self.parent_matches and parent in self.names):
                return True
        if self.tables:
            return lookup_domain(self.tables, domain, parent_matches_subdomains=self.parent_matches) is not None
        return False


class Destinations:
    """Which recipient domains are ours (mydestination) or relayed by us (relay_domains)."""

    def __init__(self, cfg: Config):
        parent = cfg.get("parent_domain_matches_subdomains")
        self.local = DomainList(cfg.get("mydestination"), False)
        self.relay = DomainList(cfg.get("relay_domains"), "relay_domains" in parent)

    def is_local_domain(self, domain: str) -> bool:
        return self.local.contains(domain)

    def is_relay_domain(self, domain: str) -> bool:
        return self.relay.contains(domain)


class Services:
    """Everything the restriction engine reaches outside the transaction."""

    def __init__(self, cfg: Config, greylister: Greylister | None = None):
        self.cfg = cfg
        nets = cfg.get("mynetworks") or style_networks(cfg.get("mynetworks_style"))
        self.mynetworks = NetworkMatcher(nets)
        self.destinations = Destinations(cfg)
        self._greylister = greylister
        self._policy_clients: dict[str, PolicyClient] = {}

    @cached_property
    def dnsbl(self) -> DnsblChecker:
        from filterd.dnsbl.check import DnsblChecker
        from filterd.dnsbl.resolver import DnsblResolver

        return DnsblChecker(DnsblResolver.from_config(self.cfg))

    @cached_property
    def domains(self) -> DomainLookup:
        from filterd.restrict.dnsrestrict import DomainLookup

        return DomainLookup(self.cfg)

    @property
    def greylister(self) -> Greylister:
        if self._greylister is None:
            raise RuntimeError("check_greylist used but no greylist store was opened")
        return self._greylister

    def policy_client(self, arg: str) -> PolicyClient:
        client = self._policy_clients.get(arg)
        if client is None:
            client = self._policy_clients[arg] = PolicyClient(ServiceSpec.parse(arg))
        return client

    async def close(self) -> None:
        for client in self._policy_clients.values():
            client.close()
        if self._greylister is not None:
            await self._greylister.close()

    async def reload_whitelists(self) -> None:
        """postgrey's SIGHUP: the greylist whitelist files read again, off the event loop;
        a failure keeps the old lists and says why."""
        if self._greylister is None:
            return
        try:
            await asyncio.to_thread(self._greylister.reload_whitelists)
            log.info("reloaded greylist whitelists on SIGHUP")
        except Exception:  # noqa: BLE001 - keep the old lists, say why
            log.exception("reloading greylist whitelists failed; keeping the old ones")


async def open_services(cfg: Config, damaged: Callable[[str], None] | None = None) -> Services:
    """A worker's services with its own greylist store connection, for the front ends
    that evaluate restriction lists (policy, milter); ``damaged`` is called if the store
    finds itself damaged while serving."""
    from filterd.greylist import Greylister, greylist_clock, open_store

    store = open_store(cfg)
    store.on_damaged = damaged
    greylister = Greylister(cfg, store, cfg.get("myhostname"), greylist_clock())
    await greylister.start()
    return Services(cfg, greylister=greylister)
