"""The queue manager's logic, driven by a fake clock: no sleeping, no files, no network."""

from __future__ import annotations

import random
from dataclasses import replace

from filterd.config import Config
from filterd.mta.delivery import BOUNCED, DEFERRED, SENT, DeliveryReport, RecipientResult, Route
from filterd.mta.queuefile import Recipient
from filterd.mta.scheduler import ActiveMessage, Delivery, Outcome, Scheduler, Settings, backoff

NOW = 1_000_000.0
MX = Route("smtp", "example.net")


def message(qid: str, n: int = 1, route: Route = MX, sender: str = "a@example.com",
            arrival: float = NOW, **kw: object) -> ActiveMessage:
    rcpts = [(Recipient(f"r{i}@{route.nexthop}"), route) for i in range(n)]
    return ActiveMessage(qid, arrival, sender, rcpts, **kw)  # type: ignore[arg-type]


def report(d: Delivery, status: str = SENT, site_failure: bool = False) -> DeliveryReport:
    dsn = {SENT: "2.0.0", DEFERRED: "4.4.1", BOUNCED: "5.1.1"}[status]
    return DeliveryReport([RecipientResult(r, status, dsn, f"{status} reason") for r in d.recipients],
                          site_failure)


def test_recipients_go_in_batches_of_the_recipient_limit() -> None:
    s = Scheduler(Settings())
    assert s.add(message("A1", 120), NOW) == []
    sizes = [len(d.recipients) for d in s.deliveries(NOW)]
    assert sizes == [50, 50, 20]


def test_a_message_has_one_batch_per_destination() -> None:
    s = Scheduler(Settings())
    a, b = Route("smtp", "a.example"), Route("smtp", "b.example")
    rcpts = [(Recipient(f"r{i}@x"), a if i % 2 else b) for i in range(6)]
    s.add(ActiveMessage("A9", NOW, "s@x", rcpts), NOW)
    assert sorted((d.route.nexthop, len(d.recipients)) for d in s.deliveries(NOW)) == [
        ("a.example", 3), ("b.example", 3)]


def test_per_transport_limits_from_config() -> None:
    cfg = Config.from_text("smtp_destination_recipient_limit = 2\nlmtp_destination_concurrency_limit = 3\n")
    settings = Settings.from_config(cfg)
    assert settings.limits("smtp") == (5, 20, 2)
    assert settings.limits("lmtp") == (3, 3, 50)  # the initial window never exceeds the limit
    assert settings.limits("custom") == (5, 20, 50)
    s = Scheduler(settings)
    s.add(message("A1", 5), NOW)
    assert [len(d.recipients) for d in s.deliveries(NOW)] == [2, 2, 1]


def test_slow_start_from_initial_up_to_the_limit() -> None:
    s = Scheduler(Settings())
    for i in range(400):
        s.add(message(f"B{i:04X}"), NOW)
    first = s.deliveries(NOW)
    assert len(first) == 5
    peak = len(s.in_flight)
    pending = list(first)
    while pending:
        d = pending.pop(0)
        s.done(d.id, report(d), NOW)
        pending += s.deliveries(NOW)
        peak = max(peak, len(s.in_flight))
        assert len(s.in_flight) <= 20
    assert peak == 20
    assert not s.messages


def test_site_failures_shrink_the_window_then_the_destination_is_dead() -> None:
    s = Scheduler(Settings())
    for i in range(10):
        s.add(message(f"C{i:04X}"), NOW)
    started = s.deliveries(NOW)
    assert len(started) == 5
    outcomes: list[Outcome] = []
    for d in started[:4]:
        outcomes += s.done(d.id, report(d, DEFERRED, site_failure=True), NOW)
    dest = s.destinations[MX]
    assert 1 <= dest.window < 5 and dest.dead_until is None
    outcomes += s.done(started[4].id, report(started[4], DEFERRED, site_failure=True), NOW)
    # 1/5 + 1/4.8 + ... >= 1 after the fifth failed session: dead for minimal_backoff_time.
    assert dest.dead_until == NOW + 300
    assert len(outcomes) == 10  # the five waiting messages were deferred without an attempt
    suspended = [o for o in outcomes if o.message.qid in {f"C{i:04X}" for i in range(5, 10)}]
    assert all(o.results[0].reason == "delivery temporarily suspended: deferred reason"
               for o in suspended)
    # New mail for a dead destination is deferred at once.
    [late] = s.add(message("CFFFF"), NOW + 10)
    assert late.deferred and late.retry_at is not None
    assert s.deliveries(NOW + 10) == []
    # After minimal_backoff_time it is tried again, from the initial window.
    s.add(message("D0001", 7), NOW + 301)
    again = s.deliveries(NOW + 301)
    assert len(again) == 1 and dest.dead_until is None and s.destinations[MX].window == 5


def test_a_success_resets_the_failed_cohort_count() -> None:
    s = Scheduler(Settings())
    for i in range(5):
        s.add(message(f"E{i:04X}"), NOW)
    ds = s.deliveries(NOW)
    for d in ds[:3]:
        s.done(d.id, report(d, DEFERRED, site_failure=True), NOW)
    s.done(ds[3].id, report(ds[3]), NOW)
    assert s.destinations[MX].fail_cohorts == 0
    s.done(ds[4].id, report(ds[4], DEFERRED, site_failure=True), NOW)
    assert s.destinations[MX].dead_until is None


def test_recipient_failures_do_not_count_against_the_site() -> None:
    s = Scheduler(Settings())
    for i in range(10):
        s.add(message(f"F{i:04X}"), NOW)
    for d in s.deliveries(NOW):
        s.done(d.id, report(d, BOUNCED), NOW)
    assert s.destinations[MX].window > 5


def test_outcome_sorts_results_and_schedules_a_retry() -> None:
    s = Scheduler(Settings(backoff_jitter=0.0))
    m = message("A2", 3, arrival=NOW - 1000)
    s.add(m, NOW)
    [d] = s.deliveries(NOW)
    r = d.recipients
    results = [RecipientResult(r[0], SENT, "2.0.0", "250 ok"),
               RecipientResult(r[1], BOUNCED, "5.1.1", "550 unknown"),
               RecipientResult(r[2], DEFERRED, "4.2.0", "450 try later")]
    [o] = s.done(d.id, DeliveryReport(results), NOW)
    assert [x.recipient.address for x in o.sent] == ["r0@example.net"]
    assert [x.recipient.address for x in o.bounced] == ["r1@example.net"]
    assert [x.recipient.address for x in o.deferred] == ["r2@example.net"]
    assert o.retry_at == NOW + 1000  # age 1000 s, within 300..4000
    assert not o.expired and not o.warn
    assert not s.messages and s.recipients_held == 0


def test_a_missing_result_counts_as_deferred() -> None:
    s = Scheduler(Settings())
    s.add(message("A3", 2), NOW)
    [d] = s.deliveries(NOW)
    [o] = s.done(d.id, DeliveryReport([RecipientResult(d.recipients[0], SENT, "2.0.0", "ok")]), NOW)
    assert [x.reason for x in o.deferred] == ["delivery agent gave no result for this recipient"]


def test_backoff_stays_in_range_and_spreads() -> None:
    settings = Settings()
    rng = random.Random(7)
    young = [backoff(10, settings, rng) for _ in range(200)]
    old = [backoff(86400, settings, rng) for _ in range(200)]
    middle = [backoff(1000, settings, rng) for _ in range(200)]
    assert all(300 <= x <= 360 for x in young)
    assert all(3200 <= x <= 4000 for x in old)
    assert all(800 <= x <= 1200 for x in middle)
    for values in (young, old, middle):
        assert len({round(v) for v in values}) > 20  # no waves: the retries are spread
    assert backoff(1000, replace(settings, backoff_jitter=0.0), rng) == 1000


def test_expired_messages_bounce_with_the_last_reason() -> None:
    s = Scheduler(Settings(maximal_queue_lifetime=86400, bounce_queue_lifetime=3600))
    s.add(message("A4", arrival=NOW - 86400), NOW)
    s.add(message("A5", sender="", arrival=NOW - 3600), NOW)
    s.add(message("A6", arrival=NOW - 3600), NOW)
    outcomes = {}
    for d in s.deliveries(NOW):
        for o in s.done(d.id, report(d, DEFERRED), NOW):
            outcomes[o.message.qid] = o
    for qid in ("A4", "A5"):
        o = outcomes[qid]
        assert o.expired and o.retry_at is None and not o.deferred
        assert [(b.dsn, b.reason) for b in o.bounced] == [("4.4.1", "deferred reason")]
    assert not outcomes["A6"].expired and outcomes["A6"].retry_at is not None


def test_delay_warning_once_and_never_to_the_null_sender() -> None:
    s = Scheduler(Settings(delay_warning_time=3600))
    s.add(message("A7", arrival=NOW - 4000), NOW)
    s.add(message("A8", arrival=NOW - 4000, warned=True), NOW)
    s.add(message("A9", arrival=NOW - 4000, sender=""), NOW)
    s.add(message("AA", arrival=NOW - 100), NOW)
    warn = {}
    for d in s.deliveries(NOW):
        for o in s.done(d.id, report(d, DEFERRED), NOW):
            warn[o.message.qid] = o.warn
    assert warn == {"A7": True, "A8": False, "A9": False, "AA": False}


def test_defer_transports_hold_mail_until_a_flush() -> None:
    s = Scheduler(Settings(defer_transports=frozenset({"smtp"})))
    [o] = s.add(message("AB"), NOW)
    assert [(x.status, x.reason) for x in o.results] == [(DEFERRED, "deferred transport")]
    assert s.add(message("AC", flush=True), NOW) == []
    assert len(s.deliveries(NOW)) == 1


def test_room_bounds_the_active_messages_and_recipients() -> None:
    s = Scheduler(Settings(message_active_limit=2, message_recipient_limit=100))
    assert s.room()
    s.add(message("B1", 150), NOW)  # one message is always admitted, however large
    assert not s.room()
    s2 = Scheduler(Settings(message_active_limit=2))
    s2.add(message("B2"), NOW)
    assert s2.room()
    s2.add(message("B3"), NOW)
    assert not s2.room()


def test_process_limit_caps_a_transport_across_destinations() -> None:
    s = Scheduler(Settings(process_limit=3))
    for i in range(5):
        s.add(message(f"B{i:04X}", route=Route("smtp", f"d{i}.example")), NOW)
    assert len(s.deliveries(NOW)) == 3


def test_destinations_take_turns() -> None:
    s = Scheduler(Settings(initial_concurrency=1))
    s.add(message("C1", 3, route=Route("smtp", "a.example")), NOW)
    s.add(message("C2", 3, route=Route("smtp", "b.example")), NOW)
    started = s.deliveries(NOW)
    assert {d.route.nexthop for d in started} == {"a.example", "b.example"}


def test_queue_run_delay_and_wakeup() -> None:
    s = Scheduler(Settings(queue_run_delay=300))
    assert s.deferred_scan_due(NOW)
    assert not s.deferred_scan_due(NOW + 299)
    assert s.wakeup(NOW + 10) == NOW + 300
    assert s.deferred_scan_due(NOW + 300)


def test_idle_destinations_are_forgotten() -> None:
    s = Scheduler(Settings())
    s.add(message("D1"), NOW)
    [d] = s.deliveries(NOW)
    s.done(d.id, report(d), NOW)
    s.tick(NOW)
    assert s.destinations == {}
