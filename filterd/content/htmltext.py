"""HTML to text, as a mail filter needs it: what a reader would see, nothing executed.

Script and style content is dropped, block elements become line breaks, entities are
decoded. Link targets are not part of the text (see :mod:`filterd.content.uris`).

The stdlib's HTMLParser takes quadratic time (worse, with its regex backtracking) on
markup made of many tag openings that never close: 72 KB of ``<a `` took 75 s.
:func:`defuse_markup` first turns every ``<`` that cannot open a complete tag (no ``>``
before the next ``<``) into ``&lt;``, which the parser reads as text in linear time; a
well-formed tag or comment is left as it is.
"""

from __future__ import annotations

from html.parser import HTMLParser

_BLOCK = frozenset(
    "p br div tr li h1 h2 h3 h4 h5 h6 table ul ol blockquote pre hr title dt dd".split()
)
_SKIP = frozenset(("script", "style", "head"))


class _TextCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skip_depth += 1
        elif tag in _BLOCK:
            self.out.append("\n")
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self.out.append(f" {alt} ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP and self.skip_depth:
            self.skip_depth -= 1
        elif tag in _BLOCK:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.out.append(data)


def defuse_markup(html: str) -> str:
    """``html`` with each ``<`` that has no ``>`` before the next ``<`` written ``&lt;``.

    Comments are kept whole (a ``<`` inside one must not expose the comment's text), and
    an unclosed comment is closed at the end, as a browser reads it. Linear: every search
    starts where the last ended, and the next ``>`` is looked for again only once the
    scan has passed it.
    """
    if "<" not in html:
        return html
    out: list[str] = []
    end = len(html)
    pos = 0
    gt = -1  # position of the next ">" at or after the current "<" (end: there is none)
    while pos < end:
        lt = html.find("<", pos)
        if lt < 0:
            out.append(html[pos:])
            break
        out.append(html[pos:lt])
        if html.startswith("<!--", lt):
            close = html.find("-->", lt + 4)
            if close < 0:  # closed for the parser, which rescans an open one per "<" in it
                out.append(html[lt:] + "-->")
                break
            out.append(html[lt:close + 3])
            pos = close + 3
            continue
        if gt <= lt:
            found = html.find(">", lt + 1)
            gt = found if found >= 0 else end
        following = html.find("<", lt + 1, gt)
        if gt == end or following >= 0:
            out.append("&lt;")
            pos = lt + 1
        else:
            out.append(html[lt:gt + 1])
            pos = gt + 1
    return "".join(out)


def html_to_text(html: str) -> str:
    """Render HTML to plain text; malformed HTML gives a best effort, never an error."""
    parser = _TextCollector()
    try:
        parser.feed(defuse_markup(html))
        parser.close()
    except (AssertionError, ValueError):  # html.parser can assert on very broken markup
        pass
    text = "".join(parser.out)
    lines = (" ".join(line.split()) for line in text.splitlines())
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()
