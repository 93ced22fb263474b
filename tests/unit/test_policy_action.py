"""The policy front end's answer for a decision: the one action a policy reply holds."""

from __future__ import annotations

from filterd.policy.action import policy_action
from filterd.restrict.decision import DEFER, DUNNO, PERMIT, REJECT, Decision, Reply
from filterd.restrict.logline import format_log_line
from filterd.restrict.transaction import Stage, Transaction


def test_decisive_results_answer_the_action_as_written() -> None:
    reply = Reply(554, "5.7.1", "<b@x>: Recipient address rejected: go away")
    assert policy_action(Decision(REJECT, reply, "REJECT go away")) == "REJECT go away"
    assert policy_action(Decision(DEFER, Reply(450, "4.2.0", "later"), "")) == "450 4.2.0 later"
    discard = Decision(PERMIT, None, "DISCARD spam trap", discard="spam trap", prepend=["X-A: 1"])
    assert policy_action(discard) == "DISCARD spam trap"


def test_one_side_effect_in_postfix_order_else_ok_or_dunno() -> None:
    assert policy_action(Decision(DUNNO)) == "DUNNO"
    assert policy_action(Decision(PERMIT, None, "OK")) == "OK"
    both = Decision(DUNNO, prepend=["X-Greylist: delayed 301 seconds"], hold="", filter="smtp:[h]:25")
    assert policy_action(both) == "FILTER smtp:[h]:25"
    assert policy_action(Decision(PERMIT, None, "OK", hold="")) == "HOLD"
    assert policy_action(Decision(DUNNO, prepend=["X-A: 1", "X-B: 2"])) == "PREPEND X-A: 1"
    assert policy_action(Decision(DUNNO, redirect="r@x", hold="why")) == "REDIRECT r@x"


def test_only_the_policy_service_logs_an_action() -> None:
    txn = Transaction(stage=Stage.RCPT, client_address="192.0.2.1", sender="a@y", recipient="b@x")
    d = Decision(REJECT, Reply(554, "5.7.1", "no"), "REJECT no")
    assert format_log_line(txn, d, policy_action(d)).endswith("; action=REJECT no; by=no restriction matched")
    assert "action=" not in format_log_line(txn, d)
