"""A compiled SpamAssassin rule set and its evaluation against one message.

Loading does all the expensive work once: parse, expand ReplaceTags, translate and
compile every pattern, group patterns by what they match (one :class:`PatternSet` per
rule type, one per header), compile meta expressions and order them so each meta runs
after the metas it reads, all compiled into one Python function (see
:func:`compile_metas`). Evaluating a message is then a handful of scans plus one call of
that function; the costliest sub-rules run only when their result can change a verdict
(see :meth:`RuleSet._resolve`).

Scores: SpamAssassin's four-score form ``score NAME s0 s1 s2 s3`` is indexed by
(network tests, Bayes) = (off,off), (on,off), (off,on), (on,on). filterd's content
filter runs Bayes itself and no network tests inside the rule engine (DNSBL/URIBL are
their own checks), so it uses score set 2, the third number. A single number applies to
every set. Rules without a score get 1.0 (0.01 for ``T_`` test rules, negative with
``tflags nice``), rules scored 0 are disabled, as in SpamAssassin, and metas read
undefined, disabled or unsupported rules as 0 (SpamAssassin 4 does the same).
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from filterd.content.message import Message
from filterd.content.rules.evals import NATIVE_EVALS, NativeEval
from filterd.content.rules.coarse import coarse_tag
from filterd.content.rules.expr import ExprError, Value, compile_expr, compile_metas
from filterd.content.rules.matcher import HsCache, PatternRule, PatternSet, hyperscan_available
from filterd.content.rules.model import LoadStats, Problem, RuleConfig, RuleDef, RuleKind, RuleSettings
from filterd.content.rules.parser import parse_rule_files
from filterd.content.rules.perlre import PerlRegexError, make_perl_regex
from filterd.content.rules.views import MessageViews, parse_header_spec, to_bytes
from filterd.content.symbols import Symbol

SCORE_SET = 2  # Bayes on, network tests off (see module docstring)
ENGINES = ("hyperscan", "regex")
_MAXHITS = re.compile(r"^maxhits=(\d+)$")
_TAG_SPLIT = re.compile(r"(<[^<>]+>)")
#: Most deferred sub-rules whose combinations are tried instead of running them (see _resolve).
LAZY_MAX = 4


def default_engine() -> str:
    return "hyperscan" if hyperscan_available() else "regex"


@dataclass(frozen=True)
class _HeaderRule:
    index: int  # in its PatternSet
    name: str
    negate: bool


@dataclass(frozen=True)
class _HeaderGroup:
    spec: str
    if_unset: bytes | None
    patterns: PatternSet
    rules: tuple[_HeaderRule, ...]  # rules[i] is the rule of pattern i
    negated: tuple[_HeaderRule, ...]  # the ``!~`` rules: they fire when their pattern does not match


@dataclass(frozen=True)
class _EvalRule:
    name: str
    kind: RuleKind
    native: NativeEval
    args: tuple[str, ...]


class RuleSet:
    """Compiled rules; :meth:`evaluate` is synchronous and thread-safe."""

    def __init__(self, stats: LoadStats):
        self.stats = stats
        self.scores: dict[str, float] = {}
        self.describes: dict[str, str] = {}
        self.settings = RuleSettings()  # plugin settings, handed to eval tests via MessageViews
        self._headers: list[_HeaderGroup] = []
        self._exists: list[tuple[str, str]] = []  # (rule, header spec)
        self._sets: dict[RuleKind, PatternSet] = {}
        self._lazy: dict[RuleKind, frozenset[int]] = {}  # per set: sub-rules run only when they matter
        self._evals: list[_EvalRule] = []
        self._run_metas: Callable[[dict[str, Value]], None] = compile_metas([])
        self._run_downstream: Callable[[dict[str, Value]], None] = compile_metas([])
        self._downstream_scored: tuple[str, ...] = ()

    # -- loading ---------------------------------------------------------------------
    @classmethod
    def load(cls, paths: list[str], engine: str | None = None, score_set: int = SCORE_SET,
             cache_dir: str | None = None) -> "RuleSet":
        """Load rule files/directories; problems are recorded in :attr:`stats`, never raised.

        ``cache_dir`` keeps compiled Hyperscan databases between runs (see HsCache).
        """
        engine = engine or default_engine()
        if engine not in ENGINES:
            raise ValueError(f"rules_engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        if engine == "hyperscan" and not hyperscan_available():
            engine = "regex"
        config = parse_rule_files(paths, native_evals=NATIVE_EVALS)
        stats = LoadStats(files=list(config.files), parse_errors=list(config.errors),
                          ignored_directives=config.ignored_directives,
                          unsupported_types=config.unsupported_types,
                          skipped_blocks=config.skipped_blocks, engine=engine)
        ruleset = cls(stats)
        ruleset.settings = config.settings
        ruleset._compile(config, engine == "hyperscan", score_set,
                         HsCache(cache_dir) if cache_dir else None)
        return ruleset

    def _compile(self, cfg: RuleConfig, use_hs: bool, score_set: int, cache: HsCache | None) -> None:
        stats = self.stats
        _expand_replace_tags(cfg)
        pattern_rules: dict[RuleKind, list[PatternRule]] = defaultdict(list)
        header_groups: dict[tuple[str, str | None], list[tuple[PatternRule, bool]]] = defaultdict(list)
        metas: dict[str, tuple[set[str], RuleDef]] = {}
        needed = _needed_rules(cfg, score_set)
        for name, rule in cfg.rules.items():
            score = _score(name, cfg, score_set)
            if score == 0 and not name.startswith("__"):
                stats.disabled_zero_score += 1
                continue
            if name not in needed:
                stats.unreferenced += 1
                continue
            self.scores[name] = score
            self.describes[name] = cfg.describes.get(name, "")
            if rule.is_eval:
                self._add_eval(rule)
                continue
            if rule.kind is RuleKind.META:
                try:
                    _, deps = compile_expr(rule.meta or "")
                except ExprError as exc:
                    stats.meta_errors.append(Problem(rule.where, f"bad meta expression: {exc}", name))
                    continue
                metas[name] = (deps, rule)
                continue
            if rule.kind is RuleKind.HEADER and rule.exists:
                try:
                    parse_header_spec(rule.header or "")
                except ValueError as exc:
                    stats.regex_errors.append(Problem(rule.where, str(exc), name))
                    continue
                self._exists.append((name, rule.header or ""))
                stats.loaded["header"] += 1
                continue
            compiled = self._compile_pattern(rule, cfg)
            if compiled is None:
                continue
            if rule.kind is RuleKind.HEADER:
                try:
                    parse_header_spec(rule.header or "")
                except ValueError as exc:
                    stats.regex_errors.append(Problem(rule.where, str(exc), name))
                    continue
                header_groups[(rule.header or "", rule.if_unset)].append((compiled, rule.negate))
            else:
                pattern_rules[rule.kind].append(compiled)
            stats.loaded[rule.kind.value] += 1

        for (spec, if_unset), members in header_groups.items():
            pset = PatternSet([p for p, _ in members], use_hs, cache)
            self._count_engine(pset)
            rules = tuple(_HeaderRule(i, p.name, neg) for i, (p, neg) in enumerate(members))
            unset = None if if_unset is None else to_bytes(if_unset)
            self._headers.append(_HeaderGroup(spec, unset, pset, rules, tuple(r for r in rules if r.negate)))
        for kind, plist in pattern_rules.items():
            pset = PatternSet(plist, use_hs, cache)
            self._count_engine(pset)
            self._sets[kind] = pset
            self._lazy[kind] = frozenset(i for i in pset.costly if plist[i].name.startswith("__"))
        self._order_metas(metas)

    def _compile_pattern(self, rule: RuleDef, cfg: RuleConfig) -> PatternRule | None:
        flags = cfg.tflags.get(rule.name, set())
        maxhits = 0
        for flag in flags:
            m = _MAXHITS.match(flag)
            if m:
                maxhits = int(m.group(1))
        try:
            perl = make_perl_regex(rule.pattern or "", rule.mods)
            compiled = perl.compile()
        except PerlRegexError as exc:
            self.stats.regex_errors.append(Problem(rule.where, str(exc), rule.name))
            return None
        prefilter = None
        if rule.prefilter_pattern is not None:
            try:
                prefilter = make_perl_regex(rule.prefilter_pattern, rule.mods)
            except PerlRegexError:
                prefilter = None  # Hyperscan then gets the exact pattern, as before
        return PatternRule(rule.name, perl, compiled, multiple="multiple" in flags, maxhits=maxhits,
                           prefilter=prefilter)

    def _add_eval(self, rule: RuleDef) -> None:
        func = rule.eval_func or ""
        native = NATIVE_EVALS.get(func)
        if native is None or not native.accepts(rule.eval_args):
            label = func if native is None else f"{func}({', '.join(repr(a) for a in rule.eval_args)})"
            self.stats.unsupported_eval.setdefault(label, []).append(rule.name)
            return
        self._evals.append(_EvalRule(rule.name, rule.kind, native, rule.eval_args))
        self.stats.native_eval[func] += 1
        self.stats.loaded[f"{rule.kind.value} eval"] += 1

    def _count_engine(self, pset: PatternSet) -> None:
        self.stats.hyperscan_exact += pset.hs_exact
        self.stats.hyperscan_prefilter += pset.hs_prefilter
        self.stats.regex_only += pset.regex_only

    def _order_metas(self, metas: dict[str, tuple[set[str], RuleDef]]) -> None:
        """Order metas so that each runs after the metas it reads (cycles are errors), and
        compile them, in that order, into one function (see :func:`compile_metas`)."""
        state: dict[str, int] = {}  # 1 = visiting, 2 = done
        ordered: list[str] = []
        broken: set[str] = set()

        def visit(name: str, chain: list[str]) -> bool:
            if state.get(name) == 2:
                return name not in broken
            if state.get(name) == 1:
                cycle = " -> ".join(chain[chain.index(name):] + [name])
                self.stats.meta_errors.append(Problem(metas[name][1].where, f"meta dependency loop: {cycle}", name))
                broken.add(name)
                return False
            state[name] = 1
            bad_deps = sorted(d for d in metas[name][0] if d in metas and not visit(d, chain + [name]))
            state[name] = 2
            if bad_deps and name not in broken:
                self.stats.meta_errors.append(
                    Problem(metas[name][1].where, f"depends on broken meta {', '.join(bad_deps)}", name))
            if bad_deps or name in broken:
                broken.add(name)
                return False
            ordered.append(name)
            return True

        for name in metas:
            visit(name, [])
        self._run_metas = compile_metas([(name, metas[name][1].meta or "") for name in ordered])
        # the metas reading a deferrable sub-rule (see _resolve), directly or through others
        lazy = {pset.rules[i].name for kind, pset in self._sets.items() for i in self._lazy[kind]}
        downstream: list[str] = []
        for name in ordered:
            if metas[name][0] & lazy:
                downstream.append(name)
                lazy.add(name)
        self._run_downstream = compile_metas([(name, metas[name][1].meta or "") for name in downstream], clear=True)
        self._downstream_scored = tuple(n for n in downstream if not n.startswith("__") and self.scores.get(n))
        self.stats.loaded["meta"] += len(ordered)

    # -- evaluation ------------------------------------------------------------------
    def evaluate(self, msg: Message) -> list[Symbol]:
        """Every scored rule that fires on ``msg``, sorted by name."""
        views = MessageViews(msg, self.settings)
        hits: dict[str, Value] = {}
        evidence: dict[str, bytes] = {}
        pending: list[tuple[PatternSet, int, list[bytes]]] = []
        for group in self._headers:
            text = views.header(group.spec)
            if text is None:
                text = group.if_unset if group.if_unset is not None else b""
            found = group.patterns.match([text])
            for i, m in found.items():
                r = group.rules[i]
                if not r.negate:
                    hits[r.name] = m.count
                    evidence[r.name] = m.evidence
            for r in group.negated:
                if r.index not in found:
                    hits[r.name] = 1
        for name, spec in self._exists:
            if views.header(spec) is not None:
                hits[name] = 1
        for kind, texts in ((RuleKind.BODY, lambda: views.body_lines), (RuleKind.RAWBODY, lambda: views.rawbody_chunks),
                            (RuleKind.URI, lambda: views.uris), (RuleKind.FULL, lambda: [views.full])):
            pset = self._sets.get(kind)
            if pset is None:
                continue
            waiting: dict[int, list[bytes]] = {}
            for i, m in pset.match(texts(), self._lazy[kind], waiting).items():
                name = pset.rules[i].name
                hits[name] = m.count
                evidence[name] = m.evidence
            pending.extend((pset, i, lines) for i, lines in waiting.items() if pset.rules[i].name not in hits)
        for ev in self._evals:
            try:
                if ev.native.fn(views, ev.args):
                    hits[ev.name] = 1
            except (ValueError, LookupError, TypeError, ArithmeticError):
                continue  # hostile input broke a test: it does not fire, the rest still runs
        self._run_metas(hits)  # the deferred sub-rules count 0 so far
        if pending:
            self._resolve(hits, pending)
        return [
            Symbol(name, self.scores[name], self.describes.get(name, ""), _evidence(evidence.get(name)))
            for name in sorted(hits)
            if not name.startswith("__") and self.scores.get(name)
        ]

    def _resolve(self, hits: dict[str, Value], pending: list[tuple[PatternSet, int, list[bytes]]]) -> None:
        """Run the deferred sub-rules whose result can change which scored rules fire, and
        bring the metas that read them up to date in ``hits``.

        SpamAssassin's costliest patterns (__FILL_THIS_FORM_*: look-alike letters, a
        repeated group) are sub-rules whose Hyperscan filter lets a line through in most
        messages, at milliseconds of backtracking each, while the metas reading them often
        decide the same either way (a mailing-list message, say). While at most
        :data:`LAZY_MAX` remain, every combination of their values is tried through the
        metas that read them (microseconds); when the scored rules come out the same, the
        rest need not run. Otherwise the one with the fewest candidate texts runs next.
        """
        todo = sorted(pending, key=lambda p: len(p[2]))
        while todo and not (len(todo) <= LAZY_MAX and self._irrelevant(hits, [p.rules[i].name for p, i, _ in todo])):
            pset, i, texts = todo.pop(0)
            if pset.confirm(i, texts) is not None:
                hits[pset.rules[i].name] = 1  # not ``multiple``: a hit counts 1
        self._run_downstream(hits)

    def _irrelevant(self, hits: dict[str, Value], names: list[str]) -> bool:
        """Whether the scored rules that fire are the same whichever of the sub-rules
        ``names`` (each worth 0 or 1) match, given the results in ``hits``."""
        outcome: frozenset[str] | None = None
        for values in itertools.product((0, 1), repeat=len(names)):
            trial = dict(hits)
            trial.update((name, 1) for name, value in zip(names, values) if value)
            self._run_downstream(trial)
            fired = frozenset(n for n in self._downstream_scored if n in trial)
            if outcome is None:
                outcome = fired
            elif fired != outcome:
                return False
        return True


def _evidence(data: bytes | None) -> str:
    return "" if not data else data.decode("utf-8", "replace").replace("\n", " ").strip()


def _needed_rules(cfg: RuleConfig, score_set: int) -> set[str]:
    """The rules whose result can reach a verdict: every scored rule, and whatever its
    meta expressions read, transitively. A sub-rule (``__NAME``) read by no scored rule
    only costs time: SpamAssassin's set has hundreds (parts of metas whose own score is
    0 in this score set), some of them the slowest patterns in it."""
    needed: set[str] = set()
    todo = [n for n in cfg.rules if not n.startswith("__") and _score(n, cfg, score_set) != 0]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        rule = cfg.rules.get(name)
        if rule is not None and rule.kind is RuleKind.META and not rule.is_eval:
            try:
                _, deps = compile_expr(rule.meta or "")
            except ExprError:
                continue  # reported when the meta itself is compiled
            todo.extend(d for d in deps if d not in needed)
    return needed


def _score(name: str, cfg: RuleConfig, score_set: int) -> float:
    values = cfg.scores.get(name)
    if values:
        return values[score_set] if len(values) == 4 else values[0]
    score = 0.01 if name.startswith("T_") else 1.0
    return -score if "nice" in cfg.tflags.get(name, ()) else score


def _expand_replace_tags(cfg: RuleConfig) -> None:
    """SpamAssassin's ReplaceTags: ``<A>`` in listed rules becomes the ``replace_tag A`` text.

    Where that makes a pattern that coarse letters (:mod:`coarse`) can shorten, the rule
    also gets the pattern built from them, as its Hyperscan pre-filter.
    """
    coarse_tags = {name: coarse_tag(value) for name, value in cfg.replace_tags.items()}
    for name in cfg.replace_rules:
        rule = cfg.rules.get(name)
        if rule is None or rule.pattern is None:
            continue
        exact = _expand_tags(cfg, rule.pattern, cfg.replace_tags)
        rough = _expand_tags(cfg, rule.pattern, coarse_tags)
        rule.pattern = exact
        rule.prefilter_pattern = rough if rough != exact else None


def _expand_tags(cfg: RuleConfig, pattern: str, tags: dict[str, str]) -> str:
    """``pattern`` with its tags replaced by their ``tags`` text (nested tags too)."""
    start, end = re.escape(cfg.replace_start), re.escape(cfg.replace_end)
    tag_re = re.compile(f"{start}(.+?){end}")
    for _ in range(6):
        again = False
        pattern, pre_name = _take_modifier(pattern, start, end, "pre")
        pattern, post_name = _take_modifier(pattern, start, end, "post")
        pattern, inter_name = _take_modifier(pattern, start, end, "inter")
        parts = _TAG_SPLIT.split(pattern)
        while parts and parts[-1] == "":  # Perl's split drops trailing empty fields
            parts.pop()
        pre_text = cfg.replace_pre.get(pre_name or "", "")
        post_text = cfg.replace_post.get(post_name or "", "")
        inter_text = cfg.replace_inter.get(inter_name or "", "")
        out: list[str] = []
        for part in parts:
            if part == "":
                out.append(inter_text)  # between two adjacent tags (or before a leading one)
                continue
            m = tag_re.fullmatch(part)
            replacement = tags.get(m.group(1)) if m else None
            if m and replacement:
                again = again or bool(re.search(r"<[^>]+>", replacement))
                part = replacement
            if m:
                part = pre_text + part + post_text
            out.append(part)
        pattern = "".join(out)
        if not again:
            break
    return pattern


def _take_modifier(pattern: str, start: str, end: str, word: str) -> tuple[str, str | None]:
    m = re.search(f"{start}{word} (.+?){end}", pattern)
    if not m:
        return pattern, None
    return pattern[:m.start()] + pattern[m.end():], m.group(1)
