"""postgrey's whitelist file formats: every client and recipient entry kind, bad lines."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import pytest

from filterd.config import Config
from filterd.greylist.whitelist import ClientWhitelist, RecipientWhitelist

CLIENTS = """\
# a comment
example.com            # host name: itself and subdomains
/^mx\\d+\\.mail\\.test$/   # regex on the client name
192.0.2.10             # one IPv4 address
198.51.100.0/25        # IPv4 CIDR
203.0.113              # three octets: a /24
2001:db8:1::/48        # IPv6 range
2001:db8:2::7          # one IPv6 address
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def ip(text: str) -> tuple[int, int]:
    """An address as Client.ip holds it: (IP version, address as a number)."""
    address = ipaddress.ip_address(text)
    return address.version, int(address)


@pytest.fixture
def clients(tmp_path: Path) -> ClientWhitelist:
    wl = ClientWhitelist.load([write(tmp_path, "clients", CLIENTS)])
    assert wl.warnings == []
    return wl


@pytest.mark.parametrize("name, address, line", [
    ("example.com", "10.0.0.1", 2),
    ("mail.EXAMPLE.com", "10.0.0.1", 2),
    ("a.b.example.com", "10.0.0.1", 2),
    ("mx12.mail.test", "10.0.0.1", 3),
    ("MX1.Mail.Test", "10.0.0.1", 3),
    ("unknown", "192.0.2.10", 4),
    ("unknown", "198.51.100.127", 5),
    ("unknown", "203.0.113.254", 6),
    ("unknown", "2001:db8:1:ffff::1", 7),
    ("unknown", "2001:db8:2::7", 8),
])
def test_client_entry_kinds(clients: ClientWhitelist, name: str, address: str,
                            line: int) -> None:
    entry = clients.match(name, ip(address))
    assert entry is not None
    assert entry.line == line
    assert str(entry).endswith(f"clients, line {line}: {entry.text}")


@pytest.mark.parametrize("name, address", [
    ("notexample.com", "10.0.0.1"),  # not a subdomain
    ("example.com.evil.test", "10.0.0.1"),
    ("mx.mail.test", "10.0.0.1"),  # regex needs digits
    ("unknown", "192.0.2.11"),
    ("unknown", "198.51.100.128"),  # outside the /25
    ("unknown", "203.0.114.1"),
    ("unknown", "2001:db8:3::1"),
    ("unknown", "2001:db8:2::8"),
])
def test_client_non_matches(clients: ClientWhitelist, name: str, address: str) -> None:
    assert clients.match(name, ip(address)) is None


def test_client_without_ip_matches_by_name_only(clients: ClientWhitelist) -> None:
    assert clients.match("mail.example.com", None) is not None
    assert clients.match("unknown", None) is None


def test_first_entry_in_file_order_is_reported(tmp_path: Path) -> None:
    wl = ClientWhitelist.load([
        write(tmp_path, "a", "/\\.example\\.com$/\nmail.example.com\n"),
        write(tmp_path, "b", "example.com\n192.0.2.0/24\n"),
    ])
    entry = wl.match("mail.example.com", ip("192.0.2.1"))
    assert (Path(entry.file).name, entry.line) == ("a", 1)
    # A name entry in a later file still wins over an address entry (names come first).
    entry = ClientWhitelist.load([write(tmp_path, "c", "192.0.2.0/24\nexample.org\n")]).match(
        "x.example.org", ip("192.0.2.1"))
    assert entry.text == "example.org"


def test_two_octets_mean_a_slash_24_as_in_postgrey(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="filterd.greylist"):
        wl = ClientWhitelist.load([write(tmp_path, "c", "10.20\n")])
    assert wl.match("unknown", ip("10.20.0.9")) is not None
    assert wl.match("unknown", ip("10.20.1.9")) is None
    assert "covers only 10.20.0.0/24" in caplog.text


def test_bad_client_lines_are_skipped_with_file_and_line(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "bad", "good.example\nnot a hostname\n999.1.2.3\n"
                                  "192.0.2.1/33\n/unbalanced(/\nfe80::zz::1\n")
    with caplog.at_level(logging.WARNING, logger="filterd.greylist"):
        wl = ClientWhitelist.load([path])
    assert [w.split(": ", 1)[0] for w in wl.warnings] == [
        f"{path}, line {n}" for n in (2, 3, 4, 5, 6)]
    assert "doesn't look like a hostname" in wl.warnings[0]
    assert "bad regular expression" in wl.warnings[3]
    for warning in wl.warnings:
        assert warning in caplog.text
    assert wl.match("good.example", None) is not None


def test_missing_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="filterd.greylist"):
        ClientWhitelist.load([str(tmp_path / "absent")])
    assert "cannot open whitelist" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="filterd.greylist"):
        ClientWhitelist.load([str(tmp_path / "whitelist_clients.local")])
    assert caplog.text == ""  # postgrey: a missing .local file is fine


def test_shipped_defaults_load_cleanly() -> None:
    cfg = Config.from_text("")
    clients = ClientWhitelist.load(cfg.get("greylist_whitelist_clients"))
    recipients = RecipientWhitelist.load(cfg.get("greylist_whitelist_recipients"))
    assert clients.warnings == [] and recipients.warnings == []
    assert clients.match("lists.debian.org", ip("192.0.2.1")).text == "debian.org"
    assert clients.match("mail12.telekom.de", None) is not None  # a regex entry
    assert clients.match("unknown", ip("148.105.3.4")).text == "148.105.0.0/16"
    assert clients.match("unknown", ip("2a01:4180:4051:800::9")) is not None
    assert recipients.match("postmaster@example.org").text == "postmaster@"
    assert recipients.match("Abuse@Example.org").text == "abuse@"
    assert recipients.match("user@example.org") is None


RECIPIENTS = """\
postmaster@               # user in every domain
info@example.com          # one address
example.net               # a domain and its subdomains
/^noc-\\d+@/              # a regex on the whole address
@only.example             # empty user: the bare domain part
"""


@pytest.fixture
def recipients(tmp_path: Path) -> RecipientWhitelist:
    wl = RecipientWhitelist.load([write(tmp_path, "rcpt", RECIPIENTS)])
    assert wl.warnings == []
    return wl


@pytest.mark.parametrize("recipient, line", [
    ("postmaster@example.org", 1),
    ("PostMaster@example.org", 1),
    ("postmaster+tag@example.org", 1),
    ("info@example.com", 2),
    ("info+x+y@EXAMPLE.com", 2),
    ("anyone@example.net", 3),
    ("anyone@mail.example.net", 3),
    ("noc-7@example.org", 4),
    ("@only.example", 5),
    ("+ext@only.example", 5),
])
def test_recipient_entry_kinds(recipients: RecipientWhitelist, recipient: str,
                               line: int) -> None:
    entry = recipients.match(recipient)
    assert entry is not None and entry.line == line


@pytest.mark.parametrize("recipient", [
    "postmasterx@example.org",
    "postmaster+@example.org",  # postgrey needs at least one character after +
    "info@example.com.evil",
    "info@sub.example.com",
    "x@notexample.net",
    "example.net",  # a domain entry needs an @ or a dot before it
    "noc@example.org",
    "a@only.example",
])
def test_recipient_non_matches(recipients: RecipientWhitelist, recipient: str) -> None:
    assert recipients.match(recipient) is None


def test_bad_recipient_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "rcpt", "abuse@\nnot an address\n/[unclosed/\n")
    with caplog.at_level(logging.WARNING, logger="filterd.greylist"):
        wl = RecipientWhitelist.load([path])
    assert len(wl.warnings) == 2
    assert wl.warnings[0].startswith(f"{path}, line 2: ")
    assert "doesn't look like an address" in wl.warnings[0]
    assert wl.warnings[1].startswith(f"{path}, line 3: bad regular expression")
    assert "line skipped" in caplog.text
    assert wl.match("abuse@example.org") is not None


def test_regexes_that_do_not_combine_are_tried_one_by_one(tmp_path: Path) -> None:
    # A global inline flag is valid alone but not inside an alternation.
    wl = ClientWhitelist.load([write(tmp_path, "c", "/(?i)^mx\\d+$/\n/^relay$/\n")])
    assert wl.warnings == []
    assert wl.match("mx5", None).line == 1
    assert wl.match("relay", None).line == 2
    assert wl.match("other", None) is None
