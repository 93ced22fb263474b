"""What a SpamAssassin rule file says, before anything is compiled.

The parser fills a :class:`RuleConfig` (rule definitions plus the ``score``, ``describe``,
``tflags``... lines that refer to them by name, which may come before or after the
definition and in other files); the evaluator compiles it. Keeping the two apart lets
``filterd rules --check`` report on a configuration without evaluating anything.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeVar

T = TypeVar("T")


class RuleKind(str, Enum):
    """The rule types filterd evaluates (``mimeheader`` and plugin types are not among them)."""

    HEADER = "header"
    BODY = "body"
    RAWBODY = "rawbody"
    URI = "uri"
    FULL = "full"
    META = "meta"


@dataclass
class RuleDef:
    """One rule definition line, as written (patterns are translated at compile time)."""

    name: str
    kind: RuleKind
    where: str  # "file:line" of the definition
    pattern: str | None = None  # the regex between its delimiters
    prefilter_pattern: str | None = None  # a superset of ``pattern`` for Hyperscan (coarse tags)
    mods: str = ""
    negate: bool = False  # header NAME Hdr !~ /re/ and header NAME !exists:Hdr... forms
    header: str | None = None  # header spec: "Subject", "From:addr", "ALL", "ToCc:raw"...
    exists: bool = False  # header NAME exists:Hdr
    if_unset: str | None = None  # [if-unset: STRING]
    meta: str | None = None  # meta expression text
    eval_func: str | None = None  # eval:NAME(args)
    eval_args: tuple[str, ...] = ()

    @property
    def is_eval(self) -> bool:
        return self.eval_func is not None


@dataclass
class Problem:
    """A line or rule that could not be used, with where it came from and why."""

    where: str
    message: str
    rule: str | None = None

    def __str__(self) -> str:
        return f"{self.where}: {(self.rule + ': ') if self.rule else ''}{self.message}"


class RuleSettings:
    """Plugin settings read from the rule files (``freemail_domains`` ...), for eval tests.

    The parser appends each value line under its directive name; an eval module turns
    them into what it needs with :meth:`derived`, once per rule set rather than once per
    message (a domain table, a compiled wildcard pattern).
    """

    def __init__(self) -> None:
        self.values: dict[str, list[str]] = {}
        self._derived: dict[Callable[..., object], object] = {}

    def add(self, name: str, value: str) -> None:
        self.values.setdefault(name, []).append(value)

    def get(self, name: str) -> list[str]:
        """Every value line of ``name``, in the order read (empty when never set)."""
        return self.values.get(name, [])

    def derived(self, build: Callable[[RuleSettings], T]) -> T:
        """``build(self)``, worked out on first use and kept (the result must not change)."""
        try:
            return self._derived[build]  # type: ignore[return-value]
        except KeyError:
            result = self._derived[build] = build(self)
            return result


@dataclass
class RuleConfig:
    """Everything read from a set of rule files, keyed by rule name."""

    rules: dict[str, RuleDef] = field(default_factory=dict)
    scores: dict[str, list[float]] = field(default_factory=dict)
    describes: dict[str, str] = field(default_factory=dict)
    tflags: dict[str, set[str]] = field(default_factory=dict)
    priorities: dict[str, int] = field(default_factory=dict)
    # ReplaceTags plugin configuration
    replace_start: str = "<"
    replace_end: str = ">"
    replace_tags: dict[str, str] = field(default_factory=dict)
    replace_pre: dict[str, str] = field(default_factory=dict)
    replace_inter: dict[str, str] = field(default_factory=dict)
    replace_post: dict[str, str] = field(default_factory=dict)
    replace_rules: set[str] = field(default_factory=set)
    settings: RuleSettings = field(default_factory=RuleSettings)  # plugin settings evals read
    errors: list[Problem] = field(default_factory=list)  # malformed lines (skipped)
    ignored_directives: Counter[str] = field(default_factory=Counter)  # valid SA, not used
    unsupported_types: Counter[str] = field(default_factory=Counter)  # e.g. mimeheader
    skipped_blocks: int = 0  # if/ifplugin blocks whose condition was false
    files: list[str] = field(default_factory=list)


@dataclass
class LoadStats:
    """What :meth:`RuleSet.load` made of the files: the numbers ``rules --check`` prints."""

    files: list[str] = field(default_factory=list)
    loaded: Counter[str] = field(default_factory=Counter)  # by kind, eval rules included
    native_eval: Counter[str] = field(default_factory=Counter)  # eval functions implemented
    unsupported_eval: dict[str, list[str]] = field(default_factory=dict)  # function -> rules
    regex_errors: list[Problem] = field(default_factory=list)
    meta_errors: list[Problem] = field(default_factory=list)
    parse_errors: list[Problem] = field(default_factory=list)
    ignored_directives: Counter[str] = field(default_factory=Counter)
    unsupported_types: Counter[str] = field(default_factory=Counter)
    skipped_blocks: int = 0
    disabled_zero_score: int = 0
    unreferenced: int = 0  # sub-rules no scored rule reads: not evaluated
    engine: str = "regex"
    hyperscan_exact: int = 0  # patterns Hyperscan compiled as written
    hyperscan_prefilter: int = 0  # patterns Hyperscan took only as an approximation
    regex_only: int = 0  # patterns only the regex module runs

    @property
    def hyperscan_accelerated(self) -> int:
        return self.hyperscan_exact + self.hyperscan_prefilter

    @property
    def unsupported_eval_count(self) -> int:
        return sum(len(v) for v in self.unsupported_eval.values())

    @property
    def ok(self) -> bool:
        """True when every rule that is not an unsupported eval() loaded."""
        return not (self.regex_errors or self.meta_errors or self.parse_errors or self.unsupported_types)
