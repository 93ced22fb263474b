"""Postfix-shaped log lines: per-request event lines are buffered briefly, never reordered."""

from __future__ import annotations

import asyncio
import logging
import os
import re
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
