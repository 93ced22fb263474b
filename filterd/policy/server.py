"""The policy service's sockets: persistent connections, requests answered in order.

A thin asyncio driver around :class:`PolicyParser` and :class:`PolicyService`. Each
connection is independent: a fault on one (garbage, an over-long request, a client that
vanishes) is logged with the client's address and closes at most that connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque

from filterd import eager
from filterd.eventloop import before_poll
from filterd.policy.protocol import FramingError, PolicyParser, PolicyRequest, encode_reply
from filterd.policy.service import FAILURE, PolicyService

log = logging.getLogger("filterd.policy")


#: Receive buffer per connection. Postfix's requests are under 1 kB; a larger read is
#: simply split over several calls.
RECV_BUFFER = 16384


class PolicyConnection(asyncio.BufferedProtocol):
    """One client connection (normally one Postfix smtpd process).

    A buffered protocol: the transport reads into this connection's own buffer. A plain
    :class:`asyncio.Protocol` gets a new bytes object from a 256 kB ``recv`` per read, and
    glibc serves that size with mmap/mremap/munmap -- three system calls and a page fault
    per policy request, more than parsing the request costs.
    """

    def __init__(self, service: PolicyService, registry: set["PolicyConnection"]):
        self.service = service
        self.registry = registry
        self.parser = PolicyParser()
        self.queue: deque[PolicyRequest] = deque()
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown"
        self.worker: asyncio.Task[str] | None = None
        self.closing = False
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
        self.registry.add(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._buffer[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        """Parse what arrived and answer every request it completed."""
        if self.closing:  # after a framing fault or a stop: nothing more is read
            return
        for item in self.parser.feed(data):
            if isinstance(item, FramingError):
                # The requests complete before the fault are answered, then it closes.
                log.warning("policy client %s: %s; closing the connection", self.peer, item.message)
                self.closing = True
                break
            self.queue.append(item)
        if self.worker is None:
            self._answer()

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
                log.exception("policy client %s: error answering a request", self.peer)
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
            log.error("policy client %s: error answering a request", self.peer, exc_info=fault)
            self._reply(FAILURE)
        else:
            self._reply(task.result())
        self._answer()

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

    def _close_transport(self) -> None:
        """Write the replies held so far, then close (after the transport's buffer)."""
        self._write_out()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.registry.discard(self)
        self._out.clear()
        if self.parser.pending:
            log.warning("policy client %s: lost connection in the middle of a request (%d bytes)",
                        self.peer, self.parser.pending)
        self.transport = None


class PolicyServer:
    """Serves the policy protocol on sockets handed in by the process manager."""

    def __init__(self, service: PolicyService):
        self.service = service
        self.connections: set[PolicyConnection] = set()
        self.servers: list[asyncio.AbstractServer] = []

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        factory = lambda: PolicyConnection(self.service, self.connections)  # noqa: E731
        if sock.family == socket.AF_UNIX:
            server = await loop.create_unix_server(factory, sock=sock)
        else:
            server = await loop.create_server(factory, sock=sock)
        self.servers.append(server)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish, then close every connection."""
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
