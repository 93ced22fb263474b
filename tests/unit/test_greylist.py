"""Greylister decisions over the SQLite store, driven by an injected clock."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from filterd.config import Config
from filterd.greylist import Greylister, GreylistResult, open_store
from filterd.greylist.greylister import TEST_CLOCK_FILE, greylist_clock
from filterd.greylist.sqlite_store import SqliteGreylistStore

DAY = 86400
HOUR = 3600
HEADER = re.compile(r"X-Greylist: delayed (\d+) seconds by filterd-\S+ at mx\.test; "
                    r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \S+")


class Clock:
    def __init__(self, start: float = 1_700_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Factory = Callable[..., Awaitable[Greylister]]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Factory]:
    """Greylisters on tmp_path/greylist.db (shared unless ``db`` says otherwise)."""
    made: list[Greylister] = []

    async def factory(settings: str = "", clock: Clock | None = None,
                      db: Path | None = None) -> Greylister:
        cfg = Config.from_text(f"data_directory = {tmp_path}\n{settings}")
        store = SqliteGreylistStore(str(db or tmp_path / "greylist.db"))
        g = Greylister(cfg, store, "mx.test", clock or Clock())
        await g.start()
        made.append(g)
        return g

    yield factory
    for g in made:
        await g.close()


def rows(db: Path, table: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY key").fetchall()


async def stored(g: Greylister, directory: Path, table: str) -> list[tuple]:
    """What another worker would read from the database once ``g``'s writes are out."""
    await g.flush()
    return rows(directory / "greylist.db", table)


async def check(g: Greylister, address: str = "192.0.2.10", sender: str = "s@sender.test",
                recipient: str = "r@example.org", instance: str = "",
                name: str = "unknown") -> GreylistResult:
    return await g.check(address, name, sender, recipient, instance)


async def test_new_triplet_is_deferred(make: Factory) -> None:
    g = await make()
    r = await check(g)
    assert (r.action, r.header, r.delay_left, r.reason) == ("defer", None, 300, "new triplet")
    assert r.text == "4.2.0 Greylisted, see http://postgrey.schweikert.ch/help/example.org.html"


async def test_early_retry_says_seconds_left(make: Factory) -> None:
    clock = Clock()
    g = await make("greylist_text = wait %s more seconds for %r (%s)", clock)
    await check(g)
    clock.advance(120)
    r = await check(g)
    assert (r.action, r.delay_left, r.reason) == ("defer", 180, "early retry (180s left)")
    assert r.text == "4.2.0 wait 180 more seconds for example.org (%s)"  # first %s only


async def test_text_starting_with_a_digit_gets_no_enhanced_code(make: Factory) -> None:
    g = await make("greylist_text = 451 4.7.1 come back in %s seconds")
    assert (await check(g)).text == "451 4.7.1 come back in 300 seconds"


async def test_pass_after_delay_adds_header_once_per_instance(make: Factory) -> None:
    clock = Clock()
    g = await make(clock=clock)
    assert (await check(g, recipient="a@example.org", instance="I1")).action == "defer"
    assert (await check(g, recipient="b@example.org", instance="I1")).action == "defer"
    clock.advance(301)
    first = await check(g, recipient="a@example.org", instance="I2")
    assert first.action == "pass" and first.delay_left == 301
    assert HEADER.fullmatch(first.header) and HEADER.fullmatch(first.header).group(1) == "301"
    second = await check(g, recipient="b@example.org", instance="I2")
    assert (second.action, second.header, second.delay_left) == ("pass", None, 301)
    # A later message on a triplet that already passed: DUNNO, no header.
    clock.advance(60)
    later = await check(g, recipient="a@example.org", instance="I3")
    assert (later.action, later.header, later.reason) == ("pass", None, "triplet passed before")


async def test_passed_triplet_is_answered_from_memory_for_an_hour(make: Factory,
                                                                  tmp_path: Path) -> None:
    clock = Clock()
    g = await make(clock=clock)
    await check(g)
    clock.advance(300)
    assert (await check(g)).action == "pass"
    passed_at = int(clock.now)
    clock.advance(HOUR - 1)
    assert (await check(g)).reason == "triplet passed before"
    assert (await stored(g, tmp_path, "triplet"))[0][2] == passed_at  # not asked
    clock.advance(1)
    assert (await check(g)).reason == "triplet passed before"
    assert (await stored(g, tmp_path, "triplet"))[0][2] == passed_at + HOUR


async def test_no_instance_means_a_header_on_every_first_pass(make: Factory) -> None:
    clock = Clock()
    g = await make(clock=clock)
    await check(g, recipient="a@example.org")
    await check(g, recipient="b@example.org")
    clock.advance(300)  # exactly the delay passes
    assert (await check(g, recipient="a@example.org")).header is not None
    assert (await check(g, recipient="b@example.org")).header is not None


async def test_header_can_be_turned_off(make: Factory) -> None:
    clock = Clock()
    g = await make("greylist_header = no", clock)
    await check(g)
    clock.advance(400)
    r = await check(g)
    assert (r.action, r.header) == ("pass", None)


async def test_retry_window(make: Factory) -> None:
    clock = Clock()
    g = await make(clock=clock)
    await check(g, recipient="late@example.org")
    await check(g, recipient="intime@example.org")
    clock.advance(2 * DAY + 1)
    r = await check(g, recipient="late@example.org")
    assert (r.action, r.delay_left, r.reason) == ("defer", 300, "new triplet")
    clock.advance(-1)  # at exactly the window the retry still counts
    assert (await check(g, recipient="intime@example.org")).action == "pass"


async def test_max_age(make: Factory) -> None:
    clock = Clock()
    g = await make("greylist_auto_whitelist_clients = 0", clock)
    await check(g, recipient="old@example.org")
    await check(g, recipient="kept@example.org")
    clock.advance(300)
    assert (await check(g, recipient="old@example.org")).action == "pass"
    assert (await check(g, recipient="kept@example.org")).action == "pass"
    clock.advance(35 * DAY)
    assert (await check(g, recipient="kept@example.org")).action == "pass"  # not older
    clock.advance(1)
    r = await check(g, recipient="old@example.org")
    assert (r.action, r.reason) == ("defer", "new triplet")


async def test_triplet_key_uses_network_and_normalised_sender(make: Factory) -> None:
    clock = Clock()
    g = await make(clock=clock)
    await check(g, "192.0.2.10", "bounce-1234@lists.test", "R@Example.org")
    await check(g, "2001:db8:1:2::1", "s@sender.test")
    clock.advance(300)
    # Same /24, other VERP number, recipient case differs: the same triplet.
    r = await check(g, "192.0.2.99", "BOUNCE-987+x@lists.test", "r@example.org")
    assert r.action == "pass"
    assert (await check(g, "192.0.3.10", "bounce-1234@lists.test", "r@example.org")).action \
        == "defer"
    assert (await check(g, "2001:db8:1:2::ffff", "s@sender.test")).action == "pass"
    assert (await check(g, "2001:db8:1:3::1", "s@sender.test")).action == "defer"


async def test_lookup_by_host(make: Factory) -> None:
    clock = Clock()
    g = await make("greylist_lookup_by_subnet = no", clock)
    await check(g, "192.0.2.10")
    clock.advance(300)
    assert (await check(g, "192.0.2.11")).action == "defer"
    assert (await check(g, "192.0.2.10")).action == "pass"


async def test_weird_client_address_is_greylisted_not_an_error(make: Factory) -> None:
    clock = Clock()
    g = await make(clock=clock)
    assert (await check(g, "not-an-ip")).action == "defer"
    clock.advance(300)
    assert (await check(g, "not-an-ip")).action == "pass"
    assert (await check(g, "")).action == "defer"


async def test_whitelisted_client_and_recipients(make: Factory, tmp_path: Path) -> None:
    g = await make()
    r = await check(g, "192.0.2.10", name="bendel.debian.org")
    assert r.action == "whitelisted" and r.header is None
    assert "greylist_whitelist_clients, line" in r.reason and r.reason.endswith("debian.org")
    assert (await check(g, "148.105.8.1")).action == "whitelisted"  # CIDR entry
    for rcpt in ("postmaster@example.org", "abuse+x@example.org", "ABUSE@example.net"):
        r = await check(g, recipient=rcpt)
        assert r.action == "whitelisted" and r.reason.startswith("recipient whitelisted by ")
    assert await stored(g, tmp_path, "triplet") == []  # whitelisted: never stored


async def test_own_whitelist_files(make: Factory, tmp_path: Path) -> None:
    (tmp_path / "wc").write_text("relay.partner.test\n")
    (tmp_path / "wr").write_text("nogrey.example\n")
    g = await make(f"greylist_whitelist_clients = {tmp_path}/wc, {tmp_path}/wc.local\n"
                   f"greylist_whitelist_recipients = {tmp_path}/wr")
    assert (await check(g, name="out.relay.partner.test")).action == "whitelisted"
    assert (await check(g, recipient="x@a.nogrey.example")).action == "whitelisted"
    assert (await check(g, recipient="postmaster@example.org")).action == "defer"


async def pass_new_triplet(g: Greylister, clock: Clock, address: str, n: int) -> GreylistResult:
    await check(g, address, recipient=f"r{n}@example.org")
    clock.advance(300)
    return await check(g, address, recipient=f"r{n}@example.org")


async def test_auto_whitelist_after_five_passes_one_per_hour(make: Factory,
                                                            tmp_path: Path) -> None:
    clock = Clock()
    g = await make(clock=clock)
    n = 0
    for _ in range(4):
        for _ in range(2):  # two passes within the same hour count once
            n += 1
            assert (await pass_new_triplet(g, clock, "192.0.2.10", n)).action == "pass"
        clock.advance(HOUR)
    await g.flush()
    assert (await stored(g, tmp_path, "client"))[0][:2] == ("192.0.2.10", 4)
    n += 1
    assert (await check(g, "192.0.2.10", recipient=f"r{n}@example.org")).action == "defer"
    clock.advance(300)
    assert (await check(g, "192.0.2.10", recipient=f"r{n}@example.org")).action == "pass"
    r = await check(g, "192.0.2.10", recipient="brand-new@example.org")
    assert (r.action, r.header, r.reason) == ("awl", None, "client auto-whitelisted")
    # An auto-whitelisted client's requests leave the triplets alone.
    assert not [k for k, *_ in await stored(g, tmp_path, "triplet") if "brand-new" in k]
    # The auto-whitelist is per address, not per /24 network.
    assert (await check(g, "192.0.2.11", recipient="brand-new@example.org")).action == "defer"


async def test_auto_whitelist_counts_first_passes_only(make: Factory, tmp_path: Path) -> None:
    clock = Clock()
    g = await make("greylist_auto_whitelist_clients = 2", clock)
    await pass_new_triplet(g, clock, "192.0.2.10", 1)
    for _ in range(3):  # the same triplet passing again is not a new success
        clock.advance(HOUR)
        assert (await check(g, "192.0.2.10", recipient="r1@example.org")).action == "pass"
    await g.flush()
    assert (await stored(g, tmp_path, "client"))[0][:2] == ("192.0.2.10", 1)
    clock.advance(HOUR)
    await pass_new_triplet(g, clock, "192.0.2.10", 2)
    assert (await check(g, "192.0.2.10", recipient="x@example.org")).action == "awl"


async def test_another_process_holding_the_lock_delays_no_request_and_loses_nothing(
        make: Factory, tmp_path: Path) -> None:
    """The pass that whitelists a client is counted while another process holds the write
    lock. Before, the next requests waited for the count, which waited for the lock (up
    to 30 s, twice), and the sightings made meanwhile were lost. Now requests are
    answered from what the store holds, and the count and the sightings are written once
    the lock is free."""
    clock = Clock()
    g = await make("greylist_auto_whitelist_clients = 1", clock)
    await check(g, recipient="first@example.org")
    clock.advance(300)
    blocker = sqlite3.connect(tmp_path / "greylist.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        assert (await asyncio.wait_for(check(g, recipient="first@example.org"), 10)).action == "pass"
        for i in range(20):  # a guard, not a timing: the lock is held all along
            result = await asyncio.wait_for(check(g, recipient=f"new{i}@example.org"), 10)
            assert result.action in ("defer", "awl")
            result = await asyncio.wait_for(check(g, "198.51.100.7", recipient=f"o{i}@example.org"), 10)
            assert result.action == "defer"
        await asyncio.sleep(0.3)  # the writes find the lock held, and wait to try again
        assert rows(tmp_path / "greylist.db", "client") == []
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await g.flush()
    assert [r[:2] for r in rows(tmp_path / "greylist.db", "client")] == [("192.0.2.10", 1)]
    keys = {r[0] for r in rows(tmp_path / "greylist.db", "triplet")}
    assert {f"198.51.100.0/s@sender.test/o{i}@example.org" for i in range(20)} <= keys
    assert (await check(g, recipient="second@example.org")).action == "awl"


async def test_auto_whitelist_refresh_and_expiry(make: Factory, tmp_path: Path) -> None:
    clock = Clock()
    g = await make("greylist_auto_whitelist_clients = 1", clock)
    await pass_new_triplet(g, clock, "192.0.2.10", 1)
    await g.flush()
    counted_at = int(clock.now)
    assert await stored(g, tmp_path, "client") == [("192.0.2.10", 1, counted_at)]
    clock.advance(HOUR - 1)
    assert (await check(g, "192.0.2.10", recipient="x@example.org")).action == "awl"
    clock.advance(1)  # an hour later postgrey refreshes the entry (and counts it)
    assert (await check(g, "192.0.2.10", recipient="y@example.org")).action == "awl"
    await g.flush()  # the refresh is written after the reply
    assert await stored(g, tmp_path, "client") == [("192.0.2.10", 2, counted_at + HOUR)]
    g = await make("greylist_auto_whitelist_clients = 1", clock)
    clock.advance(35 * DAY + 1)  # not seen for max_age: forgotten
    assert (await check(g, "192.0.2.10", recipient="z@example.org")).action == "defer"


async def test_auto_whitelist_off(make: Factory, tmp_path: Path) -> None:
    clock = Clock()
    g = await make("greylist_auto_whitelist_clients = 0", clock)
    for n in range(3):
        await pass_new_triplet(g, clock, "192.0.2.10", n)
        clock.advance(HOUR)
    assert (await check(g, "192.0.2.10", recipient="x@example.org")).action == "defer"
    assert await stored(g, tmp_path, "client") == []


async def test_state_survives_reopening(make: Factory, tmp_path: Path) -> None:
    clock = Clock()
    g = await make("greylist_auto_whitelist_clients = 1", clock)
    await check(g)
    await check(g, "192.0.2.50", recipient="other@example.org")
    await g.close()
    g = await make("greylist_auto_whitelist_clients = 1", clock)
    clock.advance(300)
    assert (await check(g)).action == "pass"
    await g.close()
    g = await make("greylist_auto_whitelist_clients = 1", clock)
    assert (await check(g, recipient="new@example.org")).action == "awl"


async def test_two_workers_on_one_database_agree(make: Factory) -> None:
    clock = Clock()
    a = await make("greylist_auto_whitelist_clients = 2", clock)
    b = await make("greylist_auto_whitelist_clients = 2", clock)
    # A worker writes its sightings within a fraction of a second (WRITE_DELAY); this
    # clock is not the real one, so each worker writes (flush) before the other looks.
    assert (await check(a)).action == "defer"
    await a.flush()
    clock.advance(100)
    assert (await check(b)).reason == "early retry (200s left)"
    clock.advance(200)
    assert (await check(b, instance="M")).header is not None
    await b.flush()  # b counted that pass for the client
    assert (await check(a, instance="M")).reason == "triplet passed before"
    clock.advance(HOUR)
    await pass_new_triplet(a, clock, "192.0.2.10", 2)  # second counted pass, in worker a
    await a.flush()
    assert (await check(b, recipient="n@example.org")).action == "awl"


async def test_concurrent_requests_go_in_batches(make: Factory, tmp_path: Path) -> None:
    clock = Clock()
    g = await make(clock=clock)
    requests = [check(g, f"192.0.{i % 4}.9", recipient=f"r{i}@example.org") for i in range(40)]
    # The same triplet twice in one turn: both are new, both deferred.
    requests += [check(g, "198.51.100.1"), check(g, "198.51.100.2")]
    results = await asyncio.gather(*requests)
    assert {r.action for r in results} == {"defer"}
    assert results[-1].reason == results[-2].reason == "new triplet"
    assert len(await stored(g, tmp_path, "triplet")) == 41
    clock.advance(300)
    results = await asyncio.gather(*[check(g, f"192.0.{i % 4}.9", recipient=f"r{i}@example.org")
                                     for i in range(40)])
    assert {r.action for r in results} == {"pass"}


async def test_first_seen_in_the_future_is_corrected(make: Factory) -> None:
    clock = Clock()
    g = await make(clock=clock)
    clock.advance(1000)
    await check(g)
    clock.advance(-1000)  # the clock went back
    r = await check(g)
    assert (r.action, r.reason) == ("defer", "new triplet")


async def test_cleanup_deletes_expired_rows(make: Factory, tmp_path: Path) -> None:
    clock = Clock()
    g = await make("greylist_auto_whitelist_clients = 1", clock)
    await pass_new_triplet(g, clock, "192.0.2.10", 1)  # passed, and client counted
    clock.advance(30 * DAY)
    await check(g, "198.51.100.1", recipient="pending@example.org")  # never retried
    clock.advance(3 * DAY)
    await pass_new_triplet(g, clock, "203.0.113.1", 3)  # fresh
    clock.advance(2 * DAY)  # now: first pass 35 days + 5 minutes ago
    await g.flush()
    db = tmp_path / "greylist.db"
    assert len(rows(db, "triplet")) == 3 and len(rows(db, "client")) == 2
    stats = await g.cleanup()
    assert (stats.triplets, stats.clients) == (2, 1)
    assert [k for k, *_ in rows(db, "triplet")] == ["203.0.113.0/s@sender.test/r3@example.org"]
    assert [k for k, *_ in rows(db, "client")] == ["203.0.113.1"]
    assert await g.cleanup() is None  # done within the hour (by any worker): skipped
    clock.advance(HOUR)
    assert await g.cleanup() is not None


async def test_open_store_uses_data_directory(tmp_path: Path) -> None:
    cfg = Config.from_text(f"data_directory = {tmp_path}/state")
    g = Greylister(cfg, open_store(cfg), "mx.test")
    await g.start()
    try:
        assert (await check(g)).action == "defer"
    finally:
        await g.close()
    assert (tmp_path / "state" / "greylist.db").exists()
    with sqlite3.connect(tmp_path / "state" / "greylist.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_store_failure_surfaces_in_check(tmp_path: Path) -> None:
    g = Greylister(Config.from_text(""), SqliteGreylistStore(str(tmp_path / "g.db")), "mx.test")
    with pytest.raises(RuntimeError, match="not open"):  # never started
        await check(g)


def test_the_test_clock_hook_is_honoured_only_when_set(tmp_path: Path) -> None:
    """FILTERD_TEST_CLOCK_FILE: the integration tests move the daemon's greylist clock."""
    assert greylist_clock({}) is time.time
    path = tmp_path / "offset"
    clock = greylist_clock({TEST_CLOCK_FILE: str(path)})
    assert abs(clock() - time.time()) < 60  # no file yet: no offset
    path.write_text("3600.5\n")
    assert 3540 < clock() - time.time() < 3660
    path.write_text("soon")
    with pytest.raises(ValueError, match="expected a number of seconds, got 'soon'"):
        clock()
