"""DNS restrictions against a real DNS server (dnsmasq) serving test DNSBL zones."""

from __future__ import annotations

import pytest

from filterd.config import Config
from filterd.policy.action import policy_action
from filterd.restrict.decision import DEFER, DUNNO, PERMIT, REJECT
from filterd.restrict.registry import build_engine
from filterd.restrict.services import Services
from filterd.restrict.transaction import Stage, Transaction
from tests.fixtures.dnsmasq import BAD_DOMAIN, DBL, DNSWL, LISTED_V4, LISTED_V6, MULTI_V4, NO_TXT_V4, UNLISTED_V4, ZEN

pytestmark = pytest.mark.integration


def txn(**kw) -> Transaction:
    base = dict(stage=Stage.RCPT, client_address=UNLISTED_V4, client_name="mx.client.example",
                reverse_client_name="mx.client.example", helo_name="mx.client.example",
                sender="alice@sender.example", recipient="bob@example.com", protocol_name="ESMTP")
    base.update(kw)
    return Transaction(**base)


async def run(dns, restrictions: str, t: Transaction, extra: str = ""):
    cfg = Config.from_text(f"dns_nameservers = {dns.nameserver}\ndnsbl_timeout = 3s\n{extra}"
                           f"policy_restrictions = {restrictions}\n")
    services = Services(cfg)
    try:
        return await build_engine(cfg, services).evaluate("policy_restrictions", t)
    finally:
        await services.close()


async def test_reject_rbl_client_reply_is_postfix_shaped_with_txt(dnsmasq_server):
    d = await run(dnsmasq_server, f"reject_rbl_client {ZEN}", txn(client_address=LISTED_V4))
    assert d.result == REJECT
    assert str(d.reply) == (f"554 5.7.1 Service unavailable; Client host [{LISTED_V4}] blocked using {ZEN}; "
                            f"Listed in zen.test see https://zen.test/127.0.0.2")
    assert policy_action(d) == str(d.reply)
    assert f"2.0.0.127.{ZEN}" in d.reason and "127.0.0.2" in d.reason
    d = await run(dnsmasq_server, f"reject_rbl_client {ZEN}", txn())
    assert d.result == DUNNO


async def test_rbl_reply_filters_and_ipv6(dnsmasq_server):
    d = await run(dnsmasq_server, f"reject_rbl_client {ZEN}=127.0.0.4", txn(client_address=MULTI_V4))
    assert d.result == REJECT
    d = await run(dnsmasq_server, f"reject_rbl_client {ZEN}=127.0.0.3", txn(client_address=MULTI_V4))
    assert d.result == DUNNO
    d = await run(dnsmasq_server, f"reject_rbl_client {ZEN}", txn(client_address=NO_TXT_V4))
    assert str(d.reply).endswith(f"blocked using {ZEN}")  # no TXT: no "; reason"
    d = await run(dnsmasq_server, f"reject_rbl_client {ZEN}", txn(client_address=LISTED_V6))
    assert d.result == REJECT and "IPv6 client listed" in d.reply.text


async def test_rbl_reply_maps_and_code(dnsmasq_server):
    # In filterd.cf, $$ keeps a $ for the template (as in main.cf); table files need no escaping.
    extra = ("maps_rbl_reject_code = 550\n"
             f"rbl_reply_maps = inline:{{ {{ {ZEN} = $$rbl_code 5.7.9 Go away [$$rbl_what] per $$rbl_domain: $$rbl_reason }} }}\n")
    d = await run(dnsmasq_server, f"reject_rbl_client {ZEN}", txn(client_address=LISTED_V4), extra)
    assert str(d.reply).startswith(f"550 5.7.9 Go away [{LISTED_V4}] per {ZEN}: Listed in zen.test")


@pytest.mark.parametrize(
    "restriction, field",
    [("reject_rhsbl_client", "client_name"), ("reject_rhsbl_reverse_client", "reverse_client_name"),
     ("reject_rhsbl_helo", "helo_name"), ("reject_rhsbl_sender", "sender")],
)
async def test_rhsbl_restrictions(dnsmasq_server, restriction, field):
    value = f"spammer@{BAD_DOMAIN}" if field == "sender" else BAD_DOMAIN
    d = await run(dnsmasq_server, f"{restriction} {DBL}", txn(**{field: value}))
    assert d.result == REJECT and f"blocked using {DBL}" in d.reply.text
    assert "bad.example is a spam domain" in d.reply.text
    d = await run(dnsmasq_server, f"{restriction} {DBL}", txn())
    assert d.result == DUNNO


async def test_check_dnsbl_score_threshold_and_allowlist(dnsmasq_server):
    sites = f"dnsbl_sites = {ZEN}*2, {ZEN}=127.0.0.4*1, {DNSWL}=127.0.[0..255].[0..255]*-5\n"
    # MULTI_V4 scores 2 + 1 = 3: at the threshold.
    d = await run(dnsmasq_server, "check_dnsbl_score", txn(client_address=MULTI_V4), sites + "dnsbl_threshold = 3\n")
    assert d.result == REJECT and "score 3" in d.reason
    assert d.reply.text.startswith(f"Service unavailable; Client host [{MULTI_V4}] blocked using {ZEN}")
    d = await run(dnsmasq_server, "check_dnsbl_score", txn(client_address=MULTI_V4), sites + "dnsbl_threshold = 4\n")
    assert d.result == DUNNO and "score 3" in d.evidence[0].detail
    # LISTED_V4 is on zen (2) and on the allowlist (-5): allowlisted, the rest is skipped.
    d = await run(dnsmasq_server, "check_dnsbl_score, reject", txn(client_address=LISTED_V4),
                  sites + "dnsbl_threshold = 2\ndnsbl_whitelist_threshold = -1\n")
    assert d.result == PERMIT


async def test_unknown_sender_and_recipient_domains(dnsmasq_server):
    exists = f"2.0.0.127.{ZEN}"
    d = await run(dnsmasq_server, "reject_unknown_sender_domain", txn(sender=f"a@{exists}"))
    assert d.result == DUNNO
    d = await run(dnsmasq_server, "reject_unknown_sender_domain", txn(sender=f"a@nothing.{ZEN}"))
    assert str(d.reply) == f"450 4.1.8 <a@nothing.{ZEN}>: Sender address rejected: Domain not found"
    d = await run(dnsmasq_server, "reject_unknown_recipient_domain", txn(recipient=f"b@nothing.{ZEN}"),
                  "unknown_address_reject_code = 550\n")
    assert str(d.reply) == f"550 5.1.2 <b@nothing.{ZEN}>: Recipient address rejected: Domain not found"
    # A temporary failure (the server refuses) is defer_if_permit, as Postfix.
    d = await run(dnsmasq_server, "reject_unknown_sender_domain, permit", txn(sender="a@x.refused.test"))
    assert d.result == DEFER and policy_action(d).startswith("DEFER_IF_PERMIT 4.1.8")
    d = await run(dnsmasq_server, "reject_unknown_sender_domain", txn(sender=""))
    assert d.result == DUNNO
