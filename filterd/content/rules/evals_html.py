"""SpamAssassin's HTML and multipart/alternative eval tests, natively.

SpamAssassin's HTML parser (``Mail::SpamAssassin::HTML``) records per text/html part a
handful of statistics that ``Plugin::HTMLEval`` and ``Plugin::BodyEval`` rules test:
how many tags are real HTML elements, how many end tags close nothing, how often a tag
boundary splits a word ("V<b></b>iagra", the obfuscation count), the largest ``<font
size>``, image area, anchor, comment and title texts, which elements were left open, and
whether visible text was drawn in (nearly) the background color, an invalid color, an
``<embed>``/``<object>`` or a malformed font face (``html_test``). Colors follow the
same style stack: ``color``/``text`` attributes and CSS ``color``, ``background-color``
and ``background`` (the ``bgcolor`` attribute is resolved but, as in SpamAssassin 4,
never applied).
filterd's own renderer (:mod:`filterd.content.htmltext`) only makes text, so this module
re-parses each HTML part once per message with the same event model (start tag, end tag,
text, comment, declaration) and the same counting rules, computed once per message (``MessageViews.shared``).
Everything here follows SpamAssassin 4's HTML.pm/HTMLEval.pm/BodyEval.pm semantics; the
docstrings note where filterd differs.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message as EmailMessage
from html.parser import HTMLParser

import regex

from filterd.content.htmltext import defuse_markup
from filterd.content.message import Message
from filterd.content.rules.evalargs import is_number
from filterd.content.rules.evals_html_colors import NAMED_COLORS
from filterd.content.rules.perlre import PerlRegexError, make_perl_regex
from filterd.content.rules.views import MessageViews

# The elements of HTML 4.01 / XHTML 1.0 plus three non-standard ones SpamAssassin accepts
# (everything else, e.g. <xyzzy> or <blink>, counts as a "bad tag").
_ELEMENTS = frozenset("""
a abbr acronym address area b base bdo big blockquote body br button caption cite code col
colgroup dd del dfn div dl dt em fieldset form h1 h2 h3 h4 h5 h6 head hr html i img input
ins kbd label legend li link map meta noscript object ol optgroup option p param pre q samp
script select small span strong style sub sup table tbody td textarea tfoot th thead title tr
tt ul var applet basefont center dir font frame frameset iframe isindex menu noframes s
strike u nobr x-sigsep x-tab""".split())
# Not valid HTML but rendered by mail readers (SpamAssassin's "tricks").
_TRICKS = frozenset("bgsound embed listing plaintext xmp".split())
# Elements whose start and end tags break words apart (they render as white space).
_WHITESPACE = frozenset(
    "br div li th td dt dd p hr blockquote pre embed listing plaintext xmp title "
    "h1 h2 h3 h4 h5 h6".split())
_NAMESPACE_TAG = re.compile(r"^(?:o|st\d):[\w-]+/?$")  # MS Office tags count as elements
_SELF_CLOSING = re.compile(r"<(\w+)\s*/>")  # <br/> is read as <br>, as SpamAssassin does
# A "word" character for the obfuscation count: not white space, not ASCII punctuation.
_WORD_START = re.compile(r"^[^\s\x21-\x2f\x3a-\x40\x5b-\x60\x7b-\x7e]")
_WORD_END = re.compile(r"[^\s\x21-\x2f\x3a-\x40\x5b-\x60\x7b-\x7e]\Z")
_SIZE_REL = re.compile(r"^\s*([+-]\d+)")
_SIZE_ABS = re.compile(r"^\s*(\d+)")
_DIMENSION = re.compile(r"^(\d+)(%)?$")
_DEFAULT_FONT_SIZE = 3
# Elements that open a text style (colors, size) and the attributes each may set it with.
_STYLE_ELEMENTS = frozenset("body font table tr th td big small basefont marquee span p div a".split())
_STYLE_ATTRIBUTES: dict[str, frozenset[str]] = {
    "basefont": frozenset(("color", "face", "size")),
    "body": frozenset(("text", "bgcolor", "link", "alink", "vlink", "background")),
    "font": frozenset(("color", "face", "size")),
    "marquee": frozenset(("bgcolor", "background")),
    **{t: frozenset(("bgcolor", "style")) for t in ("table", "td", "th", "tr")},
    **{t: frozenset(("style",)) for t in ("span", "p", "div", "a")},
}
_FONT_FACE_OK = re.compile(
    r"""^\s*["'.]?[a-z ][a-z -]*[a-z]\d?["']?(?:,\s*["']?[a-z][a-z -]*[a-z]\d?["']?)*;?$""", re.I)
_CSS_COLOR = re.compile(r"^\s*(background-)?color:\s*(.+?)\s*$", re.I | re.S)
_CSS_BACKGROUND = re.compile(r"^\s*background:\s*(.+?)\s*$", re.S)
_CSS_PROPERTY = re.compile(r"^\s*([a-z_-]+)\s*:\s*(\S.*?)\s*$", re.I | re.S)
_IMPORTANT = re.compile(r"\s*!\s*important$")
_HEX_COLOR = re.compile(r"^#?([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$")
_COLOR_SYNTAX = re.compile(r"^[#a-f0-9]*$|rgb\([\d%, ]*\)", re.I)
_RGB_PERCENT = re.compile(r"rgb\((\d+)%,\s*(\d+)%,\s*(\d+)%\s*\)", re.I)
_RGB_DECIMAL = re.compile(r"rgb\((\d+),\s*(\d+),\s*(\d+)\s*\)", re.I)
_NBSP_SPACE_CHARS = " \t\n\r\f\x0b\xa0"
#: Brightness-weighted RGB distance under which text counts as unreadable (HTML.pm).
LOW_CONTRAST_DISTANCE = 12.0
#: HTML beyond this many characters is not parsed for statistics (bounds CPU on huge mail).
MAX_HTML_CHARS = 500_000


@dataclass
class HtmlStats:
    """What SpamAssassin's HTML parser records for one text/html part."""

    length: int = 0  # characters of HTML source
    tags: int = 0
    elements: int = 0
    tags_seen: int = 0  # distinct tag names
    elements_seen: int = 0
    closed_extra: int = 0  # end tags without an open element
    obfuscation: int = 0  # words split by a tag
    max_size: int = _DEFAULT_FONT_SIZE
    image_area: int = 0
    non_space_len: int = 0  # rendered text without white space (filterd's rendering)
    inside: dict[str, int] = field(default_factory=dict)  # open count per tag name seen
    anchor: list[str] = field(default_factory=list)
    comment: list[str] = field(default_factory=list)
    title: list[str] = field(default_factory=list)
    tests: set[str] = field(default_factory=set)  # html_test() flags: embeds, font_low_contrast...

    def value(self, name: str) -> float | None:
        """A statistic by SpamAssassin's result name; None when it does not exist."""
        if name in ("length", "max_size", "image_area", "non_space_len"):
            return float(getattr(self, name))
        if not self.tags:
            return None
        if name == "closed_extra_ratio":
            return self.closed_extra / self.tags
        if name == "bad_tag_ratio":
            return (self.tags - self.elements) / self.tags
        if name == "obfuscation_ratio":
            return self.obfuscation / self.tags
        if name == "non_element_ratio" and self.tags_seen:
            return (self.tags_seen - self.elements_seen) / self.tags_seen
        return None


class _StatsParser(HTMLParser):
    """Counts as SpamAssassin's HTML.pm does, on Python's HTML tokenizer."""

    def __init__(self, stats: HtmlStats) -> None:
        super().__init__(convert_charrefs=True)
        self.stats = stats
        self.basefont = _DEFAULT_FONT_SIZE
        self.last_text: str | None = None  # the last piece of rendered text (words or space)
        self.styles: list[dict[str, str | int]] = [
            {"tag": "default", "fgcolor": "#000000", "bgcolor": "#ffffff", "size": self.basefont}]

    def _tag(self, tag: str, attrs: list[tuple[str, str | None]], num: int) -> None:
        s = self.stats
        known = tag in _ELEMENTS or (":" in tag and _NAMESPACE_TAG.match(tag) is not None)
        first = tag not in s.inside
        s.tags += 1
        s.tags_seen += first
        if known:
            s.elements += 1
            s.elements_seen += first
        open_count = s.inside.get(tag, 0) + num
        if open_count < 0:
            open_count = 0
            s.closed_extra += 1
        s.inside[tag] = open_count
        if not (tag in _ELEMENTS or tag in _TRICKS):
            return
        attr = {k.lower(): v or "" for k, v in attrs}
        if tag in _STYLE_ELEMENTS:
            self._style(tag, attr, num)
        if tag in _WHITESPACE:
            self.last_text = " "
        if num == 1:
            self._start(tag, attr)

    # -- text style: colors and sizes ---------------------------------------------------
    def _style(self, tag: str, attr: dict[str, str], num: int) -> None:
        tag = "td" if tag == "th" else tag
        if num != 1:
            if tag != "body":  # browsers render text after </body>
                self._close(tag)
            return
        if tag == "basefont" and _SIZE_ABS.match(attr.get("size", "")):
            self.basefont = int(_SIZE_ABS.match(attr["size"]).group(1))  # type: ignore[union-attr]
            return
        if tag in ("td", "tr"):
            self._close_table(tag)
        new = dict(self.styles[-1])
        new["tag"] = tag
        if tag in ("big", "small"):
            new["size"] = int(new["size"]) + (1 if tag == "big" else -1)
            self.styles.append(new)
            return
        allowed = _STYLE_ATTRIBUTES.get(tag, frozenset())
        for name, value in attr.items():
            if name not in allowed:
                continue
            if name in ("text", "color"):
                new["fgcolor"] = name_to_rgb(value)
            elif name == "size":
                rel, absolute = _SIZE_REL.match(value), _SIZE_ABS.match(value)
                if rel:
                    new["size"] = self.basefont + int(rel.group(1))
                elif absolute:
                    new["size"] = int(absolute.group(1))
            elif name == "style":
                self._css(new, value)
            elif name != "bgcolor":
                new[name] = value
            size = int(new["size"])
            self.stats.max_size = max(self.stats.max_size, size)
        self.styles.append(new)

    def _css(self, new: dict[str, str | int], style: str) -> None:
        for declaration in style.split(";"):
            color = _CSS_COLOR.match(declaration)
            if color:
                which = "bgcolor" if color.group(1) else "fgcolor"
                value = _IMPORTANT.sub("", color.group(2).lower())
                if "rgb" in value:
                    channels = re.sub(r"[^0-9,]", "", value).split(",")[:3]
                    channels += ["0"] * (3 - len(channels))
                    new[which] = "#" + "".join(f"{min(int(c or 0), 255):02x}" for c in channels)
                elif value != "inherit":
                    new[which] = value if value == "transparent" else name_to_rgb(value)
                continue
            background = _CSS_BACKGROUND.match(declaration)
            if background:
                layers = css_background_layers(background.group(1).lower())
                for value in layers[-1] if layers else []:
                    rgb = name_to_rgb(value)
                    if rgb != "invalid":
                        new["bgcolor"] = rgb
                        break
                continue
            prop = _CSS_PROPERTY.match(declaration)
            if prop:
                new["style_" + prop.group(1)] = prop.group(2)
        if new["bgcolor"] == "transparent":
            new["bgcolor"] = self.styles[-1]["bgcolor"]
        if new["fgcolor"] == "transparent":
            new["fgcolor"] = new["bgcolor"]

    def _close(self, tag: str) -> None:
        """Pop styles up to and including the innermost one ``tag`` opened."""
        if not any(style["tag"] == tag for style in self.styles):
            return
        while self.styles:
            if self.styles.pop()["tag"] == tag:
                break
        if not self.styles:  # the default style is never closed by markup
            self.styles.append({"tag": "default", "fgcolor": "#000000", "bgcolor": "#ffffff",
                                "size": self.basefont})

    def _close_table(self, tag: str) -> None:
        """A new <td>/<tr> implicitly closes the open cell (and row), and fonts inside."""
        if not any(style["tag"] == tag for style in self.styles):
            return
        closes = ("font", "td") if tag == "td" else ("font", "td", "tr")
        while len(self.styles) > 1 and self.styles[-1]["tag"] in closes:
            self.styles.pop()

    def _invisible(self) -> None:
        """Flag text drawn in (nearly) the background color or in an invalid color."""
        style = self.styles[-1]
        fg, bg = str(style["fgcolor"]), str(style["bgcolor"])
        if fg[-6:] == bg[-6:]:
            self.stats.tests.add("font_low_contrast")
            return
        f, b = _HEX_COLOR.match(fg), _HEX_COLOR.match(bg)
        if f and b:
            dr, dg, db = (int(f.group(i), 16) - int(b.group(i), 16) for i in (1, 2, 3))
            if ((0.2126 * dr) ** 2 + (0.7152 * dg) ** 2 + (0.0722 * db) ** 2) ** 0.5 < LOW_CONTRAST_DISTANCE:
                self.stats.tests.add("font_low_contrast")
                return
        if fg == "invalid" or bg == "invalid":
            self.stats.tests.add("font_invalid_color")

    # -- start tags ---------------------------------------------------------------------
    def _start(self, tag: str, attr: dict[str, str]) -> None:
        s = self.stats
        if tag == "font" and "face" in attr and not _FONT_FACE_OK.match(attr["face"]):
            s.tests.add("font_face_bad")
        if tag == "img":
            if s.inside.get("a", 0) > 0 and s.anchor:
                s.anchor[-1] += "<img>\n"
            if "width" in attr and "height" in attr:
                s.image_area += _dimension(attr["width"], 8) * _dimension(attr["height"], 6)
        elif tag in ("object", "embed"):
            s.tests.add("embeds")
        elif tag == "a":
            s.anchor.append("")
        elif tag == "title":
            s.title.append("")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag(tag, attrs, 1)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag(tag, attrs, 1)  # <img ... /> opens, as HTML::Parser reports it

    def handle_endtag(self, tag: str) -> None:
        self._tag(tag, [], -1)

    def handle_data(self, data: str) -> None:
        s = self.stats
        inside = s.inside
        if inside.get("script", 0) > 0 or inside.get("style", 0) > 0:
            return
        if inside.get("a", 0) > 0 and s.anchor:
            s.anchor[-1] += data
        if inside.get("title", 0) > 0 and s.title:
            s.title[-1] += data
        if data.strip(_NBSP_SPACE_CHARS):  # some character that is not (nbsp) space
            self._invisible()
        if self.last_text is not None and _WORD_START.match(data) and _WORD_END.search(self.last_text):
            s.obfuscation += 1
        self.last_text = data

    def handle_comment(self, data: str) -> None:
        self.stats.comment.append(f"<!--{data}-->")

    def handle_decl(self, decl: str) -> None:
        if decl.lower().startswith("doctype"):
            s = self.stats
            s.tags += 1
            s.elements += 1
            s.inside["!doctype"] = 0


def name_to_rgb(color: str) -> str:
    """A color name, ``#hex``/shorthand or ``rgb()`` value as ``#rrggbb``, else "invalid"."""
    color = color.lower().strip()
    if color in NAMED_COLORS:
        return NAMED_COLORS[color]
    if not _COLOR_SYNTAX.search(color):
        return "invalid"
    m = _RGB_PERCENT.search(color)
    if m:
        color = "#" + "".join(f"{int(int(x) / 100 * 255):02x}" for x in m.groups())
    m = _RGB_DECIMAL.search(color)
    if m:
        color = "#" + "".join(f"{int(x):02x}" for x in m.groups())
    if not color.startswith("#"):
        return "invalid"
    digits = re.sub(r"[^a-f0-9]", "", color)[:6]
    if 3 < len(digits) < 6:
        digits = digits[:3]
    if len(digits) % 3:
        digits += "0" * (3 - len(digits) % 3)
    if len(digits) == 3:
        digits = "".join(ch * 2 for ch in digits)
    return "#" + digits


def css_background_layers(value: str) -> list[list[str]]:
    """A CSS ``background`` value split into comma-separated layers of space-separated
    values, keeping parentheses and quotes together (``rgb(1, 2, 3)`` is one value)."""
    layers: list[list[str]] = []
    tokens: list[str] = []
    token = ""
    closers: list[str] = []
    for ch in value:
        if closers:
            token += ch
            if ch == closers[-1]:
                closers.pop()
            elif ch in "\"'" and closers[-1] == ")":
                closers.append(ch)
            continue
        if ch == " ":
            if token:
                tokens.append(token)
            token = ""
        elif ch == ",":
            if token:
                tokens.append(token)
            token = ""
            layers.append(tokens)
            tokens = []
        else:
            token += ch
            if ch in "(\"'":
                closers.append(")" if ch == "(" else ch)
    if token:
        tokens.append(token)
    if tokens:
        layers.append(tokens)
    return layers


def _dimension(value: str, percent_scale: int) -> int:
    """An <img> width/height in pixels; percentages of an 800x600 screen; unknown is 200."""
    m = _DIMENSION.match(value)
    size = int(m.group(1)) * (percent_scale if m.group(2) else 1) if m else 0
    return size if size > 0 else 200


def html_stats(html: str, rendered: str) -> HtmlStats:
    """Statistics of one HTML part (``rendered`` is its text as filterd renders it)."""
    stats = HtmlStats(length=len(html))
    stats.non_space_len = len("".join(rendered.split()))  # split() drops what isspace() is
    parser = _StatsParser(stats)
    source = _SELF_CLOSING.sub(r"<\1>", defuse_markup(html[:MAX_HTML_CHARS]).replace("&nbsp;", " "))
    try:
        parser.feed(source)
        parser.close()
    except (AssertionError, ValueError):  # malformed markup: keep what was counted
        pass
    return stats


def message_html_stats(v: MessageViews) -> list[HtmlStats]:
    """The statistics of every text/html part of the message, computed once per message."""
    return v.shared(_all_html_stats)


def _all_html_stats(v: MessageViews) -> list[HtmlStats]:
    return [html_stats(p.html, p.text or "") for p in v.msg.parts if p.html is not None]


# -- HTMLEval -------------------------------------------------------------------------
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "==": operator.eq, "!=": operator.ne,
}
_EXPR = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*([+-]?\d+)\s*$")


def _compare(value: float, expr: str) -> bool:
    m = _EXPR.match(expr)
    return m is not None and _COMPARE[m.group(1)](value, float(m.group(2)))


def _range_value_ok(args: tuple[str, ...]) -> bool:
    return len(args) in (2, 3) and all(is_number(a) or a == "inf" for a in args[1:])


def _html_range(v: MessageViews, args: tuple[str, ...]) -> bool:
    """html_range(test, min[, max]): some part has min < value <= max ('inf'/none: open)."""
    name, low = args[0], float(args[1])
    high = args[2] if len(args) > 2 else "inf"
    for stats in message_html_stats(v):
        value = stats.value(name)
        if value is None:
            continue
        if high == "inf":
            if value > low:
                return True
        elif low < value <= float(high):
            return True
    return False


def _html_eval(v: MessageViews, args: tuple[str, ...]) -> bool:
    """html_eval(test, 'OP number'): some part's statistic compares true."""
    for stats in message_html_stats(v):
        value = stats.value(args[0])
        if value is not None and _compare(value, args[1]):
            return True
    return False


def _html_tag_balance(v: MessageViews, args: tuple[str, ...]) -> bool:
    """html_tag_balance(tag, 'OP number'): open minus closed count of a tag that occurs."""
    tag = args[0].lower()
    return any(tag in s.inside and _compare(s.inside[tag], args[1]) for s in message_html_stats(v))


def _html_image_ratio(v: MessageViews, args: tuple[str, ...]) -> bool:
    """html_image_ratio(min, max): visible characters per pixel of image in (min, max]."""
    low, high = float(args[0]), float(args[1])
    for stats in message_html_stats(v):
        if stats.image_area > 0 and low < stats.non_space_len / stats.image_area <= high:
            return True
    return False


def _html_text_match(v: MessageViews, args: tuple[str, ...]) -> bool:
    """html_text_match('anchor'|'comment'|'title', regex): some such text matches."""
    pattern = _compile(args[1])
    if pattern is None:
        return False
    for stats in message_html_stats(v):
        texts: list[str] = getattr(stats, args[0])
        if any(pattern.search(text.encode("utf-8", "surrogateescape")) for text in texts):
            return True
    return False


@functools.lru_cache(maxsize=256)
def _compile(source: str) -> regex.Pattern[bytes] | re.Pattern[bytes] | None:
    """The rule's Perl regex (SpamAssassin matches the texts as UTF-8 octets)."""
    try:
        return make_perl_regex(source).compile()
    except PerlRegexError:
        return None


def html_test_flag(v: MessageViews, args: tuple[str, ...]) -> bool:
    """html_test(flag) for the flags of :data:`HTML_TEST_FLAGS`: some HTML part set it."""
    return any(args[0] in stats.tests for stats in message_html_stats(v))


def _html_title_subject_ratio(v: MessageViews, args: tuple[str, ...]) -> bool:
    """html_title_subject_ratio(r): an HTML <title> over r times longer than the Subject."""
    subject = v.msg.subject
    if not subject:
        return False
    ratio = float(args[0])
    for stats in message_html_stats(v):
        longest = max((len(t) / len(subject) for t in stats.title if t), default=0.0)
        if longest > ratio:
            return True
    return False


# -- BodyEval: multipart/alternative difference ----------------------------------------
@dataclass(frozen=True)
class AltDiff:
    """How much of an HTML alternative the plain-text alternative does not say."""

    percent: float  # highest share (0-100) of HTML words missing from the text part
    html_words: int  # distinct words of the HTML side of the last alternative compared
    text_words: int


def _alternatives(msg: Message) -> Iterator[list[int]]:
    """For each multipart/alternative, the indexes into ``msg.parts`` of its leaves.

    Walks the MIME tree in the order (and with the depth limit) :class:`Message` uses to
    build ``parts``, so leaf number i is ``msg.parts[i]``.
    """
    counter = [0]
    found: list[list[int]] = []

    def walk(node: EmailMessage, depth: int) -> None:
        if depth > 20:
            return
        if not node.is_multipart():
            counter[0] += 1
            return
        start = counter[0]
        payload = node.get_payload()
        if isinstance(payload, list):
            for child in payload:
                if isinstance(child, EmailMessage):
                    walk(child, depth + 1)
        if node.get_content_type() == "multipart/alternative":
            found.append(list(range(start, counter[0])))

    walk(msg.tree, 0)
    return iter(found)


def alternative_difference(msg: Message) -> AltDiff:
    """SpamAssassin's ``_multipart_alternative_difference``.

    Words are white-space separated pieces with a word character, counted per side; an
    HTML word the text side has at least as often is "said"; an HTML side with no words
    but an image counts as one unsaid word. Exchange meeting requests (an alternative of
    exactly text/html and text/calendar) are ignored, as SpamAssassin does.
    """
    percent, html_n, text_n = 0.0, 0, 0
    parts = msg.parts
    leaves = [p.content_type for p in parts]
    if msg.tree.get_content_type() == "multipart/alternative" and leaves == ["text/html", "text/calendar"]:
        return AltDiff(0.0, 0, 0)
    for indexes in _alternatives(msg):
        html: dict[str, int] = {}
        text: dict[str, int] = {}
        for i in indexes:
            if i >= len(parts) or parts[i].text is None:
                continue
            part = parts[i]
            side = html if part.html is not None else text
            for word in (part.text or "").split():
                if _HAS_WORD_CHAR.search(word):
                    side[word] = side.get(word, 0) + 1
            if part.html is not None and not html and re.search(r"<img(?=[\s/>])", part.html, re.I):
                html["\n"] = 1
        if not html:
            continue
        html_n, text_n = len(html), len(text)
        unsaid = sum(1 for w, n in html.items() if n - text.get(w, 0) >= 1)
        percent = max(percent, unsaid / len(html) * 100)
    return AltDiff(percent, html_n, text_n)


_HAS_WORD_CHAR = re.compile(r"\w")


def _alt_diff(v: MessageViews) -> AltDiff:
    return v.shared(_alternative_difference_of)


def _alternative_difference_of(v: MessageViews) -> AltDiff:
    return alternative_difference(v.msg)


def _multipart_alternative_difference(v: MessageViews, args: tuple[str, ...]) -> bool:
    """multipart_alternative_difference(min, max): min < percent <= max (min 0: from 0)."""
    d = _alt_diff(v)
    low, high = float(args[0]), args[1]
    return (low == 0 or d.percent > low) and (high == "undef" or d.percent <= float(high))


def _multipart_alternative_difference_count(v: MessageViews, args: tuple[str, ...]) -> bool:
    """multipart_alternative_difference_count(ratio, minhtml): the text side has over
    ``ratio`` times the HTML side's distinct words, and the HTML side over ``minhtml``."""
    d = _alt_diff(v)
    return d.html_words > float(args[1]) and d.text_words / d.html_words > float(args[0])


_HTML_STATS = ("length", "max_size", "image_area", "non_space_len", "closed_extra_ratio",
               "bad_tag_ratio", "obfuscation_ratio", "non_element_ratio")
_HTML_TEXTS = ("anchor", "comment", "title")
HTML_TEST_FLAGS = ("embeds", "font_low_contrast", "font_invalid_color", "font_face_bad")


def _accepts_compare(args: tuple[str, ...], names: tuple[str, ...] | None) -> bool:
    return (len(args) == 2 and (names is None or args[0] in names)
            and bool(_EXPR.match(args[1])))


#: name -> (function, argument check); evals.py adds these to its NATIVE_EVALS.
HTML_EVAL_FUNCTIONS: dict[str, tuple[Callable[[MessageViews, tuple[str, ...]], bool],
                                     Callable[[tuple[str, ...]], bool]]] = {
    "html_range": (_html_range, lambda a: bool(a) and a[0] in _HTML_STATS and _range_value_ok(a)),
    "html_eval": (_html_eval, lambda a: _accepts_compare(a, _HTML_STATS)),
    "html_tag_balance": (_html_tag_balance, lambda a: _accepts_compare(a, None) and a[0].isalnum()),
    "html_image_ratio": (_html_image_ratio, lambda a: len(a) == 2 and all(is_number(x) for x in a)),
    "html_text_match": (_html_text_match,
                        lambda a: len(a) == 2 and a[0] in _HTML_TEXTS and _compile(a[1]) is not None),
    "html_title_subject_ratio": (_html_title_subject_ratio, lambda a: len(a) == 1 and is_number(a[0])),
    "multipart_alternative_difference": (
        _multipart_alternative_difference,
        lambda a: len(a) == 2 and is_number(a[0]) and (a[1] == "undef" or is_number(a[1]))),
    "multipart_alternative_difference_count": (
        _multipart_alternative_difference_count, lambda a: len(a) == 2 and all(is_number(x) for x in a)),
}
