"""Coalescing of concurrent requests into one store call.

A store round trip (an aiosqlite thread hop, a Redis round trip) costs more than deciding
a whole batch, so requests wait for the next event-loop turn and go together. At most one
batch is in flight: what arrives meanwhile forms the next one, so batches grow with load
without any timer. Items with the same key never share a batch (the second waits for
the next one), because a batch statement must see each key once to answer each request
from its own before-and-after state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Runs ``run(items) -> results`` (same length, same order) for coalesced submissions."""

    def __init__(self, run: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
                 key: Callable[[T], Hashable], max_batch: int = 128):
        self._run = run
        self._key = key
        self._max = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None  # kept: the loop holds tasks weakly

    @property
    def idle(self) -> bool:
        """Nothing queued or running: a caller may go to the store directly, in order."""
        return self._task is None and not self._pending

    def submit(self, item: T) -> asyncio.Future[R]:
        """Queue ``item``; the future gets its result once its batch has run."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if self._task is None:
            # The task's first step runs on the next loop turn, after everything else
            # that is ready now -- which is what lets this turn's submissions coalesce.
            self._task = loop.create_task(self._work())
        return future

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        rest: list[tuple[T, asyncio.Future[R]]] = []
        keys: set[Hashable] = set()
        for entry in self._pending:
            if entry[1].cancelled():
                continue
            k = self._key(entry[0])
            if len(batch) < self._max and k not in keys:
                keys.add(k)
                batch.append(entry)
            else:
                rest.append(entry)
        self._pending = rest
        return batch

    async def _work(self) -> None:
        """Run batches until nothing is pending; one task serves a whole busy period."""
        try:
            while batch := self._take():
                await self._execute(batch)
        finally:
            self._task = None

    async def _execute(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # every waiter gets the store's error
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def drain(self) -> None:
        """Wait until everything submitted so far has run (used when shutting down)."""
        while self._task is not None:
            await asyncio.wait({self._task})
