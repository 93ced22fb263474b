"""filterd.eager: a coroutine runs in the caller's turn; one that waits behaves as in a Task."""

from __future__ import annotations

import asyncio

import pytest

from filterd import eager


async def test_finishes_in_the_callers_turn_without_a_task() -> None:
    seen: list[asyncio.Task[object] | None] = []

    async def quick() -> int:
        seen.append(asyncio.current_task())
        return 42

    tasks_before = len(asyncio.all_tasks())
    assert eager.start(quick()) == 42
    assert len(asyncio.all_tasks()) == tasks_before
    assert seen == [asyncio.current_task()]  # ran right here, inside the test's own task


async def test_exception_before_waiting_propagates_to_the_caller() -> None:
    async def broken() -> None:
        raise ValueError("bad request")

    with pytest.raises(ValueError, match="bad request"):
        eager.start(broken())


async def test_waiting_coroutine_continues_as_a_task_with_each_result() -> None:
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    steps: list[str] = []

    async def two_waits() -> str:
        steps.append("start")
        a = await first
        steps.append(a)
        await asyncio.sleep(0)  # a bare yield on the way
        b = await second
        return a + b

    pending = eager.start(two_waits())
    assert isinstance(pending, eager.Pending) and steps == ["start"]
    loop.call_soon(first.set_result, "x")
    loop.call_later(0.01, second.set_result, "y")
    assert await pending.task == "xy"
    assert steps == ["start", "x"]


async def test_a_futures_exception_is_raised_inside_the_coroutine() -> None:
    fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def guarded() -> str:
        try:
            return await fut
        except KeyError as exc:
            return f"handled {exc}"

    pending = eager.start(guarded())
    assert isinstance(pending, eager.Pending)
    fut.set_exception(KeyError("lookup"))
    assert await pending.task == "handled 'lookup'"


async def test_cancelling_the_task_cancels_what_the_coroutine_waits_for() -> None:
    fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    cleaned: list[bool] = []

    async def waits() -> str:
        try:
            return await fut
        finally:
            cleaned.append(True)

    pending = eager.start(waits())
    assert isinstance(pending, eager.Pending)
    await asyncio.sleep(0)
    pending.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending.task
    assert fut.cancelled() and cleaned == [True]


async def test_a_future_cancelled_by_someone_else_can_be_handled_by_the_coroutine() -> None:
    fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def tolerant() -> str:
        try:
            return await fut
        except asyncio.CancelledError:
            return "gave up"

    pending = eager.start(tolerant())
    assert isinstance(pending, eager.Pending)
    fut.cancel()
    assert await pending.task == "gave up"


async def test_timeouts_work_after_the_first_suspension() -> None:
    async def slow() -> str:
        await asyncio.sleep(0)
        try:
            await asyncio.wait_for(asyncio.sleep(5), 0.01)
        except asyncio.TimeoutError:
            return "timed out"
        return "no timeout"

    pending = eager.start(slow())
    assert isinstance(pending, eager.Pending)
    assert await pending.task == "timed out"
