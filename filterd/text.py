"""Small text helpers every part needs once: client text made printable.

A leaf: it imports nothing of filterd, so the SMTP plumbing, the content engine and the
front ends share one definition of each. Two variants, because two kinds of destination
exist:

- :func:`printable` for our own headers, log lines and terminal output, which are UTF-8:
  printable non-ASCII (an accented sender name, a subject in Greek) is worth keeping there.
- :func:`printable_ascii` for what must be ASCII: SMTP replies without SMTPUTF8, the
  MTA's log lines in Postfix's exact shape (Postfix's own ``printable()``), DSN fields.

Both replace, never drop: the length and the place of what was removed stay visible.
"""

from __future__ import annotations

import re

#: Everything but printable ASCII: C0 controls (CR, LF, NUL...), DEL, and all non-ASCII
#: (C1 controls, U+2028, bidi controls, undecodable bytes kept as lone surrogates).
_NOT_ASCII_PRINTABLE = re.compile(r"[^\x20-\x7e]")


def printable(text: str) -> str:
    """Text for a header, a log line or a terminal of our own: every non-printable
    character (C0 and C1 controls, DEL, line and paragraph separators, format characters
    such as the bidi override U+202E, undecodable bytes) becomes ``?``; printable
    non-ASCII is kept."""
    return text if text.isprintable() else "".join(ch if ch.isprintable() else "?" for ch in text)


def printable_ascii(text: str) -> str:
    """Text for an SMTP reply or a Postfix-shaped log line: anything outside printable
    ASCII becomes ``?``, as Postfix's smtpd prints client text."""
    if text.isascii() and text.isprintable():
        return text
    return _NOT_ASCII_PRINTABLE.sub("?", text)
