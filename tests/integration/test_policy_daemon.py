"""`filterd serve` as a process: workers sharing the socket, greylisting, SIGTERM, restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.fixtures.filterd import Daemon, ask, wait_port

pytestmark = pytest.mark.integration


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path, "greylist_delay = 300s\n")
    d.start()
    yield d
    if d.proc and d.proc.poll() is None:
        d.stop()


def test_greylisting_is_consistent_across_workers_and_connections(daemon):
    # Several connections: the kernel hands them to different workers.
    conns = [daemon.connect() for _ in range(6)]
    first = ask(conns[0])
    assert first.startswith("action=DEFER_IF_PERMIT 4.2.0 Greylisted")
    for c in conns[1:]:  # an early retry on any worker is still deferred
        assert ask(c).startswith("action=DEFER_IF_PERMIT")
    daemon.wait_sighting("alice@sender.example")  # seen by every worker from now on
    daemon.advance(301)  # the daemon's greylist clock, not the wall clock
    answers = [ask(c, instance=f"m{i}") for i, c in enumerate(conns)]
    assert answers[0].startswith("action=PREPEND X-Greylist: delayed")
    assert all(a in ("action=DUNNO",) or a.startswith("action=PREPEND X-Greylist") for a in answers)
    for c in conns:
        c.close()


def test_state_survives_restart_and_sigterm_exits_cleanly(tmp_path):
    d = Daemon(tmp_path, "greylist_delay = 300s\n").start()
    try:
        with d.connect() as c:
            assert ask(c, sender="x@y.example").startswith("action=DEFER_IF_PERMIT")
        assert d.stop() == 0
        assert "terminating on signal" in d.log.read_text()
        d.advance(301)
        d.start()
        with d.connect() as c:
            assert ask(c, sender="x@y.example").startswith("action=PREPEND X-Greylist")
    finally:
        if d.proc and d.proc.poll() is None:
            d.stop()


def _workers(master: int, count: int) -> list[int]:
    """The master's worker pids, once it has forked ``count`` of them."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{master}/task/{master}/children") as f:
            pids = [int(p) for p in f.read().split()]
        if len(pids) >= count:
            return pids
        time.sleep(0.02)
    pytest.fail(f"the master forked {len(pids)} of {count} workers")


def test_sigterm_while_a_dead_worker_waits_to_be_replaced_stops_the_daemon(tmp_path):
    """A worker that dies within a second of starting is replaced after a pause. A
    SIGTERM in that pause must stop the daemon, not be followed by a new worker that
    nobody stops."""
    d = Daemon(tmp_path, workers=2).start()
    try:
        first, _ = _workers(d.proc.pid, 2)
        os.kill(first, signal.SIGKILL)
        time.sleep(0.3)  # the master now pauses before replacing it
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=15) == 0
        assert "starting a new one" in d.log.read_text()
    finally:
        if d.proc.poll() is None:
            d.proc.kill()  # its workers see the master's pipe close and stop
            d.proc.wait()


def test_workers_stop_when_the_master_is_killed(tmp_path):
    """SIGKILL leaves no orphan workers serving on the socket."""
    d = Daemon(tmp_path, workers=2).start()
    with d.connect() as c:
        assert ask(c).startswith("action=")
    d.proc.kill()
    d.proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", d.port), timeout=0.5).close()
            time.sleep(0.1)
        except OSError:
            break
    else:
        pytest.fail("workers still accept connections after the master was killed")
    assert "master process has gone away" in d.log.read_text()


def test_bad_config_fails_at_startup_with_location(tmp_path):
    d = Daemon(tmp_path, "policy_restrictions = check_client_access regexp:/nonexistent/file\n")
    proc = subprocess.run([sys.executable, "-m", "filterd", "serve", "--config", str(d.config)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "fatal" in proc.stderr and "policy_restrictions" in proc.stderr and "/nonexistent/file" in proc.stderr


def test_embedded_default_answers_on_10023(tmp_path):
    """`filterd serve` with no configuration at all, as on a fresh machine."""
    if os.path.exists("/etc/filterd/filterd.cf"):
        pytest.skip("/etc/filterd/filterd.cf exists: the embedded default would not be used")
    for port in (10023, 10024, 10026):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"something already listens on 127.0.0.1:{port}")
    env = {k: v for k, v in os.environ.items() if k != "FILTERD_CONFIG"}
    env["HOME"] = str(tmp_path)  # where a non-root user's state goes
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    proc = subprocess.Popen([sys.executable, "-m", "filterd", "serve"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # The policy service answers while the content filter's rules still compile (with
        # SpamAssassin's rules installed, a fresh data_directory takes about a minute).
        wait_port(10023)
        with socket.create_connection(("127.0.0.1", 10023), timeout=10) as c:
            answer = ask(c, sender=f"fresh{time.time_ns()}@example.org")
        assert answer.startswith("action=DEFER_IF_PERMIT 4.2.0 Greylisted")
        wait_port(10026)  # the milter, beside the policy service and the content filter
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=20)[0].decode()
    assert proc.returncode == 0, out
    assert "daemon started" in out and "<embedded default>" in out


def test_sighup_reloads_greylist_whitelists(tmp_path):
    wl = tmp_path / "whitelist_clients"
    wl.write_text("# none yet\n")
    d = Daemon(tmp_path, f"greylist_whitelist_clients = {wl}\n").start()
    try:
        with d.connect() as c:
            assert ask(c, client_name="friend.example").startswith("action=DEFER_IF_PERMIT")
        wl.write_text("friend.example\n")
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while d.log.read_text().count("reloaded greylist whitelists") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        with d.connect() as c:
            assert ask(c, client_name="mx.friend.example", sender="other@x.example") == "action=DUNNO"
    finally:
        d.stop()


def test_sighup_while_the_workers_start_reloads_them_and_kills_none(tmp_path):
    """A reload asked for while the daemon starts waits until each worker can reload:
    it neither kills a worker (SIGHUP's default action) nor is lost."""
    wl = tmp_path / "whitelist_clients"
    wl.write_text("friend.example\n")
    d = Daemon(tmp_path, f"greylist_whitelist_clients = {wl}\n").start()  # the port is bound:
    try:                                                                  # workers are starting
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while d.log.read_text().count("reloaded greylist whitelists") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        log = d.log.read_text()
        assert log.count("reloaded greylist whitelists") == 2
        assert "exited with status" not in log
    finally:
        assert d.stop() == 0


def test_connections_are_spread_over_workers(tmp_path):
    """Each worker has its own SO_REUSEPORT socket: persistent connections do not pile
    up on the worker that happens to wake first."""
    d = Daemon(tmp_path, workers=2).start()
    try:
        conns = [d.connect() for _ in range(16)]
        for i, c in enumerate(conns):
            ask(c, sender=f"spread{i}@example.org")
        deadline = time.monotonic() + 5  # request lines reach the log within 0.1 s
        while True:
            pids = {line.split("[", 1)[1].split("]", 1)[0]
                    for line in d.log.read_text().splitlines() if "filterd/policy[" in line}
            if len(pids) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(pids) == 2, pids
        for c in conns:
            c.close()
    finally:
        d.stop()


def test_port_held_by_another_process_is_refused(tmp_path):
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    d = Daemon(tmp_path, workers=2)
    d.config.write_text(d.config.read_text().replace(f":{d.port}", f":{holder.getsockname()[1]}"))
    proc = subprocess.run([sys.executable, "-m", "filterd", "serve", "--config", str(d.config)],
                          capture_output=True, text=True, timeout=30)
    holder.close()
    assert proc.returncode == 1
    assert "fatal: policy_listen: cannot listen on inet:127.0.0.1:" in d.log.read_text()
    assert "Address already in use" in d.log.read_text() and "Traceback" not in proc.stderr
