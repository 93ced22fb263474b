"""cleanup's address rewriting and header work, as pure functions over tables."""

from __future__ import annotations

import pytest

from filterd.config import Config
from filterd.maps import open_table
from filterd.mta import rewrite as rw
from filterd.mta.cleanup import Rewriting, cleanup, format_headers, missing_headers, rewrite_envelope
from filterd.mta.queuefile import Recipient


def table(text: str) -> rw.Lookup:
    """An inline: table from ``key=value, key=value`` (values may hold spaces)."""
    items = [item.partition("=") for item in text.split(", ")]
    return open_table("inline:{ " + ", ".join(f"{{ {k} = {v} }}" for k, _, v in items) + " }").lookup


def test_canonical_search_order() -> None:
    t = [table("joe@example.com=joe.user@example.com, @old.example=@new.example, "
               "root=admin@example.com, @example.net=postmaster@example.net")]
    assert rw.canonical("joe@example.com", t) == "joe.user@example.com"
    assert rw.canonical("ann@old.example", t) == "ann@new.example"  # @domain result keeps the user
    assert rw.canonical("x@example.net", t) == "postmaster@example.net"
    assert rw.canonical("root@example.com", t) == "root@example.com"  # user form: local domains only
    assert rw.canonical("root@example.com", t, local_domains=["example.com"]) == "admin@example.com"
    assert rw.canonical("", t) == ""
    assert rw.canonical("nobody@else.example", t) == "nobody@else.example"


def test_address_extensions_are_propagated() -> None:
    t = [table("joe@example.com=joe.user@example.com")]
    assert rw.canonical("joe+lists@example.com", t, delimiter="+") == "joe.user+lists@example.com"
    assert rw.canonical("joe+lists@example.com", t) == "joe+lists@example.com"
    assert rw.canonical("+x@example.com", t, delimiter="+") == "+x@example.com"


def test_virtual_alias_expansion() -> None:
    t = [table("team@example.com=ann@example.com bob@example.com, bob@example.com=bob@mail.example.com, "
               "ann@example.com=ann@example.com ann@archive.example, @catch.example=all@example.com, "
               "loop1@example.com=loop2@example.com, loop2@example.com=loop1@example.com")]
    assert rw.expand_virtual("team@example.com", t) == [
        "ann@example.com", "ann@archive.example", "bob@mail.example.com"]
    assert rw.expand_virtual("z@catch.example", t) == ["all@example.com"]
    assert rw.expand_virtual("loop1@example.com", t) == ["loop1@example.com"]
    assert rw.expand_virtual("plain@example.com", t) == ["plain@example.com"]


def test_virtual_alias_limits() -> None:
    chain = ", ".join(f"a{i}@example.com=a{i + 1}@example.com" for i in range(20))
    with pytest.raises(rw.AliasLimitError, match="recursion limit 10"):
        rw.expand_virtual("a0@example.com", [table(chain)], recursion_limit=10)
    wide = table("list@example.com=" + " ".join(f"m{i}@example.com" for i in range(20)))
    with pytest.raises(rw.AliasLimitError, match="expansion limit 5"):
        rw.expand_virtual("list@example.com", [wide], expansion_limit=5)


def test_relocated_and_masquerade() -> None:
    t = [table("old@example.com=new@example.org")]
    assert rw.relocated("old@example.com", t) == "new@example.org"
    assert rw.relocated("x@example.com", t) is None
    domains = ["!keep.example.com", "example.com"]
    assert rw.masquerade("u@host.example.com", domains) == "u@example.com"
    assert rw.masquerade("u@a.keep.example.com", domains) == "u@a.keep.example.com"
    assert rw.masquerade("u@example.com", domains) == "u@example.com"
    assert rw.masquerade("root@host.example.com", domains, {"root"}) == "root@host.example.com"
    assert rw.masquerade("u@example.org", domains) == "u@example.org"


def test_header_addresses_keep_their_text() -> None:
    value = ' "Joe, the <boss>" <joe@example.com>, ann@example.com (Ann <ann@x>), Group: ;'
    out = rw.rewrite_header_addresses(value, str.upper)
    assert out == ' "Joe, the <boss>" <JOE@EXAMPLE.COM>, ANN@EXAMPLE.COM (Ann <ann@x>), Group: ;'


def test_envelope_rewriting_keeps_the_original_recipient_and_refuses() -> None:
    r = Rewriting(recipient_canonical_maps=[table("info@example.com=sales@example.com")],
                  virtual_alias_maps=[table("sales@example.com=ann@example.com bob@example.com")],
                  relocated_maps=[table("gone@example.com=ann@example.org")],
                  sender_canonical_maps=[table("@host.example.com=@example.com")])
    c = rewrite_envelope(r, "joe@host.example.com", [
        Recipient("info@example.com", notify="FAILURE"), Recipient("ann@example.com"),
        Recipient("gone@example.com")])
    assert c.sender == "joe@example.com"
    assert [(x.address, x.orcpt, x.notify) for x in c.recipients] == [
        ("ann@example.com", "info@example.com", "FAILURE"), ("bob@example.com", "info@example.com", "FAILURE")]
    assert [(x.address, x.code, x.dsn, x.text) for x in c.refused] == [
        ("gone@example.com", 550, "5.1.6", "User has moved to ann@example.org")]


def test_cleanup_headers() -> None:
    r = Rewriting(masquerade_domains=["example.com"])
    headers = [("From", " Joe <joe@host.example.com>"), ("To", " ann@mail.example.com"),
               ("Subject", " hi\r\n\tthere")]
    c = cleanup(r, "joe@host.example.com", [Recipient("ann@mail.example.com")], headers, qid="1A2B3C4D5E",
                myhostname="gw.example.test", client_name="client.example", client_address="192.0.2.7",
                helo="client.example", protocol="ESMTP", now=1765000000.0, local_client=False)
    assert c.sender == "joe@example.com"
    assert c.recipients[0].address == "ann@mail.example.com"  # envelope recipients are not masqueraded
    name, value = c.headers[0]
    assert name == "Received"
    assert value.startswith(" from client.example (client.example [192.0.2.7])\r\n\tby gw.example.test "
                            "(filterd) with ESMTP id 1A2B3C4D5E\r\n\tfor <ann@mail.example.com>; ")
    assert c.headers[1:] == [("From", " Joe <joe@example.com>"), ("To", " ann@example.com"),
                             ("Subject", " hi\r\n\tthere")]  # remote mail: nothing added
    assert format_headers(c.headers[2:]).startswith(b"To: ann@example.com\r\nSubject: hi\r\n\tthere\r\n")


def test_missing_headers_for_local_clients() -> None:
    added = missing_headers([("Subject", " x")], "joe@example.com", "1A2B3C4D5E", "gw.example.test",
                            1765000000.0, local_client=True, always=False)
    names = [n for n, _ in added]
    assert names == ["Message-Id", "Date", "From", "To"]
    assert added[0][1] == " <20251206054640.1A2B3C4D5E@gw.example.test>"
    assert added[2][1] == " joe@example.com" and added[3][1] == " undisclosed-recipients:;"
    assert missing_headers([("Subject", " x")], "", "Q", "h", 0, local_client=False, always=False) == []
    assert [n for n, _ in missing_headers([("To", " a@b"), ("Message-ID", " <x@y>")], "", "Q", "h", 0,
                                          local_client=False, always=True)] == ["Date", "From"]


def test_rewriting_from_config() -> None:
    cfg = Config.from_text("canonical_maps = inline:{ a@example.com=b@example.com }\n"
                           "masquerade_domains = example.org\nmydestination = example.com\n")
    r = Rewriting.from_config(cfg)
    assert r.sender("a@example.com") == "b@example.com"
    assert r.sender("x@mail.example.org") == "x@example.org"
    assert r.local_domains == ("example.com",)
