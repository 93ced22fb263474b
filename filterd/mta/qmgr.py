"""The queue manager's loop: the thin asyncio driver of the Scheduler over the queue files.

It does what the sans-IO :class:`~filterd.mta.scheduler.Scheduler` decides:

1. At start, takes the queue lock (one queue manager per queue directory) and recovers
   the queue (incomplete files discarded, ``active`` back to ``incoming``).
2. Takes messages from ``incoming`` (at start, when triggered, and when the directory
   changes: receiving processes and ``filterd queue flush`` only add files there) and
   from ``deferred`` once every ``queue_run_delay`` (only files whose retry time, the
   mtime, has come), while the scheduler has room: memory stays bounded however long
   the queue is. Each message is renamed to ``active``, its envelope read, its pending
   recipients routed; an unreadable file goes to ``corrupt``.
3. Starts the deliveries the scheduler hands out, each with its transport's agent,
   logs one ``to=<...>`` line per recipient, and marks delivered recipients done in the
   file at once (a crash of filterd after that never delivers them twice).
4. When a message's pass is over: queues the notifications (bounce, delay warning,
   postmaster notices) before marking the failed recipients done, then either moves
   the file to ``deferred`` with its retry time or removes it.

File work runs in threads; the scheduler is used and log lines are written only on
the event loop's thread (neither is thread-safe), so the thread functions return the
lines they want logged.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import time
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

from filterd.log import event
from filterd.mta import maillog
from filterd.mta.bounce import NoticeSettings, Original, notices
from filterd.mta.delivery import (
    DEFERRED, SENT, DeliveryAgent, DeliveryReport, DiscardAgent, ErrorAgent, OutgoingMessage,
    RecipientResult, RetryAgent, Route,
)
from filterd.mta.queue import (
    ACTIVE, DEFERRED as DEFERRED_QUEUE, FLUSHED_MTIME, INCOMING, Queue, QueueEntry, QueueError,
)
from filterd.mta.queuefile import (
    CONTENT_CHUNK, ENVID_ATTR, RET_ATTR, Envelope, QueueFileError, Recipient, iter_content, mark_done, mark_warned,
    read_content, read_envelope,
)
from filterd.mta.scheduler import ActiveMessage, Delivery, Outcome, Scheduler
from filterd.mta.trigger import TriggerListener

if TYPE_CHECKING:
    from filterd.config import Config

log = logging.getLogger("filterd.qmgr")

INCOMING_POLL = 1.0
"""How often the incoming directory's mtime is checked for mail added by another
process (receiving workers, the queue tools); an in-process trigger() is immediate."""
MTIME_SLACK = 1.0
"""Seconds within which a directory change and a scan may share one mtime value."""
TAKE_BATCH = 100
"""Messages activated per thread hop."""
LOCK_POLL = 0.5
"""How often a queue manager waiting for the queue lock tries again."""
PREFETCH_SIZE = 65536
"""Messages up to this size are read whole when taken (in the same thread hop as their
envelope), so that their first delivery needs no thread to read them..."""
PREFETCH_BUDGET = 8 << 20
"""...as long as the messages held so, not yet handed to an agent, stay under this."""

Router = Callable[[str], Route]
Lines = list[tuple[str, str]]
"""(program, text) log lines gathered in a thread, written on the loop."""
WARNING = "warning"
"""The program part of a gathered line that is a warning of the queue manager."""


def _emit(lines: Lines) -> None:
    for part, text in lines:
        if part == WARNING:
            log.warning("%s", text)
        else:
            event(part, text)


def builtin_agents() -> dict[str, DeliveryAgent]:
    """The transports that need no network: error, retry, discard."""
    return {"error": ErrorAgent(), "retry": RetryAgent(), "discard": DiscardAgent()}


class QueueManager:
    """One queue directory's queue manager."""

    def __init__(self, queue: Queue, scheduler: Scheduler, agents: Mapping[str, DeliveryAgent],
                 router: Router, notice_settings: NoticeSettings,
                 clock: Callable[[], float] = time.time):
        self.queue = queue
        self.scheduler = scheduler
        self.agents = {**builtin_agents(), **agents}
        self.router = router
        self.notice_settings = notice_settings
        self.clock = clock
        self._wake = asyncio.Event()
        self._stopping = False
        self._lock_fd = -1
        self._incoming_scan: Iterator[QueueEntry] | None = None
        self._incoming_mtime = -1.0
        self._incoming_scanned_at = 0.0
        self._deferred_scan: Iterator[QueueEntry] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._activated: dict[str, float] = {}
        self._logged: dict[str, set[int]] = {}
        """Per active message, the recipients whose attempt a delivery line was logged for."""
        self._prefetched: dict[str, bytes] = {}
        """Small messages read whole when taken, until their first delivery starts."""
        self._prefetched_bytes = 0

    @classmethod
    def from_config(cls, cfg: "Config", agents: Mapping[str, DeliveryAgent]) -> "QueueManager":
        """A queue manager with the configured parameters, tables and notices; ``agents``
        adds the network transports (smtp, lmtp) to the built-in ones."""
        from filterd.maps import open_table
        from filterd.mta.routing import route
        from filterd.mta.scheduler import Settings

        lookups = [open_table(spec).lookup for spec in cfg.get("transport_maps")]
        default_transport, relayhost = cfg.get("default_transport"), cfg.get("relayhost")
        notice_settings = NoticeSettings(
            cfg.get("myhostname"), frozenset(c.lower() for c in cfg.get("notify_classes")),
            cfg.get("bounce_notice_recipient"), cfg.get("2bounce_notice_recipient"),
            cfg.get("delay_notice_recipient"), cfg.get("bounce_size_limit"))
        return cls(Queue(cfg.get("queue_directory")), Scheduler(Settings.from_config(cfg)), agents,
                   lambda address: route(address, lookups, default_transport, relayhost), notice_settings)

    # -- control -------------------------------------------------------------------
    def trigger(self) -> None:
        """New mail is in ``incoming`` (called by an in-process receiver)."""
        self._incoming_mtime = -1.0
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self, grace: float = 30.0) -> None:
        """Deliver until stop(); deliveries in flight get ``grace`` seconds to finish
        (the rest stay in ``active`` and are taken again at the next start)."""
        if not await self._lock():
            return
        trigger = TriggerListener(self.queue.directory, self.trigger)
        loop = asyncio.get_running_loop()
        try:
            trigger.open(loop)
        except OSError as exc:  # e.g. a path too long for a unix socket: polling still works
            log.warning("cannot listen for wake-ups on %s (%s); new mail is found by polling",
                        trigger.path, exc.strerror or exc)
        try:
            await asyncio.to_thread(self._recover)
            while not self._stopping:
                now = self.clock()
                # A scan still under way (no room yet) is continued, not restarted.
                if self._deferred_scan is None and self.scheduler.deferred_scan_due(now):
                    self._deferred_scan = self.queue.scan(DEFERRED_QUEUE)
                    self._incoming_mtime = -1.0
                more = await self._take(now)
                for delivery in self.scheduler.deliveries(self.clock()):
                    task = asyncio.create_task(self._deliver(delivery))
                    self._tasks.add(task)
                    task.add_done_callback(self._delivery_ended)
                timeout = 0.0 if more else max(
                    0.0, min(self.scheduler.wakeup(self.clock()) - self.clock(), INCOMING_POLL))
                self._wake.clear()
                await self._sleep(timeout)
        finally:
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=grace)
            for task in list(self._tasks):
                task.cancel()
            trigger.close(loop)
            self._release_lock()

    async def _sleep(self, timeout: float) -> None:
        """Wait until woken or ``timeout`` seconds have passed (0: just let the others
        run). asyncio.timeout, not wait_for: wait_for wraps the wait in a task of its own,
        a cost paid at every turn of this loop."""
        if timeout <= 0:
            await asyncio.sleep(0)
            return
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass

    def _delivery_ended(self, task: "asyncio.Task[None]") -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The message stays in active; the next start takes it again.
            log.error("delivery task failed: %r", task.exception())

    async def _lock(self) -> bool:
        """Take the queue lock: one queue manager per queue directory. A previous one
        still finishing its deliveries (a worker replaced by a reload) holds it for its
        grace period, so this one waits for it, unless stopped first (then False)."""
        await asyncio.to_thread(self.queue.setup)
        path = os.path.join(self.queue.directory, "qmgr.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if self._stopping:
                    os.close(fd)
                    return False
                if not waited:
                    log.info("waiting for the queue manager that holds %s to finish", path)
                    waited = True
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), LOCK_POLL)
                except asyncio.TimeoutError:
                    pass
        self._lock_fd = fd
        return True

    def _recover(self) -> None:
        result = self.queue.recover()
        if result.discarded or result.requeued:
            log.info("queue recovery: %d incomplete file(s) discarded, %d active message(s) requeued",
                     result.discarded, result.requeued)

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- taking messages into the active queue ----------------------------------------
    async def _take(self, now: float) -> bool:
        """Activate what the scheduler has room for; True when more may be waiting."""
        s = self.scheduler
        budget = min(TAKE_BATCH, s.settings.message_active_limit - len(s.messages))
        if budget <= 0 or not s.room():
            return False
        room = PREFETCH_BUDGET - self._prefetched_bytes
        taken, lines = await asyncio.to_thread(self._take_files, now, budget, frozenset(s.messages), room)
        _emit(lines)
        for qid, env, flushed, data in taken:
            self._activated[qid] = now
            if data is not None:
                self._prefetched[qid] = data
                self._prefetched_bytes += len(data)
            event("qmgr", maillog.queued(qid, env.sender, env.content_size, len(env.pending)))
            message = ActiveMessage(qid, env.arrival, env.sender,
                                    [(r, self._route(r)) for r in env.pending], env.warned, flushed, env)
            for outcome in s.add(message, now):
                await self._finish(outcome)
        return len(taken) == budget and s.room()

    def _next_entry(self, now: float) -> tuple[str, QueueEntry] | None:
        while self._deferred_scan is not None:
            entry = next(self._deferred_scan, None)
            if entry is None:
                self._deferred_scan = None
            elif entry.mtime <= now:
                return DEFERRED_QUEUE, entry
        if self._incoming_scan is None:
            try:
                mtime = os.stat(self.queue.dir(INCOMING)).st_mtime
            except FileNotFoundError:
                return None
            # An unchanged mtime proves nothing when the last scan began within the
            # file system's time stamp granularity of the last change: scan again.
            if mtime == self._incoming_mtime and self._incoming_scanned_at - mtime > MTIME_SLACK:
                return None
            self._incoming_mtime = mtime
            self._incoming_scanned_at = time.time()
            self._incoming_scan = self.queue.scan(INCOMING)
        for entry in self._incoming_scan:
            if entry.complete:
                return INCOMING, entry
        self._incoming_scan = None
        return None

    def _take_files(self, now: float, budget: int, busy: frozenset[str],
                    room: int) -> tuple[list[tuple[str, Envelope, bool, bytes | None]], Lines]:
        """Move up to ``budget`` messages to ``active`` and read their envelopes, and
        the content of small ones while ``room`` bytes last (thread). A message still in
        its pass (``busy``: requeued by a tool meanwhile) waits."""
        taken: list[tuple[str, Envelope, bool, bytes | None]] = []
        lines: Lines = []
        while len(taken) < budget:
            found = self._next_entry(now)
            if found is None:
                break
            source, entry = found
            if entry.qid in busy:
                self._incoming_mtime = -1.0  # look again once its pass is over
                continue
            data: bytes | None = None
            try:
                self.queue.move(entry.qid, source, ACTIVE)
                fd = self.queue.open(ACTIVE, entry.qid)
                try:
                    env = read_envelope(fd)
                    if env.content_size <= min(PREFETCH_SIZE, room):
                        data = read_content(fd, env)
                        room -= len(data)
                finally:
                    os.close(fd)
            except QueueError:
                continue  # taken by a tool meanwhile
            except QueueFileError as exc:
                self.queue.to_corrupt(ACTIVE, entry.qid)
                lines.append((WARNING, f"{entry.qid}: moved to the corrupt queue: {exc}"))
                continue
            if not env.pending:  # every recipient was done before a crash
                self.queue.remove(ACTIVE, entry.qid)
                lines.append(("qmgr", maillog.removed(entry.qid)))
                continue
            taken.append((entry.qid, env, source == INCOMING and entry.mtime == FLUSHED_MTIME, data))
        return taken, lines

    def _route(self, recipient: Recipient) -> Route:
        try:
            return self.router(recipient.address)
        except Exception as exc:  # a table that cannot answer now: try again later
            return Route("retry", f"4.3.0 transport_maps lookup failure: {exc}")

    # -- delivering -------------------------------------------------------------------------
    async def _deliver(self, delivery: Delivery) -> None:
        """One delivery, its log lines, and what it completes. Whatever fails on the way
        (an agent, the log, the file), the scheduler is told the delivery is over, so that
        neither the message nor the destination's slot stays taken for ever."""
        message = delivery.message
        started = self.clock()
        report: DeliveryReport | None = None
        sent: list[Recipient] = []
        try:
            report = await self._attempt(delivery)
            now = self.clock()
            activated = self._activated.get(message.qid, started)
            delays = (activated - message.arrival, started - activated, 0.0, now - started)
            for r in report.results:
                event(delivery.route.transport, maillog.delivery(
                    message.qid, r.recipient.address, r.status, r.reason, relay=r.relay,
                    delay=now - message.arrival, delays=delays, dsn=r.dsn, orig_to=r.recipient.orcpt))
            self._logged.setdefault(message.qid, set()).update(id(r.recipient) for r in report.results)
            sent = [r.recipient for r in report.results if r.status == SENT]
        except asyncio.CancelledError:
            raise  # stopping: the message stays in active and is taken again at the next start
        except Exception:  # noqa: BLE001 - a bug must not leave the message taken
            log.exception("%s: error while recording a delivery by %s", message.qid, delivery.route.transport)
            if report is None:
                report = self._failed_report(delivery, "4.3.0", "delivery status not recorded")
        outcomes = self.scheduler.done(delivery.id, report, self.clock())
        finishing = {outcome.message.qid for outcome in outcomes}
        try:
            if sent and message.qid not in finishing:
                # Other deliveries of this message are still under way: mark these now
                # (at the end of the pass the marks go with the rest, in one thread hop).
                _emit(await asyncio.to_thread(self._mark_done, message.qid, sent))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - they may be delivered again, never lost
            log.error("%s: cannot record the delivered recipients: %s", message.qid, exc)
        for outcome in outcomes:
            await self._finish(outcome, sent if outcome.message.qid == message.qid else [])
        self._wake.set()

    async def _attempt(self, delivery: Delivery) -> DeliveryReport:
        """The agent's report; a missing transport or a failing agent defers the batch."""
        message = delivery.message
        agent = self.agents.get(delivery.route.transport)
        if agent is None:
            return self._failed_report(delivery, "4.3.0", "mail transport unavailable")
        try:
            env = message.envelope
            if env is None:
                env = await asyncio.to_thread(self.queue.read_envelope, ACTIVE, message.qid)
                message.envelope = env
            outgoing = OutgoingMessage(message.qid, message.sender, message.arrival, env.content_size,
                                       env.attributes, self._content_reader(message.qid, env),
                                       self._unhold(message.qid))
            return await agent.deliver(outgoing, delivery.route.nexthop, delivery.recipients)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the recipients are tried again later
            log.error("%s: delivery agent %s failed: %s", message.qid, delivery.route.transport, exc)
            return self._failed_report(delivery, "4.3.0", f"delivery agent {delivery.route.transport} failed")

    def _unhold(self, qid: str) -> bytes | None:
        """The message's content read when it was taken, if any, now handed on."""
        data = self._prefetched.pop(qid, None)
        if data is not None:
            self._prefetched_bytes -= len(data)
        return data

    @staticmethod
    def _failed_report(delivery: Delivery, dsn: str, reason: str) -> DeliveryReport:
        return DeliveryReport([RecipientResult(r, DEFERRED, dsn, reason) for r in delivery.recipients])

    def _content_reader(self, qid: str, env: Envelope) -> Callable[[], Iterator[bytes]]:
        def read() -> Iterator[bytes]:
            fd = self.queue.open(ACTIVE, qid)
            try:
                yield from iter_content(fd, env)
            finally:
                os.close(fd)
        return read

    def _open_current(self, qid: str) -> tuple[str, int] | None:
        """The message's file wherever it is now: a tool may have put an active message
        on hold or requeued it meanwhile, and its progress must still be recorded."""
        for _ in range(3):  # it may move again between the lookup and the open
            where = ACTIVE if os.path.exists(self.queue.path(ACTIVE, qid)) else self.queue.find(qid)
            if where is None:
                return None
            try:
                return where, self.queue.open(where, qid, writable=True)
            except QueueError:
                continue
        return None

    def _mark_done(self, qid: str, recipients: list[Recipient]) -> Lines:
        found = self._open_current(qid)
        if found is None:
            return [(WARNING, f"{qid}: removed meanwhile; delivery status not recorded")]
        fd = found[1]
        try:
            mark_done(fd, recipients)
        finally:
            os.close(fd)
        return []

    # -- the end of a message's pass ------------------------------------------------------------
    async def _finish(self, outcome: Outcome, sent: list[Recipient] | None = None) -> None:
        """The end of a message's pass: its remaining log lines, then the file (``sent``:
        delivered recipients still to be marked done in it). The message's side tables
        are dropped first, whatever happens next; a failure here leaves the file to be
        taken again later (deferred by the minimal backoff), never forgotten in active."""
        message = outcome.message
        now = self.clock()
        activated = self._activated.pop(message.qid, now)
        logged = self._logged.pop(message.qid, set())
        self._unhold(message.qid)  # finished without a delivery (deferred transport, dead site)
        try:
            for r in outcome.results:  # deferred by the queue manager itself, without an attempt
                if id(r.recipient) not in logged:
                    event("qmgr", maillog.delivery(
                        message.qid, r.recipient.address, r.status, r.reason, relay=r.relay,
                        delay=now - message.arrival, delays=(activated - message.arrival, now - activated, 0, 0),
                        dsn=r.dsn, orig_to=r.recipient.orcpt))
            lines = await asyncio.to_thread(self._finish_files, outcome, now, sent or [])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the file must not stay in active unseen
            log.error("%s: cannot finish the delivery pass: %s", message.qid, exc)
            retry_at = now + self.scheduler.settings.minimal_backoff
            try:
                await asyncio.to_thread(self.queue.move, message.qid, ACTIVE, DEFERRED_QUEUE, retry_at)
            except (OSError, QueueError) as again:
                log.error("%s: left in the active queue until the next start: %s", message.qid, again)
            return
        _emit(lines)
        if any(part == "cleanup" for part, _ in lines):
            self.trigger()  # a notification was queued

    def _finish_files(self, outcome: Outcome, now: float, sent: list[Recipient]) -> Lines:
        """The delivered recipients marked done, the notices, then the failed recipients
        marked done, then defer or remove (thread)."""
        message = outcome.message
        qid = message.qid
        lines: Lines = []
        found = self._open_current(qid)
        if found is None:
            return [(WARNING, f"{qid}: removed meanwhile")]
        where, fd = found
        try:
            mark_done(fd, sent)
            env = message.envelope if message.envelope is not None else read_envelope(fd)
            bounced = outcome.bounced
            warn = outcome.warn
            retry_at = outcome.retry_at
            if bounced or warn:
                original = Original(qid, message.sender, message.arrival, self._original(fd, env),
                                    env.content_size, env.attributes.get(ENVID_ATTR, ""),
                                    env.attributes.get(RET_ATTR, "") == "HDRS")
                lifetime = self.scheduler.settings.maximal_queue_lifetime
                try:
                    for notice in notices(self.notice_settings, original, bounced,
                                          outcome.deferred if warn else [], now, message.arrival + lifetime):
                        new_qid = self._enqueue_notice(notice.recipient, notice.content, now, lines)
                        lines.append(("bounce", maillog.notification(qid, notice.kind, new_qid)))
                except (OSError, ValueError) as exc:
                    # No notice, so nothing is marked: the failed recipients are tried (and
                    # bounced) again after the minimal backoff.
                    lines.append((WARNING, f"{qid}: cannot queue a notification ({exc}); trying again later"))
                    bounced, warn = [], False
                    retry_at = now + self.scheduler.settings.minimal_backoff
            if outcome.expired and bounced:
                lines.append(("qmgr", maillog.expired(qid, message.sender)))
            mark_done(fd, [r.recipient for r in bounced])
            if warn:
                mark_warned(fd, env)
        except QueueFileError as exc:
            self.queue.to_corrupt(where, qid)
            return lines + [(WARNING, f"{qid}: moved to the corrupt queue: {exc}")]
        finally:
            os.close(fd)
        if where != ACTIVE:  # the administrator's move wins; the progress is recorded in it
            if where == INCOMING:
                self._incoming_mtime = -1.0  # requeued: take it again once this pass is over
            return lines + [(WARNING, f"{qid}: moved to the {where} queue during delivery; left there")]
        try:
            if retry_at is not None:
                self.queue.write_defer_log(qid, {r.recipient.address: r.reason for r in outcome.results
                                                 if r.status != SENT})
                self.queue.move(qid, ACTIVE, DEFERRED_QUEUE, retry_at=retry_at)
            else:
                self.queue.remove(ACTIVE, qid)
                lines.append(("qmgr", maillog.removed(qid)))
        except QueueError:
            lines.append((WARNING, f"{qid}: no longer in the active queue (deleted or held meanwhile)"))
        return lines

    def _original(self, fd: int, env: Envelope) -> bytes:
        """The original for a notice: whole up to bounce_size_limit, else at least its
        header section (read no further than needed)."""
        limit = self.notice_settings.bounce_size_limit
        out = bytearray()
        for chunk in iter_content(fd, env):
            out += chunk
            if len(out) > limit + CONTENT_CHUNK or (len(out) > limit and re.search(rb"\r?\n\r?\n", out)):
                break
        return bytes(out)

    def _enqueue_notice(self, recipient: str, content: bytes, now: float, lines: Lines) -> str:
        """Queue a notification from <> (durably, like any message) and return its id."""
        if "@" not in recipient:
            recipient = f"{recipient}@{self.notice_settings.hostname}"
        with self.queue.create() as new:
            new.writer.envelope(now, "", [Recipient(recipient)])
            new.writer.content(content)
            new.commit()
        m = re.search(rb"^Message-Id: (.*)\r$", content, re.M | re.I)
        lines.append(("cleanup", maillog.message_id(new.qid, m.group(1).decode("ascii", "replace") if m else "")))
        return new.qid
