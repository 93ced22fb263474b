"""HTML to text, as a mail filter needs it: what a reader would see, nothing executed.

Script and style content is dropped, block elements become line breaks, entities are
decoded. Link targets are not part of the text (see :mod:`filterd.content.uris`).
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


def html_to_text(html: str) -> str:
    """Render HTML to plain text; malformed HTML gives a best effort, never an error."""
    parser = _TextCollector()
    try:
        parser.feed(html)
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
