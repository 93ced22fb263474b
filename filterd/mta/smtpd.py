"""smtpd(8) of the gateway MTA: the Internet's SMTP dialogue, in Postfix's words, into the queue.

This module translates; it checks nothing itself. Each SMTP stage becomes a
:class:`~filterd.restrict.transaction.Transaction` for the one restriction engine, with
Postfix's lists (``smtpd_client_restrictions`` ... ``smtpd_end_of_data_restrictions``,
``smtpd_relay_restrictions`` before ``smtpd_recipient_restrictions``), and with
``smtpd_delay_reject`` the client, helo and sender lists run at RCPT TO, as Postfix runs
them. At the end of DATA, before the reply: ``smtpd_end_of_data_restrictions``, the
content pipeline (when ``smtpd_content_filter``), cleanup's rewriting and headers, the
queue file written and fsync'd (file and directory), and only then ``250 2.0.0 Ok: queued
as QID`` and a wake-up for the queue manager.

What a content verdict does here (before the queue, so never a bounce): reject and
tempfail are the reply to DATA; tag's X-Spam-* headers go into the queued copy;
quarantine keeps the message in filterd's quarantine and discard drops it (both answered
2xx, as the content filter does); hold is Postfix's hold queue here, as a restriction's
HOLD. Side effects of the restrictions are Postfix's: PREPEND headers, REDIRECT and BCC
recipients, HOLD, DISCARD. With ``smtpd_content_filter = no`` the pipeline still runs
Postfix's header and body checks when they are configured, as Postfix's cleanup does.

Limits and manners are Postfix's: ``message_size_limit`` (SIZE= at MAIL, and while
reading DATA), ``smtpd_recipient_limit``, ``smtpd_timeout`` on every wait for the client,
the soft and hard error limits with ``smtpd_error_sleep_time``,
``smtpd_client_connection_count_limit`` (per worker process), ``reject_unauth_pipelining``.
DATA ends only at CRLF.CRLF whatever ``smtpd_forbid_bare_newline`` says (SMTP
smuggling): a bare LF is a line end stored as CRLF (normalize), a 521 (yes) or kept (no).

Every reply leaves through the base server's ``push``, made one line of printable
ASCII; client text in a reply or a log line is made printable first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import dataclasses
import logging
import re
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

from filterd.config import Config, split_list
from filterd.content.mailid import new_mail_id
from filterd.content.message import Message
from filterd.content.outcome import keep, log_line
from filterd.content.pipeline import ContentPipeline, new_log_id
from filterd.content.quarantine import Quarantine
from filterd.log import event
from filterd.mta import maillog
from filterd.mta.cleanup import Rewriting, rewrite_envelope
from filterd.mta.queue import HOLD, INCOMING, NewMessage, Queue
from filterd.mta.queuefile import ENCODING_ATTR, ENVID_ATTR, RET_ATTR, SMTPUTF8_ATTR, Recipient
from filterd.mta.receive import Incoming, WriteError, write_message
from filterd.mta.trigger import Waker
from filterd.reply import Reply
from filterd.restrict.decision import DEFER, REJECT, Decision
from filterd.restrict.engine import RestrictionEngine
from filterd.restrict.logline import format_log_line
from filterd.restrict.transaction import Stage, Transaction
from filterd.smtp.data import DataResult, DataState, address_problem, read_data
from filterd.smtp.server import ServerSMTP, SmtpHandler, SmtpServer
from filterd.smtp.xforward import neuter, xtext_decode
from filterd.text import printable_ascii

log = logging.getLogger("filterd.smtpd")
T = TypeVar("T")
#: Threads writing queue files per worker: several sessions' fsyncs overlap (the disk
#: takes them together), while the loop goes on with the others.
DISK_THREADS = 4

#: Which parameter holds the restriction list of each stage.
STAGE_PARAM = {
    Stage.CONNECT: "smtpd_client_restrictions",
    Stage.HELO: "smtpd_helo_restrictions",
    Stage.MAIL: "smtpd_sender_restrictions",
    Stage.DATA: "smtpd_data_restrictions",
    Stage.END_OF_MESSAGE: "smtpd_end_of_data_restrictions",
}
RCPT_PARAMS = ("smtpd_relay_restrictions", "smtpd_recipient_restrictions")
ALL_PARAMS = (*STAGE_PARAM.values(), *RCPT_PARAMS)

#: Commands after which a client must wait for the reply (RFC 2920 3.1): input already
#: waiting behind one of them is improper pipelining.
GROUP_ENDERS = frozenset({"EHLO", "HELO", "DATA", "VRFY", "EXPN", "NOOP", "QUIT", "AUTH", "STARTTLS"})

FAILURE = Reply(451, "4.3.0", "Error: internal error")
WRITE_ERROR = "451 4.3.0 Error: queue file write error"
TOO_BIG = "552 5.3.4 Error: message file too big"

#: aiosmtpd's own replies for what filterd's handlers never see, in Postfix's words
#: (an unknown command's name is never echoed back).
_BASE_REPLIES = {
    "500 Error: bad syntax": "500 5.5.2 Error: bad syntax",
    "500 Command line too long": "500 5.5.2 Error: command too long",
    "500 Error: strict ASCII mode": "500 5.5.2 Error: bad syntax",
    "221 Bye": "221 2.0.0 Bye",
    "250 OK": "250 2.0.0 Ok",
}
_UNKNOWN_COMMAND = "502 5.5.2 Error: command not recognized"

_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})


def decode_xtext(text: str) -> str | None:
    """An ENVID or ORCPT value (RFC 3461 xtext) decoded; None when it is not xtext or
    decodes to anything but printable ASCII (it goes into queue files, logs and DSNs)."""
    out = xtext_decode(text)
    return out if out is not None and out.isprintable() and out.isascii() else None


_ROUTE = re.compile(r"@[^,:@\s<>]+(?:,@[^,:@\s<>]+)*:")
_SPECIALS = frozenset(' \t<>(),;:"\\')


def parse_path(text: str) -> tuple[str, str] | None:
    """(address, ESMTP parameters) of a MAIL FROM / RCPT TO argument, or None when its
    syntax is broken. ``<>`` is ``""``; a source route is dropped (RFC 5321 4.1.2); a
    trailing dot of the domain is dropped (``user@example.com.``), as Postfix's cleanup
    does; quotes stay (the next hop gets the address as sent). ``<`` ``>`` may be left
    out, as Postfix allows when strict_rfc821_envelopes is off."""
    text = text.lstrip(" \t")
    if text.startswith("<"):
        quoted = escaped = False
        for i in range(1, len(text)):
            ch = text[i]
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = not quoted
            elif ch == ">" and not quoted:
                inner, rest = text[1:i], text[i + 1:]
                break
        else:
            return None
        if rest and rest[0] not in " \t":
            return None
    else:
        inner, _, rest = text.partition(" ")
    route = _ROUTE.match(inner)
    if route is not None:
        inner = inner[route.end():]
    if route is not None and not inner:
        return None
    quoted = escaped = False
    for ch in inner:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch in _SPECIALS:
            return None
    if quoted or escaped:
        return None
    if "@" in inner and inner.endswith(".") and not inner.endswith(("..", "@.")):
        inner = inner[:-1]
    return inner, rest.strip()


def parse_esmtp_params(text: str) -> list[tuple[str, str | None]]:
    """``KEY=value KEY`` words as (upper-case key, value as sent or None)."""
    out: list[tuple[str, str | None]] = []
    for word in text.split():
        key, eq, value = word.partition("=")
        out.append((key.upper(), value if eq else None))
    return out


class Settings:
    """smtpd's parameters, read once per worker."""

    def __init__(self, cfg: Config):
        self.hostname: str = cfg.get("myhostname")
        self.banner: str = cfg.get("smtpd_banner")
        self.size_limit: int = cfg.get("message_size_limit")
        self.recipient_limit: int = cfg.get("smtpd_recipient_limit")
        self.delay_reject: bool = cfg.get("smtpd_delay_reject")
        self.helo_required: bool = cfg.get("smtpd_helo_required")
        self.error_sleep: float = cfg.get("smtpd_error_sleep_time")
        self.soft_errors: int = cfg.get("smtpd_soft_error_limit")
        self.hard_errors: int = cfg.get("smtpd_hard_error_limit")
        self.per_client: int = cfg.get("smtpd_client_connection_count_limit")
        self.bare_newline: str = cfg.get("smtpd_forbid_bare_newline")
        self.peername_lookup: bool = cfg.get("smtpd_peername_lookup")
        self.myorigin: str = cfg.get("myorigin")
        self.active = frozenset(p for p in ALL_PARAMS if split_list(cfg.expand(p)))


class SmtpdHandler(SmtpHandler):
    """What the gateway's smtpd shares between its connections: engines, queue, settings."""

    def __dir__(self) -> list[str]:
        """No ``handle_*`` hook for aiosmtpd: SmtpdProtocol answers every command itself,
        so aiosmtpd need not list and inspect (``inspect.signature``) the base handler's
        hooks for every connection."""
        return []

    def __init__(self, cfg: Config, engine: RestrictionEngine, pipeline: ContentPipeline | None,
                 quarantine: Quarantine | None, queue: Queue):
        super().__init__(log)
        self.settings = Settings(cfg)
        self.engine = engine
        self.pipeline = pipeline
        self.quarantine = quarantine
        self.queue = queue
        self.rewriting = Rewriting.from_config(cfg)
        self.waker = Waker(queue.directory)
        self.per_client: dict[str, int] = {}
        self.peer_names = PeerNames()
        #: Queue file work runs on threads of its own: the loop's default executor also
        #: does the clients' name lookups, and clients whose DNS is slow must not make
        #: every other session wait for its fsync.
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=DISK_THREADS,
                                                              thread_name_prefix="filterd-queue")

    async def disk(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking queue file work off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def discard(self, creating: "asyncio.Task[NewMessage]") -> None:
        """Remove a queue file opened for a message that never came (the client went
        away, or the message was refused before it was judged)."""
        try:
            new = await creating
        except Exception:  # noqa: BLE001 - nothing was created, nothing to remove
            return
        await self.disk(new.abort)

    def check_config(self) -> None:
        """Compile every list now: an unknown restriction fails at start-up."""
        for param in ALL_PARAMS:
            self.engine.check_param(param)

    async def close(self) -> None:
        self.waker.close()
        self.executor.shutdown(wait=True)
        if self.quarantine is not None:
            await self.quarantine.close()
        if self.pipeline is not None:
            self.pipeline.close()

    async def check(self, param: str, txn: Transaction) -> Decision:
        """One list for ``txn``; a failure inside is a 4xx, never an accept."""
        if param not in self.settings.active:
            return Decision()
        try:
            return await self.engine.evaluate(param, txn)
        except Exception:  # noqa: BLE001 - one bad request must not stop the service
            log.exception("%s: error evaluating %s for %s", txn.queue_id or "NOQUEUE", param, txn.client_label)
            return Decision(DEFER, FAILURE, "DEFER", None)


class SmtpdProtocol(ServerSMTP):
    """One client connection of the gateway's smtpd."""

    owner: "SmtpdServer"

    def __init__(self, owner: "SmtpdServer", **kwargs: Any):
        super().__init__(owner, **kwargs)
        self.handler_: SmtpdHandler = owner.handler
        self.settings = self.handler_.settings
        self.base = Transaction(stage=Stage.CONNECT, protocol_name="SMTP")
        self.greeted = False
        self.client_counted = False
        self.errors = 0
        self.closing = False
        self.esmtp = False
        self.unauth_pipelining = False
        self.counts: dict[str, list[int]] = {}  # command -> [ok, total]
        self.command = ""
        self.command_ok: bool | None = None
        self.session_effects: list[Decision] = []
        self.client_decision: Decision | None = None
        self._local: bool | None = None
        self._reset_transaction()

    def _local_client(self) -> bool:
        """Whether the client is in mynetworks (cleanup adds missing headers for it),
        matched once per connection rather than for every message."""
        if self._local is None:
            self._local = bool(self.handler_.engine.services.mynetworks.match(self.base.client_address))
        return self._local

    # -- transaction state -------------------------------------------------------------
    def _reset_transaction(self) -> None:
        self.sender: str | None = None
        self.mail_size = 0
        self.smtputf8 = False
        self.dsn_ret = ""
        self.dsn_envid = ""
        self.body_type = ""
        """BODY= of MAIL: ``8bit``, ``7bit`` or "" (not declared)."""
        self.recipients: list[Recipient] = []
        self.rcpt_count = 0
        """Accepted RCPT commands, duplicates included: what smtpd_recipient_limit counts,
        as in Postfix."""
        self.effects: list[Decision] = []
        self.delayed: Decision | None = None

    def txn(self, stage: Stage, **kw: Any) -> Transaction:
        """The session's Transaction at ``stage`` with this transaction's values: a
        shallow copy, as dataclasses.replace makes, without its per-field __init__."""
        txn = copy.copy(self.base)
        txn.stage, txn.sender, txn.size = stage, self.sender, self.mail_size
        txn.recipient_count, txn.unauth_pipelining = len(self.recipients), self.unauth_pipelining
        for name, value in kw.items():
            setattr(txn, name, value)
        return txn

    # -- connection --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) else ""
        limit = self.settings.per_client
        table = self.handler_.per_client
        if (address and limit and table.get(address, 0) >= limit
                and not self.handler_.engine.services.mynetworks.match(address)):
            self.refused = True
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(f"421 4.7.0 {self.settings.hostname} Error: too many connections from "
                            f"{address}\r\n".encode("ascii", "replace"))
            transport.close()
            event("smtpd", f"warning: Connection concurrency limit exceeded: {limit + 1} from "
                           f"unknown[{printable_ascii(address)}] for service smtpd")
            return
        if address:
            table[address] = table.get(address, 0) + 1
            self.client_counted = True
        self.base.client_address = address
        self.base.client_port = str(peer[1]) if isinstance(peer, tuple) else ""
        sock = transport.get_extra_info("sockname")
        if isinstance(sock, tuple):
            self.base.server_address, self.base.server_port = str(sock[0]), str(sock[1])
        super().connection_made(transport)
        if self.refused:
            self._uncount()

    def _uncount(self) -> None:
        if self.client_counted:
            address = self.base.client_address
            left = self.handler_.per_client.get(address, 1) - 1
            if left > 0:
                self.handler_.per_client[address] = left
            else:
                self.handler_.per_client.pop(address, None)
            self.client_counted = False

    def connection_lost(self, error: Exception | None) -> None:
        if not self.refused:
            self._uncount()
            if self.greeted:
                self._log_disconnect()
        super().connection_lost(error)

    def _log_disconnect(self) -> None:
        label = self.base.client_label
        if "QUIT" not in self.counts and self.last_command not in ("QUIT", "CONNECT") and not self.closing:
            event("smtpd", f"lost connection after {self.last_command} from {printable_ascii(label)}")
        ok_all = sum(v[0] for v in self.counts.values())
        total_all = sum(v[1] for v in self.counts.values())
        parts = [f"{name.lower()}={ok}" if ok == total else f"{name.lower()}={ok}/{total}"
                 for name, (ok, total) in self.counts.items()]
        parts.append(f"commands={ok_all}" if ok_all == total_all else f"commands={ok_all}/{total_all}")
        event("smtpd", f"disconnect from {printable_ascii(label)} {' '.join(parts)}")

    async def _handle_client(self) -> None:
        """Name the client (reverse, forward-confirmed), log ``connect from``, run the
        CONNECT list unless delayed, then aiosmtpd's dialogue."""
        if self.settings.peername_lookup and self.base.client_address:
            name, reverse = await self.handler_.peer_names.lookup(self.base.client_address)
            self.base.client_name, self.base.reverse_client_name = name, reverse
        event("smtpd", f"connect from {printable_ascii(self.base.client_label)}")
        if not self.settings.delay_reject:
            decision = await self.handler_.check(STAGE_PARAM[Stage.CONNECT], self.txn(Stage.CONNECT))
            self.client_decision = decision
            self._note(decision, self.txn(Stage.CONNECT), session=True)
        await super()._handle_client()

    def _pipelined(self, command: str) -> None:
        """Note improper pipelining: input waiting behind a command that ends a group, or
        from a client that was never offered PIPELINING."""
        buffered = getattr(self._reader, "_buffer", b"")
        if buffered and (command in GROUP_ENDERS or not self.esmtp):
            self.unauth_pipelining = True

    # -- replies, errors, command counts -----------------------------------------------
    async def push(self, status: Any) -> None:
        """Every reply: Postfix's texts for aiosmtpd's own, error counting (with the
        error sleep past the soft limit and 421 at the hard limit)."""
        if isinstance(status, bytes):
            status = status.decode("ascii", "replace")
        if not self.greeted and status.startswith("220 "):
            self.greeted = True
            status = f"220 {self.settings.banner}"
        elif status.startswith('500 Error: command "'):
            self._count("UNKNOWN", False)
            status = _UNKNOWN_COMMAND
        elif status.startswith("502 5.5.1 Too many unrecognized commands"):
            status = f"421 4.7.0 {self.settings.hostname} Error: too many errors"  # aiosmtpd closes now
        else:
            status = _BASE_REPLIES.get(status, status)
        error = status[:1] in ("4", "5") and not status.startswith("421")
        if status[:1] in ("2", "4", "5"):
            self.command_ok = status[:1] == "2"
        if error:
            self.errors += 1
        if self.errors >= self.settings.soft_errors and self.settings.error_sleep > 0 and not self.closing:
            await asyncio.sleep(self.settings.error_sleep)
        await super().push(status)
        if error and self.errors >= self.settings.hard_errors and not self.closing:
            self.closing = True
            event("smtpd", f"too many errors after {self.last_command} from "
                           f"{printable_ascii(self.base.client_label)}")
            await super().push(f"421 4.7.0 {self.settings.hostname} Error: too many errors")
            if self.transport is not None:
                self.transport.close()

    def _count(self, name: str, ok: bool) -> None:
        entry = self.counts.setdefault(name, [0, 0])
        entry[1] += 1
        if ok:
            entry[0] += 1

    async def _run(self, name: str, coro: Any) -> None:
        """Run one command's handler, counting it for the disconnect line."""
        self.last_command = name
        self.command_ok = None
        self._pipelined(name)
        try:
            await coro
        finally:
            self._count(name, bool(self.command_ok))

    # -- commands ----------------------------------------------------------------------
    async def smtp_HELO(self, arg: str | None) -> None:
        await self._run("HELO", self._helo(arg, esmtp=False))

    async def smtp_EHLO(self, arg: str | None) -> None:
        await self._run("EHLO", self._helo(arg, esmtp=True))

    async def _helo(self, arg: str | None, esmtp: bool) -> None:
        word = "EHLO" if esmtp else "HELO"
        if not arg:
            await self.push(f"501 5.5.4 Syntax: {word} hostname")
            return
        if self.sender is not None:
            await self.push("503 5.5.1 Error: MAIL transaction in progress")
            return
        assert self.session is not None
        self.session.host_name = neuter(arg)
        self.session.extended_smtp = esmtp
        self.esmtp = esmtp
        self.base.helo_name = printable_ascii(arg)[:255]
        self.base.protocol_name = "ESMTP" if esmtp else "SMTP"
        if not self.settings.delay_reject:
            if self._session_reject() is None:
                txn = self.txn(Stage.HELO)
                decision = await self.handler_.check(STAGE_PARAM[Stage.HELO], txn)
                if self._note(decision, txn, session=True) is not None:
                    assert decision.reply is not None
                    await self.push(str(decision.reply))
                    return
        if not esmtp:
            await self.push(f"250 {self.settings.hostname}")
            return
        lines = [self.settings.hostname, "PIPELINING"]
        lines.append(f"SIZE {self.settings.size_limit}" if self.settings.size_limit else "SIZE")
        lines += ["ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8"]
        for line in lines[:-1]:
            await self.push(f"250-{line}")
        await self.push(f"250 {lines[-1]}")

    def _session_reject(self) -> Decision | None:
        """A client or helo reject kept for the session (smtpd_delay_reject = no)."""
        for d in (self.client_decision, *self.session_effects):
            if d is not None and d.result in (REJECT, DEFER):
                return d
        return None

    def _note(self, decision: Decision, txn: Transaction, session: bool = False) -> Decision | None:
        """Log a reject (Postfix's reject line) and return it; keep the side effects."""
        if decision.result in (REJECT, DEFER) and decision.reply is not None:
            event("smtpd", format_log_line(txn, decision))
            if session:
                self.session_effects.append(decision)
            return decision
        for warning in decision.warnings:
            event("smtpd", f"{txn.queue_id or 'NOQUEUE'}: {warning}: {txn.stage.value} from "
                           f"{txn.client_label}; from=<{txn.sender or ''}> to=<{txn.recipient or ''}>")
        if (decision.prepend or decision.bcc or decision.redirect or decision.hold is not None
                or decision.discard is not None or decision.filter is not None):
            # only what the end of the message carries out: a client repeating RCPT or
            # EHLO must not grow the session without bound
            (self.session_effects if session else self.effects).append(decision)
        return None

    async def smtp_MAIL(self, arg: str | None) -> None:
        await self._run("MAIL", self._mail(arg))

    async def _mail(self, arg: str | None) -> None:
        syntax = "501 5.5.4 Syntax: MAIL FROM:<address>"
        if self.settings.helo_required and not self.base.helo_name:
            await self.push("503 5.5.1 Error: send HELO/EHLO first")
            return
        if self.sender is not None:
            await self.push("503 5.5.1 Error: nested MAIL command")
            return
        rest = self._strip_command_keyword("FROM:", arg or "")
        if rest is None:
            await self.push(syntax)
            return
        path = parse_path(rest)
        if path is None:
            await self.push("501 5.1.7 Bad sender address syntax")
            return
        sender, params = path
        if not sender and not rest.lstrip().startswith("<"):
            await self.push(syntax)
            return
        if params and not self.esmtp:
            await self.push(syntax)
            return
        if sender and "@" not in sender:
            sender = f"{sender}@{self.settings.myorigin}"  # Postfix's append_at_myorigin
        size, smtputf8, ret, envid, body = 0, False, "", "", ""
        for key, value in parse_esmtp_params(params or ""):
            if key == "SIZE" and value is not None and value.isdigit() and len(value) < 20:
                size = int(value)
            elif key == "BODY" and value is not None and value.upper() in ("7BIT", "8BITMIME"):
                body = "8bit" if value.upper() == "8BITMIME" else "7bit"
            elif key == "SMTPUTF8" and value is None:
                smtputf8 = True
            elif key == "RET" and value is not None and value.upper() in ("FULL", "HDRS") and not ret:
                ret = value.upper()
            elif key == "ENVID" and value is not None and not envid and decode_xtext(value) is not None:
                envid = decode_xtext(value) or ""
            elif key == "AUTH" and value is not None:
                pass  # no AUTH here: the submitter's identity is not taken from the client
            elif key in ("SIZE", "BODY", "SMTPUTF8", "RET", "ENVID"):
                await self.push(f"501 5.5.4 Bad {key} parameter syntax")
                return
            else:
                await self.push(f"555 5.5.4 Unsupported option: {printable_ascii(key)[:64]}")
                return
        problem = address_problem(sender, smtputf8)
        if problem == "utf8":
            await self.push("553 5.6.7 Must declare SMTPUTF8 to send unicode address")
            return
        if problem is not None:
            await self.push("501 5.1.7 Bad sender address syntax")
            return
        if self.settings.size_limit and size > self.settings.size_limit:
            await self.push("552 5.3.4 Message size exceeds fixed limit")
            return
        self.sender, self.mail_size, self.smtputf8 = sender, size, smtputf8
        self.dsn_ret, self.dsn_envid, self.body_type = ret, envid, body
        if not self.settings.delay_reject:
            reject = self._session_reject() or await self._check_sender()
            if reject is not None:
                assert reject.reply is not None
                self._reset_transaction()
                await self.push(str(reject.reply))
                return
        await self.push("250 2.1.0 Ok")

    async def _check_sender(self) -> Decision | None:
        txn = self.txn(Stage.MAIL)
        return self._note(await self.handler_.check(STAGE_PARAM[Stage.MAIL], txn), txn)

    async def _delayed(self, recipient: str) -> Decision | None:
        """smtpd_delay_reject: the client, helo and sender lists at the first RCPT of the
        transaction, their reject given (and logged as RCPT) for every recipient."""
        if self.delayed is None:
            found = Decision()
            for stage in (Stage.CONNECT, Stage.HELO, Stage.MAIL):
                txn = self.txn(stage)
                decision = await self.handler_.check(STAGE_PARAM[stage], txn)
                if decision.result in (REJECT, DEFER) and decision.reply is not None:
                    found = decision
                    break
                self._note(decision, txn)
            self.delayed = found
        if self.delayed.result in (REJECT, DEFER):
            event("smtpd", format_log_line(self.txn(Stage.RCPT, recipient=recipient), self.delayed))
            return self.delayed
        return None

    async def smtp_RCPT(self, arg: str | None) -> None:
        await self._run("RCPT", self._rcpt(arg))

    async def _rcpt(self, arg: str | None) -> None:
        if self.sender is None:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        rest = self._strip_command_keyword("TO:", arg or "")
        if rest is None:
            await self.push("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        path = parse_path(rest)
        if path is None or not path[0]:
            await self.push("501 5.1.3 Bad recipient address syntax")
            return
        recipient, params = path
        if params and not self.esmtp:
            await self.push("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        notify, orcpt = "", ""
        for key, value in parse_esmtp_params(params or ""):
            if key == "NOTIFY" and value is not None and not notify:
                words = {w.strip().upper() for w in value.split(",")}
                if not (words == {"NEVER"} or (words and words <= _NOTIFY)):
                    await self.push("501 5.5.4 Error: Bad NOTIFY parameter syntax")
                    return
                notify = ",".join(sorted(words))
            elif key == "ORCPT" and value is not None and not orcpt:
                kind, semi, text = value.partition(";")
                decoded = decode_xtext(text) if semi and kind.isascii() and kind.isalnum() else None
                if not decoded:
                    await self.push("501 5.5.4 Error: Bad ORCPT parameter syntax")
                    return
                orcpt = decoded
            else:
                await self.push(f"555 5.5.4 Unsupported option: {printable_ascii(key)[:64]}")
                return
        problem = address_problem(recipient, self.smtputf8)
        if problem == "utf8":
            await self.push("553 5.6.7 Must declare SMTPUTF8 to send unicode address")
            return
        if problem is not None:
            await self.push("501 5.1.3 Bad recipient address syntax")
            return
        if self.rcpt_count >= self.settings.recipient_limit:
            await self.push("452 4.5.3 Error: too many recipients")
            return
        refusal = await self._recipient_verdict(recipient)
        if refusal is not None:
            await self.push(refusal)
            return
        if "@" not in recipient:
            recipient = f"{recipient}@{self.settings.myorigin}"  # Postfix's append_at_myorigin
        cleaned = rewrite_envelope(self.handler_.rewriting, self.sender, [Recipient(recipient, orcpt, notify)])
        if cleaned.refused:
            r = cleaned.refused[0]
            refused = f"{r.code} {r.dsn} <{recipient}>: Recipient address rejected: {r.text}"
            event("smtpd", maillog.reject("RCPT", self.base.client_name, self.base.client_address, refused,
                                          sender=self.sender, recipient=recipient,
                                          proto=self.base.protocol_name, helo=self.base.helo_name))
            await self.push(refused)
            return
        known = {r.address.lower() for r in self.recipients}
        self.recipients += [r for r in cleaned.recipients if r.address.lower() not in known]
        self.rcpt_count += 1
        await self.push("250 2.1.5 Ok")

    async def _recipient_verdict(self, recipient: str) -> str | None:
        """The reply refusing ``recipient``, or None: delayed lists, then relay, then recipient."""
        if self.settings.delay_reject:
            delayed = await self._delayed(recipient)
            if delayed is not None:
                return str(delayed.reply)
        else:
            reject = self._session_reject()
            if reject is not None:
                return str(reject.reply)
        txn = self.txn(Stage.RCPT, recipient=recipient)
        for param in RCPT_PARAMS:
            decision = await self.handler_.check(param, txn)
            if self._note(decision, txn) is not None:
                return str(decision.reply)
        return None

    async def smtp_RSET(self, arg: str | None) -> None:
        await self._run("RSET", self._rset(arg))

    async def _rset(self, arg: str | None) -> None:
        if arg:
            await self.push("501 5.5.4 Syntax: RSET")
            return
        self._reset_transaction()
        self._set_rset_state()
        await self.push("250 2.0.0 Ok")

    async def smtp_NOOP(self, arg: str | None) -> None:
        await self._run("NOOP", self.push("250 2.0.0 Ok"))

    async def smtp_QUIT(self, arg: str | None) -> None:
        self.last_command = "QUIT"
        self._count("QUIT", True)
        await super().push("221 2.0.0 Bye")
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    async def smtp_VRFY(self, arg: str | None) -> None:
        await self._run("VRFY", self.push("502 5.5.1 VRFY command is disabled"))

    async def smtp_XFORWARD(self, arg: str | None) -> None:
        await self._run("XFORWARD", self.push("550 5.7.0 Error: insufficient authorization"))

    async def smtp_AUTH(self, arg: str) -> None:
        await self._run("AUTH", self.push("503 5.5.1 Error: authentication not enabled"))

    async def smtp_EXPN(self, arg: str) -> None:
        await self._run("UNKNOWN", self.push(_UNKNOWN_COMMAND))

    async def smtp_HELP(self, arg: str) -> None:
        await self._run("UNKNOWN", self.push(_UNKNOWN_COMMAND))

    async def smtp_STARTTLS(self, arg: str) -> None:
        await self._run("STARTTLS", self.push("502 5.5.1 Error: command not implemented"))

    async def smtp_DATA(self, arg: str) -> None:
        self.busy = True
        try:
            await self._run("DATA", self._data(arg))
        finally:
            self.busy = False
        if self.owner.stopping and self.transport is not None:
            await self.close_when_idle()

    async def _data(self, arg: str) -> None:
        if not self.recipients:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        txn = self.txn(Stage.DATA)
        decision = await self.handler_.check(STAGE_PARAM[Stage.DATA], txn)
        if self._note(decision, txn) is not None:
            await self.push(str(decision.reply))
            return
        # The queue file is opened now and its name synced to disk while the client
        # sends the message (Postfix's cleanup opens it before the message arrives too):
        # after the final dot only the file's own write and fsync remain.
        creating = self.handler_._track(self.handler_.disk(open_queue_file, self.handler_.queue))
        try:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            result = await read_data(self._reader, self.settings.size_limit or None)
        except asyncio.IncompleteReadError:  # EOF seen before aiosmtpd's cancellation
            self._writer.close()
            self.handler_._track(self.handler_.discard(creating))
            return
        except BaseException:  # the client went away: the file goes once it exists
            self._writer.close()
            self.handler_._track(self.handler_.discard(creating))
            raise
        self.last_command = "END-OF-MESSAGE"
        content, refusal = self._refusal(result)
        if refusal is not None:
            # shielded: a client gone meanwhile must not cancel the file's creation midway
            await asyncio.shield(self.handler_._track(self.handler_.discard(creating)))
            await self.push(refusal)
            if self.closing and self.transport is not None:
                self.transport.close()
            return
        self.processing = True
        receiving = self.handler_._track(self._receive(content, creating))
        try:
            reply = await asyncio.shield(receiving)
        finally:
            self.processing = False
            self.last_read = self.loop.time()
            # A client gone after the dot cancels this wait, not the shielded work, which
            # still reads the transaction: it is reset once that work is done.
            if receiving.done():
                self._reset_transaction()
                self._set_post_data_state()
            else:
                receiving.add_done_callback(lambda _: self._reset_transaction())
        await self.push(reply)

    def _refusal(self, result: DataResult) -> tuple[bytes, str | None]:
        """The message as it will be judged (bare LFs normalized when so configured),
        or the reply refusing it outright (logged; the transaction is reset)."""
        label = printable_ascii(self.base.client_label)
        if result.state is DataState.TOO_MUCH:
            event("smtpd", maillog.reject("END-OF-MESSAGE", self.base.client_name, self.base.client_address,
                                          TOO_BIG, sender=self.sender or "", proto=self.base.protocol_name))
            self._reset_transaction()
            return b"", TOO_BIG
        content = result.content
        # A bare LF makes the LF count exceed the CRLF count: two scans in C, where the
        # regular expression would step through every line end of a large message.
        if content.count(b"\n") != content.count(b"\r\n"):
            if self.settings.bare_newline == "yes":
                self.closing = True
                event("smtpd", f"disconnect: bare <LF> received from {label}")
                self._reset_transaction()
                return b"", "521 5.5.2 Error: bare <LF> received"
            if self.settings.bare_newline == "normalize":
                content = _BARE_LF.sub(b"\r\n", content)
        return content, None

    # -- the end of a message ------------------------------------------------------------
    async def _receive(self, content: bytes, creating: "asyncio.Task[NewMessage]") -> str:
        """Restrictions at end of data, the content verdict, cleanup, the queue file
        (being opened by ``creating``): the reply to DATA. Never raises: any failure is
        a 4xx."""
        handler = self.handler_
        arrival = time.time()
        try:
            new = await creating
        except Exception as exc:  # noqa: BLE001 - disk full, permissions: the client retries
            log.error("warning: cannot create a queue file: %s", exc)
            return WRITE_ERROR
        try:
            reply = await self._judge_and_write(new, content, arrival)
        except Exception:  # noqa: BLE001 - a bug must never answer 250
            log.exception("%s: internal error while receiving", new.qid)
            reply = str(FAILURE)
        if not new.committed:
            await self.handler_.disk(new.abort)
        return reply

    async def _judge_and_write(self, new: NewMessage, content: bytes, arrival: float) -> str:
        handler = self.handler_
        qid = new.qid
        label = printable_ascii(self.base.client_label)
        event("smtpd", maillog.client(qid, self.base.client_name, self.base.client_address))
        txn = self.txn(Stage.END_OF_MESSAGE, queue_id=qid, size=len(content))
        decision = await handler.check(STAGE_PARAM[Stage.END_OF_MESSAGE], txn)
        if self._note(decision, txn) is not None:
            return str(decision.reply)
        sender = self.sender or ""
        recipients = list(self.recipients)
        prepend: list[str] = []
        hold: str | None = None
        discard: str | None = None
        redirect: str | None = None
        bcc: list[str] = []
        for d in (*self.session_effects, *self.effects):
            prepend += d.prepend
            redirect = d.redirect or redirect
            bcc += d.bcc
            hold = (d.hold or "held by a restriction") if d.hold is not None else hold
            discard = (d.discard or "discarded by a restriction") if d.discard is not None else discard
            if d.filter:
                log.warning("%s: FILTER %s ignored: the gateway routes by transport_maps", qid, d.filter)
        if discard is not None:
            event("smtpd", f"{qid}: discard: END-OF-MESSAGE from {label}: {printable_ascii(discard)}; "
                           f"from=<{printable_ascii(sender)}> proto={self.base.protocol_name} "
                           f"helo=<{self.base.helo_name}>")
            return f"250 2.0.0 Ok: queued as {qid}"
        if handler.pipeline is not None:
            scanned = await self._scan(qid, content, sender, recipients)
            if isinstance(scanned, str):
                return scanned
            content, redirect, bcc = scanned.data, scanned.redirect or redirect, bcc + scanned.bcc
            hold = scanned.hold if scanned.hold is not None else hold
        if redirect:
            recipients = [Recipient(redirect, "", "")]
        known = {r.address.lower() for r in recipients}
        recipients += [Recipient(b, "", "") for b in dict.fromkeys(bcc) if b.lower() not in known]
        rewritten_sender = handler.rewriting.sender(sender) if sender else ""
        attributes = {"client_name": self.base.client_name, "client_address": self.base.client_address,
                      "helo_name": self.base.helo_name, "protocol_name": self.base.protocol_name}
        # Postfix's attribute names, read by the delivery agents (DSN and 8BITMIME passed on)
        if self.dsn_ret:
            attributes[RET_ATTR] = self.dsn_ret
        if self.dsn_envid:
            attributes[ENVID_ATTR] = self.dsn_envid
        if self.body_type:
            attributes[ENCODING_ATTR] = self.body_type
        if self.smtputf8:
            attributes[SMTPUTF8_ATTR] = "yes"
        incoming = Incoming(rewritten_sender, recipients, self.base.client_name, self.base.client_address,
                            self.base.helo_name, self.base.protocol_name,
                            self._local_client(),
                            arrival, attributes, prepend)
        try:
            written = await handler.disk(write_message, new, handler.rewriting, incoming, content,
                                         handler.settings.hostname, INCOMING if hold is None else HOLD)
        except WriteError as exc:
            log.error("warning: %s", exc)
            return WRITE_ERROR
        if written.message_id:
            event("cleanup", maillog.message_id(qid, written.message_id))
        if hold is not None:
            event("cleanup", f"{qid}: hold: END-OF-MESSAGE from {label}: {printable_ascii(hold)}; "
                             f"from=<{printable_ascii(sender)}> proto={self.base.protocol_name}")
        else:
            handler.waker.wake()
        self.errors = 0
        return f"250 2.0.0 Ok: queued as {qid}"

    async def _scan(self, qid: str, content: bytes, sender: str, recipients: list[Recipient]) -> str | Scanned:
        """The content verdict: a reply (refused, quarantined or dropped), or what to queue.
        A ``hold`` verdict (header_checks HOLD, or a category whose action is hold) is
        Postfix's hold: the message goes to the hold queue, released with ``filterd
        queue release``."""
        handler = self.handler_
        assert handler.pipeline is not None
        started = time.monotonic()
        mail_id = new_mail_id()
        addresses = [r.address for r in recipients]
        msg = Message(content, self.txn(Stage.END_OF_MESSAGE, sender=sender, recipients=addresses,
                                        queue_id=qid))
        verdict = await handler.pipeline.scan(msg, new_log_id())
        action = verdict.action
        quarantine_id: str | None = None
        reply: Reply | None = None
        if action == "tempfail":
            assert verdict.reply is not None
            reply, flags = Reply(451, "4.3.0", verdict.reply.text), "Tempfailed"
        elif action in ("reject", "discard"):
            assert verdict.reply is not None
            reply, flags = verdict.reply, "Rejected" if action == "reject" else "Discarded"
        elif action == "quarantine":
            assert handler.quarantine is not None
            reply, quarantine_id, flags = await keep(handler.quarantine, msg, verdict, verdict.edits.apply(msg),
                                                     addresses, mail_id)
        else:
            flags = "Held" if action == "hold" else "Queued"
        event("smtpd", log_line(msg, verdict, mail_id, self.base.client_port, flags,
                                qid if reply is None else None, quarantine_id,
                                reply if reply is not None and not reply.ok else None, started))
        if reply is not None:
            if not reply.ok:
                event("smtpd", maillog.reject("END-OF-MESSAGE", self.base.client_name, self.base.client_address,
                                              str(reply), sender=sender, proto=self.base.protocol_name,
                                              helo=self.base.helo_name, qid=qid))
            return str(reply)
        data = verdict.edits.apply(msg) if verdict.edits else content
        hold = (verdict.reason or "held by a content check") if action == "hold" else None
        return Scanned(data, verdict.redirect, list(verdict.bcc), hold)


@dataclasses.dataclass
class Scanned:
    """A message the content verdict lets into the queue, and how."""

    data: bytes
    redirect: str | None
    bcc: list[str]
    hold: str | None


_BARE_LF = re.compile(rb"(?<!\r)\n")


def open_queue_file(queue: Queue) -> NewMessage:
    """A new queue file in ``incoming`` whose name is on disk already (thread)."""
    new = queue.create()
    try:
        new.sync_entry()
    except BaseException:
        new.abort()
        raise
    return new


#: Seconds the client's name lookups may take in all; past it the client is ``unknown``.
PEER_LOOKUP_TIMEOUT = 20.0


def _lookup_peer(address: str, found: list[str]) -> tuple[str, str]:
    """The reverse lookup and its forward confirmation, both in one thread (a thread hop
    each cost a fifth of the time smtpd takes to greet a client). The reverse name is
    also put in ``found`` as soon as it is known, for a caller that stops waiting."""
    try:
        name, _ = socket.getnameinfo((address, 0), socket.NI_NAMEREQD)
    except (OSError, UnicodeError):
        return "unknown", "unknown"
    name = printable_ascii(name)
    found.append(name)
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return "unknown", name
    confirmed = any(info[4][0] == address for info in infos)
    return (name if confirmed else "unknown"), name


class PeerNames:
    """The names of recent clients, kept PEER_NAME_TTL seconds (at most PEER_NAME_LIMIT
    of them, the oldest dropped first).

    Postfix's smtpd asks the system resolver at every connection and leaves caching to
    it (nscd, a local caching resolver). Here each lookup is a hop to a thread, which
    costs a busy server more than the lookup itself, and a gateway's clients (the
    organisation's relays, the large senders) come back again and again within seconds.
    A lookup that timed out is not kept."""

    def __init__(self, ttl: float = 60.0, limit: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.limit = limit
        self.clock = clock
        self._names: dict[str, tuple[float, str, str]] = {}

    async def lookup(self, address: str) -> tuple[str, str]:
        """(forward-confirmed name or ``unknown``, reverse name or ``unknown``), as
        Postfix's smtpd names a client; the lookups bounded by PEER_LOOKUP_TIMEOUT."""
        now = self.clock()
        known = self._names.get(address)
        if known is not None and known[0] > now:
            return known[1], known[2]
        found: list[str] = []
        try:
            async with asyncio.timeout(PEER_LOOKUP_TIMEOUT):
                name, reverse = await asyncio.get_running_loop().run_in_executor(
                    None, _lookup_peer, address, found)
        except TimeoutError:
            return "unknown", found[0] if found else "unknown"
        self._names.pop(address, None)
        while len(self._names) >= self.limit:
            del self._names[next(iter(self._names))]
        self._names[address] = (self.clock() + self.ttl, name, reverse)
        return name, reverse


class SmtpdServer(SmtpServer):
    """The gateway's smtpd on sockets handed in by the process manager."""

    handler: SmtpdHandler

    def __init__(self, handler: SmtpdHandler, *, max_connections: int, timeout: float):
        super().__init__(handler, name="smtpd", hostname=handler.settings.hostname,
                         max_connections=max_connections, timeout=timeout,
                         size_limit=handler.settings.size_limit)

    def _factory(self) -> SmtpdProtocol:
        return SmtpdProtocol(self, data_size_limit=self.size_limit, enable_SMTPUTF8=True,
                             hostname=self.hostname, ident="", timeout=self.timeout,
                             loop=asyncio.get_running_loop())

    async def start(self, sock: socket.socket) -> None:
        if self.handler.quarantine is not None:
            await self.handler.quarantine.open()
        await self.handler.disk(self.handler.queue.setup)
        await super().start(sock)

    async def stop(self, grace: float = 10.0) -> None:
        await super().stop(grace)
        await self.handler.close()
