"""Postfix's XFORWARD extension, both ways: parsing what Postfix sends, encoding what we send.

After-queue filtering hides the real client behind 127.0.0.1. Postfix's SMTP client
(``smtp_send_xforward_command = yes``) therefore sends ``XFORWARD NAME=... ADDR=...``
before MAIL FROM, and filterd passes the same facts on to the reinjection smtpd, so that
logs, Received headers and policy checks after the filter still see the original client
(XFORWARD_README). Parsing follows Postfix's own ``xforward_cmd()`` in smtpd.c: the same
attribute names, the same checks, and the same replies, so a broken client gets the
diagnostics a Postfix administrator already knows.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from filterd.netaddr import valid_hostname
from filterd.text import printable

#: The attributes filterd accepts and advertises (``250-XFORWARD NAME ADDR ...``).
ATTRIBUTES = ("NAME", "ADDR", "PROTO", "HELO", "SOURCE", "PORT", "IDENT")
EHLO_KEYWORD = "XFORWARD " + " ".join(ATTRIBUTES)

UNAVAILABLE = "[UNAVAILABLE]"
TEMPUNAVAIL = "[TEMPUNAVAIL]"
_UNKNOWN_VALUES = (UNAVAILABLE, TEMPUNAVAIL)
_MAX_VALUE = 255
_MAX_COMMAND = 512
# Postfix's NEUTER_CHARACTERS: characters that could break headers or macro expansion.
_NEUTER = re.compile(r"[<>()\\\";@:\[\]]")
# What Postfix's smtpd neuters in a HELO argument (an address literal keeps its brackets).
_NEUTER_HELO = re.compile(r"[ <>()\\\";@]")
#: xtext characters that stand for themselves ("!" to "~" but "=").
_XTEXT_PLAIN = re.compile(r"[!-<>-~]*")


class XforwardError(Exception):
    """A refused XFORWARD command; ``reply`` is the full SMTP reply line."""

    def __init__(self, reply: str):
        super().__init__(reply)
        self.reply = reply


@dataclass
class Xforward:
    """The forwarded client facts; None means "not sent", "unknown" means unavailable."""

    values: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def __bool__(self) -> bool:
        return bool(self.values)


def xtext_decode(text: str) -> str | None:
    """RFC 3461 xtext (``+HH`` escapes); None when the text is not valid xtext."""
    if "+" not in text:  # the usual case: nothing to decode, one check of every character
        return text if _XTEXT_PLAIN.fullmatch(text) else None
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "+":
            hexpart = text[i + 1:i + 3]
            if len(hexpart) != 2 or not re.fullmatch(r"[0-9A-Fa-f]{2}", hexpart):
                return None
            out.append(chr(int(hexpart, 16)))
            i += 3
            continue
        if not "!" <= ch <= "~" or ch == "=":
            return None
        out.append(ch)
        i += 1
    return "".join(out)


def xtext_encode(text: str) -> str:
    """RFC 3461 xtext: '+', '=' and anything outside printable ASCII become ``+HH``."""
    if _XTEXT_PLAIN.fullmatch(text) and "+" not in text:
        return text
    out: list[str] = []
    for byte in text.encode("utf-8", "surrogateescape"):
        ch = chr(byte)
        out.append(ch if "!" <= ch <= "~" and ch not in "+=" else f"+{byte:02X}")
    return "".join(out)


def neuter(text: str) -> str:
    """A client-supplied name as Postfix's smtpd keeps a HELO argument: non-printable
    characters and those that could break a header or a macro expansion become ``?``,
    and the name is at most 255 characters (it goes into our Received header)."""
    return _NEUTER_HELO.sub("?", printable(text[:_MAX_VALUE]))


def _bare_address(value: str) -> str | None:
    """Postfix's valid_mailhost_addr(): an IPv4 address or ``IPv6:`` plus an IPv6 address."""
    if value[:5].lower() == "ipv6:":
        try:
            return str(ipaddress.IPv6Address(value[5:]))
        except ValueError:
            return None
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        return None


def parse_xforward(arg: str | None, current: Xforward) -> Xforward:
    """Apply one ``XFORWARD`` argument string to ``current``; raises XforwardError.

    All-or-nothing: on a refused attribute nothing of the command is kept, as in Postfix
    (which returns before updating its flags).
    """
    items = (arg or "").split()
    if not items:
        raise XforwardError("501 5.5.4 Syntax: XFORWARD attribute=value...")
    updated = dict(current.values)
    for item in items:
        name, eq, raw = item.partition("=")
        if not eq or not raw:
            raise XforwardError("501 5.5.4 Error: attribute=value expected")
        if len(raw) > _MAX_VALUE:
            raise XforwardError("501 5.5.4 Error: attribute value too long")
        decoded = xtext_decode(raw)
        value = printable(decoded if decoded is not None else raw)
        key = name.upper()
        if key not in ATTRIBUTES:
            raise XforwardError(f"501 5.5.4 Bad XFORWARD attribute name: {name}")
        updated[key] = _check(key, value)
    return Xforward(updated)


def _check(key: str, value: str) -> str:
    """The stored value of one attribute (Postfix's per-attribute checks and censoring)."""
    if value.upper() in _UNKNOWN_VALUES:
        return "" if key == "HELO" else ("LOCAL" if key == "SOURCE" else "unknown")
    if key == "NAME":
        value = _NEUTER.sub("?", value)
        if not valid_hostname(value):
            raise XforwardError(f"501 5.5.4 Bad NAME syntax: {value}")
    elif key == "ADDR":
        value = _NEUTER.sub("?", value) if value[:5].lower() != "ipv6:" else value
        bare = _bare_address(value)
        if bare is None:
            raise XforwardError(f"501 5.5.4 Bad ADDR syntax: {value}")
        return bare
    elif key == "PORT":
        if not value.isdigit() or len(value) > 5:
            raise XforwardError(f"501 5.5.4 Bad PORT syntax: {value}")
    elif key == "PROTO":
        if len(value) > 64:
            raise XforwardError(f"501 5.5.4 Bad PROTO syntax: {value}")
        value = _NEUTER.sub("?", value)
    elif key == "SOURCE":
        if value.upper() not in ("LOCAL", "REMOTE"):
            raise XforwardError(f"501 5.5.4 Bad SOURCE syntax: {value}")
        value = value.upper()
    else:  # HELO, IDENT
        value = _NEUTER.sub("?", value)
    return value


def encode_commands(attributes: dict[str, str | None], offered: str) -> Iterator[str]:
    """``XFORWARD`` command arguments for a next hop that advertised ``offered``.

    Only attributes the server listed are sent; unknown values go as ``[UNAVAILABLE]``;
    commands are split to stay under 512 bytes, as Postfix's smtp client does.
    """
    accepted = {word.upper() for word in offered.split()}
    pieces: list[str] = []
    for name in ATTRIBUTES:
        if name not in accepted or name not in attributes:
            continue
        value = attributes[name]
        if value is None or value in ("", "unknown"):
            encoded = UNAVAILABLE
        else:
            if name == "ADDR" and ":" in value:
                value = "IPv6:" + value
            encoded = xtext_encode(value[:_MAX_VALUE])
        pieces.append(f"{name}={encoded}")
    line = ""
    for piece in pieces:
        if line and len("XFORWARD ") + len(line) + 1 + len(piece) + 2 > _MAX_COMMAND:
            yield line
            line = ""
        line = f"{line} {piece}" if line else piece
    if line:
        yield line
