"""One received message into the queue: the header section cleanup(8) writes, then the file.

smtpd calls this at the end of DATA, after the restrictions and the content verdict, and
answers 250 only once :func:`write_message` has returned: the file is complete (end
record), fsync'd, and its directory entry fsync'd (:meth:`NewMessage.commit`). Any
failure removes the partial file and raises :class:`WriteError`; smtpd answers Postfix's
``451 4.3.0 Error: queue file write error``, so the client keeps the message.

The header section goes out as Postfix's cleanup writes it: PREPEND lines of the
restrictions on top, then the ``Received:`` header, then the message's own header
(addresses rewritten when canonical or masquerade tables are configured, otherwise byte
for byte), then the headers cleanup adds when missing. A message whose text starts with
a line that is no header field gets an empty line first, so that the header fields added
above it can never merge with its first line. The body is never changed.

Everything here blocks (file writes, fsync): smtpd runs it in a thread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from filterd.mta import cleanup
from filterd.mta.cleanup import Header, Rewriting
from filterd.mta.queue import INCOMING, NewMessage
from filterd.mta.queuefile import CONTENT_CHUNK, ENCODING_ATTR, Recipient

#: A header field's first line (RFC 5322 field name and colon) or a continuation line.
_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:|[ \t]")
_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")
_MESSAGE_ID = re.compile(rb"^Message-Id:[ \t]*(.*?)\r?$", re.M | re.I)


class WriteError(Exception):
    """The queue file could not be written; nothing of it is left in the queue."""


@dataclass
class Incoming:
    """What smtpd knows of one message when it is written."""

    sender: str
    recipients: list[Recipient]
    client_name: str
    client_address: str
    helo: str
    protocol: str
    local_client: bool
    arrival: float
    attributes: dict[str, str] = field(default_factory=dict)
    prepend: list[str] = field(default_factory=list)


@dataclass
class Written:
    qid: str
    size: int
    message_id: str


def split_header(data: bytes) -> tuple[bytes, bytes]:
    """(header section with its last line end, the rest): the header is the run of
    header-field and continuation lines at the start; the rest starts at the empty line
    or at the first line that is no header field."""
    pos = 0
    end = len(data)
    while pos < end:
        nl = data.find(b"\n", pos)
        line_end = end if nl < 0 else nl + 1
        if not _FIELD.match(data, pos) or (pos == 0 and data[0:1] in (b" ", b"\t")):
            break
        pos = line_end
    return data[:pos], data[pos:]


def parse_header(head: bytes) -> list[Header]:
    """The header section as cleanup's (name, value) list: the value is everything after
    the colon, its folding kept, without the final line end."""
    fields: list[tuple[str, list[str]]] = []
    for line in head.decode("utf-8", "surrogateescape").split("\n"):
        if not line:
            continue
        line = line.rstrip("\r")
        if line[0] in " \t" and fields:
            fields[-1][1].append(line)
            continue
        name, _, value = line.partition(":")
        fields.append((name.rstrip(" \t"), [value]))
    return [(name, "\r\n".join(parts)) for name, parts in fields]


def _needs_rewriting(rw: Rewriting) -> bool:
    """Header addresses change only with canonical or masquerade tables configured."""
    return bool(rw.canonical_maps or rw.sender_canonical_maps or rw.recipient_canonical_maps
                or rw.masquerade_domains)


def header_section(rw: Rewriting, msg: Incoming, head: bytes, qid: str, myhostname: str) -> bytes:
    """The header section written to the queue file (see the module text)."""
    received = cleanup.received_header(qid, myhostname, msg.client_name, msg.client_address, msg.helo,
                                       msg.protocol, msg.recipients, msg.arrival)
    top = [f"{line}\r\n" for line in msg.prepend]
    top.append(f"{received[0]}:{received[1]}\r\n")
    if _needs_rewriting(rw):
        own = cleanup.rewrite_headers(rw, parse_header(head))
        head = cleanup.format_headers(own)
    else:
        own = [(m.group(1).decode("ascii"), "") for m in _NAME.finditer(head)
               if m.start() == 0 or head[m.start() - 1:m.start()] == b"\n"]
    added = cleanup.missing_headers(own, msg.sender, qid, myhostname, msg.arrival, msg.local_client,
                                    rw.always_add_missing_headers)
    if head and not head.endswith(b"\n"):
        head += b"\r\n"
    return "".join(top).encode("utf-8", "surrogateescape") + head + cleanup.format_headers(added)


def write_message(new: NewMessage, rw: Rewriting, msg: Incoming, data: bytes, myhostname: str,
                  into: str = INCOMING) -> Written:
    """Write ``data`` (the message as it will be delivered, before cleanup's headers)
    with its envelope into ``new`` and commit it into queue ``into`` (``incoming``, or
    ``hold``); WriteError (file removed) on failure."""
    try:
        head, body = split_header(data)
        section = header_section(rw, msg, head, new.qid, myhostname)
        if not body.startswith((b"\r\n", b"\n")):
            body = b"\r\n" + body  # the header ends here, whatever the first line says
        m = _MESSAGE_ID.search(section)
        attributes = msg.attributes
        if ENCODING_ATTR not in attributes:
            # Undeclared (no BODY=): the encoding found in the content, as Postfix's cleanup
            # records it, so that the smtp client decides BODY=8BITMIME from the envelope
            # alone instead of reading a large message once more to look for 8-bit bytes.
            eight_bit = not (section.isascii() and body.isascii())
            attributes = {**attributes, ENCODING_ATTR: "8bit" if eight_bit else "7bit"}
        new.writer.envelope(msg.arrival, msg.sender, msg.recipients, attributes)
        new.writer.content(section)
        with memoryview(body) as view:
            for start in range(0, len(view), CONTENT_CHUNK):
                new.writer.content(bytes(view[start:start + CONTENT_CHUNK]))
        size = new.commit(into)
    except (OSError, ValueError) as exc:
        new.abort()
        raise WriteError(f"{new.qid}: queue file write error: {exc}") from exc
    message_id = m.group(1).decode("utf-8", "replace").strip() if m else ""
    return Written(new.qid, size, message_id)
