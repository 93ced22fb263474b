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
not judge is never accepted. The work after the verdict is the content filter's
(:mod:`filterd.content.outcome`): the quarantine store, one log line per message in
amavisd-new's shape with Postfix's queue id, and the notice to ``virus_admin``, sent
from the null sender through ``filter_forward`` (the reinjection point quarantine
release uses too).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from filterd.config import split_list
from filterd.content.mailid import new_mail_id
from filterd.content.message import Message
from filterd.content.outcome import REFUSED_FLAGS, keep, log_line, notify_virus_admin
from filterd.content.pipeline import ContentPipeline, new_log_id
from filterd.content.quarantine import Quarantine
from filterd.content.verdict import Verdict
from filterd.log import event
from filterd.milter import protocol as p
from filterd.milter.edits import fold, header_actions
from filterd.milter.session import MilterMessage, MilterSession
from filterd.reply import Reply
from filterd.restrict.decision import DEFER, DUNNO, REJECT, Decision
from filterd.restrict.engine import RestrictionEngine
from filterd.restrict.transaction import Stage, Transaction
from filterd.smtp.client import Forwarder

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
                 quarantine: Quarantine | None, *, notifier: Forwarder | None = None,
                 virus_admin: str = ""):
        self.engine = engine
        self.cfg = engine.cfg
        self.pipeline = pipeline
        self.quarantine = quarantine
        #: Where notices to ``virus_admin`` go (None: no notices).
        self.notifier = notifier if virus_admin else None
        self.virus_admin = virus_admin
        self.hostname: str = self.cfg.get("myhostname")
        #: Notices under way: the server's stop waits for them within its grace period.
        self.tasks: set[asyncio.Task[None]] = set()
        answers = frozenset(_STAGE_COMMAND[stage] for stage, param in STAGE_PARAM.items()
                            if split_list(self.cfg.expand(param)))
        steps = {p.SMFIC_CONNECT, p.SMFIC_HELO, p.SMFIC_MAIL, p.SMFIC_RCPT} | answers
        if pipeline is not None:
            steps |= {p.SMFIC_HEADER, p.SMFIC_BODY}
        self._wants = p.Wants(frozenset(steps), answers, ACTIONS)

    @classmethod
    def from_config(cls, cfg: Any, engine: RestrictionEngine, preloaded: object | None = None) -> "MilterService":
        pipeline = quarantine = notifier = None
        virus_admin = ""
        if cfg.get("milter_content_filter"):
            pipeline = ContentPipeline.from_config(cfg, preloaded)  # type: ignore[arg-type]
            quarantine = Quarantine(cfg)
            virus_admin = cfg.get("virus_admin").strip()
            if virus_admin:
                notifier = Forwarder(cfg.get("filter_forward"), cfg.get("filter_timeout"), cfg.get("myhostname"))
        return cls(engine, pipeline, quarantine, notifier=notifier, virus_admin=virus_admin)

    def check_config(self) -> None:
        """Compile every stage's list now: an unknown restriction fails at start-up."""
        for param in STAGE_PARAM.values():
            self.engine.check_param(param)

    async def open(self) -> None:
        if self.quarantine is not None:
            await self.quarantine.open()

    async def close(self) -> None:
        """Release everything, once the server has waited for (or cancelled) the work in
        flight, notices included."""
        if self.notifier is not None:
            await self.notifier.close()
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
        mail_id = new_mail_id()
        try:
            verdict = await self.pipeline.scan(msg, log_id)
            out, flags, quarantine_id, failure = await self._carry_out(session, message, msg, verdict,
                                                                       effects, mail_id)
        except Exception:  # noqa: BLE001 - a bug must never accept a message
            log.exception("(%s) %s: internal error while filtering", log_id, queue_id)
            return [p.encode_reply(Reply(451, "4.5.0", f"Error in processing, id={log_id}, internal error"))]
        port = session.client.port
        event("milter", log_line(msg, verdict, mail_id, str(port) if port else None, flags, None,
                                 quarantine_id, failure, started))
        if verdict.virus_names and self.notifier is not None:
            task = asyncio.ensure_future(notify_virus_admin(self.notifier, msg, verdict, mail_id, quarantine_id,
                                                            self.hostname, self.virus_admin))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return out

    # -- the verdict --------------------------------------------------------------------
    async def _carry_out(self, session: MilterSession, message: MilterMessage, msg: Message,
                         verdict: Verdict, effects: list[Decision],
                         mail_id: str) -> tuple[list[bytes], str, str | None, Reply | None]:
        """The packets for ``verdict``, the log flags, the quarantine id if one was
        stored, and the failure reply if the client is refused."""
        action = verdict.action
        if action in ("tempfail", "reject"):
            assert verdict.reply is not None
            return [p.encode_reply(verdict.reply)], REFUSED_FLAGS[action], None, verdict.reply
        if action == "discard":
            return [p.DISCARD], REFUSED_FLAGS[action], None, None
        if action == "quarantine" or (action == "hold" and not session.may(p.SMFIF_QUARANTINE)):
            assert self.quarantine is not None
            reply, qid, flags = await keep(self.quarantine, msg, verdict, verdict.edits.apply(msg),
                                           list(message.recipients), mail_id)
            if qid is None:
                return [p.encode_reply(reply)], flags, None, reply
            return [p.DISCARD], flags, qid, None
        out = header_actions(msg, verdict.edits, session.leading_space,
                             session.may(p.SMFIF_CHGHDRS), session.may(p.SMFIF_ADDHDRS))
        out += self._restriction_effects(session, message, effects, verdict)
        if action == "hold":
            out.append(p.encode_quarantine(verdict.reason or "held"))
            return out + [p.CONTINUE], "Held", None, None
        return out + [p.CONTINUE], "Accepted", None, None

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


def _envelope(session: MilterSession, message: MilterMessage) -> Transaction:
    return dataclasses.replace(session.transaction(Stage.END_OF_MESSAGE), sender=message.sender,
                               recipients=list(message.recipients), queue_id=session.queue_id)
