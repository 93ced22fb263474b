"""The queue file: one message, its envelope and its delivery progress, in typed records.

Postfix's lesson (``src/global/record.c``, ``rec_type.h``): a queue file is a sequence
of typed records, it is complete only when it ends with an end record, and a delivered
recipient is marked by overwriting the type byte of its record in place, so progress
never rewrites the message. filterd's format follows that idea with a check sum per
record, so that a torn or damaged file is told apart from a good one without trusting
its lengths.

The format (version 1), all integers big-endian::

    file    = MAGIC record*
    MAGIC   = b"FQF1"
    record  = type:1 byte | length:u32 | crc:u32 | data:length bytes

``crc`` is the CRC-32 of the four length bytes followed by the data. It does *not*
cover the type byte: that byte is the one flipped in place, and the set of valid type
bytes is small enough to check on its own.

Record types, in the order the writer puts them:

====  ==========================================================================
T     arrival time, ASCII decimal seconds since the epoch (``1733466000.123456``)
S     envelope sender, UTF-8 (surrogate escapes for raw 8-bit bytes); empty = ``<>``
A     one attribute, ``name=value`` (client name and address, helo, protocol,
      message-id, ...): whatever later stages and the logs need to know
R     a recipient still to deliver: ``address NUL original-recipient NUL notify``
D     the same recipient, done (delivered, or failed with its bounce queued): the
      ``R`` byte flipped to ``D`` with one pwrite and an fsync
W     a delay warning is still due; flipped to ``w`` once it has been sent
M     up to CONTENT_CHUNK bytes of the message (RFC 5322 text, CRLF or LF as received)
E     end: content offset (u64) and content size (u64); always the last 25 bytes
====  ==========================================================================

Envelope records (T, S, A, R/D, W/w) all come before the first M; T and S exactly once.
The E record says where the content starts, so a reader checks the end of the file
and the envelope without reading the message body; reading the content checks every
M record and that they end exactly at E.

A file that ends anywhere but after its E record is *incomplete*; a file whose bytes
disagree with their check sums, types or offsets is *corrupt*. Both raise
:class:`QueueFileError`; the queue decides what to do (discard or move to corrupt/).
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Sequence

MAGIC = b"FQF1"
HEADER = struct.Struct(">cII")  # type, length, crc
END = struct.Struct(">QQ")  # content offset, content size
END_RECORD_SIZE = HEADER.size + END.size
CONTENT_CHUNK = 65536
"""Largest M record the writer makes; the reader refuses larger ones."""
MAX_ENVELOPE_RECORD = 65536
"""Largest envelope record accepted: a corrupt length must not make the reader
allocate gigabytes."""

REC_TIME = b"T"
REC_SENDER = b"S"
REC_ATTR = b"A"
REC_RCPT = b"R"
REC_DONE = b"D"
REC_WARN = b"W"
REC_WARNED = b"w"
REC_CONTENT = b"M"
REC_END = b"E"
_ENVELOPE_TYPES = {REC_TIME, REC_SENDER, REC_ATTR, REC_RCPT, REC_DONE, REC_WARN, REC_WARNED}

_ENCODING = "utf-8"
_ERRORS = "surrogateescape"

ENVID_ATTR = "envelope_id"
"""Message attribute holding the DSN ENVID as given (xtext decoded): Postfix's name."""
RET_ATTR = "ret_flags"
"""Message attribute holding the DSN RET value, ``FULL`` or ``HDRS`` (Postfix's name)."""
ENCODING_ATTR = "encoding"
"""Message attribute: ``8bit`` or ``7bit`` as the client declared (Postfix's name);
when absent the content itself is looked at."""
SMTPUTF8_ATTR = "smtputf8"
"""Message attribute: ``yes`` when the client asked for SMTPUTF8."""


class QueueFileError(ValueError):
    """The file is not a usable queue file; the text says what is wrong and where."""


class IncompleteQueueFile(QueueFileError):
    """The file stops before its end record: the writer did not finish."""


class CorruptQueueFile(QueueFileError):
    """The file's bytes contradict themselves (check sum, type, offsets)."""


@dataclass
class Recipient:
    """One envelope recipient and where its status byte is in the file."""

    address: str
    orcpt: str = ""
    """The original recipient (DSN ORCPT, or the address before rewriting); "" = same."""
    notify: str = ""
    """DSN NOTIFY (``SUCCESS,FAILURE,DELAY`` / ``NEVER``); "" = not given."""
    offset: int = -1
    """Offset of this recipient's type byte; -1 until written or read."""
    done: bool = False


@dataclass
class Envelope:
    """Everything in a queue file except the message content."""

    arrival: float
    sender: str
    recipients: list[Recipient]
    attributes: dict[str, str] = field(default_factory=dict)
    warned: bool = False
    warn_offset: int = -1
    content_offset: int = 0
    content_size: int = 0

    @property
    def pending(self) -> list[Recipient]:
        """Recipients not yet done."""
        return [r for r in self.recipients if not r.done]


def _record(rtype: bytes, data: bytes) -> bytes:
    length = struct.pack(">I", len(data))
    return rtype + length + struct.pack(">I", zlib.crc32(data, zlib.crc32(length))) + data


def _text(value: str, what: str) -> bytes:
    raw = value.encode(_ENCODING, _ERRORS)
    if b"\0" in raw:
        raise ValueError(f"{what} contains a NUL byte")
    return raw


def _recipient_data(r: Recipient) -> bytes:
    return b"\0".join((_text(r.address, "recipient"), _text(r.orcpt, "original recipient"),
                       _text(r.notify, "notify")))


class QueueFileWriter:
    """Writes one queue file on an open descriptor, in buffered writes.

    The order is envelope, content, finish. finish() writes the end record and fsyncs
    the file; fsyncing the directory entry is the queue's job (it knows the directory).
    Blocking: run it off the event loop.
    """

    def __init__(self, fd: int):
        self.fd = fd
        self.offset = 0
        self._buf = bytearray(MAGIC)
        self._content = bytearray()
        self._content_offset = -1
        self._content_size = 0

    def envelope(self, arrival: float, sender: str, recipients: Sequence[Recipient],
                 attributes: Mapping[str, str] | None = None) -> None:
        """Write the envelope records; sets each recipient's ``offset``."""
        if self._content_offset >= 0 or len(self._buf) != len(MAGIC) or self.offset:
            raise RuntimeError("the envelope is written once, first")
        if not recipients:
            raise ValueError("a queue file needs at least one recipient")
        out = self._buf
        out += _record(REC_TIME, f"{arrival:.6f}".encode())
        out += _record(REC_SENDER, _text(sender, "sender"))
        for name, value in (attributes or {}).items():
            if "=" in name or not name:
                raise ValueError(f"bad attribute name {name!r}")
            data = _text(f"{name}={value}", "attribute")
            if len(data) > MAX_ENVELOPE_RECORD:
                raise ValueError(f"attribute {name} is longer than {MAX_ENVELOPE_RECORD} bytes")
            out += _record(REC_ATTR, data)
        for r in recipients:
            data = _recipient_data(r)
            if len(data) > MAX_ENVELOPE_RECORD:
                raise ValueError(f"recipient {r.address[:60]!r}... is too long")
            r.offset = len(out)
            out += _record(REC_DONE if r.done else REC_RCPT, data)
        out += _record(REC_WARN, b"")
        self._content_offset = len(out)

    def content(self, chunk: bytes) -> None:
        """Append message bytes; written out in records of CONTENT_CHUNK bytes."""
        if self._content_offset < 0:
            raise RuntimeError("write the envelope before the content")
        self._content += chunk
        self._content_size += len(chunk)
        while len(self._content) >= CONTENT_CHUNK:
            self._buf += _record(REC_CONTENT, bytes(self._content[:CONTENT_CHUNK]))
            del self._content[:CONTENT_CHUNK]
            self._flush()

    def finish(self, sync: bool = True) -> int:
        """Write the rest and the end record, fsync the file (unless the caller will,
        after changing its mode); returns the content size."""
        if self._content_offset < 0:
            raise RuntimeError("write the envelope before finishing")
        if self._content:
            self._buf += _record(REC_CONTENT, bytes(self._content))
            self._content.clear()
        self._buf += _record(REC_END, END.pack(self._content_offset, self._content_size))
        self._flush()
        if sync:
            os.fsync(self.fd)
        return self._content_size

    def _flush(self) -> None:
        with memoryview(self._buf) as whole:
            view = whole
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
            view.release()
        self.offset += len(self._buf)
        self._buf.clear()


def _read_exact(fd: int, offset: int, size: int, what: str) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise IncompleteQueueFile(f"file ends inside {what} at offset {offset}")
    return data


def _read_end(fd: int, file_size: int) -> tuple[int, int, int]:
    """(content offset, content size, end record offset) from the last 25 bytes."""
    end_at = file_size - END_RECORD_SIZE
    if end_at < len(MAGIC):
        raise IncompleteQueueFile("file too short to hold an end record")
    raw = _read_exact(fd, end_at, END_RECORD_SIZE, "the end record")
    rtype, length, crc = HEADER.unpack_from(raw)
    data = raw[HEADER.size:]
    if rtype != REC_END or length != END.size or zlib.crc32(raw[1:5] + data) != crc:
        raise IncompleteQueueFile("no end record: the file was not completely written")
    content_offset, content_size = END.unpack(data)
    if not len(MAGIC) <= content_offset <= end_at:
        raise CorruptQueueFile(f"end record points outside the file ({content_offset})")
    return content_offset, content_size, end_at


def read_envelope(fd: int) -> Envelope:
    """Check the end record and parse the envelope; the content is not read."""
    file_size = os.fstat(fd).st_size
    content_offset, content_size, end_at = _read_end(fd, file_size)
    head = _read_exact(fd, 0, content_offset, "the envelope")
    if head[:len(MAGIC)] != MAGIC:
        raise CorruptQueueFile("not a filterd queue file (bad magic)")
    arrival: float | None = None
    sender: str | None = None
    attributes: dict[str, str] = {}
    recipients: list[Recipient] = []
    warned, warn_offset = False, -1
    pos = len(MAGIC)
    while pos < content_offset:
        if pos + HEADER.size > content_offset:
            raise CorruptQueueFile(f"record header at {pos} crosses the content offset")
        rtype, length, crc = HEADER.unpack_from(head, pos)
        if rtype not in _ENVELOPE_TYPES:
            raise CorruptQueueFile(f"unexpected record type {rtype!r} at offset {pos}")
        if length > MAX_ENVELOPE_RECORD or pos + HEADER.size + length > content_offset:
            raise CorruptQueueFile(f"record at offset {pos} has a bad length {length}")
        start = pos + HEADER.size
        data = head[start:start + length]
        if zlib.crc32(data, zlib.crc32(head[pos + 1:pos + 5])) != crc:
            raise CorruptQueueFile(f"check sum mismatch in the record at offset {pos}")
        text = data.decode(_ENCODING, _ERRORS)
        if rtype == REC_TIME:
            try:
                arrival = float(text)
            except ValueError:
                raise CorruptQueueFile(f"bad arrival time {text[:40]!r}") from None
        elif rtype == REC_SENDER:
            sender = text
        elif rtype == REC_ATTR:
            name, sep, value = text.partition("=")
            if not sep:
                raise CorruptQueueFile(f"attribute without '=' at offset {pos}")
            attributes[name] = value
        elif rtype in (REC_RCPT, REC_DONE):
            parts = text.split("\0")
            if len(parts) != 3:
                raise CorruptQueueFile(f"bad recipient record at offset {pos}")
            recipients.append(Recipient(parts[0], parts[1], parts[2], pos, rtype == REC_DONE))
        else:
            warned, warn_offset = rtype == REC_WARNED, pos
        pos = start + length
    if arrival is None or sender is None or not recipients:
        raise CorruptQueueFile("envelope lacks its arrival time, sender or recipients")
    return Envelope(arrival, sender, recipients, attributes, warned, warn_offset,
                    content_offset, content_size)


def iter_content(fd: int, envelope: Envelope) -> Iterator[bytes]:
    """The message content in chunks, each record's check sum verified.

    Raises CorruptQueueFile when the records do not end exactly at the end record
    or do not add up to the size it declares.
    """
    file_size = os.fstat(fd).st_size
    end_at = file_size - END_RECORD_SIZE
    pos = envelope.content_offset
    total = 0
    while pos < end_at:
        raw = _read_exact(fd, pos, HEADER.size, "a content record header")
        rtype, length, crc = HEADER.unpack(raw)
        if rtype != REC_CONTENT or length > CONTENT_CHUNK or pos + HEADER.size + length > end_at:
            raise CorruptQueueFile(f"bad content record at offset {pos}")
        data = _read_exact(fd, pos + HEADER.size, length, "a content record")
        if zlib.crc32(data, zlib.crc32(raw[1:5])) != crc:
            raise CorruptQueueFile(f"check sum mismatch in the content record at offset {pos}")
        total += length
        yield data
        pos += HEADER.size + length
    if pos != end_at or total != envelope.content_size:
        raise CorruptQueueFile(f"content records hold {total} bytes, the end record says "
                               f"{envelope.content_size}")


def read_content(fd: int, envelope: Envelope) -> bytes:
    """The whole message content (for small messages and tools)."""
    return b"".join(iter_content(fd, envelope))


def _flip(fd: int, offset: int, expect: bytes, to: bytes) -> None:
    current = os.pread(fd, 1, offset)
    if current == to:
        return
    if current != expect:
        raise CorruptQueueFile(f"expected record type {expect!r} at offset {offset}, found {current!r}")
    if os.pwrite(fd, to, offset) != 1:
        raise OSError(f"short write flipping the record at offset {offset}")


def mark_done(fd: int, recipients: Iterable[Recipient]) -> None:
    """Flip each recipient's R byte to D in place.

    Not fsync'd, as Postfix's deliver_completed() does not: the byte is in the page
    cache at once, so a crash of filterd (even SIGKILL) never delivers these recipients
    again; only a power loss before the kernel writes it back can, and then they are
    delivered twice, never lost. Syncing here would cost every delivery a journal
    commit, which the receiving side's fsync before each 250 then waits behind.
    Already-done recipients are left as they are, so a repeat after a crash is harmless.
    """
    for r in recipients:
        if r.offset < 0:
            raise ValueError(f"recipient {r.address!r} has no file offset")
        _flip(fd, r.offset, REC_RCPT, REC_DONE)
        r.done = True


def mark_warned(fd: int, envelope: Envelope) -> None:
    """Record that the delay warning was sent (W -> w), fsync'd."""
    if envelope.warn_offset < 0 or envelope.warned:
        return
    _flip(fd, envelope.warn_offset, REC_WARN, REC_WARNED)
    os.fsync(fd)
    envelope.warned = True
