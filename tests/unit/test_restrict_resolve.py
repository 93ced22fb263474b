"""Relay control reads the recipient as delivery will (filterd.restrict.resolve): every
classic open-relay disguise is refused unless its final destination is ours."""

from __future__ import annotations

import pytest

from filterd.restrict.decision import DUNNO, REJECT
from filterd.restrict.resolve import dequote, resolve, strip_source_route
from tests.unit.test_restrict_engine import run, txn

OURS = {"ours.example"}


def _local(domain: str) -> bool:
    return domain.lower() in OURS


@pytest.mark.parametrize("address, final, routed, local", [
    ("user@ours.example", "user@ours.example", False, True),
    ("user@ours.example.", "user@ours.example", False, True),
    ("user@other.example.", "user@other.example", False, False),
    ("@a.example,@b.example:user@ours.example", "user@ours.example", False, True),
    ("@ours.example:user@other.example", "user@other.example", False, False),
    ("user%other.example@ours.example", "user@other.example", False, False),
    ("other.example!user@ours.example", "user@other.example", False, False),
    ('"user@other.example"@ours.example', "user@other.example", False, False),
    ("user@other.example@ours.example", "user@other.example", False, False),
    ("user%other.example@relay.example", "user%other.example@relay.example", True, False),
    ("other.example!user@relay.example", "other.example!user@relay.example", True, False),
    ('"user@other.example"@relay.example', "user@other.example@relay.example", True, False),
    ("user", "user@host.example", False, False),
    ("user@[192.0.2.1]", "user@[192.0.2.1]", False, False),
    ("a%b%c%ours.example@ours.example", "a%b@c", True, False),
])
def test_resolve(address, final, routed, local):
    r = resolve(address, _local, "host.example")
    assert (r.address, r.routed, r.local) == (final, routed, local)


def test_helpers():
    assert strip_source_route("@a:b@c") == "b@c"
    assert strip_source_route("b@c") == "b@c"
    assert dequote('"a\\"b c"@d') == 'a"b c@d'


def test_a_hostile_address_cannot_loop():
    r = resolve("%".join(["x"] * 500) + "@ours.example", _local, "host.example")
    assert r.domain == "x" or r.routed


RELAY = "mydestination = ours.example\nrelay_domains = relay.example\nmyorigin = host.example\n"


@pytest.mark.parametrize("rcpt", [
    "user%other.example@relay.example",
    "other.example!user@relay.example",
    "@relay.example:user@other.example",
    '"user@other.example"@relay.example',
    "user@[192.0.2.1]",
    "user@other.example.",
    "user@other.example@relay.example",
    "user",
    "user%other.example@ours.example",
    "other.example!user@ours.example",
    "user@other.example@ours.example",
])
async def test_every_disguise_is_relay_access_denied(rcpt):
    d = await run(RELAY, "reject_unauth_destination", txn(recipient=rcpt))
    assert d.result == REJECT and str(d.reply) == f"554 5.7.1 <{rcpt}>: Relay access denied"


@pytest.mark.parametrize("rcpt", [
    "user@relay.example", "user@relay.example.", "@a.example,@b.example:user@relay.example",
    "user@ours.example", "postmaster", "user%sub@ours.example",
])
async def test_ours_is_accepted(rcpt):
    cfg = RELAY.replace("mydestination = ours.example", "mydestination = ours.example, sub")
    d = await run(cfg, "reject_unauth_destination", txn(recipient=rcpt))
    assert d.result == DUNNO


async def test_allow_untrusted_routing():
    d = await run(RELAY + "allow_untrusted_routing = yes\n", "reject_unauth_destination",
                  txn(recipient="user%other.example@relay.example"))
    assert d.result == DUNNO


async def test_reject_unauth_pipelining():
    d = await run("", "reject_unauth_pipelining", txn(recipient="a@b.example", unauth_pipelining=True))
    assert d.result == REJECT
    assert str(d.reply) == "503 5.5.0 <a@b.example>: Recipient address rejected: Improper use of SMTP command pipelining"
    d = await run("", "reject_unauth_pipelining", txn(recipient="a@b.example"))
    assert d.result == DUNNO
