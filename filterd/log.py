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
import weakref
from collections.abc import Callable
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


#: Seconds in which a repeated warning of one kind is written once (see RateLimitedLog).
RATE_LIMIT_INTERVAL = 10.0


class RateLimitedLog:
    """Warnings a client can cause, at most one line per kind per ``interval``.

    Why: a misbehaving client can make the same fault thousands of times a second (a
    flood of malformed requests, connections over the limit), and a line for each filled
    a disk with hundreds of megabytes in a minute, drowning the lines that matter. The
    first occurrence of a kind is written at once; later ones in the same interval are
    only counted, and when the interval ends one line says how many were left out (the
    next occurrence after that is written again). ``kind`` must be a fixed string
    chosen by the caller, never text from a client: one state is kept per kind.
    """

    _all: "weakref.WeakSet[RateLimitedLog]" = weakref.WeakSet()

    def __init__(self, logger: logging.Logger, interval: float = RATE_LIMIT_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        #: kind -> [start of its interval, occurrences left out since]
        self._kinds: dict[str, list[float]] = {}
        RateLimitedLog._all.add(self)

    @classmethod
    def reset_all(cls) -> None:
        """Forget what every limiter has seen (tests, where each expects its own lines)."""
        for limiter in cls._all:
            limiter._kinds.clear()

    def warning(self, kind: str, msg: str, *args: object, exc_info: object = None) -> bool:
        """Log ``msg % args`` at WARNING unless ``kind`` was logged within the interval;
        True when the line was written."""
        return self.log(logging.WARNING, kind, msg, *args, exc_info=exc_info)

    def error(self, kind: str, msg: str, *args: object, exc_info: object = None) -> bool:
        """As :meth:`warning`, at ERROR (``exc_info=True`` adds the traceback)."""
        return self.log(logging.ERROR, kind, msg, *args, exc_info=exc_info)

    def log(self, level: int, kind: str, msg: str, *args: object, exc_info: object = None) -> bool:
        """As :meth:`warning`, at ``level``."""
        now = self._clock()
        state = self._kinds.get(kind)
        if state is not None and now - state[0] < self.interval:
            state[1] += 1
            if state[1] == 1:
                self._report_later(kind, level, state[0] + self.interval - now)
            return False
        if state is not None and state[1]:  # no loop ran the report: say it now
            msg += f" ({int(state[1])} more like this in the last {now - state[0]:.0f}s not logged)"
        self._kinds[kind] = [now, 0]
        self.logger.log(level, msg, *args, exc_info=exc_info)  # type: ignore[arg-type]
        return True

    def _report_later(self, kind: str, level: int, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: the count goes out with the kind's next line
            return
        loop.call_later(max(delay, 0.0), self._report, kind, level)

    def _report(self, kind: str, level: int) -> None:
        """End of an interval with occurrences left out: say how many, and let the next
        occurrence be written."""
        state = self._kinds.get(kind)
        if state is None or not state[1]:
            return
        elapsed = self._clock() - state[0]
        del self._kinds[kind]
        self.logger.log(level, "%d more %s in the last %.0fs not logged", int(state[1]), kind, elapsed)
