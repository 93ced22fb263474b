"""The gateway MTA whole: ``filterd serve`` receiving with its smtpd, queueing, and
delivering with its queue manager and smtp agent, between real Postfix instances and
Postfix's smtp-sink.

- Postfix sends to filterd, filterd relays to another Postfix, which delivers to a sink.
- The next hop is down: the message waits in ``deferred`` with the reason, is retried
  with backoff and delivered when the next hop returns; another one outlives a short
  ``maximal_queue_lifetime`` and is returned to its sender; pflogsumm summarises the run.
- The queue tools on a live queue.
- No loss: the whole daemon is killed with SIGKILL several times while clients send; every
  message that got a 250 is delivered after the restarts, counted at the next hop.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.fixtures.filterd import Daemon, wait_port
from tests.fixtures.programs import free_port, wait_for
from tests.fixtures.smtp_sink import Sink

pytestmark = pytest.mark.integration

RELAY = "relay.example"
SENDER_DOMAIN = "sender.example"


class Gateway:
    """``filterd serve`` as a gateway for RELAY: smtpd on a free port, mail relayed to
    ``nexthop``, retries quick, content checks off unless asked."""

    def __init__(self, tmp: Path, nexthop: str, extra: str = "", workers: int = 2) -> None:
        self.smtp_port = free_port()
        self.queue_dir = tmp / "data" / "queue"
        self.daemon = Daemon(tmp, (
            f"smtpd_listen = inet:127.0.0.1:{self.smtp_port}\n"
            f"relay_domains = {RELAY}\n"
            "mynetworks = 127.0.0.0/8\n"
            "myhostname = gw.filterd.test\n"
            "inet_protocols = ipv4\n"
            f"relayhost = {nexthop}\n"
            "smtpd_content_filter = no\n"
            "rules_extra_directories =\n"
            "smtpd_error_sleep_time = 0\n"
            "smtp_connect_timeout = 2s\n"
            "minimal_backoff_time = 1s\n"
            "maximal_backoff_time = 2s\n"
            "queue_run_delay = 1s\n" + extra), workers=workers)

    def start(self) -> "Gateway":
        self.daemon.start()
        wait_port(self.smtp_port, timeout=30)
        return self

    def send(self, rcpt: str = f"bob@{RELAY}", subject: str = "hello",
             sender: str = f"alice@{SENDER_DOMAIN}") -> str:
        """One message; returns its queue id from ``250 2.0.0 Ok: queued as ID``."""
        body = (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
                f"Message-Id: <{subject.replace(' ', '.')}@{SENDER_DOMAIN}>\r\n\r\nbody of {subject}\r\n")
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as client:
            client.ehlo("client.example")
            client.mail(sender)
            code, text = client.rcpt(rcpt)
            assert code == 250, text
            code, text = client.data(body.encode())
        assert code == 250, text
        m = re.search(rb"queued as ([0-9A-F]+)", text)
        assert m, text
        return m.group(1).decode()

    def queue(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "filterd", "queue", *args, "--config", str(self.daemon.config)],
                              capture_output=True, text=True, timeout=60)

    def listed(self) -> list[dict]:  # type: ignore[type-arg]
        out = self.queue("list", "--json")
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def log(self) -> str:
        return self.daemon.log.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def seen() -> bool:
            m = re.search(pattern, self.log(), re.M)
            if m:
                found.append(m)
            return m is not None
        wait_for(seen, f"log line {pattern!r}", timeout)
        return found[0]

    def stop(self) -> None:
        if self.daemon.proc is not None and self.daemon.proc.poll() is None:
            self.daemon.stop()


@pytest.fixture
def sink() -> "Sink":
    s = Sink()
    yield s
    s.stop()
    shutil.rmtree(s.dump_dir, ignore_errors=True)


def test_postfix_sends_to_filterd_which_relays_to_postfix(tmp_path: Path, postfix_factory) -> None:  # type: ignore[no-untyped-def]
    inner = postfix_factory({"mydestination": "", "relay_domains": RELAY})
    gateway = Gateway(tmp_path, f"[127.0.0.1]:{inner.smtp_port}").start()
    try:
        outer = postfix_factory({"relayhost": f"[127.0.0.1]:{gateway.smtp_port}"})
        reply = outer.send(f"alice@{SENDER_DOMAIN}", [f"bob@{RELAY}", f"carol@{RELAY}"],
                           b"From: alice@sender.example\r\nSubject: through three MTAs\r\n\r\nhello\r\n")
        assert reply.ok, reply
        [message] = inner.wait_messages(1)
        assert message.mail_from == f"alice@{SENDER_DOMAIN}"
        assert sorted(message.rcpt_to) == [f"bob@{RELAY}", f"carol@{RELAY}"]
        received = re.findall(rb"^Received: .*(?:\n\s+.*)*", message.data, re.M)
        # the inner Postfix's, filterd's (by gw.filterd.test with its queue id), the outer Postfix's
        assert len(received) == 3, message.data
        assert b"by gw.filterd.test (filterd) with ESMTP id" in received[1]
        log = gateway.wait_log(r"status=sent \(250 .*queued as")
        assert f"relay=127.0.0.1[127.0.0.1]:{inner.smtp_port}" in log.group(0) or \
            f"relay=127.0.0.1[127.0.0.1]:{inner.smtp_port}" in gateway.log()
    finally:
        gateway.stop()


def test_an_outage_defers_then_delivers_and_a_long_one_bounces(tmp_path: Path, sink: Sink) -> None:
    """The next hop is down: the message waits with the reason, the retries back off,
    and it is delivered once the next hop is back. Mail for a second destination that
    never comes back is returned to its sender after maximal_queue_lifetime; the bounce
    goes out through transport_maps to the sender's own server. pflogsumm counts it all."""
    bounce_sink = Sink().start()
    dead_port = free_port()
    routes = tmp_path / "transport"
    routes.write_text(f"{SENDER_DOMAIN} smtp:{bounce_sink.hop}\n"
                      f"dead.{RELAY} smtp:[127.0.0.1]:{dead_port}\n"
                      f"gone.{RELAY} error:5.1.1 this mailbox is gone\n")
    gateway = Gateway(tmp_path, sink.hop, (
        f"relay_domains = {RELAY}, dead.{RELAY}, gone.{RELAY}\n"
        f"transport_maps = texthash:{routes}\n"
        "maximal_queue_lifetime = 6s\n")).start()
    try:
        qid = gateway.send(subject="waits for the next hop")
        dead = gateway.send(rcpt=f"nobody@dead.{RELAY}", subject="never delivered")
        gone = gateway.send(rcpt=f"old@gone.{RELAY}", subject="bounced at once")
        gateway.wait_log(rf"{gone}: to=<old@gone.{RELAY}>, relay=none, .*dsn=5\.1\.1, "
                         rf"status=bounced \(this mailbox is gone\)")
        gateway.wait_log(rf"{qid}: to=<bob@{RELAY}>, .*status=deferred \(connect to 127\.0\.0\.1\[127\.0\.0\.1\]:"
                         rf"{sink.port}: Connection refused\)")
        wait_for(lambda: any(m["queue_id"] == qid and m["queue_name"] == "deferred" for m in gateway.listed()),
                 "the message in the deferred queue")
        [entry] = [m for m in gateway.listed() if m["queue_id"] == qid]
        assert "Connection refused" in entry["recipients"][0]["delay_reason"]
        # retried with backoff: a second attempt is logged, later than the first
        gateway.wait_log(rf"(?s){qid}: to=<bob@{RELAY}>.*status=deferred.*{qid}: to=<bob@{RELAY}>.*status=deferred")
        sink.start()
        gateway.wait_log(rf"{qid}: to=<bob@{RELAY}>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:{sink.port}, "
                         rf".*dsn=2\.0\.0, status=sent \(250 ")
        gateway.wait_log(rf"{qid}: removed")
        [delivered] = sink.messages()
        assert b"Subject: waits for the next hop" in delivered.data
        # the other one outlives its lifetime and comes back to alice
        gateway.wait_log(rf"{dead}: from=<alice@{SENDER_DOMAIN}>, status=expired, returned to sender", timeout=90)
        wait_for(lambda: len(bounce_sink.messages()) == 2, "the bounces at the sender's server")
        for bounce in bounce_sink.messages():
            assert bounce.mail_from == "" and bounce.rcpt_to == (f"alice@{SENDER_DOMAIN}",)
            assert b"multipart/report; report-type=delivery-status" in bounce.data
        texts = b"".join(b.data for b in bounce_sink.messages())
        assert f"nobody@dead.{RELAY}".encode() in texts and b"this mailbox is gone" in texts
        wait_for(lambda: not gateway.listed(), "an empty queue")
    finally:
        gateway.stop()
        bounce_sink.stop()
        shutil.rmtree(bounce_sink.dump_dir, ignore_errors=True)
    pflogsumm = shutil.which("pflogsumm")
    if pflogsumm is None:
        return
    out = subprocess.run([pflogsumm, "--syslog-name=filterd", str(gateway.daemon.log)],
                         capture_output=True, text=True, timeout=60).stdout

    def total(label: str) -> int:
        m = re.search(rf"^\s+(\d+)\s+{label}\b", out, re.M)
        assert m, out
        return int(m.group(1))
    # pflogsumm counts as Postfix logs: received from clients (not the bounces), a
    # status=bounced line as bounced (an expiry is not one: Postfix logs it as expired)
    assert total("received") == 3
    assert total("delivered") == 3  # the message and the two bounces
    assert total("deferred") >= 2
    assert total("bounced") == 1


def test_the_queue_tools_on_a_live_queue(tmp_path: Path, sink: Sink) -> None:
    sink.start()
    gateway = Gateway(tmp_path, sink.hop, "defer_transports = smtp\n").start()
    try:
        keep, held, gone = (gateway.send(subject=s) for s in ("kept", "held", "deleted"))
        wait_for(lambda: sorted(m["queue_id"] for m in gateway.listed() if m["queue_name"] == "deferred")
                 == sorted([keep, held, gone]), "three deferred messages")
        plain = gateway.queue("list")
        assert plain.returncode == 0 and "-- 3 Kbytes in 3 Requests." in plain.stdout or \
            re.search(r"-- \d+ Kbytes in 3 Requests\.", plain.stdout), plain.stdout
        cat = gateway.queue("cat", keep)
        assert cat.returncode == 0 and "Subject: kept" in cat.stdout and "*** ENVELOPE RECORDS" in cat.stdout
        assert gateway.queue("hold", held).returncode == 0
        assert gateway.queue("delete", gone).returncode == 0
        listed = {m["queue_id"]: m["queue_name"] for m in gateway.listed()}
        assert listed == {keep: "deferred", held: "hold"}
        assert gateway.queue("flush").returncode == 0  # defer_transports yield to a flush
        gateway.wait_log(rf"{keep}: to=<bob@{RELAY}>, .*status=sent")
        wait_for(lambda: {m["queue_id"] for m in gateway.listed()} == {held}, "only the held one left")
        assert gateway.queue("release", held).returncode == 0
        assert gateway.queue("flush").returncode == 0
        gateway.wait_log(rf"{held}: to=<bob@{RELAY}>, .*status=sent")
        wait_for(lambda: not gateway.listed(), "an empty queue")
        subjects = sorted(re.search(rb"Subject: (\w+)", m.data).group(1) for m in sink.messages())  # type: ignore[union-attr]
        assert subjects == [b"held", b"kept"]
        log = gateway.log()
        assert f"{gone}: removed" in log and f"{held}: placed on hold" in log
    finally:
        gateway.stop()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the master's workers)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                out.append(int(entry))
    return out


def test_sigkill_of_the_whole_daemon_under_load_loses_no_accepted_message(tmp_path: Path, sink: Sink) -> None:
    """Clients send all along; the master and every worker are killed with SIGKILL
    three times and the daemon started again. Every message that got a 250 reaches the
    next hop (at least once: a delivery in flight at the kill is repeated, as in Postfix)."""
    sink.start()
    gateway = Gateway(tmp_path, sink.hop).start()
    accepted: list[str] = []
    lock = threading.Lock()
    running = True
    sent = 0

    def client(n: int) -> None:
        nonlocal sent
        i = 0
        while running:
            subject = f"c{n}m{i}"
            i += 1
            try:
                gateway.send(subject=subject)
            except (OSError, smtplib.SMTPException, AssertionError):
                time.sleep(0.05)  # the daemon is down or went down mid-message: not accepted
                continue
            with lock:
                accepted.append(subject)
                sent += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            wait_for(lambda: sent >= len(accepted) and len(accepted) >= 20 * (_ + 1), "mail accepted", 60)
            assert gateway.daemon.proc is not None
            master = gateway.daemon.proc.pid
            for pid in [master, *_children(master)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            gateway.daemon.proc.wait()
            time.sleep(0.2)
            gateway.daemon.start()
            wait_port(gateway.smtp_port, timeout=30)
        time.sleep(1.0)
    finally:
        running = False
        for t in threads:
            t.join(60)
    try:
        with lock:
            expected = set(accepted)
        assert len(expected) >= 60

        def delivered() -> set[str]:
            got = set()
            for m in sink.messages():
                found = re.search(rb"Subject: (c\d+m\d+)", m.data)
                if found:
                    got.add(found.group(1).decode())
            return got
        wait_for(lambda: expected <= delivered(), "every accepted message at the next hop", 120)
        wait_for(lambda: not gateway.listed(), "an empty queue", 60)
    finally:
        gateway.stop()
