"""Parameter declarations and their value types.

Every parameter filterd understands is declared once, next to the code that uses it
(``filterd/<part>/params.py``), as a :class:`Param`: its name, its default written the
way ``postconf -d`` would show it, and a converter that turns the expanded text into a
Python value or raises :class:`ValueError` saying what was expected.  Keeping the
declaration beside its user means a new feature cannot forget its default, and the
registry can report unknown names with the file and line they came from.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Callable

from filterd.netaddr import parse_host_port

Converter = Callable[[str], Any]


@dataclass(frozen=True)
class Param:
    """One configuration parameter: name, default text, converter and a one-line doc."""

    name: str
    default: str
    convert: Converter
    doc: str = ""


_LIST_SPLIT = re.compile(r"[\s,]+")


def split_list(value: str) -> list[str]:
    """Split a Postfix list value: commas and/or white space separate elements.

    ``{ ... }`` groups (as in ``inline:{ a=b, c=d }``) are kept whole, because Postfix
    does the same for table specifications written inline.
    """
    out: list[str] = []
    buf: list[str] = []
    depth = 0
    for ch in value:
        if ch == "{":
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
        if depth == 0 and (ch.isspace() or ch == ","):
            if buf:
                out.append("".join(buf))
                buf = []
            continue
        buf.append(ch)
    if depth:
        raise ValueError(f"unbalanced '{{' in {value!r}")
    if buf:
        out.append("".join(buf))
    return out


def as_str(value: str) -> str:
    return value


def as_list(value: str) -> list[str]:
    return split_list(value)


def as_bool(value: str) -> bool:
    low = value.strip().lower()
    if low in ("yes", "true", "on", "1"):
        return True
    if low in ("no", "false", "off", "0", ""):
        return False
    raise ValueError(f"expected yes or no, got {value!r}")


def as_int(value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError(f"expected an integer, got {value!r}") from None


def as_nonneg_int(value: str) -> int:
    n = as_int(value)
    if n < 0:
        raise ValueError(f"expected an integer >= 0, got {value!r}")
    return n


def as_positive_int(value: str) -> int:
    n = as_int(value)
    if n <= 0:
        raise ValueError(f"expected an integer > 0, got {value!r}")
    return n


def as_float(value: str) -> float:
    try:
        return float(value.strip())
    except ValueError:
        raise ValueError(f"expected a number, got {value!r}") from None


_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def as_time(default_unit: str = "s") -> Converter:
    """Postfix time values: a number with an optional unit s/m/h/d/w (fractions allowed)."""

    def convert(value: str) -> float:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", value, re.I)
        if not m:
            raise ValueError(
                f"expected a time value like 300s, 5m, 2h, 35d or 1w, got {value!r}"
            )
        unit = (m.group(2) or default_unit).lower()
        return float(m.group(1)) * _TIME_UNITS[unit]

    return convert


def as_size(value: str) -> int:
    """Byte sizes; accepts Postfix's plain number and k/m/g suffixes for convenience."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)[bB]?\s*", value)
    if not m:
        raise ValueError(f"expected a size in bytes (e.g. 10240000 or 10m), got {value!r}")
    mult = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]
    return int(m.group(1)) * mult


def as_choice(*choices: str) -> Converter:
    def convert(value: str) -> str:
        v = value.strip().lower()
        if v not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return v

    return convert


def as_reply_code(first_digit: str) -> Converter:
    """An SMTP reply code that must start with the given digits (e.g. '45' or '5')."""

    def convert(value: str) -> int:
        v = value.strip()
        if not re.fullmatch(r"[245]\d\d", v) or v[0] not in first_digit:
            raise ValueError(
                f"expected a three-digit SMTP code starting with {' or '.join(first_digit)}, got {value!r}"
            )
        return int(v)

    return convert


@dataclass(frozen=True)
class Endpoint:
    """A listening or connecting address: ``inet:host:port`` or ``unix:/path``."""

    kind: str  # "inet" or "unix"
    host: str
    port: int
    path: str

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"inet:{host}:{self.port}"


def parse_endpoint(value: str) -> Endpoint:
    v = value.strip()
    if v.startswith("unix:"):
        path = v[5:]
        if not path:
            raise ValueError(f"expected unix:/path/to/socket, got {value!r}")
        return Endpoint("unix", "", 0, path)
    try:  # an empty host (inet::10023) is the loopback, never every address
        host, port, _ = parse_host_port(v.removeprefix("inet:"), default_host="127.0.0.1")
    except ValueError as exc:
        raise ValueError(f"expected inet:host:port or unix:/path, got {value!r}: {exc}") from None
    return Endpoint("inet", host, port, "")


def as_endpoint(value: str) -> Endpoint | None:
    """An endpoint, or None when the value is empty (the service is disabled)."""
    if not value.strip():
        return None
    return parse_endpoint(value)


def as_endpoints(value: str) -> list[Endpoint]:
    """A list of endpoints (``inet:0.0.0.0:25, inet:[::]:25``); empty: the service is off."""
    return [parse_endpoint(item) for item in split_list(value)]


def as_networks(value: str) -> list[str]:
    """A list of networks or table references (``mynetworks`` syntax); CIDRs validated."""
    out = []
    for item in split_list(value):
        if ":" in item and not is_network(item) and not item.startswith("["):
            out.append(item)  # a type:table reference (or /file/name), checked by maps
            continue
        if item.startswith("/"):
            out.append(item)
            continue
        net = item.strip("[]") if item.startswith("[") else item
        if "]/" in item:
            net = item.replace("[", "").replace("]", "")
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ValueError(f"expected an IP network like 192.0.2.0/24, got {item!r}") from None
        out.append(net)
    return out


def is_network(item: str) -> bool:
    """An IP address or network (``192.0.2.0/24``, ``[2001:db8::]/32``), not a table."""
    try:
        ipaddress.ip_network(item.strip("[]").replace("]/", "/"), strict=False)
        return True
    except ValueError:
        return False
