"""Reading the main.cf dialect: logical lines, continuations, comments.

This module only turns text into ``name -> (value, file, line)``; it knows nothing of
which names exist (see :mod:`filterd.registry`) or what values mean.
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


class ConfigErrors(ConfigError):
    """Every problem found in one configuration, in file order, so one run shows them all.

    ``problems`` pairs each with its level: ``"error"`` (the configuration cannot be
    used) or ``"warning"`` (reported, then ignored, such as an unknown parameter name),
    as postconf reports a main.cf. The exception's text is the errors alone, one a line.
    """

    def __init__(self, problems: list[tuple[str, ConfigError]]):
        self.problems = problems
        self.errors = [exc for level, exc in problems if level == "error"]
        first = self.errors[0]
        Exception.__init__(self, "\n".join(str(exc) for exc in self.errors))
        self.file, self.line, self.message = first.file, first.line, first.message


@dataclass(frozen=True)
class Setting:
    """One ``name = value`` as written, with where it was written."""

    name: str
    value: str
    file: str
    line: int


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def parse_text(text: str, file: str = "<string>",
               errors: list[ConfigError] | None = None) -> dict[str, Setting]:
    """Parse main.cf-style text. Later settings of the same name win, as in Postfix.

    Rules (postconf(5)): a logical line starts with non-white-space text; a line that
    starts with white space continues it; empty lines and lines whose first non-white
    character is ``#`` are ignored (a ``#`` later in a line is data, not a comment).

    A line that breaks these rules raises ConfigError; with an ``errors`` list, it is
    appended there instead and parsing goes on, so that one run reports every bad line.
    """
    settings: dict[str, Setting] = {}
    current: list[str] | None = None
    start_line = 0

    def problem(exc: ConfigError) -> None:
        if errors is None:
            raise exc
        errors.append(exc)

    def finish() -> None:
        if current is None:
            return
        logical = " ".join(current)
        name, sep, value = logical.partition("=")
        name = name.strip()
        if not sep:
            problem(ConfigError(f"missing '=' after parameter name {name!r}", file, start_line))
        elif not name:
            problem(ConfigError("missing parameter name before '='", file, start_line))
        elif not _NAME.fullmatch(name):
            problem(ConfigError(f"bad parameter name {name!r}", file, start_line))
        else:
            settings[name] = Setting(name, value.strip(), file, start_line)

    for lineno, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0].isspace():
            if current is None:
                problem(ConfigError(
                    "continuation line (starts with white space) without a parameter before it",
                    file,
                    lineno,
                ))
            else:
                current.append(stripped)
            continue
        finish()
        current = [stripped]
        start_line = lineno
    finish()
    return settings


def parse_file(path: str, errors: list[ConfigError] | None = None) -> dict[str, Setting]:
    """Parse the file ``path`` (see parse_text); a file that cannot be read always raises."""
    try:
        with open(path, encoding="utf-8", errors="strict") as fh:
            text = fh.read()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})", path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path) from None
    return parse_text(text, path, errors)
