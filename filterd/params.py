"""Core parameters: where state lives, how many workers, logging, identity."""

from __future__ import annotations

import os
import socket

from filterd.config.types import Param, as_choice, as_nonneg_int, as_str


def _default_data_directory() -> str:
    """/var/lib/filterd for root; a per-user state directory otherwise (always writable)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return "/var/lib/filterd"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "filterd")


PARAMS = [
    Param("data_directory", _default_data_directory(), as_str,
          "directory holding all filterd state (SQLite databases, Bayes model, quarantine)"),
    Param("myhostname", socket.getfqdn() or "localhost", as_str,
          "this host's name, used in headers and replies"),
    Param("mydomain", "localdomain", as_str, "this host's domain"),
    Param("syslog_name", "filterd", as_str, "the program name in log lines"),
    Param("maillog_file", "", as_str, "log file; empty logs to standard error"),
    Param("log_level", "info", as_choice("debug", "info", "warning", "error"),
          "lowest level of message that is logged"),
    Param("worker_processes", "0", as_nonneg_int,
          "worker processes sharing the listening sockets; 0 = one per CPU core"),
]
