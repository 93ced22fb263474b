"""Waking the queue manager when mail arrives: Postfix's ``public/qmgr`` trigger.

The receiving side (smtpd in every worker, the queue tools, the bounce writer) runs in
other processes than the one queue manager. After committing a file to ``incoming`` it
sends one datagram to ``<queue_directory>/public/qmgr``; the queue manager, listening
there, scans ``incoming`` at once instead of at its next poll. The trigger carries no
data and is only a hint: a lost or refused datagram (no queue manager running, its
buffer full) costs at most one poll interval, never a message, because the file is in
``incoming`` already and the queue manager also watches the directory.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Callable

PUBLIC = "public"
TRIGGER_NAME = "qmgr"
WAKEUP = b"W"
"""Postfix's TRIGGER_REQ_WAKEUP byte; anything received counts as a wake-up."""


def trigger_path(queue_directory: str) -> str:
    """Where the queue manager of ``queue_directory`` listens for wake-ups."""
    return os.path.join(queue_directory, PUBLIC, TRIGGER_NAME)


class Waker:
    """The sending side: one unbound datagram socket, reused for every wake-up."""

    def __init__(self, queue_directory: str):
        self.path = trigger_path(queue_directory)
        self._sock: socket.socket | None = None

    def wake(self) -> None:
        """Tell the queue manager that ``incoming`` has new mail; never blocks or raises."""
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(WAKEUP, self.path)
        except OSError:
            pass  # no queue manager, or its buffer is full: it polls incoming anyway

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class TriggerListener:
    """The queue manager's side: a datagram socket at :func:`trigger_path` that calls
    ``on_wake`` for every burst of wake-ups (many datagrams read at once are one call)."""

    def __init__(self, queue_directory: str, on_wake: Callable[[], None]):
        self.path = trigger_path(queue_directory)
        self.on_wake = on_wake
        self._sock: socket.socket | None = None

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the socket (replacing a stale one) and start reading it on ``loop``."""
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.bind(self.path)
        os.chmod(self.path, 0o600)
        sock.setblocking(False)
        self._sock = sock
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        assert self._sock is not None
        woke = False
        for _ in range(1000):  # bounded: a flood of datagrams cannot starve the loop
            try:
                self._sock.recv(16)
            except (BlockingIOError, InterruptedError):
                break
            woke = True
        if woke:
            self.on_wake()

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sock is not None:
            loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
