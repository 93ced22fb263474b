"""``filterd queue``: postqueue -p/-j shapes, flush, postsuper actions, postcat."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from filterd.mta import tools
from filterd.mta.queue import ACTIVE, DEFERRED, FLUSHED_MTIME, HOLD, INCOMING, Queue, QueueError
from filterd.mta.queuefile import Recipient, mark_done

ROOT = Path(__file__).resolve().parents[2]


def enqueue(queue: Queue, sender: str, rcpts: list[str], body: bytes = b"Subject: t\r\n\r\nhello\r\n",
            where: str = INCOMING, arrival: float = 1765000000.0) -> str:
    with queue.create() as msg:
        msg.writer.envelope(arrival, sender, [Recipient(r) for r in rcpts], {"client_address": "192.0.2.7"})
        msg.writer.content(body)
        msg.commit()
    if where != INCOMING:
        queue.move(msg.qid, INCOMING, where, retry_at=time.time() + 3600 if where == DEFERRED else None)
    return msg.qid


@pytest.fixture
def queue(tmp_path: Path) -> Queue:
    q = Queue(str(tmp_path / "queue"))
    q.setup()
    return q


def test_empty_queue(queue: Queue) -> None:
    out = io.StringIO()
    tools.list_queue(queue, out)
    assert out.getvalue() == "Mail queue is empty\n"


def test_mailq_shape(queue: Queue) -> None:
    a = enqueue(queue, "alice@example.com", ["bob@example.net"], where=ACTIVE)
    d = enqueue(queue, "", ["carol@example.org", "dave@example.org", "erin@example.org"], where=DEFERRED)
    h = enqueue(queue, "frank@example.com", ["gina@example.net"], where=HOLD)
    reason = "connect to mx.example.org[192.0.2.1]:25: Connection refused"
    queue.write_defer_log(d, {"carol@example.org": reason, "dave@example.org": reason})
    fd = queue.open(DEFERRED, d, writable=True)
    try:
        mark_done(fd, [queue.read_envelope(DEFERRED, d).recipients[2]])
    finally:
        os.close(fd)
    out = io.StringIO()
    tools.list_queue(queue, out)
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[0] == "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
    when = time.strftime("%a %b %e %H:%M:%S", time.localtime(1765000000))
    assert f"{a:<10}*      21 {when}  alice@example.com" in lines
    assert f"{h:<10}!      21 {when}  frank@example.com" in lines
    assert f"{d:<10}       21 {when}  MAILER-DAEMON" in lines
    assert " " * (76 - len(reason)) + f"({reason})" in lines
    assert lines.count(f"({reason})".rjust(76 + 2)) == 1  # shown once for both recipients
    assert " " * 41 + "carol@example.org" in lines and " " * 41 + "dave@example.org" in lines
    assert "erin@example.org" not in text  # done recipients are not listed
    assert lines[-1] == "-- 0 Kbytes in 3 Requests."


def test_postqueue_json(queue: Queue) -> None:
    d = enqueue(queue, "alice@example.com", ["bob@example.net", "carol@example.net"], where=DEFERRED)
    queue.write_defer_log(d, {"bob@example.net": "450 4.2.0 greylisted"})
    out = io.StringIO()
    tools.list_json(queue, out)
    [obj] = [json.loads(line) for line in out.getvalue().splitlines()]
    assert obj == {"queue_name": "deferred", "queue_id": d, "arrival_time": 1765000000,
                   "message_size": 21, "forced_expire": False, "sender": "alice@example.com",
                   "recipients": [{"address": "bob@example.net", "delay_reason": "450 4.2.0 greylisted"},
                                  {"address": "carol@example.net"}]}


def test_unreadable_and_unfinished_files_are_skipped(queue: Queue) -> None:
    good = enqueue(queue, "a@b", ["c@d"], where=DEFERRED)
    bad = enqueue(queue, "a@b", ["c@d"], where=DEFERRED)
    os.truncate(queue.path(DEFERRED, bad), 10)
    writing = queue.create()
    out, warn = io.StringIO(), io.StringIO()
    tools.list_queue(queue, out, warn)
    assert good in out.getvalue() and bad not in out.getvalue() and writing.qid not in out.getvalue()
    assert f"deferred/{bad}: unreadable queue file" in warn.getvalue()
    writing.abort()


def test_flush_and_flush_site(queue: Queue) -> None:
    one = enqueue(queue, "a@b", ["x@one.example"], where=DEFERRED)
    two = enqueue(queue, "a@b", ["x@two.example", "y@One.Example"], where=DEFERRED)
    three = enqueue(queue, "a@b", ["x@three.example"], where=DEFERRED)
    assert tools.flush(queue, "one.example") == 2
    assert {queue.find(q) for q in (one, two)} == {INCOMING} and queue.find(three) == DEFERRED
    [entry] = [e for e in queue.scan(INCOMING) if e.qid == one]
    assert entry.mtime == FLUSHED_MTIME
    assert tools.flush(queue) == 1 and queue.find(three) == INCOMING


def test_hold_release_requeue_delete(queue: Queue) -> None:
    d1 = enqueue(queue, "a@b", ["c@d"], where=DEFERRED)
    d2 = enqueue(queue, "a@b", ["c@d"], where=DEFERRED)
    i1 = enqueue(queue, "a@b", ["c@d"])
    assert tools.hold(queue, [d1]) == 1 and queue.find(d1) == HOLD
    assert tools.hold(queue, ["ALL", "deferred"]) == 1 and queue.find(d2) == HOLD and queue.find(i1) == INCOMING
    assert tools.release(queue, [d1]) == 1 and queue.find(d1) == DEFERRED
    assert tools.requeue(queue, ["ALL"]) == 3
    assert {queue.find(q) for q in (d1, d2, i1)} == {INCOMING}
    with pytest.raises(QueueError, match="no such message in the hold queue"):
        tools.release(queue, [d1])
    with pytest.raises(QueueError, match="bad queue id"):
        tools.delete(queue, ["../../etc"])
    assert tools.delete(queue, ["ALL"]) == 3
    assert [e for e in queue.scan(INCOMING)] == []


def test_cat(queue: Queue) -> None:
    qid = enqueue(queue, "alice@example.com", ["bob@example.net"], where=DEFERRED)
    out = io.BytesIO()
    tools.cat(queue, qid, out)
    text = out.getvalue().decode()
    assert text.startswith(f"*** ENVELOPE RECORDS deferred/{qid} ***\n")
    assert "sender: alice@example.com\n" in text and "recipient: bob@example.net\n" in text
    assert "named_attribute: client_address=192.0.2.7\n" in text
    assert f"*** MESSAGE CONTENTS deferred/{qid} ***\nSubject: t\r\n\r\nhello\r\n" in text
    assert text.endswith(f"*** MESSAGE FILE END deferred/{qid} ***\n")


def test_command_line(queue: Queue, tmp_path: Path) -> None:
    qid = enqueue(queue, "alice@example.com", ["bob@example.net"], where=DEFERRED)
    cf = tmp_path / "filterd.cf"
    cf.write_text(f"queue_directory = {queue.directory}\nmaillog_file = {tmp_path / 'maillog'}\n")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "filterd", "queue", *args, "-c", str(cf)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)

    listed = run("list")
    assert listed.returncode == 0 and qid in listed.stdout and "1 Request." in listed.stdout
    assert json.loads(run("list", "--json").stdout)["queue_id"] == qid
    held = run("hold", qid)
    assert held.returncode == 0 and "Placed on hold: 1 message" in held.stderr
    assert re.search(rf"filterd/postsuper\[\d+\]: {qid}: placed on hold", (tmp_path / "maillog").read_text())
    missing = run("release", "ABCDEF1234")
    assert missing.returncode == 1 and "ABCDEF1234: no such message" in missing.stderr
    assert run("cat", qid).stdout.startswith(f"*** ENVELOPE RECORDS hold/{qid} ***")
