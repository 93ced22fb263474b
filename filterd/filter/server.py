"""The after-queue content filter (``content_filter = smtp-amavis:[127.0.0.1]:10024``).

Postfix hands each queued message to filterd over SMTP (or LMTP); filterd scans it with
the content pipeline and either reinjects it into ``filter_forward`` (Postfix's 10025
smtpd) with its header edits, or keeps, refuses or drops it. The reply to Postfix is what
makes this safe, so it follows amavisd-new's rules:

- a message is passed with ``250`` only after the next hop accepted it, and the reply
  quotes the next hop's (``250 2.0.0 from MTA(smtp:[127.0.0.1]:10025): 250 2.0.0 Ok:
  queued as 4756B13453``); if the next hop is down or times out Postfix gets a 4xx and
  keeps the message (nothing lost, nothing queued twice);
- quarantined and held messages get ``250`` only once the quarantine file is fsync'd; a
  quarantine that cannot be written gives 4xx;
- a verdict that cannot be made (clamd down, a table that cannot answer) gives 4xx.

In LMTP mode each recipient gets its own reply after DATA (aiosmtpd sends the lines a
``handle_DATA`` returns, separated by CRLF, one per recipient).

The SMTP dialogue is aiosmtpd's; filterd adds Postfix's XFORWARD command (so the
original client is known and passed on), replies in Postfix's words for oversized mail
and unusable addresses, a connection limit (``421 4.3.2``), ``filter_timeout`` on every
wait for the client (inside DATA too; never on a message being processed), and a clean
stop: stop accepting, let messages in flight finish, close.

Hostile input: every reply line leaves through ``push``, which makes it one line of
printable ASCII (:func:`filterd.reply.safe_reply`), whatever text a message, a client or
the next hop put into it; log lines are escaped by the log writers themselves. Nothing
a client sends is refused with a 5xx unless it is a verdict or Postfix would refuse it
too: DATA lines of any length are taken, and a failure of our own is a 4xx.

One log line per message, in amavisd-new's shape, e.g.::

    (04082-01) Passed CLEAN {Relayed}, [209.85.222.51]:39854 <a@example.org> -> <b@example.com>,
    Queue-ID: ECE98E6BE1, Message-ID: <x@example.org>, mail_id: fbSD2R7xnBNZ, Hits: 1.2,
    size: 2003, queued_as: 74FF5220670, Tests: [BAYES_50=0.8, MIME_DEFECTS=0.5], 123 ms
"""

from __future__ import annotations

import asyncio
import copy
import email.utils
import functools
import logging
import socket
import time
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from filterd.content.dsn import refusal_report
from filterd.content.message import Message
from filterd.content.mailid import new_mail_id
from filterd.content.outcome import REFUSED_FLAGS, keep, log_line, notify_virus_admin
from filterd.content.pipeline import ContentPipeline, new_log_id
from filterd.content.quarantine import Quarantine
from filterd.content.verdict import Reply, Verdict
from filterd.restrict.transaction import Stage, Transaction
from filterd.smtp.client import Forwarder, ForwardResult
from filterd.smtp.nexthop import NextHop, parse_next_hop
from filterd.smtp.server import SmtpHandler, SmtpServer, XforwardEnvelope
from filterd.smtp.xforward import Xforward

log = logging.getLogger("filterd.content")

#: A ``FILTER transport:destination`` next hop, parsed once per distinct text.
_next_hop = functools.lru_cache(maxsize=256)(parse_next_hop)


class FilterHandler(SmtpHandler):
    """The content filter itself: each message through the pipeline, the verdict carried out."""

    def __init__(self, pipeline: ContentPipeline, forwarder: Forwarder, quarantine: Quarantine,
                 *, hostname: str, protocol: str, virus_admin: str):
        super().__init__(log)
        self.pipeline = pipeline
        self.forwarder = forwarder
        self.quarantine = quarantine
        self.hostname = hostname
        self.protocol = protocol
        self.virus_admin = virus_admin
        self.port = 0  # the listening port, named in our Received line

    async def handle_DATA(self, server: SMTP, session: Session,
                          envelope: SmtpEnvelope) -> str | list[str]:
        """The reply to DATA (LMTP: one per recipient). The work is shielded: once the
        message is being passed on or quarantined, a client that hangs up does not cut
        that work in half."""
        assert isinstance(envelope, XforwardEnvelope)
        lmtp = isinstance(server, LMTP)
        return await asyncio.shield(self._track(self._process(session, envelope, lmtp)))

    async def close(self) -> None:
        """Release what the handler holds, once no message is under way any more."""
        await self.quarantine.close()
        await self.forwarder.close()
        self.pipeline.close()

    # -- one message -------------------------------------------------------------------
    async def _process(self, session: Session, envelope: XforwardEnvelope,
                       lmtp: bool) -> str | list[str]:
        started = time.monotonic()
        log_id = new_log_id()
        mail_id = new_mail_id()
        recipients = list(envelope.rcpt_tos)
        msg = Message(envelope.original_content or b"", _envelope(session, envelope))
        try:
            verdict = await self.pipeline.scan(msg, log_id)
            replies, queued_as, quarantine_id, flags = await self._carry_out(
                msg, verdict, session, envelope, mail_id, lmtp)
        except Exception:  # noqa: BLE001 - a bug must never answer 250
            log.exception("(%s) internal error while filtering", log_id)
            reply = Reply(451, "4.5.0", f"Error in processing, id={log_id}, internal error")
            return _join(reply, recipients, lmtp)
        final = _summary(replies, recipients)
        log.info("%s", log_line(msg, verdict, mail_id, envelope.xforward.get("PORT"), flags, queued_as,
                                quarantine_id, None if final.ok else final, started))
        if verdict.virus_names and self.virus_admin:
            self._track(notify_virus_admin(self.forwarder, msg, verdict, mail_id, quarantine_id,
                                           self.hostname, self.virus_admin))
        if lmtp:
            return [str(replies[r]) for r in recipients]
        return str(final)

    async def _carry_out(self, msg: Message, verdict: Verdict, session: Session,
                         envelope: XforwardEnvelope, mail_id: str,
                         lmtp: bool) -> tuple[dict[str, Reply], str | None, str | None, str]:
        """Do what the verdict says; returns replies per recipient, queued_as, quarantine id,
        and amavisd-new's log flags (``Relayed``, ``Discarded,Quarantined``...)."""
        recipients = list(envelope.rcpt_tos)
        if verdict.action in REFUSED_FLAGS:
            assert verdict.reply is not None
            return {r: verdict.reply for r in recipients}, None, None, REFUSED_FLAGS[verdict.action]
        data = self._with_received(msg, verdict, session, mail_id)
        if verdict.action in ("quarantine", "hold"):
            reply, qid, flag = await keep(self.quarantine, msg, verdict, data, recipients, mail_id)
            return {r: reply for r in recipients}, None, qid, flag
        result = await self._forward(msg, verdict, envelope, data, mail_id, lmtp)
        summary = result.summary()
        flag = "Relayed" if summary.ok else ("Tempfailed" if summary.temporary else "Rejected")
        if lmtp and set(result.replies) == set(recipients):
            return result.replies, result.queued_as, None, flag
        return {r: summary for r in recipients}, result.queued_as, None, flag

    async def _forward(self, msg: Message, verdict: Verdict, envelope: XforwardEnvelope,
                       data: bytes, mail_id: str, lmtp: bool) -> ForwardResult:
        recipients = list(envelope.rcpt_tos)
        targets = [verdict.redirect] if verdict.redirect else list(recipients)
        targets += [b for b in verdict.bcc if b not in targets]
        hop: NextHop | None = None
        if verdict.next_hop:
            try:
                hop = _next_hop(verdict.next_hop)
            except ValueError as exc:
                log.warning("(%s) FILTER %s ignored: %s", verdict.log_id, verdict.next_hop, exc)
        xf = envelope.xforward

        async def notify(refused: dict[str, Reply]) -> bool:
            return await self._notify_refused(msg, verdict, mail_id, refused, envelope.smtp_utf8)

        return await self.forwarder.send(
            msg.envelope.sender or "", targets, data,
            xforward=_xforward_out(msg.envelope, xf), smtputf8=envelope.smtp_utf8, hop=hop,
            partial=lmtp and targets == recipients,
            # a DSN only names the sender's own recipients: never a redirect or bcc target
            before_data=notify if not lmtp and targets == recipients else None)

    async def _notify_refused(self, msg: Message, verdict: Verdict, mail_id: str,
                              refused: dict[str, Reply], smtputf8: bool) -> bool:
        """Tell the sender about recipients the next hop refused permanently (SMTP mode),
        before the others get the message; False (defer the message) if that fails.

        A null sender gets no notice (a bounce is never bounced: Postfix, too, only logs
        it); a sender the next hop refuses permanently cannot get one either, and is
        logged as Postfix logs an undeliverable bounce."""
        sender = msg.envelope.sender
        for rcpt, reply in refused.items():
            log.info("(%s) <%s> refused by the next hop: %s", verdict.log_id, rcpt, reply)
        if not sender:
            log.info("(%s) no notification of refused recipients to the null sender", verdict.log_id)
            return True
        report = refusal_report(hostname=self.hostname, sender=sender, refused=refused,
                                original=msg.raw, queue_id=msg.envelope.queue_id,
                                mail_id=mail_id)
        result = await self.forwarder.send("", [sender], report, smtputf8=smtputf8)
        summary = result.summary()
        if summary.temporary:
            log.warning("(%s) notification of refused recipients to <%s> failed: %s",
                        verdict.log_id, sender, summary)
            return False
        log.info("(%s) notification of refused recipients to <%s>: %s", verdict.log_id, sender,
                 summary if summary.ok else f"undeliverable, dropped: {summary}")
        return True

    def _with_received(self, msg: Message, verdict: Verdict, session: Session, mail_id: str) -> bytes:
        """The outgoing message: the verdict's edits, and our own Received line for the hop
        Postfix -> filterd below the X-Spam headers, as amavisd-new places it (Postfix
        counts these lines for hop_count_limit). The verdict itself is left as decided."""
        peer: object = session.peer  # aiosmtpd: (host, port) on TCP, though typed str
        address = peer[0] if isinstance(peer, tuple) else "local socket"
        date = email.utils.format_datetime(email.utils.localtime())
        proto = "LMTP" if self.protocol == "lmtp" else "ESMTP"
        line = (f"Received: from {session.host_name or 'unknown'} ([{address}]) "
                f"by {self.hostname} (filterd, port {self.port}) with {proto} id {mail_id}; {date}")
        edits = copy.copy(verdict.edits)
        edits.prepend = [line, *verdict.edits.prepend]
        return edits.apply(msg)


class ContentFilterServer(SmtpServer):
    """Serves the content filter on sockets handed in by the process manager."""

    handler: FilterHandler

    def __init__(
        self,
        pipeline: ContentPipeline,
        forwarder: Forwarder,
        quarantine: Quarantine,
        *,
        hostname: str,
        protocol: str = "smtp",
        max_connections: int = 20,
        timeout: float = 300.0,
        size_limit: int = 10240000,
        virus_admin: str = "",
    ):
        handler = FilterHandler(pipeline, forwarder, quarantine, hostname=hostname,
                                protocol=protocol, virus_admin=virus_admin)
        super().__init__(handler, name="content filter", hostname=hostname, protocol=protocol,
                         max_connections=max_connections, timeout=timeout, size_limit=size_limit)

    @property
    def pipeline(self) -> ContentPipeline:
        return self.handler.pipeline

    @property
    def quarantine(self) -> Quarantine:
        return self.handler.quarantine

    @classmethod
    def from_config(cls, cfg: Any, pipeline: ContentPipeline | None = None) -> "ContentFilterServer":
        hostname = cfg.get("myhostname")
        return cls(
            pipeline or ContentPipeline.from_config(cfg),
            Forwarder(cfg.get("filter_forward"), cfg.get("filter_timeout"), hostname),
            Quarantine(cfg),
            hostname=hostname,
            protocol=cfg.get("filter_protocol"),
            max_connections=cfg.get("filter_max_connections"),
            timeout=cfg.get("filter_timeout"),
            size_limit=cfg.get("message_size_limit"),
            virus_admin=cfg.get("virus_admin").strip(),
        )

    async def start(self, sock: socket.socket) -> None:
        await self.handler.quarantine.open()
        await super().start(sock)
        self.handler.port = self.port

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, finish messages in flight (up to ``grace`` seconds), close."""
        await super().stop(grace)
        await self.handler.close()


def _envelope(session: Session, envelope: XforwardEnvelope) -> Transaction:
    """The message's envelope: XFORWARD's client if Postfix sent it, else the peer."""
    xf = envelope.xforward
    peer: object = session.peer  # aiosmtpd: (host, port) on TCP, though typed str
    peer_addr = peer[0] if isinstance(peer, tuple) else ""
    sender = envelope.mail_from or ""
    helo = xf.get("HELO")
    return Transaction(
        Stage.END_OF_MESSAGE,
        sender="" if sender == "<>" else sender,
        recipients=list(envelope.rcpt_tos),
        client_address=xf.get("ADDR") or peer_addr,
        client_name=xf.get("NAME") or "unknown",
        helo_name=helo if helo is not None else (session.host_name or ""),
        protocol_name=xf.get("PROTO") or "ESMTP",
        queue_id=xf.get("IDENT") or "",
    )


def _xforward_out(env: Transaction, xf: Xforward) -> dict[str, str | None]:
    """What to XFORWARD to the next hop: the original client, as we received it."""
    return {
        "NAME": env.client_name,
        "ADDR": env.client_address,
        "PORT": xf.get("PORT"),
        "PROTO": env.protocol_name,
        "HELO": env.helo_name,
        "IDENT": env.queue_id,
        "SOURCE": xf.get("SOURCE"),
    }


def _summary(replies: dict[str, Reply], recipients: list[str]) -> Reply:
    result = ForwardResult(replies={r: replies[r] for r in recipients if r in replies})
    return result.summary()


def _join(reply: Reply, recipients: list[str], lmtp: bool) -> str | list[str]:
    return [str(reply)] * len(recipients) if lmtp else str(reply)
