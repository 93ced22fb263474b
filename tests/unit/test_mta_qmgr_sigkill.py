"""A queue manager killed with SIGKILL while delivering loses no recipient.

A child process runs the queue manager with an agent that journals each delivery (the
"remote server" has the message once the journal line is written) before answering.
It is killed several times mid-run and restarted; at the end every recipient of every
message is in the journal, and a recipient is delivered twice only when the kill fell
between the remote acceptance and the done mark of its batch (at most the recipients
in flight at each kill).
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time
from pathlib import Path

from filterd.mta.queue import ACTIVE, DEFERRED, INCOMING, Queue
from filterd.mta.queuefile import Recipient
from tests.fixtures.programs import stop_process

ROOT = Path(__file__).resolve().parents[2]
GUARD = 60.0
MESSAGES = 150
RCPTS = 3
KILLS = 4
CHILD = """
import asyncio, os, sys
sys.path.insert(0, {root!r})
from filterd.mta.bounce import NoticeSettings
from filterd.mta.delivery import SENT, DeliveryReport, RecipientResult, Route
from filterd.mta.qmgr import QueueManager
from filterd.mta.queue import Queue
from filterd.mta.scheduler import Scheduler, Settings

class Journal:
    async def deliver(self, message, nexthop, recipients):
        await asyncio.sleep(0.002)
        fd = os.open({journal!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, "".join(f"{{message.qid}} {{r.address}}\\n" for r in recipients).encode())
        os.close(fd)
        return DeliveryReport([RecipientResult(r, SENT, "2.0.0", "250 ok") for r in recipients])

qm = QueueManager(Queue({path!r}), Scheduler(Settings()), {{"smtp": Journal()}},
                  lambda a: Route("smtp", "example.net"), NoticeSettings("h.test", frozenset()))
asyncio.run(qm.run())
"""


def journal_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_sigkill_during_delivery_loses_nothing(tmp_path: Path) -> None:
    queue = Queue(str(tmp_path / "queue"))
    queue.setup()
    expected = set()
    for i in range(MESSAGES):
        with queue.create() as msg:
            rcpts = [f"m{i}r{j}@example.net" for j in range(RCPTS)]
            msg.writer.envelope(time.time(), "a@example.com", [Recipient(r) for r in rcpts])
            msg.writer.content(b"Subject: x\r\n\r\nbody\r\n")
            msg.commit()
        expected |= {f"{msg.qid} {r}" for r in rcpts}
    journal = tmp_path / "journal"
    script = CHILD.format(root=str(ROOT), path=queue.directory, journal=str(journal))

    def remaining() -> int:
        return sum(1 for name in (INCOMING, ACTIVE, DEFERRED) for _ in queue.scan(name))

    for kill in range(KILLS + 1):
        child = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL)
        try:
            target = 60 + 90 * kill  # journal lines at which this round is killed (of 450)
            deadline = time.monotonic() + GUARD
            while True:
                assert child.poll() is None, "the queue manager died by itself"
                assert time.monotonic() < deadline, "no progress"
                if kill < KILLS and len(journal_lines(journal)) >= target:
                    child.send_signal(signal.SIGKILL)
                    child.wait()
                    break
                if remaining() == 0:
                    break
                time.sleep(0.01)
        finally:
            stop_process(child, 10)
    delivered = journal_lines(journal)
    assert set(delivered) == expected  # nothing lost, nothing invented
    duplicates = sum(n - 1 for n in collections.Counter(delivered).values())
    # at most the batches in flight at each kill (window 20, one batch per message)
    assert duplicates <= KILLS * 20 * RCPTS, f"{duplicates} repeated deliveries after {KILLS} kills"
    assert list(queue.scan(DEFERRED)) == [] and list(queue.scan("corrupt")) == []
