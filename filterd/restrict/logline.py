"""The line every front end logs for a restriction decision, in Postfix's reject-log shape.

smtpd logs ``NOQUEUE: reject: RCPT from ...`` for its own restrictions; the policy service,
the milter and the MTA log the same line for filterd's, so one log parser reads them all.
"""

from __future__ import annotations

from filterd.restrict.decision import DEFER, DUNNO, PERMIT, REJECT, Decision
from filterd.restrict.transaction import Transaction

_RESULT_WORD = {REJECT: "reject", DEFER: "reject", PERMIT: "permit", DUNNO: "dunno"}


def format_log_line(txn: Transaction, d: Decision, action: str | None = None) -> str:
    """One line in Postfix's reject-log shape, plus what decided it (``by=``) and, from
    the policy service, the ``action=`` it answered.

    ``NOQUEUE: reject: RCPT from host[1.2.3.4]: 450 4.2.0 <b@x>: Recipient address
    rejected: Greylisted...; from=<a@y> to=<b@x> proto=ESMTP helo=<h>; action=...; by=...``
    """
    what = f"{txn.queue_id or 'NOQUEUE'}: {_RESULT_WORD[d.result]}: {txn.stage.value} from {txn.client_label}"
    reply = f": {d.reply}" if d.reply is not None else ""
    envelope = f"from=<{txn.sender or ''}> to=<{txn.recipient or ''}> proto={txn.protocol_name} helo=<{txn.helo_name}>"
    answered = f"; action={action}" if action is not None else ""
    return f"{what}{reply}; {envelope}{answered}; by={d.reason}"
