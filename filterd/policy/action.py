"""The ``action=`` a policy service answers Postfix for a restriction decision.

Only the policy front end speaks in actions: the milter and the MTA carry a decision out
themselves. A policy reply holds one action, so Postfix's smtpd builds the client's reply
from it (``REJECT text``, ``DEFER_IF_PERMIT 4.2.0 Greylisted``) or takes the one side
effect it names (``PREPEND X-Greylist: ...``); an undecided list is ``DUNNO`` and an
explicit permit ``OK``, as postgrey and policyd answer.
"""

from __future__ import annotations

from filterd.restrict.decision import DEFER, PERMIT, REJECT, Decision


def policy_action(d: Decision) -> str:
    """What to answer Postfix for ``d``: the deciding action as written for a reject, a
    defer or a DISCARD; else the one side effect a reply can carry, or OK / DUNNO."""
    if d.result in (REJECT, DEFER) or (d.result == PERMIT and d.discard is not None):
        return d.action or (str(d.reply) if d.reply is not None else "DUNNO")
    return side_effect_action(d) or ("OK" if d.result == PERMIT else "DUNNO")


def side_effect_action(d: Decision) -> str | None:
    """The one non-decisive action a policy reply can carry (policy replies hold one):
    REDIRECT before FILTER before HOLD before the first PREPEND."""
    if d.redirect:
        return f"REDIRECT {d.redirect}"
    if d.filter:
        return f"FILTER {d.filter}"
    if d.hold is not None:
        return f"HOLD {d.hold}".rstrip()
    if d.prepend:
        return f"PREPEND {d.prepend[0]}"
    return None
