"""cleanup(8) for the gateway MTA: what happens to a message between DATA and the queue file.

Pure functions over the envelope and the header list (the body is never touched):

1. The sender goes through sender_canonical_maps then canonical_maps, then
   masquerading (``masquerade_classes`` envelope_sender).
2. Each recipient goes through recipient_canonical_maps then canonical_maps, then
   virtual_alias_maps (recursive, with the recursion and expansion limits). The
   original recipient is kept for DSN ORCPT and the ``orig_to=`` of the log. A
   recipient listed in relocated_maps is refused ("5.1.6 User has moved to ...");
   an expansion over the limits is refused (5.4.6), as Postfix's cleanup does.
   Duplicate recipients after rewriting are delivered once.
3. Headers: canonical rewriting (``canonical_classes`` header_sender/header_recipient)
   and masquerading of the addresses in From/Sender/Reply-To/... and To/Cc/...; a
   ``Received:`` header on top; ``Message-Id:``, ``Date:``, ``From:`` and ``To:`` added
   when missing, but only for local clients unless ``always_add_missing_headers``
   (Postfix 2.6 and later; adding them to remote mail breaks DKIM signatures).

header_checks run in the content pipeline (filterd/content/postfix_checks.py), which
the receiving side calls before the queue file is written.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from filterd.mta.queuefile import Recipient
from filterd.mta.rewrite import (
    AliasLimitError, Lookup, canonical, expand_virtual, masquerade, relocated, rewrite_header_addresses,
)
from filterd.text import printable_ascii

if TYPE_CHECKING:
    from filterd.config import Config

SENDER_HEADERS = frozenset({"from", "sender", "reply-to", "return-receipt-to", "errors-to",
                            "resent-from", "resent-sender", "resent-reply-to", "disposition-notification-to"})
RECIPIENT_HEADERS = frozenset({"to", "cc", "bcc", "apparently-to", "resent-to", "resent-cc", "resent-bcc"})

Header = tuple[str, str]
"""(name, value): the value is everything after the colon as received (its leading
space, folding line breaks), without the final line break."""


@dataclass(frozen=True)
class Rewriting:
    """The tables and settings of cleanup's address rewriting."""

    canonical_maps: Sequence[Lookup] = ()
    sender_canonical_maps: Sequence[Lookup] = ()
    recipient_canonical_maps: Sequence[Lookup] = ()
    canonical_classes: frozenset[str] = frozenset(
        {"envelope_sender", "envelope_recipient", "header_sender", "header_recipient"})
    virtual_alias_maps: Sequence[Lookup] = ()
    virtual_alias_recursion_limit: int = 1000
    virtual_alias_expansion_limit: int = 1000
    relocated_maps: Sequence[Lookup] = ()
    masquerade_domains: Sequence[str] = ()
    masquerade_exceptions: frozenset[str] = frozenset()
    masquerade_classes: frozenset[str] = frozenset({"envelope_sender", "header_sender", "header_recipient"})
    recipient_delimiter: str = ""
    local_domains: Sequence[str] = ()
    always_add_missing_headers: bool = False

    @classmethod
    def from_config(cls, cfg: "Config") -> "Rewriting":
        from filterd.maps import open_table

        def tables(name: str) -> tuple[Lookup, ...]:
            return tuple(open_table(spec).lookup for spec in cfg.get(name))

        return cls(
            tables("canonical_maps"), tables("sender_canonical_maps"), tables("recipient_canonical_maps"),
            frozenset(cfg.get("canonical_classes")), tables("virtual_alias_maps"),
            cfg.get("virtual_alias_recursion_limit"), cfg.get("virtual_alias_expansion_limit"),
            tables("relocated_maps"), tuple(cfg.get("masquerade_domains")),
            frozenset(cfg.get("masquerade_exceptions")), frozenset(cfg.get("masquerade_classes")),
            cfg.get("recipient_delimiter"), tuple(cfg.get("mydestination")),
            cfg.get("always_add_missing_headers"))

    def sender(self, address: str, header: bool = False) -> str:
        cls = "header_sender" if header else "envelope_sender"
        if cls in self.canonical_classes:
            address = canonical(address, self.sender_canonical_maps, self.recipient_delimiter, self.local_domains)
            address = canonical(address, self.canonical_maps, self.recipient_delimiter, self.local_domains)
        if cls in self.masquerade_classes:
            address = masquerade(address, self.masquerade_domains, self.masquerade_exceptions)
        return address

    def recipient(self, address: str, header: bool = False) -> str:
        cls = "header_recipient" if header else "envelope_recipient"
        if cls in self.canonical_classes:
            address = canonical(address, self.recipient_canonical_maps, self.recipient_delimiter,
                                self.local_domains)
            address = canonical(address, self.canonical_maps, self.recipient_delimiter, self.local_domains)
        if cls in self.masquerade_classes:
            address = masquerade(address, self.masquerade_domains, self.masquerade_exceptions)
        return address


@dataclass(frozen=True)
class Refusal:
    """A recipient cleanup will not accept, with the reply smtpd gives for it."""

    address: str
    code: int
    dsn: str
    text: str


@dataclass
class Cleaned:
    """The envelope and headers to write to the queue file."""

    sender: str
    recipients: list[Recipient]
    headers: list[Header]
    refused: list[Refusal] = field(default_factory=list)


def rewrite_envelope(rw: Rewriting, sender: str, recipients: Sequence[Recipient]) -> Cleaned:
    """Steps 1 and 2: the rewritten sender and the final recipient list."""
    out: list[Recipient] = []
    seen: set[str] = set()
    refused: list[Refusal] = []
    new_sender = rw.sender(sender) if sender else ""
    for r in recipients:
        moved = relocated(r.address, rw.relocated_maps, rw.local_domains)
        if moved is not None:
            refused.append(Refusal(r.address, 550, "5.1.6", f"User has moved to {moved}"))
            continue
        rewritten = rw.recipient(r.address)
        try:
            targets = expand_virtual(rewritten, rw.virtual_alias_maps, rw.recipient_delimiter, rw.local_domains,
                                     rw.virtual_alias_recursion_limit, rw.virtual_alias_expansion_limit)
        except AliasLimitError as exc:
            refused.append(Refusal(r.address, 550, "5.4.6", str(exc)))
            continue
        for target in targets:
            if target.lower() in seen:
                continue
            seen.add(target.lower())
            out.append(Recipient(target, r.orcpt or (r.address if target != r.address else ""), r.notify))
    return Cleaned(new_sender, out, [], refused)


def rewrite_headers(rw: Rewriting, headers: Sequence[Header]) -> list[Header]:
    """Step 3a: canonical and masquerade rewriting of header addresses."""
    out: list[Header] = []
    for name, value in headers:
        low = name.lower()
        if low in SENDER_HEADERS:
            value = rewrite_header_addresses(value, lambda a: rw.sender(a, header=True))
        elif low in RECIPIENT_HEADERS:
            value = rewrite_header_addresses(value, lambda a: rw.recipient(a, header=True))
        out.append((name, value))
    return out


def received_header(qid: str, myhostname: str, client_name: str, client_address: str, helo: str,
                    protocol: str, recipients: Sequence[Recipient], now: float) -> Header:
    """``Received: from helo (name [addr]) by host (filterd) with ESMTP id QID for <rcpt>; date``
    (the ``for`` clause only for a single recipient, as Postfix)."""
    address = f"IPv6:{client_address}" if ":" in client_address else client_address
    helo, client_name = printable_ascii(helo), printable_ascii(client_name)
    value = (f"from {helo or client_name} ({client_name} [{address}])\r\n"
             f"\tby {myhostname} (filterd) with {protocol} id {qid}")
    if len(recipients) == 1:
        value += f"\r\n\tfor <{printable_ascii(recipients[0].address)}>"
    return ("Received", f" {value}; {email.utils.formatdate(now, localtime=True)}")


def missing_headers(headers: Sequence[Header], sender: str, qid: str, myhostname: str, now: float,
                    local_client: bool, always: bool) -> list[Header]:
    """Step 3b: the headers Postfix would add (Message-Id, Date, From, To)."""
    if not (local_client or always):
        return []
    have = {name.lower() for name, _ in headers}
    added: list[Header] = []
    if "message-id" not in have:
        added.append(("Message-Id", f" <{time.strftime('%Y%m%d%H%M%S', time.gmtime(now))}.{qid}@{myhostname}>"))
    if "date" not in have:
        added.append(("Date", f" {email.utils.formatdate(now, localtime=True)}"))
    if "from" not in have:
        added.append(("From", f" {sender}" if sender else f" MAILER-DAEMON@{myhostname}"))
    if not have & {"to", "cc", "bcc"}:
        added.append(("To", " undisclosed-recipients:;"))
    return added


def cleanup(rw: Rewriting, sender: str, recipients: Sequence[Recipient], headers: Sequence[Header], *,
            qid: str, myhostname: str, client_name: str, client_address: str, helo: str,
            protocol: str, now: float, local_client: bool) -> Cleaned:
    """All of the above for one message: rewritten envelope, Received on top, the
    rewritten headers, then the missing ones."""
    cleaned = rewrite_envelope(rw, sender, recipients)
    rewritten = rewrite_headers(rw, headers)
    cleaned.headers = ([received_header(qid, myhostname, client_name, client_address, helo, protocol,
                                        recipients, now)]
                       + rewritten
                       + missing_headers(rewritten, cleaned.sender, qid, myhostname, now, local_client,
                                         rw.always_add_missing_headers))
    return cleaned


def format_headers(headers: Sequence[Header]) -> bytes:
    """The header section as written to the queue file (CRLF line ends)."""
    return b"".join(f"{name}:{value}\r\n".encode("utf-8", "surrogateescape") for name, value in headers)
