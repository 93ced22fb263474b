"""The restriction engine: Postfix list semantics, every action, every local restriction.

DNS-based restrictions are tested against a real DNS server in
tests/integration/test_restrict_dns.py; greylisting here uses a stand-in greylister
(this is a unit test of the engine), and the real one in the integration tests.
"""

from __future__ import annotations

import pytest

from filterd.config import Config, ConfigError
from filterd.policy.action import policy_action
from filterd.restrict.decision import DEFER, DUNNO, PERMIT, REJECT
from filterd.restrict.registry import build_engine
from filterd.restrict.services import Services
from filterd.restrict.transaction import Stage, Transaction


def txn(**kw) -> Transaction:
    base = dict(stage=Stage.RCPT, client_address="192.0.2.10", client_name="mail.client.example",
                reverse_client_name="mail.client.example", helo_name="mail.client.example",
                sender="alice@sender.example", recipient="bob@example.com", protocol_name="ESMTP")
    base.update(kw)
    return Transaction(**base)


async def run(cfg_text: str, restrictions: str, t: Transaction | None = None, services=None):
    cfg = Config.from_text(cfg_text + f"\ntest_list = {restrictions}\nsmtpd_restriction_classes = $smtpd_restriction_classes_test\n"
                           if "smtpd_restriction_classes_test" in cfg_text else cfg_text + f"\npolicy_restrictions = {restrictions}\n")
    engine = build_engine(cfg, services or Services(cfg))
    return await engine.evaluate("policy_restrictions", t or txn())


async def test_empty_list_is_dunno():
    d = await run("", "")
    assert d.result == DUNNO and policy_action(d) == "DUNNO"


async def test_permit_and_reject_and_defer_fixed_restrictions():
    d = await run("", "permit, reject")
    assert d.result == PERMIT and policy_action(d) == "OK"
    d = await run("", "reject")
    assert d.result == REJECT and str(d.reply) == "554 5.7.1 <bob@example.com>: Recipient address rejected: Access denied"
    d = await run("", "defer")
    assert d.result == DEFER and d.reply.code == 450


@pytest.mark.parametrize(
    "value, result, reply, policy",
    [
        ("OK", PERMIT, None, "OK"),
        ("1234", PERMIT, None, "OK"),
        ("REJECT", REJECT, "554 5.7.1 <bob@example.com>: Recipient address rejected: Access denied", "REJECT"),
        ("REJECT 5.7.2 go away", REJECT, "554 5.7.2 <bob@example.com>: Recipient address rejected: go away", "REJECT 5.7.2 go away"),
        ("DEFER later", DEFER, "450 4.7.1 <bob@example.com>: Recipient address rejected: later", "DEFER later"),
        ("550 5.1.1 no such user", REJECT, "550 5.1.1 <bob@example.com>: Recipient address rejected: no such user", "550 5.1.1 no such user"),
        ("450 4.1.1 try later", DEFER, "450 4.1.1 <bob@example.com>: Recipient address rejected: try later", "450 4.1.1 try later"),
        ("421 4.1.1 fixed", DEFER, "421 4.1.1 <bob@example.com>: Recipient address rejected: fixed", "421 4.1.1 fixed"),
        ("DUNNO", DUNNO, None, "DUNNO"),
        ("DEFER_IF_PERMIT 4.2.0 wait", DEFER, "450 4.2.0 <bob@example.com>: Recipient address rejected: wait", "DEFER_IF_PERMIT 4.2.0 wait"),
        ("HOLD held by table", DUNNO, None, "HOLD held by table"),
        ("DISCARD gone", PERMIT, None, "DISCARD gone"),
        ("FILTER smtp:[127.0.0.1]:10024", DUNNO, None, "FILTER smtp:[127.0.0.1]:10024"),
        ("REDIRECT trap@example.com", DUNNO, None, "REDIRECT trap@example.com"),
        ("PREPEND X-Seen: yes", DUNNO, None, "PREPEND X-Seen: yes"),
        ("WARN suspicious", DUNNO, None, "DUNNO"),
    ],
)
async def test_access_table_actions(value, result, reply, policy):
    d = await run("", f"check_recipient_access inline:{{ {{ bob@example.com = {value} }} }}")
    assert d.result == result
    assert (str(d.reply) if d.reply else None) == reply
    assert policy_action(d) == policy
    assert "inline:" in d.evidence[0].detail and "bob@example.com" in d.evidence[0].detail


async def test_side_effects_are_collected_and_reported():
    d = await run("", "check_recipient_access inline:{ { bob@example.com = WARN odd } }, "
                      "check_sender_access inline:{ { sender.example = HOLD quarantine me } }")
    assert d.warnings == ["warn: odd"] and d.hold == "quarantine me"


async def test_defer_if_permit_turns_a_later_permit_into_defer_but_not_a_reject():
    d = await run("", "check_client_access inline:{ { 192.0.2.10 = DEFER_IF_PERMIT maybe } }, permit")
    assert d.result == DEFER and "maybe" in str(d.reply)
    assert d.decided_by.restriction.startswith("check_client_access")
    d = await run("", "check_client_access inline:{ { 192.0.2.10 = DEFER_IF_PERMIT maybe } }, reject")
    assert d.result == REJECT


async def test_defer_if_reject_turns_a_later_reject_into_defer():
    d = await run("", "defer_if_reject, reject")
    assert d.result == DEFER and d.reply.code == 450
    d = await run("", "defer_if_reject, permit")
    assert d.result == PERMIT


async def test_warn_if_reject_logs_instead_of_rejecting():
    d = await run("", "warn_if_reject, reject, permit")
    assert d.result == PERMIT and d.warnings and d.warnings[0].startswith("reject_warning: 554")


async def test_restriction_classes_and_table_results_naming_restrictions():
    cfg = ("smtpd_restriction_classes = strict\n"
           "strict = check_helo_access inline:{ { mail.client.example = REJECT bad helo } }\n")
    d = await run(cfg, "check_sender_access inline:{ { sender.example = strict } }, permit")
    assert d.result == REJECT and "Helo command rejected: bad helo" in str(d.reply)
    d = await run(cfg, "check_sender_access inline:{ { other.example = strict } }, permit")
    assert d.result == PERMIT
    d = await run("", "check_sender_access inline:{ { sender.example = reject_non_fqdn_helo_hostname } }, permit",
                  txn(helo_name="localhost"))
    assert d.result == REJECT and d.reply.code == 504


async def test_unknown_restriction_and_missing_argument_are_config_errors():
    with pytest.raises(ConfigError, match="unknown restriction 'permit_everything'"):
        await run("", "permit_everything")
    with pytest.raises(ConfigError, match="needs an argument"):
        await run("", "check_client_access")
    with pytest.raises(ConfigError, match="not defined"):
        await run("smtpd_restriction_classes = ghost\n", "permit")


async def test_permit_mynetworks_v4_v6_and_tables(tmp_path):
    d = await run("mynetworks = 192.0.2.0/24", "permit_mynetworks, reject")
    assert d.result == PERMIT and "192.0.2.0/24" in d.reason
    d = await run("mynetworks = 198.51.100.0/24", "permit_mynetworks, reject")
    assert d.result == REJECT
    d = await run("mynetworks = [2001:db8::]/32", "permit_mynetworks, reject", txn(client_address="2001:db8::5"))
    assert d.result == PERMIT
    t = tmp_path / "nets"
    t.write_text("192.0.2.0/28 OK\n")
    d = await run(f"mynetworks = cidr:{t}", "permit_mynetworks, reject")
    assert d.result == PERMIT
    d = await run("mynetworks = 127.0.0.0/8", "permit_mynetworks, reject", txn(client_address="not-an-ip"))
    assert d.result == REJECT


async def test_permit_sasl_authenticated():
    d = await run("", "permit_sasl_authenticated, reject", txn(sasl_username="alice"))
    assert d.result == PERMIT and "alice" in d.reason
    d = await run("", "permit_sasl_authenticated, reject")
    assert d.result == REJECT


RELAY = "mydestination = example.com\nrelay_domains = relay.example\n"


@pytest.mark.parametrize(
    "rcpt, ok",
    [
        ("bob@example.com", True),
        ("bob@EXAMPLE.COM.", True),
        ("bob@sub.example.com", False),  # mydestination has no parent matching
        ("bob@relay.example", True),
        ("bob@sub.relay.example", True),  # relay_domains does (parent_domain_matches_subdomains)
        ("bob@elsewhere.example", False),
        ("victim%elsewhere.example@relay.example", False),  # sender-specified routing
        ("postmaster", True),
    ],
)
async def test_reject_unauth_destination(rcpt, ok):
    d = await run(RELAY, "reject_unauth_destination", txn(recipient=rcpt))
    if ok:
        assert d.result == DUNNO
    else:
        assert d.result == REJECT and str(d.reply) == f"554 5.7.1 <{rcpt}>: Relay access denied"
    d = await run(RELAY, "permit_auth_destination, defer_unauth_destination", txn(recipient=rcpt))
    assert d.result == (PERMIT if ok else DEFER)


@pytest.mark.parametrize(
    "helo, invalid, non_fqdn",
    [
        ("mail.example.com", False, False),
        ("localhost", False, True),
        ("[192.0.2.1]", False, False),
        ("[IPv6:2001:db8::1]", False, False),
        ("bad_host!name", True, True),
        ("-leading.example", True, True),
        ("192.0.2.1", True, True),
        ("a" * 64 + ".example", True, True),
    ],
)
async def test_helo_syntax(helo, invalid, non_fqdn):
    d = await run("", "reject_invalid_helo_hostname", txn(helo_name=helo))
    assert (d.result == REJECT) == invalid
    if invalid:
        assert str(d.reply) == f"501 5.5.2 <{helo}>: Helo command rejected: Invalid name"
    d = await run("", "reject_non_fqdn_helo_hostname", txn(helo_name=helo))
    assert (d.result == REJECT) == non_fqdn
    if non_fqdn:
        assert d.reply.code == 504 and "need fully-qualified hostname" in d.reply.text


async def test_non_fqdn_sender_and_recipient():
    d = await run("", "reject_non_fqdn_sender", txn(sender="alice@localhost"))
    assert str(d.reply) == "504 5.5.2 <alice@localhost>: Sender address rejected: need fully-qualified address"
    d = await run("", "reject_non_fqdn_sender", txn(sender=""))
    assert d.result == DUNNO  # the null sender is fine
    d = await run("", "reject_non_fqdn_recipient", txn(recipient="bob"))
    assert d.reply.code == 504 and "Recipient address rejected" in d.reply.text


async def test_unknown_client_hostname_restrictions():
    d = await run("", "reject_unknown_client_hostname", txn(client_name="unknown"))
    assert str(d.reply) == "450 4.7.25 Client host rejected: cannot find your hostname, [192.0.2.10]"
    d = await run("", "reject_unknown_reverse_client_hostname", txn(reverse_client_name="unknown"))
    assert d.reply.code == 450 and "reverse hostname" in d.reply.text
    d = await run("unknown_client_reject_code = 550", "reject_unknown_client_hostname", txn(client_name="unknown"))
    assert d.reply.code == 550 and d.reply.dsn == "5.7.25"
    d = await run("", "reject_unknown_client_hostname, reject_unknown_reverse_client_hostname")
    assert d.result == DUNNO


async def test_check_client_access_name_then_address_prefixes():
    table = "inline:{ { client.example = REJECT by name }, { 192.0.2 = REJECT by net } }"
    d = await run("", f"check_client_access {table}")
    assert "by name" in d.reply.text and d.reply.text.startswith("<mail.client.example[192.0.2.10]>: Client host rejected")
    d = await run("", f"check_client_access {table}", txn(client_name="unknown"))
    assert "by net" in d.reply.text


async def test_check_helo_and_sender_access():
    d = await run("", "check_helo_access inline:{ { client.example = 550 5.7.1 no } }")
    assert str(d.reply) == "550 5.7.1 <mail.client.example>: Helo command rejected: no"
    d = await run("", "check_sender_access inline:{ { alice@ = REJECT } }")
    assert d.reply.text == "<alice@sender.example>: Sender address rejected: Access denied"
    d = await run("", "check_sender_access inline:{ { <> = REJECT no bounces } }", txn(sender=""))
    assert "no bounces" in d.reply.text


async def test_stage_specific_reply_class():
    d = await run("", "reject", txn(stage=Stage.DATA))
    assert d.reply.text == "<DATA>: Data command rejected: Access denied"
    d = await run("", "reject", txn(stage=Stage.CONNECT))
    assert d.reply.text == "<mail.client.example[192.0.2.10]>: Client host rejected: Access denied"


class StandInGreylister:
    """Answers like the real greylister would, to test the engine's translation only."""

    def __init__(self, result):
        self.result = result
        self.calls = []

    async def check(self, client_address, client_name, sender, recipient, instance=""):
        self.calls.append((client_address, sender, recipient, instance))
        return self.result

    async def close(self):
        pass


async def test_check_greylist_translation():
    from filterd.greylist import GreylistResult as R

    cfg = Config.from_text("policy_restrictions = check_greylist\n")
    g = StandInGreylister(R(action="defer", header=None, dsn="4.2.0", body="Greylisted, see http://x/help/example.com.html",
                            delay_left=300, reason="new triplet"))
    d = await build_engine(cfg, Services(cfg, greylister=g)).evaluate("policy_restrictions", txn())
    assert d.result == DEFER
    assert policy_action(d) == "DEFER_IF_PERMIT 4.2.0 Greylisted, see http://x/help/example.com.html"
    assert str(d.reply) == "450 4.2.0 <bob@example.com>: Recipient address rejected: Greylisted, see http://x/help/example.com.html"
    assert "new triplet" in d.reason
    g = StandInGreylister(R(action="pass", header="X-Greylist: delayed 301 seconds by filterd", dsn=None, body="",
                            delay_left=301, reason="retry after 301s"))
    d = await build_engine(cfg, Services(cfg, greylister=g)).evaluate("policy_restrictions", txn())
    assert d.result == DUNNO and policy_action(d) == "PREPEND X-Greylist: delayed 301 seconds by filterd"
    d = await build_engine(cfg, Services(cfg, greylister=g)).evaluate("policy_restrictions", txn(recipient=None, stage=Stage.MAIL))
    assert policy_action(d) == "DUNNO"


async def test_table_that_cannot_answer_tempfails_like_postfix():
    d = await run("", "check_client_access fail:broken, permit")
    assert d.result == DEFER and str(d.reply) == "451 4.3.5 Server configuration error"
    assert "table lookup failed" in d.reason


def test_mynetworks_style_when_mynetworks_is_empty():
    import ipaddress

    from filterd.restrict.localnets import style_networks

    addrs = [ipaddress.ip_interface("192.0.2.2/24"), ipaddress.ip_interface("10.1.2.3/16"),
             ipaddress.ip_interface("fd00::2/64"), ipaddress.ip_interface("fe80::1/64")]
    assert style_networks("host", addrs) == ["127.0.0.0/8", "::1/128", "192.0.2.2/32", "10.1.2.3/32", "fd00::2/128"]
    assert style_networks("subnet", addrs) == ["127.0.0.0/8", "::1/128", "192.0.2.0/24", "10.1.0.0/16", "fd00::/64"]
    assert style_networks("class", addrs) == ["127.0.0.0/8", "::1/128", "192.0.2.0/24", "10.0.0.0/8", "fd00::/64"]


async def test_default_mynetworks_trusts_loopback():
    d = await run("", "permit_mynetworks, reject", txn(client_address="127.0.0.1"))
    assert d.result == PERMIT
