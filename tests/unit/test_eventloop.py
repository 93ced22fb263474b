"""The workers' event loop, callbacks held until the loop is about to poll, and the
policy connection's replies held that way (with a recording transport).

Marked ``worker_loop``: each test runs on filterd's WorkerLoop and on asyncio's own
loop, where :func:`before_poll` falls back to ``call_soon``.
"""

from __future__ import annotations

import asyncio

import pytest

from filterd.eventloop import HOLD_LIMIT, WorkerLoop, before_poll
from filterd.policy.server import PolicyConnection

pytestmark = pytest.mark.worker_loop


def call_before_poll(callback) -> None:
    before_poll(asyncio.get_running_loop())(callback)


async def test_the_worker_variant_runs_on_a_worker_loop(request):
    """The conftest hook really runs the ``worker`` variants on a WorkerLoop."""
    worker = "worker" in request.node.callspec.id
    assert isinstance(asyncio.get_running_loop(), WorkerLoop) == worker


async def test_held_callbacks_run_after_the_turn_in_the_order_held():
    order: list[str] = []
    call_before_poll(lambda: order.append("held 1"))
    call_before_poll(lambda: order.append("held 2"))
    order.append("this turn")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert order == ["this turn", "held 1", "held 2"]


async def test_at_most_hold_limit_callbacks_wait_for_the_poll():
    ran: list[int] = []
    for n in range(HOLD_LIMIT + 1):
        call_before_poll(lambda n=n: ran.append(n))
    if isinstance(asyncio.get_running_loop(), WorkerLoop):
        assert ran == list(range(HOLD_LIMIT))  # the limit was reached: run at once
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert ran == list(range(HOLD_LIMIT + 1))


async def test_a_failing_held_callback_is_reported_and_the_others_still_run():
    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    ran: list[str] = []

    def boom() -> None:
        raise RuntimeError("held callback failed")

    call_before_poll(boom)
    call_before_poll(lambda: ran.append("after"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    assert ran == ["after"]
    assert [type(c["exception"]) for c in reported] == [RuntimeError]


async def test_work_a_held_callback_schedules_runs_without_waiting_for_events():
    """A failed write schedules connection_lost with call_soon from inside the held
    callback: the poll right after must not sleep (here it would sleep 5 s)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    timer_fired: list[bool] = []
    timer = loop.call_later(5, timer_fired.append, True)
    call_before_poll(lambda: loop.call_soon(done.set_result, "scheduled by a held callback"))
    assert await done == "scheduled by a held callback"
    assert timer_fired == []
    timer.cancel()


class FakeTransport:
    """Records what the connection writes (a unit test of the connection alone)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str) -> object:
        return ("192.0.2.9", 4242) if name == "peername" else None

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        """Flow control (pause_writing) is not what these tests look at."""


class EchoService:
    """Answers each request with its ``n`` attribute, at once."""

    async def handle(self, req, peer: str) -> str:
        return f"DUNNO {req.attrs['n']}"


def _requests(*numbers: int) -> bytes:
    return b"".join(b"request=smtpd_access_policy\nn=%d\n\n" % n for n in numbers)


def connected() -> tuple[PolicyConnection, FakeTransport]:
    """A policy connection answering with EchoService, and the transport it writes to."""
    conn = PolicyConnection(EchoService(), set())  # type: ignore[arg-type]
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


async def test_replies_to_one_read_go_out_in_one_write_in_order():
    conn, transport = connected()
    conn.data_received(_requests(1, 2, 3))
    assert transport.writes == []  # held until the loop is about to poll
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert transport.writes == [b"action=DUNNO 1\n\naction=DUNNO 2\n\naction=DUNNO 3\n\n"]


async def test_closing_writes_the_held_replies_first():
    conn, transport = connected()
    conn.data_received(_requests(7))
    conn.close()  # e.g. the server stopping
    assert transport.closed
    assert transport.writes == [b"action=DUNNO 7\n\n"]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert transport.writes == [b"action=DUNNO 7\n\n"]  # not written twice


async def test_a_framing_error_answers_the_requests_before_it_then_closes():
    conn, transport = connected()
    conn.data_received(_requests(1) + b"x=" + b"y" * 70000)
    assert transport.writes == [b"action=DUNNO 1\n\n"]
    assert transport.closed
