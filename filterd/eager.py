"""Run a coroutine at once, in the caller's turn, and make a Task only if it must wait.

A policy request usually needs nothing that waits: the tables are in memory, greylisting
state is answered by a non-waiting SQLite statement, DNS answers are cached. Scheduling
such a request as a Task costs more than deciding it: creating the Task, one event-loop
turn to start it, one more for every Future it awaits, each turn an ``epoll_wait`` and
Python-level loop bookkeeping. Starting the coroutine in the caller's own turn and
answering in the same ``data_received`` call removes all of that, and a request that
does wait (a DNS lookup, a chained policy service) continues as an ordinary Task.

This is what Python 3.12's ``asyncio.eager_task_factory`` does; filterd supports 3.11,
so it drives the first steps itself, with the same rule a Task follows: a coroutine that
suspends on a Future is resumed (``send(None)``) once that Future is done, and the
Future's own ``__await__`` then returns its result or raises its exception inside the
coroutine. Like an eager task, the synchronous part runs outside any Task
(``asyncio.current_task()`` is None there); filterd's request paths do not depend on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Pending:
    """The continuation of a coroutine that suspended: wraps the Task finishing it."""

    __slots__ = ("task",)

    def __init__(self, task: asyncio.Task[Any]):
        self.task = task


def start(coro: Coroutine[Any, Any, T]) -> T | Pending:
    """Run ``coro`` until it finishes or first suspends.

    Returns its result when it finished without waiting (an exception it raised
    propagates), else a :class:`Pending` whose Task resumes it; must be called with a
    running event loop.
    """
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return stop.value
    return Pending(asyncio.get_running_loop().create_task(_resume(coro, yielded)))


async def _resume(coro: Coroutine[Any, Any, T], yielded: Any) -> T:
    """Finish ``coro`` inside a Task, waiting for what it waits for at each step."""
    while True:
        try:
            if yielded is None:  # a bare ``yield`` (asyncio.sleep(0)): give up one turn
                await asyncio.sleep(0)
            else:
                # The coroutine's own __await__ marked the Future as being waited for;
                # a Task clears the mark when it takes the Future over, and so do we.
                yielded._asyncio_future_blocking = False
                # Waiting only: the result, exception or cancellation reaches the
                # coroutine when it is resumed, through the Future's own __await__.
                await yielded
        except asyncio.CancelledError as exc:
            if yielded is None or not yielded.cancelled():
                # This Task was cancelled, not the Future: deliver it to the coroutine,
                # so its cleanup runs as it would in a Task of its own.
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
        except Exception:  # noqa: BLE001 - the Future's exception; the coroutine gets it
            pass
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            return stop.value
