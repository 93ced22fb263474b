"""Postfix's SMTPD access policy delegation protocol, as plain objects without I/O.

A request is ``name=value`` lines ended by an empty line; the reply is
``action=...`` and an empty line; a connection carries many requests. This module turns
bytes into requests and requests into :class:`Transaction` objects (and back, for
chaining to another policy service). Every fault is reported with what was wrong, so the
server can log it, answer safely and go on serving everyone else.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from itertools import repeat
from typing import Any

from filterd.restrict.transaction import Stage, Transaction

#: Longest single attribute line accepted (Postfix's own values stay far below this).
MAX_LINE = 8192
#: Longest request accepted; beyond it framing cannot be trusted and the connection closes.
MAX_REQUEST = 65536
#: Most attributes in one request.
MAX_ATTRIBUTES = 256

# str.split(line, "=", 1) for every line, called by map() itself: map over three
# iterables costs a third less than map with an operator.methodcaller. The repeats are
# endless and hold constants, so one pair serves every call.
_EQUALS = repeat("=")
_ONCE = repeat(1)


@dataclass(slots=True)
class PolicyRequest:
    """One complete request: its attributes and the faults found while reading it."""

    attrs: dict[str, str]
    faults: list[str] = field(default_factory=list)

    @property
    def request_type(self) -> str | None:
        return self.attrs.get("request")


@dataclass(frozen=True)
class FramingError:
    """Input that cannot be read as requests any more; the connection must close."""

    message: str


class PolicyParser:
    """Incremental request reader: ``feed(bytes)`` returns the requests completed."""

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an unfinished request held (non-zero when a client vanishes mid-request)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[PolicyRequest | FramingError]:
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        buf = self._buf
        end = len(data) - 2
        if not buf and 0 <= end <= MAX_REQUEST and data.find(b"\n\n") == end:
            # What smtpd sends: one whole request per read, nothing held from before.
            return [parse_block(data[:-2])]
        buf += data
        out: list[PolicyRequest | FramingError] = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            out.append(parse_block(bytes(buf[start:end])))
            start = end + 2
            # A stray empty line between requests would make the next "request" empty.
            while start < len(buf) and buf[start] == 0x0A:
                start += 1
        if start:
            del buf[:start]
        if len(buf) > MAX_REQUEST:
            buf.clear()
            out.append(FramingError(f"request longer than {MAX_REQUEST} bytes without an empty line"))
        return out


def parse_block(block: bytes) -> PolicyRequest:
    """Parse the lines of one request (without its terminating empty line).

    The block is decoded once (Postfix sends UTF-8 with SMTPUTF8, else ASCII; invalid
    bytes become U+FFFD, shown, never trusted) and then split: decoding per attribute
    would cost more than everything else this request does.
    """
    text = block.decode("utf-8", "replace")
    lines = text.split("\n")
    if len(text) <= MAX_LINE and len(lines) <= MAX_ATTRIBUTES and text.isascii():
        # Fast path for what Postfix sends: short ASCII lines, each with a name and '='.
        try:
            attrs = dict(map(str.split, lines, _EQUALS, _ONCE))  # C calls only
        except ValueError:
            pass
        else:
            if "" not in attrs:
                return PolicyRequest(attrs, [])
    return _parse_lines(lines)


def _parse_lines(lines: list[str]) -> PolicyRequest:
    """The careful path: every fault found and named."""
    attrs: dict[str, str] = {}
    faults: list[str] = []
    for line in lines:
        name, sep, value = line.partition("=")
        if len(line) > MAX_LINE:
            faults.append(f"attribute line longer than {MAX_LINE} bytes ({line[:30]!r}...)")
            continue
        if not sep:
            if line:
                faults.append(f"line without '=': {line[:40]!r}")
            continue
        if not name:
            faults.append(f"line with an empty attribute name: {line[:40]!r}")
            continue
        if not name.isascii() or "\ufffd" in name:
            faults.append(f"attribute name is not ASCII: {name[:40]!r}")
            continue
        if len(attrs) >= MAX_ATTRIBUTES:
            faults.append(f"more than {MAX_ATTRIBUTES} attributes")
            break
        attrs[name] = value
    return PolicyRequest(attrs, faults)


def encode_reply(action: str) -> bytes:
    """``action=...`` plus the empty line; the action is made single-line first."""
    if "\n" in action or "\r" in action:
        action = " ".join(action.split())
    return f"action={action}\n\n".encode("utf-8", "replace")


def encode_request(attrs: dict[str, str]) -> bytes:
    """A request for a chained policy service (values made single-line)."""
    lines = []
    for k, v in attrs.items():
        if "\n" in v or "\r" in v:
            v = " ".join(v.split())
        lines.append(f"{k}={v}")
    return ("\n".join(lines) + "\n\n").encode("utf-8", "replace")


_INT_FIELDS = ("recipient_count", "size", "encryption_keysize")
#: unauth_pipelining is what an SMTP server saw itself, never a request attribute;
#: the recipients list is not one either (a request carries the recipient at hand).
_LOCAL_FIELDS = {"stage", "extra", "unauth_pipelining", "recipients"}
_TXN_FIELDS = frozenset({f.name for f in fields(Transaction)} - _LOCAL_FIELDS)
_KNOWN = _TXN_FIELDS | {"request", "protocol_state"}
_STAGES = {s.value: s for s in Stage}
_TEMPLATE = {k: v for k, v in Transaction().__dict__.items() if k != "extra"}


def to_transaction(attrs: dict[str, str]) -> tuple[Transaction, list[str]]:
    """Build a Transaction from request attributes; returns it and any value faults.

    Unknown attributes are kept in ``extra`` (future Postfix versions add attributes;
    they are passed on to chained services, never an error). A bad number is a fault
    and the field keeps its default; a missing or unknown ``protocol_state`` means RCPT
    is assumed and reported.
    """
    faults: list[str] = []
    # Attribute names are the field names: copy them in whole, take out what is not a
    # field. Set operations and dict copies run in C; this runs for every request.
    values: dict[str, Any] = attrs.copy()  # a few become numbers
    extra = {} if attrs.keys() <= _KNOWN else {k: values.pop(k) for k in attrs if k not in _KNOWN}
    values.pop("request", None)
    state = values.pop("protocol_state", None)
    for key in _INT_FIELDS:
        value = values.get(key)
        if value is not None:
            try:
                values[key] = int(value or 0)
            except ValueError:
                faults.append(f"{key}={value[:40]!r} is not a number")
                del values[key]
    stage = Stage.RCPT
    if state is None:
        faults.append("no protocol_state attribute (assuming RCPT)")
    else:
        try:
            stage = _STAGES[state] if state in _STAGES else Stage.parse(state)
        except ValueError as exc:
            faults.append(f"{exc} (assuming RCPT)")
    if not values.get("client_name"):
        values["client_name"] = "unknown"
    # Filling __dict__ from a template costs a tenth of the 30-argument dataclass
    # __init__; the fields are the same either way.
    txn = Transaction.__new__(Transaction)
    txn.__dict__.update(_TEMPLATE)
    txn.__dict__.update(values)
    txn.stage = stage
    txn.extra = extra
    return txn, faults


def from_transaction(txn: Transaction) -> dict[str, str]:
    """Request attributes for ``txn``, as Postfix would send them (for chaining)."""
    attrs = {"request": "smtpd_access_policy", "protocol_state": txn.stage.value}
    for name in sorted(_TXN_FIELDS):
        value = getattr(txn, name)
        attrs[name] = "" if value is None else str(value)
    attrs.update(txn.extra)
    return attrs
