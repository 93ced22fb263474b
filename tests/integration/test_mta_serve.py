"""``filterd serve`` as an MTA: the queue manager runs in exactly one worker, wakes up for
mail a receiver committed, and survives the replacement of its worker by a reload."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from filterd.mta.queue import ACTIVE, DEFERRED, INCOMING, Queue
from filterd.mta.queuefile import Recipient
from filterd.mta.trigger import Waker
from tests.fixtures.filterd import Daemon
from tests.fixtures.programs import free_port, wait_for

pytestmark = pytest.mark.integration

BODY = b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nhello\r\n"


def enqueue(queue: Queue, rcpt: str) -> str:
    """Commit a message to incoming as a receiver does, and wake the queue manager."""
    with queue.create() as msg:
        msg.writer.envelope(time.time(), "alice@example.com", [Recipient(rcpt)])
        msg.writer.content(BODY)
        msg.commit()
    Waker(queue.directory).wake()
    return msg.qid


def queued(queue: Queue) -> list[str]:
    return [name for q in (INCOMING, ACTIVE, DEFERRED) for name in os.listdir(queue.dir(q))
            if not name.startswith(".")]


@pytest.fixture
def daemon(tmp_path: Path):  # type: ignore[no-untyped-def]
    d = Daemon(tmp_path, f"smtpd_listen = inet:127.0.0.1:{free_port()}\n"
                         "rules_extra_directories =\n"
                         "default_transport = discard:delivered by the test\n", workers=2).start()
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.stop()


def test_the_queue_manager_delivers_what_a_receiver_committed(daemon: Daemon, tmp_path: Path) -> None:
    queue = Queue(str(tmp_path / "data" / "queue"))
    wait_for(lambda: os.path.isdir(queue.dir(INCOMING)), "the queue directories")
    qids = [enqueue(queue, f"user{i}@example.net") for i in range(5)]
    wait_for(lambda: not queued(queue), "the queue to empty")
    wait_for(lambda: all(f"{qid}: removed" in daemon.log.read_text() for qid in qids), "the log lines")
    log = daemon.log.read_text()
    for qid in qids:
        assert f"{qid}: to=<" in log
    assert log.count("status=sent (delivered by the test)") == 5
    # one queue manager, though two workers serve
    assert len(set(re.findall(r"filterd/qmgr\[(\d+)\]", log))) == 1


def test_a_reload_that_replaces_the_workers_keeps_one_queue_manager(daemon: Daemon, tmp_path: Path) -> None:
    queue = Queue(str(tmp_path / "data" / "queue"))
    wait_for(lambda: os.path.isdir(queue.dir(INCOMING)), "the queue directories")
    first = enqueue(queue, "before@example.net")
    wait_for(lambda: not queued(queue), "the first message")
    with open(daemon.config, "a") as cf:
        cf.write("default_transport = discard:after the reload\n")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "replacing the workers" in daemon.log.read_text(), "the reload")
    second = enqueue(queue, "after@example.net")
    wait_for(lambda: not queued(queue), "the second message")
    wait_for(lambda: f"{second}: removed" in daemon.log.read_text(), "the log lines")
    log = daemon.log.read_text()
    assert f"{first}: removed" in log and f"{second}: removed" in log
    assert "status=sent (after the reload)" in log
    assert "another queue manager" not in log and "queue manager failed" not in log
    assert daemon.stop() == 0


def test_smtpd_listens_on_every_endpoint_of_its_list(tmp_path: Path) -> None:
    """smtpd_listen is a list, like the several smtpd lines of Postfix's master.cf."""
    import smtplib

    ports = [free_port(), free_port()]
    d = Daemon(tmp_path, "smtpd_listen = " + ", ".join(f"inet:127.0.0.1:{p}" for p in ports) + "\n"
               "smtpd_content_filter = no\nrules_extra_directories =\n", workers=2).start()
    try:
        for port in ports:
            wait_for(lambda: _answers(port), f"smtpd on port {port}", 30)
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                assert client.ehlo()[0] == 250
        log = d.log.read_text()
        assert all(f"inet:127.0.0.1:{p}" in log for p in ports)
    finally:
        d.stop()


def _answers(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(100).startswith(b"220 ")
    except OSError:
        return False
