"""Greylisting decisions with postgrey 1.37's behaviour, protocol-neutral.

The restriction engine calls :meth:`Greylister.check` once per recipient and turns the
result into its protocol's reply: ``defer`` -> ``DEFER_IF_PERMIT <text>`` (postgrey's
default greylist action), ``pass`` with a header -> ``PREPEND <header>``, anything else
-> ``DUNNO``.

Order of checks, as postgrey: client whitelist (names, then addresses), recipient
whitelist, auto-whitelisted client, then the triplet. What it costs per request: the
whitelists are dictionary lookups, the client's network is cached, and the triplet is
decided by the store without waiting when it can (the SQLite store reads the row and
writes the sighting behind the reply); otherwise it goes in a batch with every other
request waiting at the same time. Auto-whitelist bookkeeping -- counting a pass, refreshing
a whitelisted client once an hour -- only affects later requests, so it is written after
the replies are out. Each process remembers which clients it saw auto-whitelisted (until
their next hourly refresh is due) and which triplets it saw pass (for an hour), and
answers those without asking the store: neither state can be undone by another worker
before it expires, so the answer is the store's. Where this differs from postgrey: a
passed triplet's last-seen time is stored at most hourly per process, so after 35 days of
silence it may be forgotten up to an hour early; and the SQLite store writes sightings
within 0.1 s, not at once, so another worker may take a retry within that moment for a
first attempt (both are deferred: the delay is minutes) and a crash may forget that
moment's first attempts (they are greylisted again).
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, TypeVar

from filterd.actions import split_dsn
from filterd.config import Config
from filterd.greylist.batcher import Batcher
from filterd.greylist.store import (
    CleanupStats,
    ClientState,
    GreylistStore,
    Sighting,
    StoreBusy,
    Timing,
    TripletState,
)
from filterd.greylist.triplet import Client, normalise_sender, parse_client, recipient_domain
from filterd.greylist.whitelist import ClientWhitelist, RecipientWhitelist

log = logging.getLogger("filterd.greylist")

try:
    VERSION = importlib.metadata.version("filterd")
except importlib.metadata.PackageNotFoundError:  # running from a checkout never installed
    VERSION = "unknown"

CLEANUP_INTERVAL = 3600  # postgrey attempts maintenance hourly too
CLEANUP_RETRY = 60  # seconds before a cleanup that found the store locked is tried again
AWL_REFRESH = 3600  # postgrey counts and refreshes a client at most once an hour
PASSED_MEMORY = 3600  # how long a process answers a passed triplet without the store
_INSTANCES = 4096  # messages remembered per process for "one X-Greylist header each"
_CACHE = 65536  # bound of the per-process client caches
AWL_RETRY_MAX = 1.0  # longest pause before trying a locked auto-whitelist write again
_AWL_PENDING = 65536  # auto-whitelist updates kept while the store stays locked
_STARTS_WITH_DIGIT = re.compile(r"[0-9]")
_V = TypeVar("_V")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class GreylistResult(NamedTuple):
    """One decision.

    ``action``: ``pass``, ``defer``, ``whitelisted`` (by the whitelist files) or ``awl``
    (auto-whitelisted client). ``header``: the X-Greylist header to prepend, only on the
    first pass of a triplet and once per message instance. ``dsn`` and ``body``: the
    deferral reply, its enhanced status code (postgrey's ``4.2.0``; None when the
    configured text has none) and its text. ``delay_left``: seconds still to wait
    (defer) or seconds the triplet was delayed (its first pass; 0 later). ``reason``:
    evidence for the log.
    """

    action: str
    header: str | None
    dsn: str | None
    body: str
    delay_left: int
    reason: str

    @property
    def text(self) -> str:
        """The deferral text as postgrey answers it: status code, then text."""
        return f"{self.dsn} {self.body}" if self.dsn else self.body


_AWL = GreylistResult("awl", None, None, "", 0, "client auto-whitelisted")
_PASSED = GreylistResult("pass", None, None, "", 0, "triplet passed before")


def header_date(when: float) -> str:
    """postgrey's ``strftime("%a, %d %b %Y %T %Z", localtime)`` in the C locale."""
    t = time.localtime(when)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {t.tm_zone}")


#: A test hook, honoured only when set (never set it in production): the name of a file
#: holding a number of seconds that the greylist adds to the wall clock. Integration
#: tests move the daemon's time on by writing it, instead of sleeping through a delay
#: with a fraction of a second to spare. The file is read at every look at the clock
#: (a small synchronous read: acceptable for a test hook, which is why it is one).
TEST_CLOCK_FILE = "FILTERD_TEST_CLOCK_FILE"


def greylist_clock(environ: Mapping[str, str] = os.environ) -> Callable[[], float]:
    """The clock a daemon's greylist reads: ``time.time``, or with :data:`TEST_CLOCK_FILE`
    set, ``time.time`` plus the offset in that file (0 while it does not exist)."""
    path = environ.get(TEST_CLOCK_FILE)
    if not path:
        return time.time

    def clock() -> float:
        try:
            with open(path, encoding="ascii") as f:
                text = f.read(64).strip()
        except FileNotFoundError:
            return time.time()
        try:
            return time.time() + float(text or 0)
        except ValueError:
            raise ValueError(f"{TEST_CLOCK_FILE} file {path}: expected a number of seconds, got {text!r}") from None

    return clock


class Greylister:
    """postgrey's decisions over a shared :class:`GreylistStore` (which it opens and closes)."""

    def __init__(self, cfg: Config, store: GreylistStore, hostname: str,
                 clock: Callable[[], float] = time.time):
        self._cfg = cfg
        self._store = store
        self._hostname = hostname
        self._clock = clock
        self.timing = Timing.from_config(cfg)
        text = cfg.get("greylist_text")
        # postgrey adds 4.2.0 when the client is Postfix >= 2.3 (it sends etrn_domain),
        # as every client of filterd is; 4.2.0 instead of 4.7.1 works around Exchange.
        # Split once here: the engine needs the status code and the text apart.
        self._dsn, self._body = split_dsn(text if _STARTS_WITH_DIGIT.match(text) else f"4.2.0 {text}")
        self._add_header = bool(cfg.get("greylist_header"))
        by_subnet = bool(cfg.get("greylist_lookup_by_subnet"))
        v4_bits = int(cfg.get("greylist_ipv4_netmask"))
        v6_bits = int(cfg.get("greylist_ipv6_netmask"))

        @functools.lru_cache(maxsize=_CACHE)
        def client(address: str) -> Client:
            return parse_client(address, by_subnet, v4_bits, v6_bits)

        self._client = client
        self.client_whitelist = ClientWhitelist()
        self.recipient_whitelist = RecipientWhitelist()
        self._whitelists_read = False
        self.reload_whitelists()
        self._instances: dict[str, None] = {}
        self._awl_until: dict[str, float] = {}  # client -> known auto-whitelisted until
        # triplet -> known passed until. A passed triplet keeps passing until it is not
        # seen for max_age; answering it from memory for up to an hour only lets its
        # stored last-seen time lag by that hour.
        self._passed: dict[str, float] = {}
        self._passed_ttl = min(PASSED_MEMORY, self.timing.max_age)
        # request time -> client -> how to name it in the log (counts) / None (refreshes)
        self._to_count: dict[int, dict[str, str]] = {}
        self._to_touch: dict[int, dict[str, None]] = {}
        self._awl_task: asyncio.Task[None] | None = None
        #: Another process holds the store's lock: the auto-whitelist writes wait for it,
        #: decisions do not wait for them.
        self._awl_stalled = False
        self._cleanup_task: asyncio.Task[None] | None = None
        self._batcher: Batcher[Sighting, tuple[int, TripletState | None]] = Batcher(
            self._see, key=lambda s: s.key)

    # -- life cycle ---------------------------------------------------------------------
    def reload_whitelists(self) -> None:
        """(Re)read the whitelist files, as postgrey does on SIGHUP. Blocking file I/O.

        A list whose file has disappeared since it was read keeps what it had, with an
        error: a file deleted or moved by mistake must not silently greylist the mail of
        every client it exempted. (At start, a missing file is a warning and the list is
        read without it, as postgrey does.)
        """
        clients = ClientWhitelist.load(self._cfg.get("greylist_whitelist_clients"))
        recipients = RecipientWhitelist.load(self._cfg.get("greylist_whitelist_recipients"))
        if clients.missing and self._whitelists_read and not self.client_whitelist.missing:
            log.error("greylist: client whitelist %s cannot be read any more; keeping the "
                      "client whitelist read before", ", ".join(clients.missing))
        else:
            self.client_whitelist = clients
        if recipients.missing and self._whitelists_read and not self.recipient_whitelist.missing:
            log.error("greylist: recipient whitelist %s cannot be read any more; keeping the "
                      "recipient whitelist read before", ", ".join(recipients.missing))
        else:
            self.recipient_whitelist = recipients
        self._whitelists_read = True

    async def start(self) -> None:
        """Open the store and start the hourly cleanup of expired entries."""
        await self._store.start()
        self._cleanup_task = asyncio.get_running_loop().create_task(self._cleanup_loop())

    async def close(self) -> None:
        """Finish pending work, stop the cleanup, close the store."""
        if self._cleanup_task is not None:
            self._cleanup_task.cancel()
            await asyncio.gather(self._cleanup_task, return_exceptions=True)
            self._cleanup_task = None
        await self.flush()
        await self._store.close()

    async def flush(self, patience: float = 30.0) -> None:
        """Wait until every request so far is decided and its bookkeeping written; while
        another process holds the store's lock, for at most ``patience`` seconds (the
        writes then given up are logged). For shutting down and tests, never a request."""
        await self._batcher.drain()
        task = self._awl_task
        if task is not None and not task.done():
            done, _ = await asyncio.wait({task}, timeout=patience)
            if not done:
                task.cancel()
                lost = sum(map(len, self._to_count.values())) + sum(map(len, self._to_touch.values()))
                log.error("greylist: the store stayed locked for %.0fs; %d auto-whitelist "
                          "updates not written", patience, lost)
                self._to_count.clear()
                self._to_touch.clear()
                await asyncio.gather(task, return_exceptions=True)
        await self._store.sync()

    async def _awl_written(self) -> None:
        """Wait until the auto-whitelist writes queued so far are in the store -- unless
        another process holds its lock: then decisions go on without them (a client may
        be whitelisted one pass later), because no request waits for a lock."""
        while self._awl_task is not None and not self._awl_task.done() and not self._awl_stalled:
            await asyncio.wait({self._awl_task}, timeout=AWL_RETRY_MAX)

    async def _cleanup_loop(self) -> None:
        while True:
            try:
                await self.cleanup()
            except StoreBusy as exc:
                log.warning("greylist: cleanup of expired entries postponed: %s", exc)
                await asyncio.sleep(CLEANUP_RETRY)
                continue
            await asyncio.sleep(CLEANUP_INTERVAL)

    async def cleanup(self) -> CleanupStats | None:
        """Delete expired state now, unless another worker did so within the hour.
        Raises StoreBusy when another process holds the store's lock."""
        try:
            stats = await self._store.cleanup(int(self._clock()), self.timing, CLEANUP_INTERVAL)
        except StoreBusy:
            raise
        except Exception:
            log.exception("greylist: cleanup of expired entries failed")
            return None
        if stats is not None:
            log.info("greylist: cleanup deleted %d triplets and %d auto-whitelisted clients",
                     stats.triplets, stats.clients)
        return stats

    # -- decisions ----------------------------------------------------------------------
    async def check(self, client_address: str, client_name: str, sender: str, recipient: str,
                    instance: str = "") -> GreylistResult:
        """Decide one recipient. ``instance`` identifies the message (Postfix's attribute).

        An empty ``instance`` means the client did not send one: every first pass then
        gets the header, as postgrey does.
        """
        result = await self._check(client_address, client_name, sender, recipient, instance)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("action=%s, reason=%s, client_name=%s, client_address=%s, sender=%s, "
                      "recipient=%s", result.action, result.reason, client_name,
                      client_address, sender, recipient)
        return result

    async def _check(self, client_address: str, client_name: str, sender: str,
                     recipient: str, instance: str) -> GreylistResult:
        client = self._client(client_address)
        entry = self.client_whitelist.match(client_name, client.ip)
        if entry is not None:
            return GreylistResult("whitelisted", None, None, "", 0, f"client whitelisted by {entry}")
        entry = self.recipient_whitelist.match(recipient)
        if entry is not None:
            return GreylistResult("whitelisted", None, None, "", 0,
                                  f"recipient whitelisted by {entry}")
        if self.timing.awl_clients:
            until = self._awl_until.get(client.awl_key)
            if until is not None:
                if self._clock() < until:
                    return _AWL
                del self._awl_until[client.awl_key]
        key = f"{client.net}/{normalise_sender(sender)}/{recipient}".lower()
        until = self._passed.get(key)
        if until is not None:
            if self._clock() < until:
                return _PASSED
            del self._passed[key]
        sighting = Sighting(key, client.awl_key)
        states = None
        # Directly only when nothing is in flight: a sighting of the same key, or an
        # auto-whitelist count this decision must see, would otherwise be overtaken.
        if self._batcher.idle and (self._awl_task is None or self._awl_task.done()
                                   or self._awl_stalled):
            now = int(self._clock())
            states = self._store.see_now((sighting,), now, self.timing)
        if states is not None:
            state = states[0]
        else:
            now, state = await self._batcher.submit(sighting)
        if state is None:
            self._queue_awl(now, client.awl_key, None)
            return _AWL
        return self._decide(now, key, state, client, client_name, recipient, instance)

    async def _see(self, sightings: Sequence[Sighting]) -> list[tuple[int, TripletState | None]]:
        # A pass counted just before must be in the store before these are read: when the
        # count waited for a busy database in the thread, the read here would not wait.
        await self._awl_written()
        now = int(self._clock())
        states = await self._store.see(sightings, now, self.timing)
        return [(now, state) for state in states]

    def _decide(self, now: int, key: str, state: TripletState, client: Client,
                client_name: str, recipient: str, instance: str) -> GreylistResult:
        waited = now - state.first
        left = self.timing.delay - waited
        if left <= 0 and not state.passed and self.timing.awl_clients:
            name = f"{client_name}[{client.awl_key}]" if client_name else client.awl_key
            self._queue_awl(now, client.awl_key, name)
        if left > 0:
            body = self._body
            if "%s" in body:
                body = body.replace("%s", str(left), 1)
            if "%r" in body:
                body = body.replace("%r", recipient_domain(recipient), 1)
            reason = "new triplet" if waited == 0 else f"early retry ({left}s left)"
            return GreylistResult("defer", None, self._dsn, body, left, reason)
        self._remember(self._passed, key, now + self._passed_ttl)
        if state.passed:
            return _PASSED
        if not self._new_instance(instance):
            return GreylistResult("pass", None, None, "", waited,
                                  f"triplet passed after {waited}s; message already has "
                                  "its X-Greylist header")
        header = None
        if self._add_header:
            header = (f"X-Greylist: delayed {waited} seconds by filterd-{VERSION} at "
                      f"{self._hostname}; {header_date(now)}")
        return GreylistResult("pass", header, None, "", waited, f"triplet passed after {waited}s")

    def _new_instance(self, instance: str) -> bool:
        if not instance:
            return True
        if instance in self._instances:
            return False
        self._instances[instance] = None
        if len(self._instances) > _INSTANCES:
            del self._instances[next(iter(self._instances))]
        return True

    # -- auto-whitelist bookkeeping, after the replies ----------------------------------
    def _queue_awl(self, now: int, client: str, name: str | None) -> None:
        """Count a first pass (``name`` given) or refresh an auto-whitelisted client.

        The writes go out in one background task per event-loop turn, stamped with the
        time of the request that caused them; the store's connection runs calls in
        order, so this process's next batch already sees them.
        """
        if name is None:
            self._to_touch.setdefault(now, {})[client] = None
        else:
            self._to_count.setdefault(now, {})[client] = name
        if self._awl_task is None or self._awl_task.done():
            self._awl_task = asyncio.get_running_loop().create_task(self._write_awl())

    async def _write_awl(self) -> None:
        """Write the queued counts and refreshes, oldest first. When another process
        holds the store's lock, what is not written yet goes back to the front of the
        queue and is tried again after a pause (growing to AWL_RETRY_MAX)."""
        pause = 0.05
        while self._to_count or self._to_touch:
            counts, self._to_count = self._to_count, {}
            touches, self._to_touch = self._to_touch, {}
            try:
                while counts:
                    now, names = next(iter(counts.items()))
                    states = await self._store.count_passes(list(names), now, self.timing)
                    del counts[now]
                    for (client, name), state in zip(names.items(), states):
                        if state is not None:
                            self._remember_awl(client, state)
                            if state.count == self.timing.awl_clients:
                                log.info("greylist: whitelisted: %s", name)
                while touches:
                    now, clients = next(iter(touches.items()))
                    states = await self._store.touch_clients(list(clients), now)
                    del touches[now]
                    for client, state in zip(clients, states):
                        if state is not None:
                            self._remember_awl(client, state)
            except StoreBusy:
                self._to_count = _older_first(counts, self._to_count)
                self._to_touch = _older_first(touches, self._to_touch)
                self._bound_awl()
                self._awl_stalled = True
                await asyncio.sleep(pause)
                pause = min(pause * 2, AWL_RETRY_MAX)
                continue
            except Exception:
                # A lost count only delays a client's auto-whitelisting by one pass.
                log.exception("greylist: updating the client auto-whitelist failed")
            self._awl_stalled = False
        self._awl_stalled = False

    def _bound_awl(self) -> None:
        """While the store stays locked: keep at most _AWL_PENDING updates, the newest."""
        for queue in (self._to_count, self._to_touch):
            pending = sum(map(len, queue.values()))
            while pending > _AWL_PENDING and queue:
                oldest = next(iter(queue))
                pending -= len(queue.pop(oldest))
                log.error("greylist: the store has been locked by another process for long; "
                          "dropped the auto-whitelist updates of %d", oldest)

    def _remember_awl(self, client: str, state: ClientState) -> None:
        if state.count >= self.timing.awl_clients:
            self._remember(self._awl_until, client, state.last + AWL_REFRESH)

    def _remember(self, cache: dict[str, float], key: str, until: float) -> None:
        """Store in a bounded cache: when full, drop what expired, else everything."""
        if len(cache) >= _CACHE and key not in cache:
            now = self._clock()
            for stale in [k for k, v in cache.items() if v <= now]:
                del cache[stale]
            if len(cache) >= _CACHE:
                cache.clear()
        cache[key] = until


def _older_first(older: dict[int, dict[str, _V]], newer: dict[int, dict[str, _V]]) -> dict[int, dict[str, _V]]:
    """Put updates not written yet back in front of those queued since (same second: merged)."""
    merged = {now: dict(items) for now, items in older.items()}
    for now, items in newer.items():
        merged.setdefault(now, {}).update(items)
    return merged
