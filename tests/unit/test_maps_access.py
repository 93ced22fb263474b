"""access(5) search order: addresses, domains, IP addresses, pattern-table rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from filterd.maps import MapTempError, open_table
from filterd.maps.access import Match, lookup_address, lookup_domain, lookup_ip, strip_extension


class Recorder:
    """A fixed-string table that records every key it is asked for."""

    def __init__(self, entries: dict[str, str] | None = None, is_pattern: bool = False):
        self.spec = "recorder:test"
        self.is_pattern = is_pattern
        self.entries = entries or {}
        self.keys: list[str] = []

    def lookup(self, key: str) -> str | None:
        self.keys.append(key)
        return self.entries.get(key.casefold())


# -- addresses ------------------------------------------------------------------------

def test_address_order_default_parent_style() -> None:
    r = Recorder()
    assert lookup_address([r], "User@Mail.Example.COM") is None
    assert r.keys == ["User@Mail.Example.COM", "Mail.Example.COM", "Example.COM", "COM", "User@"]


def test_address_order_dot_style() -> None:
    r = Recorder()
    lookup_address([r], "user@mail.example.com", parent_matches_subdomains=False)
    assert r.keys == ["user@mail.example.com", "mail.example.com", ".example.com", ".com", "user@"]


def test_address_order_with_extension() -> None:
    r = Recorder()
    lookup_address([r], "user+foo@example.com", rcpt_delim="+")
    assert r.keys == ["user+foo@example.com", "user@example.com", "example.com", "com",
                      "user+foo@", "user@"]


def test_address_full_match_wins() -> None:
    t = open_table("inline:{ user@example.com=full, example.com=dom, user@=local }")
    assert lookup_address([t], "USER@example.com") == Match(t.spec, "USER@example.com", "full")
    assert lookup_address([t], "other@example.com") == Match(t.spec, "example.com", "dom")
    assert lookup_address([t], "user@elsewhere.org") == Match(t.spec, "user@", "local")
    assert lookup_address([t], "x@elsewhere.org") is None


def test_parent_domain_matches_subdomains_on() -> None:
    t = open_table("inline:{ example.com=parent, .other.com=dotted }")
    assert lookup_address([t], "a@b.c.example.com").value == "parent"
    assert lookup_address([t], "a@example.com").value == "parent"
    # With Postfix's default style the ".domain" form is never looked up.
    assert lookup_address([t], "a@sub.other.com") is None


def test_parent_domain_matches_subdomains_off() -> None:
    t = open_table("inline:{ example.com=parent, .other.com=dotted }")
    assert lookup_address([t], "a@b.example.com", parent_matches_subdomains=False) is None
    assert lookup_address([t], "a@example.com", parent_matches_subdomains=False).value == "parent"
    m = lookup_address([t], "a@x.sub.other.com", parent_matches_subdomains=False)
    assert m is not None and (m.key, m.value) == (".other.com", "dotted")
    assert lookup_address([t], "a@other.com", parent_matches_subdomains=False) is None


def test_extension_lookups() -> None:
    t = open_table("inline:{ user@example.com=bare, user@=local-bare, user+x@=local-ext }")
    assert lookup_address([t], "user+foo@example.com", rcpt_delim="+").value == "bare"
    assert lookup_address([t], "user+x@other.org", rcpt_delim="+").value == "local-ext"
    assert lookup_address([t], "user+y@other.org", rcpt_delim="+").value == "local-bare"
    # Without a recipient_delimiter the extension is part of the user name.
    assert lookup_address([t], "user+foo@example.com") is None


@pytest.mark.parametrize("address, delims, bare", [
    ("user+foo@example.com", "+", "user@example.com"),
    ("user-foo+bar@example.com", "+-", "user@example.com"),
    ("user@example.com", "+", None),
    ("+foo@example.com", "+", None),  # would leave an empty local part
    ("postmaster+x@example.com", "+", "postmaster@example.com"),
    ("MAILER-DAEMON@example.com", "-", None),  # these names are never split
    ("double-bounce@example.com", "-", None),
    ("mailer-daemon@example.com", "-+", None),
    ("owner-list@example.com", "-", None),
    ("list-request@example.com", "-", None),
    ("owner-list+x@example.com", "+", "owner-list@example.com"),
    ("user+foo", "+", "user"),
    ("user+foo@example.com", "", None),
])
def test_strip_extension(address: str, delims: str, bare: str | None) -> None:
    assert strip_extension(address, delims) == bare


@pytest.mark.parametrize("sender", ["", "<>"])
def test_null_sender(sender: str) -> None:
    r = Recorder({"<>": "REJECT no bounces"})
    m = lookup_address([r], sender)
    assert m == Match("recorder:test", "<>", "REJECT no bounces")
    assert r.keys == ["<>"]


def test_null_sender_custom_key() -> None:
    r = Recorder({"null-sender": "OK"})
    assert lookup_address([r], "", null_key="null-sender").value == "OK"


def test_address_without_domain() -> None:
    r = Recorder()
    lookup_address([r], "user+x", rcpt_delim="+")
    assert r.keys == ["user+x", "user"]


def test_dunno_stops_search() -> None:
    t = open_table("inline:{ user@example.com=DUNNO, example.com=REJECT }")
    assert lookup_address([t], "user@example.com").value == "DUNNO"


# -- pattern tables see only the full key --------------------------------------------

def test_pattern_tables_get_full_key_only(tmp_path: Path) -> None:
    pattern = Recorder(is_pattern=True)
    lookup_address([pattern], "user+x@mail.example.com", rcpt_delim="+")
    assert pattern.keys == ["user+x@mail.example.com"]
    pattern.keys.clear()
    lookup_domain([pattern], "mail.example.com")
    assert pattern.keys == ["mail.example.com"]
    pattern.keys.clear()
    lookup_ip([pattern], "192.0.2.1")
    assert pattern.keys == ["192.0.2.1"]


def test_regexp_gets_original_case(tmp_path: Path) -> None:
    f = tmp_path / "r"
    f.write_text("/^(.*)@/ $1\n")
    t = open_table(f"regexp:{f}")
    assert lookup_address([t], "MiXed@example.com").value == "MiXed"


def test_regexp_does_not_match_parent_domain(tmp_path: Path) -> None:
    f = tmp_path / "r"
    f.write_text("/^example\\.com$/ REJECT\n")
    t = open_table(f"regexp:{f}")
    assert lookup_address([t], "a@example.com") is None
    assert lookup_domain([t], "example.com").value == "REJECT"


def test_several_tables_key_by_key() -> None:
    first = Recorder({"example.com": "domain-in-first"})
    second = Recorder({"user@example.com": "full-in-second"})
    m = lookup_address([first, second], "user@example.com")
    assert m == Match("recorder:test", "user@example.com", "full-in-second")
    assert first.keys == ["user@example.com"]


def test_temp_error_propagates() -> None:
    with pytest.raises(MapTempError):
        lookup_address([open_table("fail:x")], "a@b.c")


# -- domains --------------------------------------------------------------------------

def test_domain_order() -> None:
    r = Recorder()
    lookup_domain([r], "a.b.example.com")
    assert r.keys == ["a.b.example.com", "b.example.com", "example.com", "com"]
    r.keys.clear()
    lookup_domain([r], "a.b.example.com", parent_matches_subdomains=False)
    assert r.keys == ["a.b.example.com", ".b.example.com", ".example.com", ".com"]


def test_domain_numeric_host_has_no_parents() -> None:
    r = Recorder()
    lookup_domain([r], "192.0.2.1")
    assert r.keys == ["192.0.2.1"]


def test_domain_match() -> None:
    t = open_table("inline:{ example.com=OK, .sub.org=dot }")
    assert lookup_domain([t], "MX.Example.com") == Match(t.spec, "Example.com", "OK")
    assert lookup_domain([t], "x.sub.org", parent_matches_subdomains=False).value == "dot"
    assert lookup_domain([t], "x.sub.org") is None


# -- IP addresses ---------------------------------------------------------------------

def test_ipv4_prefixes() -> None:
    r = Recorder()
    lookup_ip([r], "192.0.2.10")
    assert r.keys == ["192.0.2.10", "192.0.2", "192.0", "192"]


def test_ipv4_match_longest_first() -> None:
    t = open_table("inline:{ 1.2.3=REJECT, 1.2.3.4=OK, 10=net10 }")
    assert lookup_ip([t], "1.2.3.4").value == "OK"
    assert lookup_ip([t], "1.2.3.5") == Match(t.spec, "1.2.3", "REJECT")
    assert lookup_ip([t], "10.20.30.40").value == "net10"
    assert lookup_ip([t], "11.2.3.4") is None


def test_ipv6_prefixes_compressed_form() -> None:
    r = Recorder()
    lookup_ip([r], "2001:0DB8:0000:0000:0000:0000:0000:0001")
    assert r.keys == ["2001:db8::1", "2001:db8:", "2001:db8", "2001"]


def test_ipv6_match() -> None:
    t = open_table("inline:{ 2001:db8=v6net, 2001:db8::1=host }")
    assert lookup_ip([t], "2001:db8::1").value == "host"
    assert lookup_ip([t], "2001:db8::2") == Match(t.spec, "2001:db8", "v6net")
    assert lookup_ip([t], "[2001:db8::2]").value == "v6net"


def test_ipv4_mapped_ipv6_is_ipv4() -> None:
    r = Recorder()
    lookup_ip([r], "::ffff:192.0.2.1")
    assert r.keys == ["192.0.2.1", "192.0.2", "192.0", "192"]


def test_cidr_table_with_lookup_ip(tmp_path: Path) -> None:
    f = tmp_path / "c"
    f.write_text("192.0.2.0/24 REJECT\n2001:db8::/32 OK\n")
    t = open_table(f"cidr:{f}")
    assert lookup_ip([t], "192.0.2.77") == Match(t.spec, "192.0.2.77", "REJECT")
    assert lookup_ip([t], "2001:db8::5").value == "OK"
    assert lookup_ip([t], "198.51.100.1") is None


def test_unparsable_ip_still_searched_as_text() -> None:
    r = Recorder()
    lookup_ip([r], "unknown")
    assert r.keys == ["unknown"]
