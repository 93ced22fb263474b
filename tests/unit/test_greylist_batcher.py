"""The coalescing batcher: one store call per event-loop turn, keys unique per batch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from filterd.greylist.batcher import Batcher


class Recorder:
    def __init__(self, fail: bool = False):
        self.batches: list[list[str]] = []
        self.fail = fail

    async def run(self, items: Sequence[str]) -> list[str]:
        self.batches.append(list(items))
        await asyncio.sleep(0.001)
        if self.fail:
            raise OSError("disk on fire")
        return [item.upper() for item in items]


async def test_one_turn_is_one_batch_and_results_keep_their_order() -> None:
    rec = Recorder()
    b: Batcher[str, str] = Batcher(rec.run, key=lambda s: s)
    results = await asyncio.gather(*(b.submit(x) for x in ["a", "b", "c"]))
    assert results == ["A", "B", "C"]
    assert rec.batches == [["a", "b", "c"]]


async def test_what_arrives_during_a_batch_forms_the_next() -> None:
    rec = Recorder()
    b: Batcher[str, str] = Batcher(rec.run, key=lambda s: s)
    first = b.submit("a")
    await asyncio.sleep(0)  # the first batch is now in flight
    later = [b.submit(x) for x in ["b", "c"]]
    assert await first == "A" and await asyncio.gather(*later) == ["B", "C"]
    assert rec.batches == [["a"], ["b", "c"]]


async def test_a_key_is_never_twice_in_one_batch_and_size_is_bounded() -> None:
    rec = Recorder()
    b: Batcher[str, str] = Batcher(rec.run, key=lambda s: s[0], max_batch=3)
    items = ["a1", "a2", "b1", "c1", "d1", "a3"]
    assert await asyncio.gather(*(b.submit(x) for x in items)) == [x.upper() for x in items]
    assert rec.batches == [["a1", "b1", "c1"], ["a2", "d1"], ["a3"]]


async def test_errors_reach_every_waiter_and_the_batcher_recovers() -> None:
    rec = Recorder(fail=True)
    b: Batcher[str, str] = Batcher(rec.run, key=lambda s: s)
    results = await asyncio.gather(b.submit("a"), b.submit("b"), return_exceptions=True)
    assert [type(r) for r in results] == [OSError, OSError]
    rec.fail = False
    assert await b.submit("c") == "C"


async def test_cancelled_waiters_are_dropped_and_drain_waits() -> None:
    rec = Recorder()
    b: Batcher[str, str] = Batcher(rec.run, key=lambda s: s)
    b.submit("a").cancel()
    kept = b.submit("b")
    await b.drain()
    assert kept.result() == "B"
    assert rec.batches == [["b"]]

