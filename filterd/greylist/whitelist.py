"""postgrey's whitelist files: parsing and matching, with postgrey's entry formats and order.

Clients (``whitelist_clients``), one entry per line, ``#`` comments:

* ``/regex/``        a case-insensitive regular expression searched in the client name;
* ``1.2.3.4``, ``1.2.3.0/24``  an IPv4 address or network;
* ``1.2.3``          a /24 (and, as postgrey really does, ``1.2`` means 1.2.0.0/24);
* anything with two colons: an IPv6 address or network;
* any other word:    a host name, matching itself and its subdomains.

Recipients (``whitelist_recipients``): ``/regex/`` on the whole address, ``user@domain``
and ``user@`` (also matching ``user+extension``), or ``domain`` (and its subdomains).

postgrey tests client names first, then client addresses, then recipients, each in file
order, first match wins. The result here is the same, but found without postgrey's linear
scan: names and addresses are dictionary lookups (the candidate suffixes of a name, the
masked address per prefix length) and the regexes are tried as one combined pattern;
the entry reported is still the first in file order. Lines postgrey cannot use are skipped
with a warning naming the file and line (postgrey skips some of them silently).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Self

log = logging.getLogger("filterd.greylist")

_REGEX = re.compile(r"/(\S+)/")
_IPV4 = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?:/\d{1,2})?", re.ASCII)
_IPV4_24 = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}", re.ASCII)
_IPV4_16 = re.compile(r"\d{1,3}\.\d{1,3}", re.ASCII)
_IPV6 = re.compile(r".*:.*:.*")
_WORD = re.compile(r"\S+")


@dataclass(frozen=True, slots=True)
class Entry:
    """One usable whitelist line; ``order`` is its rank over all files (first match wins)."""

    order: int
    file: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.file}, line {self.line}: {self.text}"


def _lines(path: str, missing: list[str]) -> Iterator[tuple[int, str]]:
    """(line number, entry text) of a whitelist file, comments and blank lines removed.

    A missing file is a warning (and is added to ``missing``), except a ``*.local``
    file: like postgrey, filterd lets an administrator list a local file that does not
    exist yet.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError as exc:
        if not path.endswith(".local"):
            log.warning("greylist: cannot open whitelist %s: %s", path, exc.strerror or exc)
            missing.append(path)
        return
    for number, raw in enumerate(text.splitlines(), 1):
        entry = raw.split("#", 1)[0].strip()
        if entry:
            yield number, entry


class _Regexes:
    """Ordered ``/regex/`` entries searched with one alternation (one C call per lookup)."""

    def __init__(self) -> None:
        self._items: list[tuple[re.Pattern[str], Entry]] = []
        self._combined: re.Pattern[str] | None = None

    def add(self, pattern: re.Pattern[str], entry: Entry) -> None:
        self._items.append((pattern, entry))

    def seal(self) -> None:
        """Build the combined pattern; if the patterns do not combine, search one by one."""
        if not self._items:
            return
        try:
            self._combined = re.compile(
                "|".join(f"(?:{p.pattern})" for p, _ in self._items), re.IGNORECASE)
        except re.error:
            self._combined = None

    def first(self, text: str, before: int) -> Entry | None:
        """The first entry in file order (and ranked below ``before``) that matches."""
        if not self._items:
            return None
        if self._combined is not None and self._combined.search(text) is None:
            return None
        for pattern, entry in self._items:
            if entry.order >= before:
                return None
            if pattern.search(text):
                return entry
        return None


_NO_MATCH = 1 << 62


@dataclass
class _Loader:
    """Shared state of a whitelist load: the running rank and the warnings produced."""

    warnings: list[str] = field(default_factory=list)
    order: int = 0

    def entry(self, file: str, line: int, text: str) -> Entry:
        self.order += 1
        return Entry(self.order, file, line, text)

    def warn(self, file: str, line: int, message: str) -> None:
        text = f"{file}, line {line}: {message}"
        self.warnings.append(text)
        log.warning("greylist: %s", text)

    def regex(self, file: str, line: int, source: str) -> re.Pattern[str] | None:
        try:
            return re.compile(source, re.IGNORECASE)
        except re.error as exc:
            self.warn(file, line, f"bad regular expression /{source}/: {exc}; line skipped")
            return None


class _Whitelist:
    """What both whitelist kinds share: reading files line by line, regexes sealed last."""

    warnings: list[str]
    #: Files listed that could not be read (``*.local`` ones aside): a reload that finds
    #: one gone keeps the lists it had, rather than silently whitelisting nobody.
    missing: list[str]
    _regexes: _Regexes

    @classmethod
    def load(cls, files: Iterable[str]) -> Self:
        wl = cls()
        loader = _Loader()
        missing: list[str] = []
        for path in files:
            for number, text in _lines(path, missing):
                wl._add(loader, path, number, text)
        wl._regexes.seal()
        wl.warnings = loader.warnings
        wl.missing = missing
        return wl

    def _add(self, loader: _Loader, file: str, line: int, text: str) -> None:
        raise NotImplementedError


class ClientWhitelist(_Whitelist):
    """Clients exempt from greylisting, by name, name regex, or address range."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.missing: list[str] = []
        self._names: dict[str, Entry] = {}
        self._regexes = _Regexes()
        # prefix length -> {address >> (bits - prefix length): entry}
        self._nets: dict[int, dict[int, dict[int, Entry]]] = {4: {}, 6: {}}

    def _add(self, loader: _Loader, file: str, line: int, text: str) -> None:
        if m := _REGEX.fullmatch(text):
            pattern = loader.regex(file, line, m.group(1))
            if pattern is not None:
                self._regexes.add(pattern, loader.entry(file, line, text))
            return
        if _IPV4.fullmatch(text) or _IPV6.fullmatch(text):
            self._add_net(loader, file, line, text, text)
            return
        if _IPV4_24.fullmatch(text):
            self._add_net(loader, file, line, text, f"{text}.0/24")
            return
        if _IPV4_16.fullmatch(text):
            loader.warn(file, line, f"{text} covers only {text}.0.0/24, as in postgrey; "
                                    f"write {text}.0.0/16 for the whole /16")
            self._add_net(loader, file, line, text, f"{text}.0.0/24")
            return
        if _WORD.fullmatch(text):
            self._names.setdefault(text.lower(), loader.entry(file, line, text))
            return
        loader.warn(file, line, f"{text!r} doesn't look like a hostname; line skipped")

    def _add_net(self, loader: _Loader, file: str, line: int, text: str, spec: str) -> None:
        try:
            net = ipaddress.ip_network(spec, strict=False)
        except ValueError as exc:
            loader.warn(file, line, f"bad address {text!r} ({exc}); line skipped")
            return
        shift = net.max_prefixlen - net.prefixlen
        by_len = self._nets[net.version].setdefault(net.prefixlen, {})
        by_len.setdefault(int(net.network_address) >> shift, loader.entry(file, line, text))

    def match(self, client_name: str, ip: tuple[int, int] | None) -> Entry | None:
        """The entry that whitelists this client, or None. Names are tested before addresses.

        ``ip`` is (IP version, address as a number), None when the client has no address.
        """
        name = client_name.lower()
        best = self._names.get(name)
        start = name.find(".")
        while start >= 0:
            hit = self._names.get(name[start + 1:])
            if hit is not None and (best is None or hit.order < best.order):
                best = hit
            start = name.find(".", start + 1)
        hit = self._regexes.first(name, best.order if best else _NO_MATCH)
        if hit is not None:
            return hit
        if best is not None or ip is None:
            return best
        version, value = ip
        bits = 32 if version == 4 else 128
        for prefix_len, nets in self._nets[version].items():
            hit = nets.get(value >> (bits - prefix_len))
            if hit is not None and (best is None or hit.order < best.order):
                best = hit
        return best


class RecipientWhitelist(_Whitelist):
    """Recipients exempt from greylisting, in postgrey's access(5)-like format."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.missing: list[str] = []
        self._addresses: dict[tuple[str, str], Entry] = {}
        self._users: dict[str, Entry] = {}
        self._domains: dict[str, Entry] = {}
        self._regexes = _Regexes()

    def _add(self, loader: _Loader, file: str, line: int, text: str) -> None:
        if m := _REGEX.fullmatch(text):
            pattern = loader.regex(file, line, m.group(1))
            if pattern is not None:
                self._regexes.add(pattern, loader.entry(file, line, text))
            return
        if not _WORD.fullmatch(text):
            loader.warn(file, line, f"{text!r} doesn't look like an address; line skipped")
            return
        entry = loader.entry(file, line, text)
        user, at, domain = text.lower().partition("@")
        if domain:
            self._addresses.setdefault((user, domain), entry)
        elif at:
            self._users.setdefault(user, entry)
        else:
            self._domains.setdefault(user, entry)

    def match(self, recipient: str) -> Entry | None:
        """The entry that whitelists this recipient, or None (first in file order wins)."""
        rcpt = recipient.lower()
        best: Entry | None = None

        def consider(hit: Entry | None) -> None:
            nonlocal best
            if hit is not None and (best is None or hit.order < best.order):
                best = hit

        at = rcpt.find("@")
        if at >= 0 and (self._users or self._addresses):
            # postgrey: ^user(?:\+[^@]+)?@ -- the user, or user+extension, before the first @
            local, rest = rcpt[:at], rcpt[at + 1:]
            users = [local]
            plus = local.find("+")
            while 0 <= plus < len(local) - 1:
                users.append(local[:plus])
                plus = local.find("+", plus + 1)
            for user in users:
                consider(self._users.get(user))
                consider(self._addresses.get((user, rest)))
        if self._domains:
            # postgrey: (?:@|\.)domain$ -- the domain after an @ or a dot, to the end
            last_at = rcpt.rfind("@")
            tail = rcpt[last_at + 1:]
            if last_at >= 0:
                consider(self._domains.get(tail))
            dot = tail.find(".")
            while dot >= 0:
                consider(self._domains.get(tail[dot + 1:]))
                dot = tail.find(".", dot + 1)
        hit = self._regexes.first(rcpt, best.order if best else _NO_MATCH)
        return hit if hit is not None else best
