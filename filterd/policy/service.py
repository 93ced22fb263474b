"""Policy requests in, actions out: the translation between Postfix and the engine.

This module holds no protocol framing (see :mod:`filterd.restrict.delegation.protocol`) and no
sockets (see :mod:`filterd.policy.server`): it takes a parsed request, runs the
restriction list for its protocol state, logs one Postfix-style line, and returns the
``action`` to answer.
"""

from __future__ import annotations

import logging

from filterd.log import RateLimitedLog, event
from filterd.netaddr import is_ip
from filterd.policy.action import policy_action
from filterd.restrict.delegation.protocol import PolicyRequest, to_transaction
from filterd.restrict.engine import RestrictionEngine
from filterd.restrict.logline import format_log_line
from filterd.restrict.transaction import Stage

log = logging.getLogger("filterd.policy")
#: Faults in requests are the client's: a flood of them is logged once per kind and interval.
limited = RateLimitedLog(log)

#: Which parameter holds the restrictions for each protocol state.
STAGE_PARAM = {
    Stage.CONNECT: "policy_connect_restrictions",
    Stage.HELO: "policy_helo_restrictions",
    Stage.EHLO: "policy_helo_restrictions",
    Stage.MAIL: "policy_mail_restrictions",
    Stage.RCPT: "policy_restrictions",
    Stage.DATA: "policy_data_restrictions",
    Stage.END_OF_MESSAGE: "policy_end_of_message_restrictions",
    Stage.VRFY: "policy_vrfy_restrictions",
    Stage.ETRN: "policy_etrn_restrictions",
}

MALFORMED = "DEFER_IF_PERMIT 4.3.5 Policy request malformed"
FAILURE = "DEFER_IF_PERMIT 4.3.0 Temporary policy service failure"


class PolicyService:
    """Answers policy requests with the shared restriction engine."""

    def __init__(self, engine: RestrictionEngine):
        self.engine = engine
        self.cfg = engine.cfg
        self.requests = 0

    def check_config(self) -> None:
        """Compile every stage's list now: an unknown restriction fails at start-up."""
        for param in set(STAGE_PARAM.values()):
            self.engine.check_param(param)

    async def handle(self, req: PolicyRequest, peer: str) -> str:
        """The action for one request. Never raises: faults become a safe answer."""
        self.requests += 1
        if req.faults:
            limited.warning("malformed policy requests", "policy client %s: %s", peer, "; ".join(req.faults))
        rtype = req.request_type
        if rtype != "smtpd_access_policy":
            what = "no request= attribute" if rtype is None else f"unknown request type {rtype!r}"
            limited.warning("requests of an unknown type", "policy client %s: %s; answering %s",
                            peer, what, MALFORMED)
            return f"{MALFORMED}: {what}"
        txn, faults = to_transaction(req.attrs)
        if faults:
            limited.warning("bad attribute values", "policy client %s: %s", peer, "; ".join(faults))
        if txn.client_address and not is_ip(txn.client_address):
            limited.warning("client addresses that are not IP addresses",
                            "policy client %s: client_address=%.60r is not an IP address",
                            peer, txn.client_address)
        param = STAGE_PARAM[txn.stage]
        try:
            decision = await self.engine.evaluate(param, txn)
        except Exception:  # noqa: BLE001 - one bad request must not stop the service
            limited.error("errors evaluating a request", "policy client %s: error evaluating %s for %s",
                          peer, param, txn.client_label, exc_info=True)
            return FAILURE
        action = policy_action(decision)
        if log.isEnabledFor(logging.INFO):
            event("policy", format_log_line(txn, decision, action))
        for warning in decision.warnings:
            log.warning("%s: %s: %s from %s; from=<%s> to=<%s>", txn.queue_id or "NOQUEUE",
                        warning, txn.stage.value, txn.client_label, txn.sender or "", txn.recipient or "")
        return action
