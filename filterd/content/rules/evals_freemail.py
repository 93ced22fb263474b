"""SpamAssassin's FreeMail plugin (``Plugin::FreeMail``), natively.

Webmail accounts are what advance-fee and phishing senders use: a From: at one free
provider with a Reply-To: at another, or a body asking to write to a third address, is
a classic sign. The rules (20_freemail.cf, 72_active.cf) read these eval tests:

* ``check_freemail_from([regex])``: some sender address (Resent-From, else From,
  Envelope-Sender, Resent-Sender, X-Envelope-From, the envelope sender) is freemail
  (and matches ``regex``);
* ``check_freemail_header(header[, regex])``: an address of that header is freemail;
* ``check_freemail_body([regex])``: the body names a freemail address;
* ``check_freemail_replyto(['replyto'|'reply'])``: From: and Reply-To: are different
  freemails, or the Reply-To: (``reply``: else the From:) differs from a body freemail;
* ``check_equal_from_domains()``: HeaderEval's From/envelope 2nd-level domain test,
  which the shipped rules only use inside FreeMail blocks.

Settings (collected by the parser into :class:`RuleSettings`): ``freemail_domains``
(``*`` and ``?`` stand for any run of / one character other than a dot),
``freemail_welcomelist`` (addresses or domains that are never freemail; old name
``freemail_whitelist``), ``freemail_max_body_emails`` (5) and
``freemail_max_body_freemails`` (3) with ``freemail_skip_when_over_max`` (1): a body
with that many addresses is a newsletter or a list, not a scam, and its body is
ignored; ``freemail_skip_bulk_envfrom`` (1): mailing-list envelope senders skip the
Reply-To test. Without any ``freemail_domains`` every freemail test is false, as in
SpamAssassin. Addresses are found without a TLD list: the last label must look like a
top-level domain (letters, or an ``xn--`` name).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from filterd.content.rules.model import RuleSettings
from filterd.content.rules.perlre import PerlRegexError, make_perl_regex
from filterd.content.rules.views import MessageViews
from filterd.content.uris import extract_uris

Accepts = Callable[[tuple[str, ...]], bool]
EvalTable = dict[str, tuple[Callable[[MessageViews, tuple[str, ...]], bool], Accepts]]

MAX_MAILTO = 20  # body addresses taken from <a href="mailto:"> links
MAX_BODY_ADDRESSES = 40  # body addresses looked at in all (a sanity bound)

_LOCAL_CHARS = r"a-z0-9!#$%&'*+/=?^_`{|}~-"
# An address as the plugin finds it in text: local part of at most 64 characters with no
# leading, trailing or doubled dot, then 2-5 labels, the last one shaped like a TLD.
_EMAIL = (rf"(?=.{{0,64}}@)(?<![{_LOCAL_CHARS}])"
          rf"([{_LOCAL_CHARS}]+(?:\.[{_LOCAL_CHARS}]+)*@"
          r"(?:[a-z0-9](?:[a-z0-9-]{0,59}[a-z0-9])?\.){1,4}"
          r"(?<![a-z0-9-])(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})(?![a-z0-9-]|\.[a-z0-9]))")
_EMAIL_RE = re.compile(_EMAIL.encode(), re.IGNORECASE)
_MAILTO_RE = re.compile(rb"^mailto:" + _EMAIL.encode(), re.IGNORECASE)
# URLs carrying an address (tracking links) are not addresses written in the body
_URL_WITH_AT = re.compile(rb"<?https?://\S{0,255}(?:@|%40)\S{0,255}", re.IGNORECASE)
# "<a@b.c>" is a quoted header ("wrote:" lines, forwarded headers), not a contact address;
# nor is one followed by a "word:" (but "fax:", "tel:", "e-mail:"... do not count)
_QUOTED_EMAIL = re.compile(
    rb"<?(?<!mailto:)" + _EMAIL.encode()
    + rb"(?:>|\s{1,10}(?!(?:fa(?:x|csi)|tel|phone|e?-?mail))[a-z]{2,11}:)", re.IGNORECASE)
# role and machine addresses that are never a person's freemail account
_DEFAULT_WELCOME = re.compile(
    r"^(?:abuse|support|sales|info|helpdesk|contact|kontakt|(?:post|host|domain)master"
    r"|undisclosed.*|request-[a-f0-9]{16}|bounced?-"
    r"|[a-f0-9]{8}(?:\.[a-f0-9]{8}|-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12})"
    r"|.+=.+=.+)@", re.IGNORECASE)
# envelope senders of lists and bounces: their Reply-To differs from From by design
_BULK_ENVFROM = re.compile(
    r"(?:^(?:post|host|domain)master|^double-bounce|^(?:sentto|owner|return|(?:gr)?bounced?)-.+"
    r"|-(?:request|bounces?|admin|owner)|\b(?:do[._-t]?)?no[._-t]?repl(?:y|ies)|.+=.+)@", re.IGNORECASE)
_DOTS = re.compile(r"\.{2,}")
_SECOND_LEVEL = re.compile(r"^.+\.([^.]+\.[^.]+)\Z", re.DOTALL)


@dataclass(frozen=True)
class FreemailConfig:
    """The FreeMail settings of a rule set, ready to match (built once per rule set)."""

    domains: frozenset[str]
    wildcards: re.Pattern[str] | None
    welcomelist: frozenset[str]
    max_body_emails: int = 5
    max_body_freemails: int = 3
    skip_when_over_max: bool = True
    skip_bulk_envfrom: bool = True

    @property
    def available(self) -> bool:
        return bool(self.domains) or self.wildcards is not None

    @classmethod
    def from_settings(cls, settings: RuleSettings) -> FreemailConfig:
        exact: set[str] = set()
        wild: set[str] = set()
        for line in settings.get("freemail_domains"):
            for token in line.lower().split():
                (wild if "*" in token or "?" in token else exact).add(token)
        pattern = None
        if wild:
            alternatives = "|".join(sorted(_wildcard(w) for w in wild))
            pattern = re.compile(rf"@(?:{alternatives})$")
        welcome = frozenset(t for line in settings.get("freemail_welcomelist") for t in line.lower().split())

        def number(name: str, default: int) -> int:
            values = settings.get(name)
            return int(float(values[-1])) if values else default

        return cls(frozenset(exact), pattern, welcome,
                   max_body_emails=number("freemail_max_body_emails", 5),
                   max_body_freemails=number("freemail_max_body_freemails", 3),
                   skip_when_over_max=bool(number("freemail_skip_when_over_max", 1)),
                   skip_bulk_envfrom=bool(number("freemail_skip_bulk_envfrom", 1)))

    def is_freemail(self, address: str) -> bool:
        """A lower-cased address is at a freemail domain and not welcomelisted."""
        if not address or address in self.welcomelist:
            return False
        domain = address.rpartition("@")[2]
        if domain in self.welcomelist or _DEFAULT_WELCOME.match(address):
            return False
        return domain in self.domains or (self.wildcards is not None and self.wildcards.search(address) is not None)


def _wildcard(token: str) -> str:
    """``yahoo.co*.*`` as a regex: ``*`` is any run of non-dots, ``?`` one non-dot."""
    return "".join("[^.]*" if c == "*" else "[^.]" if c == "?" else re.escape(c) for c in token)


def _config(v: MessageViews) -> FreemailConfig:
    return v.settings.derived(FreemailConfig.from_settings)


@lru_cache(maxsize=256)
def _user_regex(pattern: str) -> re.Pattern[bytes]:
    """A rule's Perl regex argument, compiled once (case-sensitive, as SpamAssassin does)."""
    return make_perl_regex(pattern).compile()  # type: ignore[return-value]


def _regex_ok(pattern: str) -> bool:
    try:
        _user_regex(pattern)
    except PerlRegexError:
        return False
    return True


def _matches(address: str, regex: str | None) -> bool:
    return regex is None or _user_regex(regex).search(address.encode("utf-8", "surrogateescape")) is not None


def header_addresses(v: MessageViews, header: str) -> list[str]:
    """Lower-cased addresses of a header (``Reply-To``, ``EnvelopeFrom``, ``Reply-To:addr``...)."""
    name = header.split(":", 1)[0]
    text = v.header(f"{name}:addr")
    if not text:
        return []
    return [a.lower() for a in text.decode("utf-8", "surrogateescape").split("\n") if a]


def all_from_addresses(v: MessageViews) -> list[str]:
    """SpamAssassin's ``all_from_addrs``: the first Resent-From, else every sender header.

    Doubled dots are squeezed (``foo@bar..com`` is written by broken mailers) and
    duplicates dropped, order kept.
    """
    resent = header_addresses(v, "Resent-From")[:1]
    found = resent or [a for h in ("From", "Envelope-Sender", "Resent-Sender", "X-Envelope-From", "EnvelopeFrom")
                       for a in header_addresses(v, h)]
    return list(dict.fromkeys(_DOTS.sub(".", a) for a in found))


@dataclass(frozen=True)
class BodyFreemails:
    """The freemail addresses named in the body, or ``skipped`` when it named too many."""

    addresses: tuple[str, ...]
    skipped: bool


def body_freemails(v: MessageViews) -> BodyFreemails:
    """Addresses of ``mailto:`` links, then of the rendered text, checked against the limits.

    Addresses inside URLs, in angle brackets or before a ``word:`` (quoted headers,
    "... wrote:") are set aside first. Counting follows the plugin: the body is skipped
    as soon as the N-th distinct address (``freemail_max_body_emails``) or the N-th
    freemail (``freemail_max_body_freemails``) is reached.
    """
    cfg = _config(v)
    found: dict[str, None] = {}
    for part in v.msg.text_parts:
        if part.html is None or len(found) >= MAX_MAILTO:
            continue
        for uri in extract_uris(part.html, html=True):
            m = _MAILTO_RE.match(uri.encode("utf-8", "surrogateescape"))
            if m:
                found[m.group(1).decode("ascii").lower()] = None
                if len(found) >= MAX_MAILTO:
                    break
    for line in v.body_lines:
        if len(found) >= MAX_BODY_ADDRESSES:
            break
        line = _QUOTED_EMAIL.sub(b" ", _URL_WITH_AT.sub(b" ", line))
        for m in _EMAIL_RE.finditer(line):
            found[m.group(1).decode("ascii").lower()] = None
            if len(found) >= MAX_BODY_ADDRESSES:
                break
    freemails: list[str] = []
    for count, address in enumerate(found, 1):
        if count == cfg.max_body_emails and cfg.skip_when_over_max:
            return BodyFreemails((), True)
        if not cfg.is_freemail(address):
            continue
        freemails.append(address)
        if len(freemails) == cfg.max_body_freemails and cfg.skip_when_over_max:
            return BodyFreemails((), True)
    return BodyFreemails(tuple(freemails), False)


def _freemail_from(v: MessageViews, args: tuple[str, ...]) -> bool:
    cfg = _config(v)
    if not cfg.available:
        return False
    regex = args[0] if args else None
    return any(cfg.is_freemail(a) and _matches(a, regex) for a in all_from_addresses(v))


def _freemail_header(v: MessageViews, args: tuple[str, ...]) -> bool:
    cfg = _config(v)
    if not cfg.available:
        return False
    regex = args[1] if len(args) > 1 else None
    return any(cfg.is_freemail(a) and _matches(a, regex) for a in header_addresses(v, args[0]))


def _freemail_body(v: MessageViews, args: tuple[str, ...]) -> bool:
    if not _config(v).available:
        return False
    body = v.shared(body_freemails)
    regex = args[0] if args else None
    return not body.skipped and any(_matches(a, regex) for a in body.addresses)


def _freemail_replyto(v: MessageViews, args: tuple[str, ...]) -> bool:
    """check_freemail_replyto('replyto'|'reply'): different freemails From/Reply-To/body.

    ``replyto`` (the default) needs a freemail Reply-To; ``reply`` needs a freemail
    From: and, if there is a Reply-To, a freemail one. Mail from list or bounce envelope
    senders is skipped (``freemail_skip_bulk_envfrom``).
    """
    cfg = _config(v)
    if not cfg.available:
        return False
    mode = args[0] if args else "replyto"
    if cfg.skip_bulk_envfrom:
        envfrom = v.header("EnvelopeFrom")
        if envfrom and _BULK_ENVFROM.search(envfrom.decode("utf-8", "surrogateescape").split("\n", 1)[0]):
            return False
    froms = header_addresses(v, "From")
    replytos = header_addresses(v, "Reply-To")
    from_free = any(cfg.is_freemail(a) for a in froms)
    replyto_free = any(cfg.is_freemail(a) for a in replytos)
    if from_free and replyto_free and not any(a in replytos for a in froms):
        return True
    if mode == "replyto" and not replyto_free:
        return False
    if mode == "reply" and (replytos and not replyto_free or not from_free):
        return False
    body = v.shared(body_freemails)
    if body.skipped:
        return False
    compare = replytos if mode == "replyto" or replyto_free else froms
    return any(b != r for b in body.addresses for r in compare)


def _second_level(address: str) -> str:
    """The domain after the last ``@``, cut to its last two labels, lower-cased."""
    if "@" not in address:
        return ""
    return _SECOND_LEVEL.sub(r"\1", address.rpartition("@")[2].lower())


def _equal_from_domains(v: MessageViews, args: tuple[str, ...]) -> bool:
    """check_equal_from_domains(): From: and envelope sender 2nd-level domains differ.

    HeaderEval's test (bug 6487), read only inside FreeMail blocks of the shipped rules.
    It compares the last two labels, so ``a.example.co.uk`` and ``b.other.co.uk`` agree.
    """
    from_domain = _second_level((v.header("From:addr") or b"").decode("utf-8", "surrogateescape"))
    env_domain = _second_level((v.header("EnvelopeFrom:addr") or b"").decode("utf-8", "surrogateescape"))
    return bool(from_domain) and bool(env_domain) and from_domain != env_domain


FREEMAIL_EVAL_FUNCTIONS: EvalTable = {
    "check_freemail_from": (_freemail_from, lambda a: not a or len(a) == 1 and _regex_ok(a[0])),
    "check_freemail_header": (
        _freemail_header, lambda a: len(a) in (1, 2) and bool(a[0]) and (len(a) == 1 or _regex_ok(a[1]))),
    "check_freemail_body": (_freemail_body, lambda a: not a or len(a) == 1 and _regex_ok(a[0])),
    "check_freemail_replyto": (_freemail_replyto, lambda a: a in ((), ("replyto",), ("reply",))),
    "check_equal_from_domains": (_equal_from_domains, lambda a: not a),
}
