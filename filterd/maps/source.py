"""Reading table sources: Postfix's logical-line rules, inline ``{ rule }`` lists, reloads.

Every file-based table (texthash/hash, regexp/pcre, cidr) shares the same line rules
(postmap(1), regexp_table(5), cidr_table(5)):

- empty and white-space-only lines are ignored, as are lines whose first non-white
  character is ``#`` - also in the middle of a multi-line entry;
- a line that starts with white space continues the previous logical line (the text is
  joined as written, without the newline);
- a logical line must not start with white space.

Tables are re-read when their file changes, checked at most once per
:data:`CHECK_INTERVAL` seconds so that a lookup costs one clock read in the common case.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Generic, TypeVar

from filterd.config.types import split_list
from filterd.maps.errors import MapError

log = logging.getLogger("filterd.maps")

T = TypeVar("T")

#: A logical line: (number of its first physical line, text).
Line = tuple[int, str]

#: Seconds between checks of a table file's size and modification time.
CHECK_INTERVAL = 1.0


def where(spec: str, number: int) -> str:
    """``spec line N`` for files; ``spec rule N`` for rules written inline in ``{ }``."""
    unit = "rule" if spec.partition(":")[2].lstrip().startswith("{") else "line"
    return f"{spec} {unit} {number}"


def logical_lines(spec: str, physical: list[str]) -> list[Line]:
    """Join continuation lines and drop comments and blank lines."""
    out: list[Line] = []
    start = 0
    parts: list[str] = []
    for number, raw in enumerate(physical, 1):
        line = raw.rstrip("\r\n")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace():
            if not parts:
                raise MapError(f"{where(spec, number)}: logical line must not start with white space")
            parts.append(line)
            continue
        if parts:
            out.append((start, "".join(parts)))
        start, parts = number, [line]
    if parts:
        out.append((start, "".join(parts)))
    return out


def read_file(spec: str, path: str) -> tuple[list[Line], tuple[int, int, int, int]]:
    """Read and split a table file; also return its identity (device, inode, size, mtime)."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            data = fh.read()
    except OSError as exc:
        raise MapError(f"{spec}: cannot read {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        number = data.count(b"\n", 0, exc.start) + 1
        raise MapError(f"{where(spec, number)}: not valid UTF-8 ({exc.reason})") from None
    signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    return logical_lines(spec, text.splitlines()), signature


def braced(spec: str, text: str) -> str:
    """The inside of ``{ ... }`` with the white space after '{' and before '}' removed."""
    text = text.strip()
    if not text.startswith("{"):
        raise MapError(f"{spec}: expected '{{' at start of {text!r}")
    if not text.endswith("}"):
        raise MapError(f"{spec}: missing '}}' at end of {text!r}")
    return text[1:-1].strip()


def split_braced_list(spec: str, body: str) -> list[str]:
    """Split ``a, b { c d }`` on commas/white space, keeping ``{...}`` groups whole."""
    try:
        return split_list(body)
    except ValueError as exc:
        raise MapError(f"{spec}: {exc}") from None


def inline_rules(spec: str, name: str) -> list[Line]:
    """The rules of ``regexp:{ {rule-1}, {rule-2} }`` (Postfix 3.7), numbered from 1.

    Like Postfix, every rule must be written in braces; each becomes one line of an
    in-memory file.
    """
    items = split_braced_list(spec, braced(spec, name))
    if not items:
        raise MapError(f"{spec}: no rules between '{{' and '}}'")
    rules: list[Line] = []
    for number, item in enumerate(items, 1):
        if not item.startswith("{"):
            raise MapError(f"{where(spec, number)}: expected '{{' at start of {item!r}")
        rules.append((number, braced(spec, item)))
    return rules


class FileSource(Generic[T]):
    """A parsed table file that follows changes of the file.

    The file is checked at most once per :data:`CHECK_INTERVAL`; when its inode, size
    or modification time differ, it is parsed again.  A new version that does not
    parse (or a file that vanished) is logged and the last good contents stay in use:
    a half-edited file must not turn every lookup into an error.
    """

    def __init__(self, spec: str, path: str, parse: Callable[[str, list[Line]], T]):
        self.spec = spec
        self.path = path
        self._parse = parse
        lines, self._signature = read_file(spec, path)
        self._data = parse(spec, lines)
        self._next_check = time.monotonic() + CHECK_INTERVAL
        self._failed_signature: tuple[int, int, int, int] | None = None

    def get(self) -> T:
        """The current contents (re-read first if the file changed)."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + CHECK_INTERVAL
            self._refresh()
        return self._data

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if self._failed_signature is None:
                log.error("%s: cannot stat %s: %s; keeping the last good contents",
                          self.spec, self.path, exc.strerror)
                self._failed_signature = (0, 0, 0, 0)
            return
        signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if signature == self._signature or signature == self._failed_signature:
            return
        try:
            lines, signature = read_file(self.spec, self.path)
            data = self._parse(self.spec, lines)
        except MapError as exc:
            log.error("%s; keeping the last good contents", exc)
            self._failed_signature = signature
            return
        self._data = data
        self._signature = signature
        self._failed_signature = None
        log.info("%s: reloaded %s", self.spec, self.path)


class InlineSource(Generic[T]):
    """Contents given in the table name itself (``regexp:{ {rule} }``): never reloaded."""

    def __init__(self, data: T):
        self._data = data

    def get(self) -> T:
        return self._data
