"""check_*_access: access(5) table lookups with Postfix's search order and replies."""

from __future__ import annotations

from filterd.maps import open_table
from filterd.maps.access import Match, lookup_address, lookup_domain, lookup_ip
from filterd.restrict.engine import Evaluation, Outcome, Restriction, access_outcome


def _parent_matches(ev: Evaluation) -> bool:
    return "smtpd_access_maps" in ev.cfg.get("parent_domain_matches_subdomains")


def _found(match: Match, subject: tuple[str, str]) -> Outcome:
    return access_outcome(match.value, f"{match.table}: {match.key}={match.value}", subject)


async def check_client_access(ev: Evaluation, arg: str | None) -> Outcome | None:
    """Client host name (and its parent domains), then the address and its prefixes."""
    assert arg is not None
    table = open_table(arg)
    txn = ev.txn
    subject = (txn.client_label, "Client host")
    if txn.client_name and txn.client_name != "unknown":
        m = lookup_domain([table], txn.client_name, parent_matches_subdomains=_parent_matches(ev))
        if m is not None:
            return _found(m, subject)
    if txn.client_address:
        m = lookup_ip([table], txn.client_address)
        if m is not None:
            return _found(m, subject)
    return None


async def check_helo_access(ev: Evaluation, arg: str | None) -> Outcome | None:
    assert arg is not None
    helo = ev.txn.helo_name
    if not helo:
        return None
    m = lookup_domain([open_table(arg)], helo, parent_matches_subdomains=_parent_matches(ev))
    return _found(m, (helo, "Helo command")) if m else None


def _address_access(ev: Evaluation, arg: str, address: str | None, cls: str) -> Outcome | None:
    if address is None:
        return None
    m = lookup_address(
        [open_table(arg)], address,
        parent_matches_subdomains=_parent_matches(ev),
        rcpt_delim=ev.cfg.get("recipient_delimiter"),
        null_key=ev.cfg.get("smtpd_null_access_lookup_key"),
    )
    return _found(m, (address, cls)) if m else None


async def check_sender_access(ev: Evaluation, arg: str | None) -> Outcome | None:
    assert arg is not None
    return _address_access(ev, arg, ev.txn.sender, "Sender address")


async def check_recipient_access(ev: Evaluation, arg: str | None) -> Outcome | None:
    assert arg is not None
    return _address_access(ev, arg, ev.txn.recipient, "Recipient address")


RESTRICTIONS = [
    Restriction("check_client_access", check_client_access, takes_arg=True, check_arg=open_table),
    Restriction("check_helo_access", check_helo_access, takes_arg=True, check_arg=open_table),
    Restriction("check_sender_access", check_sender_access, takes_arg=True, check_arg=open_table),
    Restriction("check_recipient_access", check_recipient_access, takes_arg=True, check_arg=open_table),
]
