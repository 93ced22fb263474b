"""The content pipeline: every check of one message, cheap and decisive first, then a verdict.

Order, as amavisd-new orders its work: Postfix header/body checks (a REJECT there makes
everything else moot), banned file names, ClamAV, then the score rules and Bayes. ClamAV
runs even when a banned part was found: a message that is both is INFECTED (amavisd-new's
category order), and only the virus scanner can tell. Spam scoring is skipped once a
virus, banned or unchecked category blocks the message: scoring spam that will not be
delivered only costs time, and amavisd-new logs such mail with ``Hits: -`` too.
``filterd check`` runs every stage whatever the earlier ones found (``full``), and shows
what the server would do.

Each stage's outcome becomes :class:`~filterd.content.symbols.Symbol` objects, so
``verdict.symbols`` explains everything that happened. CPU-bound stages run in one small
thread pool per worker (``run_in_executor``), so the event loop keeps answering other
connections while a large message is parsed and scored.

Failure policy. What cannot answer *now* makes the verdict *tempfail*, so Postfix keeps
the message and tries again: a Postfix or banned table that cannot answer
(MapTempError), a clamd that cannot scan (with ``clamav_failure_action = defer``). A
check that fails on this message's content (an exception from parsing or checking it)
would fail the same way on every retry, until the message expired after days of 451s:
such a failure is named by a symbol and makes the message UNCHECKED, a final verdict.
The score rules and Bayes are different: if they fail, the message is scored without
them and the failure is a symbol, as amavisd-new passes mail when SpamAssassin fails.
Broken MIME never raises: message defects become the ``MIME_DEFECTS`` symbol, and a MIME
structure cut at a limit (see :mod:`filterd.content.message`) makes the message
UNCHECKED. :meth:`ContentPipeline.scan` never raises for anything in a message.

ClamAV in the embedded default: ``clamav_socket`` defaults to Debian's clamd socket. When
the configuration does not set it and no such socket exists at start, filterd scans no
viruses (one warning, logged when the pipeline is loaded) and scores and passes mail as
usual; a ``clamav_socket`` that is set, or a socket that exists and then fails, defers
mail as ``clamav_failure_action`` says.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from filterd.content.banned import BannedChecks, BannedResult, check_banned
from filterd.content.bayes.check import BayesClassifier
from filterd.content.clamav import ClamavScanner
from filterd.content.message import Message
from filterd.content.params import CONTENT_CHECKS
from filterd.content.postfix_checks import (
    ContentCheckResult,
    PostfixChecks,
    run_postfix_checks,
)
from filterd.content.rules import RuleSet, ruleset_from_config
from filterd.content.symbols import Symbol
from filterd.content.verdict import Findings, Verdict, VerdictPolicy, decide
from filterd.maps import MapTempError
from filterd.text import printable_ascii

log = logging.getLogger("filterd.content")

#: Score of a message whose MIME structure or header syntax is broken (a hint, not proof).
MIME_DEFECTS_SCORE = 0.5
#: Threads per worker for CPU-bound checks: they keep the loop responsive; with the GIL,
#: more threads would not make scoring faster.
CPU_THREADS = 2

T = TypeVar("T")
_serial = itertools.count(1)


def new_log_id() -> str:
    """amavisd-new's log id: the process id and a per-process message count, ``01234-05``."""
    return f"{os.getpid():05d}-{next(_serial):02d}"


@dataclass
class Preloaded:
    """The slow-to-build, read-only parts of a pipeline (compiled rules, the Bayes model).

    ``filterd serve`` builds them once in the master, before it forks the workers, so
    every worker shares the same memory (copy-on-write) and rules compile once, not once
    per worker.
    """

    ruleset: RuleSet | None = None
    bayes: BayesClassifier | None = None
    clamav_off: str | None = None
    """Why virus scanning is off for this start although ``content_checks`` names clamav."""

    @classmethod
    def from_config(cls, cfg: Any) -> "Preloaded":
        """Build the shared parts; decide (and warn, once per start) whether ClamAV is used."""
        checks = cfg.get("content_checks")
        clamav_off = clamav_unavailable(cfg)
        if clamav_off is not None:
            log.warning("warning: %s: viruses are NOT scanned; mail is scored and passed "
                        "without a virus check (install clamav-daemon and restart filterd, "
                        "or set clamav_socket, or set it empty to silence this warning)", clamav_off)
        return cls(
            ruleset_from_config(cfg) if "rules" in checks else None,
            BayesClassifier.load(cfg) if "bayes" in checks else None,
            clamav_off,
        )


def clamav_unavailable(cfg: Any) -> str | None:
    """Why ClamAV cannot be used at this start of an unconfigured machine, or None.

    Only when ``content_checks`` names clamav, ``clamav_socket`` was not set (neither in
    the configuration file nor with -o) and its default unix socket does not exist: the
    embedded default must serve on a machine without clamd. A socket that was set, or
    one that exists, is used, and a clamd failing there defers mail as before.
    """
    endpoint = cfg.get("clamav_socket")
    if "clamav" not in cfg.get("content_checks") or endpoint is None or cfg.is_set("clamav_socket"):
        return None
    if endpoint.kind == "unix" and not os.path.exists(endpoint.path):
        return f"clamav_socket is not set and no clamd socket exists at {endpoint.path}"
    return None


class ContentPipeline:
    """All content checks of one worker, built once; :meth:`scan` is safe to run concurrently."""

    def __init__(
        self,
        policy: VerdictPolicy,
        *,
        postfix_checks: PostfixChecks | None = None,
        banned: BannedChecks | None = None,
        clamav: ClamavScanner | None = None,
        clamav_failure_action: str = "defer",
        clamav_off: str | None = None,
        ruleset: RuleSet | None = None,
        bayes: BayesClassifier | None = None,
        executor: concurrent.futures.Executor | None = None,
    ):
        self.policy = policy
        self.postfix_checks = postfix_checks
        self.banned = banned
        self.clamav = clamav
        self.clamav_failure_action = clamav_failure_action
        self.clamav_off = clamav_off
        self.ruleset = ruleset
        self.bayes = bayes
        self._own_executor = executor is None
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=CPU_THREADS, thread_name_prefix="filterd-content")

    @classmethod
    def from_config(cls, cfg: Any, preloaded: Preloaded | None = None) -> "ContentPipeline":
        """Build every stage named in ``content_checks`` (tables opened, rules compiled)."""
        checks = cfg.get("content_checks")
        preloaded = preloaded or Preloaded.from_config(cfg)
        stages: dict[str, Any] = {}
        if "postfix_checks" in checks:
            stages["postfix_checks"] = PostfixChecks.from_config(cfg)
        if "banned" in checks:
            stages["banned"] = BannedChecks.from_config(cfg)
        if "clamav" in checks and cfg.get("clamav_socket") is not None and preloaded.clamav_off is None:
            stages["clamav"] = ClamavScanner(cfg)
        stages["ruleset"] = preloaded.ruleset
        stages["bayes"] = preloaded.bayes
        return cls(VerdictPolicy.from_config(cfg), clamav_failure_action=cfg.get("clamav_failure_action"),
                   clamav_off=preloaded.clamav_off, **stages)

    @property
    def stages(self) -> list[str]:
        """The stages that run, in order (for logs and ``filterd check``)."""
        present = {
            "postfix_checks": self.postfix_checks is not None,
            "banned": self.banned is not None,
            "clamav": self.clamav is not None,
            "rules": self.ruleset is not None,
            "bayes": self.bayes is not None,
        }
        return [name for name in CONTENT_CHECKS if present[name]]

    def close(self) -> None:
        if self._own_executor:
            self.executor.shutdown(wait=True)

    async def _cpu(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def scan(self, msg: Message, log_id: str | None = None, *, full: bool = False) -> Verdict:
        """Run the stages on ``msg`` and decide. Never raises for anything in the message.

        ``full`` (``filterd check``) runs every stage even where the server stops early
        (a header check's REJECT, a tempfail, a blocked virus), so the score and every
        symbol are shown; what happens after the point where the server stopped does
        not change the verdict's action.
        """
        log_id = log_id or new_log_id()
        findings = Findings()
        try:
            await self._scan(msg, findings, full)
        except Exception as exc:  # noqa: BLE001 - a bug in a stage must not loop the message
            where = msg.envelope.queue_id or "NOQUEUE"
            if _is_transient(exc):
                findings.tempfail = findings.tempfail or _check_failed(where, "content scan", exc)
            else:
                _failed_on_content(where, "content scan", exc, findings)
        return decide(self.policy, msg, findings, log_id)

    async def _scan(self, msg: Message, found: Findings, full: bool) -> None:
        where = msg.envelope.queue_id or "NOQUEUE"
        settled = False  # the server would have stopped here: later stages cannot change that

        def tempfail(reason: str) -> None:
            nonlocal settled
            if not settled:
                found.tempfail, settled = reason, True

        # one trip to the thread pool for header/body checks, banned names and MIME limits
        # (each trip costs ~50 us of CPU)
        postfix, banned, limits = await self._cpu(self._first_checks, msg, full)
        if isinstance(postfix, Exception):
            if _is_transient(postfix):
                tempfail(_check_failed(where, "header/body checks", postfix))
            else:
                _failed_on_content(where, "header/body checks", postfix, found)
        elif postfix is not None:
            found.postfix = postfix
            found.symbols += postfix.symbols
            if postfix.reject is not None or postfix.discard or postfix.hold:
                settled = True
        if settled and not full:
            return
        if isinstance(banned, Exception):
            if _is_transient(banned):
                tempfail(_check_failed(where, "banned check", banned))
            else:
                _failed_on_content(where, "banned check", banned, found)
        elif banned is not None:
            found.banned = banned
            found.symbols += banned.symbols
            found.unchecked += banned.unchecked
        if limits:
            found.unchecked += limits
            found.symbols.append(Symbol("MIME_LIMIT", 0.0, "MIME structure not fully inspected: limit reached",
                                        "; ".join(limits)))
        if settled and not full:
            return
        if self.clamav is not None:
            result = await self.clamav.scan(msg.raw)
            if result.status == "unchecked":  # too large for clamd: the same on every retry
                error = printable_ascii((result.error or "clamd could not scan it")[:300])
                found.symbols.append(Symbol("CLAMAV_LIMIT", 0.0, "too large for clamd to scan", error))
                found.unchecked.append("larger than clamd scans (StreamMaxLength)")
            elif result.status == "error":
                error = printable_ascii((result.error or "clamd unavailable")[:300])
                found.symbols.append(Symbol("CLAMAV_FAILURE", 0.0, "clamd could not scan the message", error))
                if self.clamav_failure_action == "defer":
                    tempfail(f"virus_scan FAILED: {error}")
                else:
                    if not settled:
                        log.warning("%s: passing unscanned message: %s", where, error)
                    found.virus_unchecked = error
            else:
                found.virus = result
                for name in result.virus_names:
                    found.symbols.append(Symbol("CLAMAV_VIRUS", 0.0, "ClamAV found a virus", printable_ascii(name[:200])))
        if (settled or self._blocked(found)) and not full:
            return
        found.symbols += await self._cpu(self._score, msg, list(found.symbols), found)
        found.spam_checked = True

    def _blocked(self, found: Findings) -> bool:
        """Whether a category above spam already blocks the message (scoring is moot)."""
        p = self.policy
        virus = found.virus is not None and found.virus.status == "infected"
        banned = found.banned is not None and found.banned.banned
        unchecked = bool(found.unchecked) or found.virus_unchecked is not None
        return any(present and action not in ("pass", "tag") for present, action in (
            (virus, p.virus_action), (banned, p.banned_action), (unchecked, p.unchecked_action)))

    def _first_checks(self, msg: Message, full: bool) -> tuple[ContentCheckResult | Exception | None,
                                                                BannedResult | Exception | None, list[str]]:
        """Postfix header/body checks, then banned names unless those checks already decided
        (in a worker thread), and the limits the MIME structure reached. A failure is
        returned, not raised, for :meth:`_scan` to judge."""
        postfix: ContentCheckResult | Exception | None
        try:
            postfix = None if self.postfix_checks is None else run_postfix_checks(self.postfix_checks, msg)
        except Exception as exc:  # noqa: BLE001 - judged by _scan
            postfix = exc
        decided = isinstance(postfix, ContentCheckResult) and (
            postfix.reject is not None or postfix.discard or postfix.hold)
        if decided and not full:
            return postfix, None, []
        banned: BannedResult | Exception | None
        try:
            banned = None if self.banned is None else check_banned(self.banned, msg)
        except Exception as exc:  # noqa: BLE001 - judged by _scan
            banned = exc
        return postfix, banned, msg.mime_limits()

    def _score(self, msg: Message, earlier: list[Symbol], found: Findings) -> list[Symbol]:
        """MIME defects, score rules and Bayes, then Bayes auto-learning (in a worker thread)."""
        where = msg.envelope.queue_id or "NOQUEUE"
        symbols: list[Symbol] = []
        defects = msg.defects
        if defects:
            symbols.append(Symbol("MIME_DEFECTS", MIME_DEFECTS_SCORE,
                                  "message has MIME structure or header syntax defects",
                                  "; ".join(defects[:5])[:300]))
        if self.ruleset is not None:
            try:
                symbols += self.ruleset.evaluate(msg)
            except Exception as exc:  # noqa: BLE001 - scored without rules, like SA failing in amavis
                log.exception("%s: score rules failed", where)
                symbols.append(Symbol("RULES_FAILURE", 0.0, "score rules failed", type(exc).__name__))
        if self.bayes is not None:
            try:
                symbols += self.bayes.symbols(msg)
            except Exception as exc:  # noqa: BLE001
                log.exception("%s: Bayes classification failed", where)
                symbols.append(Symbol("BAYES_FAILURE", 0.0, "Bayes classification failed", type(exc).__name__))
            symbols = self.bayes.rescale(symbols)  # the learned points, if learned (bayes/scale.py)
            found.autolearn = self._autolearn(msg, earlier + symbols)
        return symbols

    def _autolearn(self, msg: Message, symbols: list[Symbol]) -> str:
        bayes = self.bayes
        if bayes is None or not (bayes.enabled and bayes.auto_learn):
            return "disabled"
        try:
            learned = bayes.maybe_autolearn(msg, sum(s.score for s in symbols), symbols)
        except Exception:  # noqa: BLE001 - learning is best effort, never the message's fate
            log.exception("Bayes auto-learning failed")
            return "unavailable"
        return {True: "spam", False: "ham", None: "no"}[learned]


class QualityScorer:
    """A blocking ``message -> score`` function running this pipeline's real :meth:`scan`.

    For ``bench/quality.py``: it must measure exactly what ``filterd serve`` runs, so the
    pipeline is built by :meth:`ContentPipeline.from_config` and every message goes through
    :meth:`ContentPipeline.scan` and :func:`decide`, on one event loop kept for all calls (a
    loop per message would cost more than small messages take to score). The loop and the
    pipeline's threads live until :meth:`close` (or the end of a ``with`` block): a caller
    that builds one scorer per fold would otherwise leak a loop and its threads per fold.
    """

    def __init__(self, cfg: Any):
        self._pipeline = ContentPipeline.from_config(cfg)
        self._runner = asyncio.Runner()

    def __call__(self, msg: Message) -> float:
        return float(self._runner.run(self._pipeline.scan(msg)).score)

    def close(self) -> None:
        """Close the event loop, then stop the pipeline's threads."""
        self._runner.close()
        self._pipeline.close()

    def __enter__(self) -> "QualityScorer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


#: The ``bench/quality.py`` hook: ``quality_scorer(cfg)`` is a scorer to close when done.
quality_scorer = QualityScorer


def _is_transient(exc: Exception) -> bool:
    """A failure of the surroundings, which a retry may not meet again: a table that cannot
    answer now, I/O, memory. Anything else raised while checking a message is its
    content meeting a bug, and would fail the same way on every retry."""
    return isinstance(exc, (MapTempError, OSError, MemoryError))


def _failed_on_content(where: str, check: str, exc: Exception, found: Findings) -> None:
    """A check that failed on this message: logged with its traceback, named by a symbol,
    and the message is UNCHECKED (a final verdict, not a 451 retried until it expires)."""
    log.error("%s: %s failed on this message; it is UNCHECKED", where, check, exc_info=exc)
    name = check.upper().replace("/", "_").replace(" ", "_") + "_FAILED"
    found.symbols.append(Symbol(name, 0.0, f"{check} failed on this message", type(exc).__name__))
    found.unchecked.append(f"{check} failed ({type(exc).__name__})")


def _check_failed(where: str, check: str, exc: Exception) -> str:
    """The tempfail reason for a check that could not run: an unchecked message must
    not pass. A table that cannot answer says so; anything else is a fault, logged
    with its traceback and named only by its type in the reply."""
    if isinstance(exc, MapTempError):
        return f"{check} FAILED: {exc}"
    log.error("%s: %s failed", where, check, exc_info=exc)
    return f"{check} FAILED: {type(exc).__name__}"
