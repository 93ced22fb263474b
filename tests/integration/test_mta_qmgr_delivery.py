"""The queue manager delivering through the real smtp agent to Postfix's smtp-sink.

Messages are written into a temporary queue as smtpd would (Queue.create), and a
QueueManager built by from_config with network_agents() runs in-process with retry times
of a second, so a test sees: delivery counted at the sink; an unreachable next hop
deferred (deferred queue, defer log), retried and delivered once the sink is up;
mail bounced when the lifetime is over or the sink refuses it, the bounce quoting the
remote server's reply in its Diagnostic-Code and delivered to a second sink.
"""

from __future__ import annotations

import asyncio
import email
import time
from collections.abc import Callable
from email.message import Message
from pathlib import Path

import pytest

from filterd.config import Config
from filterd.mta import qmgr as qmgr_module
from filterd.mta.qmgr import QueueManager
from filterd.mta.queue import ACTIVE, DEFERRED, INCOMING, Queue
from filterd.mta.queuefile import Recipient
from filterd.mta.smtp_agent import network_agents
from tests.fixtures.programs import free_port
from tests.fixtures.smtp_sink import Sink, sinks  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

GUARD = 60.0
"""Not a timing assertion: only stops a test that would otherwise hang."""
BODY = b"From: alice@example.org\r\nSubject: queued\r\nMessage-ID: <q@example.org>\r\n\r\nhello\r\n"


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    lines: list[str] = []
    monkeypatch.setattr(qmgr_module, "event", lambda part, text: lines.append(f"{part}: {text}"))
    return lines


def config(queue_dir: Path, relay_port: int, **params: str) -> Config:
    settings = {"queue_directory": str(queue_dir), "myhostname": "gw.example.test", "inet_protocols": "ipv4",
                "relayhost": f"[127.0.0.1]:{relay_port}", "minimal_backoff_time": "1s",
                "maximal_backoff_time": "2s", "queue_run_delay": "1s", "smtp_connect_timeout": "5s"} | params
    return Config.from_text("".join(f"{k} = {v}\n" for k, v in settings.items()))


def enqueue(queue: Queue, rcpts: list[str], sender: str = "alice@example.org", body: bytes = BODY) -> str:
    with queue.create() as msg:
        msg.writer.envelope(time.time(), sender, [Recipient(r) for r in rcpts])
        msg.writer.content(body)
        msg.commit()
    return msg.qid


def in_queue(queue: Queue, name: str) -> list[str]:
    return [e.qid for e in queue.scan(name)]


async def run_until(qm: QueueManager, done: Callable[[], bool]) -> None:
    task = asyncio.create_task(qm.run(grace=5))
    try:
        deadline = time.monotonic() + GUARD
        while not done():
            assert not task.done(), task.exception()
            assert time.monotonic() < deadline, "the queue manager never got there"
            await asyncio.sleep(0.05)
    finally:
        qm.stop()
        await task


async def manager(cfg: Config) -> tuple[QueueManager, Queue]:
    agents = network_agents(cfg)
    qm = QueueManager.from_config(cfg, agents)
    return qm, qm.queue


def start(sinks: list[Sink], *flags: str, port: int | None = None) -> Sink:
    sink = Sink(tuple(flags), port=port).start()
    sinks.append(sink)
    return sink


def delivery_status(msg: Message) -> Message:
    """The per-recipient part of an RFC 3464 report."""
    report = msg.get_payload()[1]
    return report.get_payload()[1]


async def test_delivered_and_counted_at_the_sink(sinks: list[Sink], tmp_path: Path, logged: list[str]) -> None:
    sink = start(sinks)
    qm, queue = await manager(config(tmp_path / "queue", sink.port))
    queue.setup()
    qids = [enqueue(queue, [f"u{i}@example.net", f"v{i}@example.net"]) for i in range(20)]
    await run_until(qm, lambda: all(f"qmgr: {q}: removed" in logged for q in qids))
    got = sink.messages()
    assert len(got) == 20 and all(len(m.rcpt_to) == 2 for m in got)
    assert sum(1 for line in logged if "status=sent (250 2.0.0 Ok" in line) == 40
    assert any(f"relay=127.0.0.1[127.0.0.1]:{sink.port}, " in line for line in logged)


async def test_unreachable_then_delivered_when_the_sink_returns(sinks: list[Sink], tmp_path: Path,
                                                               logged: list[str]) -> None:
    port = free_port()
    qm, queue = await manager(config(tmp_path / "queue", port))
    queue.setup()
    qid = enqueue(queue, ["bob@example.net"])
    reason = f"connect to 127.0.0.1[127.0.0.1]:{port}: Connection refused"
    task = asyncio.create_task(run_until(qm, lambda: f"qmgr: {qid}: removed" in logged))
    deadline = time.monotonic() + GUARD
    while qid not in in_queue(queue, DEFERRED):
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.05)
    assert queue.read_defer_log(qid) == {"bob@example.net": reason}
    assert any(f"{qid}: to=<bob@example.net>, relay=none" in line and f"status=deferred ({reason})" in line
               for line in logged)
    # Retried with backoff: another deferral of the same message before the sink starts.
    while sum(1 for line in logged if f"{qid}: to=<bob@example.net>" in line and "deferred" in line) < 2:
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.05)
    sink = start(sinks, port=port)
    await task
    [got] = sink.messages()
    assert got.rcpt_to == ("bob@example.net",)
    assert any(f"{qid}: to=<bob@example.net>" in line and "status=sent" in line for line in logged)
    assert not any(in_queue(queue, n) for n in (INCOMING, ACTIVE, DEFERRED))


async def bounce_at(bounces: Sink) -> Message:
    deadline = time.monotonic() + GUARD
    while not bounces.messages():
        assert time.monotonic() < deadline, "no bounce reached the sender's sink"
        await asyncio.sleep(0.05)
    [got] = bounces.messages()
    assert got.mail_from == "" and got.rcpt_to == ("alice@example.org",)
    return email.message_from_bytes(got.data)


@pytest.mark.parametrize("flags, diagnostic", [
    (("-r", "RCPT"), "450 4.3.0 Error: command failed"),  # deferred until the lifetime is over
    (("-f", "RCPT"), "500 5.3.0 Error: command failed"),  # bounced at once
])
async def test_bounce_quotes_the_remote_reply(sinks: list[Sink], tmp_path: Path, logged: list[str],
                                              flags: tuple[str, ...], diagnostic: str) -> None:
    refusing = start(sinks, *flags)
    bounces = start(sinks)  # the sender's domain is routed here, so the bounce can be read
    cfg = config(tmp_path / "queue", refusing.port, maximal_queue_lifetime="3s",
                 transport_maps=f"inline:{{ example.org=smtp:[127.0.0.1]:{bounces.port} }}")
    qm, queue = await manager(cfg)
    queue.setup()
    qid = enqueue(queue, ["bob@example.net"])
    bounce = asyncio.create_task(bounce_at(bounces))
    await run_until(qm, lambda: bounce.done() and f"qmgr: {qid}: removed" in logged)
    msg = await bounce
    assert msg.get_content_type() == "multipart/report"
    status = delivery_status(msg)
    assert " ".join(str(status["Diagnostic-Code"]).split()) == f"smtp; {diagnostic}"
    assert str(status["Remote-MTA"]) == "dns; 127.0.0.1"
    assert str(status["Action"]) == "failed"
    status_word = "deferred" if diagnostic.startswith("4") else "bounced"  # then expired
    assert any(f"{qid}: to=<bob@example.net>" in line and f"status={status_word}" in line
               and f"said: {diagnostic} (in reply to RCPT TO command)" in line for line in logged)
    assert refusing.messages() == []


async def test_unreachable_bounces_after_the_lifetime(sinks: list[Sink], tmp_path: Path,
                                                     logged: list[str]) -> None:
    port = free_port()
    bounces = start(sinks)
    cfg = config(tmp_path / "queue", port, maximal_queue_lifetime="2s",
                 transport_maps=f"inline:{{ example.org=smtp:[127.0.0.1]:{bounces.port} }}")
    qm, queue = await manager(cfg)
    queue.setup()
    qid = enqueue(queue, ["bob@example.net"])
    bounce = asyncio.create_task(bounce_at(bounces))
    await run_until(qm, lambda: bounce.done() and f"qmgr: {qid}: removed" in logged)
    status = delivery_status(await bounce)
    # No server answered: the reason is filterd's own (Postfix writes "X-Postfix; ...").
    assert " ".join(str(status["Diagnostic-Code"]).split()) == \
        f"X-Filterd; connect to 127.0.0.1[127.0.0.1]:{port}: Connection refused"
    assert status["Remote-MTA"] is None
