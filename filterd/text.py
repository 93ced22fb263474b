"""Small text helpers every part needs once: client text made printable, random ids.

A leaf: it imports nothing of filterd, so the SMTP plumbing, the content engine and the
front ends share one definition of each.
"""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def printable(text: str) -> str:
    """Text for a header or a reply of our own: every non-printable character (C0 and C1
    controls, DEL, line and paragraph separators, format characters, undecodable bytes)
    becomes ``?``; printable non-ASCII is kept."""
    return text if text.isprintable() else "".join(ch if ch.isprintable() else "?" for ch in text)


def random_id(length: int = 12) -> str:
    """``length`` random letters and digits (amavisd-new's mail_id and quarantine ids).

    One draw of enough random bits from the system's random source, read as base-62
    digits with 56 bits to spare (so the digits are uniform to within 2**-56), instead of
    one draw per character."""
    number = secrets.randbits(length * 6 + 56)
    digits = []
    for _ in range(length):
        number, digit = divmod(number, 62)
        digits.append(_ALPHABET[digit])
    return "".join(digits)
