"""No committed message is lost when the writing process is killed (SIGKILL) at any moment.

A child process commits messages as fast as it can and prints each queue id once
commit() has returned (the moment smtpd would answer 250). It is killed at several
points in its run; after each kill, recovery must find every announced message
complete and readable, and discard what was being written.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from filterd.mta.queue import INCOMING, Queue
from filterd.mta.queuefile import read_content

ROOT = Path(__file__).resolve().parents[2]
GUARD = 30.0
WRITER = """
import os, sys, time
sys.path.insert(0, {root!r})
from filterd.mta.queue import Queue
from filterd.mta.queuefile import Recipient
queue = Queue({path!r})
body = b"Subject: kill test\\r\\n\\r\\n" + b"x" * 70000 + b"\\r\\n"
while True:
    with queue.create() as msg:
        msg.writer.envelope(time.time(), "a@example.com", [Recipient("b@example.net")])
        msg.writer.content(body)
        msg.commit()
    os.write(1, (msg.qid + "\\n").encode())
"""


def test_sigkill_never_loses_a_committed_message(tmp_path: Path) -> None:
    queue = Queue(str(tmp_path / "queue"))
    queue.setup()
    announced: set[str] = set()
    for round_ in range(5):
        child = subprocess.Popen([sys.executable, "-c", WRITER.format(root=str(ROOT), path=queue.directory)],
                                 stdout=subprocess.PIPE)
        assert child.stdout is not None
        buf = b""
        want = len(announced) + 3 + round_ * 7  # kill at a different point each round
        deadline = time.monotonic() + GUARD
        while len(announced) < want:
            assert time.monotonic() < deadline, "the writer made no progress"
            ready, _, _ = select.select([child.stdout], [], [], 1.0)
            if ready:
                buf += os.read(child.stdout.fileno(), 4096)
                *lines, buf = buf.split(b"\n")
                announced.update(line.decode() for line in lines)
        child.send_signal(signal.SIGKILL)
        child.wait()
        rest = child.stdout.read()
        announced.update(line.decode() for line in (buf + rest).split(b"\n") if line)
        child.stdout.close()
        queue.recover()
        on_disk = {e.qid for e in queue.scan(INCOMING)}
        assert announced <= on_disk, f"lost: {announced - on_disk}"
        # Killed between commit() and announcing it: complete, kept (a 250 that never went
        # out means at most a duplicate, as in Postfix); never more than one per kill.
        assert len(on_disk - announced) <= 1
        announced |= on_disk
        assert sorted(os.listdir(queue.dir(INCOMING))) == sorted(on_disk)
        for qid in on_disk:
            fd = queue.open(INCOMING, qid)
            try:
                assert len(read_content(fd, queue.read_envelope(INCOMING, qid))) == 70024
            finally:
                os.close(fd)
