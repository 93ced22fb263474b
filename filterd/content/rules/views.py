"""The text each SpamAssassin rule type is matched against, built from a :class:`Message`.

Everything is bytes (see :mod:`perlre`): decoded text is encoded as UTF-8, raw header
values go back to the bytes they were received as. One :class:`MessageViews` per message
caches each view, since many rules share one.

SpamAssassin's shapes, reproduced:

* ``header``: all values of the header, decoded and unfolded, each ending in ``\\n``,
  concatenated (``:raw`` keeps folding and encoded-words; ``:addr``/``:name`` give one
  address/display name per line, no trailing newline); an absent header is the empty
  string unless the rule says ``[if-unset: STRING]``.
* ``body``: the Subject, then the rendered text of each text part split into paragraphs
  (blank-line separated), white space runs folded to one space, each paragraph one
  "line" ending in ``\\n``; lines over 2048 bytes are split at a space. At most 50 000
  characters of each part are used (SpamAssassin's ``body_part_scan_size``).
* ``rawbody``: each text part transfer-decoded but not rendered, in chunks of about
  2048-4096 bytes cut at line ends (``rawbody_part_scan_size`` 500 000).
* ``uri``: each URI; ``full``: the whole message as received.
"""

from __future__ import annotations

import email.utils
import functools
import ipaddress
import re
from collections.abc import Callable
from functools import cached_property
from typing import TypeVar

from filterd.content.message import Message, decode_header_value
from filterd.content.rules.model import RuleSettings
from filterd.content.rules.relays import RelayPath

T = TypeVar("T")

MAX_LINE = 2048
BODY_PART_SCAN_SIZE = 50_000
RAWBODY_PART_SCAN_SIZE = 500_000
SUPPORTED_MODIFIERS = frozenset({"raw", "addr", "name", "first", "last"})

_PARA_SPLIT = re.compile(r"\n[ \t\r\f\v]*\n")
_WS = re.compile(r"\s+")
_IPV4 = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])")
#: SpamAssassin's pseudo-headers made from the Received chain (see :mod:`relays`).
RELAY_PSEUDO_HEADERS = frozenset(("x-spam-relays-trusted", "x-spam-relays-internal",
                                  "x-spam-relays-untrusted", "x-spam-relays-external"))
_MSGID_HEADERS = ("X-Message-Id", "Resent-Message-Id", "X-Original-Message-ID", "Message-Id")


def to_bytes(text: str) -> bytes:
    """UTF-8 bytes of a text; surrogate escapes become the raw bytes they stand for."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def split_long(line: str) -> list[str]:
    """Cut a line longer than 2048 characters at the last space before the limit."""
    out: list[str] = []
    while len(line) > MAX_LINE:
        cut = line.rfind(" ", 0, MAX_LINE) + 1 or MAX_LINE
        out.append(line[:cut])
        line = line[cut:]
    out.append(line)
    return out


@functools.lru_cache(maxsize=4096)
def parse_header_spec(spec: str) -> tuple[str, frozenset[str]]:
    """``From:addr:first`` -> (``From``, {addr, first}); raises ValueError on unknown modifiers.

    Kept per spec: a rule set reads about a hundred specs per message, always the same."""
    name, *mods = spec.split(":")
    unknown = set(mods) - SUPPORTED_MODIFIERS
    if not name or unknown:
        raise ValueError(f"unsupported header modifier(s) {', '.join(sorted(unknown)) or '(empty)'}")
    return name, frozenset(mods)


class MessageViews:
    """Per-message cache of the strings rules look at.

    ``settings`` are the rule set's plugin settings (``freemail_domains``...): eval tests
    read them here, so every eval keeps the one ``(views, args)`` signature.
    """

    def __init__(self, msg: Message, settings: RuleSettings | None = None):
        self.msg = msg
        self.settings = settings if settings is not None else RuleSettings()
        self._headers: dict[str, bytes | None] = {}
        self._shared: dict[Callable[..., object], object] = {}

    def shared(self, compute: Callable[[MessageViews], T]) -> T:
        """``compute(self)``, worked out once per message however many eval tests ask
        (the Date/Received skew, the MIME counters, the HTML statistics...)."""
        try:
            return self._shared[compute]  # type: ignore[return-value]
        except KeyError:
            result = self._shared[compute] = compute(self)
            return result

    def shared_if_done(self, compute: Callable[[MessageViews], T]) -> T | None:
        """What :meth:`shared` holds for ``compute``, without computing it."""
        return self._shared.get(compute)  # type: ignore[return-value]

    # -- header --------------------------------------------------------------------
    def header(self, spec: str) -> bytes | None:
        """The matching string for a header spec, or None when the header is absent."""
        if spec not in self._headers:
            self._headers[spec] = self._header(spec)
        return self._headers[spec]

    def _header(self, spec: str) -> bytes | None:
        name, mods = parse_header_spec(spec)
        values = self._values(name, "raw" in mods or "addr" in mods or "name" in mods)
        if not values:
            return None
        if "first" in mods:
            values = values[:1]
        elif "last" in mods:
            values = values[-1:]
        if "addr" in mods or "name" in mods:
            values = self._addresses(values, names="name" in mods, raw="raw" in mods)
            if not values:
                return None
            return to_bytes("\n".join(values))
        return to_bytes("".join(v if v.endswith("\n") else v + "\n" for v in values))

    def _values(self, name: str, raw: bool) -> list[str] | None:
        msg = self.msg
        if name == "ALL" or name in ("ALL-UNTRUSTED", "ALL-EXTERNAL"):
            # filterd trusts no relay inside the message: everything is untrusted/external
            if raw:
                return [f"{n}: {v}\n" for n, v in msg.header_fields]
            return [f"{n}: {_decoded(v)}\n" for n, v in msg.header_fields]
        if name in ("ALL-TRUSTED", "ALL-INTERNAL"):
            return None
        low = name.lower()
        if low in RELAY_PSEUDO_HEADERS:  # parse the Received chain only for rules that read it
            value = self.relay_headers[low]
            return [value] if value else None
        if low == "envelopefrom":
            sender = msg.envelope.sender or next(iter(msg.addresses("Return-Path")), "")
            return [sender] if sender else None
        if low == "tocc":
            return self._get("To", raw) + self._get("Cc", raw)
        if name == "MESSAGEID":
            return [v for h in _MSGID_HEADERS for v in self._get(h, raw) if v.strip()]
        return self._get(name, raw)

    def _get(self, name: str, raw: bool) -> list[str]:
        if raw:
            return self.msg.get_all_raw(name)
        return self.msg.get_all(name)

    @staticmethod
    def _addresses(values: list[str], names: bool, raw: bool) -> list[str]:
        out: list[str] = []
        decoded = values if raw else [_decoded(v) for v in values]
        for display, addr in email.utils.getaddresses(decoded):
            if names:
                if display:
                    out.append(display if raw else _WS.sub(" ", display).strip().strip("'"))
            elif addr:
                out.append(addr)
        return out

    @cached_property
    def relay_path(self) -> RelayPath:
        """The parsed Received: chain, split where trust ends (see :mod:`relays`)."""
        return RelayPath.from_received(self.msg.get_all("Received"))

    @cached_property
    def relay_headers(self) -> dict[str, str]:
        """SpamAssassin's ``X-Spam-Relays-*`` pseudo-headers, lower-case names."""
        return self.relay_path.pseudo_headers()

    # -- body, rawbody, uri, full -----------------------------------------------------
    @cached_property
    def body_lines(self) -> list[bytes]:
        lines: list[str] = []
        subject = self.msg.subject
        if subject:
            lines.append(_WS.sub(" ", subject) + "\n")
        for part in self.msg.text_parts:
            text = (part.text or "")[:BODY_PART_SCAN_SIZE]
            for para in _PARA_SPLIT.split(text):
                norm = _WS.sub(" ", para)
                if norm.strip():
                    lines.extend(split_long(norm + "\n"))
        return [to_bytes(line) for line in lines]

    @cached_property
    def rawbody_chunks(self) -> list[bytes]:
        chunks: list[bytes] = []
        for part in self.msg.text_parts:
            text = ((part.html if part.html is not None else part.text) or "")[:RAWBODY_PART_SCAN_SIZE]
            chunks.extend(to_bytes(c) for c in _chunks(text))
        return chunks

    @cached_property
    def uris(self) -> list[bytes]:
        return [to_bytes(u) for u in self.msg.uris]

    @property
    def full(self) -> bytes:
        return self.msg.raw

    @cached_property
    def received_ips(self) -> list[ipaddress.IPv4Address]:
        """IPv4 addresses named in Received headers (for the trust approximation)."""
        ips: list[ipaddress.IPv4Address] = []
        for value in self.msg.get_all("Received"):
            for m in _IPV4.finditer(value):
                try:
                    ips.append(ipaddress.IPv4Address(m.group(1)))
                except ValueError:
                    continue
        return ips


def _decoded(raw_value: str) -> str:
    return decode_header_value(re.sub(r"\r?\n[ \t]+", " ", raw_value).strip())


def _chunks(text: str) -> list[str]:
    """Split a decoded part into chunks of at least 2048 characters, cut after a newline."""
    if len(text) <= MAX_LINE:
        return [text] if text else []
    out: list[str] = []
    start = 0
    while len(text) - start > 2 * MAX_LINE:
        cut = text.find("\n", start + MAX_LINE)
        if cut < 0 or cut - start + 1 > 2 * MAX_LINE:
            cut = start + MAX_LINE - 1
        out.append(text[start:cut + 1])
        start = cut + 1
    out.append(text[start:])
    return out
