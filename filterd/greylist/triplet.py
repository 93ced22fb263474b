"""The parts of a greylisting triplet, computed exactly as postgrey 1.37 computes them.

postgrey keys its database by ``lc "$client_net/$sender/$recipient"``; the sender and the
client are normalised first so that one legitimate mail stream keeps one key:

* the client address is cut to its network (IPv4 /24, IPv6 /64 by default) because big
  senders retry from another address of the same pool;
* the sender loses what changes per message: a BATV ``prvs=`` tag, a ``+extension``, and
  digit runs (VERP, bounce ids) become ``#``.

These are pure functions without I/O; :mod:`filterd.greylist.greylister` caches the client
part, which is the costly one.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from typing import NamedTuple

from filterd.log import RateLimitedLog
from filterd.netaddr import canonical_ipv4

log = logging.getLogger("filterd.greylist")
_limited = RateLimitedLog(log)  # the address comes from the client: it may come in floods

_BATV_TAG = re.compile(r"[0-9a-z]{10}")  # case-sensitive, as postgrey's /^[0-9a-z]{10}/
_PLUS_EXTENSION = re.compile(r"\+.*")
_DIGIT_WORD = re.compile(r"\b\d+\b", re.ASCII)  # Perl's \b and \d on byte strings


def normalise_sender(sender: str) -> str:
    """postgrey's sender substitutions (its ``do_sender_substitutions``).

    An address without ``@`` (the null sender ``<>`` among them) is kept as is. BATV
    ``prvs=TAG=USER`` (or the reversed ``prvs=USER=TAG`` some senders write) becomes USER;
    a ``+extension`` is dropped; every run of digits that forms a whole word becomes
    ``#``. Case is kept: the key is lower-cased as a whole afterwards, and the BATV tag
    test is case-sensitive in postgrey too. postgrey 1.37 has no SRS rewriting.
    """
    user, at, domain = sender.partition("@")
    if not at:
        return sender
    if user.startswith("prvs="):
        parts = user.split("=")
        while parts and not parts[-1]:
            parts.pop()  # Perl's split drops trailing empty fields
        if len(parts) == 3:
            tag1 = _BATV_TAG.match(parts[1]) is not None
            tag2 = _BATV_TAG.match(parts[2]) is not None
            user = parts[1] if (tag2 and not tag1) else parts[2]
    user = _PLUS_EXTENSION.sub("", user, count=1)
    user = _DIGIT_WORD.sub("#", user)
    return f"{user}@{domain}"


def recipient_domain(recipient: str) -> str:
    """What follows the last ``@`` (the whole address when there is none), for ``%r``."""
    return recipient.rpartition("@")[2]


class Client(NamedTuple):
    """A client address as greylisting uses it.

    ``net`` is the triplet's client part, ``awl_key`` the auto-whitelist key (the full
    address), both in postgrey's text form (NetAddr::IP: IPv6 as eight unpadded groups).
    ``ip`` is (IP version, address as a number), what the whitelist's network test needs
    (an ``ipaddress`` object would cost a microsecond per new client), or None for an
    address that is not an IP: postgrey dies on those; filterd uses the text itself as
    the network so that such a client is still greylisted.
    """

    net: str
    awl_key: str
    ip: tuple[int, int] | None


def _v6_text(value: int) -> str:
    return ":".join(f"{(value >> shift) & 0xFFFF:x}" for shift in range(112, -1, -16))


def parse_client(address: str, by_subnet: bool, v4_bits: int, v6_bits: int) -> Client:
    """The triplet network and auto-whitelist key of ``address`` (postgrey's rules)."""
    value = canonical_ipv4(address)
    if value is not None:  # what Postfix sends nearly always: no text parsing in Python
        version, full = 4, address
    else:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            _limited.warning("client addresses that are not IP addresses",
                             "greylist: client address %.60r is not an IP address; "
                             "using it as its own network", address)
            text = address.lower()
            return Client(text, text, None)
        version, value = ip.version, int(ip)
        full = str(ip) if version == 4 else _v6_text(value)
    if not by_subnet:
        return Client(full, full, (version, value))
    if version == 4:
        net = value & ((0xFFFFFFFF << (32 - v4_bits)) & 0xFFFFFFFF)
        return Client(socket.inet_ntoa(net.to_bytes(4, "big")), full, (4, value))
    mask = ((1 << 128) - 1) ^ ((1 << (128 - v6_bits)) - 1)
    return Client(_v6_text(value & mask), full, (6, value))

