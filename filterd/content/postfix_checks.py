"""Postfix's built-in content inspection (header_checks(5)), applied as cleanup(8) does.

Administrators paste their ``header_checks``, ``mime_header_checks``,
``nested_header_checks`` and ``body_checks`` tables into filterd and expect the same
lines to match with the same effect. So this module replays what cleanup does rather
than what the man page summarises:

- The message is read as Postfix's ``mime_state`` machine reads it: records of at most
  ``line_length_limit`` bytes (longer lines arrive in pieces, each piece checked alone),
  primary headers, then MIME parts found by their boundaries, and the headers of
  attached ``message/rfc822`` messages. Nothing is decoded: rules match the encoded text.
- A header's lookup key is one logical header, ``Name: value`` exactly as received
  except white space before the colon, with each folding line break kept as ``\\n``
  (the continuation line keeps its leading white space), at most ``header_size_limit``
  bytes. Postfix regexp/pcre tables let ``.`` match that newline by default.
- Routing: MIME headers (Content-Type, Content-Transfer-Encoding, Content-Disposition,
  Content-ID, Content-Description, MIME-Version) anywhere, and every header of a
  multipart body part, go to ``mime_header_checks``; other headers of an attached
  message go to ``nested_header_checks``; other primary headers to ``header_checks``.
  Every other line (blank separators, preamble, boundaries, encoded content) goes to
  ``body_checks``, as long as it starts within ``body_checks_size_limit`` bytes of its
  body segment.
- Actions follow cleanup_message.c: REJECT and DISCARD stop all further checks, and so
  does REDIRECT (cleanup turns inspection off there, whatever the man page says about
  several REDIRECTs); PASS stops checks silently; HOLD counts once; FILTER: the last
  one wins; BCC accumulates; WARN/INFO only log; IGNORE/STRIP delete the line;
  PREPEND/REPLACE edit it; DUNNO/OK end the search for that line. Among several
  tables the first one that answers decides (Postfix's maps_find), even with DUNNO.

filterd passes message bodies on byte for byte and never rewrites them (see
:class:`~filterd.content.message.HeaderEdits`), so edits (IGNORE, STRIP, PREPEND,
REPLACE) take effect only on primary header fields. The same actions on a body line,
a MIME part header or a nested message header are logged and reported as symbols
("not applied") but leave the message unchanged: rewriting bodies would break DKIM
signatures and S/MIME, and hides what the sender sent from the quarantine.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from filterd.actions import Action, parse_action
from filterd.content.message import HeaderEdits, Message
from filterd.content.symbols import Symbol
from filterd.maps import LookupTable, MapTempError, open_table
from filterd.text import printable

log = logging.getLogger("filterd.content.postfix_checks")

#: Header names Postfix's header_opts table flags HDR_OPT_MIME (lower case).
MIME_HEADERS = frozenset(
    {
        "content-description", "content-disposition", "content-id",
        "content-transfer-encoding", "content-type", "mime-version",
    }
)

# Check classes: the parameter a table list comes from, also used in symbol names.
HEADER = "header_checks"
MIME_HEADER = "mime_header_checks"
NESTED_HEADER = "nested_header_checks"
BODY = "body_checks"

# mime_state header classes (MIME_HDR_PRIMARY, _MULTIPART, _NESTED) and the body state.
_PRIMARY, _MULTIPART, _NESTED, _BODY = range(4)
_CLASS_OF_STATE = {_PRIMARY: HEADER, _MULTIPART: MIME_HEADER, _NESTED: NESTED_HEADER}

#: A header label as Postfix's is_header() accepts it: printable ASCII but colon,
#: optional white space, then the colon. Group 1 is the name, the match ends before ':'.
_IS_HEADER = re.compile(rb"([!-9;-~]+)[ \t]*(?=:)")
_CT_MAIN = re.compile(rb"^:[ \t\r\n]*([!#-'*+.0-9A-Z^-~-]+)[ \t\r\n]*(?:/[ \t\r\n]*([!#-'*+.0-9A-Z^-~-]+))?", re.IGNORECASE)
_CT_BOUNDARY = re.compile(rb";[ \t\r\n]*boundary[ \t\r\n]*=[ \t\r\n]*(?:\"([^\"]*)\"|([^ \t\r\n;\"]+))", re.IGNORECASE)

# Default cleanup_stat_detail(CLEANUP_STAT_CONT) and (CLEANUP_STAT_DEFER) replies.
_REJECT_CODE, _REJECT_DSN, _REJECT_TEXT = 550, "5.7.1", "message content rejected"
_DEFER_CODE = 451


# -- configuration ----------------------------------------------------------------------

@dataclass(frozen=True)
class TableList:
    """One ``*_checks`` parameter: tables searched in order, the first answer wins."""

    tables: tuple[LookupTable, ...]

    def find(self, key: str) -> tuple[str, str] | None:
        """(table spec, value) of the first table that has ``key``; MapTempError passes."""
        for table in self.tables:
            value = table.lookup(key)
            if value is not None:
                return table.spec, value
        return None

    def __bool__(self) -> bool:
        return bool(self.tables)


@dataclass(frozen=True)
class PostfixChecks:
    """The four check classes and cleanup's limits, with every table opened once."""

    header: TableList
    mime_header: TableList
    nested_header: TableList
    body: TableList
    body_size_limit: int = 51200
    header_size_limit: int = 102400
    line_length_limit: int = 2048
    mime_nesting_limit: int = 100
    mime_boundary_length_limit: int = 2048

    @classmethod
    def from_config(cls, cfg: Any) -> PostfixChecks:
        """Open the tables named by the configuration (MapError when one is unusable)."""

        def tables(name: str) -> TableList:
            return TableList(tuple(open_table(spec) for spec in cfg.get(name)))

        return cls(
            header=tables(HEADER),
            mime_header=tables(MIME_HEADER),
            nested_header=tables(NESTED_HEADER),
            body=tables(BODY),
            body_size_limit=cfg.get("body_checks_size_limit"),
            header_size_limit=cfg.get("header_size_limit"),
            line_length_limit=cfg.get("line_length_limit"),
            mime_nesting_limit=cfg.get("mime_nesting_limit"),
            mime_boundary_length_limit=cfg.get("mime_boundary_length_limit"),
        )

    def for_class(self, check_class: str) -> TableList:
        return {HEADER: self.header, MIME_HEADER: self.mime_header,
                NESTED_HEADER: self.nested_header, BODY: self.body}[check_class]

    def __bool__(self) -> bool:
        return bool(self.header or self.mime_header or self.nested_header or self.body)


# -- result -----------------------------------------------------------------------------

@dataclass
class ContentCheckResult:
    """What the checks decided, for the verdict and for the outgoing header edits.

    ``reject`` is the reply cleanup would make smtpd send: ``REJECT`` with code 550 (or
    ``DEFER`` with code 451 when the text carries a 4.x.x status, or a table could not
    be read). ``warnings`` holds the log lines of WARN and INFO actions.
    """

    reject: Action | None = None
    discard: bool = False
    hold: bool = False
    filter: str | None = None
    redirect: str | None = None
    bcc: list[str] = field(default_factory=list)
    edits: HeaderEdits = field(default_factory=HeaderEdits)
    warnings: list[str] = field(default_factory=list)
    symbols: list[Symbol] = field(default_factory=list)


# -- Postfix's view of the message: mime_state ---------------------------------------------

@dataclass(frozen=True)
class Line:
    """One unit of inspection: a logical header or one body record."""

    check_class: str
    key: str
    offset: int  # body: offset in its body segment; headers: 0
    primary_index: int | None  # index into Message.header_fields for primary headers


@dataclass
class _Boundary:
    text: bytes
    nested_default: bool  # multipart/digest: parts default to message/rfc822


def _records(raw: bytes, limit: int) -> Iterator[tuple[bytes, bool]]:
    """Lines without their CRLF/LF, cut into ``limit``-byte pieces as smtpd stores them.

    The bool says whether the record continues on the next one (REC_TYPE_CONT).
    """
    start, n = 0, len(raw)
    while start < n:
        end = raw.find(b"\n", start)
        if end < 0:
            end = n
        line_end = end - 1 if end > start and raw[end - 1] == 0x0D else end
        pos = start
        while line_end - pos > limit:
            yield raw[pos:pos + limit], True
            pos += limit
        yield raw[pos:line_end], False
        start = end + 1


class _MimeState:
    """A replay of Postfix's mime_state_update() that yields what cleanup inspects."""

    def __init__(self, checks: PostfixChecks):
        self.limits = checks
        self.state = _PRIMARY
        self.ctype = b"text"
        self.stype = b"plain"
        self.stack: list[_Boundary] = []
        self.body_offset = 0
        self.buffer: list[bytes] = []
        self.buffer_len = 0
        self.prev_cont = False
        self.primary_count = 0

    def run(self, raw: bytes) -> Iterator[Line]:
        for text, cont in _records(raw, self.limits.line_length_limit):
            yield from self._update(text, cont)
            self.prev_cont = cont
        yield from self._flush_header()

    # -- headers
    def _append(self, piece: bytes) -> None:
        if self.buffer_len < self.limits.header_size_limit:
            self.buffer.append(piece)
            self.buffer_len += len(piece)

    def _flush_header(self) -> Iterator[Line]:
        if not self.buffer:
            return
        header = b"".join(self.buffer)
        self.buffer, self.buffer_len = [], 0
        m = _IS_HEADER.match(header)
        name = m.group(1).lower() if m else b""
        if name == b"content-type":
            self._content_type(header[m.end():] if m else b"")
        check_class = MIME_HEADER if name.decode("ascii", "replace") in MIME_HEADERS else _CLASS_OF_STATE[self.state]
        index = None
        if self.state == _PRIMARY:
            index = self.primary_count
            self.primary_count += 1
        yield Line(check_class, header.decode("utf-8", "surrogateescape"), 0, index)

    def _content_type(self, value: bytes) -> None:
        m = _CT_MAIN.match(value)
        if not m:
            return
        main = m.group(1).lower()
        sub = (m.group(2) or b"").lower()
        if main == b"text":
            self.ctype, self.stype = b"text", sub
        elif main == b"message":
            self.ctype, self.stype = b"message", sub
        elif main == b"multipart":
            self.ctype = b"multipart"
            for b in _CT_BOUNDARY.finditer(value, m.end()):
                if len(self.stack) > self.limits.mime_nesting_limit:
                    break
                bound = b.group(1) if b.group(1) is not None else b.group(2)
                self.stack.append(_Boundary(bound[: self.limits.mime_boundary_length_limit],
                                            sub == b"digest"))
        else:
            self.ctype, self.stype = b"other", b""

    def _update(self, text: bytes, cont: bool) -> Iterator[Line]:
        if self.state != _BODY:
            if self.buffer:
                if self.prev_cont:
                    self._append(text)
                    return
                if text[:1] in (b" ", b"\t"):
                    self._append(b"\n" + text)
                    return
                yield from self._flush_header()
            m = _IS_HEADER.match(text)
            if m:
                # Normalise the obsolete "Name : value" to "Name: value", as Postfix does.
                self._append(m.group(1) + text[m.end():])
                return
            # This record ends the header block.
            if text == b"":
                self.body_offset = 0
                if self.ctype == b"message":
                    if self.stype == b"rfc822":
                        self._set(_NESTED, b"text", b"plain")
                    else:
                        self._set(_BODY, self.ctype, self.stype)
                elif self.ctype == b"multipart":
                    self._set(_BODY, b"other", b"")
                else:
                    self._set(_BODY, self.ctype, self.stype)
            else:
                self._set(_BODY, self.ctype, self.stype)
                yield from self._body_out(b"")
        # Body text (and the blank line that ended a header block falls through here).
        if self.stack and not self.prev_cont and text[:2] == b"--":
            for i in range(len(self.stack) - 1, -1, -1):
                bound = self.stack[i]
                if text.startswith(bound.text, 2):
                    del self.stack[i + 1:]
                    if text.startswith(b"--", 2 + len(bound.text)):
                        self.stack.pop()
                        self._set(_BODY, b"other", b"")
                    elif bound.nested_default:
                        self._set(_MULTIPART, b"message", b"rfc822")
                    else:
                        self._set(_MULTIPART, b"text", b"plain")
                    break
        yield from self._body_out(text)

    def _set(self, state: int, ctype: bytes, stype: bytes) -> None:
        self.state, self.ctype, self.stype = state, ctype, stype
        if state == _BODY:
            self.body_offset = 0

    def _body_out(self, text: bytes) -> Iterator[Line]:
        offset = self.body_offset
        self.body_offset += len(text) + 1
        limit = self.limits.body_size_limit
        if limit == 0 or offset < limit:
            yield Line(BODY, text.decode("utf-8", "surrogateescape"), offset, None)


def inspected_lines(checks: PostfixChecks, msg: Message) -> Iterator[Line]:
    """Every header and body record cleanup would look up, in message order."""
    return _MimeState(checks).run(msg.raw)


# -- actions (cleanup_act) ----------------------------------------------------------------

def is_header_text(text: str) -> bool:
    """Postfix's is_header(): does ``text`` start with ``Name:``?"""
    return _IS_HEADER.match(text.encode("utf-8", "surrogateescape")) is not None


def _log_origin(msg: Message) -> str:
    env = msg.envelope
    if env.client_address:
        return f"{env.client_name or 'unknown'}[{env.client_address}]"
    return "local" if env.protocol_name.lower() in ("local", "sendmail") else "unknown"


def log_line(msg: Message, action: str, context: str, content: str, text: str) -> str:
    """cleanup_act_log()'s line: ``QUEUEID: action: header ... from ...; from=<> to=<>...``."""
    env = msg.envelope
    parts = [(f"{env.queue_id or 'NOQUEUE'}: {action}: {context} {printable(content[:200])} "
              f"from {_log_origin(msg)}; from=<{printable(env.sender or '')}>")]
    if env.recipients:
        parts.append(f" to=<{printable(env.recipients[0])}>")
    if env.protocol_name:
        parts.append(f" proto={env.protocol_name}")
    if env.helo_name:
        parts.append(f" helo=<{printable(env.helo_name)}>")
    if text:
        parts.append(f": {printable(text)}")
    return "".join(parts)


def _symbol(line: Line, spec: str, value: str, note: str = "") -> Symbol:
    word = value.split(None, 1)[0].upper() if value.strip() else "DUNNO"
    evidence = f"{spec}: {printable(line.key[:120])} => {printable(value[:120])}"
    if note:
        evidence += f" ({note})"
    return Symbol(f"POSTFIX_{line.check_class.upper()}", 0.0, word, evidence)


def reject_reply(action: Action) -> Action:
    """The reply for a parsed ``REJECT [text]``: cleanup's dsn_prepend("5.7.1", text).

    A 4.x.x status makes it a deferral (451), as cleanup's CLEANUP_STAT_DEFER does; a
    2.x.x status is not allowed and becomes 4.x.x with a warning, as in Postfix.
    """
    if not action.dsn and not action.text:
        return Action("REJECT", _REJECT_CODE, _REJECT_DSN, _REJECT_TEXT)
    dsn = action.dsn or _REJECT_DSN
    if dsn[0] not in "45":
        log.warning("bad DSN action in %s -- need 4.x.x or 5.x.x", action)
        dsn = "4" + dsn[1:]
    if dsn[0] == "4":
        return Action("DEFER", _DEFER_CODE, dsn, action.text)
    return Action("REJECT", _REJECT_CODE, dsn, action.text)


class _Applier:
    """cleanup_act() for one message: turns matched values into the result."""

    def __init__(self, msg: Message, result: ContentCheckResult):
        self.msg = msg
        self.result = result
        self.stopped = False

    def _log(self, action: str, line: Line, text: str) -> str:
        context = "body" if line.check_class == BODY else "header"
        entry = log_line(self.msg, action, context, line.key, text)
        log.info("%s", entry)
        return entry

    def _bad(self, line: Line, spec: str, value: str, why: str) -> None:
        log.warning("%s in %s map %s: %s", why, line.check_class, spec, value)
        self.result.symbols.append(_symbol(line, spec, value, f"ignored: {why}"))

    def apply(self, line: Line, spec: str, value: str) -> None:
        res = self.result
        # cleanup_act(): the command is the first word, case-insensitive; the rest is text.
        pieces = value.split(None, 1)
        word = pieces[0].upper() if pieces else "DUNNO"
        optional = pieces[1].strip() if len(pieces) > 1 else ""
        if word == "REJECT":
            res.reject = reject_reply(parse_action(f"REJECT {optional}"))
            self._log("reject", line, " ".join(filter(None, (res.reject.dsn, res.reject.text))))
            self.stopped = True
        elif word in ("WARN", "INFO"):
            res.warnings.append(self._log("warning" if word == "WARN" else "info", line, optional))
        elif word == "FILTER":
            if ":" not in optional:
                return self._bad(line, spec, value, "bad FILTER command -- need transport:destination")
            res.filter = optional
            self._log("filter", line, optional)
        elif word == "PASS":
            self._log("pass", line, optional)
            self.stopped = True
        elif word == "DISCARD":
            self._log("discard", line, optional)
            res.discard = True
            self.stopped = True
        elif word == "HOLD":
            if not (res.hold or res.discard):
                self._log("hold", line, optional)
                res.hold = True
        elif word in ("PREPEND", "REPLACE"):
            if not optional:
                return self._bad(line, spec, value, f"{word} action without text")
            if line.check_class != BODY and not is_header_text(optional):
                return self._bad(line, spec, value,
                                 f'bad {word} header text -- need "headername: headervalue"')
            self._log(word.lower(), line, optional)
            if line.primary_index is None:
                return self._not_applied(line, spec, value)
            if word == "PREPEND":
                res.edits.insert_before(line.primary_index, optional)
            else:
                res.edits.replace_field(line.primary_index, optional)
        elif word in ("REDIRECT", "BCC"):
            if "@" not in optional:
                return self._bad(line, spec, value, f"bad {word} address -- need user@domain")
            if word == "REDIRECT":
                res.redirect = optional
                self.stopped = True
            else:
                res.bcc.append(optional)
            self._log(word.lower(), line, optional)
        elif word in ("IGNORE", "STRIP"):
            if word == "STRIP":
                self._log("strip", line, optional)
            if line.primary_index is None:
                return self._not_applied(line, spec, value)
            res.edits.remove(line.primary_index)
        elif word in ("DUNNO", "OK"):
            pass
        else:
            return self._bad(line, spec, value, "unknown command")
        res.symbols.append(_symbol(line, spec, value))

    def _not_applied(self, line: Line, spec: str, value: str) -> None:
        where = "body line" if line.check_class == BODY else "MIME part or attached message header"
        log.info("%s: %s on a %s not applied: filterd does not rewrite message bodies",
                 self.msg.envelope.queue_id or "NOQUEUE", value.split(None, 1)[0].upper(), where)
        self.result.symbols.append(
            _symbol(line, spec, value, f"not applied: filterd does not rewrite the {where}"))


def run_postfix_checks(checks: PostfixChecks, msg: Message) -> ContentCheckResult:
    """Apply header/mime/nested/body checks to ``msg`` as Postfix cleanup(8) would.

    Never raises for hostile input. A table that cannot answer (MapTempError) makes
    the message defer with 451 4.3.0, as cleanup's "map lookup problem -- message not
    accepted, try again later" does.
    """
    result = ContentCheckResult()
    if not checks:
        return result
    applier = _Applier(msg, result)
    for line in inspected_lines(checks, msg):
        tables = checks.for_class(line.check_class)
        if not tables:
            continue
        try:
            found = tables.find(line.key)
        except MapTempError as exc:
            log.warning("%s: %s map lookup problem -- message not accepted, try again later: %s",
                        msg.envelope.queue_id or "NOQUEUE", line.check_class, exc)
            result.reject = Action("DEFER", _DEFER_CODE, "4.3.0",
                                   f"Error: {line.check_class} lookup problem, try again later")
            break
        if found is None:
            continue
        applier.apply(line, *found)
        if applier.stopped:
            break
    return result
