"""Verdicts: amavisd-new's levels, header texts, actions and replies."""

from __future__ import annotations

import pytest

from filterd.actions import Action
from filterd.config import Config
from filterd.content.banned import BannedResult
from filterd.content.clamav import ScanResult
from filterd.content.message import Message
from filterd.content.postfix_checks import ContentCheckResult
from filterd.content.symbols import Symbol
from filterd.content.verdict import Findings, VerdictPolicy, decide, format_score, spam_level

RAW = (b"From: a@example.org\r\nX-Spam-Flag: NO\r\nSubject: hello\r\n\tworld\r\n"
       b"Message-ID: <1@example.org>\r\n\r\nbody\r\n")
POLICY = VerdictPolicy(x_header_line="filterd at example.org")


def headers(verdict, raw: bytes = RAW) -> list[str]:
    out = verdict.edits.apply(Message(raw)).decode()
    head = out.split("\r\n\r\n", 1)[0]
    return head.replace("\r\n\t", " ").split("\r\n")


def spam(score: float, autolearn: str = "no") -> Findings:
    return Findings(symbols=[Symbol("BAYES_99", 3.5), Symbol("GTUBE", score - 3.5), Symbol("INFO", 0.0)],
                    spam_checked=True, autolearn=autolearn, virus=ScanResult("clean"))


@pytest.mark.parametrize("value, text", [(7.12, "7.12"), (-1.0, "-1"), (1000.053, "1000.053"),
                                          (0.0, "0"), (2.0, "2"), (6.3100001, "6.31"), (0.0001, "0.0001")])
def test_score_format_is_amavis(value: float, text: str) -> None:
    assert format_score(value) == text


def test_spam_level_stars() -> None:
    assert spam_level(7.9) == "*******"
    assert spam_level(-3) == ""
    assert spam_level(500) == "*" * 64


def test_spam_above_kill_level_is_tagged_and_passed_by_default() -> None:
    v = decide(POLICY, Message(RAW), spam(1003.5), "01234-01")
    assert (v.action, v.category, v.reply) == ("pass", "SPAM", None)
    assert headers(v)[:6] == [
        "X-Virus-Scanned: filterd at example.org",
        "X-Spam-Flag: YES",
        "X-Spam-Score: 1003.5",
        "X-Spam-Level: " + "*" * 64,
        "X-Spam-Status: Yes, score=1003.5 tagged_above=2 required=6.31 "
        "tests=[BAYES_99=3.5, GTUBE=1000] autolearn=no",
        "From: a@example.org",
    ]
    assert "Subject: ***Spam*** hello\tworld" in headers(v)
    assert "X-Spam-Flag: NO" not in headers(v)  # the sender's own spam header is removed


def test_between_tag_and_tag2_headers_without_flag_or_subject_tag() -> None:
    v = decide(POLICY, Message(RAW), spam(4.0, autolearn="disabled"), "x")
    assert v.category == "CLEAN"
    h = headers(v)
    assert "X-Spam-Flag: NO" in h and "X-Spam-Score: 4" in h and "X-Spam-Level: ****" in h
    assert ("X-Spam-Status: No, score=4 tagged_above=2 required=6.31 "
            "tests=[BAYES_99=3.5, GTUBE=0.5] autolearn=disabled") in h
    assert "Subject: hello world" in h  # untouched (the helper unfolds with a space)


def test_below_tag_level_no_spam_headers_but_existing_ones_removed() -> None:
    v = decide(POLICY, Message(RAW), spam(3.6), "x")
    v2 = decide(VerdictPolicy(tag_level=5.0), Message(RAW), spam(3.6), "x")
    assert not any(h.startswith("X-Spam") for h in headers(v2))
    assert any(h.startswith("X-Spam-Status") for h in headers(v))


def test_spammy_between_tag2_and_kill() -> None:
    policy = VerdictPolicy(kill_level=10.0, spam_action="discard")
    v = decide(policy, Message(RAW), spam(8.0), "x")
    assert (v.action, v.category) == ("pass", "SPAMMY")
    assert "X-Spam-Flag: YES" in headers(v)


@pytest.mark.parametrize("action, reply", [
    ("reject", "554 5.7.0 Reject, id=00042-07 - spam"),
    ("discard", "250 2.7.0 Ok, discarded, id=00042-07 - spam"),
    ("quarantine", "250 2.7.0 Ok, discarded, id=00042-07 - spam"),
    ("hold", "250 2.7.0 Ok, held, id=00042-07 - spam"),
])
def test_spam_actions_replies(action: str, reply: str) -> None:
    v = decide(VerdictPolicy(spam_action=action), Message(RAW), spam(20.0), "00042-07")
    assert v.action == action and str(v.reply) == reply
    assert v.quarantine_kind == ("spam" if action in ("quarantine", "hold") else None)


def test_virus_quarantined_by_default_without_spam_check() -> None:
    findings = Findings(virus=ScanResult("infected", ["Eicar-Test-Signature"]),
                        symbols=[Symbol("CLAMAV_VIRUS", 0.0, "", "Eicar-Test-Signature")])
    v = decide(POLICY, Message(RAW), findings, "00001-01")
    assert (v.action, v.category, v.quarantine_kind) == ("quarantine", "INFECTED", "virus")
    assert str(v.reply) == "250 2.7.0 Ok, discarded, id=00001-01 - INFECTED: Eicar-Test-Signature"
    assert v.hits == "-"
    assert "X-Filterd-Alert: INFECTED, message contains virus: Eicar-Test-Signature" in headers(v)


def test_virus_reject_and_tag() -> None:
    findings = Findings(virus=ScanResult("infected", ["Eicar-Test-Signature"]))
    v = decide(VerdictPolicy(virus_action="reject"), Message(RAW), findings, "1-1")
    assert str(v.reply) == "554 5.7.0 Reject, id=1-1 - INFECTED: Eicar-Test-Signature"
    v = decide(VerdictPolicy(virus_action="tag"), Message(RAW), findings, "1-1")
    assert v.action == "pass" and "Subject: ***INFECTED*** hello\tworld" in headers(v)


def test_banned_quarantined_by_default_no_backscatter() -> None:
    """After queue a 554 becomes Postfix's bounce to the envelope sender, which is often
    forged: banned mail is quarantined and discarded by default (amavisd-new's D_DISCARD)."""
    banned = BannedResult(True, [], ["multipart/mixed | application/zip,.zip,a.zip | .exe,.exe-ms,setup.exe"])
    v = decide(POLICY, Message(RAW), Findings(banned=banned), "2-2")
    assert (v.category, v.action, v.quarantine_kind) == ("BANNED", "quarantine", "banned")
    assert str(v.reply) == "250 2.7.0 Ok, discarded, id=2-2 - BANNED: .exe,.exe-ms,setup.exe"
    v = decide(VerdictPolicy(banned_action="reject"), Message(RAW), Findings(banned=banned), "2-2")
    assert str(v.reply) == "554 5.7.0 Reject, id=2-2 - BANNED: .exe,.exe-ms,setup.exe"


def test_no_default_action_bounces() -> None:
    policy = VerdictPolicy.from_config(Config.from_text(""))
    actions = (policy.spam_action, policy.virus_action, policy.banned_action, policy.unchecked_action)
    assert "reject" not in actions and actions == ("pass", "quarantine", "quarantine", "tag")


def test_virus_outranks_banned() -> None:
    banned = BannedResult(True, [], ["x | .exe,eicar.com"])
    findings = Findings(banned=banned, virus=ScanResult("infected", ["V"]))
    v = decide(VerdictPolicy(banned_action="reject"), Message(RAW), findings, "3")
    assert (v.category, v.action, v.quarantine_kind) == ("INFECTED", "quarantine", "virus")
    assert str(v.reply) == "250 2.7.0 Ok, discarded, id=3 - INFECTED: V"
    h = headers(v)
    assert "X-Filterd-Alert: INFECTED, message contains virus: V" in h
    assert "X-Filterd-Alert: BANNED, message contains .exe,eicar.com" in h


def test_first_blocking_category_wins() -> None:
    """amavisd-new tries the categories from the highest down; the first whose action
    does not deliver decides. A passed virus does not let a banned part through."""
    findings = Findings(banned=BannedResult(True, [], ["x | a.exe"]), virus=ScanResult("infected", ["V"]))
    v = decide(VerdictPolicy(virus_action="pass"), Message(RAW), findings, "3")
    assert (v.category, v.action, v.quarantine_kind) == ("BANNED", "quarantine", "banned")
    unchecked_spam = Findings(unchecked=["more than 1000 archive members"], spam_checked=True,
                              symbols=[Symbol("GTUBE", 1000.0)])
    v = decide(VerdictPolicy(spam_action="discard"), Message(RAW), unchecked_spam, "4")
    assert (v.category, v.action) == ("SPAM", "discard")
    v = decide(POLICY, Message(RAW), unchecked_spam, "4")  # nothing blocks: the highest labels it
    assert (v.category, v.action) == ("UNCHECKED", "pass")
    assert "Subject: ***UNCHECKED*** ***Spam*** hello\tworld" in headers(v)


def test_unchecked_is_tagged_with_the_reason() -> None:
    findings = Findings(unchecked=["more than 1000 archive members", "encrypted archive member"])
    v = decide(POLICY, Message(RAW), findings, "5-5")
    assert (v.category, v.action, v.reason) == ("UNCHECKED", "pass", "UNCHECKED: more than 1000 archive members")
    h = headers(v)
    assert ("X-Filterd-Alert: UNCHECKED, not fully checked: more than 1000 archive members; "
            "encrypted archive member") in h
    assert "Subject: ***UNCHECKED*** hello\tworld" in h
    v = decide(VerdictPolicy(unchecked_action="reject"), Message(RAW), findings, "5-5")
    assert str(v.reply) == "554 5.7.0 Reject, id=5-5 - UNCHECKED: more than 1000 archive members"
    v = decide(VerdictPolicy(unchecked_action="pass"), Message(RAW), findings, "5-5")
    assert "Subject: hello world" in headers(v)


def test_names_from_the_message_are_made_safe_for_replies_and_headers() -> None:
    banned = BannedResult(True, [], ["x | evil\r\n250 2.0.0 Ok\x00.exe"])
    v = decide(VerdictPolicy(banned_action="reject"), Message(RAW), Findings(banned=banned), "6")
    assert str(v.reply) == "554 5.7.0 Reject, id=6 - BANNED: evil??250 2.0.0 Ok?.exe"
    assert "X-Filterd-Alert: BANNED, message contains evil??250 2.0.0 Ok?.exe" in headers(v)


def test_tempfail_reply() -> None:
    v = decide(POLICY, Message(RAW), Findings(tempfail="virus_scan FAILED: clamd down"), "4-4")
    assert v.action == "tempfail"
    assert str(v.reply) == "451 4.5.0 Error in processing, id=4-4, virus_scan FAILED: clamd down"


def test_unchecked_header_when_clamd_unavailable_and_passing() -> None:
    v = decide(POLICY, Message(RAW), Findings(virus_unchecked="clamd down", spam_checked=True), "5")
    assert v.category == "UNCHECKED" and v.action == "pass"
    assert headers(v)[0] == "X-Virus-Scanned: not scanned (clamd unavailable) by filterd at example.org"


def test_postfix_reject_defer_discard_hold() -> None:
    pf = ContentCheckResult(reject=Action("REJECT", 550, "5.7.1", "no thanks"))
    v = decide(POLICY, Message(RAW), Findings(postfix=pf), "6")
    assert (v.action, str(v.reply)) == ("reject", "550 5.7.1 no thanks")
    pf = ContentCheckResult(reject=Action("DEFER", 451, "4.3.0", "try later"))
    assert decide(POLICY, Message(RAW), Findings(postfix=pf), "6").action == "tempfail"
    v = decide(POLICY, Message(RAW), Findings(postfix=ContentCheckResult(discard=True)), "6")
    assert str(v.reply) == "250 2.7.0 Ok, discarded, id=6 - header/body checks"
    v = decide(POLICY, Message(RAW), Findings(postfix=ContentCheckResult(hold=True)), "6")
    assert (v.action, v.quarantine_kind) == ("hold", "badh")


def test_postfix_edits_kept_and_redirect_passed_on() -> None:
    pf = ContentCheckResult(redirect="abuse@example.org", bcc=["copy@example.org"])
    pf.edits.add("X-Checked", "yes")
    v = decide(POLICY, Message(RAW), Findings(postfix=pf, spam_checked=True), "7")
    assert v.redirect == "abuse@example.org" and v.bcc == ["copy@example.org"]
    assert "X-Checked: yes" in headers(v)


def test_no_subject_gets_one() -> None:
    raw = b"From: a@example.org\r\n\r\nbody\r\n"
    v = decide(POLICY, Message(raw), spam(9.0), "8")
    assert "Subject: ***Spam***" in headers(v, raw)


def test_empty_subject_tag_leaves_subject() -> None:
    v = decide(VerdictPolicy(subject_tag=""), Message(RAW), spam(9.0), "9")
    assert "Subject: hello world" in headers(v)  # untouched (the helper unfolds with a space)
