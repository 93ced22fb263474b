"""The smtp and lmtp delivery agents (Postfix smtp(8) and lmtp(8)).

Given one message and a batch of its recipients for one next hop, an agent:

1. reuses a cached connection to that next hop when one is idle (after an RSET that
   proves it alive: Postfix's connection cache), or else
2. finds the addresses to try: ``domain`` by MX (then A/AAAA; a null MX bounces with
   5.1.10, see :mod:`filterd.mta.routing`), ``[host]``, ``[host]:port``, ``host:port``;
   lmtp also ``unix:/path`` and ``inet:host:port`` and never looks up MX. At most
   ``smtp_mx_address_limit`` addresses of the ``inet_protocols`` families are tried,
   and at most ``smtp_mx_session_limit`` sessions that got past the greeting;
3. goes through the addresses in order: a refused or timed-out connection, a greeting
   other than 2xx, a refused EHLO or a dropped session moves on to the next address,
   and so do the recipients that one server deferred (4xx) while another is left,
   as Postfix tries its backup MX hosts;
4. on a session: STARTTLS when offered and ``smtp_tls_security_level`` is ``may``
   (certificates not verified; a failed handshake is retried on the same address in
   plain text, as Postfix does), MAIL FROM with SIZE, BODY=8BITMIME, SMTPUTF8 and DSN's
   RET/ENVID when offered, one RCPT TO per recipient with NOTIFY/ORCPT, DATA and the
   body streamed from the queue file, all pipelined when the server offers it;
5. answers one :class:`RecipientResult` per recipient, with Postfix's words
   (``host mx.example[192.0.2.1] said: 550 5.1.1 <x@y>: User unknown (in reply to RCPT
   TO command)``), the remote reply as it was (for the bounce's Diagnostic-Code), and
   ``site_failure`` only when a session failed as a whole.

The mapping of replies to results and the choice of addresses are pure functions
(:func:`reply_result`, :func:`session_result`, :func:`select_targets`), tested alone.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from filterd.log import event
from filterd.mta.delivery import BOUNCED, DEFERRED, SENT, DeliveryAgent, DeliveryReport, OutgoingMessage, RecipientResult
from filterd.mta.queuefile import ENCODING_ATTR, ENVID_ATTR, RET_ATTR, SMTPUTF8_ATTR, Recipient
from filterd.mta.routing import Failure, MxResolver, Target
from filterd.smtp.conversation import LOST, TIMEOUT, Connection, ConversationError, ServerReply, parse_extensions
from filterd.smtp.xforward import xtext_encode

if TYPE_CHECKING:
    from filterd.config import Config

log = logging.getLogger("filterd.smtp")

PREFETCH = 256 * 1024
"""Messages up to this size are read whole before connecting (one thread hop); larger
ones are streamed from the queue file in batches of STREAM_BATCH bytes. Either way a
delivery holds at most about this much of its message (times default_process_limit)."""
STREAM_BATCH = 256 * 1024



# -- settings ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ClientSettings:
    """One transport's parameters (``smtp_*`` or ``lmtp_*``)."""

    protocol: str = "smtp"
    helo_name: str = "localhost"
    connect_timeout: float = 30.0
    helo_timeout: float = 300.0
    starttls_timeout: float = 300.0
    mail_timeout: float = 300.0
    rcpt_timeout: float = 300.0
    data_init_timeout: float = 120.0
    data_xfer_timeout: float = 180.0
    data_done_timeout: float = 600.0
    rset_timeout: float = 20.0
    quit_timeout: float = 300.0
    tls_level: str = "may"
    address_limit: int = 5
    session_limit: int = 2
    skip_5xx_greeting: bool = True
    cache: bool = True
    cache_time_limit: float = 2.0
    reuse_time_limit: float = 300.0
    cache_size: int = 20
    """Idle connections kept per next hop (the transport's destination concurrency)."""
    families: tuple[str, ...] = ("all",)
    myhostname: str = "localhost"

    @property
    def lmtp(self) -> bool:
        return self.protocol == "lmtp"

    @property
    def default_port(self) -> int:
        return 24 if self.lmtp else 25

    @property
    def hello(self) -> str:
        return "LHLO" if self.lmtp else "EHLO"

    @classmethod
    def from_config(cls, cfg: "Config", protocol: str) -> "ClientSettings":
        t = protocol
        helo = "lhlo" if t == "lmtp" else "helo"
        return cls(
            protocol=t, helo_name=cfg.get(f"{t}_{helo}_name"),
            connect_timeout=cfg.get(f"{t}_connect_timeout"), helo_timeout=cfg.get(f"{t}_{helo}_timeout"),
            starttls_timeout=cfg.get(f"{t}_starttls_timeout"), mail_timeout=cfg.get(f"{t}_mail_timeout"),
            rcpt_timeout=cfg.get(f"{t}_rcpt_timeout"), data_init_timeout=cfg.get(f"{t}_data_init_timeout"),
            data_xfer_timeout=cfg.get(f"{t}_data_xfer_timeout"),
            data_done_timeout=cfg.get(f"{t}_data_done_timeout"), rset_timeout=cfg.get(f"{t}_rset_timeout"),
            quit_timeout=cfg.get(f"{t}_quit_timeout"), tls_level=cfg.get(f"{t}_tls_security_level") or "none",
            address_limit=cfg.get(f"{t}_mx_address_limit"), session_limit=cfg.get(f"{t}_mx_session_limit"),
            skip_5xx_greeting=cfg.get(f"{t}_skip_5xx_greeting"),
            cache=cfg.get(f"{t}_connection_cache_on_demand"),
            cache_time_limit=cfg.get(f"{t}_connection_cache_time_limit"),
            reuse_time_limit=cfg.get(f"{t}_connection_reuse_time_limit"),
            cache_size=cfg.get(f"{t}_destination_concurrency_limit"),
            families=tuple(f.lower() for f in cfg.get("inet_protocols")), myhostname=cfg.get("myhostname"))


# -- where to connect ------------------------------------------------------------------------
@dataclass(frozen=True)
class Peer:
    """A server to talk to: a host name and an IP address and port, or a UNIX socket."""

    host: str
    address: str
    port: int | None = None
    """None for a UNIX-domain socket (``address`` is then its path)."""

    @property
    def name(self) -> str:
        """``host[address]``, as Postfix names a server in its reasons."""
        return f"{self.host}[{self.address}]"

    @property
    def relay(self) -> str:
        """``host[address]:port`` (``host[path]`` for a socket), Postfix's ``relay=``."""
        return self.name if self.port is None else f"{self.name}:{self.port}"


def _family(address: str) -> str:
    try:
        return "ipv6" if ipaddress.ip_address(address).version == 6 else "ipv4"
    except ValueError:
        return "ipv4"


def select_targets(targets: Sequence[Target], families: Sequence[str], limit: int) -> list[Peer]:
    """The addresses to try, in order: those of an enabled family (``inet_protocols``:
    ipv4, ipv6, all), each once, at most ``limit`` of them (0 = no limit)."""
    allowed = set(families)
    if "all" in allowed or not allowed:
        allowed = {"ipv4", "ipv6"}
    out: list[Peer] = []
    seen: set[tuple[str, int]] = set()
    for t in targets:
        if _family(t.address) not in allowed or (t.address, t.port) in seen:
            continue
        seen.add((t.address, t.port))
        out.append(Peer(t.host, t.address, t.port))
        if limit and len(out) >= limit:
            break
    return out


# -- replies and failures as results -------------------------------------------------------
def reply_dsn(reply: ServerReply) -> str:
    """The reply's enhanced status code, or one derived from its code (Postfix: 2.0.0,
    4.0.0, 5.0.0); a code of another class counts as a temporary failure."""
    return reply.enhanced or {2: "2.0.0", 5: "5.0.0"}.get(reply.code // 100, "4.0.0")


def reply_status(reply: ServerReply) -> str:
    return {2: SENT, 5: BOUNCED}.get(reply.code // 100, DEFERRED)


def reply_result(recipient: Recipient, reply: ServerReply, command: str, peer: Peer) -> RecipientResult:
    """A recipient's result from a server's reply to ``command`` (``RCPT TO``, ``end of
    DATA``...): a 2xx is sent (the reason is the reply), 5xx bounced, anything else deferred
    (``host H[A] said: <reply> (in reply to <command> command)``)."""
    status = reply_status(reply)
    reason = reply.text if status == SENT else f"host {peer.name} said: {reply.text} (in reply to {command} command)"
    return RecipientResult(recipient, status, reply_dsn(reply), reason, peer.relay, peer.host, reply.text)


def session_result(recipient: Recipient, error: ConversationError, peer: Peer) -> RecipientResult:
    """A recipient's result when the conversation broke (always deferred, 4.4.2)."""
    if error.kind == LOST:
        reason = f"lost connection with {peer.name} while {error.stage}"
    elif error.kind == TIMEOUT:
        reason = f"conversation with {peer.name} timed out while {error.stage}"
    else:
        reason = f"{error.detail} from {peer.name} while {error.stage}"
    return RecipientResult(recipient, DEFERRED, "4.4.2", reason, peer.relay, peer.host)


def local_result(recipient: Recipient, status: str, dsn: str, reason: str,
                 peer: Peer | None = None) -> RecipientResult:
    """A result decided by the client itself (no reply to quote)."""
    return RecipientResult(recipient, status, dsn, reason, peer.relay if peer else "none",
                           peer.host if peer else "")


_NOTIFY = re.compile(r"NEVER|(?:SUCCESS|FAILURE|DELAY)(?:,(?:SUCCESS|FAILURE|DELAY))*")
"""A NOTIFY value as RFC 3461 has it; anything else in the queue file is not passed on."""


def _bad_address(address: str) -> bool:
    """An address that must not be written into a command: a control character would
    end the command early and start another."""
    return not address.isprintable() or len(address) > 1000


# -- the session --------------------------------------------------------------------------------
class _SessionFailed(Exception):
    """A session could not be opened: ``results`` has every pending recipient's result;
    ``tls_failed`` says the TLS handshake failed (at ``may``, the address is then tried
    again in plain text)."""

    def __init__(self, results: dict[int, RecipientResult], tls_failed: bool = False):
        self.results = results
        self.tls_failed = tls_failed


@dataclass
class _Session:
    """An open session past EHLO (and STARTTLS), with what the server offers; its ages
    decide whether the cache may keep and reuse it."""

    conn: Connection
    peer: Peer
    extensions: dict[str, str]
    opened: float = field(default_factory=time.monotonic)
    idle_since: float = field(default_factory=time.monotonic)


@dataclass
class _Content:
    """What is known of the message before MAIL FROM (BODY=8BITMIME needs it)."""

    data: bytes | None
    """The whole message when small enough to hold, else None (streamed)."""
    eight_bit: bool


class _ConnectionCache:
    """Idle sessions per next hop, kept ``cache_time_limit`` seconds and never reused
    past ``reuse_time_limit`` of age (Postfix's scache, in process)."""

    def __init__(self, settings: ClientSettings):
        self.settings = settings
        self._idle: dict[str, list[_Session]] = {}

    def take(self, key: str) -> _Session | None:
        """The most recently used idle session to ``key`` still young enough, if any."""
        pool = self._idle.get(key)
        now = time.monotonic()
        while pool:
            session = pool.pop()
            if now - session.idle_since < self.settings.cache_time_limit \
                    and now - session.opened < self.settings.reuse_time_limit and not session.conn.closed:
                return session
            _abandon(session)
        return None

    def put(self, key: str, session: _Session) -> bool:
        """Keep ``session`` for the next message to ``key``; False when it may not be
        kept (the caller closes it)."""
        pool = self._idle.get(key, [])
        if len(pool) >= self.settings.cache_size or session.conn.closed \
                or time.monotonic() - session.opened >= self.settings.reuse_time_limit:
            return False
        session.idle_since = time.monotonic()
        pool.append(session)
        self._idle[key] = pool
        asyncio.get_running_loop().call_later(self.settings.cache_time_limit + 0.1, self._expire, key)
        return True

    def _expire(self, key: str) -> None:
        pool = self._idle.get(key)
        if not pool:
            self._idle.pop(key, None)
            return
        now = time.monotonic()
        keep = [s for s in pool if now - s.idle_since < self.settings.cache_time_limit]
        for s in pool:
            if s not in keep:
                _abandon(s)
        if keep:
            self._idle[key] = keep
        else:
            del self._idle[key]

    def clear(self) -> list[_Session]:
        """Empty the cache, handing its sessions to the caller (to QUIT them)."""
        sessions = [s for pool in self._idle.values() for s in pool]
        self._idle.clear()
        return sessions


def _abandon(session: _Session) -> None:
    """Close an idle session: QUIT written, not waited for (the server may be gone)."""
    try:
        if not session.conn.closed:
            session.conn.writer.write(b"QUIT\r\n")
    except (OSError, RuntimeError):
        pass
    session.conn.close()


class SmtpAgent:
    """Postfix's smtp(8): the ``smtp`` transport."""

    part = "smtp"
    uses_mx = True
    """Whether a domain next hop is looked up by MX (lmtp: never)."""

    def __init__(self, settings: ClientSettings, resolver: MxResolver):
        self.settings = settings
        self.resolver = resolver
        self.cache = _ConnectionCache(settings)
        self._closing: set[asyncio.Task[None]] = set()
        self._tls: ssl.SSLContext | None = None

    # -- the DeliveryAgent interface -------------------------------------------------------
    async def deliver(self, message: OutgoingMessage, nexthop: str,
                      recipients: Sequence[Recipient]) -> DeliveryReport:
        try:
            if message.data is not None:
                content = self._in_memory(message, message.data)
            else:
                content = await asyncio.to_thread(self._prepare, message)
        except (OSError, ValueError) as exc:
            return DeliveryReport([local_result(r, DEFERRED, "4.3.0", f"cannot read the queue file: {exc}")
                                   for r in recipients])
        results: dict[int, RecipientResult] = {}
        session_level: set[int] = set()
        pending = list(recipients)

        # A cached connection to this next hop first (no address lookup at all).
        while self.settings.cache and pending:
            session = self.cache.take(nexthop)
            if session is None:
                break
            try:
                reset = await session.conn.command(b"RSET", self.settings.rset_timeout, "sending RSET")
            except ConversationError:
                reset = None
            if reset is None or reset.code // 100 != 2:
                _abandon(session)  # died or closing while idle: nothing was sent, try another
                continue
            self._transaction_done(nexthop, session, await self._run(session, message, content, pending,
                                                                     results, session_level))
            return DeliveryReport([results[id(r)] for r in recipients], self._site(results, session_level))

        peers = await self._peers(nexthop)
        if isinstance(peers, Failure):
            return DeliveryReport([local_result(r, peers.status, peers.dsn, peers.reason) for r in recipients],
                                  site_failure=peers.status == DEFERRED)
        if not peers:
            return DeliveryReport([local_result(r, DEFERRED, "4.4.4", f"no address of an enabled protocol "
                                                f"({', '.join(self.settings.families)}) for {nexthop}")
                                   for r in recipients], site_failure=True)
        sessions = 0
        for peer in peers:
            if not pending or (self.settings.session_limit and sessions >= self.settings.session_limit):
                break
            handshake = await self._attempt(peer, nexthop, message, content, pending, results, session_level)
            sessions += handshake
            pending = [r for r in pending if results[id(r)].status == DEFERRED]
        return DeliveryReport([results[id(r)] for r in recipients], self._site(results, session_level))

    async def close(self) -> None:
        """QUIT the cached connections (at shutdown) and wait for the QUITs under way."""
        sessions = self.cache.clear()
        await asyncio.gather(*(s.conn.quit(min(self.settings.quit_timeout, 5.0)) for s in sessions))
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=5.0)

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _site(results: dict[int, RecipientResult], session_level: set[int]) -> bool:
        return any(key in session_level and r.status != SENT for key, r in results.items())

    @staticmethod
    def _in_memory(message: OutgoingMessage, data: bytes) -> _Content:
        declared = message.attributes.get(ENCODING_ATTR, "").lower()
        return _Content(data, declared == "8bit" or (declared != "7bit" and not data.isascii()))

    @classmethod
    def _prepare(cls, message: OutgoingMessage) -> _Content:
        """Read a small message whole (thread). A large one is streamed later; only when
        its queue file does not say its encoding (smtpd records it; notices and older
        files may not) is it scanned for 8-bit bytes first."""
        declared = message.attributes.get(ENCODING_ATTR, "").lower()
        if message.size <= PREFETCH:
            return cls._in_memory(message, b"".join(message.content()))
        if declared in ("8bit", "7bit"):
            return _Content(None, declared == "8bit")
        it = message.content()
        try:
            return _Content(None, any(not chunk.isascii() for chunk in it))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    async def _peers(self, nexthop: str) -> list[Peer] | Failure:
        found = await self.resolver.resolve(nexthop, self.settings.default_port, self.uses_mx)
        if isinstance(found, Failure):
            return found
        return select_targets(found, self.settings.families, self.settings.address_limit)

    def _tls_context(self) -> ssl.SSLContext:
        """Opportunistic TLS: encryption without authentication (Postfix's ``may`` and
        ``encrypt`` levels verify nothing)."""
        if self._tls is None:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self._tls = ctx
        return self._tls

    async def _connect(self, peer: Peer) -> Connection:
        return await Connection.open_tcp(peer.address, peer.port or self.settings.default_port,
                                         self.settings.connect_timeout)

    async def _attempt(self, peer: Peer, nexthop: str, message: OutgoingMessage, content: _Content,
                       pending: list[Recipient], results: dict[int, RecipientResult],
                       session_level: set[int]) -> bool:
        """One address: returns whether a session got past the handshake."""
        use_tls = self.settings.tls_level in ("may", "encrypt")
        for _ in range(2):  # the second time in plain text, after a failed TLS handshake
            try:
                session = await self._open(peer, pending, use_tls)
            except _SessionFailed as failed:
                if failed.tls_failed and self.settings.tls_level == "may":
                    use_tls = False
                    continue
                results.update(failed.results)
                session_level.update(failed.results)
                return False
            self._transaction_done(nexthop, session, await self._run(session, message, content, pending,
                                                                     results, session_level))
            return True
        return False

    def _transaction_done(self, nexthop: str, session: _Session, reusable: bool) -> None:
        if reusable and self.settings.cache and self.cache.put(nexthop, session):
            return
        if session.conn.closed:
            session.conn.close()
            return
        task = asyncio.create_task(session.conn.quit(self.settings.quit_timeout))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _open(self, peer: Peer, pending: list[Recipient], use_tls: bool) -> _Session:
        """Connect, greeting, EHLO (HELO when EHLO is refused), STARTTLS."""
        s = self.settings

        def fail(*, status: str = DEFERRED, dsn: str = "4.4.1",
                 reason: str = "", reply: ServerReply | None = None,
                 tls_failed: bool = False) -> _SessionFailed:
            res = {id(r): RecipientResult(r, status, dsn, reason, peer.relay if reply else "none",
                                          peer.host if reply else "", reply.text if reply else "")
                   for r in pending}
            return _SessionFailed(res, tls_failed)

        try:
            conn = await self._connect(peer)
        except (OSError, asyncio.TimeoutError) as exc:
            if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
                what = "Connection timed out"
            elif isinstance(exc, OSError) and exc.errno:
                what = os.strerror(exc.errno)  # asyncio's own text names the address again
            else:
                what = str(exc) or type(exc).__name__
            raise fail(reason=f"connect to {peer.relay}: {what}") from None
        try:
            greeting = await conn.read_reply(s.helo_timeout, "receiving the initial server greeting")
            if greeting.code // 100 != 2:
                dsn = reply_dsn(greeting)
                if dsn.startswith("5") and s.skip_5xx_greeting:
                    dsn = "4" + dsn[1:]
                raise fail(status=BOUNCED if dsn.startswith("5") else DEFERRED, dsn=dsn, reply=greeting,
                           reason=f"host {peer.name} refused to talk to me: {greeting.text}")
            hello = s.hello
            reply = await conn.command(f"{hello} {s.helo_name}".encode("ascii", "replace"), s.helo_timeout,
                                       f"performing the {hello} handshake")
            if reply.code // 100 != 2 and not s.lmtp:
                hello = "HELO"
                reply = await conn.command(f"HELO {s.helo_name}".encode("ascii", "replace"), s.helo_timeout,
                                           "performing the HELO handshake")
            if reply.code // 100 != 2:
                raise fail(status=reply_status(reply), dsn=reply_dsn(reply), reply=reply,
                           reason=f"host {peer.name} said: {reply.text} (in reply to {hello} command)")
            extensions = parse_extensions(reply) if hello != "HELO" else {}
            if use_tls and "STARTTLS" in extensions:
                answer = await conn.command(b"STARTTLS", s.starttls_timeout, "sending the STARTTLS command")
                if answer.code == 220:
                    try:
                        await conn.starttls(self._tls_context(), None, s.starttls_timeout)
                    except (ssl.SSLError, OSError, asyncio.TimeoutError, ConnectionError) as exc:
                        conn.close()
                        log.warning("TLS handshake with %s failed (%s)%s", peer.relay, exc,
                                    ": trying again in plain text" if s.tls_level == "may" else "")
                        raise fail(dsn="4.7.5", reason=f"Cannot start TLS: handshake failure with {peer.relay}",
                                   tls_failed=True) from None
                    event(self.part, f"Untrusted TLS connection established to {peer.relay}: "
                                     f"{conn.tls_summary()}")
                    reply = await conn.command(f"{hello} {s.helo_name}".encode("ascii", "replace"),
                                               s.helo_timeout, f"performing the {hello} handshake")
                    if reply.code // 100 != 2:
                        raise fail(status=reply_status(reply), dsn=reply_dsn(reply), reply=reply,
                                   reason=f"host {peer.name} said: {reply.text} (in reply to {hello} command)")
                    extensions = parse_extensions(reply)
                elif s.tls_level == "encrypt":
                    raise fail(dsn="4.7.4", reply=answer, reason=f"TLS is required, but host {peer.name} "
                                                                 f"refused to start TLS: {answer.text}")
            elif s.tls_level == "encrypt":
                raise fail(dsn="4.7.4", reason=f"TLS is required, but was not offered by host {peer.name}")
            return _Session(conn, peer, extensions)
        except _SessionFailed as failed:
            if not conn.closed:
                task = asyncio.create_task(conn.quit(s.quit_timeout))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            raise failed
        except ConversationError as error:
            conn.close()
            raise _SessionFailed({id(r): session_result(r, error, peer) for r in pending}) from None

    async def _body(self, message: OutgoingMessage, content: _Content) -> AsyncIterator[bytes]:
        if content.data is not None:
            yield content.data
            return
        it = message.content()
        try:
            while True:
                batch = await asyncio.to_thread(_pull, it, STREAM_BATCH)
                if not batch:
                    return
                yield batch
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                await asyncio.to_thread(close)

    async def _run(self, session: _Session, message: OutgoingMessage, content: _Content,
                   pending: list[Recipient], results: dict[int, RecipientResult],
                   session_level: set[int]) -> bool:
        """One transaction; fills ``results`` for ``pending``. True when the session may
        carry another message."""
        s, peer, conn, ext = self.settings, session.peer, session.conn, session.extensions
        for r in pending:
            session_level.discard(id(r))
        sender = message.sender
        addresses = [sender] + [r.address for r in pending]
        utf8_needed = not all(a.isascii() for a in addresses)
        if utf8_needed and "SMTPUTF8" not in ext:
            for r in pending:
                results[id(r)] = local_result(r, BOUNCED, "5.6.7", f"SMTPUTF8 is required, but was not offered "
                                                                   f"by host {peer.name}", peer)
            return True
        limit = ext.get("SIZE", "")
        if limit.isdigit() and int(limit) and message.size > int(limit):
            for r in pending:
                results[id(r)] = local_result(r, BOUNCED, "5.3.4", f"message size {message.size} exceeds size "
                                                                   f"limit {limit} of server {peer.name}", peer)
            return True
        if _bad_address(sender):
            for r in pending:
                results[id(r)] = local_result(r, BOUNCED, "5.1.7", "invalid sender address syntax", peer)
            return True
        rcpts = []
        for r in pending:
            if _bad_address(r.address):
                results[id(r)] = local_result(r, BOUNCED, "5.1.3", "bad recipient address syntax", peer)
            else:
                rcpts.append(r)
        if not rcpts:
            return True

        # MAIL FROM and RCPT TO, with the extensions the server offers.
        enc = "utf-8" if utf8_needed else "ascii"
        mail = [f"MAIL FROM:<{sender}>"]
        if "SIZE" in ext:
            mail.append(f"SIZE={message.size}")
        if "8BITMIME" in ext and content.eight_bit:
            mail.append("BODY=8BITMIME")
        if "SMTPUTF8" in ext and (utf8_needed or message.attributes.get(SMTPUTF8_ATTR) == "yes"):
            mail.append("SMTPUTF8")
        dsn = "DSN" in ext
        if dsn:
            ret = message.attributes.get(RET_ATTR, "").upper()
            if ret in ("FULL", "HDRS"):
                mail.append(f"RET={ret}")
            envid = message.attributes.get(ENVID_ATTR, "")
            if envid and envid.isprintable():
                mail.append(f"ENVID={xtext_encode(envid)}")
        commands = [" ".join(mail).encode(enc, "surrogateescape")]
        for r in rcpts:
            line = f"RCPT TO:<{r.address}>"
            notify = r.notify.upper().replace(" ", "")
            if dsn and _NOTIFY.fullmatch(notify):
                line += f" NOTIFY={notify}"
            if dsn and r.orcpt and r.orcpt.isprintable():
                kind, sep, addr = r.orcpt.partition(";")
                line += f" ORCPT={kind};{xtext_encode(addr)}" if sep and kind.isalnum() else f" ORCPT=rfc822;{xtext_encode(r.orcpt)}"
            commands.append(line.encode(enc, "surrogateescape"))

        accepted: list[Recipient] = []
        decided: set[int] = set()
        """Recipients with a reply of their own in this transaction."""
        closing: tuple[ServerReply, str] | None = None
        """A 421 (the server ends the session) and its command: if the connection then
        ends, the undecided recipients get this reply rather than "lost connection"."""

        def seen(reply: ServerReply, command: str) -> ServerReply:
            nonlocal closing
            if reply.code == 421 and closing is None:
                closing = (reply, command)
            return reply

        pipelining = "PIPELINING" in ext
        stage = "sending MAIL FROM"
        try:
            if pipelining:  # MAIL, every RCPT and DATA in one write; replies in order
                for command in commands:
                    conn.queue(command)
                conn.queue(b"DATA")
                await conn.flush(s.mail_timeout, stage)
                mail_reply = seen(await conn.read_reply(s.mail_timeout, stage), "MAIL FROM")
            else:
                mail_reply = seen(await conn.command(commands[0], s.mail_timeout, stage), "MAIL FROM")
            mail_ok = mail_reply.code // 100 == 2
            if not mail_ok:
                for r in rcpts:
                    results[id(r)] = reply_result(r, mail_reply, "MAIL FROM", peer)
                    decided.add(id(r))
            stage = "sending RCPT TO"
            if mail_ok or pipelining:
                for r, command in zip(rcpts, commands[1:]):
                    reply = seen(await conn.read_reply(s.rcpt_timeout, stage) if pipelining
                                 else await conn.command(command, s.rcpt_timeout, stage), "RCPT TO")
                    if not mail_ok:
                        continue  # the replies of a refused transaction, read and ignored
                    if reply.code // 100 == 2:
                        accepted.append(r)
                    else:
                        results[id(r)] = reply_result(r, reply, "RCPT TO", peer)
                        decided.add(id(r))
            data_reply: ServerReply | None = None
            if pipelining:
                stage = "sending DATA command"
                data_reply = seen(await conn.read_reply(s.data_init_timeout, stage), "DATA")
            if not accepted:
                if data_reply is not None and data_reply.code == 354:
                    await self._empty_data(conn)
                return closing is None
            if data_reply is None:
                stage = "sending DATA command"
                data_reply = seen(await conn.command(b"DATA", s.data_init_timeout, stage), "DATA")
            if data_reply.code != 354:
                for r in accepted:
                    results[id(r)] = reply_result(r, data_reply, "DATA", peer)
                return closing is None
            stage = "sending message body"
            try:
                await conn.send_body(self._body(message, content), s.data_xfer_timeout, stage)
            except (OSError, ValueError) as exc:
                # The queue file failed mid-body: drop the connection, so that the server
                # never sees a final dot and discards what it got.
                conn.close()
                for r in accepted:
                    results[id(r)] = local_result(r, DEFERRED, "4.3.0", f"cannot read the queue file: {exc}")
                return False
            stage = "sending end of data -- message may be sent more than once"
            if s.lmtp:
                for r in accepted:  # one reply each, in RCPT order (RFC 2033)
                    results[id(r)] = reply_result(r, await conn.read_reply(s.data_done_timeout, stage),
                                                  "end of DATA", peer)
                    decided.add(id(r))
            else:
                reply = await conn.read_reply(s.data_done_timeout, stage)
                for r in accepted:
                    results[id(r)] = reply_result(r, reply, "end of DATA", peer)
            return True
        except ConversationError as error:
            conn.close()
            for r in rcpts:
                if id(r) not in decided:
                    results[id(r)] = (reply_result(r, closing[0], closing[1], peer) if closing
                                      else session_result(r, error, peer))
                if id(r) not in decided or closing:  # a 421 ends the session: a site failure
                    session_level.add(id(r))
            return False

    async def _empty_data(self, conn: Connection) -> None:
        """A server that said 354 with no recipient accepted (pipelining) gets an empty
        message's dot, as RFC 2920 asks; its reply means nothing."""
        await conn.write(b".\r\n", self.settings.data_xfer_timeout, "sending end of data")
        await conn.read_reply(self.settings.data_done_timeout, "sending end of data")


def _pull(it: Iterator[bytes], size: int) -> bytes:
    """Up to about ``size`` bytes from a blocking iterator (thread); b"" at the end."""
    out = bytearray()
    for chunk in it:
        out += chunk
        if len(out) >= size:
            break
    return bytes(out)


class LmtpAgent(SmtpAgent):
    """Postfix's lmtp(8): LHLO, one reply per recipient after the dot, next hops
    ``unix:/path``, ``inet:host:port``, ``host:port`` and ``[host]:port`` (port 24 by
    default), and no MX lookup."""

    part = "lmtp"
    uses_mx = False

    async def _peers(self, nexthop: str) -> list[Peer] | Failure:
        hop = nexthop.strip()
        if hop.startswith("unix:"):
            return [Peer(self.settings.myhostname, hop[len("unix:"):], None)]
        return await super()._peers(hop)  # the rest is read by routing.parse_nexthop

    async def _connect(self, peer: Peer) -> Connection:
        if peer.port is None:
            return await Connection.open_unix(peer.address, self.settings.connect_timeout)
        return await super()._connect(peer)


def network_agents(cfg: "Config") -> dict[str, SmtpAgent]:
    """The network transports for ``QueueManager.from_config(cfg, agents)``: ``smtp``
    and ``lmtp``, sharing one resolver."""
    resolver = MxResolver.from_config(cfg)
    return {"smtp": SmtpAgent(ClientSettings.from_config(cfg, "smtp"), resolver),
            "lmtp": LmtpAgent(ClientSettings.from_config(cfg, "lmtp"), resolver)}
