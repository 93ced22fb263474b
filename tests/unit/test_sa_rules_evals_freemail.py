"""SpamAssassin's FreeMail plugin tests and its settings, as the shipped rules use them.

The expected hits were checked against ``spamassassin -t -L`` (SpamAssassin 4.0) on
the same messages with Debian's 20_freemail*.cf and 72_active.cf.
"""

from __future__ import annotations

import pytest

from filterd.content.message import Message
from filterd.restrict.transaction import Transaction
from filterd.content.rules import RuleSet
from filterd.content.rules.evals_freemail import FreemailConfig
from filterd.content.rules.model import RuleSettings
from filterd.content.rules.views import MessageViews
from tests.unit.rulesets import load_rules

RULES = r"""
ifplugin Mail::SpamAssassin::Plugin::FreeMail
freemail_domains gmail.com hotmail.com aol.com mail.ru
freemail_domains yahoo.* yahoo.co*.* outlook.?? *.free.hr
freemail_whitelist mail.ru
freemail_welcomelist boss@gmail.com

header __fm_replyto  eval:check_freemail_replyto('replyto')
meta   REPLYTO       __fm_replyto
header __fm_reply    eval:check_freemail_replyto('reply')
meta   REPLY         __fm_reply && !__fm_replyto
header FROM          eval:check_freemail_from()
header FROM_DIGIT    eval:check_freemail_from('\d@')
header ENV_DIGIT     eval:check_freemail_header('EnvelopeFrom', '\d@')
header HDR_REPLYTO   eval:check_freemail_header('Reply-To:addr')
header BODY          eval:check_freemail_body()
header BODY_DIGIT    eval:check_freemail_body('\d@')
header DIFF_DOMAINS  eval:check_equal_from_domains()
endif
"""
ALL = {"REPLYTO", "REPLY", "FROM", "FROM_DIGIT", "ENV_DIGIT", "HDR_REPLYTO", "BODY", "BODY_DIGIT", "DIFF_DOMAINS"}


@pytest.fixture(scope="module")
def rs(tmp_path_factory: pytest.TempPathFactory) -> RuleSet:
    return load_rules(tmp_path_factory, RULES)


def hits(rs: RuleSet, headers: str, body: str = "Hello.\n", sender: str | None = None,
         content_type: str = "text/plain") -> set[str]:
    raw = f"{headers}To: bob@example.org\nSubject: hi\nContent-Type: {content_type}\n\n{body}"
    msg = Message(raw.encode(), Transaction(sender=sender) if sender is not None else None)
    return {s.name for s in rs.evaluate(msg)} & ALL


def test_rules_load_natively(rs: RuleSet) -> None:
    assert rs.stats.unsupported_eval_count == 0
    assert rs.stats.parse_errors == []
    assert rs.stats.native_eval["check_freemail_header"] == 2


def test_from_and_replyto_different_freemails(rs: RuleSet) -> None:
    got = hits(rs, "From: John <john.smith@gmail.com>\nReply-To: <barrister@yahoo.co.uk>\n")
    assert got == {"FROM", "REPLYTO", "HDR_REPLYTO"}


def test_same_address_in_from_and_replyto(rs: RuleSet) -> None:
    assert hits(rs, "From: jim@gmail.com\nReply-To: jim@gmail.com\n") == {"FROM", "HDR_REPLYTO"}


def test_freemail_replyto_with_company_from(rs: RuleSet) -> None:
    """Reply-To at a freemail and a different freemail in the body: 'replyto' fires."""
    got = hits(rs, "From: ceo@example.com\nReply-To: agent.k@yahoo.com\n", "Send it to docs.k@hotmail.com.\n")
    assert got == {"REPLYTO", "HDR_REPLYTO", "BODY"}
    assert hits(rs, "From: ceo@example.com\nReply-To: agent.k@yahoo.com\n") == {"HDR_REPLYTO"}


def test_reply_mode_compares_from_with_body(rs: RuleSet) -> None:
    got = hits(rs, "From: jane@gmail.com\n", "Write to other.jane@yahoo.com please.\n")
    assert got == {"FROM", "REPLY", "BODY"}
    # a company From: without Reply-To is never compared
    assert hits(rs, "From: ceo@example.com\n", "Ask lawyer@outlook.fr.\n") == {"BODY"}


def test_reply_mode_needs_a_freemail_from(tmp_path_factory: pytest.TempPathFactory) -> None:
    reply = load_rules(tmp_path_factory, "freemail_domains gmail.com yahoo.com hotmail.com\n"
                                         "header R eval:check_freemail_replyto('reply')\n")
    body = b"\n\nSend it to docs.k@hotmail.com.\n"

    def fires(headers: bytes) -> bool:
        return any(s.name == "R" for s in reply.evaluate(Message(headers + body)))

    assert not fires(b"From: ceo@example.com\nReply-To: agent@yahoo.com")
    assert fires(b"From: ceo@gmail.com\nReply-To: agent@yahoo.com")  # From/Reply-To differ
    assert fires(b"From: ceo@gmail.com\nReply-To: ceo@gmail.com")  # Reply-To vs body
    assert not fires(b"From: ceo@gmail.com\nReply-To: ceo@example.com")


def test_mailto_links_in_html(rs: RuleSet) -> None:
    html = '<html><body><a href="mailto:pat.private@outlook.de">write</a></body></html>\n'
    assert hits(rs, "From: pat@gmail.com\n", html, content_type="text/html") == {"FROM", "REPLY", "BODY"}


def test_quoted_and_linked_addresses_are_not_body_addresses(rs: RuleSet) -> None:
    body = ("On Monday <other@yahoo.com> wrote: hi. Also he@hotmail.com said: yes. "
            "See https://example.com/t?u=foo@gmail.com\n")
    assert hits(rs, "From: jim@gmail.com\n", body) == {"FROM"}


def test_too_many_body_addresses_skip_the_body(rs: RuleSet) -> None:
    five = "a1@example.com a2@example.com a3@example.com a4@example.com other@yahoo.com\n"
    assert hits(rs, "From: ceo@gmail.com\n", five) == {"FROM"}
    three_free = "one@yahoo.com two@hotmail.com three@aol.com\n"
    assert hits(rs, "From: jane@gmail.com\n", three_free) == {"FROM"}
    two_free = "one@yahoo.com two@hotmail.com\n"
    assert hits(rs, "From: jane@gmail.com\n", two_free) == {"FROM", "REPLY", "BODY"}


def test_bulk_envelope_sender_skips_replyto(rs: RuleSet) -> None:
    headers = "From: jim@gmail.com\nReply-To: jim.other@yahoo.com\n"
    assert "REPLYTO" not in hits(rs, headers, sender="list-bounces@lists.example.com")
    assert "REPLYTO" not in hits(rs, "Return-Path: <noreply@example.com>\n" + headers)
    assert "REPLYTO" in hits(rs, headers, sender="jim@gmail.com")


def test_welcomelists(rs: RuleSet) -> None:
    assert hits(rs, "From: boss@gmail.com\n") == set()  # freemail_welcomelist address
    assert hits(rs, "From: a@x.free.hr\nReply-To: b@mail.ru\n") == {"FROM"}  # freemail_whitelist domain
    assert hits(rs, "From: info@gmail.com\nReply-To: sales@yahoo.com\n") == set()  # role addresses


def test_wildcards(rs: RuleSet) -> None:
    assert "FROM" in hits(rs, "From: a@yahoo.com.tw\n")
    assert "FROM" in hits(rs, "From: a@outlook.fr\n")
    assert "FROM" not in hits(rs, "From: a@outlook.com\n")  # ? is exactly one character
    assert "FROM" not in hits(rs, "From: a@yahoo.a.b.c\n")  # * never crosses a dot
    assert "FROM" not in hits(rs, "From: a@free.hr\n")


def test_from_sources_and_regex(rs: RuleSet) -> None:
    assert hits(rs, "From: ceo@example.com\n", sender="ceo77@gmail.com") == {
        "FROM", "FROM_DIGIT", "ENV_DIGIT", "DIFF_DOMAINS"}
    # Resent-From replaces every other sender header
    assert hits(rs, "Resent-From: fwd@gmail.com\nFrom: ceo@example.com\n") == {"FROM"}
    assert hits(rs, "Resent-From: ceo@example.com\nFrom: x@gmail.com\n") == set()
    assert "FROM" in hits(rs, "From: a@gmail..com\n")  # doubled dots squeezed


def test_body_regex(rs: RuleSet) -> None:
    assert hits(rs, "From: ceo@example.com\n", "Mail me: x42@yahoo.com\n") == {"BODY", "BODY_DIGIT"}


def test_equal_from_domains(rs: RuleSet) -> None:
    assert "DIFF_DOMAINS" not in hits(rs, "From: a@mail.example.co.uk\n", sender="b@x.example.co.uk")
    assert "DIFF_DOMAINS" not in hits(rs, "From: a@a.other.co.uk\n", sender="b@x.example.co.uk")  # last 2 labels
    assert "DIFF_DOMAINS" in hits(rs, "From: a@example.com\n", sender="b@example.net")
    assert "DIFF_DOMAINS" not in hits(rs, "From: a@example.com\n", sender="")
    assert "DIFF_DOMAINS" not in hits(rs, "From: nobody\n", sender="b@example.net")


@pytest.mark.parametrize("headers", [
    "From: \n", "From: <>\nReply-To: <@>\n", "From: \"unterminated <a@gmail.com\n",
    "From: =?utf-8?b?////?= <x@gmail.com>\nReply-To: ,,,;;<<>>\n",
])
def test_malformed_headers_do_not_break(rs: RuleSet, headers: str) -> None:
    hits(rs, headers, "\xff\xfe garbage @@ a@@b.com <@> x@y.\n")


def test_no_domains_disables_plugin(tmp_path_factory: pytest.TempPathFactory) -> None:
    bare = load_rules(tmp_path_factory, "header FROM eval:check_freemail_from()\n"
                                        "header R eval:check_freemail_replyto()\n")
    msg = Message(b"From: a@gmail.com\nReply-To: b@yahoo.com\n\nhi\n")
    assert bare.evaluate(msg) == []


def test_bad_settings_and_arguments_are_reported(tmp_path_factory: pytest.TempPathFactory) -> None:
    bad = load_rules(tmp_path_factory, "freemail_domains good.example b@d_domain\n"
                                       "freemail_welcomelist nodot\n"
                                       "freemail_max_body_emails lots\n"
                                       "header A eval:check_freemail_replyto('sideways')\n"
                                       "header B eval:check_freemail_from('(unclosed')\n"
                                       "header C eval:check_freemail_header()\n")
    messages = [p.message for p in bad.stats.parse_errors]
    assert any("b@d_domain" in m for m in messages)
    assert any("nodot" in m for m in messages)
    assert any("needs a number" in m for m in messages)
    assert set(bad.stats.unsupported_eval) == {
        "check_freemail_replyto('sideways')", "check_freemail_from('(unclosed')", "check_freemail_header()"}
    assert bad.settings.get("freemail_domains") == ["good.example"]  # valid tokens kept


def test_numeric_settings() -> None:
    settings = RuleSettings()
    settings.add("freemail_domains", "gmail.com")
    settings.add("freemail_max_body_emails", "10")
    settings.add("freemail_skip_when_over_max", "0")
    fm = FreemailConfig.from_settings(settings)
    assert (fm.max_body_emails, fm.skip_when_over_max, fm.max_body_freemails) == (10, False, 3)
    assert fm.is_freemail("x@gmail.com") and not fm.is_freemail("")


def test_settings_are_derived_once() -> None:
    settings = RuleSettings()
    settings.add("freemail_domains", "gmail.com")
    views = MessageViews(Message(b"From: a@gmail.com\n\nhi\n"), settings)
    assert views.settings.derived(FreemailConfig.from_settings) is settings.derived(FreemailConfig.from_settings)
