"""What the milter decides, and with what: the shared restriction engine at each SMTP
stage, the shared content pipeline at the end of the message.

This module translates, it checks nothing itself. A restriction list's reject or
defer becomes the milter's REPLYCODE (Postfix then answers the client with that text,
so a greylisted recipient gets ``450 4.2.0 ... Greylisted``, per recipient). Side
effects wait for the end of the message, as Postfix's smtpd keeps them: DISCARD,
HOLD (SMFIR_QUARANTINE: Postfix's hold queue), PREPEND, REDIRECT and BCC (recipient
changes). The content verdict maps as the content filter's does:

- pass (and tag): the X-Spam-* headers and the subject tag as header actions,
  replacing outside copies of those fields (see :mod:`filterd.milter.edits`);
- reject: the 5xx at the end of DATA; tempfail: the 4xx;
- discard: SMFIR_DISCARD (Postfix answers 250 and drops the message);
- quarantine: the copy goes into filterd's quarantine (``filterd quarantine release``
  reinjects it), then SMFIR_DISCARD; if it cannot be stored, 4xx;
- hold: the message, with its headers, goes to Postfix's hold queue (SMFIR_QUARANTINE;
  ``postsuper -H`` releases it).

Anything that goes wrong inside filterd is a 4xx (tempfail); a message filterd could
not judge is never accepted. One log line per message, in amavisd-new's shape, with
Postfix's queue id.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from filterd.config import split_list
from filterd.content.mailid import new_mail_id
from filterd.content.message import Envelope, Message
from filterd.content.pipeline import ContentPipeline, new_log_id
from filterd.content.quarantine import Quarantine, QuarantineError
from filterd.content.verdict import Verdict, format_score
from filterd.log import event
from filterd.milter import protocol as p
from filterd.milter.edits import fold, header_actions
from filterd.milter.session import MilterMessage, MilterSession
from filterd.reply import Reply
from filterd.restrict.decision import DEFER, DUNNO, REJECT, Decision
from filterd.restrict.engine import RestrictionEngine
from filterd.restrict.transaction import Stage, Transaction
from filterd.text import printable

log = logging.getLogger("filterd.milter")

#: Which parameter holds the restrictions for each stage, and the command it answers.
STAGE_PARAM = {
    Stage.CONNECT: "milter_connect_restrictions",
    Stage.HELO: "milter_helo_restrictions",
    Stage.MAIL: "milter_mail_restrictions",
    Stage.RCPT: "milter_rcpt_restrictions",
    Stage.DATA: "milter_data_restrictions",
}
_STAGE_COMMAND = {Stage.CONNECT: p.SMFIC_CONNECT, Stage.HELO: p.SMFIC_HELO, Stage.MAIL: p.SMFIC_MAIL,
                  Stage.RCPT: p.SMFIC_RCPT, Stage.DATA: p.SMFIC_DATA}
#: The actions filterd may use; the MTA may allow fewer (then those edits are skipped).
ACTIONS = p.SMFIF_ADDHDRS | p.SMFIF_CHGHDRS | p.SMFIF_QUARANTINE | p.SMFIF_ADDRCPT | p.SMFIF_DELRCPT

FAILURE = Reply(451, "4.3.0", "Error: temporary milter failure, try again later")
TOO_BIG = Reply(552, "5.3.4", "Error: message file too big")


class MilterService:
    """Answers a milter session's questions with the shared engines."""

    def __init__(self, engine: RestrictionEngine, pipeline: ContentPipeline | None,
                 quarantine: Quarantine | None):
        self.engine = engine
        self.cfg = engine.cfg
        self.pipeline = pipeline
        self.quarantine = quarantine
        answers = frozenset(_STAGE_COMMAND[stage] for stage, param in STAGE_PARAM.items()
                            if split_list(self.cfg.expand(param)))
        steps = {p.SMFIC_CONNECT, p.SMFIC_HELO, p.SMFIC_MAIL, p.SMFIC_RCPT} | answers
        if pipeline is not None:
            steps |= {p.SMFIC_HEADER, p.SMFIC_BODY}
        self._wants = p.Wants(frozenset(steps), answers, ACTIONS)

    @classmethod
    def from_config(cls, cfg: Any, engine: RestrictionEngine, preloaded: object | None = None) -> "MilterService":
        pipeline = quarantine = None
        if cfg.get("milter_content_filter"):
            pipeline = ContentPipeline.from_config(cfg, preloaded)  # type: ignore[arg-type]
            quarantine = Quarantine(cfg)
        return cls(engine, pipeline, quarantine)

    def check_config(self) -> None:
        """Compile every stage's list now: an unknown restriction fails at start-up."""
        for param in STAGE_PARAM.values():
            self.engine.check_param(param)

    async def open(self) -> None:
        if self.quarantine is not None:
            await self.quarantine.open()

    async def close(self) -> None:
        if self.quarantine is not None:
            await self.quarantine.close()
        if self.pipeline is not None:
            self.pipeline.close()

    # -- the handler interface ----------------------------------------------------------
    def wants(self) -> p.Wants:
        return self._wants

    async def check(self, stage: Stage, txn: Transaction) -> Decision:
        """Run the stage's list; a failure inside is a 4xx, never an accept."""
        param = STAGE_PARAM[stage]
        try:
            decision = await self.engine.evaluate(param, txn)
        except Exception:  # noqa: BLE001 - one bad request must not stop the service
            log.exception("%s: error evaluating %s for %s", txn.queue_id or "NOQUEUE", param, txn.client_label)
            return Decision(DEFER, FAILURE, "DEFER", None)
        if decision.result in (REJECT, DEFER):
            event("milter", restriction_log_line(txn, decision))
        for warning in decision.warnings:
            log.warning("%s: %s: %s from %s; from=<%s> to=<%s>", txn.queue_id or "NOQUEUE", warning,
                        stage.value, txn.client_label, txn.sender or "", txn.recipient or "")
        return decision

    async def end_of_message(self, session: MilterSession, message: MilterMessage) -> list[bytes]:
        started = time.monotonic()
        log_id = new_log_id()
        effects = session.effects(message)
        queue_id = session.queue_id or "NOQUEUE"
        discard = next((d for d in effects if d.discard is not None), None)
        if discard is not None:
            log.info("%s: discard: END-OF-MESSAGE from %s: %s; from=<%s>", queue_id,
                     _client_label(session), discard.reason, message.sender)
            return [p.DISCARD]
        if session.oversized(message):
            log.warning("%s: message of %d bytes over the size limit of %d", queue_id, message.size,
                        session.size_limit)
            return [p.encode_reply(TOO_BIG)]
        if self.pipeline is None:
            return self._restriction_effects(session, message, effects, None) + [p.CONTINUE]
        msg = Message(message.raw(session.leading_space), _envelope(session, message))
        try:
            verdict = await self.pipeline.scan(msg, log_id)
            out, flags, quarantine_id = await self._carry_out(session, message, msg, verdict, effects)
        except Exception:  # noqa: BLE001 - a bug must never accept a message
            log.exception("(%s) %s: internal error while filtering", log_id, queue_id)
            return [p.encode_reply(Reply(451, "4.5.0", f"Error in processing, id={log_id}, internal error"))]
        self._log(session, message, msg, verdict, flags, quarantine_id, started)
        return out

    # -- the verdict --------------------------------------------------------------------
    async def _carry_out(self, session: MilterSession, message: MilterMessage, msg: Message,
                         verdict: Verdict, effects: list[Decision]) -> tuple[list[bytes], str, str | None]:
        """The packets for ``verdict``, the log flags, and the quarantine id if one was stored."""
        action = verdict.action
        if action in ("tempfail", "reject"):
            assert verdict.reply is not None
            return [p.encode_reply(verdict.reply)], "Tempfailed" if action == "tempfail" else "Rejected", None
        if action == "discard":
            return [p.DISCARD], "Discarded", None
        if action == "quarantine" or (action == "hold" and not session.may(p.SMFIF_QUARANTINE)):
            assert self.quarantine is not None and verdict.quarantine_kind is not None
            try:
                qid = await self.quarantine.store(
                    verdict.edits.apply(msg), mail_id=new_mail_id(), kind=verdict.quarantine_kind,
                    sender=message.sender,
                    recipients=list(message.recipients), reason=verdict.reason,
                    score=verdict.score if verdict.spam_checked else None,
                    subject=msg.subject[:200], client_address=session.client.address)
            except QuarantineError as exc:
                log.error("(%s) %s", verdict.log_id, exc)
                reply = Reply(451, "4.5.0", f"Error in processing, id={verdict.log_id}, quarantine FAILED")
                return [p.encode_reply(reply)], "Tempfailed", None
            return [p.DISCARD], "Discarded,Quarantined", qid
        out = header_actions(msg, verdict.edits, session.leading_space,
                             session.may(p.SMFIF_CHGHDRS), session.may(p.SMFIF_ADDHDRS))
        out += self._restriction_effects(session, message, effects, verdict)
        if action == "hold":
            out.append(p.encode_quarantine(verdict.reason or "held"))
            return out + [p.CONTINUE], "Held", None
        return out + [p.CONTINUE], "Accepted", None

    def _restriction_effects(self, session: MilterSession, message: MilterMessage,
                             effects: list[Decision], verdict: Verdict | None) -> list[bytes]:
        """PREPEND, REDIRECT, BCC and HOLD from the restrictions (and the verdict's own
        REDIRECT/BCC from header checks) as milter actions."""
        out: list[bytes] = []
        lead = " " if session.leading_space else ""
        redirect = verdict.redirect if verdict is not None else None
        bcc = list(verdict.bcc) if verdict is not None else []
        hold: str | None = None
        prepend: list[str] = []
        for d in effects:
            prepend += d.prepend
            redirect = d.redirect or redirect
            bcc += d.bcc
            if d.hold is not None:
                hold = d.hold or "held by a restriction"
            if d.filter:
                log.warning("%s: FILTER %s ignored: a milter cannot choose the next hop",
                            session.queue_id or "NOQUEUE", d.filter)
        if session.may(p.SMFIF_ADDHDRS):
            for line in reversed(prepend):  # each goes on top: the first listed ends up first
                name, _, value = line.partition(":")
                out.append(p.encode_insheader(0, name.strip(), lead + fold(value.strip())))
        if redirect and session.may(p.SMFIF_ADDRCPT) and session.may(p.SMFIF_DELRCPT):
            out += [p.encode_delrcpt(r) for r in message.recipients]
            out.append(p.encode_addrcpt(redirect))
        if session.may(p.SMFIF_ADDRCPT):
            out += [p.encode_addrcpt(b) for b in dict.fromkeys(bcc) if b != redirect]
        if hold is not None and session.may(p.SMFIF_QUARANTINE):
            out.append(p.encode_quarantine(hold))
        return out

    # -- logging ------------------------------------------------------------------------
    def _log(self, session: MilterSession, message: MilterMessage, msg: Message, verdict: Verdict,
             flags: str, quarantine_id: str | None, started: float) -> None:
        """amavisd-new's per-message line, with Postfix's queue id."""
        status = "Passed" if verdict.action == "pass" else (
            "Tempfailed" if verdict.action == "tempfail" else "Blocked")
        category = verdict.category
        if verdict.virus_names:
            category += f" ({', '.join(verdict.virus_names)})"
        client = session.client
        port = f":{client.port}" if client.port else ""
        parts = [f"({verdict.log_id}) {status} {category} {{{flags}}}",
                 f"[{client.address or 'unknown'}]{port} <{message.sender}> -> "
                 + ",".join(f"<{r}>" for r in message.recipients)]
        if quarantine_id:
            parts.append(f"quarantine: {quarantine_id}")
        parts.append(f"Queue-ID: {session.queue_id or 'NOQUEUE'}")
        message_id = msg.get("Message-ID")
        if message_id:
            parts.append(f"Message-ID: {printable(message_id)[:200]}")
        parts += [f"Hits: {verdict.hits}", f"size: {len(msg.raw)}"]
        tests = ", ".join(f"{s.name}={format_score(s.score)}" for s in sorted(verdict.symbols, key=lambda s: s.name))
        parts.append(f"Tests: [{tests}]")
        if verdict.reply is not None and not verdict.reply.ok:
            parts.append(f"reply: {verdict.reply}")
        parts.append(f"{int((time.monotonic() - started) * 1000)} ms")
        event("milter", ", ".join(parts))


_RESULT_WORD = {REJECT: "reject", DEFER: "reject", DUNNO: "dunno"}


def restriction_log_line(txn: Transaction, d: Decision) -> str:
    """Postfix's reject-log shape: ``NOQUEUE: reject: RCPT from host[1.2.3.4]: 450 4.2.0
    <b@x>: Recipient address rejected: Greylisted...; from=<a@y> to=<b@x> proto=ESMTP
    helo=<h>; by=check_greylist``."""
    return (f"{txn.queue_id or 'NOQUEUE'}: {_RESULT_WORD.get(d.result, d.result)}: {txn.stage.value} from "
            f"{txn.client_label}: {d.reply}; from=<{txn.sender or ''}> to=<{txn.recipient or ''}> "
            f"proto={txn.protocol_name} helo=<{txn.helo_name}>; by={d.reason}")


def _client_label(session: MilterSession) -> str:
    return session.transaction(Stage.END_OF_MESSAGE).client_label


def _envelope(session: MilterSession, message: MilterMessage) -> Envelope:
    txn = session.transaction(Stage.END_OF_MESSAGE)
    return Envelope(sender=message.sender, recipients=list(message.recipients),
                    client_address=txn.client_address, client_name=txn.client_name,
                    helo_name=txn.helo_name, protocol=txn.protocol_name, queue_id=session.queue_id)
