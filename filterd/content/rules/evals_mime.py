"""SpamAssassin's MIME structure eval tests (``Plugin::MIMEEval``), natively.

SpamAssassin walks every MIME node once (``_check_attachments``) and records counters
that several eval tests read: how many text/html and other text parts, base64 and
quoted-printable parts, attachments, over-long quoted-printable lines, base64-encoded
plain ASCII text, the plain/HTML size ratio of a multipart/alternative, and the longest
base64 line (``check_base64_length``: encoders wrap at 76). Many shipped
metas negate these (``!__MIME_QP``, ``!__MIME_ATTACHMENT``, ``!__MIME_HTML``), so an
approximation is not harmless: the counters below follow MIMEEval.pm, quirks included
(see :class:`MimeSummary`), computed once per message (``MessageViews.shared``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message as EmailMessage

from filterd.content.rules.evalargs import is_number
from filterd.content.rules.views import MessageViews

_ASCII_CHARSET = re.compile(
    r"(?:us-ascii|ansi_x3\.4-1968|iso-ir-6|ansi_x3\.4-1986|iso_646\.irv:1991|ascii|iso646-us|us"
    r"|ibm367|cp367|csascii)")
# quoted-printable escapes of characters that never needed escaping (SpamAssassin's count)
_NEEDLESS_QP = re.compile(r"=(?:09|3[0-9ABCEF]|[2456][0-9A-F]|7[0-9A-E])")
_TRAILING_QP_SPACE = re.compile(r"((?:=09|=20)+)\s*$")
#: RFC 5322's 78 characters plus the newline, as SpamAssassin measures (bug 5491).
QP_MAX_LINE = 79
MAX_DEPTH = 20


@dataclass
class MimeSummary:
    """The counters of SpamAssassin's ``_check_attachments`` for one message.

    ``qp_count`` is SpamAssassin's ``mime_qp_count``: the number of quoted-printable
    parts, replaced, as soon as any quoted-printable body line exists, by the number of
    needless escapes (``=41`` for "A") in those lines. So ``__MIME_QP`` means "quoted-
    printable that encodes plain characters", which is what its score was trained on.
    """

    html_count: int = 0
    text_count: int = 0
    base64_count: int = 0
    qp_count: int = 0
    attachment: int = 0
    base64_encoded_text: bool = False
    qp_long_line: bool = False
    multipart_ratio: float = 1.0
    base64_max_line: int = 0  # longest line of a base64 leaf (newline included)

    def flag(self, name: str) -> bool:
        """check_for_mime(name): the counter is present and non-zero."""
        return bool({
            "mime_base64_count": self.base64_count,
            "mime_qp_count": self.qp_count,
            "mime_attachment": self.attachment,
            "mime_base64_encoded_text": self.base64_encoded_text,
            "mime_qp_long_line": self.qp_long_line,
        }[name])


SUPPORTED_FLAGS = ("mime_base64_count", "mime_qp_count", "mime_attachment",
                   "mime_base64_encoded_text", "mime_qp_long_line")


def _nodes(node: EmailMessage, depth: int = 0) -> Iterator[EmailMessage]:
    """Every MIME node, containers included, depth first (SpamAssassin's find_parts)."""
    yield node
    if depth >= MAX_DEPTH or not node.is_multipart():
        return
    payload = node.get_payload()
    if isinstance(payload, list):
        for child in payload:
            if isinstance(child, EmailMessage):
                yield from _nodes(child, depth + 1)


def _header(node: EmailMessage, name: str) -> str:
    value = node.get(name)
    return str(value).strip().lower() if value is not None else ""


def _raw_lines(node: EmailMessage) -> list[str]:
    """A leaf's body as transmitted (still encoded), one string per line, CRs dropped."""
    payload = node.get_payload()
    if not isinstance(payload, str):
        return []
    return payload.replace("\r\n", "\n").splitlines(keepends=True)


def mime_summary(tree: EmailMessage) -> MimeSummary:
    """Walk the MIME tree once and count what MIMEEval.pm counts."""
    s = MimeSummary()
    alternative = False
    qp_bytes = qp_escapes = 0
    leaf_types: list[str] = []
    leaf_bytes: list[int | None] = []
    for node in _nodes(tree):
        ctype = node.get_content_type()
        cte = _header(node, "Content-Transfer-Encoding")
        cd = _header(node, "Content-Disposition")
        charset = (node.get_content_charset() or "").lower()
        if ctype == "multipart/alternative":
            alternative = True
        if ctype == "text/html":
            s.html_count += 1
        elif ctype.startswith("text"):
            s.text_count += 1
        if "base64" in cte:
            s.base64_count += 1
        elif "quoted-printable" in cte:
            s.qp_count += 1
        if "attachment" in cd:
            s.attachment += 1
        if (ctype.startswith("text") and "base64" in cte
                and (not charset or _ASCII_CHARSET.search(charset))
                and not cd.startswith(("attachment", "inline"))):
            s.base64_encoded_text = True
        if node.is_multipart():
            continue
        counted = alternative and "attachment" not in cd and ctype in ("text/plain", "text/html")
        size: int | None = None if "attachment" in cd else 0
        base64_lines = cte == "base64" and ctype != "application/ics"  # calendar invites: FPs
        qp = cte == "quoted-printable"
        # bodies are split into lines only for the counters that read them
        lines = _raw_lines(node) if counted or qp or base64_lines else []
        if base64_lines and lines:
            s.base64_max_line = max(s.base64_max_line, max(map(len, lines)))
        if counted:
            size = sum(map(len, lines))
        for line in lines if qp else ():
            if not line.startswith("SPAM: "):
                if len(line) > QP_MAX_LINE:
                    s.qp_long_line = True
                qp_bytes += len(line)
                if "=" in line:
                    found = len(_NEEDLESS_QP.findall(line))
                    if found:
                        trailing = _TRAILING_QP_SPACE.search(line)
                        qp_escapes += found - (len(trailing.group(1)) // 3 if trailing else 0)
        leaf_types.append(ctype)
        leaf_bytes.append(size)
    if qp_bytes:
        s.qp_count = qp_escapes
    if alternative:
        s.multipart_ratio = _alternative_ratio(leaf_types, leaf_bytes, s.multipart_ratio)
    return s


def _alternative_ratio(types: list[str], sizes: list[int | None], default: float) -> float:
    """Plain-text bytes over HTML bytes of the last text/plain and text/html leaves."""
    html = text = None
    for ctype, size in zip(reversed(types), reversed(sizes)):
        if size is None:
            continue
        if html is None and ctype == "text/html":
            html = size
        elif text is None and ctype == "text/plain":
            text = size
        if html is not None and text is not None:
            break
    if text is not None and html:
        return text / html
    return default


def summary(v: MessageViews) -> MimeSummary:
    return v.shared(_message_mime_summary)


def _message_mime_summary(v: MessageViews) -> MimeSummary:
    return mime_summary(v.msg.tree)


def _html_content_type(v: MessageViews) -> bool:
    return v.msg.get("Content-Type").strip().lower().startswith("text/html")


def _check_for_mime(v: MessageViews, args: tuple[str, ...]) -> bool:
    """check_for_mime(counter)."""
    return summary(v).flag(args[0])


def _check_for_mime_html(v: MessageViews, args: tuple[str, ...]) -> bool:
    """check_for_mime_html(): the message is text/html or has a text/html part."""
    return _html_content_type(v) or summary(v).html_count > 0


def text_part_counts(v: MessageViews) -> tuple[int, int]:
    """(text/html nodes, other text/* nodes), as :class:`MimeSummary` counts them.

    Only content types are needed, so when the full summary (which reads every body
    line) has not been made for another test, the tree is walked without reading bodies.
    """
    done = v.shared_if_done(_message_mime_summary)
    if done is not None:
        return done.html_count, done.text_count
    html = text = 0
    for node in _nodes(v.msg.tree):
        ctype = node.get_content_type()
        if ctype == "text/html":
            html += 1
        elif ctype.startswith("text"):
            text += 1
    return html, text


def _check_for_mime_html_only(v: MessageViews, args: tuple[str, ...]) -> bool:
    """check_for_mime_html_only(): text/html parts and no other text part."""
    if _html_content_type(v):
        return True
    html, text = text_part_counts(v)
    return html > 0 and text == 0


def _check_mime_multipart_ratio(v: MessageViews, args: tuple[str, ...]) -> bool:
    """check_mime_multipart_ratio(min, max): min <= plain/HTML size < max."""
    ratio = summary(v).multipart_ratio
    return float(args[0]) <= ratio < float(args[1])


def _check_base64_length(v: MessageViews, args: tuple[str, ...]) -> bool:
    """check_base64_length(min[, max]): the longest base64 line is min..max characters."""
    longest = summary(v).base64_max_line
    if len(args) > 1 and longest > float(args[1]):
        return False
    return longest >= float(args[0])


#: name -> (function, argument check); evals.py adds these to its NATIVE_EVALS.
MIME_EVAL_FUNCTIONS: dict[str, tuple[Callable[[MessageViews, tuple[str, ...]], bool],
                                     Callable[[tuple[str, ...]], bool]]] = {
    "check_for_mime": (_check_for_mime, lambda a: len(a) == 1 and a[0] in SUPPORTED_FLAGS),
    "check_for_mime_html": (_check_for_mime_html, lambda a: not a),
    "check_for_mime_html_only": (_check_for_mime_html_only, lambda a: not a),
    "check_mime_multipart_ratio": (_check_mime_multipart_ratio,
                                   lambda a: len(a) == 2 and all(is_number(x) for x in a)),
    "check_base64_length": (_check_base64_length,
                            lambda a: len(a) in (1, 2) and all(is_number(x) for x in a)),
}
