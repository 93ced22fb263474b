"""SpamAssassin's X-Spam-Relays-* pseudo-headers from Received: chains, and the rules on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from filterd.content.message import Message
from filterd.content.rules import RuleSet
from filterd.content.rules.relays import Relay, RelayPath, parse_received
from filterd.content.rules.views import MessageViews

DATE = "; Tue, 20 Aug 2002 12:00:00 +0100 (IST)"


@pytest.mark.parametrize("line, expected", [
    # Postfix
    ("from mail.example.net (mail.example.net [192.0.2.7]) by mx.example.org (Postfix) with ESMTP id 4A1B2C"
     " for <bob@example.org>" + DATE,
     Relay(ip="192.0.2.7", rdns="mail.example.net", helo="mail.example.net", by="mx.example.org", id="4A1B2C")),
    ("from helo.example (unknown [198.51.100.9]) by mx.example.org (Postfix) with SMTP id X1Y2Z3" + DATE,
     Relay(ip="198.51.100.9", rdns="", helo="helo.example", by="mx.example.org", id="X1Y2Z3")),
    # Sendmail with ident, and without rDNS
    ("from pc (user@host.example.com [203.0.113.4]) by relay.example.org (8.11.6/8.11.6) with ESMTP id g7KB"
     + DATE,
     Relay(ip="203.0.113.4", rdns="host.example.com", helo="pc", by="relay.example.org", ident="user", id="g7KB")),
    ("from friend ([203.0.113.5]) by relay.example.org with Microsoft SMTPSVC(5.0.2195.4905)" + DATE,
     Relay(ip="203.0.113.5", helo="friend", by="relay.example.org")),
    # qmail
    ("from unknown (HELO mailer.example) (203.0.113.6) by mx.example.org with SMTP" + DATE,
     Relay(ip="203.0.113.6", helo="mailer.example", by="mx.example.org")),
    ("from dsl.example.net (HELO pc) (joe@203.0.113.7) by mx.example.org with SMTP" + DATE,
     Relay(ip="203.0.113.7", rdns="dsl.example.net", helo="pc", ident="joe", by="mx.example.org")),
    # Exim
    ("from [203.0.113.8] (helo=spammer.example) by mx.example.org with esmtp (Exim 4.10) id 17abc-0001" + DATE,
     Relay(ip="203.0.113.8", helo="spammer.example", by="mx.example.org", id="17abc-0001")),
    ("from host.example.net ([203.0.113.9] helo=pc.local) by mx.example.org with esmtp (Exim 4.10) id 17x-01"
     + DATE,
     Relay(ip="203.0.113.9", rdns="host.example.net", helo="pc.local", by="mx.example.org", id="17x-01")),
    # authenticated submission
    ("from laptop (dsl.example.net [203.0.113.10]) by smtp.example.org (Postfix) with ESMTPSA id AB12" + DATE,
     Relay(ip="203.0.113.10", rdns="dsl.example.net", helo="laptop", by="smtp.example.org", id="AB12",
           auth="ESMTPSA")),
])
def test_parse_received_shapes(line: str, expected: Relay) -> None:
    assert parse_received(line) == expected


@pytest.mark.parametrize("line", [
    "by mx.example.org (Postfix, from userid 1000) id 1234" + DATE,   # no handover
    "(qmail 1234 invoked by uid 500)" + DATE,
    "from www-data by host.example (Exim 4.50) with local for <a@b> id 1GFb-0006" + DATE,
    "from virtual.example by relay.example ;" + DATE,
    "from root (root@localhost) by host.example (8.12/8.12) id g7K" + DATE,
    "from nowhere with garbage and no address",
    "",
    "from \x00\xff ((((([[[ by",
])
def test_unparseable_or_local_lines_are_not_relays(line: str) -> None:
    assert parse_received(line) is None


def test_odd_characters_are_neutralised() -> None:
    relay = parse_received("from a(b) (c<d [192.0.2.1]) by e|f (Postfix)" + DATE)
    assert relay is not None and "<" not in relay.as_string(False) and "|" not in relay.by


def test_trust_ends_at_the_first_public_hop() -> None:
    path = RelayPath.from_received([
        "from localhost (localhost [127.0.0.1]) by gw.example.org (Postfix) with ESMTP id A1a" + DATE,
        "from inside (inside.lan [10.1.2.3]) by localhost.example.org (Postfix) with ESMTP id B2b" + DATE,
        "from spammer (dyn-1-2-3-4.example.net [198.51.100.4]) by inside.lan with ESMTP id C3c" + DATE,
        "from other (private [10.9.9.9]) by dyn.example.net with SMTP id D4d" + DATE,
    ])
    assert [r.ip for r in path.trusted] == ["127.0.0.1", "10.1.2.3"]
    assert [r.ip for r in path.untrusted] == ["198.51.100.4", "10.9.9.9"]  # no trust after a public hop
    headers = path.pseudo_headers()
    assert headers["x-spam-relays-untrusted"].startswith(
        "[ ip=198.51.100.4 rdns=dyn-1-2-3-4.example.net helo=spammer by=inside.lan ident= envfrom= intl=0 id=C3c "
        "auth= msa=0 ] [ ip=10.9.9.9 ")
    assert headers["x-spam-relays-trusted"] == headers["x-spam-relays-internal"]
    assert " intl=1 " in headers["x-spam-relays-trusted"]


def test_no_received_headers_gives_empty_pseudo_headers() -> None:
    views = MessageViews(Message(b"From: a@example.com\n\nhi\n"))
    assert views.header("X-Spam-Relays-Untrusted") is None
    assert views.header("X-Spam-Relays-Trusted") is None


RULES = r"""
header __RDNS_NONE  X-Spam-Relays-External =~ /^[^\]]+ rdns= /
meta   RDNS_NONE    __RDNS_NONE
header __LAST_UNTRUSTED_RELAY_NO_AUTH X-Spam-Relays-Untrusted =~ /^[^\]]+ auth= /
meta   NO_AUTH      __LAST_UNTRUSTED_RELAY_NO_AUTH
header HELO_MISMATCH eval:helo_ip_mismatch()
"""


def rules(tmp_path: Path) -> RuleSet:
    f = tmp_path / "r.cf"
    f.write_text(RULES)
    return RuleSet.load([str(f)], engine="regex")


def fired(rs: RuleSet, *received: str) -> set[str]:
    raw = "".join(f"Received: {r}\n" for r in received) + "From: a@example.com\n\nhi\n"
    return {s.name for s in rs.evaluate(Message(raw.encode()))}


def test_rules_on_relays(tmp_path: Path) -> None:
    rs = rules(tmp_path)
    assert fired(rs, "from pc (unknown [198.51.100.4]) by mx.example.org (Postfix) with SMTP id A" + DATE) == {
        "RDNS_NONE", "NO_AUTH"}
    assert fired(rs, "from mail.example.net (mail.example.net [198.51.100.4]) by mx (Postfix) with SMTP id A"
                 + DATE) == {"NO_AUTH"}
    assert fired(rs, "from 203.0.113.9 (mail.example.net [198.51.100.4]) by mx (Postfix) with SMTP id A"
                 + DATE) == {"NO_AUTH", "HELO_MISMATCH"}
    assert fired(rs, "from 198.51.100.77 (mail.example.net [198.51.100.4]) by mx (Postfix) id A" + DATE) == {
        "NO_AUTH"}  # same /24
    assert fired(rs, "from lan (lan [10.0.0.5]) by mx (Postfix) id A" + DATE) == set()  # trusted only


def test_fetchmail_hop_restarts_trust_below_it() -> None:
    path = RelayPath.from_received([
        "from localhost (localhost [127.0.0.1]) by home.example (8.11.6) with ESMTP id g81BJK" + DATE,
        "from pop.example.net [198.51.100.86] by localhost with IMAP (fetchmail-5.9.0) for me@localhost" + DATE,
        "from www.example.net (server1.internal [10.202.2.132]) by mx.example.net (Postfix) id AB12" + DATE,
        "from sender.example (ns1.example.com [203.0.113.130]) by www.example.net (Postfix) id CD34" + DATE,
    ])
    assert [r.ip for r in path.trusted] == ["10.202.2.132"]
    assert [r.ip for r in path.untrusted] == ["203.0.113.130"]
