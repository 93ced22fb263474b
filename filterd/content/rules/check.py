"""``filterd rules --check PATH...``: load rule files and say what filterd makes of them.

Exit status 0 when every rule that is not an unsupported ``eval:`` test loaded (eval
tests filterd does not implement are expected with SpamAssassin's rule set: they are
listed, not failures); 1 when a line did not parse, a pattern did not compile, a meta
expression was invalid or a rule type is not supported.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from filterd.content.rules.evaluator import RuleSet
from filterd.content.rules.model import LoadStats
from filterd.content.rules.paths import shipped_rules_directory, spamassassin_rules_directory


def rules_check_command(paths: list[str], engine: str | None = None, out: TextIO | None = None) -> int:
    """Load ``paths`` (files or directories of ``*.cf``), print a report, return the exit code."""
    out = out or sys.stdout
    started = time.monotonic()
    ruleset = RuleSet.load(paths, engine=engine)
    sources(paths, ruleset.stats, out)
    report(ruleset.stats, time.monotonic() - started, out)
    return 0 if ruleset.stats.ok else 1


def sources(paths: list[str], stats: LoadStats, out: TextIO) -> None:
    """Where the rules came from: each path, what it is, and how many files it gave.

    With no argument ``filterd rules --check`` loads what the configuration names, and
    ``rules_extra_directories`` defaults to SpamAssassin's rules when they are installed:
    the administrator must be able to see whether they were found, and which set.
    """
    shipped = os.path.realpath(shipped_rules_directory())
    sa = spamassassin_rules_directory()
    sa_real = os.path.realpath(sa) if sa else None
    for path in paths:
        real = os.path.realpath(path)
        if real == shipped:
            what = "filterd's own rules"
        elif real == sa_real:
            what = "SpamAssassin's rules"
        else:
            what = "rules"
        inside = real.rstrip("/") + "/"
        count = sum(1 for f in stats.files if f == real or os.path.realpath(f).startswith(inside))
        missing = "" if os.path.exists(path) else ", does not exist"
        out.write(f"{what} from {path}: {count} file(s){missing}\n")
    if sa is None:
        out.write("SpamAssassin's rules: not installed (apt install spamassassin, or sa-update)\n")
    elif sa_real not in {os.path.realpath(p) for p in paths}:
        out.write(f"SpamAssassin's rules: installed in {sa}, not loaded "
                  "(rules_extra_directories is set without them)\n")


def report(stats: LoadStats, seconds: float, out: TextIO) -> None:
    """Print load statistics in the order an administrator reads them."""
    w = out.write
    w(f"files: {len(stats.files)}\n")
    total = sum(stats.loaded.values())
    w(f"rules loaded: {total}\n")
    for kind, count in sorted(stats.loaded.items()):
        w(f"  {kind:<14} {count}\n")
    if stats.native_eval:
        w("native eval tests: " + ", ".join(f"{f} ({n})" for f, n in sorted(stats.native_eval.items())) + "\n")
    w(f"disabled by score 0: {stats.disabled_zero_score}\n")
    w(f"sub-rules no scored rule reads (not evaluated): {stats.unreferenced}\n")
    w(f"if/ifplugin blocks skipped: {stats.skipped_blocks}\n")
    w(f"engine: {stats.engine}; patterns in hyperscan: {stats.hyperscan_accelerated} "
      f"({stats.hyperscan_exact} exact, {stats.hyperscan_prefilter} prefilter), "
      f"regex only: {stats.regex_only}\n")
    w(f"unsupported eval rules: {stats.unsupported_eval_count} "
      f"({len(stats.unsupported_eval)} functions)\n")
    for func, rules in sorted(stats.unsupported_eval.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        w(f"  {func}: {len(rules)} ({', '.join(sorted(rules)[:5])}{', ...' if len(rules) > 5 else ''})\n")
    if stats.unsupported_types:
        w("unsupported rule types: " + ", ".join(f"{t} ({n})" for t, n in sorted(stats.unsupported_types.items())) + "\n")
    if stats.ignored_directives:
        w(f"directives ignored (valid SpamAssassin settings filterd does not use): "
          f"{sum(stats.ignored_directives.values())} "
          f"({', '.join(sorted(stats.ignored_directives))})\n")
    for title, problems in (("parse errors", stats.parse_errors), ("regex errors", stats.regex_errors),
                            ("meta errors", stats.meta_errors)):
        w(f"{title}: {len(problems)}\n")
        for p in problems:
            w(f"  {p}\n")
    w(f"load time: {seconds:.1f}s\n")
    w("result: OK\n" if stats.ok else "result: FAILED\n")
