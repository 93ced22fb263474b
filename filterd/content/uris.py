"""Finding URIs in message text and HTML, the way URI rules and URIBLs need them."""

from __future__ import annotations

import re
from html import unescape
from urllib.parse import urlsplit

_TEXT_URI_SOURCE = r"""(?:(?:https?|ftp)://|www\.)[^\s<>"'()\[\]{}]+|mailto:[^\s<>"'()]+"""
_HTML_ATTR_SOURCE = r"""\b(?:href|src|action|background)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))"""
_TEXT_URI = re.compile(_TEXT_URI_SOURCE, re.IGNORECASE)
_HTML_ATTR = re.compile(_HTML_ATTR_SOURCE, re.IGNORECASE)
# The same patterns without IGNORECASE, for lower-cased ASCII text: where Python's ``re``
# cannot skip ahead for a case-insensitive alternation, it can for a case-sensitive one
# (about twice as fast); on ASCII, lower-casing matches exactly what IGNORECASE matches.
_TEXT_URI_LOWER = re.compile(_TEXT_URI_SOURCE)
_HTML_ATTR_LOWER = re.compile(_HTML_ATTR_SOURCE)
_TRAILING = ".,;:!?'\")]}>"


def extract_uris(text: str, html: bool = False) -> list[str]:
    """URIs in order of appearance; ``www.`` links get ``http://`` as SpamAssassin does.

    For HTML source (``html=True``) only link attributes count; URLs written in the
    visible text are found by calling this again on the rendered text, so a URL that a
    reader never sees (an ``<object codebase=...>``, a comment) is not a URI of the
    message, as in SpamAssassin.
    """
    found: list[str] = []
    ascii_text = text.isascii()
    scan = text.lower() if ascii_text else text  # same length and offsets when ASCII
    if html:
        for m in (_HTML_ATTR_LOWER if ascii_text else _HTML_ATTR).finditer(scan):
            group = next((g for g in (1, 2, 3) if m.start(g) >= 0), 0)
            raw = text[m.start(group):m.end(group)] if group else ""
            value = unescape(raw).strip()
            if value and not value.startswith(("#", "cid:", "data:")):
                found.append(_normalise(value))
        return found
    for m in (_TEXT_URI_LOWER if ascii_text else _TEXT_URI).finditer(scan):
        found.append(_normalise(text[m.start():m.end()].rstrip(_TRAILING)))
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
        hostname = urlsplit(uri).hostname
    except ValueError:
        return None
    return hostname.lower() if hostname else None
