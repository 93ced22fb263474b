"""filterd.cf: the main.cf dialect, parameter defaults, expansion and validation.

Usage::

    cfg = Config.load("/etc/filterd/filterd.cf")   # or Config.load() for the search order
    cfg.get("greylist_delay")                       # 300.0, converted and cached
"""

from __future__ import annotations

import builtins
import difflib
import os
import re
from dataclasses import replace
from importlib import resources
from typing import Any, Iterable

from filterd.config.parser import ConfigError, ConfigErrors, Setting, parse_file, parse_text
from filterd.config.types import Param, split_list

__all__ = ["Config", "ConfigError", "ConfigErrors", "Param", "split_list", "default_config_path",
           "expand_macros", "install_params"]

SYSTEM_CONFIG = "/etc/filterd/filterd.cf"
EMBEDDED = "<embedded default>"

_MACRO = re.compile(r"\$(?:\$|\{([A-Za-z0-9_]+)(?:([?:])([^}]*))?\}|\(([A-Za-z0-9_]+)\)|([A-Za-z0-9_]+))")


class ExpansionLoop(ConfigError):
    """``$name`` references that come back to where they started (``a = $b``, ``b = $a``)."""

    def __init__(self, chain: tuple[str, ...], file: str | None, line: int | None):
        #: The names in the loop itself, which every entry into it shares.
        self.cycle = frozenset(chain[chain.index(chain[-1]):])
        super().__init__(f"parameter expansion loop: {' -> '.join(chain)}", file, line)


#: Every declared parameter, by name: installed by :mod:`filterd.registry`, which imports
#: each part's ``params`` module (config itself imports no part).
_PARAMS: dict[str, Param] = {}


def install_params(table: dict[str, Param]) -> None:
    """Make ``table`` the declared parameters (called once, by filterd.registry). The
    table itself, not a copy: a change to ``filterd.registry.PARAMS`` (a test's
    monkeypatch of a default) is what config sees."""
    global _PARAMS
    _PARAMS = table


def _params() -> dict[str, Param]:
    if not _PARAMS:
        raise RuntimeError("no parameter table: import filterd.registry before loading a configuration")
    return _PARAMS


def default_config_path() -> str | None:
    """The configuration search order: $FILTERD_CONFIG, /etc/filterd/filterd.cf, embedded."""
    env = os.environ.get("FILTERD_CONFIG")
    if env:
        return env
    if os.path.exists(SYSTEM_CONFIG):
        return SYSTEM_CONFIG
    return None


def embedded_text() -> str:
    return resources.files("filterd").joinpath("defaults/filterd.cf").read_text("utf-8")


class Config:
    """A loaded configuration: what the file set, over the declared defaults."""

    def __init__(self, settings: dict[str, Setting], source: str,
                 syntax_errors: Iterable[ConfigError] = (), origins: Iterable[str] = ()):
        """``syntax_errors`` were found while parsing, to be reported by validate() with
        the rest; ``origins`` are the files settings came from, in the order they were
        read (default: ``source``), which orders the report."""
        self.settings = settings
        self.source = source
        self.syntax_errors = list(syntax_errors)
        self.origins = list(origins) or [source]
        self.warnings: builtins.list[str] = []
        self._cache: dict[str, Any] = {}
        self._expanded: dict[str, str] = {}

    # -- construction -------------------------------------------------------------
    @classmethod
    def load(cls, path: str | None = None, overrides: Iterable[str] = ()) -> "Config":
        """Load ``path``, or follow the search order when it is None.

        ``overrides`` are ``name=value`` strings applied last (like ``postconf -o``).
        Raises ConfigErrors naming every bad line and value, in file order.
        """
        if path is None:
            path = default_config_path()
        errors: builtins.list[ConfigError] = []
        if path is None:
            settings = parse_text(embedded_text(), EMBEDDED, errors)
            source = EMBEDDED
        else:
            settings = parse_file(path, errors)
            source = path
        origins = [source]
        for i, item in enumerate(overrides, 1):
            origins.append(f"-o option {i}")
            # An option has no lines: its problems are reported as "-o option 2: ...".
            option_errors: builtins.list[ConfigError] = []
            parsed = parse_text(item, origins[-1], option_errors)
            settings.update({name: replace(s, line=0) for name, s in parsed.items()})
            errors += [ConfigError(e.message, e.file) for e in option_errors]
        cfg = cls(settings, source, errors, origins)
        cfg.validate()
        return cfg

    @classmethod
    def from_text(cls, text: str, file: str = "<string>") -> "Config":
        errors: builtins.list[ConfigError] = []
        cfg = cls(parse_text(text, file, errors), file, errors)
        cfg.validate()
        return cfg

    # -- access ---------------------------------------------------------------------
    def raw(self, name: str) -> str:
        """The unexpanded value: as set in the file, else the declared default."""
        s = self.settings.get(name)
        if s is not None:
            return s.value
        p = _params().get(name)
        if p is not None:
            return p.default
        raise KeyError(name)

    def is_set(self, name: str) -> bool:
        return name in self.settings

    def known(self, name: str) -> bool:
        return name in _params() or name in self.settings

    def expand(self, name: str) -> str:
        """The value with ``$name`` references expanded (loops are an error)."""
        if name not in self._expanded:
            self._expanded[name] = self._expand_value(self.raw(name), (name,))
        return self._expanded[name]

    def expand_text(self, text: str) -> str:
        return self._expand_value(text, ())

    def _expand_value(self, value: str, chain: tuple[str, ...]) -> str:
        def repl(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            ref = m.group(1) or m.group(4) or m.group(5)
            if ref in chain:
                where = self._where(chain[0]) if chain else (None, None)
                raise ExpansionLoop(chain + (ref,), *where)
            try:
                inner = self._expand_value(self.raw(ref), chain + (ref,))
            except KeyError:
                inner = ""
            op = m.group(2)
            if op == "?":
                return self._expand_value(m.group(3), chain) if inner else ""
            if op == ":":
                return inner if inner else self._expand_value(m.group(3), chain)
            return inner

        return _MACRO.sub(repl, value)

    def _where(self, name: str) -> tuple[str | None, int | None]:
        s = self.settings.get(name)
        if s is None:
            return (f"default of {name}", None)
        return (s.file, s.line)

    def get(self, name: str) -> Any:
        """The converted value of a declared parameter (cached)."""
        try:
            return self._cache[name]
        except KeyError:
            pass
        param = _params().get(name)
        text = self.expand(name)
        if param is None:
            value: Any = text
        else:
            try:
                value = param.convert(text)
            except ValueError as exc:
                raise ConfigError(f"bad value for {name}: {exc}", *self._where(name)) from None
        self._cache[name] = value
        return value

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def list(self, name: str) -> list[str]:
        return split_list(self.expand(name))

    # -- checking -------------------------------------------------------------------
    def restriction_classes(self) -> builtins.list[str]:
        return split_list(self.expand("smtpd_restriction_classes"))

    def validate(self) -> builtins.list[str]:
        """Convert every parameter once and check every line; report all problems at once.

        Syntax errors, bad values and ``$name`` loops are errors: ConfigErrors lists
        them all, with the warnings, in file order (as postconf goes through main.cf),
        so one run shows everything to mend. Names that are set but unknown (not
        declared, not a restriction class, not referenced by ``$name`` from another
        value) are warnings naming file and line, as postconf warns about unused
        parameters; they are returned (and kept in ``warnings``) when there is no error.
        """
        errors = list(self.syntax_errors)
        for name in dict.fromkeys([*_params(), *self.settings]):  # a loop is an error anywhere
            try:
                if name in _params():
                    self.get(name)
                else:
                    self.expand(name)
            except ConfigError as exc:
                errors.append(exc)
        try:
            classes = set(self.restriction_classes())
        except ConfigError:  # reported above, as smtpd_restriction_classes
            classes = set()
        referenced: set[str] = set()
        for s in self.settings.values():
            for m in _MACRO.finditer(s.value):
                ref = m.group(1) or m.group(4) or m.group(5)
                if ref:
                    referenced.add(ref)
        unknown = [ConfigError(f"unknown parameter {name!r} (ignored{_did_you_mean(name)})", s.file, s.line)
                   for name, s in self.settings.items()
                   if name not in _params() and name not in classes and name not in referenced]
        self.warnings = [str(w) for w in sorted(unknown, key=self._order)]
        if errors:
            problems = [("error", e) for e in errors] + [("warning", w) for w in unknown]
            problems.sort(key=lambda p: self._order(p[1]))
            loops: set[frozenset[str]] = set()
            for level, problem in list(problems):  # a loop once, where it is met first
                if isinstance(problem, ExpansionLoop):
                    if problem.cycle in loops:
                        problems.remove((level, problem))
                    loops.add(problem.cycle)
            raise ConfigErrors(problems)
        return self.warnings

    def _order(self, problem: ConfigError) -> tuple[int, int]:
        """Where a problem sits in the order the configuration was read: the file, then
        each -o option; problems in defaults (``default of NAME``) come last."""
        try:
            rank = self.origins.index(problem.file or "")
        except ValueError:
            rank = len(self.origins)
        return (rank, problem.line or 0)

    def names(self, only_set: bool = False) -> builtins.list[str]:
        if only_set:
            return sorted(self.settings)
        return sorted(set(_params()) | set(self.settings))


def _did_you_mean(name: str) -> str:
    """``; did you mean greylist_delay?`` for a name one slip away from a known one."""
    close = difflib.get_close_matches(name, _params(), n=1, cutoff=0.85)
    return f"; did you mean {close[0]}?" if close else ""


def expand_macros(template: str, values: dict[str, str]) -> str:
    """Expand ``$name``/``${name}``/``${name?text}``/``${name:text}`` from ``values``.

    For reply templates such as ``default_rbl_reply``, whose variables are facts of
    the request, not configuration parameters. Unknown names expand to nothing.
    """

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        inner = values.get(m.group(1) or m.group(4) or m.group(5), "")
        op = m.group(2)
        if op == "?":
            return expand_macros(m.group(3), values) if inner else ""
        if op == ":":
            return inner if inner else expand_macros(m.group(3), values)
        return inner

    return _MACRO.sub(repl, template)


def defaults() -> dict[str, Param]:
    """Every declared parameter (for ``filterd config -d``)."""
    return dict(_params())
