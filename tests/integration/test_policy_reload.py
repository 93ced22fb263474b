"""SIGHUP reads filterd.cf again (as `postfix reload` reads main.cf): a changed
parameter takes effect, a broken file is reported and changes nothing, a listen address
needs a restart, and a whitelist file that has gone does not empty the whitelist."""

from __future__ import annotations

import signal
import socket
import time

import pytest

from tests.fixtures.filterd import Daemon, ask
from tests.fixtures.programs import free_port

pytestmark = pytest.mark.integration

GUARD = 30.0  # seconds: only stops a test that would otherwise wait for ever


def reload_and_wait(d: Daemon, text: str, count: int = 1) -> str:
    """SIGHUP the daemon and wait until ``text`` is in its log ``count`` times."""
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + GUARD
    while True:
        log = d.log.read_text()
        if log.count(text) >= count:
            return log
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{log[-3000:]}"
        time.sleep(0.05)


def answer(d: Daemon, guard: float = GUARD, **attrs: str) -> str:
    """One request on a new connection (retried while workers are being replaced)."""
    deadline = time.monotonic() + guard
    while True:
        try:
            with d.connect() as c:
                c.settimeout(guard)
                return ask(c, **attrs)
        except OSError:
            assert time.monotonic() < deadline, "no answer"
            time.sleep(0.1)


@pytest.mark.parametrize("workers", [2, 1])
def test_a_changed_greylist_delay_takes_effect_on_sighup(tmp_path, workers):
    """Before: SIGHUP only re-read the whitelists; greylist_delay kept its old value."""
    d = Daemon(tmp_path, "greylist_delay = 300s\n", workers=workers).start()
    try:
        assert answer(d).startswith("action=DEFER_IF_PERMIT")
        d.config.write_text(d.config.read_text().replace("greylist_delay = 300s", "greylist_delay = 1s"))
        reload_and_wait(d, "configuration %s read again" % d.config)
        d.wait_sighting("alice@sender.example")
        d.advance(2)
        assert answer(d, sender="alice@sender.example").startswith("action=PREPEND X-Greylist")
    finally:
        assert d.stop() == 0
    assert "exited with status" not in d.log.read_text()


def test_a_broken_file_is_reported_on_sighup_and_the_old_configuration_kept(tmp_path):
    d = Daemon(tmp_path, "greylist_delay = 300s\n", workers=2).start()
    try:
        with d.connect() as kept:
            assert ask(kept).startswith("action=DEFER_IF_PERMIT")
            text = d.config.read_text()
            d.config.write_text(text.replace("greylist_delay = 300s", "greylist_delay = 1s\n"
                                             "policy_restrictions = check_nonsense"))
            log = reload_and_wait(d, "still serving with the configuration read before")
            line = next(l for l in log.splitlines() if "reload:" in l and "check_nonsense" in l)
            assert str(d.config) in line
            d.advance(2)
            # the old configuration: still greylisted (300 s), on the same connection too
            assert ask(kept).startswith("action=DEFER_IF_PERMIT")
        assert answer(d).startswith("action=DEFER_IF_PERMIT")
    finally:
        assert d.stop() == 0


def test_a_changed_listen_address_is_reported_as_needing_a_restart(tmp_path):
    d = Daemon(tmp_path, workers=2).start()
    try:
        other = free_port()
        d.config.write_text(d.config.read_text().replace(
            f"policy_listen = inet:127.0.0.1:{d.port}", f"policy_listen = inet:127.0.0.1:{other}"))
        log = reload_and_wait(d, "takes effect at the next restart")
        assert "policy_listen" in log
        assert answer(d).startswith("action=")  # still on the old address
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", other)) != 0
    finally:
        assert d.stop() == 0


def wait_for_workers(d: Daemon, count: int) -> None:
    """Until ``count`` workers have answered (each has read its whitelists by then)."""
    conns = []
    deadline = time.monotonic() + GUARD
    try:
        while True:
            c = d.connect()
            conns.append(c)
            ask(c, client_name="mx.friend.example")
            time.sleep(0.15)  # request lines reach the log within 0.1 s
            pids = {line.split("[", 1)[1].split("]", 1)[0]
                    for line in d.log.read_text().splitlines() if "filterd/policy[" in line}
            if len(pids) >= count:
                return
            assert time.monotonic() < deadline, f"only {len(pids)} workers answered"
    finally:
        for c in conns:
            c.close()


def test_a_whitelist_file_that_has_gone_does_not_empty_the_whitelist(tmp_path):
    wl = tmp_path / "whitelist_clients"
    wl.write_text("friend.example\n")
    d = Daemon(tmp_path, f"greylist_whitelist_clients = {wl}\n", workers=2).start()
    try:
        assert answer(d, client_name="mx.friend.example") == "action=DUNNO"
        wait_for_workers(d, 2)
        wl.unlink()
        log = reload_and_wait(d, "keeping the client whitelist read before", count=2)
        assert str(wl) in log
        assert answer(d, client_name="mx.friend.example", sender="new@x.example") == "action=DUNNO"
        # nor does a configuration change started while it is missing
        d.config.write_text(d.config.read_text() + "greylist_delay = 10s\n")
        reload_and_wait(d, f"cannot read {wl}")
        assert answer(d, client_name="mx.friend.example", sender="new2@x.example") == "action=DUNNO"
    finally:
        assert d.stop() == 0
