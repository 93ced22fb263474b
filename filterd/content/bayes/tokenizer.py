"""Turning a message into the set of tokens a Bayes classifier learns from.

The choices follow what SpamAssassin's Bayes plugin and bogofilter learned over two
decades, kept where they measured well on the corpus (see ``bench/quality.py``):

* Header fields are tokenized with their field name as prefix (``H*F:`` for From...),
  because "paypal" in From means something else than "paypal" in the body. Every field
  is used except a list of known noise (dates, mailing-list and spam-filter annotations:
  learning those chains Bayes to another filter's verdict or the corpus's age), so
  spamware's own tracking headers become clues without anyone listing them.
* Received fields are used from the earliest hop on, at most :data:`MAX_RECEIVED` of
  them (HELO names, relay hosts, spamware quirks, and the relays a message passed on
  its way: a newsletter's mailing hosts are as telling as the sender's first hop);
  dates and queue ids are dropped from them, as they are never seen twice. Measured
  on the corpus, all hops instead of the two earliest raised the recall at 0.1 %
  false positives of the learned scale by 1-3 points.
* Address fields are split into user, domain and parent domains; Message-ID gives its
  host and the *shape* of its local part (spamware ids have tell-tale shapes).
* Body words keep their case and also give a lower-case form; numbers are folded to
  their shape (``$1,299`` → ``$9,999``) and overlong words to a ``sk:`` prefix, so
  one-off strings do not fill the model with hapaxes.
* CJK text has no spaces between words: each character is a token, and so is each
  pair of neighbouring characters (the scripts' words are mostly one or two characters
  long). Single characters only say which script a message is in, which put Japanese
  ham among Chinese and Korean spam; the pairs tell them apart (on the corpus, recall at
  0.1 % false positives of the learned scale rose from 85 to 90 %).
* URIs give hosts with parent domains, scheme and path words; HTML parts give the tags
  and attributes used (``html:font``, ``html:font.color``); MIME leaves give their types,
  charsets and attachment types.

:func:`tokenize` returns each token once (the model learns presence, not counts).
"""

from __future__ import annotations

import functools
import re
from email.utils import getaddresses

from filterd.content.message import Message, decode_header_value
from filterd.content.uris import uri_host

#: Longest word kept whole; longer ones become ``sk:`` + their first 7 characters.
MAX_TOKEN_LENGTH = 15
#: Body text beyond this many characters is not tokenized (keeps huge mail cheap).
MAX_BODY_CHARS = 200_000
#: At most this many URIs are tokenized per message.
MAX_URIS = 200
#: At most this many HTML tags are looked at per message.
MAX_HTML_TAGS = 5_000
#: At most this many Received fields are tokenized, counted from the earliest hop.
MAX_RECEIVED = 12

# Header fields that give no clue or a misleading one (compare SpamAssassin's
# IGNORED_HDRS): dates (corpus age), delivery and list annotations, other filters' marks.
_IGNORED_HEADER = re.compile(
    r"""(?:x-)?sender|delivered-to|delivery-date|(?:x-)?envelope-to|x-mime-autoconverted
    |x-converted-to-plain-text|date|x-original-?date|x-list|(?:x-)?mailing-list
    |(?:x-)?list-[a-z]+|x-unsub(?:scribe)?|x-mailman-version|x-beenthere|x-loop
    |mail-followup-to|x-egroups-[a-z]+|x-mdmailing-list|x-xemacs-list|x-sympa-to
    |(?:x-)?resent-(?:from|to|date)|(?:x-)?original-(?:from|to|date)
    |x-mailscanner(?:-[a-z]+)?|x-spam(?:-[a-z-]+)?|x-antispam|x-rbl-warning
    |x-mdaemon-deliver-to|x-virus-scanned|x-virus-status|x-mass-check-id|x-pyzor
    |x-dcc-[^:]+|x-filtered-by|x-scanned-by|x-scanner|x-ap-spam-[a-z]+
    |x-ripe-spam-status|x-spamcop-[^:]+|x-smtpd|(?:x-)?spam-apparently-to|spam
    |x-perlmx-spam|x-bogosity|x-greylist|x-filterd-[a-z-]+|content-class
    |thread-(?:index|topic)|x-originalarrivaltime|(?:x-)?status|x-flags|x-keywords
    |replied|forwarded|lines|content-length|x-uidl?|x-imapbase|x-bugzilla-[^:]+
    |x-vm-[a-z0-9-]+|x-gnus-mail-source|xref|x-sieve|x-delivered-to|x-mail-from
    |precedence|errors-to|received|subject""",
    re.IGNORECASE | re.VERBOSE,
)
# Fields whose value is unique per message: only their presence is a clue.
_PRESENCE_ONLY = re.compile(
    r"x-face|x-(?:gnu-?pg|pgp|gpg)(?:-key)?-fingerprint|d(?:kim|omainkey)-signature"
    r"|x-google-dkim-signature|arc-(?:message-signature|seal|authentication-results)|autocrypt",
    re.IGNORECASE,
)
# Short prefixes for frequent fields (SpamAssassin's header name compression).
_PREFIX = {
    "from": "*F", "to": "*T", "cc": "*C", "reply-to": "*R", "return-path": "*p",
    "message-id": "*M", "received": "*r", "x-mailer": "*x", "user-agent": "*u",
    "content-type": "*ct", "content-transfer-encoding": "*ce", "mime-version": "*mv",
    "in-reply-to": "*i", "references": "*f", "organization": "*o",
    "x-authentication-warning": "*a", "subject": "*s",
}
_ADDRESS_FIELDS = frozenset(
    ("from", "to", "cc", "reply-to", "return-path", "errors-to", "sender")
)

# A word: letters, digits and the punctuation spam likes to glue to words ($ , ! * @ ').
_WORD = re.compile(r"[\w$,@*!'\".\-]+")
_TRIM = "-'\".,"
_DIGIT = re.compile(r"\d")
_ASCII_DIGITS = str.maketrans("0123456789", "9" * 10)
_SPLIT_ELLIPSIS = re.compile(r"(\w)(\.{3,6}|-{2,6})(\w)")
_HAS_UPPER = re.compile(r"[A-Z]")
_NON_WORD = re.compile(r"[^\w:*]")
_WIDE_RANGES = r"\u0e00-\u0eff\u1100-\u11ff\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
_WIDE_CHAR = re.compile(f"[{_WIDE_RANGES}]")
_WIDE_RUN = re.compile(f"[{_WIDE_RANGES}]+")

_RECEIVED_NOISE = re.compile(
    r"""\bid\s+[A-Za-z0-9.\-]{5,}|;.*$|\bfor\s+<[^>]*>|\(\d+\.\d+\.\d+/\d+\.\d+\.\d+\)""",
    re.IGNORECASE | re.DOTALL,
)
_IPV4 = re.compile(r"\b(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\b")
_BOUNDARY = re.compile(r"""boundary\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s;]+))""", re.IGNORECASE)
_HEX = re.compile(r"[0-9A-Fa-f]")
_SHAPE = (re.compile(r"[A-Z]+"), re.compile(r"[a-z]+"), re.compile(r"[0-9]+"))
_HTML_TAG = re.compile(r"<\s*([A-Za-z][A-Za-z0-9]{0,15})\b([^>]{0,500})>")
_HTML_ATTR = re.compile(r"([A-Za-z][A-Za-z0-9-]{0,30})\s*=")
_URI_PATH_WORD = re.compile(r"[A-Za-z0-9_\-]{3,}")


def tokenize(msg: Message) -> list[str]:
    """All tokens of ``msg``, each once, in first-seen order."""
    tokens = _header_tokens(msg)
    tokens += _body_tokens(msg.body_text[:MAX_BODY_CHARS])
    tokens += _uri_tokens(msg.uris[:MAX_URIS])
    tokens += _mime_tokens(msg)
    return list(dict.fromkeys(tokens))


def _unescape(token: str) -> str:
    """Undo ``surrogateescape``: raw 8-bit bytes become Latin-1 characters (stable tokens)."""
    try:
        token.encode("utf-8")
    except UnicodeEncodeError:
        return token.encode("utf-8", "surrogateescape").decode("latin-1")
    return token


# -- words ---------------------------------------------------------------------------
#: Distinct words whose tokens are remembered (per process; about 200 bytes each).
WORD_CACHE_SIZE = 50_000
#: Only words up to this length are remembered: a message's longer runs (base64 left in
#: a body, a hostile Received field) are rare, and kept they would make the caches'
#: memory a product of the entry count and the size limit of a message.
MAX_CACHED_WORD = 64
# word -> its tokens without prefix, one table per ``decompose``: a word's tokens depend
# on nothing else, and most words of a mail stream (Zipf) were seen before, so a lookup
# replaces the per-word string work. Emptied when full; dict operations are atomic, so
# the threads of a worker can share it.
_WORD_CACHE: tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]] = ({}, {})


def words(text: str, prefix: str = "", decompose: bool = True) -> list[str]:
    """Split text into tokens SpamAssassin-style (see the module docstring)."""
    out: list[str] = []
    cache = _WORD_CACHE[decompose]
    # Tokens are a set: each distinct word is decomposed once, however often it occurs.
    if "..." in text or "--" in text:  # what _SPLIT_ELLIPSIS needs, found at C speed
        text = _SPLIT_ELLIPSIS.sub(r"\1 \2 \3", text)
    for raw in dict.fromkeys(_WORD.findall(text)):
        toks = cache.get(raw)
        if toks is None:
            toks = word_tokens(raw, decompose)
            if len(raw) <= MAX_CACHED_WORD:
                if len(cache) >= WORD_CACHE_SIZE:
                    cache.clear()
                cache[raw] = toks
        if prefix:
            out.extend([prefix + tok for tok in toks])
        else:
            out.extend(toks)
    return out


def word_tokens(raw: str, decompose: bool = True) -> tuple[str, ...]:
    """The tokens of one word as :data:`_WORD` finds it, without prefix."""
    tok = raw.strip(_TRIM)
    if _WIDE_CHAR.search(tok):
        # CJK text has no spaces between words: its characters and their neighbouring
        # pairs stand for words
        return tuple(_wide_tokens(tok))
    if len(tok) < 3:
        return ()
    out: list[str] = []
    # ASCII words (nearly all) take str methods; the regexes give the same answers
    ascii_tok = tok.isascii()
    if ascii_tok:
        if not tok.isalpha():
            tok = tok.translate(_ASCII_DIGITS)
    elif _DIGIT.search(tok):
        tok = _DIGIT.sub("9", tok)
    if len(tok) > MAX_TOKEN_LENGTH:
        tok = "sk:" + tok[:7]
    elif decompose:
        # isalnum(): no character outside [\w:*], so no punctuation to strip
        if not tok.isalnum() and _NON_WORD.search(tok):
            out.append(_NON_WORD.sub("", tok))
        low = tok.lower()
        if (low != tok) if ascii_tok else _HAS_UPPER.search(tok):
            out.append(low)
            if not low.isalnum() and _NON_WORD.search(low):  # "İ".lower() adds a combining dot
                out.append(_NON_WORD.sub("", low))
    out.append(tok)
    return tuple(out)


def _wide_tokens(tok: str) -> list[str]:
    """Each wide (CJK, Thai) character of ``tok``, and each pair of neighbouring ones."""
    out: list[str] = []
    for run in _WIDE_RUN.findall(tok):
        out.extend("u8:" + ch for ch in run)
        out.extend("u8:" + run[i:i + 2] for i in range(len(run) - 1))
    return out


def _body_tokens(text: str) -> list[str]:
    return words(text)


# -- headers -------------------------------------------------------------------------
def _header_tokens(msg: Message) -> list[str]:
    out: list[str] = []
    received: list[str] = []
    for name, raw_value in msg.header_fields:
        low = name.lower()
        eight_bit = not raw_value.isascii()
        if eight_bit:
            # raw 8-bit bytes arrive as surrogate escapes; the hasher needs real text
            raw_value = _unescape(raw_value)
        if low == "received":
            received.append(raw_value)
        if low == "subject":
            out.extend(words(decode_header_value(" ".join(raw_value.split())), "H*s:", False))
            continue
        if _IGNORED_HEADER.fullmatch(low):
            continue
        prefix = "H" + _PREFIX.get(low, name) + ":"
        if _PRESENCE_ONLY.fullmatch(low):
            out.append(prefix + "1")
            continue
        value = decode_header_value(" ".join(raw_value.split()))
        if eight_bit:
            out.append(prefix + "8bit")
        if low in _ADDRESS_FIELDS:
            out.extend(_address_tokens(value, prefix))
        elif low == "message-id":
            out.extend(_message_id_tokens(value, prefix))
        elif low == "content-type":
            out.extend(_content_type_tokens(value, prefix))
        elif low in ("references", "in-reply-to"):
            out.append(prefix + "1")  # ids are unique; being a reply is the clue
        else:
            out.extend(words(value, prefix, False))
    # From the earliest hop (the last field) on: spamware and its relays, then the path.
    for value in received[::-1][:MAX_RECEIVED]:
        out.extend(_received_tokens(" ".join(value.split())))
    return out


@functools.lru_cache(maxsize=4096)
def _address_tokens(value: str, prefix: str) -> tuple[str, ...]:
    """Tokens of an address field; remembered, as the same senders and recipients recur
    and the email package's address parser is slow (pure Python)."""
    return tuple(_parse_address_tokens(value, prefix))


def _parse_address_tokens(value: str, prefix: str) -> list[str]:
    out: list[str] = []
    try:
        pairs = getaddresses([value])
    except (ValueError, IndexError, TypeError):
        pairs = []
    if not pairs:
        return words(value, prefix, False)
    for display, addr in pairs:
        if display:
            out.extend(words(display, prefix + "N*", False))
        user, _, domain = addr.rpartition("@")
        if user:
            out.append(prefix + "U*" + _DIGIT.sub("9", user.lower())[:MAX_TOKEN_LENGTH])
        if domain:
            out.extend(_domain_tokens(domain.lower().strip("<>."), prefix + "D*"))
        elif addr:
            out.append(prefix + "U*" + addr.lower()[:MAX_TOKEN_LENGTH])
    return out


def _domain_tokens(domain: str, prefix: str) -> list[str]:
    """The domain and each parent domain (``a.b.example.com``, ``b.example.com``...)."""
    if not domain:
        return []
    if _IPV4.fullmatch(domain):
        a, b, c, _ = domain.split(".")
        return [prefix + "ip", f"{prefix}{a}.{b}.{c}"]
    labels = domain.split(".")[-6:]
    return [prefix + ".".join(labels[i:]) for i in range(len(labels))]


def _shape(text: str) -> str:
    """Letters/digits runs replaced by class markers: ``ABC123xyz`` → ``A9a``."""
    text = _SHAPE[0].sub("A", text)
    text = _SHAPE[1].sub("a", text)
    return _SHAPE[2].sub("9", text)[:MAX_TOKEN_LENGTH]


def _message_id_tokens(value: str, prefix: str) -> list[str]:
    value = value.strip().strip("<>")
    local, at, host = value.rpartition("@")
    if not at:
        return [prefix + "noat", prefix + "shape:" + _shape(value)]
    return [prefix + "shape:" + _shape(local)] + _domain_tokens(host.lower().rstrip(">"), prefix)


def _content_type_tokens(value: str, prefix: str) -> list[str]:
    m = _BOUNDARY.search(value)
    out: list[str] = []
    if m:
        boundary = m.group(1) or m.group(2) or m.group(3) or ""
        # hex runs vary per message; the pattern around them identifies the mailer
        out.append(prefix + "b:" + _shape(_HEX.sub("H", boundary)))
        value = value[: m.start()] + value[m.end():]
    out.extend(words(value.lower().replace("charset", " "), prefix, False))
    return out


def _received_tokens(value: str) -> list[str]:
    value = _RECEIVED_NOISE.sub(" ", value)
    out: list[str] = []
    for m in _IPV4.finditer(value):
        out.append("H*r:ip*" + ".".join(m.groups()[:3]))
    value = _IPV4.sub(" ", value)
    # each distinct word once: "from", "by", "with", relay names recur in every hop
    for word in dict.fromkeys(_WORD.findall(value.lower())):
        out.extend(_remembered_received_word(word) if len(word) <= MAX_CACHED_WORD
                   else _received_word_tokens(word))
    return out


def _received_word_tokens(word: str) -> tuple[str, ...]:
    """Tokens of one word of a Received field."""
    word = word.strip(_TRIM)
    if len(word) < 3:
        return ()
    if "." in word:
        return tuple(_domain_tokens(word, "H*r:")[-3:])  # up to host, domain, TLD
    return ("H*r:" + word[:MAX_TOKEN_LENGTH],)


#: Received words remembered (short ones only, :data:`MAX_CACHED_WORD`): relay names, MTA
#: names and keywords recur across the hops of a message and across messages.
_remembered_received_word = functools.lru_cache(maxsize=8192)(_received_word_tokens)


# -- URIs, HTML and MIME -------------------------------------------------------------
def _uri_tokens(uris: list[str]) -> list[str]:
    out: list[str] = []
    for uri in uris:
        scheme, sep, rest = uri.partition(":")
        out.append("U:s:" + (scheme.lower() if sep else "none"))
        host = uri_host(uri)
        if host:
            out.extend(_domain_tokens(host, "U:"))
        path = rest.lstrip("/")
        slash = path.find("/")
        if slash >= 0:
            for word in _URI_PATH_WORD.findall(path[slash:][:300]):
                out.append("UP:" + _DIGIT.sub("9", word.lower())[:MAX_TOKEN_LENGTH])
    return out


def _mime_tokens(msg: Message) -> list[str]:
    out: list[str] = []
    tags = 0
    for part in msg.parts:
        out.append("MIME:" + part.content_type)
        if part.charset:
            out.append("MIME:cs:" + part.charset.lower())
        if part.is_attachment:
            out.append("ATT:" + part.content_type)
            if part.filename and "." in part.filename:
                out.append("ATT:ext:" + part.filename.rsplit(".", 1)[1].lower()[:10])
        if part.html is not None and tags < MAX_HTML_TAGS:
            for m in _HTML_TAG.finditer(part.html):
                tags += 1
                if tags > MAX_HTML_TAGS:
                    break
                tag = m.group(1).lower()
                out.append("html:" + tag)
                for attr in _HTML_ATTR.findall(m.group(2)):
                    out.append(f"html:{tag}.{attr.lower()}")
    if msg.defects:
        out.append("MIME:defects")
    return out
