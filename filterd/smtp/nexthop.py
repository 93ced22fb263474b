"""Where the content filter reinjects mail: ``filter_forward = smtp:[127.0.0.1]:10025``.

Written as amavisd-new's ``$forward_method`` and Postfix's ``transport:nexthop`` are
(``smtp:[host]:port``; the brackets only say "no MX lookup", which filterd never does),
so a value can be pasted from an amavisd.conf. Kept apart from the SMTP client so that
parameter checking does not import it.
"""

from __future__ import annotations

from dataclasses import dataclass

from filterd.netaddr import parse_host_port


@dataclass(frozen=True)
class NextHop:
    """An SMTP server to hand messages to."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"smtp:[{self.host}]:{self.port}"


def parse_next_hop(value: str) -> NextHop:
    """``smtp:[host]:port``, ``smtp:host:port`` or ``[host]:port``; IPv6 goes in brackets."""
    text = value.strip()
    if text.startswith("lmtp:"):
        raise ValueError(f"only smtp: next hops are supported, got {value!r}")
    try:
        host, port, _ = parse_host_port(text.removeprefix("smtp:"))
    except ValueError as exc:
        raise ValueError(f"expected smtp:[host]:port, got {value!r}: {exc}") from None
    return NextHop(host, port)
