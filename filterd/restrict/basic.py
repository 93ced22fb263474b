"""Restrictions that need no tables or DNS: fixed results, networks, relay control, syntax.

Reply texts and codes are Postfix's, so an administrator reading a bounce or a log sees
what they would see from Postfix itself.
"""

from __future__ import annotations

from filterd.actions import Action
from filterd.netaddr import is_ip, valid_hostname
from filterd.restrict.decision import Reply
from filterd.restrict.engine import Evaluation, Outcome, Restriction, stage_subject
from filterd.restrict.resolve import resolve

_OK = Action("OK")


async def permit(ev: Evaluation, arg: str | None) -> Outcome:
    return Outcome(_OK, "permit")


async def reject(ev: Evaluation, arg: str | None) -> Outcome:
    code = ev.cfg.get("reject_code")
    name, cls = stage_subject(ev.txn)
    return Outcome(Action("CODE", code), "reject",
                   reply=Reply(code, f"{str(code)[0]}.7.1", f"<{name}>: {cls} rejected: Access denied"))


async def defer(ev: Evaluation, arg: str | None) -> Outcome:
    code = ev.cfg.get("defer_code")
    name, cls = stage_subject(ev.txn)
    return Outcome(Action("CODE", code), "defer",
                   reply=Reply(code, "4.7.1", f"<{name}>: {cls} rejected: Try again later"))


async def defer_if_permit(ev: Evaluation, arg: str | None) -> Outcome:
    return Outcome(Action("DEFER_IF_PERMIT"), "defer_if_permit")


async def defer_if_reject(ev: Evaluation, arg: str | None) -> Outcome:
    return Outcome(Action("DEFER_IF_REJECT"), "defer_if_reject")


async def permit_mynetworks(ev: Evaluation, arg: str | None) -> Outcome | None:
    addr = ev.txn.client_address
    match = ev.services.mynetworks.match(addr)
    if match:
        return Outcome(_OK, f"client {addr} in mynetworks {match}")
    return None


async def permit_sasl_authenticated(ev: Evaluation, arg: str | None) -> Outcome | None:
    if ev.txn.sasl_username:
        # The user name is evidence, the password never reaches filterd at all.
        return Outcome(_OK, f"sasl_username={ev.txn.sasl_username}")
    return None


def _is_auth_destination(ev: Evaluation) -> tuple[bool, str]:
    """Postfix's relay test (permit_auth_destination): is the recipient, *resolved* as
    delivery will read it (:mod:`filterd.restrict.resolve`), for a domain we may accept
    mail for? Sender-specified routing (``user%host@relay``, ``host!user@relay``,
    ``"user@host"@relay``, ``user@host@relay``) is refused unless allow_untrusted_routing:
    the next hop might route it on."""
    rcpt = ev.txn.recipient or ""
    if rcpt.lower() == "postmaster":
        return True, "postmaster without a domain (RFC 5321 4.5.1: always accepted)"
    cfg = ev.cfg
    dest = ev.services.destinations
    where = resolve(rcpt, dest.is_local_domain, cfg.get("myorigin"),
                    percent_hack=cfg.get("allow_percent_hack"), swap_bangpath=cfg.get("swap_bangpath"))
    if where.routed and not cfg.get("allow_untrusted_routing"):
        return False, f"sender-specified routing in {rcpt}"
    if where.local:
        return True, f"{where.domain} in mydestination"
    if where.domain and dest.is_relay_domain(where.domain):
        return True, f"{where.domain} in relay_domains"
    return False, f"{where.domain or rcpt} not in mydestination or relay_domains"


def _relay_reply(ev: Evaluation, code: int) -> Reply:
    dsn = "5.7.1" if code >= 500 else "4.7.1"
    return Reply(code, dsn, f"<{ev.txn.recipient}>: Relay access denied")


async def reject_unauth_destination(ev: Evaluation, arg: str | None) -> Outcome | None:
    if ev.txn.recipient is None:
        return None
    ok, why = _is_auth_destination(ev)
    if ok:
        return None
    code = ev.cfg.get("relay_domains_reject_code")
    return Outcome(Action("CODE", code), why, reply=_relay_reply(ev, code))


async def defer_unauth_destination(ev: Evaluation, arg: str | None) -> Outcome | None:
    if ev.txn.recipient is None:
        return None
    ok, why = _is_auth_destination(ev)
    if ok:
        return None
    return Outcome(Action("CODE", 450), why, reply=_relay_reply(ev, 450))


async def permit_auth_destination(ev: Evaluation, arg: str | None) -> Outcome | None:
    if ev.txn.recipient is None:
        return None
    ok, why = _is_auth_destination(ev)
    return Outcome(_OK, why) if ok else None


def _address_literal(helo: str) -> bool:
    if not (helo.startswith("[") and helo.endswith("]")):
        return False
    inner = helo[1:-1]
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    return is_ip(inner)


async def reject_invalid_helo_hostname(ev: Evaluation, arg: str | None) -> Outcome | None:
    helo = ev.txn.helo_name
    if not helo or _address_literal(helo) or valid_hostname(helo, trailing_dot=True):
        return None
    code = ev.cfg.get("invalid_hostname_reject_code")
    return Outcome(Action("CODE", code), f"helo {helo!r} invalid",
                   reply=Reply(code, f"{str(code)[0]}.5.2", f"<{helo}>: Helo command rejected: Invalid name"))


def _fqdn(name: str) -> bool:
    return "." in name.rstrip(".") and valid_hostname(name, trailing_dot=True)


async def reject_non_fqdn_helo_hostname(ev: Evaluation, arg: str | None) -> Outcome | None:
    helo = ev.txn.helo_name
    if not helo or _address_literal(helo) or _fqdn(helo):
        return None
    code = ev.cfg.get("non_fqdn_reject_code")
    return Outcome(Action("CODE", code), f"helo {helo!r} not fully qualified",
                   reply=Reply(code, f"{str(code)[0]}.5.2",
                               f"<{helo}>: Helo command rejected: need fully-qualified hostname"))


def _non_fqdn_address(ev: Evaluation, address: str | None, cls: str, dsn_detail: str) -> Outcome | None:
    if not address:  # null sender, or nothing to check at this stage
        return None
    _, at, domain = address.rpartition("@")
    if not at:
        domain = ""
    if domain and (_fqdn(domain) or _address_literal(domain)):
        return None
    code = ev.cfg.get("non_fqdn_reject_code")
    return Outcome(Action("CODE", code), f"{address} not fully qualified",
                   reply=Reply(code, f"{str(code)[0]}.{dsn_detail}",
                               f"<{address}>: {cls} rejected: need fully-qualified address"))


async def reject_non_fqdn_sender(ev: Evaluation, arg: str | None) -> Outcome | None:
    return _non_fqdn_address(ev, ev.txn.sender, "Sender address", "5.2")


async def reject_non_fqdn_recipient(ev: Evaluation, arg: str | None) -> Outcome | None:
    return _non_fqdn_address(ev, ev.txn.recipient, "Recipient address", "5.2")


async def reject_unauth_pipelining(ev: Evaluation, arg: str | None) -> Outcome | None:
    """Postfix's reject_unauth_pipelining: a client that talks ahead of the server's
    replies where SMTP does not allow it is a spam engine, not a mail server."""
    if not ev.txn.unauth_pipelining:
        return None
    name, cls = stage_subject(ev.txn)
    return Outcome(Action("CODE", 503), "improper command pipelining",
                   reply=Reply(503, "5.5.0", f"<{name}>: {cls} rejected: Improper use of SMTP command pipelining"))


async def warn_if_reject(ev: Evaluation, arg: str | None) -> None:
    """Handled by the engine loop (it changes how the next restriction applies)."""
    return None


RESTRICTIONS = [
    Restriction("permit", permit),
    Restriction("reject", reject),
    Restriction("defer", defer),
    Restriction("defer_if_permit", defer_if_permit),
    Restriction("defer_if_reject", defer_if_reject),
    Restriction("warn_if_reject", warn_if_reject),
    Restriction("permit_mynetworks", permit_mynetworks),
    Restriction("permit_sasl_authenticated", permit_sasl_authenticated),
    Restriction("reject_unauth_destination", reject_unauth_destination),
    Restriction("defer_unauth_destination", defer_unauth_destination),
    Restriction("permit_auth_destination", permit_auth_destination),
    Restriction("reject_invalid_helo_hostname", reject_invalid_helo_hostname),
    Restriction("reject_non_fqdn_helo_hostname", reject_non_fqdn_helo_hostname),
    Restriction("reject_non_fqdn_sender", reject_non_fqdn_sender),
    Restriction("reject_non_fqdn_recipient", reject_non_fqdn_recipient),
    Restriction("reject_unauth_pipelining", reject_unauth_pipelining),
]
