"""The queue manager's decisions, as a plain object with no I/O and an injected clock.

What Postfix's qmgr decides, and this object decides the same way:

- **Destinations.** Recipients are grouped by route (transport, next hop). Each
  destination has a concurrency *window*: it starts at
  ``initial_destination_concurrency`` (5), grows by 1/window per delivery that reached
  the site (so by about one per window's worth of successes) up to
  ``<transport>_destination_concurrency_limit`` (20), and shrinks by 1/window per
  session that failed at the site (no answer, 4xx greeting, dropped), down to 1.
- **Dead destinations.** Each site failure adds 1/window to a failed-cohort count that
  any success resets; when it reaches
  ``default_destination_concurrency_failed_cohort_limit`` (1: as many failed sessions
  in a row as the window is wide), the destination is declared dead: its waiting
  recipients are deferred at once ("delivery temporarily suspended: <last reason>")
  and new ones too, until ``minimal_backoff_time`` has passed.
- **Batches.** A delivery carries up to ``<transport>_destination_recipient_limit``
  (50) recipients of one message for one destination; messages take turns in arrival
  order within a destination, and destinations take turns with each other.
- **Retries.** A message whose recipients are not all done goes back to the deferred
  queue until ``now + backoff``, where backoff is the message's age clamped to
  ``minimal_backoff_time``..``maximal_backoff_time`` (Postfix's doubling-by-age), spread
  by ``backoff_jitter`` so that mail deferred together does not retry together.
- **Lifetimes.** A message older than ``maximal_queue_lifetime``
  (``bounce_queue_lifetime`` for a bounce) is tried once more; what still fails is
  returned to the sender, quoting the last delay reason.
- **Delay warnings.** Once a message is older than ``delay_warning_time`` (when set)
  and still deferred, its sender is warned once.
- **defer_transports.** Recipients routed to these transports are deferred without
  an attempt unless the message was flushed.
- **Bounded memory.** At most ``qmgr_message_active_limit`` messages and
  ``qmgr_message_recipient_limit`` recipients are held; the driver asks room() before
  taking more from the queue.

The driver (an asyncio loop) feeds messages in with add(), starts what deliveries()
returns, reports each with done(), calls tick() when wakeup() says, and acts on each
:class:`Outcome` (flip done recipients, bounce, warn, defer or remove the file).
"""

from __future__ import annotations

import itertools
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

from filterd.mta.delivery import BOUNCED, DEFERRED, SENT, DeliveryReport, RecipientResult, Route
from filterd.mta.queuefile import Envelope, Recipient

if TYPE_CHECKING:
    from filterd.config import Config


@dataclass(frozen=True)
class Settings:
    """The qmgr parameters, converted once (see filterd/mta/params.py)."""

    initial_concurrency: int = 5
    concurrency_limit: int = 20
    recipient_limit: int = 50
    failed_cohort_limit: int = 1
    process_limit: int = 100
    minimal_backoff: float = 300.0
    maximal_backoff: float = 4000.0
    backoff_jitter: float = 0.2
    queue_run_delay: float = 300.0
    maximal_queue_lifetime: float = 5 * 86400.0
    bounce_queue_lifetime: float = 5 * 86400.0
    delay_warning_time: float = 0.0
    defer_transports: frozenset[str] = frozenset()
    message_active_limit: int = 20000
    message_recipient_limit: int = 20000
    per_transport: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    """transport -> (initial concurrency, concurrency limit, recipient limit)."""

    @classmethod
    def from_config(cls, cfg: "Config") -> "Settings":
        from filterd.mta.params import TRANSPORTS

        return cls(
            initial_concurrency=cfg.get("initial_destination_concurrency"),
            concurrency_limit=cfg.get("default_destination_concurrency_limit"),
            recipient_limit=cfg.get("default_destination_recipient_limit"),
            failed_cohort_limit=cfg.get("default_destination_concurrency_failed_cohort_limit"),
            process_limit=cfg.get("default_process_limit"),
            minimal_backoff=cfg.get("minimal_backoff_time"),
            maximal_backoff=cfg.get("maximal_backoff_time"),
            backoff_jitter=cfg.get("backoff_jitter"),
            queue_run_delay=cfg.get("queue_run_delay"),
            maximal_queue_lifetime=cfg.get("maximal_queue_lifetime"),
            bounce_queue_lifetime=cfg.get("bounce_queue_lifetime"),
            delay_warning_time=cfg.get("delay_warning_time"),
            defer_transports=frozenset(cfg.get("defer_transports")),
            message_active_limit=cfg.get("qmgr_message_active_limit"),
            message_recipient_limit=cfg.get("qmgr_message_recipient_limit"),
            per_transport={t: (cfg.get(f"{t}_initial_destination_concurrency"),
                               cfg.get(f"{t}_destination_concurrency_limit"),
                               cfg.get(f"{t}_destination_recipient_limit")) for t in TRANSPORTS},
        )

    def limits(self, transport: str) -> tuple[int, int, int]:
        """(initial concurrency, concurrency limit, recipient limit) of a transport."""
        initial, limit, recipients = self.per_transport.get(
            transport, (self.initial_concurrency, self.concurrency_limit, self.recipient_limit))
        return min(initial, limit), limit, recipients


def backoff(age: float, settings: Settings, rng: random.Random) -> float:
    """Seconds until the next attempt: the age clamped to the backoff range, spread
    by the jitter but never outside the range."""
    lo, hi = settings.minimal_backoff, max(settings.minimal_backoff, settings.maximal_backoff)
    base = min(max(age, lo), hi)
    low = max(lo, base * (1 - settings.backoff_jitter))
    high = min(hi, base * (1 + settings.backoff_jitter))
    return rng.uniform(low, high) if high > low else base


@dataclass
class ActiveMessage:
    """A message the queue manager holds: its pending recipients and their routes."""

    qid: str
    arrival: float
    sender: str
    recipients: list[tuple[Recipient, Route]]
    warned: bool = False
    flush: bool = False
    """Taken by a flush (postqueue -f): defer_transports do not hold it back."""
    envelope: Envelope | None = None
    """The envelope as read when the message was taken (the driver's: content offset
    and size, attributes, the recipients' status byte offsets), so that no delivery and
    no end of a pass reads it from the file again."""


@dataclass
class Delivery:
    """One delivery to start: a batch of one message's recipients for one route."""

    id: int
    message: ActiveMessage
    route: Route
    recipients: list[Recipient]


@dataclass
class Outcome:
    """A message whose pass through the active queue is over, and what to do now."""

    message: ActiveMessage
    results: list[RecipientResult]
    expired: bool = False
    """Too old: the deferred recipients were turned into bounces."""
    warn: bool = False
    """Send the sender a delay warning now (and mark the file)."""
    retry_at: float | None = None
    """When to try again (None when nothing is left to deliver)."""

    def having(self, status: str) -> list[RecipientResult]:
        return [r for r in self.results if r.status == status]

    @property
    def sent(self) -> list[RecipientResult]:
        return self.having(SENT)

    @property
    def bounced(self) -> list[RecipientResult]:
        return self.having(BOUNCED)

    @property
    def deferred(self) -> list[RecipientResult]:
        return self.having(DEFERRED)


@dataclass
class _Entry:
    message: ActiveMessage
    recipients: deque[Recipient]


@dataclass
class _MessageState:
    message: ActiveMessage
    outstanding: int
    results: list[RecipientResult] = field(default_factory=list)


class Destination:
    """One (transport, next hop): its window, its waiting batches, its health."""

    def __init__(self, route: Route, settings: Settings):
        self.route = route
        initial, self.limit, self.recipient_limit = settings.limits(route.transport)
        self.window = float(initial)
        self.busy = 0
        self.entries: deque[_Entry] = deque()
        self.fail_cohorts = 0.0
        self.dead_until: float | None = None
        self.last_failure = ""

    def can_start(self) -> bool:
        return self.dead_until is None and bool(self.entries) and self.busy < math.floor(self.window)

    def success(self) -> None:
        self.window = min(float(self.limit), self.window + 1.0 / self.window)
        self.fail_cohorts = 0.0

    def failure(self, settings: Settings, reason: str, now: float) -> bool:
        """Negative feedback; True when this failure makes the destination dead."""
        self.last_failure = reason
        self.fail_cohorts += 1.0 / self.window
        self.window = max(1.0, self.window - 1.0 / self.window)
        limit = settings.failed_cohort_limit
        if limit and self.fail_cohorts >= limit and self.dead_until is None:
            self.dead_until = now + settings.minimal_backoff
            return True
        return False


class Scheduler:
    """The qmgr's state: active messages, destinations, deliveries in flight."""

    def __init__(self, settings: Settings, rng: random.Random | None = None):
        self.settings = settings
        self.rng = rng or random.Random()
        self.destinations: dict[Route, Destination] = {}
        self.messages: dict[str, _MessageState] = {}
        self.in_flight: dict[int, Delivery] = {}
        self.transport_busy: dict[str, int] = {}
        self.recipients_held = 0
        self._ids = itertools.count(1)
        self._last_deferred_scan: float | None = None

    # -- admission ------------------------------------------------------------------
    def room(self) -> bool:
        """May another message be taken into the active queue?"""
        if not self.messages:
            return True
        return (len(self.messages) < self.settings.message_active_limit
                and self.recipients_held < self.settings.message_recipient_limit)

    def add(self, message: ActiveMessage, now: float) -> list[Outcome]:
        """Take a message in; returns its outcome at once when nothing can be tried now
        (all its recipients are done, deferred by transport, or at dead destinations)."""
        if message.qid in self.messages:
            raise ValueError(f"{message.qid} is already active")
        state = _MessageState(message, len(message.recipients))
        self.messages[message.qid] = state
        self.recipients_held += len(message.recipients)
        immediate: list[RecipientResult] = []
        entries: dict[Route, _Entry] = {}  # this message's batch at each destination
        for recipient, route in message.recipients:
            if route.transport in self.settings.defer_transports and not message.flush:
                immediate.append(RecipientResult(recipient, DEFERRED, "4.3.2", "deferred transport"))
                continue
            dest = self._destination(route, now)
            if dest.dead_until is not None:
                immediate.append(self._suspended(recipient, dest))
                continue
            entry = entries.get(route)
            if entry is None:
                entry = entries[route] = _Entry(message, deque())
                dest.entries.append(entry)
            entry.recipients.append(recipient)
        return self._record(state, immediate, now)

    def _destination(self, route: Route, now: float) -> Destination:
        dest = self.destinations.get(route)
        if dest is None:
            dest = self.destinations[route] = Destination(route, self.settings)
        elif dest.dead_until is not None and dest.dead_until <= now:
            self._revive(dest)
        return dest

    def _revive(self, dest: Destination) -> None:
        initial, _, _ = self.settings.limits(dest.route.transport)
        dest.dead_until = None
        dest.fail_cohorts = 0.0
        dest.window = float(initial)

    @staticmethod
    def _suspended(recipient: Recipient, dest: Destination) -> RecipientResult:
        return RecipientResult(recipient, DEFERRED, "4.4.1",
                               f"delivery temporarily suspended: {dest.last_failure}")

    # -- starting deliveries ------------------------------------------------------------
    def deliveries(self, now: float) -> list[Delivery]:
        """As many deliveries as the windows and process limits allow, destinations
        taking turns one batch at a time."""
        self.tick(now)
        started: list[Delivery] = []
        progress = True
        while progress:
            progress = False
            for dest in self.destinations.values():
                transport = dest.route.transport
                if not dest.can_start() or self.transport_busy.get(transport, 0) >= self.settings.process_limit:
                    continue
                entry = dest.entries[0]
                batch = [entry.recipients.popleft()
                         for _ in range(min(dest.recipient_limit, len(entry.recipients)))]
                if not entry.recipients:
                    dest.entries.popleft()
                delivery = Delivery(next(self._ids), entry.message, dest.route, batch)
                self.in_flight[delivery.id] = delivery
                dest.busy += 1
                self.transport_busy[transport] = self.transport_busy.get(transport, 0) + 1
                started.append(delivery)
                progress = True
        return started

    # -- results --------------------------------------------------------------------------
    def done(self, delivery_id: int, report: DeliveryReport, now: float) -> list[Outcome]:
        """An agent finished; returns the outcomes of messages this completes."""
        delivery = self.in_flight.pop(delivery_id)
        dest = self.destinations[delivery.route]
        dest.busy -= 1
        self.transport_busy[delivery.route.transport] -= 1
        by_recipient = {id(r.recipient): r for r in report.results}
        results = [by_recipient.get(id(r)) or RecipientResult(
            r, DEFERRED, "4.3.0", "delivery agent gave no result for this recipient")
            for r in delivery.recipients]
        outcomes: list[Outcome] = []
        if report.site_failure:
            reason = next((r.reason for r in results if r.status == DEFERRED), "site failure")
            if dest.failure(self.settings, reason, now):
                outcomes += self._suspend(dest, now)
        else:
            dest.success()
        state = self.messages.get(delivery.message.qid)
        if state is not None:
            outcomes += self._record(state, results, now)
        return outcomes

    def _suspend(self, dest: Destination, now: float) -> list[Outcome]:
        """The destination died: defer everything waiting for it."""
        entries, dest.entries = dest.entries, deque()
        outcomes: list[Outcome] = []
        for entry in entries:
            state = self.messages.get(entry.message.qid)
            if state is not None:
                outcomes += self._record(state, [self._suspended(r, dest) for r in entry.recipients], now)
        return outcomes

    def _record(self, state: _MessageState, results: Iterable[RecipientResult], now: float) -> list[Outcome]:
        for result in results:
            state.results.append(result)
            state.outstanding -= 1
        if state.outstanding > 0:
            return []
        del self.messages[state.message.qid]
        self.recipients_held -= len(state.message.recipients)
        return [self._finish(state, now)]

    def _finish(self, state: _MessageState, now: float) -> Outcome:
        message = state.message
        outcome = Outcome(message, state.results)
        if not outcome.deferred:
            return outcome
        age = now - message.arrival
        lifetime = (self.settings.bounce_queue_lifetime if message.sender == ""
                    else self.settings.maximal_queue_lifetime)
        if age >= lifetime:
            outcome.results = [RecipientResult(r.recipient, BOUNCED, r.dsn, r.reason, r.relay,
                                               r.remote_mta, r.diagnostic)
                               if r.status == DEFERRED else r for r in state.results]
            outcome.expired = True
            return outcome
        warn_after = self.settings.delay_warning_time
        outcome.warn = (warn_after > 0 and age >= warn_after and not message.warned
                        and message.sender != "")
        outcome.retry_at = now + backoff(age, self.settings, self.rng)
        return outcome

    # -- time ---------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Revive dead destinations whose time is up; forget idle healthy ones."""
        for route, dest in list(self.destinations.items()):
            if dest.dead_until is not None and dest.dead_until <= now:
                self._revive(dest)
            if (dest.dead_until is None and not dest.entries and not dest.busy
                    and dest.fail_cohorts == 0.0):
                del self.destinations[route]

    def deferred_scan_due(self, now: float) -> bool:
        """Time to look in the deferred queue (every queue_run_delay; at once at start)?
        A True answer counts as the scan having started now."""
        last = self._last_deferred_scan
        if last is not None and now - last < self.settings.queue_run_delay:
            return False
        self._last_deferred_scan = now
        return True

    def wakeup(self, now: float) -> float:
        """The next time tick() or a deferred scan has something to do."""
        times = [d.dead_until for d in self.destinations.values() if d.dead_until is not None]
        last = self._last_deferred_scan
        times.append(now if last is None else last + self.settings.queue_run_delay)
        return min(times)
