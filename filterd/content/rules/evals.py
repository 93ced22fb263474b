"""The few SpamAssassin ``eval:`` tests filterd implements natively.

Chosen for value on real mail and because the message model already has what they
need: missing To, all-caps Subjects, shouting bodies, HTML-only messages, header counts,
8-bit garbage in headers, envelope/From agreement, the trust test most metas negate, and
the Date:-versus-Received: skew (DATE_IN_PAST/DATE_IN_FUTURE).
Each follows the SpamAssassin plugin function of the same name; where filterd must
approximate, the docstring says how. The HTML statistics tests (html_range, html_eval,
html_tag_balance, html_text_match, ...) and multipart_alternative_difference live in
:mod:`filterd.content.rules.evals_html`, the MIME counters (check_for_mime,
check_for_mime_html[_only], check_mime_multipart_ratio, check_base64_length) in
:mod:`filterd.content.rules.evals_mime`, recipient-list, template, Outlook Message-ID and
forged-webmail Received: tests in :mod:`filterd.content.rules.evals_headers`, the FreeMail
plugin's tests in :mod:`filterd.content.rules.evals_freemail`. Every other
eval function loads as unsupported.
"""

from __future__ import annotations

import email.utils
import ipaddress
import re
from dataclasses import dataclass
from typing import Callable

from filterd.content.rules.evalargs import is_number
from filterd.content.rules.evals_freemail import FREEMAIL_EVAL_FUNCTIONS
from filterd.content.rules.evals_headers import HEADER_EVAL_FUNCTIONS
from filterd.content.rules.evals_html import (
    HTML_EVAL_FUNCTIONS,
    HTML_TEST_FLAGS,
    html_test_flag,
)
from filterd.content.rules.evals_mime import MIME_EVAL_FUNCTIONS
from filterd.content.rules.relays import is_private_ip
from filterd.content.rules.views import MessageViews

EvalFn = Callable[[MessageViews, tuple[str, ...]], bool]

_REPLY_PREFIX = re.compile(r"^(?:(?:Re|Fwd|Fw|Aw|Antwort|WG|SV|VB|VS|VL):\s*)+", re.I)
# SpamAssassin's CHARSETS_LIKELY_TO_FP_AS_CAPS: scripts without case
_CAPS_FP_CHARSETS = re.compile(
    rb"=\?(?:ISO-2022-JP|EUC-KR|EUC-JP|SHIFT[-_]?JIS|GB2312|GBK|BIG5|KOI8-R|windows-125[1-6]|"
    rb"iso-8859-[5-8]|utf-8)\?", re.I)
_BASE64_LINE = re.compile(rb"^(?:[A-Za-z0-9+/=]{60,76} ){2}")
_INNER_SPACE = re.compile(rb"\S\s+\S")
_ILLEGAL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\xff]")
_NON_ASCII = re.compile(rb"[\x80-\xff]")
_CONTROLS = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_LOWER_OR_DIGIT = b"abcdefghijklmnopqrstuvwxyz0123456789"
_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class NativeEval:
    """An implemented eval function and the argument shapes it accepts."""

    fn: EvalFn
    accepts: Callable[[tuple[str, ...]], bool] = lambda args: True


def _missing_to(v: MessageViews, args: tuple[str, ...]) -> bool:
    return not (v.msg.get("To").strip() or v.msg.get("Apparently-To").strip())


def _subject_all_caps(v: MessageViews, args: tuple[str, ...]) -> bool:
    subject = _REPLY_PREFIX.sub("", v.msg.subject.strip())
    if not re.search(r"\s", subject) or len(subject) < 10:
        return False
    letters = re.sub(r"[^a-zA-Z]", "", subject)
    if any(_CAPS_FP_CHARSETS.search(raw.encode("utf-8", "surrogateescape")) for raw in v.msg.get_all_raw("Subject")):
        return False
    return bool(letters) and letters == letters.upper()


def uppercase_percent(lines: list[bytes]) -> float:
    """Percentage of upper-case letters in body lines with inner spaces (>= 200 bytes).

    Lower counts ``a-z`` and digits, upper ``A-Z``, over the lines that have white space
    between non-space characters and do not start like base64. The bytes are counted by
    deleting each class with ``bytes.translate`` (C speed) rather than walking them.
    """
    kept = b"".join(line for line in lines if _INNER_SPACE.search(line) and not _BASE64_LINE.match(line))
    if len(kept) < 200:
        return 0.0
    without_lower = kept.translate(None, _LOWER_OR_DIGIT)
    lower = len(kept) - len(without_lower)
    upper = len(without_lower) - len(without_lower.translate(None, _UPPER))
    if upper + lower == 0:
        return 0.0
    return upper / (upper + lower) * 100


def _uppercase(v: MessageViews, args: tuple[str, ...]) -> bool:
    """check_for_uppercase(min, max): min < upper-case percentage <= max (once per message)."""
    low, high = float(args[0]), float(args[1])
    return low < v.shared(_body_uppercase_percent) <= high


def _body_uppercase_percent(v: MessageViews) -> float:
    return uppercase_percent(v.body_lines)


def _header_count_range(v: MessageViews, args: tuple[str, ...]) -> bool:
    count = len(v.msg.get_all_raw(args[0]))
    return int(args[1]) <= count <= int(args[2])


def _illegal_chars(v: MessageViews, args: tuple[str, ...]) -> bool:
    header, ratio, count = args[0], float(args[1]), int(args[2])
    spec = header if header.endswith(":raw") else header + ":raw"
    data = v.header(spec) or b""
    if not data.strip():
        return False
    if _NON_ASCII.search(data) and not _CONTROLS.search(data):
        try:
            data.decode("utf-8")
            return False  # valid UTF-8 (SMTPUTF8 style) is not illegal
        except UnicodeDecodeError:
            pass
    illegal = len(_ILLEGAL.findall(data))
    if illegal and spec.lower() == "subject:raw" and sum(data.count(c) for c in (b"\xa2", b"\xa3", b"\xae")) == 1:
        illegal -= 1
    return illegal / len(data) >= ratio and illegal >= count


def _html_test(v: MessageViews, args: tuple[str, ...]) -> bool:
    """html_test('html'): the message has HTML text; other flags: see evals_html."""
    if args[0] == "html":
        return any(p.html is not None for p in v.msg.text_parts)
    return html_test_flag(v, args)


def _html_tag_exists(v: MessageViews, args: tuple[str, ...]) -> bool:
    """html_tag_exists(tag): the HTML source of some part has that element."""
    tag = re.compile(rf"<{re.escape(args[0])}(?=[\s/>])", re.I)
    return any(p.html is not None and tag.search(p.html) for p in v.msg.text_parts)


def _body_length(v: MessageViews, args: tuple[str, ...]) -> bool:
    return len(v.msg.body_bytes) < int(args[0])


def _all_trusted(v: MessageViews, args: tuple[str, ...]) -> bool:
    """Approximation without trusted_networks: every relay and the client are private.

    filterd runs at the border, so mail that crossed the Internet is never all-trusted;
    mail that only ever touched loopback/private addresses is.
    """
    ips = v.received_ips
    client = v.msg.envelope.client_address
    if not ips:
        return False
    if any(not (ip.is_private or ip.is_loopback) for ip in ips):
        return False
    if client:
        try:
            addr = ipaddress.ip_address(client)
        except ValueError:
            return False
        return addr.is_private or addr.is_loopback
    return True


def _env_matches_from(v: MessageViews, args: tuple[str, ...]) -> bool:
    sender = (v.msg.envelope.sender or "").lower()
    froms = [a.lower() for _, a in email.utils.getaddresses(v.msg.get_all("From")) if a]
    return bool(sender) and sender in froms


# Received: dates as SpamAssassin finds them: "Tue, 20 Aug 2002 10:51:32 -0400" near the end
_RECEIVED_DATE = re.compile(r"(\s.?\d+ \S\S\S \d+ \d+:\d+:\d+ \S+)")
_LOCAL_FIRST_HOP = re.compile(r"\bfrom (?:localhost\s|(?:\S+ ){1,2}\S*\b127\.0\.0\.1\b)|qmail \d+ invoked by uid \d+")
_FETCHMAIL_HOP = re.compile(r"\bby localhost with \w+ \(fetchmail-[\d.]+")


def _parse_date(text: str) -> float | None:
    """An RFC 822 date as a Unix time, or None (SpamAssassin's parse_rfc822_date, roughly)."""
    try:
        parsed = email.utils.parsedate_tz(text.strip())
    except (ValueError, IndexError, TypeError):
        return None
    if parsed is None or parsed[0] < 1970:
        return None
    try:
        return float(email.utils.mktime_tz(parsed))
    except (OverflowError, ValueError):
        return None


def date_diff(v: MessageViews) -> float:
    """Seconds by which Date: is ahead of the Received: date nearest to it (0 if unknown).

    SpamAssassin's ``_check_date_diff``: Resent-Date beats Date; local hops at the top
    (localhost, qmail's ``invoked by uid``, fetchmail) are set aside; the bottom Received
    is ignored when it agrees exactly; the smallest absolute difference wins. It compares
    the message with itself, never with the clock, so replaying old mail is safe.
    """
    date = None
    for name in ("Resent-Date", "Date"):
        for value in v.msg.get_all(name):
            if value.strip():
                date = _parse_date(value)
            if date is not None:
                break
        if date is not None:
            break
    if date is None:
        return 0.0
    received = [r for r in (re.sub(r"\s+", " ", x) for x in v.msg.get_all("Received")) if r.strip()]
    if received and _LOCAL_FIRST_HOP.search(received[0]):
        local = received.pop(0)
        if received and _FETCHMAIL_HOP.search(received[0]):
            received.pop(0)
        else:
            received.insert(0, local)
    times = [t for t in (_parse_date(m.group(1)) for r in received for m in [_RECEIVED_DATE.search(r)] if m)
             if t is not None]
    if not times:
        return 0.0
    diffs = [date - t for t in times]
    if len(diffs) > 1 and diffs[-1] == 0:
        diffs.pop()
    return min(diffs, key=abs)


def _shifted_date(v: MessageViews, args: tuple[str, ...]) -> bool:
    """check_for_shifted_date(min, max): min <= Date-Received skew < max hours ('undef' = open)."""
    diff = v.shared(date_diff)
    low, high = args
    return (low == "undef" or diff >= 3600 * float(low)) and (high == "undef" or diff < 3600 * float(high))


def _html_image_only(v: MessageViews, args: tuple[str, ...]) -> bool:
    """html_image_only(min, max): an HTML part with an <img> and min < its length <= max.

    As in SpamAssassin's HTML parser, the length is that of the HTML source (tags
    included), not of the rendered text: a few hundred bytes of HTML around an image is
    what image-only spam looks like; a newsletter with pictures is much longer.
    """
    low, high = float(args[0]), float(args[1])
    img = re.compile(r"<img(?=[\s/>])", re.I)
    for part in v.msg.text_parts:
        if part.html is not None and low < len(part.html) <= high and img.search(part.html):
            return True
    return False


def _to_in_subject(v: MessageViews, args: tuple[str, ...]) -> bool:
    """check_for_to_in_subject('user'|'address'): the Subject addresses the recipient by name.

    'address': the whole To: address appears in the Subject; 'user': the Subject is, ends
    with, or starts with the To: local part as a salutation ("bob: your invoice").
    """
    addrs = [a for _, a in email.utils.getaddresses(v.msg.get_all("To")) if a]
    if not addrs:
        return False
    full_to = "\n".join(addrs)
    subject = v.msg.subject
    if args[0] == "address":
        return re.search(rf"\b{re.escape(full_to)}\b", subject, re.I) is not None
    to = re.escape(full_to.split("@", 1)[0])
    pattern = (rf"^(?:(?:re|fw):\s*(?:\w+\s+)?{to}$|(?-i:{to})\s*[,:;!?-](?:$|\s)|{to}$"
               rf"|,\s*{to}[,:;!?-]$)")
    return re.search(pattern, subject, re.I) is not None


_IPV4_FULL = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")


def _public_ipv4(text: str) -> bool:
    return bool(_IPV4_FULL.match(text)) and not is_private_ip(text)


def _helo_ip_mismatch(v: MessageViews, args: tuple[str, ...]) -> bool:
    """helo_ip_mismatch(): an untrusted hop said HELO with a public IP outside its own /24."""
    for relay in v.relay_path.untrusted:
        if _public_ipv4(relay.helo) and _public_ipv4(relay.ip) and relay.helo != relay.ip:
            prefix = relay.helo.rsplit(".", 1)[0] + "."
            if not relay.ip.startswith(prefix):
                return True
    return False


NATIVE_EVALS: dict[str, NativeEval] = {
    "check_for_missing_to_header": NativeEval(_missing_to),
    "subject_is_all_caps": NativeEval(_subject_all_caps),
    "check_for_uppercase": NativeEval(_uppercase, lambda a: len(a) == 2 and all(is_number(x) for x in a)),
    "check_header_count_range": NativeEval(
        _header_count_range, lambda a: len(a) == 3 and a[1].isdigit() and a[2].isdigit()),
    "check_illegal_chars": NativeEval(
        _illegal_chars, lambda a: len(a) == 3 and is_number(a[1]) and a[2].isdigit()),
    "html_test": NativeEval(_html_test, lambda a: len(a) == 1 and (a[0] == "html" or a[0] in HTML_TEST_FLAGS)),
    "html_tag_exists": NativeEval(_html_tag_exists, lambda a: len(a) == 1 and a[0].isalnum()),
    "check_body_length": NativeEval(_body_length, lambda a: len(a) == 1 and a[0].isdigit()),
    "check_all_trusted": NativeEval(_all_trusted),
    "check_for_matching_env_and_hdr_from": NativeEval(_env_matches_from),
    "html_image_only": NativeEval(_html_image_only, lambda a: len(a) == 2 and all(is_number(x) for x in a)),
    "check_for_to_in_subject": NativeEval(_to_in_subject, lambda a: a in (("user",), ("address",))),
    "helo_ip_mismatch": NativeEval(_helo_ip_mismatch),
    "check_for_shifted_date": NativeEval(
        _shifted_date, lambda a: len(a) == 2 and all(x == "undef" or is_number(x) for x in a)),
    **{name: NativeEval(fn, accepts)
       for table in (HTML_EVAL_FUNCTIONS, MIME_EVAL_FUNCTIONS, HEADER_EVAL_FUNCTIONS, FREEMAIL_EVAL_FUNCTIONS)
       for name, (fn, accepts) in table.items()},
}


