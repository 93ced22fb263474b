"""Logging in Postfix's mail.log shape: ``Mon DD HH:MM:SS host filterd/part[pid]: text``.

One line per event, so pflogsumm-style tooling and grep habits carry over. Logger names
``filterd.policy`` become the ``filterd/policy`` program tag Postfix admins expect.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import TextIO

from filterd.config import Config


class PostfixFormatter(logging.Formatter):
    def __init__(self, hostname: str, syslog_name: str):
        super().__init__()
        self.hostname = hostname.split(".")[0] or "localhost"
        self.syslog_name = syslog_name

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime(record.created))
        part = record.name.split(".", 1)[1] if "." in record.name else "main"
        msg = record.getMessage()
        if record.levelno >= logging.ERROR and not msg.startswith(("fatal:", "error:")):
            msg = f"error: {msg}"
        elif record.levelno == logging.WARNING and not msg.startswith("warning:"):
            msg = f"warning: {msg}"
        if record.exc_info:
            msg += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        # One event, one line: a newline from hostile input must not forge a log line.
        msg = msg.replace("\r", "\\r").replace("\n", "\\n")
        return f"{stamp} {self.hostname} {self.syslog_name}/{part}[{_pid}]: {msg}"


_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)

#: Seconds an event line may wait in the buffer: ``tail -f`` stays current to the eye,
#: and a busy service writes its lines in a few large writes instead of one per request.
FLUSH_DELAY = 0.1


class EventLog:
    """The per-request line writer: the same stream and shape as the logging handler.

    One line per policy request or message is the hot path of logging: a LogRecord, a
    getpid() and a flush per line cost more than answering a cached greylist request.
    This writer formats the time stamp once a second, skips LogRecord, and flushes at
    most FLUSH_DELAY after a line was written (warnings, written through the logging
    handler to the same stream, flush it at once, so the order of lines is kept).
    """

    def __init__(self, stream: TextIO, hostname: str, syslog_name: str):
        self.stream = stream
        self.prefix = f" {hostname.split('.')[0] or 'localhost'} {syslog_name}/"
        self._second = -1
        self._stamp = ""
        self._flush_pending = False

    def line(self, part: str, msg: str) -> None:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._stamp = time.strftime("%b %d %H:%M:%S", time.localtime(now))
        if "\n" in msg or "\r" in msg:
            msg = msg.replace("\r", "\\r").replace("\n", "\\n")
        self.stream.write(f"{self._stamp}{self.prefix}{part}[{_pid}]: {msg}\n")
        if not self._flush_pending:
            try:
                asyncio.get_running_loop().call_later(FLUSH_DELAY, self._flush)
                self._flush_pending = True
            except RuntimeError:  # no loop (a command-line tool): flush now
                self.stream.flush()

    def _flush(self) -> None:
        self._flush_pending = False
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass


_event_log: EventLog | None = None


def event(part: str, msg: str) -> None:
    """Log one per-request/per-message INFO line (``filterd/<part>[pid]: msg``)."""
    if _event_log is not None:
        _event_log.line(part, msg)
    else:
        logging.getLogger(f"filterd.{part}").info("%s", msg)


def setup_logging(cfg: Config) -> None:
    root = logging.getLogger("filterd")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    path = cfg.get("maillog_file")
    handler: logging.Handler
    if path:
        handler = logging.FileHandler(path, encoding="utf-8", errors="backslashreplace")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PostfixFormatter(cfg.get("myhostname"), cfg.get("syslog_name")))
    root.addHandler(handler)
    root.setLevel(cfg.get("log_level").upper())
    root.propagate = False
    global _event_log
    stream = getattr(handler, "stream", None)
    if root.isEnabledFor(logging.INFO) and stream is not None:
        _event_log = EventLog(stream, cfg.get("myhostname"), cfg.get("syslog_name"))
    else:
        _event_log = None  # INFO is off: per-request lines are not written at all
