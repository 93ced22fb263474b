"""Logging in Postfix's mail.log shape: ``Mon DD HH:MM:SS host filterd/part[pid]: text``.

One line per event, so pflogsumm-style tooling and grep habits carry over. Logger names
``filterd.policy`` become the ``filterd/policy`` program tag Postfix admins expect.
"""

from __future__ import annotations

import logging
import os
import sys
import time

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
        return f"{stamp} {self.hostname} {self.syslog_name}/{part}[{os.getpid()}]: {msg}"


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
