"""Postfix-shaped log lines: per-request event lines are buffered briefly, never reordered."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from filterd import log as flog
from filterd.config import Config

LINE = re.compile(r"^\w{3} [ \d]\d \d\d:\d\d:\d\d mx filterd/(\w+)\[(\d+)\]: (.*)$")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """setup_logging() configures the process; leave it as other tests expect it."""
    root = logging.getLogger("filterd")
    saved = (list(root.handlers), root.level, root.propagate, flog._event_log)
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    handlers, root.level, root.propagate, flog._event_log = saved
    for handler in handlers:
        root.addHandler(handler)


def setup(tmp_path: Path) -> Path:
    path = tmp_path / "mail.log"
    flog.setup_logging(Config.from_text(f"maillog_file = {path}\nmyhostname = mx.example\n"))
    return path


async def test_event_lines_reach_the_file_within_the_flush_delay(tmp_path: Path) -> None:
    path = setup(tmp_path)
    flog.event("policy", "NOQUEUE: reject: RCPT from x[192.0.2.1]: 450 4.2.0 Greylisted")
    assert path.read_text() == ""  # buffered: one write for a burst of requests
    await asyncio.sleep(flog.FLUSH_DELAY * 2)
    [line] = path.read_text().splitlines()
    part, pid, text = LINE.match(line).groups()  # type: ignore[union-attr]
    assert (part, int(pid)) == ("policy", os.getpid()) and text.endswith("Greylisted")


async def test_a_warning_flushes_earlier_event_lines_in_order(tmp_path: Path) -> None:
    path = setup(tmp_path)
    flog.event("policy", "first")
    logging.getLogger("filterd.policy").warning("policy client [127.0.0.1]:1: line without '='")
    lines = [LINE.match(x).group(3) for x in path.read_text().splitlines()]  # type: ignore[union-attr]
    assert lines == ["first", "warning: policy client [127.0.0.1]:1: line without '='"]


def test_without_an_event_loop_lines_are_written_at_once(tmp_path: Path) -> None:
    path = setup(tmp_path)
    flog.event("check", "a command-line tool's line")
    assert path.read_text().endswith("a command-line tool's line\n")


async def test_a_newline_in_an_event_cannot_forge_a_second_line(tmp_path: Path) -> None:
    path = setup(tmp_path)
    flog.event("policy", "helo=<evil>\nJan  1 00:00:00 mx filterd/policy[1]: forged")
    await asyncio.sleep(flog.FLUSH_DELAY * 2)
    assert len(path.read_text().splitlines()) == 1


class CountingStream(io.StringIO):
    """A stream that counts its writes (standard error is line-buffered: each write
    call on it is a write(2))."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


async def test_event_lines_to_standard_error_go_out_in_one_write(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stream = CountingStream()
    monkeypatch.setattr(sys, "stderr", stream)
    flog.setup_logging(Config.from_text("myhostname = mx.example\n"))
    for n in range(3):
        flog.event("policy", f"request {n}")
    assert stream.writes == 0
    await asyncio.sleep(flog.FLUSH_DELAY * 2)
    assert stream.writes == 1
    assert [LINE.match(x).group(3) for x in stream.getvalue().splitlines()] == [  # type: ignore[union-attr]
        "request 0", "request 1", "request 2"]


async def test_flush_writes_buffered_lines_at_once(tmp_path: Path) -> None:
    """What a worker calls before it ends with os._exit (no timer will fire then)."""
    path = setup(tmp_path)
    flog.event("policy", "last request")
    flog.flush()
    assert path.read_text().endswith("last request\n")


#: One character of every control class, and how the log writes it.
CONTROLS = [
    ("\r", "\\r"), ("\n", "\\n"), ("\t", "\\t"), ("\x00", "\\x00"), ("\x07", "\\x07"),
    ("\x1b", "\\x1b"), ("\x0b", "\\x0b"), ("\x0c", "\\x0c"), ("\x1c", "\\x1c"), ("\x7f", "\\x7f"),
    ("\x85", "\\x85"), ("\x9b", "\\x9b"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"),
    ("\u202e", "\\u202e"), ("\u200b", "\\u200b"), ("\ufeff", "\\ufeff"), ("\udcff", "\\udcff"),
    ("\U000e0041", "\\U000e0041"),
]


def _one_line(text: str) -> str:
    """The file holds exactly one line, by any reader's idea of a line ending
    (str.splitlines also breaks at VT, FF, FS, NEL, U+2028...)."""
    assert text.endswith("\n") and text.count("\n") == 1
    [line] = text.splitlines()
    return line


@pytest.mark.parametrize("char, escaped", CONTROLS)
async def test_every_control_character_is_escaped_in_event_lines(tmp_path: Path, char: str,
                                                                  escaped: str) -> None:
    path = setup(tmp_path)
    flog.event("content", f"Message-ID: <a{char}b@example.org>, é kept")
    flog.flush()
    line = _one_line(path.read_text(encoding="utf-8", errors="strict" if char != "\udcff" else "replace"))
    assert line.endswith(f"Message-ID: <a{escaped}b@example.org>, é kept")


@pytest.mark.parametrize("char, escaped", CONTROLS)
def test_every_control_character_is_escaped_in_logger_lines(tmp_path: Path, char: str,
                                                             escaped: str) -> None:
    """The formatter escapes, so no caller of logging can forget it (the policy
    service's, the content filter's and every other module's warnings)."""
    path = setup(tmp_path)
    logging.getLogger("filterd.policy").warning("policy client %s: bad", f"x{char}y")
    line = _one_line(path.read_text(encoding="utf-8", errors="replace"))
    assert line.endswith(f"warning: policy client x{escaped}y: bad")


def test_a_traceback_stays_on_one_line(tmp_path: Path) -> None:
    path = setup(tmp_path)
    try:
        raise ValueError("bad\x1b[2Jvalue\u2028forged")
    except ValueError:
        logging.getLogger("filterd.content").exception("internal error")
    line = _one_line(path.read_text())
    assert "ValueError: bad\\x1b[2Jvalue\\u2028forged" in line and line.count(" | ") >= 2


def test_escape_leaves_printable_text_alone() -> None:
    text = "from=<j\u00fcrgen@example.org> [192.0.2.1] \\n is two characters"
    assert flog.escape(text) is text
