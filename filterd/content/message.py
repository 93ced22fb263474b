"""The message model: raw bytes kept unchanged, everything else derived lazily.

filterd never re-serialises a message it passes on: the bytes that came in go out, with
only header lines added, changed or removed in front of or in place of the originals
(see :class:`HeaderEdits`). Every view rules need (decoded headers, the MIME tree,
decoded text, URIs, attachment names) is computed on first use and cached, so a message
that the Postfix checks reject early never pays for MIME parsing.

Broken input never raises: the stdlib parser runs with a tolerant policy and what it
complains about ends up in :attr:`Message.defects`, which rules can score.

Hostile input is bounded here, once, for every check that walks the MIME tree: the tree
keeps at most :data:`MAX_MIME_DEPTH` levels and :data:`MAX_MIME_PARTS` parts, and a message
nested too deep for the stdlib parser (which recurses once per level) is parsed flat.
What was cut is listed in :attr:`Message.unchecked`; the pipeline makes such a message
UNCHECKED (amavisd-new's "over limits"), never clean, since no check saw all of it.
"""

from __future__ import annotations

import codecs
import email
import email.errors
import email.header
import email.policy
import email.utils
import re
from dataclasses import dataclass, field
from email.message import Message as EmailMessage
from functools import cached_property

from filterd.content.htmltext import html_to_text
from filterd.content.uris import extract_uris
from filterd.restrict.transaction import Stage, Transaction

#: Deepest MIME nesting kept (multipart and message/rfc822 levels; the top level is 0).
#: Real mail nests a few levels (a forwarded message in a multipart/mixed is 2 or 3);
#: the stdlib parser and every walk over the tree recurse once per level.
MAX_MIME_DEPTH = 20
#: Most MIME parts kept, containers included (amavisd-new's sample $MAXFILES): a
#: newsletter has tens, and 100,000 empty parts cost seconds in every check that walks them.
MAX_MIME_PARTS = 3000
#: Most header syntax defects recorded (each is a string; a header of 200,000 broken
#: lines must not become 200,000 strings).
MAX_HEADER_DEFECTS = 20

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FOLD = re.compile(r"\r?\n[ \t]")
_HDR_NAME = re.compile(r"^([!-9;-~]+)[ \t]*:")


@dataclass(frozen=True)
class Part:
    """One leaf of the MIME tree, with its decoded payload."""

    content_type: str
    charset: str | None
    filename: str | None
    disposition: str | None
    payload: bytes
    text: str | None  # decoded text for text/* parts (HTML already rendered to text)
    html: str | None  # the HTML source for text/html parts
    depth: int  # nesting depth (message/rfc822 and multipart levels)

    @property
    def is_attachment(self) -> bool:
        return self.disposition == "attachment" or (
            self.filename is not None and not self.content_type.startswith("text/")
        )


#: Characters of a header value given to the stdlib's RFC 2047 decoder at once: it joins
#: adjacent encoded-words by repeated concatenation, quadratic in their number (100,000
#: of them took 35 s per call), so a long value is decoded in pieces cut at white space.
DECODE_PIECE = 4096


def decode_header_value(value: str) -> str:
    """Decode RFC 2047 encoded-words, tolerating broken charsets and encodings.

    In linear time: a value longer than :data:`DECODE_PIECE` is decoded piece by piece
    (the white space between two encoded-words that meet at a cut is kept).
    """
    if "=?" not in value:
        return value
    if len(value) <= DECODE_PIECE:
        return _decode_words(value)
    pieces: list[str] = []
    start = 0
    while start < len(value):
        cut = start + DECODE_PIECE
        if cut < len(value):
            space = max(value.rfind(" ", start, cut), value.rfind("\t", start, cut))
            cut = space + 1 if space > start else cut
        pieces.append(_decode_words(value[start:cut]))
        start = cut
    return "".join(pieces)


def _decode_words(value: str) -> str:
    try:
        chunks = email.header.decode_header(value)
    except (ValueError, LookupError, AssertionError, email.errors.MessageError):
        return value  # hostile or broken encoded-words: shown as written
    out: list[str] = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            out.append(chunk)
            continue
        out.append(_decode_bytes(chunk, charset))
    return "".join(out)


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode with the declared charset; one Python cannot use (unknown, not a text
    encoding, a NUL in its name, a codec refusing errors="replace") gives Latin-1."""
    cs = (charset or "utf-8").strip().lower() or "utf-8"
    try:
        return data.decode(cs, errors="replace")
    except (LookupError, ValueError):
        return data.decode("latin-1")


class Message:
    """A message as received: raw bytes plus lazily derived views.

    Header text is decoded from bytes as UTF-8 with ``surrogateescape`` so 8-bit headers
    survive round trips byte for byte; values shown to rules are RFC 2047-decoded.
    """

    def __init__(self, raw: bytes, envelope: Transaction | None = None):
        self.raw = raw
        #: The SMTP envelope and client, in the restriction engine's one model of them
        #: (from the SMTP session, XFORWARD or the milter's macros); none for a file.
        self.envelope = envelope if envelope is not None else Transaction(Stage.END_OF_MESSAGE, sender="")
        m = _HEADER_END.search(raw)
        if raw.startswith((b"\r\n", b"\n")):
            self.header_end, self.body_start = 0, (2 if raw.startswith(b"\r\n") else 1)
        elif m:
            self.header_end, self.body_start = m.start(), m.end()
        else:
            self.header_end, self.body_start = len(raw), len(raw)

    @classmethod
    def from_bytes(cls, raw: bytes, envelope: Transaction | None = None) -> "Message":
        return cls(raw, envelope)

    # -- header section ---------------------------------------------------------------
    @property
    def header_bytes(self) -> bytes:
        return self.raw[: self.header_end]

    @property
    def body_bytes(self) -> bytes:
        return self.raw[self.body_start:]

    @cached_property
    def header_fields(self) -> list[tuple[str, str]]:
        """(name, raw value) for every header field, folding preserved, in order.

        Lines before the first field that are not ``Name:`` lines (e.g. an mbox
        ``From `` line or garbage) are recorded as defects and skipped. Continuation
        lines are gathered in a list and joined once: appending each to the value
        string would copy the value per line, quadratic for a header of many folds.
        """
        text = self.header_bytes.decode("utf-8", "surrogateescape")
        fields: list[tuple[str, list[str]]] = []
        malformed = 0
        for line in re.split(r"\r?\n", text):
            if not line:
                continue
            if line[0] in " \t" and fields:
                fields[-1][1].append(line)
                continue
            m = _HDR_NAME.match(line)
            if not m:
                malformed += 1
                if malformed <= MAX_HEADER_DEFECTS:
                    self._header_defects.append(f"malformed header line: {line[:60]!r}")
                continue
            fields.append((m.group(1), [line[m.end():].lstrip(" \t")]))
        if malformed > MAX_HEADER_DEFECTS:
            self._header_defects.append(f"{malformed} malformed header lines in all")
        return [(name, "\n".join(lines)) for name, lines in fields]

    @cached_property
    def _header_defects(self) -> list[str]:
        return []

    def header_lines(self) -> list[str]:
        """Logical header lines, unfolded, as Postfix's header_checks sees them."""
        return [f"{n}: {_FOLD.sub(lambda m: m.group(0)[-1], v)}" for n, v in self.header_fields]

    @cached_property
    def _header_index(self) -> dict[str, list[str]]:
        index: dict[str, list[str]] = {}
        for name, value in self.header_fields:
            index.setdefault(name.lower(), []).append(value)
        return index

    def get_all_raw(self, name: str) -> list[str]:
        """Raw (undecoded, still folded) values of every ``name`` field."""
        return list(self._header_index.get(name.lower(), ()))

    def get_all(self, name: str) -> list[str]:
        """Unfolded, RFC 2047-decoded values of every ``name`` field (decoded once each)."""
        key = name.lower()
        decoded = self._decoded.get(key)
        if decoded is None:
            decoded = [decode_header_value(_FOLD.sub(" ", v).strip()) for v in self._header_index.get(key, ())]
            self._decoded[key] = decoded
        return list(decoded)

    @cached_property
    def _decoded(self) -> dict[str, list[str]]:
        return {}

    def get(self, name: str, default: str = "") -> str:
        values = self.get_all(name)
        return values[0] if values else default

    def has(self, name: str) -> bool:
        return name.lower() in self._header_index

    @property
    def subject(self) -> str:
        return self.get("Subject")

    def addresses(self, name: str) -> list[str]:
        """Bare addresses from an address header (``:addr`` in SpamAssassin terms)."""
        return [addr for _, addr in email.utils.getaddresses(self.get_all(name)) if addr]

    def display_names(self, name: str) -> list[str]:
        """Display names from an address header (``:name`` in SpamAssassin terms)."""
        return [n for n, _ in email.utils.getaddresses(self.get_all(name)) if n]

    # -- MIME -------------------------------------------------------------------------
    @cached_property
    def tree(self) -> EmailMessage:
        """The stdlib MIME tree (compat32 policy: tolerant), cut to the bounds above.

        The stdlib parser recurses once per nesting level and raises RecursionError
        somewhere past 900 levels: such a message is parsed as its top-level header
        section over one undivided body, so every check still gets a tree.
        """
        try:
            tree = email.message_from_bytes(self.raw, policy=email.policy.compat32)
        except RecursionError:
            self.unchecked.append("MIME nesting too deep to parse")
            tree = email.message_from_bytes(self.raw[: self.body_start], policy=email.policy.compat32)
            tree.set_payload(self.body_bytes.decode("ascii", "surrogateescape"))
            return tree
        self.unchecked.extend(_bound_tree(tree))
        return tree

    @cached_property
    def unchecked(self) -> list[str]:
        """Why parts of the MIME tree were not looked at (limits reached); empty if none.

        Filled when :attr:`tree` is built; read it through :meth:`mime_limits`."""
        return []

    def mime_limits(self) -> list[str]:
        """The limits this message's MIME structure reached (parsing it if not done yet)."""
        _ = self.tree
        return self.unchecked

    @cached_property
    def parts(self) -> list[Part]:
        parts: list[Part] = []
        self._walk(self.tree, 0, parts)
        return parts

    def _walk(self, node: EmailMessage, depth: int, out: list[Part]) -> None:
        """Collect the leaves; recursion is bounded by :data:`MAX_MIME_DEPTH` (see tree)."""
        for defect in node.defects:
            self.extra_defects.append(type(defect).__name__)
        if node.is_multipart():
            payload = node.get_payload()
            if isinstance(payload, list):
                for child in payload:
                    if isinstance(child, EmailMessage):
                        self._walk(child, depth + 1, out)
            return
        ctype = node.get_content_type()
        try:
            data = node.get_payload(decode=True) or b""
        except Exception as exc:  # noqa: BLE001 - hostile input; recorded, never raised
            self.extra_defects.append(f"undecodable payload: {exc}")
            data = b""
        if not isinstance(data, bytes):  # message/rfc822 without multipart payload: a list
            data = b""
        charset = node.get_content_charset()
        filename = _safe_filename(node)
        disposition = node.get_content_disposition()
        text = html = None
        if ctype.startswith("text/"):
            decoded = _decode_bytes(data, charset)
            if ctype == "text/html":
                html = decoded
                text = html_to_text(decoded)
            else:
                text = decoded
        out.append(Part(ctype, charset, filename, disposition, data, text, html, depth))

    @cached_property
    def extra_defects(self) -> list[str]:
        return []

    @property
    def defects(self) -> list[str]:
        """Everything found broken: header syntax, MIME structure, decoding."""
        _ = self.header_fields, self.parts
        return self._header_defects + self.extra_defects

    @cached_property
    def text_parts(self) -> list[Part]:
        return [p for p in self.parts if p.text is not None and not p.is_attachment]

    @cached_property
    def body_text(self) -> str:
        """Decoded, HTML-rendered text of the message (SpamAssassin's ``body``).

        As in SpamAssassin, the Subject is the first paragraph; parts are separated by
        blank lines. When a multipart/alternative has both, both are included: rules and
        Bayes benefit from seeing what either rendering shows.
        """
        pieces = [self.subject] if self.subject else []
        pieces.extend(p.text or "" for p in self.text_parts)
        return "\n".join(pieces)

    @cached_property
    def rawbody_text(self) -> str:
        """Transfer-decoded text parts with HTML not rendered (SpamAssassin's ``rawbody``)."""
        return "\n".join((p.html if p.html is not None else p.text) or "" for p in self.text_parts)

    @cached_property
    def uris(self) -> list[str]:
        """URIs from text parts and HTML attributes, de-duplicated, in order of appearance."""
        found: list[str] = []
        for p in self.text_parts:
            if p.html is not None:
                found.extend(extract_uris(p.html, html=True))
            found.extend(extract_uris(p.text or ""))
        return list(dict.fromkeys(found))  # first occurrence of each, in order

    @cached_property
    def attachments(self) -> list[tuple[str | None, str]]:
        """(filename, content type) of every attachment-like part."""
        return [(p.filename, p.content_type) for p in self.parts if p.is_attachment]

    # -- raw body for Postfix body_checks ----------------------------------------------
    def body_lines(self) -> list[str]:
        """Body lines undecoded, as Postfix body_checks sees them (8-bit kept)."""
        return self.body_bytes.decode("utf-8", "surrogateescape").splitlines()


def _bound_tree(root: EmailMessage) -> list[str]:
    """Cut the tree to MAX_MIME_DEPTH levels and MAX_MIME_PARTS parts, in document order,
    and make every leaf's charset one the stdlib can be asked about (see _usable_charset).

    Walked with an explicit stack (never recursion): each entry is a container, its
    depth and the index of its next child. Returns what was cut, for ``unchecked``.
    """
    reasons: list[str] = []
    seen = 1
    stack: list[tuple[EmailMessage, int, int]] = [(root, 0, 0)]
    while stack:
        node, depth, index = stack.pop()
        if not node.is_multipart():  # a leaf (is_multipart looks at the payload's type only)
            _usable_charset(node)
            continue
        children = node.get_payload()  # a container's list of parts: nothing is decoded
        if not isinstance(children, list) or index >= len(children):
            continue
        if depth >= MAX_MIME_DEPTH:
            node.set_payload([])
            if not any(r.startswith("MIME nesting") for r in reasons):
                reasons.append(f"MIME nesting deeper than {MAX_MIME_DEPTH} levels")
            continue
        if seen >= MAX_MIME_PARTS:
            del children[index:]
            for ancestor, _, next_index in stack:
                siblings = ancestor.get_payload()
                if isinstance(siblings, list):
                    del siblings[next_index:]
            reasons.append(f"more than {MAX_MIME_PARTS} MIME parts")
            break
        stack.append((node, depth, index + 1))
        seen += 1
        child = children[index]
        if isinstance(child, EmailMessage):
            stack.append((child, depth + 1, 0))
    return reasons


def _usable_charset(node: EmailMessage) -> None:
    """Replace a charset parameter that makes the stdlib raise instead of falling back.

    ``get_payload()`` of an 8-bit text part decodes it with the declared charset and
    falls back to ASCII only on LookupError; a NUL or a lone surrogate in the name raises
    ValueError, and an RFC 2231 ``charset*=`` (a tuple) TypeError, from every rule, Bayes
    and banned check that reads the part. The RFC 2231 form is replaced by its value;
    a name with unusable characters is shown with ``?`` for each, which Python then does
    not know (LookupError): the stdlib's own fallback applies. The raw message is unchanged.
    """
    try:
        charset = node.get_param("charset")
    except (ValueError, LookupError, TypeError, AttributeError):
        return
    if isinstance(charset, tuple):
        charset = email.utils.collapse_rfc2231_value(charset)
    elif not isinstance(charset, str):
        return
    else:
        try:
            codecs.lookup(charset)
            return
        except LookupError:
            return
        except (ValueError, TypeError):
            pass
    # printable ASCII only: set_param would write anything else back as RFC 2231 (a tuple)
    node.set_param("charset", "".join(c if " " < c < "\x7f" else "?" for c in charset))


def _safe_filename(node: EmailMessage) -> str | None:
    try:
        name = node.get_filename()
    except (ValueError, LookupError, TypeError, AttributeError):
        return None
    if name is None:
        return None
    return decode_header_value(str(name))


class HeaderEdits:
    """Header changes to apply to a message on its way out, raw body untouched.

    Order of application: removals/replacements of existing fields (by index into
    :attr:`Message.header_fields`), then additions prepended in the order given (each
    new field goes on top, as amavisd-new does). Fields inserted before an existing
    field (header_checks PREPEND puts its line right above the matched header) stay
    there even when that field itself is removed or replaced.
    """

    def __init__(self) -> None:
        self.prepend: list[str] = []
        self.replace: dict[int, str | None] = {}
        self.insert: dict[int, list[str]] = {}

    def add(self, name: str, value: str) -> None:
        self.prepend.append(f"{name}: {value}")

    def add_line(self, line: str) -> None:
        self.prepend.append(line)

    def remove(self, index: int) -> None:
        self.replace[index] = None

    def replace_field(self, index: int, line: str) -> None:
        self.replace[index] = line

    def insert_before(self, index: int, line: str) -> None:
        self.insert.setdefault(index, []).append(line)

    def __bool__(self) -> bool:
        return bool(self.prepend or self.replace or self.insert)

    def apply(self, msg: Message) -> bytes:
        """The outgoing bytes: new header section, then the original body bytes."""
        newline = "\r\n" if b"\r\n" in msg.raw[: msg.header_end + 2] else "\n"
        lines = [_fold_for_output(line, newline) for line in reversed(self.prepend)]
        for i, (name, value) in enumerate(msg.header_fields):
            lines.extend(_fold_for_output(line, newline) for line in self.insert.get(i, ()))
            if i in self.replace:
                new = self.replace[i]
                if new is not None:
                    lines.append(_fold_for_output(new, newline))
                continue
            lines.append(f"{name}: {value}".replace("\n", newline))
        head = newline.join(lines).encode("utf-8", "surrogateescape")
        if msg.body_start >= len(msg.raw) and msg.header_end >= len(msg.raw):
            return head + newline.encode()
        return head + newline.encode() * 2 + msg.raw[msg.body_start:]


def _fold_for_output(line: str, newline: str) -> str:
    """Fold long header lines at white space (RFC 5322 recommends <= 78 characters)."""
    line = line.replace("\r", " ").replace("\n", " ")
    if len(line) <= 78:
        return line
    out: list[str] = []
    current = ""
    for word in line.split(" "):
        if current and len(current) + 1 + len(word) > 78:
            out.append(current)
            current = "\t" + word
        else:
            current = f"{current} {word}" if current else word
    out.append(current)
    return newline.join(out)
