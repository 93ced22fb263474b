"""Virus scanning with a running clamd, through pyclamd's INSTREAM support.

pyclamd is a blocking client, so every conversation runs in a worker thread
(``loop.run_in_executor``) and the event loop never waits on clamd.  Three properties of
pyclamd 0.4 shape this module:

* A ``ClamdUnixSocket``/``ClamdNetworkSocket`` object keeps its current connection in
  ``self.clamd_socket``; two threads sharing one object would write into each other's
  conversation.  So each scan builds its own object (the constructor's probe connection
  to clamd costs a few tens of microseconds on loopback).
* It writes with ``socket.send`` and ignores short writes, which corrupts the INSTREAM
  framing when the socket buffer fills on a large message; and when clamd stops reading
  because the stream passed its ``StreamMaxLength``, the caller sees a bare
  ``BrokenPipeError`` instead of clamd's "INSTREAM size limit exceeded" reply.
  :class:`_Channel` wraps the socket to send everything and to recover that reply.
* It closes its socket only when a command succeeds; :class:`_Conversation` owns and
  closes every socket, and cuts a conversation whose deadline passed.
* A connection that closes without any reply, or a reply it cannot classify, makes
  ``scan_stream`` return ``None`` (no virus found).  A scanner must never fail open, so
  a message is only "clean" when clamd literally said ``stream: OK``.

Every failure becomes a :class:`ScanResult` with status ``"error"`` and a message naming
the clamd endpoint; what to do with such a message is ``clamav_failure_action``, applied
by the content pipeline. One failure is not clamd's but the message's: a message larger
than clamd's ``StreamMaxLength`` is refused the same way on every retry, so deferring it
would loop until it expired. Its status is ``"unchecked"``: the pipeline gives it a
final verdict (UNCHECKED) instead.
"""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import pyclamd

from filterd.config.types import Endpoint

ScanStatus = Literal["clean", "infected", "error", "unchecked"]

_CHUNK = 64 * 1024
"""INSTREAM chunk size: big enough to keep the per-chunk overhead negligible at 1 MB."""

_SIZE_LIMIT_REPLY = b"INSTREAM size limit exceeded"


@dataclass
class ScanResult:
    """What clamd said about one message, or why it could not say anything."""

    status: ScanStatus
    virus_names: list[str] = field(default_factory=list)
    error: str | None = None
    elapsed: float = 0.0


class _Aborted(Exception):
    """The event loop gave up on this conversation: stop the worker thread, nobody waits."""


class _BadReply(Exception):
    """clamd (or whatever listens there) answered something pyclamd cannot parse."""


class _Conversation:
    """The sockets of one scan: closed when it ends, cut when the event loop gives up.

    pyclamd closes its socket only on success, so the conversation closes every socket it
    handed out.  ``asyncio.wait_for`` cannot stop a thread; shutting its socket down makes
    the blocked ``connect``/``send``/``recv`` return at once, so a stuck clamd does not pin
    executor threads for several more socket timeouts (pyclamd retries a timed-out
    ``recv`` five times).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._aborted = False
        self.received = bytearray()

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            if self._aborted:
                sock.close()
                raise _Aborted()
            self._sockets.append(sock)

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


class _Channel:
    """A socket as pyclamd uses it, with complete writes and recorded replies."""

    def __init__(self, sock: socket.socket, conversation: _Conversation) -> None:
        self._sock = sock
        self._conversation = conversation

    def send(self, data: bytes) -> int:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            pending = self._pending_reply()
            if _SIZE_LIMIT_REPLY in pending:
                raise pyclamd.BufferTooLongError(pending.decode("ascii", "replace").strip()) from exc
            raise
        return len(data)

    def recv(self, size: int) -> bytes:
        data = self._sock.recv(size)
        self._conversation.received += data
        return data

    def close(self) -> None:
        self._sock.close()

    def _pending_reply(self) -> bytes:
        """What clamd wrote before it closed on us (its reason for closing), if anything."""
        try:
            self._sock.setblocking(False)
            return self._sock.recv(4096)
        except OSError:
            return b""


class _Connecting:
    """Mixin: pyclamd's protocol code over sockets the conversation owns.

    Replaces pyclamd's ``_init_socket`` (create, set the timeout, connect) so the socket
    is registered before ``connect`` and closed even when pyclamd gives up half way.
    """

    clamd_socket: Any
    timeout: float
    _conversation: _Conversation

    def _address(self) -> tuple[int, Any]:
        raise NotImplementedError

    def _init_socket(self) -> None:
        family, address = self._address()
        sock = socket.socket(family, socket.SOCK_STREAM)
        self._conversation.attach(sock)
        sock.settimeout(self.timeout)
        sock.connect(address)
        self.clamd_socket = _Channel(sock, self._conversation)


class _UnixClient(_Connecting, pyclamd.ClamdUnixSocket):
    def __init__(self, path: str, timeout: float, conversation: _Conversation) -> None:
        self._conversation = conversation
        super().__init__(filename=path, timeout=timeout)

    def _address(self) -> tuple[int, Any]:
        return socket.AF_UNIX, self.unix_socket


class _InetClient(_Connecting, pyclamd.ClamdNetworkSocket):
    def __init__(self, host: str, port: int, timeout: float, conversation: _Conversation) -> None:
        self._conversation = conversation
        super().__init__(host=host, port=port, timeout=timeout)

    def _address(self) -> tuple[int, Any]:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET, (self.host, self.port)


def _root_cause(exc: BaseException) -> BaseException:
    """pyclamd replaces socket errors with its own vague ConnectionError; find the real one."""
    while True:
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            return exc
        exc = inner


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _BadReply):
        return str(exc)
    cause = _root_cause(exc)
    if isinstance(cause, TimeoutError):
        return "timed out"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror[0].lower() + cause.strerror[1:]
    return str(cause) or type(cause).__name__


class ClamavScanner:
    """Scans whole messages with the clamd at ``clamav_socket``.

    ``failure_action`` (``clamav_failure_action``) is kept here for the pipeline: it is
    the scanner's configuration, but the decision to defer or pass belongs to the caller.
    """

    def __init__(self, cfg: Any) -> None:
        self.endpoint: Endpoint = cfg.get("clamav_socket")
        self.timeout: float = cfg.get("clamav_timeout")
        self.failure_action: str = cfg.get("clamav_failure_action")

    def _client(self, conversation: _Conversation) -> pyclamd.pyclamd._ClamdGeneric:
        if self.endpoint.kind == "unix":
            return _UnixClient(self.endpoint.path, self.timeout, conversation)
        return _InetClient(self.endpoint.host, self.endpoint.port, self.timeout, conversation)

    def _error(self, message: str, started: float) -> ScanResult:
        return ScanResult("error", [], f"clamd at {self.endpoint}: {message}", time.monotonic() - started)

    async def scan(self, data: bytes) -> ScanResult:
        """Scan ``data`` (a whole RFC 822 message: clamd decodes MIME itself). Never raises."""
        started = time.monotonic()
        conversation = _Conversation()
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(None, self._scan_blocking, data, conversation)
        try:
            reply = await asyncio.wait_for(job, self.timeout)
        except TimeoutError:
            conversation.abort()
            return self._error(f"no answer within {self.timeout:g}s", started)
        except pyclamd.BufferTooLongError as exc:
            return ScanResult("unchecked", [], f"clamd at {self.endpoint}: {exc} ({len(data)} bytes; "
                              "clamd's StreamMaxLength is smaller)", time.monotonic() - started)
        except (OSError, _BadReply) as exc:
            return self._error(_describe(exc), started)
        return self._interpret(reply, bytes(conversation.received), started)

    def _scan_blocking(self, data: bytes, conversation: _Conversation) -> dict[str, tuple[str, str]] | None:
        try:
            return self._client(conversation).scan_stream(io.BytesIO(data), chunk_size=_CHUNK)
        except pyclamd.BufferTooLongError:
            raise
        except (IndexError, TypeError, ValueError) as exc:
            # pyclamd's reply parser fails this way on text without "name: status".
            text = bytes(conversation.received).decode("ascii", "replace").strip()
            raise _BadReply(f"unexpected reply {text!r}") from exc
        finally:
            conversation.close()

    def _ping_blocking(self, conversation: _Conversation) -> bool:
        try:
            return bool(self._client(conversation).ping())
        finally:
            conversation.close()

    def _interpret(
        self, reply: dict[str, tuple[str, str]] | None, raw: bytes, started: float
    ) -> ScanResult:
        elapsed = time.monotonic() - started
        if reply is None:
            if raw.strip() == b"stream: OK":
                return ScanResult("clean", [], None, elapsed)
            text = raw.decode("ascii", "replace").strip()
            return self._error(f"unexpected reply {text!r}" if text else "closed without a reply", started)
        found = [name for status, name in reply.values() if status == "FOUND"]
        if found:
            return ScanResult("infected", found, None, elapsed)
        errors = "; ".join(name for status, name in reply.values() if status == "ERROR")
        if _SIZE_LIMIT_REPLY.decode() in errors:  # the message's size, not clamd's trouble
            return ScanResult("unchecked", [], f"clamd at {self.endpoint}: {errors} (clamd's StreamMaxLength "
                              "is smaller than the message)", elapsed)
        return self._error(errors or "empty error reply", started)

    async def ping(self) -> bool:
        """True when clamd answers PING with PONG within ``clamav_timeout``."""
        conversation = _Conversation()
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(None, self._ping_blocking, conversation)
        try:
            return await asyncio.wait_for(job, self.timeout)
        except TimeoutError:
            conversation.abort()
            return False
        except OSError:
            return False
