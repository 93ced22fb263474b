"""filterd.log.RateLimitedLog: a flood of one warning is one line, and a count of the rest."""

from __future__ import annotations

import asyncio
import logging

import pytest

from filterd.log import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "filterd.test"]


def test_one_line_per_kind_and_interval_with_the_count_of_the_rest(caplog):
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("filterd.test"), interval=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="filterd.test"):
        for i in range(1000):
            limited.warning("bad requests", "client %d sent a bad request", i)
        limited.warning("other faults", "another kind")  # kinds are limited apart
        clock.now += 10.0
        limited.warning("bad requests", "client %d sent a bad request", 1000)
    assert messages(caplog) == [
        "client 0 sent a bad request",
        "another kind",
        "client 1000 sent a bad request (999 more like this in the last 10s not logged)",
    ]


def test_nothing_is_held_back_below_the_limit(caplog):
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("filterd.test"), interval=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="filterd.test"):
        for i in range(3):
            assert limited.warning("bad requests", "fault %d", i)
            clock.now += 11.0
    assert messages(caplog) == ["fault 0", "fault 1", "fault 2"]


async def test_with_a_loop_the_count_is_reported_when_the_interval_ends(caplog):
    """A flood that stops is still counted: the loop reports it at the interval's end."""
    limited = RateLimitedLog(logging.getLogger("filterd.test"), interval=0.2)
    with caplog.at_level(logging.INFO, logger="filterd.test"):
        for i in range(50):
            limited.warning("bad requests", "fault %d", i)
        for _ in range(100):  # a guard, not a timing: the report comes after 0.2 s
            if len(messages(caplog)) == 2:
                break
            await asyncio.sleep(0.05)
        assert limited.warning("bad requests", "fault again")  # a new interval: written
    assert messages(caplog)[0] == "fault 0"
    assert messages(caplog)[1].startswith("49 more bad requests in the last ")
    assert messages(caplog)[2] == "fault again"
