"""Routing and MX decisions as pure functions over lookup results."""

from __future__ import annotations

import random

import pytest

from filterd.maps import open_table
from filterd.mta import routing as rt
from filterd.mta.delivery import BOUNCED, DEFERRED, Route


def table(text: str) -> rt.Lookup:
    return open_table("inline:{ " + text + " }").lookup


def test_transport_keys() -> None:
    assert rt.transport_keys("User@Mail.Example.COM") == [
        "User@Mail.Example.COM", "mail.example.com", ".example.com", ".com", "*"]
    assert rt.transport_keys("postmaster") == ["*"]


def test_route_precedence() -> None:
    maps = [table("a@example.com=lmtp:unix:/run/lmtp, example.com=smtp:[10.0.0.5]:2525, "
                  ".example.org=relay:, sub.example.net=:[gw.example.net], *=smtp:fallback.example")]
    assert rt.route("a@example.com", maps) == Route("lmtp", "unix:/run/lmtp")
    assert rt.route("b@example.com", maps) == Route("smtp", "[10.0.0.5]:2525")
    # An empty next hop falls back to default_transport's, then relayhost, then the domain.
    assert rt.route("c@x.example.org", maps) == Route("relay", "x.example.org")
    assert rt.route("c@x.example.org", maps, relayhost="[relay.example]") == Route("relay", "[relay.example]")
    assert rt.route("d@sub.example.net", maps, default_transport="lmtp") == Route("lmtp", "[gw.example.net]")
    assert rt.route("e@other.test", maps) == Route("smtp", "fallback.example")
    assert rt.route("e@other.test", []) == Route("smtp", "other.test")
    assert rt.route("e@other.test", [], relayhost="[smarthost]:587") == Route("smtp", "[smarthost]:587")
    assert rt.route("e@other.test", [], default_transport="smtp:[hub]") == Route("smtp", "[hub]")


def test_error_retry_discard_carry_their_text() -> None:
    maps = [table("{ bad.example = error:5.1.2 no such domain }, { moving.example = retry:4.2.0 moving }, "
                  "null.example=discard:, quiet.example=discard:silenced")]
    assert rt.route("x@bad.example", maps, relayhost="[r]") == Route("error", "5.1.2 no such domain")
    assert rt.route("x@moving.example", maps) == Route("retry", "4.2.0 moving")
    assert rt.route("x@null.example", maps) == Route("discard", "")
    assert rt.route("x@quiet.example", maps) == Route("discard", "silenced")
    # default_transport = error:text (a gateway refusing everything it does not route)
    assert rt.route("x@else.example", [], default_transport="error:5.7.1 not routed here") == \
        Route("error", "5.7.1 not routed here")
    assert rt.route("x@else.example", maps[:0], default_transport="discard:gone") == Route("discard", "gone")
    assert rt.route("x@null.example", maps, default_transport="discard:gone") == Route("discard", "")


@pytest.mark.parametrize("text, hop", [
    ("example.com", rt.NextHop("example.com", 25, True)),
    ("example.com:2525", rt.NextHop("example.com", 2525, True)),
    ("[mx.example.com]", rt.NextHop("mx.example.com", 25, False)),
    ("[mx.example.com]:submission", rt.NextHop("mx.example.com", 587, False)),
    ("[192.0.2.1]:26", rt.NextHop("192.0.2.1", 26, False)),
    ("[ipv6:2001:db8::1]", rt.NextHop("ipv6:2001:db8::1", 25, False)),
    ("inet:[127.0.0.1]:10025", rt.NextHop("127.0.0.1", 10025, False)),
])
def test_parse_nexthop(text: str, hop: rt.NextHop) -> None:
    assert rt.parse_nexthop(text) == hop


@pytest.mark.parametrize("text", ["[x]:99999", "a b", "[x]:nosuchservice", ""])
def test_parse_nexthop_errors(text: str) -> None:
    with pytest.raises(ValueError):
        rt.parse_nexthop(text)


def test_mx_order_and_shuffle() -> None:
    records = [(20, "c.example"), (10, "b.example"), (10, "a.example"), (30, "b.example")]
    assert rt.order_mx(records) == ["b.example", "a.example", "c.example"]
    seen = {tuple(rt.order_mx(records, random.Random(seed))) for seed in range(30)}
    assert seen == {("a.example", "b.example", "c.example"), ("b.example", "a.example", "c.example")}


def test_mx_hosts_decisions() -> None:
    ok = rt.MxAnswer(rt.OK, ((10, "mx1.example"), (20, "mx2.example"), (30, "me.example")))
    assert rt.mx_hosts("example", ok, ["Me.Example."]) == ["mx1.example", "mx2.example"]
    assert rt.mx_hosts("example", rt.MxAnswer(rt.NO_DATA)) == ["example"]
    null = rt.mx_hosts("example", rt.MxAnswer(rt.OK, ((0, ""),)))
    assert null == rt.Failure(BOUNCED, "5.1.10", "Domain example does not accept mail (nullMX)")
    nx = rt.mx_hosts("nowhere.example", rt.MxAnswer(rt.NOT_FOUND))
    assert isinstance(nx, rt.Failure) and (nx.status, nx.dsn) == (BOUNCED, "5.4.4")
    temp = rt.mx_hosts("example", rt.MxAnswer(rt.TEMP_FAIL))
    assert isinstance(temp, rt.Failure) and (temp.status, temp.dsn) == (DEFERRED, "4.4.3")
    loop = rt.mx_hosts("example", rt.MxAnswer(rt.OK, ((5, "me.example"), (10, "x.example"))), ["me.example"])
    assert isinstance(loop, rt.Failure) and loop.dsn == "5.4.6"


def test_targets() -> None:
    answers = [rt.AddressAnswer(rt.TEMP_FAIL), rt.AddressAnswer(rt.OK, ("192.0.2.2", "2001:db8::2"))]
    got = rt.targets(["a.example", "b.example"], answers, 25)
    assert got == [rt.Target("b.example", "192.0.2.2", 25), rt.Target("b.example", "2001:db8::2", 25)]
    assert got[0].relay == "b.example[192.0.2.2]:25"
    failed = rt.targets(["a.example"], [rt.AddressAnswer(rt.TEMP_FAIL)], 25)
    assert isinstance(failed, rt.Failure) and failed.dsn == "4.4.3"
    missing = rt.targets(["a.example"], [rt.AddressAnswer(rt.NOT_FOUND)], 25)
    assert isinstance(missing, rt.Failure) and missing.dsn == "5.4.4"


def test_resolver_from_config() -> None:
    from filterd.config import Config

    r = rt.MxResolver.from_config(Config.from_text(
        "dns_nameservers = 127.0.0.1:5353\ninet_protocols = ipv4\nsmtp_randomize_addresses = no\n"
        "myhostname = mx.gateway.test\n"))
    [ns] = r.resolver.nameservers
    assert (ns.address, ns.port) == ("127.0.0.1", 5353)  # type: ignore[union-attr]
    assert r.rng is None and r.myhostnames == ("mx.gateway.test",)
    assert [t.name for t in r.rdtypes] == ["A"]
