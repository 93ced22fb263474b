"""The Sendmail/Postfix milter protocol, version 6, as plain objects without I/O.

Every packet, both ways, is a 4-byte big-endian length, then a one-byte command, then
``length - 1`` bytes of data; strings inside are NUL-terminated. The MTA opens with
SMFIC_OPTNEG (its version, the actions it allows, the protocol steps it can leave out),
the milter answers with the subset it wants, and from then on the MTA sends one command
per SMTP event (macros first, in an SMFIC_MACRO packet naming the command they belong
to) and waits for the milter's reply, except for the steps the milter negotiated
``SMFIP_NR_*`` (no reply) for. Constants are those of libmilter's ``mfdef.h``, which
Postfix's ``src/milter/milter8.c`` repeats.

This module turns bytes into :class:`Command` objects (:class:`FrameDecoder`, with a
length limit checked before anything is buffered) and replies into bytes (the
``encode_*`` functions). Anything malformed becomes a :class:`ProtocolError` naming
what was wrong; the caller ends that connection.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from filterd.reply import Reply
from filterd.text import printable_ascii

# -- commands, MTA to milter (SMFIC_*) ------------------------------------------------
SMFIC_ABORT = b"A"
SMFIC_BODY = b"B"
SMFIC_CONNECT = b"C"
SMFIC_MACRO = b"D"
SMFIC_BODYEOB = b"E"
SMFIC_HELO = b"H"
SMFIC_QUIT_NC = b"K"
SMFIC_HEADER = b"L"
SMFIC_MAIL = b"M"
SMFIC_EOH = b"N"
SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
SMFIC_RCPT = b"R"
SMFIC_DATA = b"T"
SMFIC_UNKNOWN = b"U"

# -- replies and actions, milter to MTA (SMFIR_*) ---------------------------------------
SMFIR_ADDRCPT = b"+"
SMFIR_DELRCPT = b"-"
SMFIR_ACCEPT = b"a"
SMFIR_CONTINUE = b"c"
SMFIR_DISCARD = b"d"
SMFIR_ADDHEADER = b"h"
SMFIR_INSHEADER = b"i"
SMFIR_CHGHEADER = b"m"
SMFIR_PROGRESS = b"p"
SMFIR_QUARANTINE = b"q"
SMFIR_REJECT = b"r"
SMFIR_TEMPFAIL = b"t"
SMFIR_REPLYCODE = b"y"

# -- actions the milter may ask for (SMFIF_*) --------------------------------------------
SMFIF_ADDHDRS = 0x01
SMFIF_CHGBODY = 0x02
SMFIF_ADDRCPT = 0x04
SMFIF_DELRCPT = 0x08
SMFIF_CHGHDRS = 0x10
SMFIF_QUARANTINE = 0x20
SMFIF_CHGFROM = 0x40
SMFIF_ADDRCPT_PAR = 0x80
SMFIF_SETSYMLIST = 0x100

# -- protocol steps left out (SMFIP_NO*) and steps not answered (SMFIP_NR_*) ------------
SMFIP_NOCONNECT = 0x1
SMFIP_NOHELO = 0x2
SMFIP_NOMAIL = 0x4
SMFIP_NORCPT = 0x8
SMFIP_NOBODY = 0x10
SMFIP_NOHDRS = 0x20
SMFIP_NOEOH = 0x40
SMFIP_NR_HDR = 0x80
SMFIP_NOUNKNOWN = 0x100
SMFIP_NODATA = 0x200
SMFIP_SKIP = 0x400
SMFIP_RCPT_REJ = 0x800
SMFIP_NR_CONN = 0x1000
SMFIP_NR_HELO = 0x2000
SMFIP_NR_MAIL = 0x4000
SMFIP_NR_RCPT = 0x8000
SMFIP_NR_DATA = 0x10000
SMFIP_NR_UNKN = 0x20000
SMFIP_NR_EOH = 0x40000
SMFIP_NR_BODY = 0x80000
SMFIP_HDR_LEADSPC = 0x100000

#: The protocol version spoken; an MTA offering less is refused (the no-reply bits,
#: which save a round trip per header and body chunk, exist only from version 6).
VERSION = 6
#: Longest body chunk an MTA sends (MILTER_CHUNK_SIZE in milter8.c, 64 KB in libmilter).
MAX_BODY_CHUNK = 65535
#: Default longest packet accepted. Postfix sends a whole logical header in one packet,
#: up to its ``header_size_limit`` (100 KB by default); nothing else comes near it.
DEFAULT_FRAME_LIMIT = 256 * 1024

#: For each command, the step bit that leaves it out and the bit that makes it reply-less.
STEP_BITS: dict[bytes, tuple[int, int]] = {
    SMFIC_CONNECT: (SMFIP_NOCONNECT, SMFIP_NR_CONN),
    SMFIC_HELO: (SMFIP_NOHELO, SMFIP_NR_HELO),
    SMFIC_MAIL: (SMFIP_NOMAIL, SMFIP_NR_MAIL),
    SMFIC_RCPT: (SMFIP_NORCPT, SMFIP_NR_RCPT),
    SMFIC_DATA: (SMFIP_NODATA, SMFIP_NR_DATA),
    SMFIC_HEADER: (SMFIP_NOHDRS, SMFIP_NR_HDR),
    SMFIC_EOH: (SMFIP_NOEOH, SMFIP_NR_EOH),
    SMFIC_BODY: (SMFIP_NOBODY, SMFIP_NR_BODY),
    SMFIC_UNKNOWN: (SMFIP_NOUNKNOWN, SMFIP_NR_UNKN),
}

_LENGTH = struct.Struct(">I")
_THREE = struct.Struct(">III")
_PORT = struct.Struct(">H")


class ProtocolError(Exception):
    """Input that is not the milter protocol; the connection it came on must end."""


# -- commands ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OptNeg:
    """SMFIC_OPTNEG: the MTA's offer (or, encoded, the milter's answer)."""

    version: int
    actions: int
    protocol: int


@dataclass(frozen=True, slots=True)
class Macros:
    """SMFIC_MACRO: macro values for the command ``for_command`` that follows."""

    for_command: bytes
    values: dict[str, str]


@dataclass(frozen=True, slots=True)
class Connect:
    """SMFIC_CONNECT: the client's name and address (family ``U`` means unknown)."""

    hostname: str
    family: str
    port: int
    address: str


@dataclass(frozen=True, slots=True)
class Helo:
    name: str


@dataclass(frozen=True, slots=True)
class Mail:
    """SMFIC_MAIL: the address as written (``<a@b>``), then the ESMTP parameters."""

    args: list[str]


@dataclass(frozen=True, slots=True)
class Rcpt:
    args: list[str]


@dataclass(frozen=True, slots=True)
class Header:
    """SMFIC_HEADER: one logical header, bytes unchanged (8-bit headers survive)."""

    name: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Body:
    chunk: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """SMFIC_BODYEOB, which may carry a last body chunk."""

    chunk: bytes = b""


@dataclass(frozen=True, slots=True)
class Unknown:
    """SMFIC_UNKNOWN: an SMTP command the MTA did not recognise, as the client sent it."""

    command: str


@dataclass(frozen=True, slots=True)
class Simple:
    """A command without data: SMFIC_DATA, SMFIC_EOH, SMFIC_ABORT, SMFIC_QUIT, SMFIC_QUIT_NC."""

    code: bytes


Command = OptNeg | Macros | Connect | Helo | Mail | Rcpt | Header | Body | EndOfMessage | Unknown | Simple

_NAMES = {
    SMFIC_ABORT: "ABORT", SMFIC_BODY: "BODY", SMFIC_CONNECT: "CONNECT", SMFIC_MACRO: "MACRO",
    SMFIC_BODYEOB: "BODYEOB", SMFIC_HELO: "HELO", SMFIC_QUIT_NC: "QUIT_NC", SMFIC_HEADER: "HEADER",
    SMFIC_MAIL: "MAIL", SMFIC_EOH: "EOH", SMFIC_OPTNEG: "OPTNEG", SMFIC_QUIT: "QUIT",
    SMFIC_RCPT: "RCPT", SMFIC_DATA: "DATA", SMFIC_UNKNOWN: "UNKNOWN",
}


def command_name(code: bytes) -> str:
    """``SMFIC_RCPT`` for ``b"R"``: how commands are named in log lines."""
    return "SMFIC_" + _NAMES.get(code, f"0x{code.hex()}")


def _text(data: bytes) -> str:
    """A protocol string as text: UTF-8 (SMTPUTF8), invalid bytes shown as U+FFFD."""
    return data.decode("utf-8", "replace")


def _strings(data: bytes, what: str) -> list[bytes]:
    """The NUL-terminated strings that make up ``data``; all of it must be strings."""
    if not data.endswith(b"\0"):
        raise ProtocolError(f"{what}: data does not end with a NUL byte")
    return data[:-1].split(b"\0")


def parse_command(code: bytes, data: bytes) -> Command:
    """One packet's command and data as a :class:`Command`; raises ProtocolError."""
    if code == SMFIC_BODY:
        if len(data) > MAX_BODY_CHUNK:
            raise ProtocolError(f"SMFIC_BODY: chunk of {len(data)} bytes (at most {MAX_BODY_CHUNK})")
        return Body(data)
    if code == SMFIC_HEADER:
        parts = _strings(data, "SMFIC_HEADER")
        if len(parts) != 2:
            raise ProtocolError(f"SMFIC_HEADER: expected a name and a value, got {len(parts)} strings")
        if not parts[0]:
            raise ProtocolError("SMFIC_HEADER: empty header name")
        return Header(parts[0], parts[1])
    if code == SMFIC_MACRO:
        if not data:
            raise ProtocolError("SMFIC_MACRO: no command byte")
        values: dict[str, str] = {}
        if len(data) > 1:
            parts = _strings(data[1:], "SMFIC_MACRO")
            if len(parts) % 2:
                raise ProtocolError("SMFIC_MACRO: a macro name without a value")
            for i in range(0, len(parts), 2):
                values[_macro_name(parts[i])] = _text(parts[i + 1])
        return Macros(data[:1], values)
    if code == SMFIC_RCPT or code == SMFIC_MAIL:
        args = [_text(a) for a in _strings(data, command_name(code))]
        if not args[0]:
            raise ProtocolError(f"{command_name(code)}: empty address")
        return Rcpt(args) if code == SMFIC_RCPT else Mail(args)
    if code in (SMFIC_DATA, SMFIC_EOH, SMFIC_ABORT, SMFIC_QUIT, SMFIC_QUIT_NC):
        if data:
            raise ProtocolError(f"{command_name(code)}: unexpected {len(data)} bytes of data")
        return Simple(code)
    if code == SMFIC_BODYEOB:
        return EndOfMessage(data)
    if code == SMFIC_CONNECT:
        return _parse_connect(data)
    if code == SMFIC_HELO:
        parts = _strings(data, "SMFIC_HELO")
        if len(parts) != 1:
            raise ProtocolError("SMFIC_HELO: more than one string")
        return Helo(_text(parts[0]))
    if code == SMFIC_OPTNEG:
        if len(data) < _THREE.size:
            raise ProtocolError(f"SMFIC_OPTNEG: {len(data)} bytes, expected at least 12")
        return OptNeg(*_THREE.unpack_from(data))
    if code == SMFIC_UNKNOWN:
        return Unknown(_text(_strings(data, "SMFIC_UNKNOWN")[0]))
    raise ProtocolError(f"unknown command 0x{code.hex()}")


def _macro_name(raw: bytes) -> str:
    """Macro names as Postfix uses them: ``i``, ``{auth_authen}`` (libmilter accepts either
    ``{x}`` or a bare long name; one spelling is kept)."""
    name = raw.decode("ascii", "replace")
    if len(name) > 1 and not name.startswith("{"):
        name = "{" + name + "}"
    return name


def _parse_connect(data: bytes) -> Connect:
    host, nul, rest = data.partition(b"\0")
    if not nul or not rest:
        raise ProtocolError("SMFIC_CONNECT: no host name or address family")
    family = chr(rest[0])
    if family == "U":
        return Connect(_text(host), family, 0, "")
    if family not in "46L":
        raise ProtocolError(f"SMFIC_CONNECT: unknown address family {family!r}")
    if len(rest) < 3 + 1:
        raise ProtocolError("SMFIC_CONNECT: truncated port or address")
    (port,) = _PORT.unpack_from(rest, 1)
    address = _strings(rest[3:], "SMFIC_CONNECT")
    if len(address) != 1:
        raise ProtocolError("SMFIC_CONNECT: data after the address")
    return Connect(_text(host), family, port, _text(address[0]))


# -- framing ----------------------------------------------------------------------------
class FrameDecoder:
    """Incremental packet reader: ``feed(bytes)`` returns the commands completed.

    The length is checked the moment its four bytes are in: a packet over ``limit``
    (or of length 0) is an error before any of its data is held, so a connection never
    holds more than ``limit`` bytes plus one read. After an error the decoder refuses
    everything (the byte stream cannot be trusted again).
    """

    def __init__(self, limit: int = DEFAULT_FRAME_LIMIT):
        self.limit = limit
        self._buf = bytearray()
        self._failed = False

    @property
    def pending(self) -> int:
        """Bytes of an unfinished packet held (non-zero when the MTA hangs up mid-packet)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Command | ProtocolError]:
        """Commands completed by ``data``; a bad packet ends the list with its error.

        The commands before the bad packet are returned with it: the caller answers
        them in order, then ends the connection at the error, as it would had they come
        in separate reads.
        """
        if self._failed:
            return [ProtocolError("input after a protocol error")]
        buf = self._buf
        buf += data
        out: list[Command | ProtocolError] = []
        pos = 0
        end = len(buf)
        try:
            while end - pos >= 4:
                (length,) = _LENGTH.unpack_from(buf, pos)
                if length == 0:
                    raise ProtocolError("packet of length 0 (no command byte)")
                if length > self.limit:
                    raise ProtocolError(f"packet length {length} exceeds the limit of {self.limit} bytes")
                if end - pos - 4 < length:
                    break
                start = pos + 4
                out.append(parse_command(bytes(buf[start:start + 1]), bytes(buf[start + 1:start + length])))
                pos = start + length
        except ProtocolError as exc:
            self._failed = True
            buf.clear()
            out.append(exc)
            return out
        if pos:
            del buf[:pos]
        return out


def frame(code: bytes, data: bytes = b"") -> bytes:
    """One packet: length, command byte, data."""
    return _LENGTH.pack(len(data) + 1) + code + data


# -- negotiation ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Agreement:
    """What both sides agreed on: the actions the milter may use, the protocol bits."""

    version: int
    actions: int
    protocol: int

    def replies(self, code: bytes) -> bool:
        """Whether the milter must answer command ``code`` (no SMFIP_NR_* bit for it)."""
        bits = STEP_BITS.get(code)
        return bits is None or not self.protocol & bits[1]

    def may(self, action: int) -> bool:
        return bool(self.actions & action)


@dataclass(frozen=True, slots=True)
class Wants:
    """The steps and actions filterd needs for its configuration.

    ``steps`` are the commands to receive; ``answers`` the subset whose reply matters
    (a restriction list to run); every other received step is asked reply-less.
    """

    steps: frozenset[bytes]
    answers: frozenset[bytes]
    actions: int
    leading_space: bool = True


def negotiate(offer: OptNeg, wants: Wants) -> tuple[Agreement, bytes]:
    """The milter's answer to the MTA's SMFIC_OPTNEG, and the agreement it makes.

    Only bits the MTA offered are asked for: an MTA refuses a milter that asks for more.
    A step the MTA cannot leave out is received anyway (and answered if it cannot be
    made reply-less); an action it does not allow is left out of the agreement, and the
    caller does without it. Raises ProtocolError for a version below 6.
    """
    if offer.version < VERSION:
        raise ProtocolError(f"unsupported milter protocol version {offer.version} (need {VERSION})")
    protocol = 0
    for code, (no_bit, nr_bit) in STEP_BITS.items():
        if code not in wants.steps:
            protocol |= no_bit
        if code not in wants.answers:
            protocol |= nr_bit
    if wants.leading_space:
        protocol |= SMFIP_HDR_LEADSPC
    protocol &= offer.protocol
    actions = wants.actions & offer.actions
    agreement = Agreement(VERSION, actions, protocol)
    return agreement, frame(SMFIC_OPTNEG, _THREE.pack(VERSION, actions, protocol))


# -- replies ----------------------------------------------------------------------------
CONTINUE = frame(SMFIR_CONTINUE)
DISCARD = frame(SMFIR_DISCARD)

#: Longest reply line text before it is wrapped onto the next line: RFC 5321 allows 512
#: octets per reply line, code and enhanced status included.
REPLY_LINE = 480


def _safe(text: str) -> str:
    """Reply text: printable ASCII, as every other reply filterd sends (Postfix passes
    it on to an SMTP client), and ``%`` doubled (Sendmail reads the reply as a format
    string; Postfix turns ``%%`` back into ``%`` and drops a single one)."""
    return printable_ascii(text).replace("%", "%%")


def reply_lines(reply: Reply) -> list[str]:
    """The reply's text split at newlines and wrapped at word boundaries to fit a line."""
    lines: list[str] = []
    for raw in reply.text.split("\n"):
        line = raw.strip("\r")
        while len(line) > REPLY_LINE:
            cut = line.rfind(" ", 0, REPLY_LINE)
            if cut <= 0:
                cut = REPLY_LINE
            lines.append(line[:cut])
            line = line[cut:].lstrip(" ")
        lines.append(line)
    return lines


def encode_reply(reply: Reply) -> bytes:
    """SMFIR_REPLYCODE: ``550 5.7.1 text``, multi-line (``550-5.7.1 ...``) where needed.

    Postfix requires a 4xx/5xx code and an enhanced status code of the same class; both
    are forced here, so a bad reply from a table cannot make Postfix drop the milter.
    """
    code = reply.code if 400 <= reply.code < 600 else 451
    dsn = reply.dsn if reply.dsn[:1] == str(code)[0] else f"{str(code)[0]}.0.0"
    lines = [_safe(line) for line in reply_lines(reply)]
    text = "\r\n".join(f"{code}{'-' if i < len(lines) - 1 else ' '}{dsn} {line}".rstrip()
                       for i, line in enumerate(lines))
    return frame(SMFIR_REPLYCODE, text.encode("utf-8", "replace") + b"\0")


def _header_data(name: str, value: str) -> bytes:
    return name.encode("ascii", "replace") + b"\0" + value.encode("utf-8", "surrogateescape") + b"\0"


def encode_addheader(name: str, value: str) -> bytes:
    """SMFIR_ADDHEADER: a new header at the end of the header section."""
    return frame(SMFIR_ADDHEADER, _header_data(name, value))


def encode_insheader(index: int, name: str, value: str) -> bytes:
    """SMFIR_INSHEADER: a new header at position ``index`` (0 is the top)."""
    return frame(SMFIR_INSHEADER, _LENGTH.pack(index) + _header_data(name, value))


def encode_chgheader(index: int, name: str, value: str) -> bytes:
    """SMFIR_CHGHEADER: replace the ``index``-th (from 1) header called ``name``; an
    empty value deletes it."""
    return frame(SMFIR_CHGHEADER, _LENGTH.pack(index) + _header_data(name, value))


def encode_quarantine(reason: str) -> bytes:
    """SMFIR_QUARANTINE: Postfix puts the message in its hold queue."""
    return frame(SMFIR_QUARANTINE, printable_ascii(reason).encode("utf-8", "replace") + b"\0")


def encode_addrcpt(address: str) -> bytes:
    return frame(SMFIR_ADDRCPT, f"<{address}>".encode("utf-8", "replace") + b"\0")


def encode_delrcpt(address: str) -> bytes:
    return frame(SMFIR_DELRCPT, f"<{address}>".encode("utf-8", "replace") + b"\0")


# -- the MTA side, for tests -----------------------------------------------------------------
def encode_command(cmd: Command) -> bytes:
    """The packet an MTA sends for ``cmd`` (what Postfix's milter8.c writes)."""
    if isinstance(cmd, OptNeg):
        return frame(SMFIC_OPTNEG, _THREE.pack(cmd.version, cmd.actions, cmd.protocol))
    if isinstance(cmd, Macros):
        data = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in cmd.values.items())
        return frame(SMFIC_MACRO, cmd.for_command + data)
    if isinstance(cmd, Connect):
        data = cmd.hostname.encode() + b"\0" + cmd.family.encode()
        if cmd.family != "U":
            data += _PORT.pack(cmd.port) + cmd.address.encode() + b"\0"
        return frame(SMFIC_CONNECT, data)
    if isinstance(cmd, Helo):
        return frame(SMFIC_HELO, cmd.name.encode() + b"\0")
    if isinstance(cmd, (Mail, Rcpt)):
        code = SMFIC_MAIL if isinstance(cmd, Mail) else SMFIC_RCPT
        return frame(code, b"".join(a.encode() + b"\0" for a in cmd.args))
    if isinstance(cmd, Header):
        return frame(SMFIC_HEADER, cmd.name + b"\0" + cmd.value + b"\0")
    if isinstance(cmd, Body):
        return frame(SMFIC_BODY, cmd.chunk)
    if isinstance(cmd, EndOfMessage):
        return frame(SMFIC_BODYEOB, cmd.chunk)
    if isinstance(cmd, Unknown):
        return frame(SMFIC_UNKNOWN, cmd.command.encode() + b"\0")
    return frame(cmd.code)


@dataclass(frozen=True, slots=True)
class Response:
    """One packet from the milter, as an MTA reads it (tests)."""

    code: bytes
    data: bytes


def decode_responses(data: bytes) -> tuple[list[Response], bytes]:
    """Complete milter packets in ``data`` and the unfinished rest (MTA side)."""
    out: list[Response] = []
    pos = 0
    while len(data) - pos >= 4:
        (length,) = _LENGTH.unpack_from(data, pos)
        if len(data) - pos - 4 < length or length == 0:
            break
        out.append(Response(data[pos + 4:pos + 5], data[pos + 5:pos + 4 + length]))
        pos += 4 + length
    return out, data[pos:]
