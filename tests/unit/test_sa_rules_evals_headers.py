"""SpamAssassin's HeaderEval recipient-list, template and Outlook Message-ID tests."""

from __future__ import annotations

import email.utils

import pytest

from filterd.content.message import Message
from filterd.content.rules import RuleSet
from filterd.content.rules.evals_headers import similarity
from tests.unit.rulesets import load_rules

RULES = r"""
header SORTED      eval:sorted_recipients()
header SIMILAR     eval:similar_recipients('0.65', 'undef')
header TEMPLATE    eval:check_unresolved_template()
header OUTLOOK     eval:check_outlook_message_id()
"""


@pytest.fixture(scope="module")
def rs(tmp_path_factory: pytest.TempPathFactory) -> RuleSet:
    return load_rules(tmp_path_factory, RULES, "t.cf")


def names(rs: RuleSet, headers: str) -> set[str]:
    return {s.name for s in rs.evaluate(Message(f"From: a@example.com\n{headers}\nbody\n".encode()))}


def test_sorted_recipients(rs: RuleSet) -> None:
    to = ", ".join(f"{u}@example.org" for u in ("ann", "bob", "carl", "dave", "eve", "fred", "gus"))
    assert "SORTED" in names(rs, f"To: {to}\n")
    assert "SORTED" not in names(rs, f"To: {to}, abe@example.org\n")  # out of order
    assert "SORTED" not in names(rs, "To: ann@example.org, bob@example.org\n")  # too few


def test_similar_recipients(rs: RuleSet) -> None:
    dictionary = ", ".join(f"ja{x}@ex{n}.net" for n, x in enumerate(("ck", "ne", "mes", "son", "y")))
    assert "SIMILAR" in names(rs, f"To: {dictionary}\n")
    varied = ", ".join(("ann@a.org", "bob@b.com", "carl@c.net", "dave@d.de", "eve@e.fr"))
    assert "SIMILAR" not in names(rs, f"To: {varied}\n")
    assert similarity(["x@a"] * 4) == 0.0  # fewer than 5 addresses


def test_neighbouring_duplicates_are_dropped(rs: RuleSet) -> None:
    dup = ", ".join(["Same@example.org", "same@example.org"] * 4)
    assert not {"SORTED", "SIMILAR"} & names(rs, f"To: {dup}\n")


def test_unresolved_template(rs: RuleSet) -> None:
    assert "TEMPLATE" in names(rs, "X-Mailer: %CUSTOM_MAILER\n")
    assert "TEMPLATE" not in names(rs, "Subject: 50%OFF %NOW\n")  # Subject is exempt
    assert "TEMPLATE" not in names(rs, "X-Mailer: 100% real\n")


def outlook_id(when: float) -> str:
    stamp = int(when * 0.0023283064365387 + 27111902.8329849)
    return f"<0000{stamp:08x}$0123abcd$89abcdef@host>"


def test_outlook_message_id(rs: RuleSet) -> None:
    now = 1030000000.0
    date = email.utils.formatdate(now)
    rcvd = f"Received: from x by y; {date}\n"
    assert "OUTLOOK" not in names(rs, f"{rcvd}Date: {date}\nMessage-ID: {outlook_id(now)}\n")
    assert "OUTLOOK" in names(rs, f"{rcvd}Date: {date}\nMessage-ID: {outlook_id(now - 86400 * 30)}\n")
    # a wrong Date: alone is forgiven when the first Received: time fits
    assert "OUTLOOK" not in names(rs, f"{rcvd}Date: garbage\nMessage-ID: {outlook_id(now)}\n")
    assert "OUTLOOK" not in names(rs, f"Date: {date}\nMessage-ID: <plain@id>\n")


@pytest.mark.parametrize("headers", [
    "To: ,,,,,,,,\n", "To: <@>, <@>, <@>, <@>, <@>, <@>, <@>\n", "To: \"unterminated\n",
    "Message-ID: <0000zzzzzzzz$0$0@x>\n", "Message-ID: <0000ffffffff$00000000$00000000@x>\nDate: 99 Xyz 99999\n",
])
def test_malformed_headers_never_raise(rs: RuleSet, headers: str) -> None:
    names(rs, headers)


FORGED_RULES = r"""
header YAHOO        eval:check_for_forged_yahoo_received_headers()
header HOTMAIL      eval:check_for_forged_hotmail_received_headers()
header NO_HOTMAIL   eval:check_for_no_hotmail_received_headers()
header GMAIL        eval:check_for_forged_gmail_received_headers()
header JUNO         eval:check_for_forged_juno_received_headers()
header EUDORA       eval:check_for_forged_eudoramail_received_headers()
header AOL          eval:check_for_fake_aol_relay_in_rcvd()
header GATED        eval:gated_through_received_hdr_remover()
"""
SPAMMER_HOP = "Received: from dsl-1-2-3-4.example.net ([198.51.100.7]) by mx.example.org; Tue, 20 Aug 2002 12:00:00 +0000\n"


@pytest.fixture(scope="module")
def forged(tmp_path_factory: pytest.TempPathFactory) -> RuleSet:
    return load_rules(tmp_path_factory, FORGED_RULES, "forged.cf")


def fired(rs: RuleSet, headers: str) -> set[str]:
    return {s.name for s in rs.evaluate(Message(f"{headers}To: b@example.org\n\nbody\n".encode()))}


def test_webmail_from_without_the_providers_hops(forged: RuleSet) -> None:
    assert fired(forged, SPAMMER_HOP + "From: x@yahoo.com\n") == {"YAHOO"}
    assert fired(forged, SPAMMER_HOP + "From: x@hotmail.com\n") == {"NO_HOTMAIL"}
    assert fired(forged, SPAMMER_HOP + "From: x@gmail.com\n") == {"GMAIL"}
    assert fired(forged, SPAMMER_HOP + "From: x@juno.com\n") == {"JUNO"}
    assert fired(forged, SPAMMER_HOP + "From: x@eudoramail.com\n") == {"EUDORA"}
    assert fired(forged, SPAMMER_HOP + "From: x@example.com\n") == set()


def test_genuine_webmail_hops(forged: RuleSet) -> None:
    yahoo = ("Received: from [192.0.2.1] by web12.mail.yahoo.com via HTTP; Tue, 20 Aug 2002 12:00:00 PDT\n"
             "From: x@yahoo.com\n")
    assert fired(forged, SPAMMER_HOP + yahoo) == set()
    hotmail = ("Received: from hotmail.com (f135.law8.hotmail.com [216.33.241.135]) by mx.example.org\n"
               "X-Originating-IP: [192.0.2.1]\nFrom: x@hotmail.com\n")
    assert fired(forged, hotmail) == set()
    helo_hotmail = "Received: from hotmail.com ([198.51.100.7]) by mx.example.org\nFrom: x@example.com\n"
    assert fired(forged, helo_hotmail) == {"HOTMAIL"}


def test_aol_relay_names_and_gated_mail(forged: RuleSet) -> None:
    fake = "Received: from unknown (HELO x) (80.71.176.130) by rly-xw01.mx.aol.com with QMQP\nFrom: a@b.c\n"
    assert fired(forged, fake) == {"AOL"}
    real = ("Received: from logs-tr.proxy.aol.com by rly-ip01.mx.aol.com (8.8.8/8.8.8/AOL-5.0.0) with ESMTP\n"
            "From: a@b.c\n")
    assert fired(forged, real) == set()
    # no Received: at all: the forged-webmail tests cannot judge
    assert fired(forged, "From: x@yahoo.com\n") == {"GATED"}
