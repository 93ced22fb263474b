"""postscreen_dnsbl_sites syntax: every form, its rendering, matching and every error."""

from __future__ import annotations

import pytest

from filterd.config import Config, ConfigError
from filterd.dnsbl.sites import AddressPattern, BitMask, Site, as_dnsbl_sites, parse_site


def test_bare_zone_matches_any_reply_with_weight_one() -> None:
    site = parse_site("zen.spamhaus.org")
    assert site == Site("zen.spamhaus.org", None, 1)
    assert site.matches(["127.0.0.2", "127.0.0.10"]) == ["127.0.0.2", "127.0.0.10"]
    assert site.matches([]) == []


def test_zone_is_normalized() -> None:
    assert parse_site("  Zen.Spamhaus.ORG. ").zone == "zen.spamhaus.org"


def test_exact_filter() -> None:
    site = parse_site("zen.test=127.0.0.2")
    assert site.filter == AddressPattern((((127, 127),), ((0, 0),), ((0, 0),), ((2, 2),)))
    assert site.matches(["127.0.0.2"]) == ["127.0.0.2"]
    assert site.matches(["127.0.0.3"]) == []


def test_range_filter() -> None:
    site = parse_site("zen.test=127.0.0.[2..11]")
    assert site.matches(["127.0.0.1", "127.0.0.2", "127.0.0.11", "127.0.0.12"]) == [
        "127.0.0.2", "127.0.0.11",
    ]


def test_list_filter() -> None:
    site = parse_site("zen.test=127.0.0.[2;4;6]")
    assert site.matches([f"127.0.0.{i}" for i in range(1, 8)]) == [
        "127.0.0.2", "127.0.0.4", "127.0.0.6",
    ]


def test_mixed_list_and_range_in_several_octets() -> None:
    site = parse_site("list.dnswl.org=127.0.[0..255].[1..3]")
    assert site.matches(["127.0.15.1", "127.0.255.3", "127.0.5.0", "127.0.5.4", "127.1.5.2"]) == [
        "127.0.15.1", "127.0.255.3",
    ]
    site = parse_site("x.test=127.0.0.[1;5..7;200]")
    assert site.matches(["127.0.0.1", "127.0.0.6", "127.0.0.200", "127.0.0.4"]) == [
        "127.0.0.1", "127.0.0.6", "127.0.0.200",
    ]


def test_bitmask_filter() -> None:
    site = parse_site("multi.test&0.0.0.4")
    assert site.filter == BitMask(4)
    assert site.matches(["127.0.0.2", "127.0.0.4", "127.0.0.6", "127.0.0.8"]) == [
        "127.0.0.4", "127.0.0.6",
    ]


def test_weights() -> None:
    assert parse_site("zen.test*3").weight == 3
    assert parse_site("zen.test*+2").weight == 2
    assert parse_site("zen.test=127.0.0.[2..11]*3") == Site(
        "zen.test", AddressPattern((((127, 127),), ((0, 0),), ((0, 0),), ((2, 11),))), 3,
    )
    site = parse_site("list.dnswl.org=127.0.[0..255].[1..3]*-2")
    assert site.weight == -2
    assert site.matches(["127.0.10.2"]) == ["127.0.10.2"]
    assert parse_site("multi.test&0.0.0.4*-1") == Site("multi.test", BitMask(4), -1)


def test_weight_zero_is_allowed() -> None:
    assert parse_site("log-only.test*0").weight == 0


@pytest.mark.parametrize(
    "text",
    [
        "zen.test",
        "zen.test*3",
        "zen.test=127.0.0.2",
        "zen.test=127.0.0.[2..11]*3",
        "zen.test=127.0.0.[2;4;6]",
        "list.dnswl.org=127.0.[0..255].[1..3]*-2",
        "multi.test&0.0.0.4",
        "multi.test&0.0.0.12*-1",
    ],
)
def test_rendering_round_trips(text: str) -> None:
    assert str(parse_site(text)) == text
    assert parse_site(str(parse_site(text))) == parse_site(text)


def test_non_ipv4_replies_never_match() -> None:
    assert parse_site("zen.test").matches(["::1", "garbage", "127.0.0.2"]) == ["127.0.0.2"]
    assert parse_site("zen.test&0.0.0.2").matches(["not-an-ip"]) == []


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "empty domain"),
        ("=127.0.0.2", "empty domain"),
        ("zen..test", "empty label"),
        ("zen test!", "characters other than"),
        ("zen.test=", "four dot-separated fields"),
        ("zen.test=127.0.0", "four dot-separated fields"),
        ("zen.test=127.0.0.2.5", "four dot-separated fields"),
        ("zen.test=127.0.0.256", "above 255"),
        ("zen.test=127.0.0.[1..300]", "above 255"),
        ("zen.test=127.0.0.[9..2]", "start exceeds its end"),
        ("zen.test=127.0.0.[]", "not a number"),
        ("zen.test=127.0.0.[2;]", "not a number"),
        ("zen.test=127.0.0.[2,4]", "not a number"),
        ("zen.test=127.0.0.x", "not a number"),
        ("zen.test=127.0.0.-1", "not a number"),
        ("zen.test=127.0.0.[2", "'[' without ']'"),
        ("zen.test=127.0.0.2]", "']' without '['"),
        ("zen.test=127.0.0.[[2]]", "nested"),
        ("zen.test=127.0.0.2..4", "four dot-separated fields"),
        ("zen.test&0.0.0", "dotted quad"),
        ("zen.test&4", "dotted quad"),
        ("zen.test&0.0.0.0", "can never match"),
        ("zen.test*", "not an integer"),
        ("zen.test*x", "not an integer"),
        ("zen.test*1.5", "not an integer"),
        ("zen.test=127.0.0.2*2*3", "not a number"),
        ("zen.test=127.0.0.2&0.0.0.4", "four dot-separated fields"),
    ],
)
def test_bad_syntax_names_entry_and_expectation(text: str, why: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_site(text)
    message = str(info.value)
    assert repr(text) in message
    assert why in message
    assert "zone[=d.d.d.d|&d.d.d.d][*weight]" in message


def test_weight_refused_where_not_meaningful() -> None:
    assert parse_site("zen.test=127.0.0.2", allow_weight=False).weight == 1
    with pytest.raises(ValueError, match="only meaningful"):
        parse_site("zen.test*2", allow_weight=False)


def test_as_dnsbl_sites_splits_commas_and_white_space() -> None:
    sites = as_dnsbl_sites(" zen.test*2, bl.test\n  list.dnswl.org=127.0.[0..255].[1..3]*-2 ,")
    assert [str(s) for s in sites] == [
        "zen.test*2", "bl.test", "list.dnswl.org=127.0.[0..255].[1..3]*-2",
    ]
    assert as_dnsbl_sites("") == []


def test_dnsbl_sites_parameter_through_config() -> None:
    cfg = Config.from_text("dnsbl_sites = zen.test*3 wl.test=127.0.2.[1..3]*-2\n")
    assert cfg.get("dnsbl_sites") == [
        Site("zen.test", None, 3),
        Site("wl.test", AddressPattern((((127, 127),), ((0, 0),), ((2, 2),), ((1, 3),))), -2),
    ]
    assert Config.from_text("").get("dnsbl_sites") == []


def test_bad_dnsbl_sites_parameter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"dnsbl_sites.*127\.0\.0\.999.*above 255"):
        Config.from_text("dnsbl_sites = zen.test=127.0.0.999\n").get("dnsbl_sites")
