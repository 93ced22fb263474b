"""The queue manager's wake-up socket: a hint that never blocks, raises or carries data."""

from __future__ import annotations

import asyncio
import os
import socket

from filterd.mta.trigger import TriggerListener, Waker, trigger_path


async def test_wakeups_reach_the_listener_and_a_burst_is_one_call(tmp_path: object) -> None:
    loop = asyncio.get_running_loop()
    calls: list[int] = []
    listener = TriggerListener(str(tmp_path), lambda: calls.append(1))
    listener.open(loop)
    waker = Waker(str(tmp_path))
    try:
        for _ in range(50):
            waker.wake()
        for _ in range(100):
            if calls:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert calls == [1]
        waker.wake()
        for _ in range(100):
            if len(calls) == 2:
                break
            await asyncio.sleep(0.01)
        assert calls == [1, 1]
    finally:
        waker.close()
        listener.close(loop)
    assert not os.path.exists(trigger_path(str(tmp_path)))


def test_waking_with_no_queue_manager_is_silent(tmp_path: object) -> None:
    waker = Waker(str(tmp_path))
    waker.wake()  # no socket there: the file in incoming is found by the next poll
    waker.wake()
    waker.close()


async def test_a_stale_socket_file_is_replaced(tmp_path: object) -> None:
    loop = asyncio.get_running_loop()
    os.makedirs(os.path.dirname(trigger_path(str(tmp_path))))
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(trigger_path(str(tmp_path)))
    stale.close()  # a crashed queue manager left the file behind
    calls: list[int] = []
    second = TriggerListener(str(tmp_path), lambda: calls.append(1))
    second.open(loop)
    try:
        Waker(str(tmp_path)).wake()
        for _ in range(100):
            if calls:
                break
            await asyncio.sleep(0.01)
        assert calls == [1]
    finally:
        second.close(loop)
