"""The content pipeline: every check of one message, cheap and decisive first, then a verdict.

Order, as amavisd-new orders its work: Postfix header/body checks (a REJECT there makes
everything else moot), banned file names, ClamAV, then the score rules and Bayes. A
stage that blocks the message (a virus to quarantine, a banned part to reject) ends the
scan: scoring spam that will not be delivered only costs time, and amavisd-new logs such
mail with ``Hits: -`` too.

Each stage's outcome becomes :class:`~filterd.content.symbols.Symbol` objects, so
``verdict.symbols`` explains everything that happened. CPU-bound stages run in one small
thread pool per worker (``run_in_executor``), so the event loop keeps answering other
connections while a large message is parsed and scored.

Failure policy: a Postfix table that cannot answer, a banned check that fails, or a
clamd that cannot scan (with ``clamav_failure_action = defer``) makes the verdict
*tempfail*: Postfix keeps the message and tries again. The score rules and Bayes are
different: if they fail, the message is scored without them and the failure is a symbol,
as amavisd-new passes mail when SpamAssassin fails. Broken MIME never raises: message
defects become the ``MIME_DEFECTS`` symbol.
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

    @classmethod
    def from_config(cls, cfg: Any) -> "Preloaded":
        checks = cfg.get("content_checks")
        return cls(
            ruleset_from_config(cfg) if "rules" in checks else None,
            BayesClassifier.load(cfg) if "bayes" in checks else None,
        )


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
        ruleset: RuleSet | None = None,
        bayes: BayesClassifier | None = None,
        executor: concurrent.futures.Executor | None = None,
    ):
        self.policy = policy
        self.postfix_checks = postfix_checks
        self.banned = banned
        self.clamav = clamav
        self.clamav_failure_action = clamav_failure_action
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
        if "clamav" in checks and cfg.get("clamav_socket") is not None:
            stages["clamav"] = ClamavScanner(cfg)
        stages["ruleset"] = preloaded.ruleset
        stages["bayes"] = preloaded.bayes
        return cls(VerdictPolicy.from_config(cfg),
                   clamav_failure_action=cfg.get("clamav_failure_action"), **stages)

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

    async def scan(self, msg: Message, log_id: str | None = None) -> Verdict:
        """Run the stages on ``msg`` and decide. Never raises for anything in the message."""
        log_id = log_id or new_log_id()
        findings = Findings()
        await self._scan(msg, findings)
        return decide(self.policy, msg, findings, log_id)

    async def _scan(self, msg: Message, found: Findings) -> None:
        where = msg.envelope.queue_id or "NOQUEUE"
        if self.postfix_checks is None and self.banned is None:
            postfix = banned = None
        else:  # one trip to the thread pool for both (each trip costs ~50 us of CPU)
            postfix, banned = await self._cpu(self._first_checks, msg)
        if isinstance(postfix, Exception):
            found.tempfail = _check_failed(where, "header/body checks", postfix)
            return
        if postfix is not None:
            found.postfix = postfix
            found.symbols += postfix.symbols
            if postfix.reject is not None or postfix.discard or postfix.hold:
                return
        if isinstance(banned, Exception):
            found.tempfail = _check_failed(where, "banned check", banned)
            return
        if banned is not None:
            found.banned = banned
            found.symbols += banned.symbols
            if banned.banned and self.policy.banned_action not in ("pass", "tag"):
                return
        if self.clamav is not None:
            result = await self.clamav.scan(msg.raw)
            if result.status == "error":
                found.symbols.append(Symbol("CLAMAV_FAILURE", 0.0, "clamd could not scan the message",
                                            result.error or ""))
                if self.clamav_failure_action == "defer":
                    found.tempfail = f"virus_scan FAILED: {result.error}"
                    return
                log.warning("%s: passing unscanned message: %s", where, result.error)
                found.virus_unchecked = result.error or "clamd unavailable"
            else:
                found.virus = result
                for name in result.virus_names:
                    found.symbols.append(Symbol("CLAMAV_VIRUS", 0.0, "ClamAV found a virus", name))
                if result.status == "infected" and self.policy.virus_action not in ("pass", "tag"):
                    return
        found.symbols += await self._cpu(self._score, msg, list(found.symbols), found)
        found.spam_checked = True

    def _first_checks(self, msg: Message) -> tuple[ContentCheckResult | Exception | None,
                                                    BannedResult | Exception | None]:
        """Postfix header/body checks, then banned names unless those checks already decided
        (in a worker thread). A failure is returned, not raised, for :meth:`_scan` to judge."""
        try:
            postfix = None if self.postfix_checks is None else run_postfix_checks(self.postfix_checks, msg)
        except Exception as exc:  # noqa: BLE001 - judged by _scan: tempfail
            return exc, None
        if postfix is not None and (postfix.reject is not None or postfix.discard or postfix.hold):
            return postfix, None
        try:
            return postfix, None if self.banned is None else check_banned(self.banned, msg)
        except Exception as exc:  # noqa: BLE001 - judged by _scan: tempfail
            return postfix, exc

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


def _check_failed(where: str, check: str, exc: Exception) -> str:
    """The tempfail reason for a check that could not run: an unchecked message must
    not pass. A table that cannot answer says so; anything else is a fault, logged
    with its traceback and named only by its type in the reply."""
    if isinstance(exc, MapTempError):
        return f"{check} FAILED: {exc}"
    log.error("%s: %s failed", where, check, exc_info=exc)
    return f"{check} FAILED: {type(exc).__name__}"
