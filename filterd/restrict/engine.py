"""The restriction engine: Postfix's restriction lists, evaluated with Postfix semantics.

One engine serves every front end. A list such as ``permit_mynetworks,
check_client_access cidr:/etc/filterd/clients, reject_rbl_client zen.example,
check_greylist`` is evaluated left to right; the first decisive result (OK, REJECT,
DEFER, a numeric reply) ends it; DEFER_IF_PERMIT / DEFER_IF_REJECT are remembered and
applied at the end as Postfix does; HOLD, DISCARD, FILTER, REDIRECT, PREPEND, WARN and BCC
are collected as side effects; a table result naming restrictions (or a restriction
class) is evaluated in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable

from filterd.actions import Action, dsn_class_fix, parse_action
from filterd.config import Config, ConfigError, split_list
from filterd.maps.errors import MapTempError
from filterd.restrict.decision import (
    DEFER, DUNNO, PERMIT, REJECT, Decision, Evidence, Reply,
)
from filterd.restrict.transaction import Stage, Transaction

if TYPE_CHECKING:  # services.py reaches the DNS, greylist and policy-client modules
    from filterd.restrict.services import Services


@dataclass(slots=True)
class Outcome:
    """What one restriction found.

    ``action`` uses Postfix's action vocabulary (an access-table result). ``reply`` is
    set when the restriction builds its own complete reply (RBL, relay control, syntax
    checks); otherwise the engine builds it from the action and the stage, as Postfix
    builds ``<bob@example.com>: Recipient address rejected: text``. ``subject`` overrides
    the (name, class) of that text, e.g. a client check at RCPT time still says
    ``Client host rejected``.
    """

    action: Action
    detail: str = ""
    reply: Reply | None = None
    subject: tuple[str, str] | None = None


RestrictionFn = Callable[["Evaluation", str | None], Awaitable[Outcome | None]]


@dataclass(frozen=True, slots=True)
class Restriction:
    """A named restriction: its implementation and whether it takes an argument."""

    name: str
    fn: RestrictionFn
    takes_arg: bool = False
    #: Checks the argument when the list is compiled (opens the table, parses the DNSBL
    #: filter...), raising ValueError, so a bad argument fails at start-up, not per mail.
    check_arg: Callable[[str], object] | None = None


def stage_subject(txn: Transaction) -> tuple[str, str]:
    """The (name, class) Postfix puts in a reply for the stage being checked."""
    st = txn.stage
    if st is Stage.RCPT or st is Stage.VRFY:  # RCPT first: the most frequent (an Enum lookup each)
        return txn.recipient or "", "Recipient address"
    if st is Stage.CONNECT:
        return txn.client_label, "Client host"
    if st in (Stage.HELO, Stage.EHLO):
        return txn.helo_name, "Helo command"
    if st is Stage.MAIL:
        return txn.sender or "", "Sender address"
    if st is Stage.DATA:
        return "DATA", "Data command"
    if st is Stage.END_OF_MESSAGE:
        return "END-OF-MESSAGE", "End-of-data"
    return txn.etrn_domain, "Etrn command"  # Stage.ETRN, the only one left


@dataclass(slots=True)
class Evaluation:
    """State of one evaluation: the transaction, services, and Postfix's pending flags."""

    engine: "RestrictionEngine"
    txn: Transaction
    decision: Decision = field(default_factory=Decision)
    defer_if_permit: tuple[Reply, str, Evidence] | None = None
    defer_if_reject: tuple[Reply, str, Evidence] | None = None
    warn_next: bool = False
    depth: int = 0

    @property
    def cfg(self) -> Config:
        return self.engine.cfg

    @property
    def services(self) -> Services:
        return self.engine.services


class RestrictionEngine:
    """Evaluates restriction lists. Build once per process; ``evaluate`` per request."""

    def __init__(self, cfg: Config, services: Services, restrictions: dict[str, Restriction]):
        self.cfg = cfg
        self.services = services
        self.restrictions = restrictions
        self.classes = {name: self._compile_class(name) for name in cfg.restriction_classes()}
        self._lists: dict[str, list[tuple[Restriction | str, str | None]]] = {}
        self._by_param: dict[str, list[tuple[Restriction | str, str | None]]] = {}

    def _compile_class(self, name: str) -> list[str]:
        if not self.cfg.is_set(name):
            s = self.cfg.settings.get("smtpd_restriction_classes")
            raise ConfigError(
                f"restriction class {name!r} is listed in smtpd_restriction_classes but not defined",
                s.file if s else None, s.line if s else None,
            )
        return split_list(self.cfg.expand(name))

    def compile(self, items: list[str], where: str) -> list[tuple[Restriction | str, str | None]]:
        """Turn a list of words into (restriction or class name, argument) pairs.

        Unknown names are a configuration error naming the parameter, as Postfix's
        ``unknown smtpd restriction`` fatal error.
        """
        key = where + "\0" + "\0".join(items)
        cached = self._lists.get(key)
        if cached is not None:
            return cached
        out: list[tuple[Restriction | str, str | None]] = []
        i = 0
        while i < len(items):
            word = items[i]
            name = word.lower()
            r = self.restrictions.get(name)
            if r is None:
                if word in self.classes:
                    out.append((word, None))
                    i += 1
                    continue
                raise ConfigError(f"{where}: unknown restriction {word!r}")
            arg = None
            if r.takes_arg:
                if i + 1 >= len(items):
                    raise ConfigError(f"{where}: restriction {word!r} needs an argument")
                arg = items[i + 1]
                i += 1
                if r.check_arg is not None:
                    try:
                        r.check_arg(arg)
                    except ValueError as exc:
                        raise ConfigError(f"{where}: {word} {arg}: {exc}") from None
            out.append((r, arg))
            i += 1
        self._lists[key] = out
        return out

    def check_param(self, param: str) -> None:
        """Compile a parameter's list now, so bad names fail at start-up."""
        try:
            self.compile(split_list(self.cfg.expand(param)), param)
        except ConfigError as exc:
            s = self.cfg.settings.get(param)
            if s is not None and exc.file is None:
                raise ConfigError(exc.message, s.file, s.line) from None
            raise
        for name, items in self.classes.items():
            self.compile(items, name)

    async def evaluate(self, param: str, txn: Transaction) -> Decision:
        """Evaluate the restriction list held by parameter ``param`` for ``txn``."""
        items = self._by_param.get(param)
        if items is None:
            items = self._by_param[param] = self.compile(split_list(self.cfg.expand(param)), param)
        ev = Evaluation(self, txn)
        outcome = await self._run_list(ev, items)
        return self._finish(ev, outcome)

    async def evaluate_list(self, items: list[str], txn: Transaction, where: str = "restrictions") -> Decision:
        ev = Evaluation(self, txn)
        outcome = await self._run_list(ev, self.compile(items, where))
        return self._finish(ev, outcome)

    # -- the evaluation loop ------------------------------------------------------------
    async def _run_list(self, ev: Evaluation, items: list[tuple[Restriction | str, str | None]]) -> str:
        """Run items; return PERMIT, REJECT, DEFER (decision filled) or DUNNO."""
        if ev.depth > 20:
            raise ConfigError("restriction classes nest deeper than 20 levels (a loop?)")
        for r, arg in items:
            if isinstance(r, str):  # a restriction class
                result = await self._run_nested(ev, self.classes[r], r)
                if result != DUNNO:
                    return result
                continue
            if r.name == "warn_if_reject":
                ev.warn_next = True
                continue
            warn = ev.warn_next
            ev.warn_next = False
            try:
                outcome = await r.fn(ev, arg)
            except MapTempError as exc:
                # A table that cannot answer now: Postfix tempfails rather than guess.
                reply = Reply(451, "4.3.5", "Server configuration error")
                outcome = Outcome(Action("CODE", 451), f"table lookup failed: {exc}", reply=reply)
            if outcome is None:
                continue
            name = r.name if arg is None else f"{r.name} {arg}"
            evidence = Evidence(ev.txn.stage.value, name, outcome.detail)
            ev.decision.evidence.append(evidence)
            act = outcome.action
            if act.kind == "RESTRICTION":  # a table result naming restrictions: run them here
                result = await self._run_nested(ev, split_list(act.text), f"{name} result")
            else:
                result = self._apply(ev, outcome, evidence, warn)
            if result != DUNNO:
                return result
        return DUNNO

    async def _run_nested(self, ev: Evaluation, words: list[str], where: str) -> str:
        """Run a list named in place (a restriction class, a table result), one level deeper."""
        ev.depth += 1
        result = await self._run_list(ev, self.compile(words, where))
        ev.depth -= 1
        return result

    def _apply(self, ev: Evaluation, outcome: Outcome, evidence: Evidence, warn: bool) -> str:
        """Apply one restriction's (non-RESTRICTION) action with Postfix's semantics."""
        act = outcome.action
        kind = act.kind
        if kind == "OK":
            return self._decide(ev, PERMIT, None, "OK", evidence)
        if kind == "DUNNO":
            return DUNNO
        if kind in ("DEFER_IF_PERMIT", "DEFER_IF_REJECT"):  # greylisting's deferral: the most frequent
            reply = self._access_reply(ev, act, outcome.subject)
            if kind == "DEFER_IF_PERMIT" and ev.defer_if_permit is None:
                ev.defer_if_permit = (reply, str(act), evidence)
            elif kind == "DEFER_IF_REJECT" and ev.defer_if_reject is None:
                ev.defer_if_reject = (reply, str(act), evidence)
            return DUNNO
        if act.is_reject or act.is_defer:
            reply = outcome.reply or self._access_reply(ev, act, outcome.subject)
            result = REJECT if reply.code >= 500 else DEFER
            if warn:
                ev.decision.warnings.append(f"reject_warning: {reply}")
                return DUNNO
            if result == REJECT and ev.defer_if_reject is not None:
                reply, written, _ = ev.defer_if_reject
                return self._decide(ev, DEFER, reply, written, evidence)
            written = f"{reply}" if outcome.reply is not None else str(act)
            return self._decide(ev, result, reply, written, evidence)
        d = ev.decision
        if kind == "PREPEND":
            d.prepend.append(act.text)
        elif kind == "HOLD":
            d.hold = act.text
        elif kind == "DISCARD":
            d.discard = act.text
            return self._decide(ev, PERMIT, None, str(act), evidence)
        elif kind == "FILTER":
            d.filter = act.text
        elif kind == "REDIRECT":
            d.redirect = act.text
        elif kind in ("WARN", "INFO"):
            d.warnings.append(f"{kind.lower()}: {act.text}")
        elif kind == "BCC":
            d.bcc.append(act.text)
        return DUNNO

    def _decide(self, ev: Evaluation, result: str, reply: Reply | None, action: str, ev_: Evidence) -> str:
        d = ev.decision
        d.result, d.reply, d.action, d.decided_by = result, reply, action, ev_
        return result

    def _access_reply(self, ev: Evaluation, act: Action, subject: tuple[str, str] | None) -> Reply:
        """Build the reply Postfix's smtpd builds for an access-style action."""
        cfg = ev.cfg
        name, cls = subject or stage_subject(ev.txn)
        kind = act.kind
        if kind == "CODE":
            code = act.code or 550
            default_text = "Access denied" if code >= 500 else "Service unavailable"
        elif kind == "REJECT":
            code, default_text = cfg.get("access_map_reject_code"), "Access denied"
        elif kind in ("DEFER", "DEFER_IF_PERMIT", "DEFER_IF_REJECT"):
            code = cfg.get("access_map_defer_code")
            default_text = "Access denied" if kind == "DEFER" else "Service unavailable"
        else:
            code, default_text = cfg.get("access_map_reject_code"), "Access denied"
        dsn = dsn_class_fix(act.dsn, code, "7.1")
        return Reply(code, dsn, f"<{name}>: {cls} rejected: {act.text or default_text}")

    def _finish(self, ev: Evaluation, outcome: str) -> Decision:
        d = ev.decision
        if outcome in (PERMIT, DUNNO) and ev.defer_if_permit is not None and d.discard is None:
            d.result, d.reply, d.action, d.decided_by = DEFER, *ev.defer_if_permit
            return d
        if outcome == DUNNO:
            d.result = DUNNO
        return d


def access_outcome(value: str, detail: str, subject: tuple[str, str] | None = None) -> Outcome:
    """An Outcome for a table lookup result, as access(5) interprets table values."""
    return Outcome(parse_action(value), detail, subject=subject)
