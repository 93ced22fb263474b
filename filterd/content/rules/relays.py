"""SpamAssassin's relay pseudo-headers, parsed from the Received: chain.

Many of SpamAssassin's strongest header rules (RDNS_NONE, RDNS_DYNAMIC, HELO_DYNAMIC_*,
the ``__LAST_UNTRUSTED_RELAY_NO_AUTH`` family...) do not read Received: headers
themselves but the ``X-Spam-Relays-Untrusted``/``-Trusted``/``-Internal``/``-External``
strings SpamAssassin builds from them, one ``[ ip=... rdns=... helo=... by=... ident=
envfrom= intl=0|1 id=... auth=... msa=0 ]`` entry per hop, newest first. This module
builds the same strings, so those rules see what they were written for.

Parsing covers the Received: shapes of the MTAs that write most of them (Postfix,
Sendmail, Exim, qmail, Microsoft SMTPSVC) and falls back, like SpamAssassin, to "the
first [IP] and the by host". Trust is SpamAssassin's inference for an unconfigured
``trusted_networks``: hops from private addresses (and authenticated hops) are trusted
until the first hop from a public address; that one and everything older is untrusted,
and internal means trusted. A mail fetcher's hop (fetchmail, getmail: ``with POP3|IMAP``)
starts the judgement again below it, as SpamAssassin does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_IP = r"(?:\d{1,3}(?:\.\d{1,3}){3}|(?:IPv6:)?[0-9A-Fa-f]*:[0-9A-Fa-f:.]+)"
_DATE_TAIL = re.compile(
    r"[\s;]+(?:(?:Mon|T(?:ue|hu)|Wed|Fri|S(?:at|un)), )?\d+ (?:J(?:an|u[nl])|Feb|Ma[ry]|A(?:pr|ug)|Sep|Oct|Nov|Dec)"
    r" \d+ \d+:\d+(?::\d+)? \S+$")
_ID = re.compile(r" id <?([^\s<>;]{3,})")
_HELO_EQ = re.compile(r"\bhelo=([-A-Za-z0-9.^+_&:=?!@%*$\\/]+)(?:[^-A-Za-z0-9.^+_&:=?!@%*$\\/]|$)")
_HELO_CMD = re.compile(r"\b(?:HELO|EHLO) ([-A-Za-z0-9.^+_&:=?!@%*$\\/]+)(?:[^-A-Za-z0-9.^+_&:=?!@%*$\\/]|$)")
_BY = re.compile(r" by (\S+)(?:[^-A-Za-z0-9;.]|$)")
_AUTH_WITH = re.compile(r" with ((?:ES|L|UTF8S|UTF8L)MTPS?A|ASMTP|HTTP[SU]?)(?: |;|$)", re.I)
_AUTH_POSTFIX = re.compile(r"\) \(Authenticated sender: \S+\) by \S+ \(([^)]+)\) with ")
_ENVFROM = re.compile(r"(?:return-path:? |envelope-(?:sender|from)[ =])(\S+)\b", re.I)
_SKIP_BARE = re.compile(r"^from (\S+) by [^\s;]+ ?;", re.I)
_LOCALHOST = r"(?:localhost(?:\.localdomain)?|127\.0\.0\.1|::1)"

# after "from ": the shapes, most specific first; each yields helo, rdns, ident, ip
_SHAPES: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    # qmail: from rdns (HELO helo) (ident@ip) / ([ip])
    (re.compile(rf"^(\S+) \((?:HELO|EHLO) (\S*)\) \((?:(\S+)@)?\[?({_IP})\]?\)"), ("rdns", "helo", "ident", "ip")),
    # Exim: from [ip] (helo=helo) / from rdns ([ip]:port helo=helo ident=x)
    (re.compile(rf"^\[({_IP})\](?::\d+)? \([^)]*\) by "), ("ip",)),
    (re.compile(rf"^(\S+) \(\[({_IP})\](?::\d+)?(?: [^)]*)?\bhelo=[^)]*\) by "), ("rdns", "ip")),
    # Postfix, Sendmail: from helo (ident@rdns [ip]) / (rdns [ip] (may be forged))
    (re.compile(rf"^(\S+) \((?:(\S+)@)?(\S+) \[({_IP})\][^)]*\)"), ("helo", "ident", "rdns", "ip")),
    # Sendmail without rDNS, Microsoft SMTPSVC: from helo ([ip])
    (re.compile(rf"^(\S*) \(\[({_IP})\][^)]{{0,40}}\)"), ("helo", "ip")),
    # qmail without HELO (the name it was given is both): from host (ident@ip)
    (re.compile(rf"^(\S+) \((?:(\S+)@)?({_IP})\)"), ("helo", "ident", "ip")),
)
_ANY_IP = re.compile(rf"\[({_IP})\]")
_PRIVATE = re.compile(
    r"^(?:(?:10|127|169\.254|172\.(?:1[6-9]|2[0-9]|3[01])|192\.168|100\.(?:6[4-9]|[7-9][0-9]|1[01][0-9]|12[0-7]))\.|"
    r"(?:::1$|f[cd][0-9a-f]{2}:|fe[89ab][0-9a-f]:))", re.I)
_FETCHER = re.compile(r"^\s*\(?from .*with\s+(?:POP3|IMAP)", re.I | re.S)
_STRIP = re.compile(r"[\s\x00#\[\]()<>|]")


def is_private_ip(ip: str) -> bool:
    """SpamAssassin's IP_PRIVATE: RFC 1918, loopback, link-local, CGN and their IPv6 kin."""
    return bool(_PRIVATE.match(ip))


@dataclass(frozen=True)
class Relay:
    """One parsed hop: who handed the message to ``by``."""

    ip: str
    rdns: str = ""
    helo: str = ""
    by: str = ""
    ident: str = ""
    envfrom: str = ""
    id: str = ""
    auth: str = ""

    @property
    def private(self) -> bool:
        return is_private_ip(self.ip)

    def as_string(self, internal: bool) -> str:
        return (f"[ ip={self.ip} rdns={self.rdns} helo={self.helo} by={self.by} ident={self.ident} "
                f"envfrom={self.envfrom} intl={int(internal)} id={self.id} auth={self.auth} msa=0 ]")


def parse_received(value: str) -> Relay | None:
    """One unfolded Received: value as a :class:`Relay`; None when it names no handover."""
    line = re.sub(r"\s+", " ", value).strip()
    line = re.sub(r"(?:\s?;)+$", "", line)
    if not re.match(r"\(?from ", line, re.I) or " with local for " in f"{line} ":
        return None
    bare = _SKIP_BARE.match(line)
    if bare and not re.fullmatch(r"\[[\d.]+\]", bare.group(1)):
        return None
    line = _DATE_TAIL.sub("", line).replace(")by ", ") by ")
    found: dict[str, str] = {}
    if m := _ID.search(line):
        found["id"] = m.group(1)
    if m := _HELO_EQ.search(line) or _HELO_CMD.search(line):
        found["helo"] = m.group(1)
    if m := _BY.search(line):
        found["by"] = m.group(1)
    if " by " in line and (m := _AUTH_WITH.search(line)):
        found["auth"] = m.group(1)
    elif m := _AUTH_POSTFIX.search(line):
        found["auth"] = "Postfix" if m.group(1) == "Postfix" else f"Postfix ({m.group(1)})"
    rest = re.sub(r"^\(?from ", "", line, flags=re.I)
    if m := _ENVFROM.search(rest):
        found["envfrom"] = m.group(1)
    if re.match(rf"^\S+ \((?:\S+@)?{_LOCALHOST}\) ", rest, re.I):
        return None  # local submission, not a handover between hosts
    for pattern, fields in _SHAPES:
        m = pattern.match(rest)
        if m:
            for name, text in zip(fields, m.groups()):
                if text and (name != "helo" or "helo" not in found):
                    found[name] = text
            break
    else:
        m = _ANY_IP.search(rest)
        if not m or "by" not in found:
            return None
        found["ip"] = m.group(1)
        if "helo" not in found and (h := re.match(r"(\S+)[^-A-Za-z0-9.]", rest)):
            found["helo"] = h.group(1)
    return _clean(found)


def _clean(found: dict[str, str]) -> Relay:
    rdns = found.get("rdns", "").rstrip(".")
    if rdns.lower() == "unknown" or rdns.startswith("["):
        rdns = ""
    ip = re.sub(r"^ipv6:", "", found.get("ip", ""), flags=re.I).strip("[]")
    ip = re.sub(r"^0*:0*:(?:0*:)*ffff:(\d+\.\d+\.\d+\.\d+)$", r"\1", ip, flags=re.I)
    envfrom = found.get("envfrom", "").strip().lstrip("<").rstrip(">")
    return Relay(
        ip=_STRIP.sub("!", ip), rdns=_STRIP.sub("!", rdns), helo=_STRIP.sub("!", found.get("helo", "")),
        by=_STRIP.sub("!", found.get("by", "").rstrip(";")), ident=_STRIP.sub("!", found.get("ident", "")),
        envfrom=_STRIP.sub("!", envfrom), id=found.get("id", ""), auth=found.get("auth", ""))


@dataclass(frozen=True)
class RelayPath:
    """The relays of one message, newest first, split where trust ends."""

    trusted: tuple[Relay, ...]
    untrusted: tuple[Relay, ...]

    @classmethod
    def from_received(cls, values: list[str]) -> "RelayPath":
        trusted: list[Relay] = []
        untrusted: list[Relay] = []
        for value in values:
            if _FETCHER.search(value):
                # fetchmail/getmail handover: the relays that follow were the real
                # delivery, so trust is judged again from there (SpamAssassin's
                # found_pop_fetcher_sig); a marker in the untrusted part is ignored
                if not untrusted:
                    trusted.clear()
                continue
            relay = parse_received(value)
            if relay is None:
                continue
            if not untrusted and (relay.private or relay.auth):
                trusted.append(relay)
            else:
                untrusted.append(relay)
        return cls(tuple(trusted), tuple(untrusted))

    def pseudo_headers(self) -> dict[str, str]:
        """``X-Spam-Relays-*`` values; with inferred trust, internal is trusted."""
        trusted = " ".join(r.as_string(True) for r in self.trusted)
        untrusted = " ".join(r.as_string(False) for r in self.untrusted)
        return {"x-spam-relays-trusted": trusted, "x-spam-relays-internal": trusted,
                "x-spam-relays-untrusted": untrusted, "x-spam-relays-external": untrusted}
