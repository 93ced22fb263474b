"""From what the content checks found to what happens to the message: amavisd-new's rules.

The pipeline collects :class:`Findings`; :func:`decide` turns them into one
:class:`Verdict` (action, reply, header edits, quarantine kind) without any I/O, so the
same decision is made by the content filter, the milter and ``filterd check``.

Contents categories and their precedence are amavisd-new's ccat order: INFECTED over
BANNED over UNCHECKED over SPAM over SPAMMY over CLEAN. A message may be in several
(an infected attachment with a banned name; spam in an encrypted zip): as in
amavisd-new, the categories are tried from the highest down and the first whose action
does not deliver the message decides ("first blocking wins"); if none blocks, the
message is passed and labelled with its highest category. A message whose Postfix
header/body checks decided (REJECT, DISCARD, HOLD, a 4xx) is settled before any of them.
Spam levels:

- ``spam_tag_level``: the ``X-Spam-*`` headers are added at or above it;
- ``spam_tag2_level``: ``X-Spam-Flag: YES`` and ``spam_subject_tag`` (SPAMMY);
- ``spam_kill_level``: the message is SPAM and ``spam_action`` applies.

UNCHECKED is a message some part of which no check could look at: a limit was reached
(MIME nesting or part count, archive members, bytes or depth), an archive was
encrypted or broken, a check failed on this message's content, or clamd could not scan
it and ``clamav_failure_action = pass``. A reached limit never makes a message clean.

Actions (``spam_action``, ``virus_action``, ``banned_action``, ``unchecked_action``):
``pass`` delivers (with the informational headers), ``tag`` delivers with the subject
tagged, ``quarantine`` keeps a copy in the quarantine and discards the message
(amavisd-new's D_DISCARD with a quarantine), ``hold`` keeps it in the quarantine until
an administrator releases it, ``reject`` refuses it with 554 (after queue, Postfix then
bounces it to the envelope sender), ``discard`` drops it. The defaults are amavisd-new's
for an after-queue filter, chosen so that filterd never makes Postfix bounce mail to a
sender that may be forged (backscatter): viruses and banned files are quarantined and
discarded (final_virus_destiny and final_banned_destiny D_DISCARD, with their
quarantines), spam is passed and tagged (final_spam_destiny D_PASS: a false positive
is never lost), unchecked mail is passed with ``***UNCHECKED***`` in the subject
(final_unchecked_destiny D_PASS with undecipherable_subject_tag).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from filterd.actions import Action
from filterd.content.banned import BannedResult
from filterd.content.clamav import ScanResult
from filterd.content.message import HeaderEdits, Message
from filterd.content.postfix_checks import ContentCheckResult
from filterd.content.symbols import Symbol
from filterd.reply import Reply
from filterd.text import printable_ascii

#: Existing headers of these names are removed when filterd writes its own (amavisd-new's
#: remove_existing_spam_headers): a spammer's "X-Spam-Flag: NO" must not survive.
SPAM_HEADERS = ("x-spam-flag", "x-spam-score", "x-spam-level", "x-spam-status", "x-spam-report")
VIRUS_SUBJECT_TAG = "***INFECTED***"
BANNED_SUBJECT_TAG = "***BANNED***"
UNCHECKED_SUBJECT_TAG = "***UNCHECKED***"  # amavisd-new's undecipherable_subject_tag
ALERT_HEADER = "X-Filterd-Alert"
SPAM_LEVEL_MAX = 64

_UNFOLD = re.compile(r"\r?\n(?=[ \t])")


@dataclass(frozen=True)
class VerdictPolicy:
    """The configuration :func:`decide` needs (read once per worker)."""

    tag_level: float = 2.0
    tag2_level: float = 6.31
    kill_level: float = 6.31
    subject_tag: str = "***Spam***"
    spam_action: str = "pass"
    virus_action: str = "quarantine"
    banned_action: str = "quarantine"
    unchecked_action: str = "tag"
    x_header_tag: str = "X-Virus-Scanned"
    x_header_line: str = "filterd"

    @classmethod
    def from_config(cls, cfg: Any) -> "VerdictPolicy":
        return cls(
            tag_level=cfg.get("spam_tag_level"),
            tag2_level=cfg.get("spam_tag2_level"),
            kill_level=cfg.get("spam_kill_level"),
            subject_tag=cfg.get("spam_subject_tag").strip(),
            spam_action=cfg.get("spam_action"),
            virus_action=cfg.get("virus_action"),
            banned_action=cfg.get("banned_action"),
            unchecked_action=cfg.get("unchecked_action"),
            x_header_tag=cfg.get("x_header_tag").strip(),
            x_header_line=cfg.get("x_header_line").strip(),
        )


@dataclass
class Findings:
    """What the pipeline's stages found; ``None`` means the stage did not run."""

    symbols: list[Symbol] = field(default_factory=list)
    postfix: ContentCheckResult | None = None
    banned: BannedResult | None = None
    virus: ScanResult | None = None
    virus_unchecked: str | None = None  # clamd error when the message passes unscanned
    unchecked: list[str] = field(default_factory=list)  # why parts were not checked (UNCHECKED)
    spam_checked: bool = False
    autolearn: str = "disabled"  # amavisd-new's autolearn= value: no, ham, spam, disabled
    tempfail: str | None = None  # why the message must be tried again later


@dataclass
class Verdict:
    """What happens to one message, and why.

    ``action`` is one of pass, tempfail, reject, discard, quarantine, hold; ``reply`` is
    the SMTP reply for every action but pass (whose reply comes from the next hop);
    ``edits`` are the header changes for the copy that is delivered or quarantined.
    """

    action: str
    category: str
    score: float
    symbols: list[Symbol]
    reply: Reply | None
    edits: HeaderEdits
    log_id: str
    reason: str = ""
    quarantine_kind: str | None = None
    spam_checked: bool = False
    virus_names: list[str] = field(default_factory=list)
    redirect: str | None = None
    bcc: list[str] = field(default_factory=list)
    next_hop: str | None = None  # a Postfix FILTER action's transport:destination

    @property
    def hits(self) -> str:
        """amavisd-new's ``Hits:`` log field: the score, or ``-`` when spam was not checked."""
        return format_score(self.score) if self.spam_checked else "-"


def format_score(value: float) -> str:
    """amavisd-new's number format: three decimals at most, trailing zeros dropped."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    if text == "0" and value != 0:
        text = f"{value:.4g}"
    return text


def spam_status(verdict_score: float, symbols: list[Symbol], policy: VerdictPolicy,
                autolearn: str) -> str:
    """The ``X-Spam-Status`` value, unfolded (HeaderEdits folds it on output)."""
    is_spam = verdict_score >= policy.tag2_level
    tests = sorted((s for s in symbols if s.score != 0), key=lambda s: s.name)
    listed = ", ".join(f"{s.name}={format_score(s.score)}" for s in tests) or "none"
    return (f"{'Yes' if is_spam else 'No'}, score={format_score(verdict_score)} "
            f"tagged_above={_format_level(policy.tag_level)} "
            f"required={_format_level(policy.tag2_level)} tests=[{listed}] autolearn={autolearn}")


def _format_level(level: float) -> str:
    return "9999" if level == float("inf") else format_score(level)


def spam_level(score: float) -> str:
    return "*" * min(SPAM_LEVEL_MAX, int(score)) if score >= 1 else ""


@dataclass(frozen=True)
class _Category:
    """One contents category the message is in, with what its action would do."""

    name: str
    action: str
    reason: str
    quarantine_kind: str | None
    subject_tag: str


def _categories(policy: VerdictPolicy, findings: Findings, score: float) -> list[_Category]:
    """The categories the message is in, highest first (amavisd-new's ccat order)."""
    found: list[_Category] = []
    virus = findings.virus
    if virus is not None and virus.status == "infected":
        names = ", ".join(printable_ascii(n[:100]) for n in virus.virus_names)
        found.append(_Category("INFECTED", policy.virus_action, "INFECTED: " + names, "virus",
                               VIRUS_SUBJECT_TAG))
    banned = findings.banned
    if banned is not None and banned.banned:
        part = printable_ascii(banned.names[0].rsplit(" | ", 1)[-1][:200])
        found.append(_Category("BANNED", policy.banned_action, "BANNED: " + part, "banned",
                               BANNED_SUBJECT_TAG))
    unchecked = _unchecked_reasons(findings)
    if unchecked:
        found.append(_Category("UNCHECKED", policy.unchecked_action,
                               "UNCHECKED: " + printable_ascii(unchecked[0][:200]), "unchecked",
                               UNCHECKED_SUBJECT_TAG))
    if findings.spam_checked and score >= policy.kill_level:
        found.append(_Category("SPAM", policy.spam_action, "spam", "spam", policy.subject_tag))
    elif findings.spam_checked and score >= policy.tag2_level:
        found.append(_Category("SPAMMY", "pass", "spam", None, ""))
    return found


def _unchecked_reasons(findings: Findings) -> list[str]:
    """Why the message is UNCHECKED: the pipeline's reasons, and a virus scan that failed."""
    if findings.virus_unchecked is None:
        return findings.unchecked
    return findings.unchecked + [f"not virus scanned: {findings.virus_unchecked}"]


def decide(policy: VerdictPolicy, msg: Message, findings: Findings, log_id: str) -> Verdict:
    """The verdict for ``msg``; pure (no I/O), so every front end decides alike."""
    symbols = list(findings.symbols)
    score = round(sum(s.score for s in symbols), 6)
    pf = findings.postfix
    edits = pf.edits if pf is not None else HeaderEdits()
    verdict = Verdict("pass", "CLEAN", score, symbols, None, edits, log_id,
                      spam_checked=findings.spam_checked)
    if pf is not None:
        verdict.redirect, verdict.bcc, verdict.next_hop = pf.redirect, list(pf.bcc), pf.filter
    if findings.tempfail is not None:
        verdict.action, verdict.category, verdict.reason = "tempfail", "TEMPFAIL", findings.tempfail
        verdict.reply = Reply(451, "4.5.0", f"Error in processing, id={log_id}, {printable_ascii(findings.tempfail[:200])}")
        return verdict
    if pf is not None and (pf.reject is not None or pf.discard or pf.hold):
        _postfix_decision(verdict, pf)
        if verdict.action == "hold":
            _add_headers(verdict, policy, msg, findings, [])
        return verdict

    found = _categories(policy, findings, score)
    if findings.virus is not None and findings.virus.status == "infected":
        verdict.virus_names = list(findings.virus.virus_names)
    blocking = next((c for c in found if c.action not in ("pass", "tag")), None)
    decisive = blocking or (found[0] if found else None)
    tags: list[str] = []
    if decisive is not None:
        verdict.category, verdict.reason = decisive.name, decisive.reason
        verdict.quarantine_kind = decisive.quarantine_kind
        if blocking is None:  # passed: every category whose action is "tag" tags the subject
            tags = [c.subject_tag for c in found if c.action == "tag" and c.subject_tag]
    _apply_action(verdict, blocking.action if blocking is not None else "pass")
    _add_headers(verdict, policy, msg, findings, tags)
    return verdict


def _postfix_decision(verdict: Verdict, pf: ContentCheckResult) -> None:
    """Postfix header/body checks decided: REJECT/DEFER replies, DISCARD, HOLD."""
    verdict.category = "POSTFIX-CHECKS"
    if pf.reject is not None:
        action: Action = pf.reject
        reply = Reply(action.code or 550, action.dsn or "5.7.1", action.text or "message content rejected")
        verdict.action = "tempfail" if reply.temporary else "reject"
        verdict.reason = f"{reply.dsn} {reply.text}"
        verdict.reply = reply
    elif pf.discard:
        verdict.action, verdict.reason = "discard", "header/body checks"
        verdict.reply = Reply(250, "2.7.0", f"Ok, discarded, id={verdict.log_id} - {verdict.reason}")
    else:
        verdict.action, verdict.reason, verdict.quarantine_kind = "hold", "header/body checks", "badh"
        verdict.reply = Reply(250, "2.7.0", f"Ok, held, id={verdict.log_id} - {verdict.reason}")


def _apply_action(verdict: Verdict, action: str) -> None:
    """Turn the configured action into the verdict's action and reply (amavisd-new's texts)."""
    reason = verdict.reason
    if action in ("pass", "tag"):
        verdict.action = "pass"
    elif action == "reject":
        verdict.action = "reject"
        verdict.reply = Reply(554, "5.7.0", f"Reject, id={verdict.log_id} - {reason}")
    elif action in ("discard", "quarantine"):
        verdict.action = action
        verdict.reply = Reply(250, "2.7.0", f"Ok, discarded, id={verdict.log_id} - {reason}")
    else:  # hold
        verdict.action = "hold"
        verdict.reply = Reply(250, "2.7.0", f"Ok, held, id={verdict.log_id} - {reason}")
    if verdict.action not in ("quarantine", "hold"):
        verdict.quarantine_kind = None


def _add_headers(verdict: Verdict, policy: VerdictPolicy, msg: Message, findings: Findings,
                 tags: list[str]) -> None:
    """amavisd-new's headers, top-down: X-Virus-Scanned, alerts, X-Spam-Flag/-Score/-Level/-Status.

    HeaderEdits puts each added field on top of the ones added before, so they are
    added bottom-up here. ``tags`` are the subject tags of the categories whose action
    is ``tag``; spam at ``spam_tag2_level`` is tagged with ``spam_subject_tag`` anyway.
    """
    edits = verdict.edits
    score = verdict.score
    if findings.spam_checked:
        _remove_existing(edits, msg)
        if score >= policy.tag_level:
            edits.add("X-Spam-Status", spam_status(score, verdict.symbols, policy, findings.autolearn))
            edits.add("X-Spam-Level", spam_level(score))
            edits.add("X-Spam-Score", format_score(score))
            edits.add("X-Spam-Flag", "YES" if score >= policy.tag2_level else "NO")
        if score >= policy.tag2_level and policy.subject_tag and policy.subject_tag not in tags:
            tags = tags + [policy.subject_tag]
    unchecked = _unchecked_reasons(findings)
    if unchecked:
        reasons = "; ".join(printable_ascii(r[:100]) for r in unchecked[:5])
        edits.add(ALERT_HEADER, f"UNCHECKED, not fully checked: {reasons}")
    if findings.banned is not None and findings.banned.banned:
        edits.add(ALERT_HEADER, f"BANNED, message contains {printable_ascii(findings.banned.names[0].rsplit(' | ', 1)[-1][:200])}")
    if verdict.virus_names:
        edits.add(ALERT_HEADER, "INFECTED, message contains virus: "
                  + ", ".join(printable_ascii(n[:100]) for n in verdict.virus_names))
    if findings.virus is not None and policy.x_header_tag:
        edits.add(policy.x_header_tag, policy.x_header_line)
    elif findings.virus_unchecked is not None and policy.x_header_tag:
        edits.add(policy.x_header_tag, f"not scanned (clamd unavailable) by {policy.x_header_line}")
    tags = [t for t in tags if t]
    if tags and verdict.action in ("pass", "hold"):
        _tag_subject(edits, msg, " ".join(tags))


def _remove_existing(edits: HeaderEdits, msg: Message) -> None:
    for index, (name, _) in enumerate(msg.header_fields):
        if name.lower() in SPAM_HEADERS:
            edits.remove(index)


def _tag_subject(edits: HeaderEdits, msg: Message, tag: str) -> None:
    """Put ``tag`` in front of the Subject (a REPLACEd Subject is tagged as replaced)."""
    for index, (name, value) in enumerate(msg.header_fields):
        if name.lower() != "subject":
            continue
        if index in edits.replace:
            current = edits.replace[index]
            if current is None:
                continue
            head, _, rest = current.partition(":")
            if head.strip().lower() != "subject":
                continue
            edits.replace_field(index, f"Subject: {tag} {rest.lstrip()}")
        else:
            edits.replace_field(index, f"Subject: {tag} {_UNFOLD.sub('', value)}")
        return
    edits.add("Subject", tag)
