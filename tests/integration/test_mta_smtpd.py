"""The gateway MTA's smtpd through real sockets: a real ``filterd serve`` with
``smtpd_listen``, clients speaking SMTP (smtplib, raw bytes, swaks, Postfix), and the queue
files it writes read back with filterd.mta.queue.

The client is 127.0.0.1 and ``mynetworks`` is 192.0.2.0/24: every client here is an
outsider, so relay control is what an Internet client meets. Delivery is not tested here;
the tests look at the queue (in whichever queue a file is: a queue manager may move it).
"""

from __future__ import annotations

import re
import shutil
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from filterd.mta.queue import INCOMING, QUEUE_NAMES, Queue, QueueError
from filterd.mta.queuefile import Envelope, read_content, read_envelope
from tests.fixtures.filterd import Daemon
from tests.fixtures.programs import free_port

RELAY = "relay.example"
QUEUED = re.compile(r"250 2\.0\.0 Ok: queued as ([0-9A-F]+)")


class Smtpd:
    """A filterd daemon serving smtpd (and the policy service its fixture waits for)."""

    def __init__(self, tmp: Path, extra: str = "") -> None:
        self.smtp_port = free_port()
        self.queue_dir = tmp / "queue"
        self.daemon = Daemon(tmp, (
            f"smtpd_listen = inet:127.0.0.1:{self.smtp_port}\n"
            f"queue_directory = {self.queue_dir}\n"
            f"relay_domains = {RELAY}\n"
            "mynetworks = 192.0.2.0/24\n"
            "myhostname = gw.filterd.test\n"
            "smtpd_content_filter = no\n"
            "smtpd_error_sleep_time = 0\n"
            "defer_transports = smtp\n"
            "rules_extra_directories =\n" + extra), workers=1)

    def start(self) -> "Smtpd":
        self.daemon.start()
        return self

    def log(self) -> str:
        return self.daemon.log.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 30.0) -> str:
        """The log once a line matches ``pattern`` (the writer buffers lines briefly)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            if re.search(pattern, text) or time.monotonic() > deadline:
                assert re.search(pattern, text), f"no log line matching {pattern!r}"
                return text
            time.sleep(0.2)

    def queued(self, complete: bool = False) -> list[str]:
        """The queue files; ``complete``: only those written whole (a file is opened at
        DATA, while the message still arrives)."""
        queue = Queue(str(self.queue_dir))
        # a set: a file the queue manager moves during the scan is seen in both queues
        return sorted({e.qid for name in QUEUE_NAMES if Path(queue.dir(name)).is_dir()
                       for e in queue.scan(name) if e.complete or not complete})

    def read(self, qid: str) -> tuple[Envelope, bytes]:
        queue = Queue(str(self.queue_dir))
        for _ in range(50):  # a queue manager may be moving it between queues
            where = queue.find(qid)
            if where is not None:
                try:
                    fd = queue.open(where, qid)
                except QueueError:  # moved between the look and the open
                    continue
                try:
                    env = read_envelope(fd)
                    return env, read_content(fd, env)
                except OSError:
                    pass
                finally:
                    import os
                    os.close(fd)
            time.sleep(0.1)
        raise AssertionError(f"{qid} is not in the queue")

    def client(self) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.smtp_port, local_hostname="client.example", timeout=30)

    def raw(self) -> "Raw":
        return Raw(self.smtp_port)


class Raw:
    """A client that sends exact bytes and reads whole replies."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        """One reply (all its lines); '' when the server closed the connection."""
        lines: list[str] = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return "\n".join(lines)
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            text = line.decode("ascii", "replace")
            lines.append(text)
            if text[3:4] != "-":
                return "\n".join(lines)

    def cmd(self, line: str | bytes) -> str:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


SENDER_CHECK = ("smtpd_sender_restrictions = check_sender_access inline:{ spammer@bad.example=REJECT, "
                "{ holdme@sender.example=HOLD held for review }, { dropme@sender.example=DISCARD } }\n")


@pytest.fixture(scope="module")
def smtpd(tmp_path_factory: pytest.TempPathFactory):
    server = Smtpd(tmp_path_factory.mktemp("smtpd"), (
        "smtpd_recipient_limit = 5\n"
        "message_size_limit = 200000\n"
        "smtpd_data_restrictions = reject_unauth_pipelining\n"
        f"{SENDER_CHECK}"
        "smtpd_client_connection_count_limit = 30\n")).start()
    yield server
    server.daemon.stop()


MESSAGE = (b"From: a@sender.example\r\nTo: bob@relay.example\r\nMessage-Id: <m1@sender.example>\r\n"
           b"Subject: hello\r\n\r\nbody line\r\n")


def test_a_message_is_queued_with_its_envelope_dsn_and_a_received_header(smtpd):
    with smtpd.client() as c:
        code, text = c.ehlo()
        assert code == 250
        for keyword in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes", "dsn"):
            assert c.has_extn(keyword), keyword
        assert c.esmtp_features["size"] == "200000"
        assert c.mail("a@sender.example", ["RET=HDRS", "ENVID=id+2B1", "BODY=8BITMIME"]) == (250, b"2.1.0 Ok")
        assert c.rcpt(f"bob@{RELAY}", ["NOTIFY=SUCCESS,FAILURE", f"ORCPT=rfc822;Bob@{RELAY}"])[0] == 250
        assert c.rcpt(f"carol@{RELAY}")[0] == 250
        code, text = c.data(MESSAGE)
    assert code == 250
    qid = QUEUED.match(f"{code} {text.decode()}").group(1)
    env, content = smtpd.read(qid)
    assert env.sender == "a@sender.example"
    assert [(r.address, r.orcpt, r.notify) for r in env.recipients] == [
        (f"bob@{RELAY}", f"Bob@{RELAY}", "FAILURE,SUCCESS"), (f"carol@{RELAY}", "", "")]
    assert env.attributes["ret_flags"] == "HDRS" and env.attributes["envelope_id"] == "id+1"
    assert env.attributes["encoding"] == "8bit"
    assert env.attributes["client_address"] == "127.0.0.1"
    assert content.startswith(b"Received: from client.example (")
    assert f"by gw.filterd.test (filterd) with ESMTP id {qid};".encode() in content
    assert content.endswith(b"Subject: hello\r\n\r\nbody line\r\n")
    smtpd.wait_log(rf"{qid}: client=\S+\[127\.0\.0\.1\]")
    smtpd.wait_log(rf"{qid}: message-id=<m1@sender\.example>")
    smtpd.wait_log(r"disconnect from \S+\[127\.0\.0\.1\] ehlo=1 mail=1 rcpt=2 data=1 quit=1 commands=6")



@pytest.mark.parametrize("rcpt", [
    f"user%other.example@{RELAY}",          # percent hack
    f"other.example!user@{RELAY}",          # bang path
    f"@{RELAY}:user@other.example",         # source route
    f'"user@other.example"@{RELAY}',        # quoted local part
    "user@[192.0.2.1]",                     # address literal
    "user@other.example.",                  # trailing dot
    f"user@other.example@{RELAY}",          # double @
    "user",                                 # unqualified
    "user@other.example",                   # plain relay attempt
])
def test_no_disguise_makes_an_open_relay(smtpd, rcpt):
    before = smtpd.queued()
    c = smtpd.raw()
    assert c.cmd("EHLO client.example").startswith("250")
    assert c.cmd("MAIL FROM:<a@sender.example>").startswith("250")
    reply = c.cmd(f"RCPT TO:<{rcpt}>")
    assert reply[:1] in ("4", "5"), reply
    assert c.cmd("DATA").startswith("503 5.5.1 Error: need RCPT command")
    c.cmd("QUIT")
    c.close()
    assert smtpd.queued() == before


def test_relay_access_denied_text_and_log(smtpd):
    c = smtpd.raw()
    c.cmd("EHLO client.example")
    c.cmd("MAIL FROM:<a@sender.example>")
    assert c.cmd("RCPT TO:<x@other.example>") == "450 4.7.1 <x@other.example>: Relay access denied"
    c.cmd("QUIT")
    c.close()
    smtpd.wait_log(r"NOQUEUE: reject: RCPT from \S+\[127\.0\.0\.1\]: 450 4\.7\.1 <x@other\.example>: "
                     r"Relay access denied; from=<a@sender\.example> to=<x@other\.example> proto=ESMTP "
                     r"helo=<client\.example>")


@pytest.mark.parametrize("sequence", [b"\n.\n", b"\r.\n", b"\n.\r\n", b"\r\n.\n", b"\n.\r"])
def test_smuggling_never_splits_a_message(smtpd, sequence):
    before = smtpd.queued()
    c = smtpd.raw()
    c.cmd("EHLO client.example")
    c.cmd("MAIL FROM:<a@sender.example>")
    c.cmd(f"RCPT TO:<bob@{RELAY}>")
    assert c.cmd("DATA").startswith("354")
    smuggled = (b"MAIL FROM:<admin@bank.example>\r\nRCPT TO:<victim@" + RELAY.encode() + b">\r\nDATA\r\n"
                b"From: admin@bank.example\r\n\r\nsmuggled\r\n")
    c.send(b"Subject: outer\r\n\r\nfirst" + sequence + smuggled + b".\r\n")
    reply = c.reply()
    assert QUEUED.match(reply), reply
    assert c.cmd("QUIT").startswith("221")
    c.close()
    new = sorted(set(smtpd.queued()) - set(before))
    assert new == [QUEUED.match(reply).group(1)]
    env, content = smtpd.read(new[0])
    assert [r.address for r in env.recipients] == [f"bob@{RELAY}"]
    assert b"smuggled" in content and b"MAIL FROM:<admin@bank.example>" in content


def test_bare_lf_is_normalized_by_default(smtpd):
    c = smtpd.raw()
    c.cmd("EHLO client.example")
    c.cmd("MAIL FROM:<a@sender.example>")
    c.cmd(f"RCPT TO:<bob@{RELAY}>")
    c.cmd("DATA")
    reply = c.cmd(b"Subject: lf\n\nline one\nline two\r\n.")
    qid = QUEUED.match(reply).group(1)
    c.close()
    _, content = smtpd.read(qid)
    assert content.endswith(b"Subject: lf\r\n\r\nline one\r\nline two\r\n")


def wait_until(condition, what: str, guard: float = 15.0) -> None:
    """Not a timing assertion: the guard only stops a test that would hang."""
    deadline = time.monotonic() + guard
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_the_queue_file_is_opened_at_data_and_removed_when_the_client_hangs_up(smtpd):
    """The queue file is created (its name synced to disk) as DATA begins, while the
    client still sends, so that after the dot only the file's own fsync remains; a
    client that hangs up in the middle of the message leaves nothing behind."""
    before = smtpd.queued()
    queue = Queue(str(smtpd.queue_dir))
    c = smtpd.raw()
    c.cmd("EHLO client.example")
    assert c.cmd("MAIL FROM:<a@sender.example>").startswith("250")
    assert c.cmd(f"RCPT TO:<bob@{RELAY}>").startswith("250")
    assert c.cmd("DATA").startswith("354")
    wait_until(lambda: any(not e.complete for e in queue.scan(INCOMING)), "no queue file opened at DATA")
    c.send(b"Subject: half\r\n\r\nhalf a message\r\n")
    c.close()
    wait_until(lambda: smtpd.queued() == before, "the abandoned queue file stayed")


def test_size_limits(smtpd):
    before = smtpd.queued()
    c = smtpd.raw()
    c.cmd("EHLO client.example")
    assert c.cmd("MAIL FROM:<a@sender.example> SIZE=200001") == "552 5.3.4 Message size exceeds fixed limit"
    assert c.cmd("MAIL FROM:<a@sender.example> SIZE=1000").startswith("250")
    c.cmd(f"RCPT TO:<bob@{RELAY}>")
    c.cmd("DATA")
    c.send(b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 250)
    assert c.cmd(".") == "552 5.3.4 Error: message file too big"
    assert c.cmd("RSET") == "250 2.0.0 Ok"  # the session goes on
    c.close()
    assert smtpd.queued() == before


@pytest.mark.parametrize("addresses", [[f"r{i}" for i in range(6)], ["same"] * 6],
                         ids=["distinct", "repeated"])
def test_recipient_limit(smtpd, addresses):
    """The sixth RCPT is refused. Postfix counts RCPT commands, so repeating one address
    cannot go on for ever either (each repeat used to be free, and grew the session)."""
    c = smtpd.raw()
    c.cmd("EHLO client.example")
    c.cmd("MAIL FROM:<a@sender.example>")
    for local in addresses[:5]:
        assert c.cmd(f"RCPT TO:<{local}@{RELAY}>").startswith("250")
    assert c.cmd(f"RCPT TO:<{addresses[5]}@{RELAY}>") == "452 4.5.3 Error: too many recipients"
    c.cmd("QUIT")
    c.close()


def test_a_client_gone_after_the_dot_leaves_its_message_whole(smtpd):
    """The client hangs up right after the final dot, before the reply: the message it
    sent is queued with its sender and recipient (the session's reset waited for the
    queue file), as Postfix queues it."""
    before = set(smtpd.queued())
    c = smtpd.raw()
    c.cmd("EHLO client.example")
    c.cmd("MAIL FROM:<gone@sender.example>")
    c.cmd(f"RCPT TO:<bob@{RELAY}>")
    c.cmd("DATA")
    c.send(b"Subject: gone\r\n\r\nbody\r\n.\r\n")
    c.close()
    deadline = time.monotonic() + 30
    while not set(smtpd.queued(complete=True)) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    [qid] = set(smtpd.queued(complete=True)) - before
    env, content = smtpd.read(qid)
    assert env.sender == "gone@sender.example"
    assert [r.address for r in env.recipients] == [f"bob@{RELAY}"]
    assert b"Subject: gone" in content


def test_hard_error_limit_disconnects(smtpd):
    c = smtpd.raw()
    replies = [c.cmd("BOGUS") for _ in range(4)] + [c.cmd("MAIL FROM:") for _ in range(16)]
    assert all(r[:1] == "5" for r in replies), replies
    assert c.reply() == "421 4.7.0 gw.filterd.test Error: too many errors"
    assert c.reply() == ""  # closed
    c.close()


def test_unauth_pipelining_is_refused_at_data(smtpd):
    c = smtpd.raw()
    c.cmd("EHLO client.example")
    c.cmd("MAIL FROM:<a@sender.example>")
    c.cmd(f"RCPT TO:<bob@{RELAY}>")
    reply = c.cmd(b"DATA\r\nSubject: x\r\n\r\nbody\r\n.")
    assert reply.startswith("503 5.5.0 <DATA>: Data command rejected: Improper use of SMTP command pipelining")
    c.close()


def test_pipelining_as_allowed_is_fine(smtpd):
    c = smtpd.raw()
    c.cmd("EHLO client.example")
    c.send(f"MAIL FROM:<a@sender.example>\r\nRCPT TO:<bob@{RELAY}>\r\nDATA\r\n".encode())
    assert c.reply().startswith("250") and c.reply().startswith("250") and c.reply().startswith("354")
    assert QUEUED.match(c.cmd(b"Subject: p\r\n\r\nx\r\n."))
    c.close()


def test_replies_never_echo_client_text_raw(smtpd):
    c = smtpd.raw()
    c.cmd("EHLO client.example")
    reply = c.cmd(b"MAIL FROM:<a@sender.example> X\x1b[31mEVIL\x00=1")
    assert reply.startswith("555 5.5.4 Unsupported option:") and "\x1b" not in reply and "\x00" not in reply
    assert c.cmd(b"XYZZY \x1b[2J") == "502 5.5.2 Error: command not recognized"
    c.close()


def test_a_malformed_session_harms_no_other(smtpd):
    bad = smtpd.raw()
    bad.send(b"\x00\xff\xfe garbage\r\n" + b"A" * 5000 + b"\r\nEHLO \x01\r\nMAIL FROM:<\xff@x>\r\n")
    with smtpd.client() as c:
        c.ehlo()
        c.mail("a@sender.example")
        c.rcpt(f"bob@{RELAY}")
        code, text = c.data(MESSAGE)
    assert code == 250
    bad.close()


def test_xforward_and_auth_are_not_offered(smtpd):
    c = smtpd.raw()
    c.cmd("EHLO client.example")
    assert c.cmd("XFORWARD ADDR=192.0.2.1") == "550 5.7.0 Error: insufficient authorization"
    assert c.cmd("AUTH PLAIN AGJvYgBzZWNyZXQ=") == "503 5.5.1 Error: authentication not enabled"
    assert c.cmd("VRFY root").startswith("502")
    c.close()


def test_swaks(smtpd):
    swaks = shutil.which("swaks")
    if swaks is None:
        pytest.skip("swaks is not installed")
    out = subprocess.run([swaks, "--server", f"127.0.0.1:{smtpd.smtp_port}", "--from", "a@sender.example",
                          "--to", f"bob@{RELAY}", "--helo", "client.example"],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"<-  250 2\.0\.0 Ok: queued as ([0-9A-F]+)", out.stdout)
    assert m, out.stdout
    env, content = smtpd.read(m.group(1))
    assert b"X-Mailer: swaks" in content


def test_connection_count_limit_per_client(tmp_path):
    server = Smtpd(tmp_path, "smtpd_client_connection_count_limit = 2\n").start()
    try:
        first, second = server.raw(), server.raw()
        third = Raw(server.smtp_port)
        assert first.greeting.startswith("220") and second.greeting.startswith("220")
        assert third.greeting == "421 4.7.0 gw.filterd.test Error: too many connections from 127.0.0.1"
        first.close()
        time.sleep(0.3)
        fourth = server.raw()
        assert fourth.greeting.startswith("220")
        for c in (second, third, fourth):
            c.close()
    finally:
        server.daemon.stop()


def test_a_client_that_connects_and_closes_at_once_frees_its_slot(tmp_path):
    """Before: an EOF that came before the session's first step left the connection
    half open until smtpd_timeout, logged as ``timeout after CONNECT``; a client (or a
    scanner) that connected and closed a few times filled its connection limit for
    five minutes."""
    server = Smtpd(tmp_path, "smtpd_client_connection_count_limit = 2\n").start()
    try:
        for _ in range(6):
            socket.create_connection(("127.0.0.1", server.smtp_port)).close()
        deadline = time.monotonic() + 15
        while True:
            first, second = Raw(server.smtp_port), Raw(server.smtp_port)
            greetings = [first.greeting, second.greeting]
            first.close()
            second.close()
            if all(g.startswith("220") for g in greetings) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert all(g.startswith("220") for g in greetings), greetings
    finally:
        server.daemon.stop()
    assert "timeout after CONNECT" not in server.log()


def test_bare_lf_forbidden(tmp_path):
    server = Smtpd(tmp_path, "smtpd_forbid_bare_newline = yes\n").start()
    try:
        c = server.raw()
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<a@sender.example>")
        c.cmd(f"RCPT TO:<bob@{RELAY}>")
        c.cmd("DATA")
        assert c.cmd(b"Subject: lf\n\nline\r\n.") == "521 5.5.2 Error: bare <LF> received"
        assert c.reply() == ""
        c.close()
        assert server.queued() == []
    finally:
        server.daemon.stop()


def test_content_before_the_queue(tmp_path):
    checks = tmp_path / "header_checks"
    checks.write_text("/^Subject: reject me/ REJECT no thanks\n")
    server = Smtpd(tmp_path, (
        "smtpd_content_filter = yes\n"
        "content_checks = postfix_checks, rules\n"
        f"header_checks = regexp:{checks}\n"
        "spam_tag_level = -1000\n")).start()
    try:
        with server.client() as c:
            c.ehlo()
            c.mail("a@sender.example")
            c.rcpt(f"bob@{RELAY}")
            code, text = c.data(b"Subject: reject me\r\n\r\nbody\r\n")
            assert (code, text) == (550, b"5.7.1 no thanks")
            c.rset()
            c.mail("a@sender.example")
            c.rcpt(f"bob@{RELAY}")
            code, text = c.data(MESSAGE)
        assert code == 250, text
        qid = QUEUED.match(f"{code} {text.decode()}").group(1)
        assert server.queued() == [qid]  # the rejected one left nothing behind
        _, content = server.read(qid)
        assert b"X-Spam-Status:" in content and content.startswith(b"Received: ")
    finally:
        server.daemon.stop()


def test_postfix_as_the_sending_mta(smtpd, postfix_factory):
    pf = postfix_factory({"relayhost": f"[127.0.0.1]:{smtpd.smtp_port}"})
    reply = pf.send("alice@sender.example", [f"dave@{RELAY}"], b"Subject: via postfix\r\n\r\nhello\r\n")
    assert reply.code == 250
    deadline = time.monotonic() + 60
    found = None
    while time.monotonic() < deadline and found is None:
        for qid in smtpd.queued(complete=True):
            env, content = smtpd.read(qid)
            if b"Subject: via postfix" in content:
                found = env, content
        time.sleep(0.5)
    assert found is not None, smtpd.log()[-3000:]
    env, content = found
    assert env.sender == "alice@sender.example" and [r.address for r in env.recipients] == [f"dave@{RELAY}"]
    assert content.count(b"Received: ") == 2  # ours on top of Postfix's


def test_a_queue_file_write_error_is_a_451_and_leaves_nothing(tmp_path):
    """Files the daemon writes are limited to 2 MB (RLIMIT_FSIZE, inherited): a 3 MB message
    fails to be written (EFBIG, as a full disk would fail it) and must not be accepted."""
    import resource

    server = Smtpd(tmp_path, "message_size_limit = 10000000\n")
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, old[1]))
    try:
        server.start()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
    try:
        with server.client() as c:
            c.ehlo()
            c.mail("a@sender.example")
            c.rcpt(f"bob@{RELAY}")
            code, text = c.data(b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 3000)
            assert (code, text) == (451, b"4.3.0 Error: queue file write error")
            assert server.queued() == []
            c.mail("a@sender.example")
            c.rcpt(f"bob@{RELAY}")
            assert c.data(MESSAGE)[0] == 250
    finally:
        server.daemon.stop()


def test_delay_reject_reports_a_sender_reject_at_rcpt(smtpd):
    c = smtpd.raw()
    c.cmd("EHLO client.example")
    assert c.cmd("MAIL FROM:<spammer@bad.example>") == "250 2.1.0 Ok"
    reply = c.cmd(f"RCPT TO:<bob@{RELAY}>")
    assert reply == "554 5.7.1 <spammer@bad.example>: Sender address rejected: Access denied"
    c.close()
    smtpd.wait_log(r"NOQUEUE: reject: RCPT from \S+\[127\.0\.0\.1\]: 554 5\.7\.1 <spammer@bad\.example>: "
                   r"Sender address rejected: Access denied; from=<spammer@bad\.example> to=<bob@relay\.example>")


def test_without_delay_reject_the_sender_is_refused_at_mail(tmp_path):
    server = Smtpd(tmp_path, SENDER_CHECK + "smtpd_delay_reject = no\n").start()
    try:
        c = server.raw()
        c.cmd("EHLO client.example")
        assert c.cmd("MAIL FROM:<spammer@bad.example>") == (
            "554 5.7.1 <spammer@bad.example>: Sender address rejected: Access denied")
        assert c.cmd("MAIL FROM:<good@sender.example>") == "250 2.1.0 Ok"
        c.close()
    finally:
        server.daemon.stop()


def test_pflogsumm_counts_smtpd(tmp_path):
    pflogsumm = shutil.which("pflogsumm")
    if pflogsumm is None:
        pytest.skip("pflogsumm is not installed")
    server = Smtpd(tmp_path).start()
    try:
        with server.client() as c:
            c.ehlo()
            c.mail("a@sender.example")
            assert c.rcpt("x@other.example")[0] == 450
            c.rcpt(f"bob@{RELAY}")
            assert c.data(MESSAGE)[0] == 250
        server.wait_log(r"disconnect from .* commands=5/6")
    finally:
        server.daemon.stop()
    out = subprocess.run([pflogsumm, "--syslog-name=filterd", str(server.daemon.log)],
                         capture_output=True, text=True, timeout=60).stdout
    assert re.search(r"^\s+1\s+received$", out, re.M), out
    assert re.search(r"^\s+1\s+rejected", out, re.M), out


def test_addresses_for_us_are_stored_as_delivery_reads_them(smtpd):
    c = smtpd.raw()
    c.cmd("EHLO client.example")
    assert c.cmd("MAIL FROM:<@hop.example:a@sender.example.>") == "250 2.1.0 Ok"
    assert c.cmd(f"RCPT TO:<bob@{RELAY}.>").startswith("250")
    assert c.cmd(f"RCPT TO:<@hop1.example,@hop2.example:carol@{RELAY}>").startswith("250")
    assert c.cmd("RCPT TO:<postmaster>").startswith("250")  # RFC 5321 4.5.1
    c.cmd("DATA")
    qid = QUEUED.match(c.cmd(b"Subject: s\r\n\r\nx\r\n.")).group(1)
    c.close()
    env, _ = smtpd.read(qid)
    assert env.sender == "a@sender.example"
    assert [r.address for r in env.recipients] == [f"bob@{RELAY}", f"carol@{RELAY}", "postmaster@gw.filterd.test"]


def test_restriction_hold_and_discard(smtpd):
    c = smtpd.raw()
    c.cmd("EHLO client.example")
    replies = []
    for sender in ("holdme@sender.example", "dropme@sender.example"):
        c.cmd(f"MAIL FROM:<{sender}>")
        assert c.cmd(f"RCPT TO:<bob@{RELAY}>").startswith("250")
        c.cmd("DATA")
        replies.append(c.cmd(b"Subject: s\r\n\r\nx\r\n."))
    c.close()
    held, dropped = (QUEUED.match(r).group(1) for r in replies)
    assert Queue(str(smtpd.queue_dir)).find(held) == "hold"
    assert dropped not in smtpd.queued()
    smtpd.wait_log(rf"{dropped}: discard: END-OF-MESSAGE from ")


def test_a_run_of_unknown_commands_ends_the_session(smtpd):
    c = smtpd.raw()
    replies = [c.cmd(f"BOGUS{i}") for i in range(5)]
    assert replies[:4] == ["502 5.5.2 Error: command not recognized"] * 4
    assert replies[4] == "421 4.7.0 gw.filterd.test Error: too many errors"
    assert c.reply() == ""
    c.close()


def test_header_checks_run_with_content_checks_off(tmp_path):
    checks = tmp_path / "header_checks"
    checks.write_text("/^Subject: reject me/ REJECT no thanks\n/^Subject: hold me/ HOLD look at it\n")
    server = Smtpd(tmp_path, f"header_checks = regexp:{checks}\n").start()  # smtpd_content_filter = no
    try:
        replies = []
        with server.client() as c:
            c.ehlo()
            for subject in (b"reject me", b"hold me", b"fine"):
                c.mail("a@sender.example")
                c.rcpt(f"bob@{RELAY}")
                replies.append(c.data(b"Subject: " + subject + b"\r\n\r\nbody\r\n"))
        assert replies[0] == (550, b"5.7.1 no thanks")
        held, fine = (QUEUED.match(f"{code} {text.decode()}").group(1) for code, text in replies[1:])
        assert Queue(str(server.queue_dir)).find(held) == "hold"
        _, content = server.read(fine)
        assert b"X-Spam" not in content and content.endswith(b"Subject: fine\r\n\r\nbody\r\n")
    finally:
        server.daemon.stop()


def test_cleanup_rewrites_the_envelope(tmp_path):
    server = Smtpd(tmp_path, (
        "virtual_alias_maps = inline:{ { team@relay.example = ann@relay.example bob@relay.example } }\n"
        "relocated_maps = inline:{ gone@relay.example=new@elsewhere.example }\n"
        "sender_canonical_maps = inline:{ a@sender.example=alice@sender.example }\n")).start()
    try:
        c = server.raw()
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<a@sender.example>")
        assert c.cmd(f"RCPT TO:<gone@{RELAY}>") == (
            f"550 5.1.6 <gone@{RELAY}>: Recipient address rejected: User has moved to new@elsewhere.example")
        assert c.cmd(f"RCPT TO:<team@{RELAY}>").startswith("250")
        assert c.cmd(f"RCPT TO:<bob@{RELAY}>").startswith("250")  # already there through team: once
        c.cmd("DATA")
        qid = QUEUED.match(c.cmd(b"From: a@sender.example\r\nSubject: s\r\n\r\nx\r\n.")).group(1)
        c.close()
        env, content = server.read(qid)
        assert env.sender == "alice@sender.example"
        assert [(r.address, r.orcpt) for r in env.recipients] == [
            (f"ann@{RELAY}", f"team@{RELAY}"), (f"bob@{RELAY}", f"team@{RELAY}")]
        assert b"From: alice@sender.example\r\n" in content
    finally:
        server.daemon.stop()


def test_an_unusable_cleanup_table_is_a_configuration_error(tmp_path):
    cfg = tmp_path / "filterd.cf"
    cfg.write_text(f"smtpd_listen = inet:127.0.0.1:{free_port()}\npolicy_listen =\nfilter_listen =\n"
                   f"milter_listen =\ndata_directory = {tmp_path}/data\n"
                   "virtual_alias_maps = inline:{ a@b=c,d }\n")
    out = subprocess.run([sys.executable, "-m", "filterd", "serve", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "filterd: fatal: smtpd: inline:{ a@b=c,d }: missing '='" in out.stderr
    assert "Traceback" not in out.stderr
