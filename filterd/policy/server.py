"""The policy service's sockets: persistent connections, requests answered in order.

A thin asyncio driver around :class:`PolicyParser` and :class:`PolicyService`. Each
connection is independent: a fault on one (garbage, an over-long request, a client that
vanishes) is logged with the client's address and closes at most that connection.

Every connection is bounded, so that one client cannot take a worker's memory, disk or
sockets from the others:

* a client that sends requests without reading the answers is no longer read from once
  WRITE_HIGH bytes of answers wait for it (the transport's own flow control calls
  :meth:`PolicyConnection.pause_writing`), nor while MAX_PENDING requests wait behind one
  that is being decided; reading resumes when it catches up. Before, such a client grew
  a worker by 225 MB and its log by 500 MB in half a minute;
* a connection that sends nothing for ``policy_idle_timeout`` is closed (Postfix closes
  its own after ``smtpd_policy_service_max_idle``, 300 s, so normally it goes first);
* a worker holds at most ``policy_connection_limit`` connections; one more is closed at
  once, so that Postfix retries elsewhere or answers ``451 4.3.5`` (mail is deferred, not
  lost) instead of waiting for a reply that a saturated worker would give late;
* the warnings a client can cause are written at most once per kind every ten seconds,
  with a count of those left out (:class:`filterd.log.RateLimitedLog`).

None of this is on the per-request path: flow control is the transport's, the pending
count is looked at only while a request waits, and idleness is a flag set per read and
examined by one sweep per worker.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque

from filterd import eager
from filterd.config import Config
from filterd.eventloop import before_poll
from filterd.log import RateLimitedLog
from filterd.restrict.delegation.protocol import FramingError, PolicyParser, PolicyRequest, encode_reply
from filterd.policy.service import FAILURE, PolicyService

log = logging.getLogger("filterd.policy")
#: The warnings a client can cause (a flood of them must not flood the log).
limited = RateLimitedLog(log)


#: Receive buffer per connection. Postfix's requests are under 1 kB; a larger read is
#: simply split over several calls.
RECV_BUFFER = 16384
#: Answers waiting to be sent above which a connection stops reading requests, and below
#: which it reads again. Postfix reads each answer before it sends the next request, so
#: it never comes near; 64 kB is some 700 answers.
WRITE_HIGH = 65536
WRITE_LOW = 16384
#: The kernel's send buffer per connection (SO_SNDBUF; Linux doubles it). Left to grow
#: by itself, it took megabytes -- tens of thousands of answers decided and logged for a
#: client that reads none of them -- before the transport's buffer began to fill.
SEND_BUFFER = 32768
#: Requests queued behind one that waits (DNS, the store) above which a connection stops
#: reading. Postfix sends one at a time; pipelining beyond this is not Postfix.
MAX_PENDING = 64
#: Defaults of the limits (parameters policy_idle_timeout, policy_connection_limit).
IDLE_TIMEOUT = 330.0
CONNECTION_LIMIT = 500


class PolicyConnection(asyncio.BufferedProtocol):
    """One client connection (normally one Postfix smtpd process).

    A buffered protocol: the transport reads into this connection's own buffer. A plain
    :class:`asyncio.Protocol` gets a new bytes object from a 256 kB ``recv`` per read, and
    glibc serves that size with mmap/mremap/munmap -- three system calls and a page fault
    per policy request, more than parsing the request costs.
    """

    def __init__(self, service: PolicyService, registry: set["PolicyConnection"],
                 limit: int = CONNECTION_LIMIT):
        self.service = service
        self.registry = registry
        self.limit = limit
        self.parser = PolicyParser()
        self.queue: deque[PolicyRequest] = deque()
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown"
        self.worker: asyncio.Task[str] | None = None
        self.closing = False
        #: Set by every read, cleared by the idle sweep (PolicyServer._sweep).
        self.active = True
        self.idle_since = 0.0
        self._write_paused = False  # the client is not reading its answers
        self._queue_paused = False  # too many requests wait behind a slow one
        self._buffer = memoryview(bytearray(RECV_BUFFER))
        self._out: list[bytes] = []  # replies answered, not yet written (see _reply)
        # Created by the loop's server, in the loop: the hook is looked up once here.
        self._before_poll = before_poll(asyncio.get_running_loop())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = f"[{peer[0]}]:{peer[1]}"
        elif peer:
            self.peer = str(peer)
        else:
            self.peer = "local socket"
        if len(self.registry) >= self.limit:
            limited.warning("connections over policy_connection_limit",
                            "policy client %s: %d connections already open in this worker "
                            "(policy_connection_limit); closing the new one", self.peer, self.limit)
            self.closing = True
            transport.close()
            return
        self.registry.add(self)
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            except OSError:  # not a socket that has one: the transport's bound still holds
                pass

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.active = True
        self.data_received(self._buffer[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        """Parse what arrived and answer every request it completed."""
        if self.closing:  # after a framing fault or a stop: nothing more is read
            return
        for item in self.parser.feed(data):
            if isinstance(item, FramingError):
                # The requests complete before the fault are answered, then it closes.
                limited.warning("unreadable policy requests",
                                "policy client %s: %s; closing the connection", self.peer, item.message)
                self.closing = True
                break
            self.queue.append(item)
        if self.worker is None:
            self._answer()
        if self.worker is not None and len(self.queue) >= MAX_PENDING and not self._queue_paused:
            self._queue_paused = True
            self._update_reading()

    # -- flow control: the transport calls these around WRITE_HIGH / WRITE_LOW ------------
    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def _update_reading(self) -> None:
        """Read while the client keeps up with its answers and few requests wait."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._write_paused or self._queue_paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _answer(self) -> None:
        """Answer queued requests in order (the protocol has no ids).

        Each request is decided in this turn when it needs nothing that waits (see
        :mod:`filterd.eager`); one that waits continues as a Task, and the requests
        behind it wait for its answer.
        """
        while self.queue:
            req = self.queue.popleft()
            try:
                result = eager.start(self.service.handle(req, self.peer))
            except Exception:  # noqa: BLE001 - a fault in one request must not end the connection
                limited.error("errors answering a request", "policy client %s: error answering a request",
                              self.peer, exc_info=True)
                result = FAILURE
            if isinstance(result, eager.Pending):
                self.worker = result.task
                result.task.add_done_callback(self._resumed)
                return
            self._reply(result)
        if self.closing:
            self._close_transport()

    def _resumed(self, task: asyncio.Task[str]) -> None:
        self.worker = None
        if task.cancelled():  # the server is being torn down
            return
        fault = task.exception()
        if fault is not None:
            limited.error("errors answering a request", "policy client %s: error answering a request",
                          self.peer, exc_info=fault)
            self._reply(FAILURE)
        else:
            self._reply(task.result())
        self._answer()
        if self._queue_paused and len(self.queue) < MAX_PENDING // 2:
            self._queue_paused = False
            self._update_reading()

    def _reply(self, action: str) -> None:
        """Hold the reply; all held replies go out in one write before the loop polls."""
        self._out.append(encode_reply(action))
        if len(self._out) == 1:
            self._before_poll(self._write_out)

    def _write_out(self) -> None:
        out = self._out
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    @property
    def idle(self) -> bool:
        return self.worker is None

    def close(self) -> None:
        """Close now if idle, else after the request in progress has been answered."""
        self.closing = True
        self.queue.clear()
        if self.worker is None:
            self._close_transport()

    def expire(self) -> None:
        """Close an idle connection; at once, dropping its unsent answers, when its
        client has stopped reading them (a plain close would wait for them forever)."""
        if self._write_paused and self.transport is not None:
            self.closing = True
            self.transport.abort()
        else:
            self.close()

    def _close_transport(self) -> None:
        """Write the replies held so far, then close (after the transport's buffer)."""
        self._write_out()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.registry.discard(self)
        self._out.clear()
        if self.parser.pending:
            limited.warning("connections lost in the middle of a request",
                            "policy client %s: lost connection in the middle of a request (%d bytes)",
                            self.peer, self.parser.pending)
        self.transport = None


class PolicyServer:
    """Serves the policy protocol on sockets handed in by the process manager."""

    def __init__(self, service: PolicyService, idle_timeout: float = IDLE_TIMEOUT,
                 connection_limit: int = CONNECTION_LIMIT):
        self.service = service
        self.idle_timeout = idle_timeout
        self.connection_limit = connection_limit
        self.connections: set[PolicyConnection] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.TimerHandle | None = None

    @classmethod
    def from_config(cls, cfg: Config, service: PolicyService) -> "PolicyServer":
        return cls(service, cfg.get("policy_idle_timeout"), cfg.get("policy_connection_limit"))

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        limit = self.connection_limit
        factory = lambda: PolicyConnection(self.service, self.connections, limit)  # noqa: E731
        if sock.family == socket.AF_UNIX:
            server = await loop.create_unix_server(factory, sock=sock)
        else:
            server = await loop.create_server(factory, sock=sock)
        self.servers.append(server)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._sweep_interval, self._sweep)

    @property
    def _sweep_interval(self) -> float:
        """A quarter of the timeout (at most 30 s): an idle connection closes between
        the timeout and a quarter more."""
        return min(max(self.idle_timeout / 4, 0.05), 30.0)

    def _sweep(self) -> None:
        """Close the connections that sent nothing for idle_timeout and wait for nothing.

        A connection that read something since the last sweep starts its idle time over;
        one whose client is not reading its answers reads nothing (see pause_writing),
        so it is closed too once the timeout has passed.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in list(self.connections):
            if conn.active:
                conn.active = False
                conn.idle_since = now
            elif conn.worker is None and now - conn.idle_since >= self.idle_timeout:
                limited.log(logging.INFO, "idle policy connections closed",
                            "policy client %s: nothing received for %.0fs (policy_idle_timeout); "
                            "closing the connection", conn.peer, now - conn.idle_since)
                conn.expire()
        self._sweeper = loop.call_later(self._sweep_interval, self._sweep)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish, then close every connection."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.close()
        deadline = asyncio.get_running_loop().time() + grace
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
