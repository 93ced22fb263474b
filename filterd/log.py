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


#: Escapes for the controls that have a short form; every other one is written as
#: ``\xHH``, ``\uHHHH`` or ``\UHHHHHHHH``.
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    if ch.isprintable():
        return ch
    short = _SHORT_ESCAPES.get(ch)
    if short is not None:
        return short
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape(msg: str) -> str:
    """One event, one line, and nothing a terminal or a log reader acts on.

    Every character that is not printable (str.isprintable: the C0 and C1 controls
    with NUL, ESC, VT, FF and NEL, DEL, the line and paragraph separators U+2028/U+2029,
    format characters such as bidirectional overrides, unassigned code points, and
    undecodable bytes kept as surrogates) is written as a backslash escape, so text
    from a client or a message can neither forge a log line nor hide what it holds.
    Applied to every line the log writers produce, whatever built the text.
    """
    if msg.isprintable():
        return msg
    return "".join(map(_escape_char, msg))


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
        return f"{stamp} {self.hostname} {self.syslog_name}/{part}[{_pid}]: {escape(msg)}"


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
    getpid() and a write(2) per line cost more than answering a cached greylist request.
    This writer formats the time stamp once a second, skips LogRecord, and keeps lines in
    its own buffer (standard error is line-buffered, so the stream's buffer would not
    hold them), written out at most FLUSH_DELAY after the first of them. A record
    through the logging handler writes this buffer out first, so lines keep their order.
    """

    def __init__(self, stream: TextIO, hostname: str, syslog_name: str):
        self.stream = stream
        self.prefix = f" {hostname.split('.')[0] or 'localhost'} {syslog_name}/"
        self._second = -1
        self._stamp = ""
        self._lines: list[str] = []

    def line(self, part: str, msg: str) -> None:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._stamp = time.strftime("%b %d %H:%M:%S", time.localtime(now))
        self._lines.append(f"{self._stamp}{self.prefix}{part}[{_pid}]: {escape(msg)}\n")
        if len(self._lines) == 1:
            try:
                asyncio.get_running_loop().call_later(FLUSH_DELAY, self.flush)
            except RuntimeError:  # no loop (a command-line tool): write now
                self.flush()

    def flush(self) -> None:
        """Write the buffered lines out (a no-op when there are none)."""
        if not self._lines:
            return
        text = "".join(self._lines)
        self._lines.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass


class LogHandler(logging.StreamHandler):
    """The logging handler: writes the event buffer out before each record it writes,
    and closes the stream it was given unless that is standard error."""

    def emit(self, record: logging.LogRecord) -> None:
        if _event_log is not None:
            _event_log.flush()
        super().emit(record)

    def flush(self) -> None:
        if _event_log is not None:
            _event_log.flush()
        super().flush()

    def close(self) -> None:
        try:
            self.flush()
            if self.stream is not sys.stderr:
                self.stream.close()
        finally:
            super().close()


_event_log: EventLog | None = None


def event(part: str, msg: str) -> None:
    """Log one per-request/per-message INFO line (``filterd/<part>[pid]: msg``)."""
    if _event_log is not None:
        _event_log.line(part, msg)
    else:
        logging.getLogger(f"filterd.{part}").info("%s", msg)


def flush() -> None:
    """Write out every buffered line now (before a process ends with ``os._exit``)."""
    for handler in logging.getLogger("filterd").handlers:
        handler.flush()


def setup_logging(cfg: Config) -> None:
    root = logging.getLogger("filterd")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    path = cfg.get("maillog_file")
    stream: TextIO = (open(path, "a", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
                      if path else sys.stderr)
    handler = LogHandler(stream)
    handler.setFormatter(PostfixFormatter(cfg.get("myhostname"), cfg.get("syslog_name")))
    root.addHandler(handler)
    root.setLevel(cfg.get("log_level").upper())
    root.propagate = False
    global _event_log
    if root.isEnabledFor(logging.INFO):
        _event_log = EventLog(stream, cfg.get("myhostname"), cfg.get("syslog_name"))
    else:
        _event_log = None  # INFO is off: per-request lines are not written at all
