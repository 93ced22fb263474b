"""The networks ``mynetworks_style`` means, as Postfix computes the default mynetworks.

``host``: this machine's own addresses; ``subnet``: the subnets of its interfaces;
``class``: the whole class A/B/C networks of its IPv4 interfaces (IPv6: the subnet).
Loopback (127.0.0.0/8, ::1) is always included, as in Postfix.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import shutil
import subprocess

log = logging.getLogger("filterd.restrict")

_LOOPBACK = ["127.0.0.0/8", "::1/128"]


def interface_addresses() -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """Addresses configured on this host's interfaces (iproute2's ``ip -j addr``)."""
    ip = shutil.which("ip") or "/sbin/ip"
    try:
        out = subprocess.run([ip, "-j", "addr", "show"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
        data = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("cannot list interface addresses for mynetworks_style (%s); using loopback only", exc)
        return []
    found = []
    for iface in data:
        for addr in iface.get("addr_info", []):
            try:
                found.append(ipaddress.ip_interface(f"{addr['local']}/{addr['prefixlen']}"))
            except (KeyError, ValueError):
                continue
    return found


def style_networks(style: str, addresses=None) -> list[str]:
    """The mynetworks list for ``style`` (host, subnet or class)."""
    if addresses is None:
        addresses = interface_addresses()
    nets = list(_LOOPBACK)
    for iface in addresses:
        if iface.ip.is_link_local:
            continue  # Postfix skips link-local: its scope is one wire, not a network
        if style == "host":
            net = ipaddress.ip_network(iface.ip)
        elif style == "class" and iface.version == 4:
            first = int(str(iface.ip).split(".")[0])
            prefix = 8 if first < 128 else 16 if first < 192 else 24
            net = ipaddress.ip_network(f"{iface.ip}/{prefix}", strict=False)
        else:
            net = iface.network
        if str(net) not in nets:
            nets.append(str(net))
    return nets
