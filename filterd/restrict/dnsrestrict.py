"""Restrictions that ask DNS: DNSBL/RHSBL lists, the DNSBL score, unknown domains/clients.

A DNS list that is slow or broken never blocks mail (the DNSBL module bounds every
lookup and reports failure as "not listed"); a domain-existence lookup that fails
temporarily becomes ``unknown_address_tempfail_action`` (defer_if_permit), as Postfix.
"""

from __future__ import annotations

import logging
import re

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from filterd.actions import Action
from filterd.config import expand_macros
from filterd.dnsbl.check import DnsblHit, DnsblVerdict, classify_score
from filterd.dnsbl.resolver import DnsblResolver
from filterd.dnsbl.sites import Site, parse_site
from filterd.maps import open_table
from filterd.netaddr import is_ip
from filterd.restrict.decision import Evidence, Reply
from filterd.restrict.engine import Evaluation, Outcome, Restriction

log = logging.getLogger("filterd.restrict")

_CODE_PREFIX = re.compile(r"^([245]\d\d)\s+(?:([245]\.\d{1,3}\.\d{1,3})\s+)?")


class DomainLookup:
    """Does a domain exist for mail purposes (MX, else A/AAAA)? None = temporary failure."""

    def __init__(self, cfg) -> None:
        self.resolver: dns.asyncresolver.Resolver = DnsblResolver.make_resolver(cfg.get("dns_nameservers"))
        self.resolver.lifetime = cfg.get("dnsbl_timeout")

    async def has_address(self, domain: str) -> bool | None:
        saw_failure = False
        for rdtype in (dns.rdatatype.MX, dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                await self.resolver.resolve(domain, rdtype, search=False)
                return True
            except dns.resolver.NXDOMAIN:
                return False
            except dns.resolver.NoAnswer:
                continue
            except (dns.exception.DNSException, OSError) as exc:
                log.warning("DNS lookup of %s %s failed: %s", domain, dns.rdatatype.to_text(rdtype), exc)
                saw_failure = True
        return None if saw_failure else False


_SITES: dict[str, Site] = {}


def _check_site(arg: str) -> Site:
    """Parse a ``zone[=filter]`` argument once; later lookups reuse the parsed Site."""
    site = _SITES.get(arg)
    if site is None:
        site = _SITES[arg] = parse_site(arg, allow_weight=False)
    return site


def _rbl_reply(ev: Evaluation, hit: DnsblHit, rbl_class: str, what: str, domain: str | None = None) -> Reply:
    """Expand ``default_rbl_reply`` (or an ``rbl_reply_maps`` entry) as Postfix does.

    ``domain`` is what ``$rbl_domain`` says: the hit's zone, or for a DNSBL score every
    list that contributed.
    """
    cfg = ev.cfg
    code = cfg.get("maps_rbl_reject_code")
    template = None
    for spec in cfg.get("rbl_reply_maps"):
        template = open_table(spec).lookup(hit.zone)
        if template is not None:
            break
    if template is None:
        template = cfg.raw("default_rbl_reply")  # its $names are request facts, not parameters
    txn = ev.txn
    values = {
        "rbl_code": str(code), "rbl_class": rbl_class, "rbl_what": what,
        "rbl_domain": domain or hit.zone, "rbl_reason": hit.text or "", "rbl_txt": hit.text or "",
        "client_address": txn.client_address, "client_name": txn.client_name,
        "reverse_client_name": txn.reverse_client_name, "helo_name": txn.helo_name,
        "sender": txn.sender or "", "recipient": txn.recipient or "",
    }
    text = expand_macros(template, values)
    m = _CODE_PREFIX.match(text)
    if m:
        code = int(m.group(1))
        dsn = m.group(2) or f"{m.group(1)[0]}.7.1"
        text = text[m.end():]
    else:
        dsn = f"{str(code)[0]}.7.1"
    return Reply(code, dsn, text)


def _hit_outcome(ev: Evaluation, hit: DnsblHit, rbl_class: str, what: str) -> Outcome:
    reply = _rbl_reply(ev, hit, rbl_class, what)
    detail = f"{what} listed by {hit.zone} ({hit.query} A {','.join(hit.addresses)}" + (
        f"; TXT {hit.text!r})" if hit.text else ")"
    )
    return Outcome(Action("CODE", reply.code), detail, reply=reply)


async def reject_rbl_client(ev: Evaluation, arg: str | None) -> Outcome | None:
    addr = ev.txn.client_address
    if not is_ip(addr):
        return None
    hit = await ev.services.dnsbl.query_ip(_check_site(arg or ""), addr)
    return _hit_outcome(ev, hit, "Client host", addr) if hit else None


async def _rhsbl(ev: Evaluation, arg: str | None, domain: str, rbl_class: str) -> Outcome | None:
    domain = domain.strip().rstrip(".")
    if not domain or domain == "unknown" or is_ip(domain.strip("[]")):
        return None
    hit = await ev.services.dnsbl.query_domain(_check_site(arg or ""), domain)
    return _hit_outcome(ev, hit, rbl_class, domain) if hit else None


async def reject_rhsbl_client(ev: Evaluation, arg: str | None) -> Outcome | None:
    return await _rhsbl(ev, arg, ev.txn.client_name, "Client host")


async def reject_rhsbl_reverse_client(ev: Evaluation, arg: str | None) -> Outcome | None:
    return await _rhsbl(ev, arg, ev.txn.reverse_client_name, "Unverified Client host")


async def reject_rhsbl_helo(ev: Evaluation, arg: str | None) -> Outcome | None:
    return await _rhsbl(ev, arg, ev.txn.helo_name, "Helo command")


async def reject_rhsbl_sender(ev: Evaluation, arg: str | None) -> Outcome | None:
    sender = ev.txn.sender or ""
    _, at, domain = sender.rpartition("@")
    return await _rhsbl(ev, arg, domain, "Sender address") if at else None


async def reject_rhsbl_recipient(ev: Evaluation, arg: str | None) -> Outcome | None:
    rcpt = ev.txn.recipient or ""
    _, at, domain = rcpt.rpartition("@")
    return await _rhsbl(ev, arg, domain, "Recipient address") if at else None


async def check_dnsbl_score(ev: Evaluation, arg: str | None) -> Outcome | None:
    """postscreen-style weighted DNSBL score over ``dnsbl_sites``.

    At or above ``dnsbl_threshold`` the client is rejected naming every list that
    contributed; at or below a negative ``dnsbl_whitelist_threshold`` it is permitted
    (OK), so an allowlisted client skips the rest of the list, e.g. greylisting.
    """
    cfg = ev.cfg
    sites: list[Site] = cfg.get("dnsbl_sites")
    addr = ev.txn.client_address
    if not sites or not is_ip(addr):
        return None
    total, hits = await ev.services.dnsbl.score_ip(sites, addr)
    verdict = classify_score(total, cfg.get("dnsbl_threshold"), cfg.get("dnsbl_whitelist_threshold"))
    listing = ", ".join(f"{h.zone}*{h.weight}" for h in hits)
    detail = f"{addr} score {total} ({listing or 'no list'}), threshold {cfg.get('dnsbl_threshold')}"
    if verdict is DnsblVerdict.ALLOWLISTED:
        return Outcome(Action("OK"), detail)
    if verdict is not DnsblVerdict.LISTED:
        if hits:  # scored but under the threshold: evidence for the log, no decision
            ev.decision.evidence.append(Evidence(ev.txn.stage.value, "check_dnsbl_score", detail))
        return None
    positive = [h for h in hits if h.weight > 0]
    first = positive[0] if positive else hits[0]
    reply = _rbl_reply(ev, first, "Client host", addr, ", ".join(dict.fromkeys(h.zone for h in positive)))
    return Outcome(Action("CODE", reply.code), detail, reply=reply)


async def _unknown_domain(ev: Evaluation, address: str | None, cls: str, dsn_detail: str) -> Outcome | None:
    if not address:
        return None
    _, at, domain = address.rpartition("@")
    if not at or not domain or domain.startswith("["):
        return None
    exists = await ev.services.domains.has_address(domain.rstrip("."))
    if exists:
        return None
    cfg = ev.cfg
    if exists is None:
        action = cfg.get("unknown_address_tempfail_action").strip().lower()
        reply = Reply(450, f"4.{dsn_detail}", f"<{address}>: {cls} rejected: Domain not found")
        if action == "defer_if_permit":
            return Outcome(Action("DEFER_IF_PERMIT", None, reply.dsn, "Domain not found"),
                           f"{domain}: temporary DNS failure", subject=(address, cls))
        return Outcome(Action("CODE", 450), f"{domain}: temporary DNS failure", reply=reply)
    code = cfg.get("unknown_address_reject_code")
    reply = Reply(code, f"{str(code)[0]}.{dsn_detail}", f"<{address}>: {cls} rejected: Domain not found")
    return Outcome(Action("CODE", code), f"{domain} has no MX, A or AAAA record", reply=reply)


async def reject_unknown_sender_domain(ev: Evaluation, arg: str | None) -> Outcome | None:
    return await _unknown_domain(ev, ev.txn.sender, "Sender address", "1.8")


async def reject_unknown_recipient_domain(ev: Evaluation, arg: str | None) -> Outcome | None:
    return await _unknown_domain(ev, ev.txn.recipient, "Recipient address", "1.2")


async def reject_unknown_client_hostname(ev: Evaluation, arg: str | None) -> Outcome | None:
    """Postfix's client_name is ``unknown`` unless the PTR name forward-confirms."""
    txn = ev.txn
    if txn.client_name and txn.client_name != "unknown":
        return None
    code = ev.cfg.get("unknown_client_reject_code")
    reply = Reply(code, f"{str(code)[0]}.7.25",
                  f"Client host rejected: cannot find your hostname, [{txn.client_address}]")
    return Outcome(Action("CODE", code), f"client_name unknown for {txn.client_address}", reply=reply)


async def reject_unknown_reverse_client_hostname(ev: Evaluation, arg: str | None) -> Outcome | None:
    txn = ev.txn
    if txn.reverse_client_name and txn.reverse_client_name != "unknown":
        return None
    code = ev.cfg.get("unknown_client_reject_code")
    reply = Reply(code, f"{str(code)[0]}.7.25",
                  f"Client host rejected: cannot find your reverse hostname, [{txn.client_address}]")
    return Outcome(Action("CODE", code), f"no PTR name for {txn.client_address}", reply=reply)


RESTRICTIONS = [
    Restriction("reject_rbl_client", reject_rbl_client, True, _check_site),
    Restriction("reject_rhsbl_client", reject_rhsbl_client, True, _check_site),
    Restriction("reject_rhsbl_reverse_client", reject_rhsbl_reverse_client, True, _check_site),
    Restriction("reject_rhsbl_helo", reject_rhsbl_helo, True, _check_site),
    Restriction("reject_rhsbl_sender", reject_rhsbl_sender, True, _check_site),
    Restriction("reject_rhsbl_recipient", reject_rhsbl_recipient, True, _check_site),
    Restriction("check_dnsbl_score", check_dnsbl_score),
    Restriction("reject_unknown_sender_domain", reject_unknown_sender_domain),
    Restriction("reject_unknown_recipient_domain", reject_unknown_recipient_domain),
    Restriction("reject_unknown_client_hostname", reject_unknown_client_hostname),
    Restriction("reject_unknown_reverse_client_hostname", reject_unknown_reverse_client_hostname),
]
