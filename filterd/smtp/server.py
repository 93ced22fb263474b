"""The SMTP/LMTP server every SMTP front end stands on: aiosmtpd's dialogue, Postfix's manners.

What it adds to aiosmtpd, for the content filter now and the gateway MTA later: Postfix's
XFORWARD command, replies in Postfix's words for oversized mail and unusable addresses,
a connection limit (``421 4.3.2``), a timeout on every wait for the client (inside DATA
too; never while a message is processed), DATA read in bulk, every reply line made safe,
and a clean stop: stop accepting, let messages in flight finish, close.

A front end gives it an :class:`SmtpHandler` subclass with ``handle_DATA`` (the business
logic, as aiosmtpd intends) and a logger; the handler's ``tasks`` are work the stop waits
for.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from filterd.reply import join_replies, safe_reply
from filterd.smtp.data import DataState, address_problem, plain_path, read_data
from filterd.smtp.xforward import EHLO_KEYWORD, Xforward, XforwardError, neuter, parse_xforward

log = logging.getLogger("filterd.smtp")


class _AiosmtpdLog(logging.Handler):
    """aiosmtpd's own warnings (``mail.log``: an unrecognised command, too many of them)
    go into filterd's log, whose writers escape them. Left alone they reach Python's
    last-resort handler, which writes a client's NUL or ESC raw to standard error."""

    def emit(self, record: logging.LogRecord) -> None:
        log.log(record.levelno, "%s", record.getMessage(), exc_info=record.exc_info)


_aiosmtpd_log = logging.getLogger("mail.log")
_aiosmtpd_log.addHandler(_AiosmtpdLog(logging.WARNING))
_aiosmtpd_log.propagate = False
# Nothing below a warning goes anywhere: the logger itself drops it, before aiosmtpd's
# info and debug lines of every command and connection are built as records.
_aiosmtpd_log.setLevel(logging.WARNING)


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


class XforwardEnvelope(SmtpEnvelope):
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


_HOOKS: dict[tuple[str, tuple[str, ...]], list[str]] = {}


def _hook_names(cls: type, prefixes: tuple[str, ...]) -> list[str]:
    key = (f"{cls.__module__}.{cls.__qualname__}", prefixes)
    names = _HOOKS.get(key)
    if names is None:
        names = _HOOKS[key] = [name for name in dir(cls) if name.startswith(prefixes)]
    return names


class ServerProtocol(SMTP):
    """What filterd adds to aiosmtpd's SMTP and LMTP classes (mixed into both)."""

    line_length_limit = LINE_LIMIT
    command_size_limit = COMMAND_LIMIT

    def __dir__(self) -> list[str]:
        """Only the command and AUTH methods, listed once per class. aiosmtpd finds its
        ``smtp_*`` and ``auth_*`` methods with ``dir()`` and ``inspect.getmembers()`` for
        every connection, which read every attribute of the object: a fifth of the cost of
        opening a connection (measured with smtp-source, one message per connection)."""
        return _hook_names(type(self), ("smtp_", "auth_"))

    def __init__(self, owner: "SmtpServer", **kwargs: Any):
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
            self.owner.log.warning("%s: too many connections, refused %s", self.owner.name, _peer_text(peer))
            return
        self.owner.connections.add(self)
        super().connection_made(transport)
        if self._handler_coroutine is not None:
            self._handler_coroutine.add_done_callback(self._session_over)

    def _session_over(self, _: asyncio.Task[None]) -> None:
        """The session's coroutine has ended: the connection ends with it. aiosmtpd closes
        it itself, except when an EOF cancels the coroutine before its first step (a client
        that connects and closes at once, or a port scanner): the half-open connection then
        stayed until the timeout, holding a slot of the connection limits all along."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            return
        self.owner.connections.discard(self)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self.refused:
            return False
        return super().eof_received()

    def _create_envelope(self) -> XforwardEnvelope:
        return XforwardEnvelope()

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        super().data_received(data)

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd re-arms its timer at every command (a timer handle made and one
        cancelled each time). The timer armed at the connection's start stays: when it
        fires, :meth:`_timeout_cb` measures the wait from ``last_read`` and re-arms
        itself for the rest, so every wait for the client is still limited."""
        if duration is None and self._timeout_handle is not None and not self._timeout_handle.cancelled():
            return
        super()._reset_timeout(duration)

    def _timeout_cb(self) -> None:
        """``filter_timeout`` limits every wait for the client, as Postfix's smtpd_timeout
        does: for a command, and for each piece of a message inside DATA. A client that
        stalls in the middle of DATA is cut off like an idle one, and the memory its
        message holds is freed. Only the time the filter itself takes to process a
        message (and the next hop to accept it) is not the client's and never counts."""
        if self.processing:
            self._reset_timeout(self._timeout_duration)
            return
        idle = self.loop.time() - self.last_read
        if idle < self._timeout_duration:
            self._reset_timeout(max(self._timeout_duration - idle, 0.01))
            return
        peer = self.session.peer if self.session is not None else None
        self.owner.log.info("timeout after %s from %s", self.last_command, _peer_text(peer))
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
        assert isinstance(envelope, XforwardEnvelope)
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


class ServerSMTP(ServerProtocol):
    """The server speaking SMTP."""


class ServerLMTP(ServerProtocol, LMTP):
    """The server speaking LMTP: one reply per recipient after DATA."""


def _peer_text(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"[{peer[0]}]:{peer[1]}"
    return "local socket"


class SmtpHandler:
    """aiosmtpd's handler hooks for the commands before DATA, in Postfix's words.

    A front end subclasses it and adds ``handle_DATA``, its business logic: in aiosmtpd's
    design the handler is what the server is for, and the protocol classes above are
    only the dialogue."""

    def __dir__(self) -> list[str]:
        """Only the ``handle_*`` and ``auth_*`` hooks aiosmtpd looks for (see
        :meth:`ServerProtocol.__dir__`)."""
        return _hook_names(type(self), ("handle_", "auth_"))

    def __init__(self, log: logging.Logger):
        self.log = log
        #: Work under way for messages (shielded from clients that hang up): the server's
        #: stop waits for it.
        self.tasks: set[asyncio.Task[Any]] = set()

    def _track(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

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
        self.log.error("error while handling an SMTP command", exc_info=error)
        return "451 4.3.0 Error: internal error"


def _command(server: SMTP, name: str) -> None:
    """Remember the last command, for the ``timeout after ...`` log line."""
    if isinstance(server, ServerProtocol):
        server.last_command = name


class SmtpServer:
    """Serves one SMTP or LMTP front end on sockets handed in by the process manager."""

    def __init__(self, handler: SmtpHandler, *, name: str, hostname: str, protocol: str = "smtp",
                 max_connections: int = 20, timeout: float = 300.0, size_limit: int | None = None):
        """``name`` starts the server's own log lines (``content filter: too many
        connections``); they go to the handler's logger."""
        self.handler = handler
        self.log = handler.log
        self.name = name
        self.hostname = hostname
        self.protocol = protocol
        self.max_connections = max_connections
        self.timeout = timeout
        self.size_limit = size_limit or None
        self.connections: set[ServerProtocol] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.stopping = False
        self.port = 0

    # -- life cycle --------------------------------------------------------------------
    def _factory(self) -> ServerProtocol:
        cls = ServerLMTP if self.protocol == "lmtp" else ServerSMTP
        return cls(self, data_size_limit=self.size_limit, enable_SMTPUTF8=True,
                   hostname=self.hostname, ident=f"{self.protocol.upper()} filterd service ready",
                   timeout=self.timeout, loop=asyncio.get_running_loop())

    async def start(self, sock: socket.socket) -> None:
        """Serve on ``sock`` (TCP or UNIX-domain), bound and listening already."""
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
        while (self.connections or self.handler.tasks) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if isinstance(conn.transport, asyncio.Transport):
                conn.transport.abort()
        for task in list(self.handler.tasks):
            task.cancel()
