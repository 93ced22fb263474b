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
import email.utils
import logging
import secrets
import socket
import string
import time
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from filterd.content.dsn import refusal_report
from filterd.smtp.client import Forwarder, ForwardResult
from filterd.content.message import Envelope, Message
from filterd.smtp.nexthop import NextHop, parse_next_hop
from filterd.content.pipeline import ContentPipeline, new_log_id
from filterd.content.quarantine import Quarantine, QuarantineError
from filterd.smtp.data import DataState, address_problem, plain_path, read_data
from filterd.content.verdict import Reply, Verdict, format_score
from filterd.smtp.xforward import (
    EHLO_KEYWORD,
    Xforward,
    XforwardError,
    neuter,
    parse_xforward,
)
from filterd.reply import join_replies, safe_reply

log = logging.getLogger("filterd.content")


class _AiosmtpdLog(logging.Handler):
    """aiosmtpd's own warnings (``mail.log``: an unrecognised command, too many of them)
    go into filterd's log, whose writers escape them. Left alone they reach Python's
    last-resort handler, which writes a client's NUL or ESC raw to standard error."""

    def emit(self, record: logging.LogRecord) -> None:
        log.log(record.levelno, "%s", record.getMessage(), exc_info=record.exc_info)


_aiosmtpd_log = logging.getLogger("mail.log")
_aiosmtpd_log.addHandler(_AiosmtpdLog(logging.WARNING))
_aiosmtpd_log.propagate = False

_MAIL_ID_ALPHABET = string.ascii_letters + string.digits
#: aiosmtpd's own texts for oversized mail, replaced by what Postfix's smtpd says.
_REPLY_TEXTS = {
    "552 Error: Too much mail data": "552 5.3.4 Error: message file too big",
    "552 Error: message size exceeds fixed maximum message size":
        "552 5.3.4 Message size exceeds fixed limit",
}
TOO_MANY = b"421 4.3.2 Too many connections, try again later\r\n"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
#: The stream reader's buffer limit: the longest command line read whole (a longer one
#: is drained in pieces and refused). DATA lines may be of any length: they are read in
#: pieces too, and only the message size is limited (a 5xx for a long line would make
#: Postfix bounce a message it has already accepted).
LINE_LIMIT = 1 << 20
#: Longest command line accepted: Postfix's line_length_limit, so any MAIL or RCPT that
#: Postfix's own smtpd took (and its smtp client now sends on) is read here too.
COMMAND_LIMIT = 2048
#: Recipients per transaction (Postfix's smtpd_recipient_limit default); the excess gets
#: 452 and Postfix's smtp client sends those recipients in another transaction.
RECIPIENT_LIMIT = 1000


def new_mail_id() -> str:
    """amavisd-new's mail_id: 12 random letters and digits naming the message in logs.

    One 128-bit draw from the system's random source, read as base-62 digits (62**12 is
    under 2**72, so the digits are uniform to within 2**-56), instead of twelve draws.
    """
    number = secrets.randbits(128)
    digits = []
    for _ in range(12):
        number, digit = divmod(number, 62)
        digits.append(_MAIL_ID_ALPHABET[digit])
    return "".join(digits)


class FilterEnvelope(SmtpEnvelope):
    """aiosmtpd's envelope plus the XFORWARD attributes of this transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.xforward = Xforward()


class _CommandLimits(dict[str, int]):
    """aiosmtpd's per-command line limits, fixed at COMMAND_LIMIT for every command.

    aiosmtpd keeps them in one dict shared by all connections, cleared by each new one
    and raised by every EHLO; this per-connection mapping ignores those changes."""

    def __missing__(self, key: str) -> int:
        return COMMAND_LIMIT

    def __setitem__(self, key: str, value: int) -> None:
        pass


class _FilterProtocol(SMTP):
    """What filterd adds to aiosmtpd's SMTP and LMTP classes (mixed into both)."""

    line_length_limit = LINE_LIMIT
    command_size_limit = COMMAND_LIMIT

    def __init__(self, owner: "ContentFilterServer", **kwargs: Any):
        self.owner = owner
        self.busy = False  # a DATA command is under way (read, processed or answered)
        self.processing = False  # the message is being filtered and passed on
        self.refused = False
        self.last_command = "CONNECT"
        super().__init__(owner.handler, **kwargs)
        self.command_size_limits = _CommandLimits()
        self.last_read = self.loop.time()

    # -- connection limit and stop -----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self.owner.connections) >= self.owner.max_connections or self.owner.stopping:
            self.refused = True
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(TOO_MANY)
            transport.close()
            peer = transport.get_extra_info("peername")
            log.warning("content filter: too many connections, refused %s", _peer_text(peer))
            return
        self.owner.connections.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            return
        self.owner.connections.discard(self)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self.refused:
            return False
        return super().eof_received()

    def _create_envelope(self) -> FilterEnvelope:
        return FilterEnvelope()

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        super().data_received(data)

    def _timeout_cb(self) -> None:
        """``filter_timeout`` limits every wait for the client, as Postfix's smtpd_timeout
        does: for a command, and for each piece of a message inside DATA. A client that
        stalls in the middle of DATA is cut off like an idle one, and the memory its
        message holds is freed. Only the time the filter itself takes to process a
        message (and the next hop to accept it) is not the client's and never counts."""
        if self.processing:
            self._reset_timeout()
            return
        idle = self.loop.time() - self.last_read
        if idle < self._timeout_duration:
            self._reset_timeout(max(self._timeout_duration - idle, 0.01))
            return
        peer = self.session.peer if self.session is not None else None
        log.info("timeout after %s from %s", self.last_command, _peer_text(peer))
        super()._timeout_cb()

    async def push(self, status: Any) -> None:
        """Every reply line leaves through here, made safe (:func:`safe_reply`): no text
        from a client, a message or a next hop can break it into several replies."""
        if isinstance(status, bytes):
            status = status.decode("ascii", "replace")
        await super().push(safe_reply(_REPLY_TEXTS.get(status, status)))

    async def push_lines(self, lines: list[str]) -> None:
        """Several reply lines in one write (LMTP after DATA), each made safe."""
        assert self.session is not None
        self._writer.write(join_replies(lines).encode("ascii") + b"\r\n")
        await self._writer.drain()

    async def close_when_idle(self) -> None:
        """Called on stop: idle connections get 421 now, busy ones after their reply."""
        if self.busy or self.transport is None:
            return
        try:
            await self.push(SHUTTING_DOWN)
        except (ConnectionError, RuntimeError):
            pass
        if self.transport is not None:
            self.transport.close()

    # -- commands ----------------------------------------------------------------------
    async def smtp_XFORWARD(self, arg: str | None) -> None:
        """Postfix's XFORWARD: remember the original client for this transaction."""
        envelope = self.envelope
        assert isinstance(envelope, FilterEnvelope)
        if envelope.mail_from:
            await self.push("503 5.5.1 Error: MAIL transaction in progress")
            return
        try:
            envelope.xforward = parse_xforward(arg, envelope.xforward)
        except XforwardError as exc:
            await self.push(exc.reply)
            return
        await self.push("250 2.0.0 Ok")

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's MAIL/RCPT address parsing, with a fast path for ``<a@b>`` (smtpin)."""
        plain = plain_path(arg)
        if plain is None:
            return super()._getaddr(arg)
        if self.local_part_limit and len(plain[0].rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return plain

    async def smtp_DATA(self, arg: str) -> None:
        self.last_command = "DATA"
        self.busy = True
        try:
            await self._data(arg)
        finally:
            self.busy = False
        if self.owner.stopping and self.transport is not None:
            await self.close_when_idle()

    async def _data(self, arg: str) -> None:
        """aiosmtpd's DATA command, replies and hooks unchanged, with the message read in
        bulk by :func:`~filterd.smtp.data.read_data` instead of line by line."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            result = await read_data(self._reader, self.data_size_limit)
        except asyncio.CancelledError:  # the client went away (aiosmtpd cancels on EOF)
            self._writer.close()
            raise
        except asyncio.IncompleteReadError:  # EOF seen before that cancellation arrived
            self._writer.close()
            return
        self.last_command = "END-OF-MESSAGE"
        if result.state is DataState.TOO_MUCH:
            await self.push("552 Error: Too much mail data")
            self._set_post_data_state()
            return
        self.envelope.content = self.envelope.original_content = result.content
        self.processing = True
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            self.processing = False
            self.last_read = self.loop.time()  # the wait for the client starts again now
        self._set_post_data_state()
        if isinstance(status, list):
            await self.push_lines(status)
        else:
            await self.push("250 OK" if status is MISSING else status)


class FilterSMTP(_FilterProtocol):
    """The content filter speaking SMTP (``filter_protocol = smtp``)."""


class FilterLMTP(_FilterProtocol, LMTP):
    """The content filter speaking LMTP: one reply per recipient after DATA."""


def _peer_text(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"[{peer[0]}]:{peer[1]}"
    return "local socket"


class FilterHandler:
    """aiosmtpd's handler hooks, delegating the message to the server."""

    def __init__(self, owner: "ContentFilterServer"):
        self.owner = owner

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: SmtpEnvelope,
                          hostname: str, responses: list[str]) -> list[str]:
        _command(server, "EHLO")
        session.host_name = neuter(hostname)
        return responses[:-1] + ["250-PIPELINING", f"250-{EHLO_KEYWORD}", responses[-1]]

    async def handle_HELO(self, server: SMTP, session: Session, envelope: SmtpEnvelope,
                          hostname: str) -> str:
        _command(server, "HELO")
        session.host_name = neuter(hostname)
        return f"250 {server.hostname}"

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: SmtpEnvelope,
                          address: str, options: list[str]) -> str:
        """Refuse now what could not be passed on later: a sender that is not a mailbox
        the next hop can be given gets Postfix's 5xx here, not a 250 and then a 4xx
        after DATA that Postfix would retry until the message expires."""
        _command(server, "MAIL")
        problem = address_problem(address, envelope.smtp_utf8)
        if problem == "utf8":
            return "553 5.6.7 Must declare SMTPUTF8 to send unicode address"
        if problem is not None:
            return "501 5.1.7 Bad sender address syntax"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: SmtpEnvelope,
                          address: str, options: list[str]) -> str:
        _command(server, "RCPT")
        problem = "syntax" if address == "<>" else address_problem(address, envelope.smtp_utf8)
        if problem == "utf8":
            return "553 5.6.7 Must declare SMTPUTF8 to send unicode address"
        if problem is not None:
            return "501 5.1.3 Bad recipient address syntax"
        if len(envelope.rcpt_tos) >= RECIPIENT_LIMIT:
            return "452 4.5.3 Error: too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Ok"

    async def handle_exception(self, error: Exception) -> str:
        """A bug while handling a command: logged with its traceback, answered 451 (aiosmtpd
        answers 500 with the exception's text, which would make Postfix bounce the
        message for a reason that is no verdict)."""
        log.error("error while handling an SMTP command", exc_info=error)
        return "451 4.3.0 Error: internal error"

    async def handle_DATA(self, server: SMTP, session: Session,
                          envelope: SmtpEnvelope) -> str | list[str]:
        assert isinstance(envelope, FilterEnvelope)
        return await self.owner.process(session, envelope, lmtp=isinstance(server, LMTP))


def _command(server: SMTP, name: str) -> None:
    """Remember the last command, for the ``timeout after ...`` log line."""
    if isinstance(server, _FilterProtocol):
        server.last_command = name


class ContentFilterServer:
    """Serves the content filter on sockets handed in by the process manager."""

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
        self.pipeline = pipeline
        self.forwarder = forwarder
        self.quarantine = quarantine
        self.hostname = hostname
        self.protocol = protocol
        self.max_connections = max_connections
        self.timeout = timeout
        self.size_limit = size_limit or None
        self.virus_admin = virus_admin
        self.handler = FilterHandler(self)
        self.connections: set[_FilterProtocol] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.stopping = False
        self.port = 0

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

    # -- life cycle --------------------------------------------------------------------
    def _factory(self) -> _FilterProtocol:
        cls = FilterLMTP if self.protocol == "lmtp" else FilterSMTP
        return cls(self, data_size_limit=self.size_limit, enable_SMTPUTF8=True,
                   hostname=self.hostname, ident=f"{self.protocol.upper()} filterd service ready",
                   timeout=self.timeout, loop=asyncio.get_running_loop())

    async def start(self, sock: socket.socket) -> None:
        await self.quarantine.open()
        loop = asyncio.get_running_loop()
        if sock.family == socket.AF_UNIX:
            server = await loop.create_unix_server(self._factory, sock=sock)
        else:
            server = await loop.create_server(self._factory, sock=sock)
            self.port = sock.getsockname()[1]
        self.servers.append(server)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, finish messages in flight (up to ``grace`` seconds), close."""
        self.stopping = True
        for server in self.servers:
            server.close()
        await asyncio.gather(*(conn.close_when_idle() for conn in list(self.connections)),
                             return_exceptions=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while (self.connections or self.tasks) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if isinstance(conn.transport, asyncio.Transport):
                conn.transport.abort()
        for task in list(self.tasks):
            task.cancel()
        await self.quarantine.close()
        await self.forwarder.close()
        self.pipeline.close()

    def _track(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # -- one message -------------------------------------------------------------------
    async def process(self, session: Session, envelope: FilterEnvelope, *,
                      lmtp: bool) -> str | list[str]:
        """The reply to DATA (LMTP: one per recipient). The work is shielded: once the
        message is being passed on or quarantined, a client that hangs up does not cut
        that work in half."""
        return await asyncio.shield(self._track(self._process(session, envelope, lmtp)))

    async def _process(self, session: Session, envelope: FilterEnvelope,
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
        self._log(msg, verdict, mail_id, envelope.xforward.get("PORT"), flags, queued_as,
                  quarantine_id, None if final.ok else final, started)
        if verdict.virus_names and self.virus_admin:
            self._track(self._notify_admin(msg, verdict, mail_id, quarantine_id))
        if lmtp:
            return [str(replies[r]) for r in recipients]
        return str(final)

    async def _carry_out(self, msg: Message, verdict: Verdict, session: Session,
                         envelope: FilterEnvelope, mail_id: str, lmtp: bool) -> tuple[dict[str, Reply], str | None, str | None, str]:
        """Do what the verdict says; returns replies per recipient, queued_as, quarantine id,
        and amavisd-new's log flags (``Relayed``, ``Discarded,Quarantined``...)."""
        recipients = list(envelope.rcpt_tos)
        if verdict.action in ("tempfail", "reject", "discard"):
            assert verdict.reply is not None
            flag = {"tempfail": "Tempfailed", "reject": "Rejected", "discard": "Discarded"}[verdict.action]
            return {r: verdict.reply for r in recipients}, None, None, flag
        self._add_received(verdict, session, mail_id)
        data = verdict.edits.apply(msg)
        if verdict.action in ("quarantine", "hold"):
            assert verdict.reply is not None and verdict.quarantine_kind is not None
            try:
                qid = await self.quarantine.store(
                    data, kind=verdict.quarantine_kind, sender=msg.envelope.sender,
                    recipients=recipients, reason=verdict.reason,
                    score=verdict.score if verdict.spam_checked else None,
                    subject=msg.subject[:200], client_address=msg.envelope.client_address)
            except QuarantineError as exc:
                log.error("(%s) %s", verdict.log_id, exc)
                reply = Reply(451, "4.5.0", f"Error in processing, id={verdict.log_id}, quarantine FAILED")
                return {r: reply for r in recipients}, None, None, "Tempfailed"
            flag = "Discarded,Quarantined" if verdict.action == "quarantine" else "Held,Quarantined"
            return {r: verdict.reply for r in recipients}, None, qid, flag
        result = await self._forward(msg, verdict, envelope, data, mail_id, lmtp)
        summary = result.summary()
        flag = "Relayed" if summary.ok else ("Tempfailed" if summary.temporary else "Rejected")
        if lmtp and set(result.replies) == set(recipients):
            return result.replies, result.queued_as, None, flag
        return {r: summary for r in recipients}, result.queued_as, None, flag

    async def _forward(self, msg: Message, verdict: Verdict, envelope: FilterEnvelope,
                       data: bytes, mail_id: str, lmtp: bool) -> ForwardResult:
        recipients = list(envelope.rcpt_tos)
        targets = [verdict.redirect] if verdict.redirect else list(recipients)
        targets += [b for b in verdict.bcc if b not in targets]
        hop: NextHop | None = None
        if verdict.next_hop:
            try:
                hop = parse_next_hop(verdict.next_hop)
            except ValueError as exc:
                log.warning("(%s) FILTER %s ignored: %s", verdict.log_id, verdict.next_hop, exc)
        xf = envelope.xforward

        async def notify(refused: dict[str, Reply]) -> bool:
            return await self._notify_refused(msg, verdict, mail_id, refused, envelope.smtp_utf8)

        return await self.forwarder.send(
            msg.envelope.sender, targets, data,
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
                                mail_id=mail_id, boundary=f"{mail_id}.{new_mail_id()}")
        result = await self.forwarder.send("", [sender], report, smtputf8=smtputf8)
        summary = result.summary()
        if summary.temporary:
            log.warning("(%s) notification of refused recipients to <%s> failed: %s",
                        verdict.log_id, sender, summary)
            return False
        log.info("(%s) notification of refused recipients to <%s>: %s", verdict.log_id, sender,
                 summary if summary.ok else f"undeliverable, dropped: {summary}")
        return True

    def _add_received(self, verdict: Verdict, session: Session, mail_id: str) -> None:
        """Our own Received line for the hop Postfix -> filterd, below the X-Spam headers
        as amavisd-new places it (Postfix counts these lines for hop_count_limit)."""
        peer: object = session.peer  # aiosmtpd: (host, port) on TCP, though typed str
        address = peer[0] if isinstance(peer, tuple) else "local socket"
        date = email.utils.format_datetime(email.utils.localtime())
        proto = "LMTP" if self.protocol == "lmtp" else "ESMTP"
        line = (f"Received: from {session.host_name or 'unknown'} ([{address}]) "
                f"by {self.hostname} (filterd, port {self.port}) with {proto} id {mail_id}; {date}")
        verdict.edits.prepend.insert(0, line)

    # -- logging and notification -------------------------------------------------------
    def _log(self, msg: Message, verdict: Verdict, mail_id: str, client_port: str | None,
             flags: str, queued_as: str | None, quarantine_id: str | None, failure: Reply | None,
             started: float) -> None:
        env = msg.envelope
        status = "Passed" if verdict.action == "pass" else (
            "Tempfailed" if verdict.action == "tempfail" else "Blocked")
        category = verdict.category
        if verdict.virus_names:
            category += f" ({_bounded(', '.join(verdict.virus_names))})"
        elif verdict.category == "BANNED":
            category += f" ({_bounded(verdict.reason[len('BANNED: '):])})"
        parts = [f"({verdict.log_id}) {status} {category} {{{flags}}}",
                 f"[{env.client_address or 'unknown'}]"
                 + (f":{client_port}" if client_port and client_port != "unknown" else "")
                 + f" <{_bounded(env.sender)}> -> "
                 + _bounded(",".join(f"<{r}>" for r in env.recipients), FIELD_MAX * 4)]
        if quarantine_id:
            parts.append(f"quarantine: {quarantine_id}")
        if env.queue_id:
            parts.append(f"Queue-ID: {env.queue_id}")
        message_id = msg.get("Message-ID")
        if message_id:
            parts.append(f"Message-ID: {_printable(message_id)[:200]}")
        parts += [f"mail_id: {mail_id}", f"Hits: {verdict.hits}", f"size: {len(msg.raw)}"]
        if queued_as:
            parts.append(f"queued_as: {queued_as}")
        tests = ", ".join(f"{s.name}={format_score(s.score)}" for s in sorted(verdict.symbols, key=lambda s: s.name))
        parts.append(f"Tests: [{tests}]")
        if failure is not None:
            parts.append(f"reply: {failure}")
        parts.append(f"{int((time.monotonic() - started) * 1000)} ms")
        log.info("%s", ", ".join(parts))

    async def _notify_admin(self, msg: Message, verdict: Verdict, mail_id: str,
                            quarantine_id: str | None) -> None:
        """A short report to ``virus_admin``, sent from the null sender through the next hop."""
        report = virus_report(msg, verdict, mail_id, quarantine_id, self.hostname, self.virus_admin)
        result = await self.forwarder.send("", [self.virus_admin], report)
        summary = _summary(result.replies, [self.virus_admin])
        if not summary.ok:
            log.warning("(%s) virus notification to <%s> failed: %s", verdict.log_id, self.virus_admin, summary)


def virus_report(msg: Message, verdict: Verdict, mail_id: str, quarantine_id: str | None,
                 hostname: str, admin: str) -> bytes:
    """The administrator's notification: what was found, in which message, what was done."""
    env = msg.envelope
    names = ", ".join(verdict.virus_names)
    done = {"pass": "delivered", "reject": "rejected", "discard": "discarded",
            "quarantine": "quarantined and discarded", "hold": "held in quarantine",
            "tempfail": "deferred"}[verdict.action]
    lines = [
        f"From: \"Content-filter at {hostname}\" <postmaster@{hostname}>",
        f"To: <{admin}>",
        f"Date: {email.utils.format_datetime(email.utils.localtime())}",
        f"Message-ID: <VA{mail_id}@{hostname}>",
        f"Subject: INFECTED ({_printable(names)[:120]}) in mail FROM <{env.sender}>",
        "Auto-Submitted: auto-generated",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=UTF-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        f"A virus was found: {names}",
        "",
        f"Action taken: {done}",
    ]
    if quarantine_id:
        lines.append(f"Quarantine id: {quarantine_id} (filterd quarantine show {quarantine_id})")
    lines += [
        f"Client: [{env.client_address or 'unknown'}] {env.client_name}",
        f"Sender: <{env.sender}>",
        "Recipients: " + ", ".join(f"<{r}>" for r in env.recipients),
        f"Queue-ID: {env.queue_id or '-'}",
        f"Message-ID: {_printable(msg.get('Message-ID'))[:200] or '-'}",
        f"Subject: {_printable(msg.subject)[:200]}",
        f"mail_id: {mail_id}, log id: {verdict.log_id}",
        "",
    ]
    return "\r\n".join(lines).encode("utf-8", "replace")


#: Longest text of one log field taken from a message or a client (Message-ID, sender,
#: the banned part names...): one hostile field cannot make a log line huge. Control
#: characters need no care here: the log writers escape every one of them.
FIELD_MAX = 500


def _bounded(text: str, limit: int = FIELD_MAX) -> str:
    return text if len(text) <= limit else text[:limit] + "...(cut)"


def _printable(text: str) -> str:
    """Text for a header of our own: every non-printable character (controls, line and
    paragraph separators, format characters) becomes ``?``."""
    return text if text.isprintable() else "".join(ch if ch.isprintable() else "?" for ch in text)


def _envelope(session: Session, envelope: FilterEnvelope) -> Envelope:
    """The message's envelope: XFORWARD's client if Postfix sent it, else the peer."""
    xf = envelope.xforward
    peer: object = session.peer  # aiosmtpd: (host, port) on TCP, though typed str
    peer_addr = peer[0] if isinstance(peer, tuple) else ""
    sender = envelope.mail_from or ""
    helo = xf.get("HELO")
    return Envelope(
        sender="" if sender == "<>" else sender,
        recipients=list(envelope.rcpt_tos),
        client_address=xf.get("ADDR") or peer_addr,
        client_name=xf.get("NAME") or "unknown",
        helo_name=helo if helo is not None else (session.host_name or ""),
        protocol=xf.get("PROTO") or "ESMTP",
        queue_id=xf.get("IDENT") or "",
    )


def _xforward_out(env: Envelope, xf: Xforward) -> dict[str, str | None]:
    """What to XFORWARD to the next hop: the original client, as we received it."""
    return {
        "NAME": env.client_name,
        "ADDR": env.client_address,
        "PORT": xf.get("PORT"),
        "PROTO": env.protocol,
        "HELO": env.helo_name,
        "IDENT": env.queue_id,
        "SOURCE": xf.get("SOURCE"),
    }


def _summary(replies: dict[str, Reply], recipients: list[str]) -> Reply:
    result = ForwardResult(replies={r: replies[r] for r in recipients if r in replies})
    return result.summary()


def _join(reply: Reply, recipients: list[str], lmtp: bool) -> str | list[str]:
    return [str(reply)] * len(recipients) if lmtp else str(reply)
