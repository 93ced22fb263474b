"""The policy server over real sockets: persistence, ordering, and every malformed input.

The engine runs a table-only restriction list here, so these tests need no DNS or
greylist state; the full daemon is tested in tests/integration/test_policy_daemon.py.
Every test runs on asyncio's own loop and on the workers' loop, which holds replies
until it is about to poll (filterd.eventloop).
"""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from filterd.config import Config
from filterd.policy.server import PolicyServer
from filterd.policy.service import FAILURE, MALFORMED, PolicyService
from filterd.restrict.registry import build_engine
from filterd.restrict.services import Services

RESTRICTIONS = "check_client_access inline:{ { 192.0.2.66 = REJECT go away } }, check_sender_access inline:{ { hold@example.com = HOLD } }"


pytestmark = pytest.mark.worker_loop  # every test on both loops (tests/conftest.py)


def request(**attrs: str) -> bytes:
    base = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
            "client_address": "192.0.2.1", "client_name": "client.example", "helo_name": "client.example",
            "sender": "a@example.org", "recipient": "b@example.com", "instance": "1.2.3"}
    base.update(attrs)
    return "".join(f"{k}={v}\n" for k, v in base.items() if v is not None).encode() + b"\n"


async def serve(service: PolicyService) -> tuple[PolicyServer, int]:
    """A policy server for ``service`` on a free loopback port, and that port."""
    srv = PolicyServer(service)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    await srv.start(sock)
    return srv, sock.getsockname()[1]


@pytest.fixture
async def server():
    cfg = Config.from_text(f"policy_restrictions = {RESTRICTIONS}\n")
    srv, port = await serve(PolicyService(build_engine(cfg, Services(cfg))))
    yield srv, port
    await srv.stop(1.0)


async def close(*writers: asyncio.StreamWriter) -> None:
    """Close client connections and wait until they are gone, so no socket outlives
    the test's event loop (it would be reported as a ResourceWarning much later)."""
    for writer in writers:
        writer.close()
        await writer.wait_closed()


async def ask(reader, writer, payload: bytes) -> str:
    writer.write(payload)
    await writer.drain()
    data = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
    return data.decode()


async def test_many_requests_on_one_connection_in_order(server):
    _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await ask(reader, writer, request()) == "action=DUNNO\n\n"
    # Pipelined: three requests in one write, answers in the same order.
    writer.write(request(client_address="192.0.2.66") + request() + request(sender="hold@example.com"))
    answers = [await asyncio.wait_for(reader.readuntil(b"\n\n"), 5) for _ in range(3)]
    assert answers == [b"action=REJECT go away\n\n", b"action=DUNNO\n\n", b"action=HOLD\n\n"]
    await close(writer)


async def test_a_client_that_sends_and_half_closes_still_gets_its_answers(server):
    """The answers are held until the loop polls; reading the end of input comes after."""
    _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request(client_address="192.0.2.66") + request())
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b"action=REJECT go away\n\naction=DUNNO\n\n"
    await close(writer)


async def test_attributes_in_any_order_and_unknown_ones_ignored(server):
    _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = b"future_attribute=whatever\nclient_address=192.0.2.66\nrequest=smtpd_access_policy\nprotocol_state=RCPT\n\n"
    assert await ask(reader, writer, payload) == "action=REJECT go away\n\n"
    await close(writer)


async def test_line_without_equals_is_logged_and_answered(server, caplog):
    _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    with caplog.at_level(logging.WARNING, logger="filterd.policy"):
        answer = await ask(reader, writer, request().replace(b"\n\n", b"\nnot an attribute\n\n"))
    assert answer == "action=DUNNO\n\n"
    assert any("line without '='" in r.getMessage() and "127.0.0.1" in r.getMessage() for r in caplog.records)
    await close(writer)


async def test_request_without_request_attribute_gets_an_answer(server, caplog):
    """postgrey 1.37 stays silent here and the client hangs; filterd answers and logs."""
    _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    with caplog.at_level(logging.WARNING, logger="filterd.policy"):
        answer = await ask(reader, writer, request(request=None))
    assert answer.startswith(f"action={MALFORMED}: no request= attribute")
    assert any("no request= attribute" in r.getMessage() for r in caplog.records)
    assert await ask(reader, writer, request()) == "action=DUNNO\n\n"  # still serving
    answer = await ask(reader, writer, request(request="junk"))
    assert "unknown request type 'junk'" in answer
    await close(writer)


async def test_client_address_not_an_ip_is_answered_and_daemon_keeps_serving(server, caplog):
    """postgrey 1.37 dies on this input; filterd logs it and answers."""
    _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    with caplog.at_level(logging.WARNING, logger="filterd.policy"):
        assert await ask(reader, writer, request(client_address="not-an-ip")) == "action=DUNNO\n\n"
    assert any("not an IP address" in r.getMessage() for r in caplog.records)
    r2, w2 = await asyncio.open_connection("127.0.0.1", port)
    assert await ask(r2, w2, request(client_address="192.0.2.66")) == "action=REJECT go away\n\n"
    await close(writer, w2)


async def test_binary_garbage_gets_a_safe_answer(server):
    _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = await ask(reader, writer, b"\x00\x01\xff\xfe garbage \x80\x81\n\xde\xad\xbe\xef\n\n")
    assert answer.startswith(f"action={MALFORMED}")
    await close(writer)


async def test_overlong_request_closes_only_that_connection(server, caplog):
    _, port = server
    good_r, good_w = await asyncio.open_connection("127.0.0.1", port)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    with caplog.at_level(logging.WARNING, logger="filterd.policy"):
        writer.write(b"x=" + b"y" * 70000)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    assert any("longer than" in r.getMessage() and "closing" in r.getMessage() for r in caplog.records)
    assert await ask(good_r, good_w, request()) == "action=DUNNO\n\n"
    await close(good_w, writer)


async def test_client_vanishing_mid_request_is_logged(server, caplog):
    srv, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    with caplog.at_level(logging.WARNING, logger="filterd.policy"):
        writer.write(b"request=smtpd_access_policy\nclient_addr")
        await writer.drain()
        await close(writer)
        for _ in range(100):
            if any("middle of a request" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.01)
    assert any("middle of a request" in r.getMessage() for r in caplog.records)
    r2, w2 = await asyncio.open_connection("127.0.0.1", port)
    assert await ask(r2, w2, request()) == "action=DUNNO\n\n"
    await close(w2)


async def test_stop_answers_the_request_in_flight():
    """A slow restriction (a chained policy service) is answered before shutdown ends."""
    upstream_done = asyncio.Event()

    async def slow_policy(reader, writer):
        try:
            while await reader.readuntil(b"\n\n"):
                await asyncio.sleep(0.3)
                writer.write(b"action=REJECT slow no\n\n")
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass  # filterd's client hung up: the normal end here
        finally:
            await close(writer)
            upstream_done.set()

    upstream = await asyncio.start_server(slow_policy, "127.0.0.1", 0)
    up_port = upstream.sockets[0].getsockname()[1]
    cfg = Config.from_text(f"policy_restrictions = check_policy_service inet:127.0.0.1:{up_port}\n")
    services = Services(cfg)
    srv, port = await serve(PolicyService(build_engine(cfg, services)))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request())
    await writer.drain()
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(srv.stop(5.0))
    answer = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
    assert answer == b"action=REJECT slow no\n\n"
    await stopping
    assert await reader.read() == b""
    await close(writer)
    await services.close()
    await asyncio.wait_for(upstream_done.wait(), 5)
    upstream.close()
    await upstream.wait_closed()


async def test_chained_policy_service_down_gives_postfix_451():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    cfg = Config.from_text(f"policy_restrictions = check_policy_service {{ inet:127.0.0.1:{port}, timeout=2s }}\n")
    services = Services(cfg)
    service = PolicyService(build_engine(cfg, services))
    from filterd.restrict.delegation.protocol import parse_block

    action = await service.handle(parse_block(request().rstrip(b"\n")), "test")
    assert action == "451 4.3.5 Server configuration problem"
    await services.close()


class _Flaky(PolicyService):
    """Fails on the sender ``boom-now`` at once, on ``boom-later`` after waiting."""

    async def handle(self, req, peer):
        sender = req.attrs.get("sender")
        if sender == "boom-now@example.org":
            raise RuntimeError("a fault before the first await")
        if sender == "boom-later@example.org":
            await asyncio.sleep(0.01)
            raise RuntimeError("a fault after waiting")
        return await super().handle(req, peer)


@pytest.mark.parametrize("sender", ["boom-now@example.org", "boom-later@example.org"])
async def test_a_fault_answering_one_request_gets_the_safe_answer_and_the_connection_goes_on(
        sender, caplog):
    cfg = Config.from_text(f"policy_restrictions = {RESTRICTIONS}\n")
    srv, port = await serve(_Flaky(build_engine(cfg, Services(cfg))))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        # the failing request and one behind it, pipelined: both answered, in order
        writer.write(request(sender=sender) + request(client_address="192.0.2.66"))
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
        second = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
        assert first.decode() == f"action={FAILURE}\n\n"
        assert second.decode().startswith("action=REJECT go away")
        assert any("error answering a request" in r.getMessage() for r in caplog.records)
    finally:
        await close(writer)
        await srv.stop(1.0)


# -- limits: a client that does not read, pipelines too much, idles, or one too many ----

async def _until(condition, what: str, guard: float = 30.0) -> None:
    """Wait until ``condition()`` holds (the guard only stops a test that would hang)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + guard
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"still waiting for {what} after {guard:g}s")
        await asyncio.sleep(0.01)


async def test_a_client_that_reads_no_answers_is_no_longer_read_from(server):
    """Answers pile up for a client that sends flat out and never reads: the connection
    stops reading its requests, so neither the worker's memory nor its log grows."""
    srv, port = server
    client = socket.create_connection(("127.0.0.1", port))
    client.setblocking(False)
    burst = request() * 200
    loop = asyncio.get_running_loop()
    try:
        await _until(lambda: len(srv.connections) == 1, "the connection")
        conn = next(iter(srv.connections))
        sent = 0
        while not conn._write_paused:  # noqa: SLF001 - the state under test
            assert sent < 200_000, "the server kept reading although no answer was read"
            try:
                sent += client.send(burst) // len(request())
            except BlockingIOError:
                await asyncio.sleep(0.01)
            else:
                await asyncio.sleep(0)
        assert not conn.transport.is_reading()
        answered = srv.service.requests
        # The client goes on sending: nothing more is read or decided, whatever it sends.
        for _ in range(20):
            try:
                client.send(burst)
            except BlockingIOError:
                pass
            await asyncio.sleep(0.01)
        assert srv.service.requests - answered < 2 * len(burst) // len(request())
        # Once the client reads its answers, the connection reads and answers again.
        got = bytearray()
        client_reader = asyncio.Event()
        loop.add_reader(client, client_reader.set)
        while srv.service.requests < answered + 1000:
            await asyncio.wait_for(client_reader.wait(), 5)
            client_reader.clear()
            try:
                got += client.recv(1 << 20)
            except BlockingIOError:
                pass
        loop.remove_reader(client)
        assert got.startswith(b"action=DUNNO\n\n")
    finally:
        client.close()


class _Waiting(PolicyService):
    """Every request waits until ``release`` is set (a DNS lookup, a busy store)."""

    def __init__(self, engine) -> None:
        super().__init__(engine)
        self.release = asyncio.Event()

    async def handle(self, req, peer):
        await self.release.wait()
        return await super().handle(req, peer)


async def test_requests_pipelined_behind_a_waiting_one_are_bounded_then_all_answered():
    from filterd.policy import server as server_module

    cfg = Config.from_text(f"policy_restrictions = {RESTRICTIONS}\n")
    service = _Waiting(build_engine(cfg, Services(cfg)))
    srv, port = await serve(service)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        count = 3000
        writer.write(b"".join(request(sender=f"s{i}@example.org") for i in range(count)))
        await _until(lambda: srv.connections and next(iter(srv.connections))._queue_paused,
                     "the connection to stop reading")
        conn = next(iter(srv.connections))
        per_read = server_module.RECV_BUFFER // len(request()) + 1
        assert len(conn.queue) < server_module.MAX_PENDING + per_read
        assert not conn.transport.is_reading()
        service.release.set()
        answers = [await asyncio.wait_for(reader.readuntil(b"\n\n"), 10) for _ in range(count)]
        assert answers == [b"action=DUNNO\n\n"] * count
    finally:
        await close(writer)
        await srv.stop(1.0)


async def test_an_idle_connection_is_closed_after_the_idle_timeout():
    cfg = Config.from_text(f"policy_restrictions = {RESTRICTIONS}\n")
    srv = PolicyServer(PolicyService(build_engine(cfg, Services(cfg))), idle_timeout=0.3)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    await srv.start(sock)
    reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
    try:
        assert await ask(reader, writer, request()) == "action=DUNNO\n\n"
        assert await asyncio.wait_for(reader.read(), 30) == b""  # closed by the server
        assert not srv.connections
    finally:
        await close(writer)
        await srv.stop(1.0)


async def test_a_connection_over_the_limit_is_closed_at_once_and_the_others_served(caplog):
    cfg = Config.from_text(f"policy_restrictions = {RESTRICTIONS}\n")
    srv = PolicyServer(PolicyService(build_engine(cfg, Services(cfg))), connection_limit=2)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    await srv.start(sock)
    port = sock.getsockname()[1]
    first = await asyncio.open_connection("127.0.0.1", port)
    second = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert await ask(*first, request()) == "action=DUNNO\n\n"
        assert await ask(*second, request()) == "action=DUNNO\n\n"
        third = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(third[0].read(), 10) == b""
        await close(third[1])
        assert any("policy_connection_limit" in r.getMessage() for r in caplog.records)
        assert await ask(*first, request()) == "action=DUNNO\n\n"
        await close(second[1])
        await _until(lambda: len(srv.connections) == 1, "the second connection to go")
        fourth = await asyncio.open_connection("127.0.0.1", port)  # room again
        assert await ask(*fourth, request()) == "action=DUNNO\n\n"
        await close(fourth[1])
    finally:
        await close(first[1])
        await srv.stop(1.0)
