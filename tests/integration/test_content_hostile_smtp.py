"""Hostile SMTP dialogues against a running content filter (``python -m filterd serve``),
with Postfix's smtp-sink as the next hop.

Every dialogue of tests/data/hostile_smtp is replayed on its own connection; each reply
must line up with its command (the codes in the table, in order, nothing extra), be one
line of printable ASCII within RFC 5321's 512 octets, and the daemon must go on serving
a fresh client afterwards and log no internal error. Stalls are cut by filter_timeout.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.data.hostile_smtp import (
    BANNED,
    CLEAN,
    DIALOGUES,
    EHLO,
    ENVELOPE,
    LHLO,
    LMTP_DIALOGUES,
    Dialogue,
    data,
)
from tests.fixtures.filterd import Daemon, wait_port
from tests.fixtures.postfix import SmtpSink
from tests.fixtures.programs import find_program, free_port

pytestmark = pytest.mark.integration

#: Guard for one reply (generous: the machine is shared); never a timing assertion.
REPLY_GUARD = 60.0
TIMEOUT = 2  # filter_timeout of the daemon under test, seconds


class Session:
    """A raw client that reads replies exactly as sent (multi-line aware)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=REPLY_GUARD)
        self.buffer = b""
        self.seen: list[bytes] = []

    def line(self) -> bytes | None:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        self.seen.append(line + b"\n")
        return line

    def reply(self) -> bytes | None:
        """One whole reply (its lines joined by LF), or None when the server hung up."""
        lines = []
        while True:
            line = self.line()
            if line is None:
                return None
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return b"\n".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def closed_by_server(self) -> bool:
        """True once the server closes the connection (within the guard)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def _start(tmp_path_factory: pytest.TempPathFactory, protocol: str) -> Iterator[tuple[Daemon, SmtpSink, int]]:
    sink_binary = find_program("smtp-sink")
    if sink_binary is None:
        pytest.skip("smtp-sink (package postfix) is not installed")
    tmp = tmp_path_factory.mktemp("hostile")
    # smtp-sink drops to nobody, who must reach its dump directory: not under pytest's
    # private temporary tree
    sink_root = Path(tempfile.mkdtemp(prefix="filterd-sink-"))
    sink_root.chmod(0o755)
    sink = SmtpSink(sink_binary, sink_root / "sink", free_port())
    sink.start()
    port = free_port()
    filterd = Daemon(tmp, workers=1, extra=(
        f"filter_listen = inet:127.0.0.1:{port}\n"
        f"filter_forward = smtp:[127.0.0.1]:{sink.port}\n"
        f"filter_timeout = {TIMEOUT}s\nmyhostname = filter.example\n"
        f"filter_protocol = {protocol}\ncontent_checks = postfix_checks banned\n"
        # the attack needs the reply that quotes the banned name: a reject
        "banned_action = reject\n"))
    filterd.start()
    try:
        wait_port(port)
        yield filterd, sink, port
    finally:
        filterd.stop()
        sink.stop()
        shutil.rmtree(sink_root, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, SmtpSink, int]]:
    yield from _start(tmp_path_factory, "smtp")


@pytest.fixture(scope="module")
def lmtp_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, SmtpSink, int]]:
    yield from _start(tmp_path_factory, "lmtp")


def _check_reply(reply: bytes, code: str, dialogue: Dialogue) -> None:
    for line in reply.split(b"\n"):
        assert line.endswith(b"\r") and b"\r" not in line[:-1], line
        text = line[:-1]
        assert len(text) <= 510 and all(0x20 <= b < 0x7f for b in text), text
    assert reply[:3] == code.encode(), (dialogue.name, code, reply)
    for bad in dialogue.forbidden:
        assert bad not in reply, (dialogue.name, reply)


def _serves_a_fresh_client(port: int, sink: SmtpSink, hello: bytes = EHLO) -> None:
    before = len(sink.dumps())
    client = Session(port)
    try:
        assert (client.reply() or b"").startswith(b"220 ")
        client.send(hello + ENVELOPE + data(CLEAN) + b"QUIT\r\n")
        replies = [client.reply() for _ in range(5)]
        assert [r[:3] if r else None for r in replies] == [b"250", b"250", b"250", b"354", b"250"], replies
        assert replies[3] is not None and replies[4].startswith(b"250 2.0.0 from MTA(")  # type: ignore[union-attr]
    finally:
        client.close()
    deadline = time.monotonic() + REPLY_GUARD
    while len(sink.dumps()) <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(sink.dumps()) > before


@pytest.mark.parametrize("dialogue", DIALOGUES, ids=[d.name for d in DIALOGUES])
def test_hostile_dialogue_stays_in_step(daemon: tuple[Daemon, SmtpSink, int], dialogue: Dialogue) -> None:
    _replay(daemon, dialogue, EHLO)


@pytest.mark.parametrize("dialogue", LMTP_DIALOGUES, ids=[d.name for d in LMTP_DIALOGUES])
def test_hostile_lmtp_dialogue_stays_in_step(lmtp_daemon: tuple[Daemon, SmtpSink, int],
                                             dialogue: Dialogue) -> None:
    _replay(lmtp_daemon, dialogue, LHLO)


def _replay(daemon: tuple[Daemon, SmtpSink, int], dialogue: Dialogue, hello: bytes) -> None:
    filterd, sink, port = daemon
    session = Session(port)
    try:
        greeting = session.reply()
        assert greeting is not None and greeting.startswith(b"220 filter.example")
        for step in dialogue.steps:
            if step.send:
                session.send(step.send)
            if step.codes is None:
                assert session.closed_by_server(), f"{dialogue.name}: the stalled client was not cut off"
                break
            for code in step.codes:
                reply = session.reply()
                assert reply is not None, (dialogue.name, code, "connection closed")
                _check_reply(reply, code, dialogue)
        else:
            if dialogue.steps[-1].codes[-1:] == ("221",):  # type: ignore[index]
                assert session.closed_by_server() and not session.buffer, dialogue.name
            else:
                session.send(b"NOOP\r\n")  # nothing left over: the next reply is NOOP's own
                reply = session.reply()
                assert reply is not None and reply.startswith(b"250"), (dialogue.name, reply)
    finally:
        session.close()
    _serves_a_fresh_client(port, sink, hello)
    log = filterd.log.read_text(encoding="utf-8", errors="replace")
    assert "internal error" not in log and "Traceback" not in log
    assert all(line.isprintable() for line in log.splitlines())
    # nothing reaches standard error unescaped either (aiosmtpd's own warnings)
    out = filterd.config.with_name("filterd.out").read_text(encoding="utf-8", errors="replace")
    assert all(line.isprintable() for line in out.splitlines()), out


def test_injected_replies_never_reach_the_client_or_the_log(daemon: tuple[Daemon, SmtpSink, int]) -> None:
    """The attack of issue 11, pipelined as Postfix's smtp client does: the banned
    message's reply is one 554 line, the next transaction's replies are its own, and
    the log line naming the banned part escapes what the name held."""
    filterd, sink, port = daemon
    before = len(sink.dumps())
    session = Session(port)
    try:
        session.reply()
        session.send(EHLO)
        session.reply()
        session.send(ENVELOPE + data(BANNED) + ENVELOPE + data(CLEAN) + b"QUIT\r\n")
        replies = [session.reply() for _ in range(7)]
    finally:
        session.close()
    assert [r[:3] if r else None for r in replies] == [b"250", b"250", b"354", b"554", b"250", b"250", b"354"]
    rejected = replies[3] or b""
    assert rejected.startswith(b"554 5.7.0 Reject, id=") and b"x??250 2.0.0 Ok??250 2.0.0 Ok" in rejected
    deadline = time.monotonic() + REPLY_GUARD
    while len(sink.dumps()) <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(sink.dumps()) == before + 1  # the clean one only
    lines = [line for line in filterd.log.read_text(encoding="utf-8").splitlines() if "Blocked BANNED" in line]
    # one printable line holding the whole name: the pipeline may already have made the
    # name safe ("?"), or the log writer escapes what is left (CR, NUL, ... as \\r, \\x00)
    assert lines and all(line.isprintable() and "250 2.0.0 Ok" in line and "y.exe" in line
                         for line in lines), lines


def test_policy_service_log_lines_are_escaped(daemon: tuple[Daemon, SmtpSink, int]) -> None:
    """The policy service builds its own log lines (filterd/policy); the log writer
    escapes them all the same."""
    from tests.fixtures.filterd import ask

    filterd, _, _ = daemon
    with filterd.connect() as sock:
        ask(sock, sender="evil\x1b[2J\x0b\x0c\u2028@example.org", helo_name="h\x85x")
    deadline = time.monotonic() + REPLY_GUARD
    while time.monotonic() < deadline:
        text = filterd.log.read_text(encoding="utf-8")
        if "evil" in text:
            break
        time.sleep(0.1)
    [line] = [line for line in text.splitlines() if "evil" in line]
    assert "evil\\x1b[2J\\x0b\\x0c\\u2028@example.org" in line
    assert line.isprintable()
