"""`filterd serve` as a process against clients that misbehave: one that never reads its
answers, one that idles, one connection too many, a flood of malformed requests."""

from __future__ import annotations

import select
import socket
import time

import pytest

from tests.fixtures.filterd import Daemon, ask

pytestmark = pytest.mark.integration

REQUEST = ("request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
           "client_address=192.0.2.1\nclient_name=mx.example\nhelo_name=mx.example\n"
           "sender=a@b.example\nrecipient=c@d.example\ninstance=1.2\netrn_domain=\n\n").encode()


def policy_lines(d: Daemon) -> int:
    return d.log.read_text().count("filterd/policy[")


def wait_for_log(d: Daemon, text: str, guard: float = 30.0) -> str:
    deadline = time.monotonic() + guard
    while True:
        log = d.log.read_text()
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.05)


def test_a_client_that_never_reads_its_answers_stalls_instead_of_flooding_the_log(tmp_path):
    """Before: the worker read and answered everything such a client sent (hundreds of
    thousands of requests, a log line each, the answers piling up in memory)."""
    d = Daemon(tmp_path, workers=1).start()
    try:
        burst = REQUEST * 100
        limit = 150_000  # requests: far more than the kernel's buffers can hold
        with socket.create_connection(("127.0.0.1", d.port)) as s:
            s.setblocking(False)
            sent = 0
            while sent < limit:
                try:
                    sent += s.send(burst) // len(REQUEST)
                except BlockingIOError:
                    # stalled: the daemon no longer reads (nothing to do with its speed:
                    # writable again within 2 s would mean it reads on)
                    if not select.select([], [s], [], 2.0)[1]:
                        break
            assert sent < limit, "the daemon read every request although no answer was read"
            time.sleep(0.3)  # request lines reach the log within 0.1 s
            answered = policy_lines(d)
            assert answered < 20_000, answered
            assert d.log.stat().st_size < 10_000_000
    finally:
        assert d.stop() == 0


def test_an_idle_connection_is_closed_after_policy_idle_timeout(tmp_path):
    d = Daemon(tmp_path, "policy_idle_timeout = 1s\n", workers=1).start()
    try:
        with d.connect() as c:
            assert ask(c).startswith("action=")
            c.settimeout(30)  # a guard: the daemon closes it after about a second
            assert c.recv(100) == b""
        assert "policy_idle_timeout" in wait_for_log(d, "policy_idle_timeout")
    finally:
        assert d.stop() == 0


def answered_connection(d: Daemon, guard: float = 30.0) -> socket.socket:
    """A connection that got an answer: one closed just before (the fixture's probe of
    the port, one closed by the test) may still count until the worker has seen it go."""
    deadline = time.monotonic() + guard
    while True:
        c = d.connect()
        try:
            assert ask(c).startswith("action=")
            return c
        except OSError:
            c.close()
            assert time.monotonic() < deadline, "no connection is answered"
            time.sleep(0.1)


def test_one_connection_over_policy_connection_limit_is_closed_at_once(tmp_path):
    d = Daemon(tmp_path, "policy_connection_limit = 2\n", workers=1).start()
    try:
        first, second = answered_connection(d), answered_connection(d)
        with d.connect() as third:
            third.settimeout(30)
            # closed without an answer: Postfix tries again, or defers with 451 4.3.5
            try:
                assert third.recv(100) == b""
            except ConnectionResetError:
                pass
        assert "policy_connection_limit" in wait_for_log(d, "policy_connection_limit")
        assert ask(first).startswith("action=")
        second.close()
        answered_connection(d).close()  # room again
        first.close()
    finally:
        assert d.stop() == 0


def test_a_flood_of_malformed_requests_is_answered_but_logged_once_in_a_while(tmp_path):
    d = Daemon(tmp_path, workers=1).start()
    try:
        with d.connect() as c:
            for _ in range(2000):
                assert ask(c, request="no_such_request").startswith("action=DEFER_IF_PERMIT 4.3.5")
        time.sleep(0.3)
        log = d.log.read_text()
        warnings = [line for line in log.splitlines() if "unknown request type" in line]
        assert 1 <= len(warnings) <= 10, len(warnings)
    finally:
        assert d.stop() == 0
