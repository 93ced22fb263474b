"""MX and address lookups for delivery against a real DNS server (dnsmasq on 127.0.0.1).

The shared dnsmasq fixture serves DNSBL zones only, so this module starts its own
dnsmasq (same helpers) with MX records: several preferences, a null MX (RFC 7505), a
domain with only an A record (implicit MX), a name that does not exist, and a zone it
refuses (a failing lookup).
"""

from __future__ import annotations

import asyncio
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.asyncresolver
import dns.nameserver
import pytest

from filterd.mta import routing as rt
from filterd.mta.delivery import BOUNCED, DEFERRED
from tests.fixtures.dnsmasq import dnsmasq_binary, free_udp_tcp_port
from tests.fixtures.programs import stop_process

pytestmark = pytest.mark.integration

RECORDS = [
    "--mx-host=multi.test,mx1.multi.test,10",
    "--mx-host=multi.test,mx2.multi.test,20",
    "--mx-host=multi.test,self.gateway.test,30",
    "--mx-host=nullmx.test,.,0",
    "--mx-host=loop.test,self.gateway.test,5",
    "--mx-host=dangling.test,gone.dangling.test,10",
    "--host-record=mx1.multi.test,127.0.0.11",
    "--host-record=mx2.multi.test,127.0.0.12,::1",
    "--host-record=nomx.test,127.0.0.13",
    "--host-record=relay.test,127.0.0.14",
]


@pytest.fixture(scope="module")
def mx_dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    binary = dnsmasq_binary()
    if binary is None:
        pytest.skip("dnsmasq is not installed (Debian package dnsmasq-base)")
    log_path: Path = tmp_path_factory.mktemp("mxdns") / "dnsmasq.log"
    port = free_udp_tcp_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [binary, "--keep-in-foreground", "--log-facility=-", "--conf-file=/dev/null", "--pid-file=",
             f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
             "--no-hosts", "--local=/test/", *RECORDS],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield port
    finally:
        stop_process(process, 10.0)


def resolver(port: int, **kw: object) -> rt.MxResolver:
    res = dns.asyncresolver.Resolver(configure=False)
    res.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", port)]
    return rt.MxResolver(res, timeout=5.0, myhostnames=["self.gateway.test"], **kw)  # type: ignore[arg-type]


async def wait_ready(r: rt.MxResolver) -> None:
    for _ in range(200):
        if (await r.mx("multi.test")).status == rt.OK:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("dnsmasq never answered")


async def test_mx_preference_order_and_both_families(mx_dns: int) -> None:
    r = resolver(mx_dns, randomize=False)
    await wait_ready(r)
    got = await r.resolve("multi.test")
    assert isinstance(got, list)
    # this host is the third MX: only the better ones are tried
    assert [(t.host, t.address, t.port) for t in got] == [
        ("mx1.multi.test", "127.0.0.11", 25), ("mx2.multi.test", "127.0.0.12", 25),
        ("mx2.multi.test", "::1", 25)]
    only_v4 = resolver(mx_dns, randomize=False, families=["ipv4"])
    got4 = await only_v4.resolve("multi.test:2525")
    assert isinstance(got4, list) and [t.relay for t in got4] == [
        "mx1.multi.test[127.0.0.11]:2525", "mx2.multi.test[127.0.0.12]:2525"]


async def test_randomized_addresses_stay_in_preference_order(mx_dns: int) -> None:
    r = resolver(mx_dns, rng=random.Random(3))
    await wait_ready(r)
    got = await r.resolve("multi.test")
    assert isinstance(got, list) and got[0].host == "mx1.multi.test"


async def test_implicit_mx_and_bracketed_host(mx_dns: int) -> None:
    r = resolver(mx_dns)
    await wait_ready(r)
    assert [t.relay for t in await r.resolve("nomx.test")] == ["nomx.test[127.0.0.13]:25"]  # type: ignore[union-attr]
    # [host] skips the MX lookup: multi.test has no A record of its own.
    bracketed = await r.resolve("[multi.test]")
    assert isinstance(bracketed, rt.Failure) and bracketed.dsn == "5.4.4"
    assert [t.relay for t in await r.resolve("[relay.test]:587")] == ["relay.test[127.0.0.14]:587"]  # type: ignore[union-attr]
    assert [t.relay for t in await r.resolve("[127.0.0.1]:10025")] == ["127.0.0.1[127.0.0.1]:10025"]  # type: ignore[union-attr]


async def test_failures(mx_dns: int) -> None:
    r = resolver(mx_dns)
    await wait_ready(r)
    null = await r.resolve("nullmx.test")
    assert null == rt.Failure(BOUNCED, "5.1.10", "Domain nullmx.test does not accept mail (nullMX)")
    missing = await r.resolve("missing.test")
    assert isinstance(missing, rt.Failure) and (missing.status, missing.dsn) == (BOUNCED, "5.4.4")
    loop = await r.resolve("loop.test")
    assert isinstance(loop, rt.Failure) and loop.reason == "mail for loop.test loops back to myself"
    dangling = await r.resolve("dangling.test")
    assert isinstance(dangling, rt.Failure) and dangling.dsn == "5.4.4"
    refused = await r.resolve("example.invalid")  # not served: REFUSED, a lookup failure
    assert isinstance(refused, rt.Failure) and (refused.status, refused.dsn) == (DEFERRED, "4.4.3")
