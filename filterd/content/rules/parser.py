"""Reading SpamAssassin rule files into a :class:`RuleConfig`.

Files are read as latin-1 so every byte of a pattern survives unchanged (patterns match
bytes, see :mod:`perlre`). A line that cannot be understood is reported with its
``file:line`` and skipped; it never stops the rest of the file from loading, because a
rule set of thousands of lines should not be lost to one typo.

Conditionals are evaluated as SpamAssassin 4.0.1 with the plugins filterd provides:
``ifplugin``/``if plugin(...)`` is true only for :data:`PROVIDED_PLUGINS`, ``if can(...)``
only for :data:`FEATURES` and for ``has_NAME`` of eval functions filterd implements, and
``version`` is 4.000001.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from filterd.content.rules.evalargs import is_number
from filterd.content.rules.expr import ExprError, compile_expr
from filterd.content.rules.model import Problem, RuleConfig, RuleDef, RuleKind
from filterd.content.rules.perlre import PerlRegexError, split_regex_literal

SA_VERSION = 4.000001
PERL_VERSION = 5.036

# Plugins whose rules filterd evaluates. The *Eval plugins are listed so that their eval
# rules load: the ones implemented natively run, the others are counted as unsupported.
# FreeMail is implemented whole (evals_freemail), so its settings and rules are read.
# Network, reputation and learning plugins are not provided: their blocks are skipped
# (filterd's own DNSBL and Bayes parts do that work).
PROVIDED_PLUGINS = frozenset({
    "Mail::SpamAssassin::Plugin::Check",
    "Mail::SpamAssassin::Plugin::ReplaceTags",
    "Mail::SpamAssassin::Plugin::HeaderEval",
    "Mail::SpamAssassin::Plugin::BodyEval",
    "Mail::SpamAssassin::Plugin::MIMEEval",
    "Mail::SpamAssassin::Plugin::HTMLEval",
    "Mail::SpamAssassin::Plugin::FreeMail",
})

# Conf features filterd's loader has (the rest of ``can(...)`` is false).
FEATURES = frozenset({
    "Mail::SpamAssassin::Conf::feature_bug6558_free",  # metas tolerate undefined rules
    "Mail::SpamAssassin::Conf::perl_min_version_5010000",  # 5.10 regex syntax is handled
    "Mail::SpamAssassin::Conf::feature_yesno_takes_args",
})

RULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_COMMENT = re.compile(r"(?<!\\)#.*$")
_DIRECTIVE = re.compile(r"^(\S+)(?:\s+(.*))?$")
_EVAL = re.compile(r"^eval:\s*([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*$")
_EVAL_ARG = re.compile(r"""\s*(?:'([^']*)'|"([^"]*)"|([^,\s]+))\s*(?:,|$)""")
_HEADER_TEST = re.compile(r"^(\S+?)\s*(=~|!~)\s*(.*)$")
_IF_UNSET = re.compile(r"^\s*\[if-unset:\s?(.*?)\]\s*$")
_COND_CALL = re.compile(r"\b(plugin|can|has)\s*\(\s*([A-Za-z0-9_:]+)\s*\)")

_PATTERN_KINDS = {"body": RuleKind.BODY, "rawbody": RuleKind.RAWBODY, "uri": RuleKind.URI, "full": RuleKind.FULL}
# rule-defining directives of plugins filterd does not provide: counted, not errors
# Plugin settings that eval tests read (kept in RuleConfig.settings, see evals_freemail):
# lists of tokens, each token checked, and numbers. freemail_whitelist is the pre-4.0 name.
_LIST_SETTINGS = {
    "freemail_domains": (re.compile(r"^[A-Za-z0-9.*?-]+$"), "freemail_domains"),
    "freemail_welcomelist": (re.compile(r"\w[.@]\w"), "freemail_welcomelist"),
    "freemail_whitelist": (re.compile(r"\w[.@]\w"), "freemail_welcomelist"),
}
_NUMERIC_SETTINGS = frozenset({"freemail_max_body_emails", "freemail_max_body_freemails",
                               "freemail_skip_when_over_max", "freemail_skip_bulk_envfrom",
                               "freemail_add_describe_email"})
_PLUGIN_RULE_TYPES = frozenset({"mimeheader", "askdns", "urirhssub", "urirhsbl", "uridnssub",
                                "uridnsbl", "hashbl", "uri_detail", "dns_block_rule"})


class _Cond:
    """One open if/ifplugin block: whether its current branch is active."""

    def __init__(self, active: bool, parent_active: bool):
        self.active = active
        self.parent_active = parent_active
        self.seen_else = False


class RuleFileParser:
    """Reads files into one :class:`RuleConfig`; later definitions override earlier ones."""

    def __init__(self, native_evals: Iterable[str] = ()):
        self.config = RuleConfig()
        self.native_evals = frozenset(native_evals)
        self._open_files: list[str] = []

    # -- files ---------------------------------------------------------------------
    def load_paths(self, paths: Iterable[str]) -> RuleConfig:
        """Load files and directories (every ``*.cf`` in name order, as SpamAssassin does)."""
        for path in paths:
            p = Path(path)
            if p.is_dir():
                for f in sorted(p.glob("*.cf")):
                    if f.is_file():
                        self.load_file(str(f))
            elif p.is_file():
                self.load_file(str(p))
            else:
                self.config.errors.append(Problem(str(p), "no such file or directory"))
        return self.config

    def load_file(self, path: str) -> None:
        real = os.path.realpath(path)
        if real in self._open_files:
            self.config.errors.append(Problem(path, "include loop"))
            return
        try:
            text = Path(path).read_bytes().decode("latin-1")
        except OSError as exc:
            self.config.errors.append(Problem(path, f"cannot read: {exc.strerror}"))
            return
        self.config.files.append(path)
        self._open_files.append(real)
        try:
            self.parse_text(text, path)
        finally:
            self._open_files.pop()

    # -- lines ---------------------------------------------------------------------
    def parse_text(self, text: str, filename: str = "<string>") -> RuleConfig:
        stack: list[_Cond] = []
        for lineno, raw_line in enumerate(text.splitlines(), 1):
            where = f"{filename}:{lineno}"
            line = _COMMENT.sub("", raw_line).strip()
            if not line:
                continue
            m = _DIRECTIVE.match(line)
            assert m is not None  # a non-empty stripped line always has a first word
            word, rest = m.group(1).lower(), (m.group(2) or "").strip()
            active = all(c.active for c in stack)
            if word in ("if", "ifplugin"):
                cond = self._condition(word, rest, where) if active else False
                stack.append(_Cond(cond, active))
                if active and not cond:
                    self.config.skipped_blocks += 1
                continue
            if word == "else":
                if not stack or stack[-1].seen_else:
                    self._error(where, "'else' without 'if'")
                    continue
                top = stack[-1]
                top.seen_else = True
                top.active = top.parent_active and not top.active
                continue
            if word == "endif":
                if not stack:
                    self._error(where, "'endif' without 'if'")
                    continue
                stack.pop()
                continue
            if not active:
                continue
            try:
                self._directive(word, rest, where, filename)
            except _LineError as exc:
                self._error(where, str(exc), exc.rule)
        if stack:
            self._error(f"{filename}:EOF", f"{len(stack)} 'if' block(s) not closed by 'endif'")
        return self.config

    def _error(self, where: str, message: str, rule: str | None = None) -> None:
        self.config.errors.append(Problem(where, message, rule))

    def _condition(self, word: str, rest: str, where: str) -> bool:
        if word == "ifplugin":
            return rest.split()[0] in PROVIDED_PLUGINS if rest else False
        text = _COND_CALL.sub(lambda m: "1" if self._call_true(m.group(1), m.group(2)) else "0", rest)
        try:
            fn, names = compile_expr(text)
        except ExprError as exc:
            self._error(where, f"cannot evaluate 'if {rest}': {exc}")
            return False
        unknown = names - {"version", "perl_version"}
        if unknown:
            self._error(where, f"cannot evaluate 'if {rest}': unknown name(s) {', '.join(sorted(unknown))}")
            return False
        return bool(fn({"version": SA_VERSION, "perl_version": PERL_VERSION}))

    def _call_true(self, func: str, arg: str) -> bool:
        if func == "plugin":
            return arg in PROVIDED_PLUGINS
        if arg in FEATURES:
            return True
        last = arg.rsplit("::", 1)[-1]
        return last.startswith("has_") and last[4:] in self.native_evals

    # -- directives ----------------------------------------------------------------
    def _directive(self, word: str, rest: str, where: str, filename: str) -> None:
        cfg = self.config
        if word == "lang":  # translations of describe/report: filterd reports in English
            return
        if word == "header":
            self._header(rest, where)
        elif word in _PATTERN_KINDS:
            self._pattern_rule(_PATTERN_KINDS[word], rest, where)
        elif word == "meta":
            name, expr = _split_name(rest)
            if not expr:
                raise _LineError("meta rule without an expression", name)
            cfg.rules[name] = RuleDef(name, RuleKind.META, where, meta=expr)
        elif word == "score":
            name, values = _split_name(rest)
            scores = [v.strip("()") for v in values.split()]
            if len(scores) not in (1, 4):
                raise _LineError("score needs 1 or 4 numbers", name)
            try:
                cfg.scores[name] = [float(s) for s in scores]
            except ValueError:
                raise _LineError(f"bad score {values!r}", name) from None
        elif word == "describe":
            name, text = _split_name(rest)
            cfg.describes[name] = text
        elif word == "tflags":
            name, flags = _split_name(rest)
            cfg.tflags[name] = set(flags.split())
        elif word == "priority":
            name, value = _split_name(rest)
            try:
                cfg.priorities[name] = int(value)
            except ValueError:
                raise _LineError(f"bad priority {value!r}", name) from None
        elif word == "include":
            target = rest if os.path.isabs(rest) else os.path.join(os.path.dirname(filename), rest)
            self.load_file(target)
        elif word in ("replace_start", "replace_end"):
            if not rest:
                raise _LineError(f"{word} needs a value")
            setattr(cfg, word, rest)
        elif word in ("replace_tag", "replace_pre", "replace_inter", "replace_post"):
            parts = rest.split(None, 1)
            if len(parts) != 2:
                raise _LineError(f"{word} needs a name and a value")
            table = {"replace_tag": cfg.replace_tags, "replace_pre": cfg.replace_pre,
                     "replace_inter": cfg.replace_inter, "replace_post": cfg.replace_post}[word]
            table[parts[0]] = parts[1]
        elif word == "replace_rules":
            cfg.replace_rules.update(rest.split())
        elif word in _LIST_SETTINGS:
            self._list_setting(word, rest)
        elif word in _NUMERIC_SETTINGS:
            if not is_number(rest):
                raise _LineError(f"{word} needs a number, got {rest[:40]!r}")
            cfg.settings.add(word, rest)
        elif word in _PLUGIN_RULE_TYPES:
            cfg.unsupported_types[word] += 1
        else:
            # require_version, test, reuse and the many settings of SpamAssassin's own
            # machinery (report templates, whitelists, Bayes, DNS...): valid, not used here
            cfg.ignored_directives[word] += 1

    def _list_setting(self, word: str, rest: str) -> None:
        """Keep the valid tokens of a list setting; report the others (SpamAssassin warns)."""
        syntax, name = _LIST_SETTINGS[word]
        tokens = rest.split()
        good = [t.lower() for t in tokens if syntax.search(t)]
        if good:
            self.config.settings.add(name, " ".join(good))
        bad = [t for t in tokens if not syntax.search(t)]
        if bad or not tokens:
            raise _LineError(f"invalid {word} entr{'ies' if len(bad) > 1 else 'y'}: "
                             f"{' '.join(bad)[:60] or '(none)'}")

    def _header(self, rest: str, where: str) -> None:
        name, spec = _split_name(rest)
        if not spec:
            raise _LineError("header rule without a test", name)
        if spec.startswith("eval:"):
            self.config.rules[name] = _eval_rule(name, RuleKind.HEADER, spec, where)
            return
        if spec.startswith("exists:"):
            hdr = spec[len("exists:"):].strip()
            if not hdr or " " in hdr:
                raise _LineError(f"bad exists: test {spec!r}", name)
            self.config.rules[name] = RuleDef(name, RuleKind.HEADER, where, header=hdr, exists=True)
            return
        m = _HEADER_TEST.match(spec)
        if not m:
            raise _LineError(f"expected 'Header =~ /pattern/', got {spec[:60]!r}", name)
        hdr, op, literal = m.groups()
        try:
            pattern, mods, tail = split_regex_literal(literal)
        except PerlRegexError as exc:
            raise _LineError(str(exc), name) from None
        if_unset = None
        if tail.strip():
            u = _IF_UNSET.match(tail)
            if not u:
                raise _LineError(f"unexpected text after the pattern: {tail.strip()[:40]!r}", name)
            if_unset = u.group(1)
        self.config.rules[name] = RuleDef(name, RuleKind.HEADER, where, pattern=pattern, mods=mods,
                                          negate=op == "!~", header=hdr, if_unset=if_unset)

    def _pattern_rule(self, kind: RuleKind, rest: str, where: str) -> None:
        name, spec = _split_name(rest)
        if not spec:
            raise _LineError(f"{kind.value} rule without a pattern", name)
        if spec.startswith("eval:"):
            self.config.rules[name] = _eval_rule(name, kind, spec, where)
            return
        try:
            pattern, mods, tail = split_regex_literal(spec)
        except PerlRegexError as exc:
            raise _LineError(str(exc), name) from None
        if tail.strip():
            raise _LineError(f"unexpected text after the pattern: {tail.strip()[:40]!r}", name)
        self.config.rules[name] = RuleDef(name, kind, where, pattern=pattern, mods=mods)


class _LineError(ValueError):
    def __init__(self, message: str, rule: str | None = None):
        super().__init__(message)
        self.rule = rule


def _split_name(rest: str) -> tuple[str, str]:
    parts = rest.split(None, 1)
    if not parts:
        raise _LineError("missing rule name")
    name = parts[0]
    if not RULE_NAME.match(name):
        raise _LineError(f"bad rule name {name!r}")
    return name, parts[1].strip() if len(parts) > 1 else ""


def _eval_rule(name: str, kind: RuleKind, spec: str, where: str) -> RuleDef:
    m = _EVAL.match(spec)
    if not m:
        raise _LineError(f"bad eval test {spec[:60]!r}", name)
    args: list[str] = []
    text = m.group(2).strip()
    pos = 0
    while pos < len(text):
        a = _EVAL_ARG.match(text, pos)
        if not a or a.end() == pos:
            raise _LineError(f"bad eval arguments {text[:60]!r}", name)
        args.append(next(g for g in a.groups() if g is not None))
        pos = a.end()
    return RuleDef(name, kind, where, eval_func=m.group(1), eval_args=tuple(args))


def parse_rule_files(paths: Iterable[str], native_evals: Iterable[str] = ()) -> RuleConfig:
    """Read files/directories into one configuration (see :class:`RuleFileParser`)."""
    return RuleFileParser(native_evals).load_paths(paths)
