"""SpamAssassin's recipient-list and template header eval tests (``Plugin::HeaderEval``).

* ``sorted_recipients`` / ``similar_recipients``: ratware that mails a sorted address
  list, or many addresses that start alike ("aa..@", "ab..@" from a dictionary run).
* ``check_unresolved_template``: a header still holding a mailer's ``%FIELD`` placeholder.
* ``check_outlook_message_id``: an Outlook-style Message-ID whose embedded timestamp fits
  neither the Date: nor the first Received: time (forged by ratware imitating Outlook).
* ``check_for_forged_{yahoo,hotmail,gmail,juno,eudoramail}_received_headers``,
  ``check_for_no_hotmail_received_headers``, ``check_for_fake_aol_relay_in_rcvd``: a From:
  at a big webmail provider whose Received: chain lacks that provider's own hops (or HELO
  names it without being it), unless the mail came through a list manager that strips
  Received: fields (``gated_through_received_hdr_remover``).

All follow HeaderEval.pm's logic and constants.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Callable

from filterd.content.rules.evalargs import is_number
from filterd.content.rules.views import MessageViews

#: HeaderEval.pm's "best experimentally derived values".
TOCC_SORTED_COUNT = 7
TOCC_SIMILAR_COUNT = 5
TOCC_SIMILAR_LENGTH = 2
MAX_ADDRESSES = 256


def recipients(v: MessageViews) -> list[str]:
    """To+Cc addresses (Bcc too if fewer than 5), neighbouring duplicates dropped."""
    inputs: list[str] = []
    for names in (("To", "Cc"), ("Bcc",)):
        values = [value for name in names for value in v.msg.get_all(name)]
        inputs += [addr for _, addr in email.utils.getaddresses(values) if addr]
        if len(inputs) >= TOCC_SIMILAR_COUNT:
            break
    out: list[str] = []
    previous = ""
    for current in inputs:
        if current.lower() != previous.lower():
            out.append(current)
            previous = current
            if len(out) == MAX_ADDRESSES:
                break
    return out


def _addresses(v: MessageViews) -> list[str]:
    return v.shared(recipients)


def similarity(addresses: list[str]) -> float:
    """Share of address pairs whose users, or (different) hosts, start with the same 2 chars."""
    if len(addresses) < TOCC_SIMILAR_COUNT:
        return 0.0
    users = [a[:TOCC_SIMILAR_LENGTH] for a in addresses]
    fqhns = [a.split("@", 1)[1] if "@" in a else None for a in addresses]
    hosts = [h[:TOCC_SIMILAR_LENGTH] if h is not None else None for h in fqhns]
    hits = pairs = 0
    for i in range(len(addresses)):
        for j in range(i + 1, len(addresses)):
            hits += users[i] == users[j]
            hits += hosts[i] == hosts[j] and fqhns[i] != fqhns[j]
            pairs += 1
    return hits / pairs


def _sorted_recipients(v: MessageViews, args: tuple[str, ...]) -> bool:
    """sorted_recipients(): 7 or more recipients, in sorted order."""
    addresses = _addresses(v)
    return len(addresses) >= TOCC_SORTED_COUNT and addresses == sorted(addresses)


def _similar_recipients(v: MessageViews, args: tuple[str, ...]) -> bool:
    """similar_recipients(min, max): min <= similarity < max ('undef' = open)."""
    value = similarity(_addresses(v))
    low, high = args
    return (low == "undef" or value >= float(low)) and (high == "undef" or value < float(high))


_TEMPLATE = re.compile(r"%[A-Z][A-Z_-]")
_TEMPLATE_EXEMPT = re.compile(
    r"^(?:X-VMS-To|X-UIDL|X-Face|To|Cc|From|Subject|References|In-Reply-To"
    r"|(?:X-|Resent-|X-Original-)?Message-Id):", re.I)


def _unresolved_template(v: MessageViews, args: tuple[str, ...]) -> bool:
    """check_unresolved_template(): a header line with ``%NAME`` left in it."""
    all_headers = (v.header("ALL") or b"").decode("utf-8", "surrogateescape")
    return any(_TEMPLATE.search(line) and not _TEMPLATE_EXEMPT.match(line)
               for line in all_headers.split("\n"))


_OUTLOOK_ID = re.compile(r"^<[0-9a-f]{4}([0-9a-f]{8})\$[0-9a-f]{8}\$[0-9a-f]{8}@")
_RECEIVED_DATE = re.compile(r"(\s.?\d+ \S\S\S \d+ \d+:\d+:\d+ \S+)[^\n]*$")
# Outlook's id time unit: Unix seconds * X + Y (HeaderEval.pm), and the tolerance.
_OUTLOOK_X = 0.0023283064365387
_OUTLOOK_Y = 27111902.8329849
_OUTLOOK_FUDGE = 250


def _unix_time(text: str) -> float:
    """An RFC 822 date as Unix seconds; 0 when unparsable (as parse_rfc822_date || 0)."""
    try:
        parsed = email.utils.parsedate_tz(text.strip())
        return float(email.utils.mktime_tz(parsed)) if parsed else 0.0
    except (ValueError, IndexError, TypeError, OverflowError):
        return 0.0


def _outlook_message_id(v: MessageViews, args: tuple[str, ...]) -> bool:
    """check_outlook_message_id(): the id's timestamp is off from Date: and Received:."""
    # SpamAssassin's MESSAGEID: X-Message-Id, Resent-Message-Id, ..., Message-Id; the
    # pattern is anchored, so the first of them present is the one judged
    ids = (v.header("MESSAGEID") or b"").decode("utf-8", "surrogateescape")
    m = _OUTLOOK_ID.match(ids.strip())
    if not m:
        return False
    stamp = int(m.group(1), 16)

    def off(seconds: float) -> bool:
        return abs(stamp - int(seconds * _OUTLOOK_X + _OUTLOOK_Y)) >= _OUTLOOK_FUDGE

    if not off(_unix_time(v.msg.get("Date"))):
        return False
    # SpamAssassin searches all Received: values joined; the date must be on the last
    # line, so it is the bottom (first) hop's date.
    received = "\n".join(" ".join(r.split()) for r in v.msg.get_all("Received"))
    date = _RECEIVED_DATE.search(received)
    return off(_unix_time(date.group(1)) if date else 0.0)


# -- forged webmail Received: chains ----------------------------------------------------
_IP = r"(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}(?::\d{1,3}(?:\.\d{1,3}){3})?)"
_IP_RE = re.compile(_IP, re.I)


def _text(v: MessageViews, spec: str) -> str | None:
    value = v.header(spec)
    return None if value is None else value.decode("utf-8", "surrogateescape").rstrip("\n")


def _received(v: MessageViews, name: str = "Received") -> str:
    """All values of a Received-like field on one line (SpamAssassin's ``s/\\s+/ /gs``)."""
    return " ".join(" ".join(v.msg.get_all(name)).split())


def _from_addr(v: MessageViews) -> str:
    return (_text(v, "From:addr") or "").split("\n", 1)[0]


def _gated_through_received_hdr_remover(v: MessageViews, args: tuple[str, ...] = ()) -> bool:
    """Mail from an ezmlm list or MSN Groups, or with no Received: at all (nothing to judge)."""
    listing = _text(v, "Mailing-List")
    if listing is not None and re.search(r"^contact \S+@\S+; run by ezmlm$", listing, re.M):
        delivered = _text(v, "Delivered-To") or ""
        if (re.search(r"^mailing list \S+@\S+", delivered, re.M)
                and re.search(r"qmail \d+ invoked (?:from network|by .{3,20})\); \d+ ... \d+",
                              _text(v, "Received") or "")):
            return True
    if not v.msg.get_all("Received"):
        return True
    return re.search(r"from groups\.msn\.com \(\S+\.msn\.com ", _text(v, "Received") or "") is not None


def _fake_aol_relay(v: MessageViews, args: tuple[str, ...]) -> bool:
    """check_for_fake_aol_relay_in_rcvd(): AOL's relay host naming without AOL's relays."""
    rcvd = _received(v)
    if not re.search(r" rly-[a-z][a-z]\d\d\.", rcvd, re.I):
        return False
    return not (re.search(r"/AOL-\d+\.\d+\.\d+\)", rcvd)
                or re.search(r"ESMTP id (?:RELAY|MAILRELAY|MAILIN)", rcvd))


def _msn_groups(v: MessageViews) -> bool:
    """check_for_msn_groups_headers(): MSN Groups list mail (which Hotmail hands over)."""
    to = re.search(r"<(\S+)@groups\.msn\.com>", v.msg.get("To"), re.I)
    server = re.search(r"from mail pickup service by ((?:p\d\d\.)groups\.msn\.com)\b",
                       _text(v, "Received") or "")
    if not to or not server:
        return False
    listname, msgid = to.group(1), v.msg.get("Message-Id").strip()
    if re.fullmatch(r"notifications", listname):
        return re.match(rf"<\S+@{re.escape(server.group(1))}>", msgid) is not None
    return (re.match(rf"<{re.escape(listname)}-\S+@groups\.msn\.com>", msgid) is not None
            and re.search(rf"{re.escape(listname)}-bounce@groups\.msn\.com",
                          _text(v, "EnvelopeFrom:addr") or "") is not None)


def hotmail_forgery(v: MessageViews) -> tuple[bool, bool]:
    """(HELO'd as hotmail.com without being Hotmail, From: hotmail.com without its hops)."""
    rcvd = _received(v)
    if "from mail pickup service by hotmail.com with Microsoft SMTPSVC;" in rcvd or _msn_groups(v):
        return False, False
    ip_value, org_value = _text(v, "X-Originating-Ip"), _text(v, "X-OriginatorOrg")
    ip = ip_value is not None and _IP_RE.search(ip_value) is not None
    org = org_value is not None and re.search(r"hotmail\.com|msonline\-outlook", org_value) is not None
    if _gated_through_received_hdr_remover(v):
        return False, False
    genuine = (
        (ip and re.search(r"from (?:\S*\.)?hotmail.com \(\S+\.hotmail(?:\.msn)?\.com[ )]", rcvd))
        or (org and re.search(r"from \S*\.outbound\.protection\.outlook\.com "
                              r"\(\S+\.outbound\.protection\.outlook\.com[ )]", rcvd))
        or (org and re.search(rf"from \S*\.(?:eur|nam)prd\d+\.prod\.outlook\.com \({_IP}\)", rcvd, re.I))
        or (ip and re.search(rf"from \S*\.hotmail.com \(\[{_IP}\][ ):]", rcvd, re.I))
        or (ip and re.search(r"from \S+ by \S+\.hotmail(?:\.msn)?\.com with HTTP;", rcvd))
        or (ip and re.search(r"from \[66\.218.\S+\] by \S+\.yahoo\.com", rcvd))
    )
    if genuine:
        return False, False
    if re.search(r"(?:from |HELO |helo=)\S*hotmail\.com\b", rcvd):
        return True, False
    return False, re.search(r"\bhotmail\.com$", _from_addr(v), re.I) is not None


def _hotmail(v: MessageViews) -> tuple[bool, bool]:
    return v.shared(hotmail_forgery)


def _forged_hotmail(v: MessageViews, args: tuple[str, ...]) -> bool:
    return _hotmail(v)[0]


def _no_hotmail_received(v: MessageViews, args: tuple[str, ...]) -> bool:
    return _hotmail(v)[1]


def _forged_eudoramail(v: MessageViews, args: tuple[str, ...]) -> bool:
    if not re.search(r"\beudoramail\.com$", _from_addr(v), re.I):
        return False
    ip_value = _text(v, "X-Sender-Ip")
    ip = ip_value is not None and _IP_RE.search(ip_value) is not None
    if _gated_through_received_hdr_remover(v):
        return False
    return not (ip and re.search(r"by \S*whowhere.com;", _received(v)))


def _forged_yahoo(v: MessageViews, args: tuple[str, ...]) -> bool:
    sender = _from_addr(v)
    if not re.search(r"\byahoo\.com$", sender, re.I):
        return False
    rcvd = _received(v)
    if v.msg.get("Resent-From") and v.msg.get("Resent-To") and v.msg.get_all("X-Received"):
        rcvd = _received(v, "X-Received")
    if _gated_through_received_hdr_remover(v):
        return False
    trusted = _text(v, "X-Spam-Relays-Trusted") or ""
    untrusted = _text(v, "X-Spam-Relays-Untrusted") or ""
    if re.search(r" rdns=\S+\.yahoo\.com ", trusted) or re.search(r"^[^\]]+ rdns=\S+\.yahoo\.com ", untrusted):
        return False  # a bounce from Yahoo itself
    genuine = (
        re.search(r"by web\S+\.mail\S*\.yahoo\.com via HTTP", rcvd)
        or re.search(r"by sonic\S+\.consmr\.mail\S*\.yahoo\.com with HTTP", rcvd)
        or re.search(r"by smtp\S+\.yahoo\.com with SMTP", rcvd)
        or re.search(rf"from \[{_IP}\] by \S+\.(?:groups|scd|dcn)\.yahoo\.com with NNFMP", rcvd, re.I)
        or (re.search(r"\bmailer\d+\.bulk\.scd\.yahoo\.com\b", rcvd)
            and re.search(r"@reply\.yahoo\.com$", sender, re.I))
        or re.search(r"by \w+\.\w+\.yahoo\.com \(\d+\.\d+\.\d+/\d+\.\d+\.\d+\)(?: with ESMTP)? id \w+", rcvd)
    )
    return not genuine


def _forged_juno(v: MessageViews, args: tuple[str, ...]) -> bool:
    if not re.search(r"\bjuno\.com$", _from_addr(v), re.I) or _gated_through_received_hdr_remover(v):
        return False
    xorig, xmailer = v.msg.get("X-Originating-IP"), v.msg.get("X-Mailer")
    rcvd = _text(v, "Received") or ""
    if xorig:
        if (not re.search(rf"from.*\b(?:juno|untd)\.com.*[\[(]{_IP}[\])].*by", rcvd, re.I)
                and not re.search(r" cookie\.(?:juno|untd)\.com ", rcvd)):
            return True
        return "Juno " not in xmailer
    if re.search(rf"from.*\bmail\.com.*\[{_IP}\].*by", rcvd, re.I):
        if not re.search(r"\bmail\.com", xmailer):
            return True
    elif re.search(rf"from (webmail\S+\.untd\.com) \(\1 \[{_IP}\]\) by", rcvd, re.I):
        if not re.match(r"Webmail Version \d", xmailer):
            return True
    else:
        return True
    return _IP_RE.search(xorig) is None


#: X-Gm-Message-State / X-Google-Smtp-Source shorter than this are not Google's own.
GOOGLE_HEADER_LENGTH_MIN = 60


def _forged_gmail(v: MessageViews, args: tuple[str, ...]) -> bool:
    if not re.search(r"\bgmail\.com$", _from_addr(v), re.I):
        return False
    xreceived, received = _text(v, "X-Received") or "", _text(v, "Received") or ""
    if (re.search(r"by 10\.\S+ with SMTP id \S+", xreceived)
            or re.search(r"by 2002:a\d\d:\w+:\S+ with SMTP id \S+", xreceived)
            or re.search(r"by smtp\.googlemail\.com with ESMTPSA id \S+", received)):
        return False
    state, source = v.msg.get("X-Gm-Message-State"), v.msg.get("X-Google-Smtp-Source")
    return not (len(state) >= GOOGLE_HEADER_LENGTH_MIN and len(source) >= GOOGLE_HEADER_LENGTH_MIN)


#: name -> (function, argument check); evals.py adds these to its NATIVE_EVALS.
HEADER_EVAL_FUNCTIONS: dict[str, tuple[Callable[[MessageViews, tuple[str, ...]], bool],
                                       Callable[[tuple[str, ...]], bool]]] = {
    "sorted_recipients": (_sorted_recipients, lambda a: not a),
    "similar_recipients": (_similar_recipients,
                           lambda a: len(a) == 2 and all(x == "undef" or is_number(x) for x in a)),
    "check_unresolved_template": (_unresolved_template, lambda a: not a),
    "check_outlook_message_id": (_outlook_message_id, lambda a: not a),
    "gated_through_received_hdr_remover": (_gated_through_received_hdr_remover, lambda a: not a),
    "check_for_fake_aol_relay_in_rcvd": (_fake_aol_relay, lambda a: not a),
    "check_for_forged_hotmail_received_headers": (_forged_hotmail, lambda a: not a),
    "check_for_no_hotmail_received_headers": (_no_hotmail_received, lambda a: not a),
    "check_for_forged_eudoramail_received_headers": (_forged_eudoramail, lambda a: not a),
    "check_for_forged_yahoo_received_headers": (_forged_yahoo, lambda a: not a),
    "check_for_forged_juno_received_headers": (_forged_juno, lambda a: not a),
    "check_for_forged_gmail_received_headers": (_forged_gmail, lambda a: not a),
}


