"""Finding URIs in message text and HTML, the way URI rules and URIBLs need them."""

from __future__ import annotations

import re
from html import unescape
from urllib.parse import urlsplit

_TEXT_URI = re.compile(
    r"""(?:(?:https?|ftp)://|www\.)[^\s<>"'()\[\]{}]+|mailto:[^\s<>"'()]+""",
    re.IGNORECASE,
)
_HTML_ATTR = re.compile(
    r"""\b(?:href|src|action|background)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""",
    re.IGNORECASE,
)
_TRAILING = ".,;:!?'\")]}>"


def extract_uris(text: str, html: bool = False) -> list[str]:
    """URIs in order of appearance; ``www.`` links get ``http://`` as SpamAssassin does.

    For HTML source (``html=True``) only link attributes count; URLs written in the
    visible text are found by calling this again on the rendered text, so a URL that a
    reader never sees (an ``<object codebase=...>``, a comment) is not a URI of the
    message, as in SpamAssassin.
    """
    found: list[str] = []
    if html:
        for m in _HTML_ATTR.finditer(text):
            value = unescape(m.group(1) or m.group(2) or m.group(3) or "").strip()
            if value and not value.startswith(("#", "cid:", "data:")):
                found.append(_normalise(value))
        return found
    for m in _TEXT_URI.finditer(text):
        found.append(_normalise(m.group(0).rstrip(_TRAILING)))
    return found


def _normalise(uri: str) -> str:
    if uri.lower().startswith("www."):
        return "http://" + uri
    return uri


def uri_host(uri: str) -> str | None:
    """The host of a URI, lower-cased, or None when it has none (or is unparsable)."""
    if uri.lower().startswith("mailto:"):
        _, _, host = uri.partition("@")
        return host.split("?")[0].lower() or None
    try:
        host = urlsplit(uri).hostname
    except ValueError:
        return None
    return host.lower() if host else None
