"""ClamavScanner's error paths and reply handling, against scripted stand-ins for clamd.

The real clamd is exercised in tests/integration/test_clamd.py; here small asyncio servers
play clamd's side of INSTREAM so that every way a conversation can go wrong is reproduced
exactly: nothing listening, no answer, no reply, garbage, clamd's own ERROR replies.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from filterd.config import Config, ConfigError
from filterd.content.clamav import ClamavScanner

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def scanner_for(spec: str, timeout: str = "5s") -> ClamavScanner:
    return ClamavScanner(Config.from_text(f"clamav_socket = {spec}\nclamav_timeout = {timeout}\n"))


async def read_chunks(reader: asyncio.StreamReader) -> bytes:
    """Read INSTREAM chunks the way clamd does, up to the zero-length one; return the payload."""
    payload = bytearray()
    while True:
        (size,) = struct.unpack("!L", await reader.readexactly(4))
        if size == 0:
            return bytes(payload)
        payload += await reader.readexactly(size)


def replying(reply: bytes, received: list[bytes] | None = None) -> Handler:
    """A stand-in that answers PING or one INSTREAM with ``reply``, then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        command = await reader.readline()
        if command == b"nINSTREAM\n":
            payload = await read_chunks(reader)
            if received is not None:
                received.append(payload)
            writer.write(reply)
        elif command == b"nPING\n":
            writer.write(reply)
        # an empty command is pyclamd's constructor probing the socket: just close
        await writer.drain()
        writer.close()

    return handle


@pytest.fixture
async def fake_clamd(tmp_path: Path) -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Start a unix-socket stand-in for clamd with a given handler; returns its spec."""
    servers: list[asyncio.AbstractServer] = []

    async def start(handler: Handler) -> str:
        path = str(tmp_path / f"clamd{len(servers)}.sock")
        servers.append(await asyncio.start_unix_server(handler, path))
        return f"unix:{path}"

    yield start
    for server in servers:
        server.close()


def unused_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- configuration -----------------------------------------------------------------------


def test_defaults_are_debians_clamd_and_defer() -> None:
    scanner = ClamavScanner(Config.from_text(""))
    assert str(scanner.endpoint) == "unix:/var/run/clamav/clamd.ctl"
    assert scanner.timeout == 60.0
    assert scanner.failure_action == "defer"


@pytest.mark.parametrize(
    "line",
    ["clamav_socket = unix:", "clamav_socket = inet:localhost", "clamav_timeout = soon",
     "clamav_failure_action = reject"],
)
def test_bad_settings_are_refused(line: str) -> None:
    with pytest.raises(ConfigError):
        ClamavScanner(Config.from_text(line + "\n"))


# -- nothing to talk to ------------------------------------------------------------------


async def test_missing_unix_socket_is_a_precise_error(tmp_path: Path) -> None:
    spec = f"unix:{tmp_path}/no-such.sock"
    result = await scanner_for(spec).scan(b"data")
    assert result.status == "error"
    assert result.virus_names == []
    assert result.error == f"clamd at {spec}: no such file or directory"
    assert await scanner_for(spec).ping() is False


async def test_tcp_port_without_listener_is_connection_refused() -> None:
    spec = f"inet:127.0.0.1:{unused_tcp_port()}"
    result = await scanner_for(spec).scan(b"data")
    assert (result.status, result.error) == ("error", f"clamd at {spec}: connection refused")
    assert await scanner_for(spec).ping() is False


async def test_server_that_never_answers_times_out_and_the_connection_is_cut(fake_clamd) -> None:
    hung_up = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await reader.readline():
            await reader.read()  # swallow the stream and never reply, until the client hangs up
            hung_up.set()
        writer.close()

    spec = await fake_clamd(silent)
    scanner = scanner_for(spec, timeout="0.3s")
    result = await scanner.scan(b"x" * 100_000)
    assert result.status == "error"
    assert result.error == f"clamd at {spec}: no answer within 0.3s"
    # the worker thread is not left waiting for pyclamd's own socket timeouts
    await asyncio.wait_for(hung_up.wait(), 10)
    assert await scanner.ping() is False


async def test_listener_that_never_accepts_times_out() -> None:
    """A full accept backlog: connect succeeds in the kernel, then nothing happens."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        spec = f"inet:127.0.0.1:{listener.getsockname()[1]}"
        result = await scanner_for(spec, timeout="0.3s").scan(b"x" * 4096)
    assert result.status == "error"
    assert "no answer within 0.3s" in (result.error or "")


# -- what clamd can say ------------------------------------------------------------------


async def test_ok_reply_is_clean_and_the_whole_message_is_streamed(fake_clamd) -> None:
    received: list[bytes] = []
    spec = await fake_clamd(replying(b"stream: OK\n", received))
    data = bytes(range(256)) * 1000  # several 64 KB chunks, not a multiple of the chunk size
    result = await scanner_for(spec).scan(data)
    assert (result.status, result.virus_names, result.error) == ("clean", [], None)
    assert received == [data]


async def test_empty_message_is_streamed_as_an_empty_stream(fake_clamd) -> None:
    received: list[bytes] = []
    spec = await fake_clamd(replying(b"stream: OK\n", received))
    assert (await scanner_for(spec).scan(b"")).status == "clean"
    assert received == [b""]


async def test_found_reply_is_infected_with_the_signature_name(fake_clamd) -> None:
    spec = await fake_clamd(replying(b"stream: Win.Test.EICAR_HDB-1 FOUND\n"))
    result = await scanner_for(spec).scan(b"data")
    assert (result.status, result.virus_names, result.error) == ("infected", ["Win.Test.EICAR_HDB-1"], None)


async def test_clamd_error_reply_is_an_error(fake_clamd) -> None:
    spec = await fake_clamd(replying(b"stream: Can't allocate memory ERROR\n"))
    result = await scanner_for(spec).scan(b"data")
    assert (result.status, result.error) == ("error", f"clamd at {spec}: Can't allocate memory")


async def test_size_limit_reply_is_unchecked_not_an_error(fake_clamd) -> None:
    """The message's size, the same on every retry: not a failure to defer for."""
    spec = await fake_clamd(replying(b"INSTREAM size limit exceeded. ERROR\n"))
    result = await scanner_for(spec).scan(b"data")
    assert result.status == "unchecked"
    assert "INSTREAM size limit exceeded" in (result.error or "")


async def test_size_limit_while_still_sending_is_reported_not_a_broken_pipe(fake_clamd) -> None:
    """clamd replies and closes mid-stream; the sender sees EPIPE but must report clamd's reason."""

    async def limit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not await reader.readline():
            writer.close()
            return
        await reader.readexactly(4 + 65536)
        writer.write(b"INSTREAM size limit exceeded. ERROR\n")
        await writer.drain()
        writer.close()

    spec = await fake_clamd(limit)
    result = await scanner_for(spec).scan(b"x" * (8 * 1024 * 1024))
    assert result.status == "unchecked"
    assert "INSTREAM size limit exceeded" in (result.error or "")


@pytest.mark.parametrize(
    "reply",
    [b"", b"garbage\n", b"stream: something odd\n", b"PONG\n", b"\xff\xfe\n"],
    ids=["no-reply", "no-colon", "unknown-status", "wrong-command", "binary"],
)
async def test_unexpected_replies_are_errors_never_clean(fake_clamd, reply: bytes) -> None:
    spec = await fake_clamd(replying(reply))
    result = await scanner_for(spec).scan(b"data")
    assert result.status == "error"
    assert (result.error or "").startswith(f"clamd at {spec}: ")


async def test_ping(fake_clamd) -> None:
    assert await scanner_for(await fake_clamd(replying(b"PONG\n"))).ping() is True
    assert await scanner_for(await fake_clamd(replying(b"PANG\n"))).ping() is False
