"""Restrictions that ask another engine: a chained policy service, and greylisting."""

from __future__ import annotations

import logging

from filterd.actions import Action, parse_action
from filterd.restrict.delegation.client import PolicyServiceError, ServiceSpec
from filterd.restrict.delegation.protocol import from_transaction
from filterd.restrict.decision import Reply
from filterd.restrict.engine import Evaluation, Outcome, Restriction

log = logging.getLogger("filterd.restrict")


async def check_policy_service(ev: Evaluation, arg: str | None) -> Outcome | None:
    """Ask a Postfix policy service; its ``action=`` is applied like an access-table result."""
    client = ev.services.policy_client(arg or "")
    try:
        action = await client.query(from_transaction(ev.txn))
    except PolicyServiceError as exc:
        log.warning("%s", exc)
        default = parse_action(client.spec.default_action)
        if default.kind == "CODE" and default.code:
            # Postfix answers this one without the "<rcpt>: ... rejected:" prefix.
            reply = Reply(default.code, default.dsn or f"{str(default.code)[0]}.3.5",
                          default.text or "Server configuration problem")
            return Outcome(default, f"{client.spec.endpoint} failed: {exc}", reply=reply)
        return Outcome(default, f"{client.spec.endpoint} failed: {exc}")
    return Outcome(parse_action(action), f"{client.spec.endpoint} answered {action}")


async def check_greylist(ev: Evaluation, arg: str | None) -> Outcome | None:
    """postgrey's decision for the (client, sender, recipient) triplet.

    Only at RCPT (or later, when a recipient is known): a greylist without a recipient
    has no triplet. A deferral is DEFER_IF_PERMIT, as postgrey answers, so a later
    reject in Postfix's own list still wins.
    """
    txn = ev.txn
    if txn.recipient is None:
        return None
    result = await ev.services.greylister.check(
        txn.client_address, txn.client_name, txn.sender or "", txn.recipient, txn.instance
    )
    detail = f"{result.action}: {result.reason}"
    if result.action == "defer":
        return Outcome(Action("DEFER_IF_PERMIT", None, result.dsn or "4.2.0", result.body), detail)
    if result.header:
        return Outcome(Action("PREPEND", text=result.header), detail)
    return Outcome(Action("DUNNO"), detail)


RESTRICTIONS = [
    Restriction("check_policy_service", check_policy_service, True, ServiceSpec.parse),
    Restriction("check_greylist", check_greylist),
]
