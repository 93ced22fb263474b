"""Small text helpers every part needs once: client text made printable.

A leaf: it imports nothing of filterd, so the SMTP plumbing, the content engine and the
front ends share one definition of each.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """Text for a header or a reply of our own: every non-printable character (C0 and C1
    controls, DEL, line and paragraph separators, format characters, undecodable bytes)
    becomes ``?``; printable non-ASCII is kept."""
    return text if text.isprintable() else "".join(ch if ch.isprintable() else "?" for ch in text)
