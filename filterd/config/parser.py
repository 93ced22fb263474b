"""Reading the main.cf dialect: logical lines, continuations, comments.

This module only turns text into ``name -> (value, file, line)``; it knows nothing of
which names exist (see :mod:`filterd.config.registry`) or what values mean.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class ConfigError(Exception):
    """A configuration problem, always naming where it is and what was expected."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None):
        self.file = file
        self.line = line
        self.message = message
        where = ""
        if file is not None:
            where = f"{file}, line {line}: " if line else f"{file}: "
        super().__init__(where + message)


@dataclass(frozen=True)
class Setting:
    """One ``name = value`` as written, with where it was written."""

    name: str
    value: str
    file: str
    line: int


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def parse_text(text: str, file: str = "<string>") -> dict[str, Setting]:
    """Parse main.cf-style text. Later settings of the same name win, as in Postfix.

    Rules (postconf(5)): a logical line starts with non-white-space text; a line that
    starts with white space continues it; empty lines and lines whose first non-white
    character is ``#`` are ignored (a ``#`` later in a line is data, not a comment).
    """
    settings: dict[str, Setting] = {}
    current: list[str] | None = None
    start_line = 0

    def finish() -> None:
        if current is None:
            return
        logical = " ".join(current)
        name, sep, value = logical.partition("=")
        name = name.strip()
        if not sep:
            raise ConfigError(f"missing '=' after parameter name {name!r}", file, start_line)
        if not name:
            raise ConfigError("missing parameter name before '='", file, start_line)
        if not _NAME.fullmatch(name):
            raise ConfigError(f"bad parameter name {name!r}", file, start_line)
        settings[name] = Setting(name, value.strip(), file, start_line)

    for lineno, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0].isspace():
            if current is None:
                raise ConfigError(
                    "continuation line (starts with white space) without a parameter before it",
                    file,
                    lineno,
                )
            current.append(stripped)
            continue
        finish()
        current = [stripped]
        start_line = lineno
    finish()
    return settings


def parse_file(path: str) -> dict[str, Setting]:
    try:
        with open(path, encoding="utf-8", errors="strict") as fh:
            text = fh.read()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})", path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path) from None
    return parse_text(text, path)
