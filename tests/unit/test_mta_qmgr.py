"""The queue manager's loop over real queue files, with recording delivery agents."""

from __future__ import annotations

import asyncio
import logging
import email
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import pytest

from filterd.mta import qmgr as qmgr_module
from filterd.mta import tools
from filterd.mta.bounce import NoticeSettings
from filterd.mta.delivery import BOUNCED, DEFERRED, SENT, DeliveryReport, OutgoingMessage, RecipientResult, Route
from filterd.mta.qmgr import QueueManager
from filterd.mta.queue import ACTIVE, CORRUPT, DEFERRED as DEFERRED_Q, INCOMING, Queue
from filterd.mta.queuefile import Recipient
from filterd.mta.scheduler import Scheduler, Settings

GUARD = 30.0
"""Not a timing assertion: only stops a test that would otherwise hang."""
BODY = b"From: a@example.com\r\nSubject: test\r\nMessage-ID: <t1@example.com>\r\n\r\nbody\r\n"

Behaviour = Callable[[OutgoingMessage, Recipient], RecipientResult]


def sent(_: OutgoingMessage, r: Recipient) -> RecipientResult:
    return RecipientResult(r, SENT, "2.0.0", "250 2.0.0 Ok", "mx.example.net[192.0.2.25]:25")


class Agent:
    """Records every delivery and answers per recipient as ``behaviour`` says."""

    def __init__(self, behaviour: Behaviour = sent, site_failure: bool = False, pause: float = 0.0):
        self.behaviour = behaviour
        self.site_failure = site_failure
        self.pause = pause
        """Seconds to wait after answering, letting the queue manager's loop run meanwhile."""
        self.calls: list[tuple[str, str, str, list[str], bytes]] = []
        self.peak_active = 0
        self.scheduler: Scheduler | None = None

    async def deliver(self, message: OutgoingMessage, nexthop: str,
                      recipients: Sequence[Recipient]) -> DeliveryReport:
        content = await asyncio.to_thread(lambda: b"".join(message.content()))
        self.calls.append((message.qid, message.sender, nexthop, [r.address for r in recipients], content))
        if self.scheduler is not None:
            self.peak_active = max(self.peak_active, len(self.scheduler.messages))
        results = [self.behaviour(message, r) for r in recipients]
        await asyncio.sleep(self.pause)
        return DeliveryReport(results, self.site_failure)


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    lines: list[str] = []
    monkeypatch.setattr(qmgr_module, "event", lambda part, text: lines.append(f"{part}: {text}"))
    return lines


@pytest.fixture
def queue(tmp_path: Path) -> Queue:
    q = Queue(str(tmp_path / "queue"))
    q.setup()
    return q


def enqueue(queue: Queue, sender: str, rcpts: list[str], arrival: float | None = None) -> str:
    with queue.create() as msg:
        msg.writer.envelope(arrival if arrival is not None else time.time(), sender,
                            [Recipient(r) for r in rcpts])
        msg.writer.content(BODY)
        msg.commit()
    return msg.qid


def manager(queue: Queue, agent: Agent, router: Callable[[str], Route] | None = None,
            **settings: object) -> QueueManager:
    scheduler = Scheduler(Settings(**settings))  # type: ignore[arg-type]
    agent.scheduler = scheduler
    return QueueManager(queue, scheduler, {"smtp": agent},
                        router or (lambda a: Route("smtp", a.rpartition("@")[2])),
                        NoticeSettings("gw.example.test", frozenset({"resource", "software"})))


async def run_until(qm: QueueManager, done: Callable[[], bool]) -> None:
    task = asyncio.create_task(qm.run(grace=5))
    try:
        deadline = time.monotonic() + GUARD
        while not done():
            assert not task.done(), task.exception()
            assert time.monotonic() < deadline, "the queue manager never got there"
            await asyncio.sleep(0.02)
    finally:
        qm.stop()
        await task


def files(queue: Queue, name: str) -> list[str]:
    return [e.qid for e in queue.scan(name)]


def empty(queue: Queue) -> bool:
    return not any(files(queue, n) for n in (INCOMING, ACTIVE, DEFERRED_Q))


async def test_delivers_and_removes(queue: Queue, logged: list[str]) -> None:
    agent = Agent()
    q1 = enqueue(queue, "alice@example.com", ["bob@example.net", "carol@example.org"])
    q2 = enqueue(queue, "alice@example.com", ["dave@example.net"])
    await run_until(manager(queue, agent), lambda: empty(queue))
    assert sorted((c[0], c[2], tuple(c[3])) for c in agent.calls) == sorted([
        (q1, "example.net", ("bob@example.net",)), (q1, "example.org", ("carol@example.org",)),
        (q2, "example.net", ("dave@example.net",))])
    assert all(c[4] == BODY for c in agent.calls)
    assert f"qmgr: {q1}: from=<alice@example.com>, size={len(BODY)}, nrcpt=2 (queue active)" in logged
    assert any(line.startswith(f"smtp: {q1}: to=<bob@example.net>, relay=mx.example.net[192.0.2.25]:25, delay=")
               and line.endswith("dsn=2.0.0, status=sent (250 2.0.0 Ok)") for line in logged)
    assert f"qmgr: {q1}: removed" in logged and f"qmgr: {q2}: removed" in logged


async def test_bounce_quotes_the_remote_reply(queue: Queue, logged: list[str]) -> None:
    reply = "550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown"

    def behaviour(m: OutgoingMessage, r: Recipient) -> RecipientResult:
        if r.address == "bob@example.net":
            return RecipientResult(r, BOUNCED, "5.1.1", f"host mx.example.net[192.0.2.25] said: {reply} "
                                   "(in reply to RCPT TO command)", "mx.example.net[192.0.2.25]:25",
                                   "mx.example.net", reply)
        return sent(m, r)

    agent = Agent(behaviour)
    qid = enqueue(queue, "alice@example.com", ["bob@example.net"])
    await run_until(manager(queue, agent), lambda: len(agent.calls) == 2 and empty(queue))
    dsn_call = agent.calls[1]
    assert dsn_call[1] == "" and dsn_call[3] == ["alice@example.com"]
    dsn = email.message_from_bytes(dsn_call[4])
    assert dsn.get_content_type() == "multipart/report"
    per_rcpt = dsn.get_payload()[1].get_payload()[1]
    assert " ".join(per_rcpt["Diagnostic-Code"].split()) == f"smtp; {reply}"
    notice = [line for line in logged if "sender non-delivery notification" in line]
    assert notice and notice[0].startswith(f"bounce: {qid}: sender non-delivery notification: ")
    new_qid = notice[0].rsplit(" ", 1)[1]
    assert any(line.startswith(f"cleanup: {new_qid}: message-id=<") for line in logged)
    assert f"qmgr: {new_qid}: from=<>, size={len(dsn_call[4])}, nrcpt=1 (queue active)" in logged


async def test_a_failed_bounce_is_not_bounced(queue: Queue, logged: list[str]) -> None:
    agent = Agent(lambda m, r: RecipientResult(r, BOUNCED, "5.1.1", "550 unknown"))
    qid = enqueue(queue, "", ["bob@example.net"])
    await run_until(manager(queue, agent), lambda: empty(queue))
    assert len(agent.calls) == 1
    assert not any("notification" in line for line in logged)
    assert f"qmgr: {qid}: removed" in logged


async def test_deferred_then_flushed(queue: Queue, logged: list[str]) -> None:
    attempts: list[str] = []

    def behaviour(m: OutgoingMessage, r: Recipient) -> RecipientResult:
        attempts.append(r.address)
        if len(attempts) == 1:
            return RecipientResult(r, DEFERRED, "4.4.1",
                                   "connect to mx.example.net[192.0.2.25]:25: Connection refused")
        return sent(m, r)

    agent = Agent(behaviour)
    qid = enqueue(queue, "alice@example.com", ["bob@example.net"])
    qm = manager(queue, agent)
    await run_until(qm, lambda: files(queue, DEFERRED_Q) == [qid])
    [entry] = list(queue.scan(DEFERRED_Q))
    assert entry.mtime > time.time() + 200  # the retry time is the mtime, minimal backoff 300 s +-20%
    assert queue.read_defer_log(qid) == {
        "bob@example.net": "connect to mx.example.net[192.0.2.25]:25: Connection refused"}
    assert any("status=deferred (connect to mx.example.net" in line for line in logged)
    assert tools.flush(queue) == 1
    await run_until(manager(queue, agent), lambda: empty(queue))
    assert attempts == ["bob@example.net", "bob@example.net"]


async def test_delivered_recipients_are_not_tried_again(queue: Queue, logged: list[str]) -> None:
    tried: list[str] = []

    def behaviour(m: OutgoingMessage, r: Recipient) -> RecipientResult:
        tried.append(r.address)
        if r.address == "two@example.net":
            return RecipientResult(r, DEFERRED, "4.2.0", "450 4.2.0 try later")
        return sent(m, r)

    agent = Agent(behaviour)
    qid = enqueue(queue, "alice@example.com", ["one@example.net", "two@example.net"])
    await run_until(manager(queue, agent), lambda: files(queue, DEFERRED_Q) == [qid])
    env = queue.read_envelope(DEFERRED_Q, qid)
    assert [(r.address, r.done) for r in env.recipients] == [("one@example.net", True), ("two@example.net", False)]
    tools.flush(queue)
    agent.behaviour = sent
    await run_until(manager(queue, agent), lambda: empty(queue))
    assert tried == ["one@example.net", "two@example.net"]
    assert agent.calls[-1][3] == ["two@example.net"]


async def test_recovery_and_corrupt_files(queue: Queue, logged: list[str], caplog: pytest.LogCaptureFixture) -> None:
    interrupted = enqueue(queue, "alice@example.com", ["bob@example.net"])
    queue.move(interrupted, INCOMING, ACTIVE)  # the daemon died while delivering it
    broken = enqueue(queue, "alice@example.com", ["carol@example.net"])
    os.truncate(queue.path(INCOMING, broken), 40)
    agent = Agent()
    await run_until(manager(queue, agent), lambda: empty(queue))
    assert [c[0] for c in agent.calls] == [interrupted]
    assert files(queue, CORRUPT) == [broken]
    assert any(f"{broken}: moved to the corrupt queue" in r.getMessage() for r in caplog.records)


async def test_active_limit_bounds_memory(queue: Queue, logged: list[str]) -> None:
    agent = Agent()
    for i in range(30):
        enqueue(queue, "alice@example.com", [f"r{i}@example.net"])
    await run_until(manager(queue, agent, message_active_limit=3), lambda: empty(queue) and len(agent.calls) == 30)
    assert 1 <= agent.peak_active <= 3


async def test_error_and_discard_transports(queue: Queue, logged: list[str]) -> None:
    routes = {"gone.example": Route("error", "5.1.2 domain gone.example is gone"),
              "null.example": Route("discard", "")}
    agent = Agent()
    gone = enqueue(queue, "alice@example.com", ["x@gone.example"])
    null = enqueue(queue, "alice@example.com", ["y@null.example"])
    router = lambda a: routes.get(a.rpartition("@")[2], Route("smtp", a.rpartition("@")[2]))  # noqa: E731
    await run_until(manager(queue, agent, router), lambda: empty(queue) and len(agent.calls) == 1)
    assert any(line.startswith(f"error: {gone}: to=<x@gone.example>, relay=none") and
               line.endswith("dsn=5.1.2, status=bounced (domain gone.example is gone)") for line in logged)
    assert any(line.startswith(f"discard: {null}: to=<y@null.example>") and line.endswith("status=sent (discarded)")
               for line in logged)
    assert agent.calls[0][3] == ["alice@example.com"]  # the bounce for gone.example


async def test_expired_mail_is_returned(queue: Queue, logged: list[str]) -> None:
    agent = Agent(lambda m, r: sent(m, r) if m.sender == "" else
                  RecipientResult(r, DEFERRED, "4.4.1", "connect to x[192.0.2.1]:25: Connection timed out"))
    qid = enqueue(queue, "alice@example.com", ["bob@example.net"], arrival=time.time() - 6 * 86400)
    await run_until(manager(queue, agent), lambda: empty(queue) and len(agent.calls) == 2)
    assert f"qmgr: {qid}: from=<alice@example.com>, status=expired, returned to sender" in logged
    dsn = email.message_from_bytes(agent.calls[1][4])
    per_rcpt = dsn.get_payload()[1].get_payload()[1]
    assert per_rcpt["Action"] == "failed" and per_rcpt["Status"] == "4.4.1"


async def test_one_queue_manager_per_queue_the_second_waits_for_the_first(
        queue: Queue, logged: list[str], caplog: pytest.LogCaptureFixture) -> None:
    """A worker replaced by a reload starts a new queue manager while the old one still
    finishes its deliveries: the new one waits for the lock, and takes over after."""
    caplog.set_level(logging.INFO, "filterd.qmgr")
    agent = Agent()
    first = manager(queue, agent)
    task = asyncio.create_task(first.run())
    second = manager(queue, agent)
    waiting: asyncio.Task[None] | None = None
    try:
        while first._lock_fd < 0:
            assert not task.done()
            await asyncio.sleep(0.01)
        waiting = asyncio.create_task(second.run())
        while "waiting for the queue manager" not in caplog.text:
            assert not waiting.done()
            await asyncio.sleep(0.01)
        assert second._lock_fd < 0
        first.stop()
        await task
        qid = enqueue(queue, "alice@example.com", ["bob@example.net"])
        while not empty(queue):
            assert not waiting.done()
            await asyncio.sleep(0.01)
        assert [call[0] for call in agent.calls] == [qid]
    finally:
        first.stop()
        second.stop()
        await task
        if waiting is not None:
            await waiting


async def test_a_queue_manager_stopped_while_waiting_for_the_lock_ends(queue: Queue, logged: list[str]) -> None:
    first = manager(queue, Agent())
    task = asyncio.create_task(first.run())
    try:
        while first._lock_fd < 0:
            await asyncio.sleep(0.01)
        second = manager(queue, Agent())
        waiting = asyncio.create_task(second.run())
        await asyncio.sleep(0.05)
        second.stop()
        await asyncio.wait_for(waiting, 10)
        assert second._lock_fd < 0
    finally:
        first.stop()
        await task


async def test_new_mail_from_another_process_wakes_the_queue_manager(
        queue: Queue, logged: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A receiver's wake-up datagram makes the queue manager take the file at once,
    long before its next look at the incoming directory."""
    from filterd.mta.trigger import Waker

    monkeypatch.setattr(qmgr_module, "INCOMING_POLL", 3600.0)
    agent = Agent()
    qm = manager(queue, agent)
    task = asyncio.create_task(qm.run())
    try:
        while qm._lock_fd < 0:
            await asyncio.sleep(0.01)
        qid = enqueue(queue, "alice@example.com", ["bob@example.net"])
        Waker(queue.directory).wake()
        while not empty(queue):
            await asyncio.sleep(0.01)
        assert [call[0] for call in agent.calls] == [qid]
    finally:
        qm.stop()
        await task


async def test_delay_warning_is_sent_once(queue: Queue, logged: list[str]) -> None:
    agent = Agent(lambda m, r: sent(m, r) if m.sender == "" else
                  RecipientResult(r, DEFERRED, "4.2.0", "450 4.2.0 mailbox busy"))
    qid = enqueue(queue, "alice@example.com", ["bob@example.net"], arrival=time.time() - 7200)
    await run_until(manager(queue, agent, delay_warning_time=3600.0),
                    lambda: files(queue, DEFERRED_Q) == [qid] and len(agent.calls) == 2)
    warning = email.message_from_bytes(agent.calls[1][4])
    assert warning["Subject"] == "Delayed Mail (still being retried)"
    assert queue.read_envelope(DEFERRED_Q, qid).warned
    tools.flush(queue)
    await run_until(manager(queue, agent, delay_warning_time=3600.0),
                    lambda: files(queue, DEFERRED_Q) == [qid] and len(agent.calls) == 3)
    assert [c[1] for c in agent.calls] == ["alice@example.com", "", "alice@example.com"]  # no second warning
    assert sum("sender delay notification" in line for line in logged) == 1


async def test_a_dead_destination_defers_the_rest_without_trying(queue: Queue, logged: list[str]) -> None:
    refused = "connect to mx.example.net[192.0.2.25]:25: Connection refused"
    agent = Agent(lambda m, r: RecipientResult(r, DEFERRED, "4.4.1", refused), site_failure=True)
    for i in range(12):
        enqueue(queue, "alice@example.com", [f"r{i}@example.net"])
    await run_until(manager(queue, agent), lambda: len(files(queue, DEFERRED_Q)) == 12)
    # Dead after one failed cohort (5 failed sessions at the initial window); sessions
    # started while the window shrank may add a few more, never all twelve.
    tried = len(agent.calls)
    assert 5 <= tried < 12
    suspended = [line for line in logged if "status=deferred (delivery temporarily suspended: " + refused in line]
    assert len(suspended) == 12 - tried


async def test_defer_transports_wait_for_a_flush(queue: Queue, logged: list[str]) -> None:
    agent = Agent()
    qid = enqueue(queue, "alice@example.com", ["bob@example.net"])
    await run_until(manager(queue, agent, defer_transports=frozenset({"smtp"})),
                    lambda: files(queue, DEFERRED_Q) == [qid])
    assert agent.calls == []
    assert any(line.endswith("status=deferred (deferred transport)") for line in logged)
    tools.flush(queue)
    await run_until(manager(queue, agent, defer_transports=frozenset({"smtp"})), lambda: empty(queue))
    assert [c[0] for c in agent.calls] == [qid]


async def test_new_mail_is_picked_up_while_running(queue: Queue, logged: list[str]) -> None:
    agent = Agent()
    qm = manager(queue, agent)
    task = asyncio.create_task(qm.run(grace=5))
    try:
        deadline = time.monotonic() + GUARD
        for i in range(5):
            qid = enqueue(queue, "alice@example.com", [f"r{i}@example.net"])  # another process's write
            while qid not in [c[0] for c in agent.calls]:
                assert time.monotonic() < deadline, "new mail was not noticed"
                await asyncio.sleep(0.02)
    finally:
        qm.stop()
        await task


@pytest.mark.parametrize("tool, lands_in", [(tools.hold, "hold"), (tools.requeue, "incoming")])
async def test_a_message_moved_during_delivery_keeps_its_progress(
        queue: Queue, logged: list[str], caplog: pytest.LogCaptureFixture,
        tool: Callable[[Queue, list[str]], int], lands_in: str) -> None:
    def behaviour(m: OutgoingMessage, r: Recipient) -> RecipientResult:
        if r.address == "one@example.net":
            tool(queue, [m.qid])  # the administrator acts while the message is being delivered
            return sent(m, r)
        return RecipientResult(r, DEFERRED, "4.2.0", "450 later")

    # The pause outlasts the incoming poll: the loop sees the requeued file mid-delivery.
    agent = Agent(behaviour, pause=2 * qmgr_module.INCOMING_POLL)
    qid = enqueue(queue, "alice@example.com", ["one@example.net", "two@example.net"])
    qm = manager(queue, agent)
    if lands_in == "hold":
        await run_until(qm, lambda: any("left there" in r.getMessage() for r in caplog.records))
        assert queue.find(qid) == "hold"
        assert [r.done for r in queue.read_envelope("hold", qid).recipients] == [True, False]
        tools.release(queue, [qid])
        tools.flush(queue)
        agent.behaviour = sent
        await run_until(manager(queue, agent), lambda: empty(queue))
    else:
        # requeued: taken again once the first pass is over, for the recipient still pending
        await run_until(qm, lambda: len(agent.calls) == 2 and files(queue, DEFERRED_Q) == [qid])
    # one@ was delivered once; only two@ was tried again
    assert [c[3] for c in agent.calls][0] == ["one@example.net", "two@example.net"]
    assert all(c[3] == ["two@example.net"] for c in agent.calls[1:])


async def test_a_bounce_that_cannot_be_queued_is_tried_again(
        queue: Queue, logged: list[str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = Agent(lambda m, r: sent(m, r) if m.sender == "" else RecipientResult(r, BOUNCED, "5.1.1", "550 unknown"))
    qid = enqueue(queue, "alice@example.com", ["bob@example.net"])
    qm = manager(queue, agent)

    def disk_full(*args: object) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(qm, "_enqueue_notice", disk_full)
    await run_until(qm, lambda: files(queue, DEFERRED_Q) == [qid])
    assert [r.done for r in queue.read_envelope(DEFERRED_Q, qid).recipients] == [False]  # not lost
    assert any("cannot queue a notification" in r.getMessage() for r in caplog.records)
    tools.flush(queue)
    await run_until(manager(queue, agent), lambda: empty(queue) and len(agent.calls) == 3)
    assert agent.calls[2][1] == "" and agent.calls[2][3] == ["alice@example.com"]


async def test_from_config(queue: Queue, logged: list[str]) -> None:
    from filterd.config import Config

    cfg = Config.from_text(f"queue_directory = {queue.directory}\nmyhostname = gw.example.test\n"
                           "transport_maps = inline:{ example.net=discard:, { example.org = error:5.7.1 not here } }\n"
                           "notify_classes = bounce\n")
    qm = QueueManager.from_config(cfg, {})
    assert qm.notice_settings.notify_classes == frozenset({"bounce"})
    a = enqueue(queue, "", ["x@example.net"])
    b = enqueue(queue, "", ["y@example.org"])
    await run_until(qm, lambda: f"qmgr: {a}: removed" in logged and f"qmgr: {b}: removed" in logged)
    assert any(line.startswith(f"discard: {a}: to=<x@example.net>") for line in logged)
    assert any(line.startswith(f"error: {b}: to=<y@example.org>") and line.endswith("status=bounced (not here)")
               for line in logged)


async def wait_or_fail(qm: QueueManager, done: Callable[[], bool], guard: float = 10.0) -> None:
    """Like run_until, with a shorter guard: used where the old code never got there."""
    task = asyncio.create_task(qm.run(grace=5))
    try:
        deadline = time.monotonic() + guard
        while not done():
            assert not task.done(), task.exception()
            assert time.monotonic() < deadline, "stuck"
            await asyncio.sleep(0.02)
    finally:
        qm.stop()
        await task


def forgotten(qm: QueueManager) -> bool:
    """Nothing of any message is left in the queue manager's memory."""
    s = qm.scheduler
    return not (s.messages or s.in_flight or qm._activated or qm._logged or qm._prefetched
                or qm._prefetched_bytes or any(d.busy for d in s.destinations.values()))


async def test_a_failure_to_mark_recipients_done_leaves_nothing_stuck(
        queue: Queue, logged: list[str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first delivery's done marks fail (an I/O error): the delivery still counts as
    over, the second delivery completes the message, and nothing of it stays behind in
    the scheduler or the side tables (before, the message stayed active for ever)."""
    real = qmgr_module.mark_done
    calls: list[int] = []

    def failing_once(fd: int, recipients: Sequence[Recipient]) -> None:
        calls.append(len(list(recipients)))
        if len(calls) == 1:
            raise OSError(5, "Input/output error")
        real(fd, recipients)

    monkeypatch.setattr(qmgr_module, "mark_done", failing_once)
    agent = Agent(pause=0.1)
    enqueue(queue, "alice@example.com", ["one@one.example", "two@two.example"])
    qm = manager(queue, agent, initial_concurrency=1)
    await wait_or_fail(qm, lambda: empty(queue) and forgotten(qm))
    assert len(agent.calls) == 2
    assert any("cannot record the delivered recipients" in r.getMessage() for r in caplog.records)


async def test_a_failure_at_the_end_of_a_pass_defers_the_file(
        queue: Queue, logged: list[str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The end of a pass fails unexpectedly: the file is deferred for a later try, not
    left in the active queue where no scan finds it until the next start."""
    agent = Agent()
    qid = enqueue(queue, "alice@example.com", ["bob@example.net"])
    qm = manager(queue, agent)

    def broken(*args: object) -> list[tuple[str, str]]:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(qm, "_finish_files", broken)
    await wait_or_fail(qm, lambda: files(queue, DEFERRED_Q) == [qid] and forgotten(qm))
    assert files(queue, ACTIVE) == []
    assert any("cannot finish the delivery pass" in r.getMessage() for r in caplog.records)


async def test_small_messages_are_read_when_taken_within_a_budget(
        queue: Queue, logged: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A small message's content is read in the thread hop that takes it, and handed to
    its first delivery (no second hop to read it); what is held so stays within the
    budget, and nothing is left held once the messages are done."""
    monkeypatch.setattr(qmgr_module, "PREFETCH_BUDGET", 2 * len(BODY))
    handed: list[bytes | None] = []

    class Recording(Agent):
        async def deliver(self, message: OutgoingMessage, nexthop: str,
                          recipients: Sequence[Recipient]) -> DeliveryReport:
            handed.append(message.data)
            return await super().deliver(message, nexthop, recipients)

    agent = Recording()
    for _ in range(3):
        enqueue(queue, "alice@example.com", ["bob@example.net"])
    qm = manager(queue, agent)
    await run_until(qm, lambda: empty(queue) and len(agent.calls) == 3)
    assert sorted(handed, key=lambda d: d is None) == [BODY, BODY, None]  # the third is over budget
    assert all(c[4] == BODY for c in agent.calls)  # read from the file, it is the same
    assert forgotten(qm)


async def test_a_message_deferred_without_a_delivery_holds_nothing(queue: Queue, logged: list[str]) -> None:
    agent = Agent()
    enqueue(queue, "alice@example.com", ["bob@example.net"])
    qm = manager(queue, agent, defer_transports=frozenset({"smtp"}))
    await wait_or_fail(qm, lambda: len(files(queue, DEFERRED_Q)) == 1 and forgotten(qm))
    assert agent.calls == []
