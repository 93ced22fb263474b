"""Where a recipient address really goes: Postfix's trivial-rewrite resolution, for relay control.

An open relay is rarely a missing check; it is an address whose text names one domain
while the mail would go to another. Postfix decides with the address *resolved*, the
way delivery will read it, never with the text as typed. This module does the same
steps (trivial-rewrite(8), ``resolve_dequoted_address = yes``):

1. a source route (``@a,@b:user@domain``) is stripped to ``user@domain``;
2. the local part is dequoted (``"user@other"@relay`` is ``user@other@relay``);
3. trailing dots of the domain are dropped (``user@other.`` is ``user@other``);
4. an address with no domain gets ``$myorigin`` (``user`` is ``user@$myorigin``);
5. while the domain is one of ours (``mydestination``) and the local part still routes
   (``@``, ``%`` with ``allow_percent_hack``, ``!`` with ``swap_bangpath``), the domain
   is stripped and the local part resolved again: ``user%other@ours`` goes to
   ``user@other``, ``other!user@ours`` to ``user@other``;
6. a remaining local part with ``@``, ``%`` or ``!`` under a domain that is *not* ours
   (a relay domain, or anyone's) is *sender-specified routing*: the next hop might
   route it on, so relay control refuses it unless ``allow_untrusted_routing``.

An address literal (``user@[192.0.2.1]``) is a domain like any other: ours only when
listed. The result says which domain the mail is for and whether it is routed; the
restrictions (:mod:`filterd.restrict.basic`) decide with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

#: Passes of step 5 before giving up: each pass removes one domain, so a real address
#: needs a handful; a hostile one (``a%b%c%...@ours``) must not loop for long.
MAX_PASSES = 20


@dataclass(frozen=True)
class Resolved:
    """The address as delivery would read it, and what relay control needs to know."""

    address: str
    domain: str
    routed: bool
    """The local part still holds ``@``, ``%`` or ``!`` under a domain that is not ours."""
    local: bool
    """The domain is ours (``mydestination``)."""


def strip_source_route(address: str) -> str:
    """``@a,@b:user@domain`` -> ``user@domain`` (RFC 5321 4.1.2: a server should ignore
    the route); any other address is returned unchanged."""
    if address.startswith("@"):
        colon = address.find(":")
        if colon > 0:
            return address[colon + 1:]
    return address


def dequote(address: str) -> str:
    """The internal form of an address: quotes and backslash escapes of the local part
    removed (``"a b"@x`` -> ``a b@x``), as Postfix's smtpd hands addresses on."""
    if '"' not in address and "\\" not in address:
        return address
    out: list[str] = []
    quoted = escaped = False
    for ch in address:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        else:
            out.append(ch)
    return "".join(out)


def resolve(address: str, is_local: Callable[[str], bool], myorigin: str, *,
            percent_hack: bool = True, swap_bangpath: bool = True) -> Resolved:
    """Resolve ``address`` (as received, quotes and route included); see the module text."""
    addr = dequote(strip_source_route(address))
    for _ in range(MAX_PASSES):
        local_part, at, domain = addr.rpartition("@")
        if not at:
            local_part, domain = addr, ""
        domain = domain.rstrip(".")
        if not domain:
            # no domain: a bang path or percent hack names one, else $myorigin
            if swap_bangpath and "!" in local_part:
                site, _, user = local_part.partition("!")
                addr = f"{user}@{site}"
                continue
            if percent_hack and "%" in local_part:
                user, _, site = local_part.rpartition("%")
                addr = f"{user}@{site}"
                continue
            domain = myorigin.rstrip(".")
            addr = f"{local_part}@{domain}"
        ours = is_local(domain)
        if ours and (("@" in local_part) or (swap_bangpath and "!" in local_part)
                     or (percent_hack and "%" in local_part)):
            addr = local_part  # our domain: the local part says where it goes
            continue
        routed = not ours and any(ch in local_part for ch in "@%!")
        return Resolved(f"{local_part}@{domain}", domain.lower(), routed, ours)
    return Resolved(addr, "", True, False)
