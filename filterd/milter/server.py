"""The milter's sockets: a thin asyncio driver around :class:`MilterSession`.

Postfix waits for the milter at every step it asked an answer for, so latency is the
whole game here: TCP_NODELAY on every connection (a small reply must not wait for the
MTA's delayed ACK), each step's packets written in one ``write`` before the loop polls
again, and steps that need nothing that waits (macros, headers, body chunks, most
restriction lists) decided in the same turn that read them (:mod:`filterd.eager`),
without a Task. And every read is acknowledged at once (TCP_QUICKACK): Postfix sends
headers and body chunks without waiting for replies, with Nagle's algorithm on its
socket, so its next packet waits for the ACK of the last one; a delayed ACK holds that
back 40 ms, per message (measured through Postfix with bench/milter_bench.py: a milter
that does nothing ran 22 messages/s on one SMTP session without it, 400 with it).

Every connection is independent: a malformed packet (bad length, unknown command,
truncated, an unsupported protocol version) is logged once with the peer's address
and ends that connection only; Postfix then applies its ``milter_default_action`` to
the message in progress. Memory per connection is bounded by the packet length limit
(checked before a packet is held) and the message size limit; reading stops while a
step is being decided. A connection silent for ``milter_timeout`` is closed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import deque
from typing import Any

from filterd import eager
from filterd.eventloop import before_poll
from filterd.milter import protocol as p
from filterd.milter.service import MilterService
from filterd.milter.session import Close, MilterSession

log = logging.getLogger("filterd.milter")


class MilterConnection(asyncio.Protocol):
    """One MTA connection (normally one Postfix smtpd process, one SMTP session at a time)."""

    def __init__(self, server: "MilterServer"):
        self.server = server
        self.decoder = p.FrameDecoder(server.frame_limit)
        self.session: MilterSession | None = None
        self.queue: deque[p.Command | p.ProtocolError] = deque()
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown"
        self.worker: asyncio.Task[Any] | None = None
        self.closing = False
        self.refused = False
        self._out: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self._before_poll = before_poll(self._loop)
        self._last = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._sock: Any = None  # the TCP socket, to acknowledge reads at once

    # -- connection life cycle ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.peer = f"[{peer[0]}]:{peer[1]}" if isinstance(peer, tuple) else "local socket"
        server = self.server
        if server.stopping or len(server.connections) >= server.max_connections:
            self.refused = True
            log.warning("milter: too many connections (%d), refused %s", len(server.connections), self.peer)
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
        self.session = MilterSession(server.service, self.peer, server.size_limit)
        server.connections.add(self)
        self._timer = self._loop.call_later(server.timeout, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if self.decoder.pending and not self.closing:
            log.warning("milter client %s: connection lost in the middle of a packet (%d bytes; truncated)",
                        self.peer, self.decoder.pending)
        # A step being decided is not cut: a quarantine copy half-stored would be
        # neither kept nor refused. Its answer goes nowhere; stop() waits for it.
        self.transport = None
        self._out.clear()

    def _check_idle(self) -> None:
        """The read timeout: silent for milter_timeout while not deciding anything."""
        self._timer = None
        if self.transport is None:
            return
        idle = self._loop.time() - self._last
        if self.worker is None and idle >= self.server.timeout:
            log.warning("milter client %s: timeout after %.0fs without a command; closing",
                        self.peer, idle)
            self._close()
            return
        self._timer = self._loop.call_later(max(self.server.timeout - idle, 1.0), self._check_idle)

    # -- input --------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closing or self.refused:
            return
        self._last = self._loop.time()
        if self._sock is not None:  # Linux resets it after a while: set on every read
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        self.queue.extend(self.decoder.feed(data))
        if self.worker is None:
            self._run()

    def _fault(self, what: str) -> None:
        """One log line, then the connection ends; nothing after the fault is read."""
        log.warning("milter client %s: %s; closing the connection", self.peer, what)
        self.queue.clear()
        self._close()

    def _run(self) -> None:
        """Handle queued commands in order; a step that waits continues as a Task, and
        reading pauses until it is answered."""
        session = self.session
        assert session is not None
        while self.queue and not self.closing:
            cmd = self.queue.popleft()
            if isinstance(cmd, p.ProtocolError):
                self._fault(str(cmd))
                return
            try:
                result = eager.start(session.handle(cmd))
            except p.ProtocolError as exc:
                self._fault(str(exc))
                return
            except Exception:  # noqa: BLE001 - a fault on one connection must not end the others
                log.exception("milter client %s: error handling %s", self.peer, type(cmd).__name__)
                self._close()
                return
            if isinstance(result, eager.Pending):
                self.worker = result.task
                self.server.tasks.add(result.task)
                result.task.add_done_callback(self.server.tasks.discard)
                if self.transport is not None:
                    self.transport.pause_reading()
                result.task.add_done_callback(self._resumed)
                return
            self._output(result)
        if self.server.stopping and session.message is None:
            self._close()

    def _resumed(self, task: asyncio.Task[Any]) -> None:
        self.worker = None
        self._last = self._loop.time()
        if task.cancelled():
            return
        fault = task.exception()
        if self.transport is None:  # the MTA went away while this step was decided
            if fault is not None:
                log.error("milter client %s: error handling a command", self.peer, exc_info=fault)
            return
        if isinstance(fault, p.ProtocolError):
            self._fault(str(fault))
            return
        if fault is not None:
            log.error("milter client %s: error handling a command", self.peer, exc_info=fault)
            self._close()
            return
        self._output(task.result())
        if not self.closing:
            self.transport.resume_reading()
            self._run()

    # -- output -------------------------------------------------------------------------
    def _output(self, result: list[bytes] | Close) -> None:
        if isinstance(result, Close):
            self._close()
            return
        if result:
            if not self._out:
                self._before_poll(self._write_out)
            self._out += result

    def _write_out(self) -> None:
        out = self._out
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def _close(self) -> None:
        """Write what was answered, then close (after the transport's buffer drains)."""
        self.closing = True
        self._write_out()
        if self.transport is not None:
            self.transport.close()

    def close_when_idle(self) -> None:
        """On stop: close now if between messages and not deciding, else after that."""
        if self.worker is None and (self.session is None or self.session.message is None):
            self._close()


class MilterServer:
    """Serves the milter protocol on sockets handed in by the process manager."""

    def __init__(self, service: MilterService, *, timeout: float = 600.0, max_connections: int = 500,
                 frame_limit: int = p.DEFAULT_FRAME_LIMIT, size_limit: int = 0, socket_mode: int = 0o660):
        self.service = service
        self.timeout = timeout
        self.max_connections = max_connections
        self.frame_limit = frame_limit
        self.size_limit = size_limit
        self.socket_mode = socket_mode
        self.connections: set[MilterConnection] = set()
        self.tasks: set[asyncio.Task[Any]] = set()  # steps being decided
        self.servers: list[asyncio.AbstractServer] = []
        self.stopping = False

    @classmethod
    def from_config(cls, cfg: Any, service: MilterService) -> "MilterServer":
        return cls(service, timeout=cfg.get("milter_timeout"),
                   max_connections=cfg.get("milter_max_connections"),
                   frame_limit=cfg.get("milter_frame_limit"),
                   size_limit=cfg.get("message_size_limit"),
                   socket_mode=cfg.get("milter_socket_mode"))

    async def start(self, sock: socket.socket) -> None:
        await self.service.open()
        loop = asyncio.get_running_loop()
        factory = lambda: MilterConnection(self)  # noqa: E731
        if sock.family == socket.AF_UNIX:
            os.chmod(sock.getsockname(), self.socket_mode)
            server = await loop.create_unix_server(factory, sock=sock)
        else:
            server = await loop.create_server(factory, sock=sock)
        self.servers.append(server)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting; connections close between messages; after ``grace`` seconds
        the rest are cut (Postfix then tempfails their messages: nothing is lost)."""
        self.stopping = True
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.close_when_idle()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while (self.connections or self.tasks or self.service.tasks) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        pending = [*self.tasks, *self.service.tasks]  # steps, and the notices they started
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self.service.close()
