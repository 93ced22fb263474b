"""filterd.cf: the main.cf dialect, parameter defaults, expansion and validation.

Usage::

    cfg = Config.load("/etc/filterd/filterd.cf")   # or Config.load() for the search order
    cfg.get("greylist_delay")                       # 300.0, converted and cached
"""

from __future__ import annotations

import builtins
import os
import re
from importlib import resources
from typing import Any, Iterable

from filterd.config.parser import ConfigError, Setting, parse_file, parse_text
from filterd.config.types import Param, split_list

__all__ = ["Config", "ConfigError", "Param", "split_list", "default_config_path", "expand_macros"]

SYSTEM_CONFIG = "/etc/filterd/filterd.cf"
EMBEDDED = "<embedded default>"

_MACRO = re.compile(r"\$(?:\$|\{([A-Za-z0-9_]+)(?:([?:])([^}]*))?\}|\(([A-Za-z0-9_]+)\)|([A-Za-z0-9_]+))")


def _params() -> dict[str, Param]:
    """The parameter table, imported on first use: each part's params module imports
    filterd.config.types, so importing the registry here at load time would be a cycle."""
    from filterd.config.registry import PARAMS

    return PARAMS


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

    def __init__(self, settings: dict[str, Setting], source: str):
        self.settings = settings
        self.source = source
        self._cache: dict[str, Any] = {}
        self._expanded: dict[str, str] = {}

    # -- construction -------------------------------------------------------------
    @classmethod
    def load(cls, path: str | None = None, overrides: Iterable[str] = ()) -> "Config":
        """Load ``path``, or follow the search order when it is None.

        ``overrides`` are ``name=value`` strings applied last (like ``postconf -o``).
        """
        if path is None:
            path = default_config_path()
        if path is None:
            settings = parse_text(embedded_text(), EMBEDDED)
            source = EMBEDDED
        else:
            settings = parse_file(path)
            source = path
        for i, item in enumerate(overrides, 1):
            settings.update(parse_text(item, f"-o option {i}"))
        cfg = cls(settings, source)
        cfg.validate()
        return cfg

    @classmethod
    def from_text(cls, text: str, file: str = "<string>") -> "Config":
        cfg = cls(parse_text(text, file), file)
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
                loop = " -> ".join(chain + (ref,))
                where = self._where(chain[0]) if chain else (None, None)
                raise ConfigError(f"parameter expansion loop: {loop}", *where)
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
        """Convert every parameter once; raise ConfigError on the first bad value.

        Returns warnings for names that are set but unknown (not declared, not a
        restriction class, and not referenced by ``$name`` from another value), each
        naming the file and line, as ``postconf`` warns about unused parameters.
        """
        for name in _params():
            self.get(name)
        for name in self.settings:
            self.expand(name)  # user-defined names too: a $name loop is an error anywhere
        classes = set(self.restriction_classes())
        referenced: set[str] = set()
        for s in self.settings.values():
            for m in _MACRO.finditer(s.value):
                ref = m.group(1) or m.group(4) or m.group(5)
                if ref:
                    referenced.add(ref)
        warnings = []
        for name, s in self.settings.items():
            if name in _params():
                continue
            if name in classes:
                self.expand(name)
                continue
            if name in referenced:
                continue
            warnings.append(f"{s.file}, line {s.line}: unknown parameter {name!r} (ignored)")
        self.warnings = warnings
        return warnings

    def names(self, only_set: bool = False) -> builtins.list[str]:
        if only_set:
            return sorted(self.settings)
        return sorted(set(_params()) | set(self.settings))


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
