"""The SMTP input fast paths must give exactly what aiosmtpd's own code gives."""

from __future__ import annotations

import asyncio
import random
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError

import pytest

from filterd.smtp.data import DataResult, DataState, plain_path, read_data


def aiosmtpd_getaddr(arg: str) -> tuple[str | None, str | None]:
    """aiosmtpd 1.4's SMTP._getaddr (without its local-part limit)."""
    if not arg:
        return "", ""
    try:
        if arg.lstrip().startswith("<"):
            address, rest = get_angle_addr(arg)
        else:
            address, rest = get_addr_spec(arg)
    except HeaderParseError:
        return None, None
    return address.addr_spec, rest


@pytest.mark.parametrize("arg", [
    "<a@b>", "<>", "<a@b> SIZE=1", "<a.b@c.d> BODY=8BITMIME", "<A+x@Example.COM>  SIZE=3",
    "<> SIZE=3", "<a@b>\tX=1", "<a@b> ", "<x-y_z=q@m-1.example>",
])
def test_plain_paths_parse_as_aiosmtpd(arg: str) -> None:
    assert plain_path(arg) == aiosmtpd_getaddr(arg)


@pytest.mark.parametrize("arg", [
    "<a..b@c>", "<.a@b>", "<a@b.>", '<"a b"@c>', "<@x:a@b>", "<a@[1.2.3.4]>", "<a@b>SIZE=1",
    "<a@b> (comment) SIZE=1", " <a@b>", "a@b", "<a@b", "<a b@c>", "<a@b_c>", "",
])
def test_other_paths_are_left_to_aiosmtpd(arg: str) -> None:
    assert plain_path(arg) is None


def test_random_paths_agree_with_aiosmtpd() -> None:
    rnd = random.Random(7)
    local, domain = "aZ09!#$%&'*+/=?^_`{|}~-.", "aZ09-."
    tails = ["", " SIZE=5", " ", "  (c) SIZE=1", "\t(x)", " \t A=B  C", "x", ">"]
    matched = 0
    for _ in range(20000):
        arg = ("<" + "".join(rnd.choice(local) for _ in range(rnd.randint(0, 8))) + "@"
               + "".join(rnd.choice(domain) for _ in range(rnd.randint(1, 8))) + ">" + rnd.choice(tails))
        fast = plain_path(arg)
        if fast is not None:
            matched += 1
            assert fast == aiosmtpd_getaddr(arg), arg
    assert matched > 1000


# -- DATA ---------------------------------------------------------------------------------

async def aiosmtpd_data(reader: asyncio.StreamReader, limit: int | None) -> DataResult:
    """aiosmtpd 1.4's DATA loop (SMTP.smtp_DATA), reduced to what it returns, without its
    line length limit (filterd takes lines of any length, as Postfix's smtpd does)."""
    data: list[bytearray] = []
    num_bytes = 0
    fragments: list[bytes] = []
    state = DataState.NOMINAL
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as e:
            line = await reader.read(e.consumed)
        if not fragments and line == b".\r\n":
            break
        num_bytes += len(line)
        if state == DataState.NOMINAL and limit and num_bytes > limit:
            state = DataState.TOO_MUCH
            data *= 0
        fragments.append(line)
        if line.endswith(b"\r\n"):
            if state == DataState.NOMINAL:
                data.append(bytearray(b"".join(fragments)))
            fragments *= 0
    if state != DataState.NOMINAL:
        return DataResult(state, b"")
    for text in data:
        if text.startswith(b"."):
            del text[0]
    return DataResult(state, b"".join(data))


async def _run(reader_fn, stream: bytes, cuts: list[int], limit: int | None, line_limit: int
               ) -> tuple[DataResult, bytes]:
    reader = asyncio.StreamReader(limit=line_limit)

    async def feed() -> None:
        last = 0
        for cut in cuts + [len(stream)]:
            reader.feed_data(stream[last:cut])
            last = cut
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.ensure_future(feed())
    result = await reader_fn(reader, limit)
    await feeder
    return result, await reader.read()


def _random_stream(rnd: random.Random) -> bytes:
    lines = []
    for _ in range(rnd.randint(0, 12)):
        kind = rnd.random()
        if kind < 0.2:
            lines.append(b"")
        elif kind < 0.35:
            lines.append(b"." * rnd.randint(1, 3) + b"x" * rnd.randint(0, 3))
        elif kind < 0.45:
            lines.append(b"\r" * rnd.randint(1, 2) + b"a\n.")
        else:
            lines.append(bytes(rnd.choice(b"ab.\r\n ") for _ in range(rnd.randint(1, 40))))
    body = b"".join(line + b"\r\n" for line in lines)
    return body + b".\r\nMAIL FROM:<next@x>\r\n"


async def test_random_data_agrees_with_aiosmtpd() -> None:
    rnd = random.Random(11)
    for _ in range(3000):
        stream = _random_stream(rnd)
        cuts = sorted(rnd.sample(range(1, len(stream)), min(len(stream) - 1, rnd.randint(0, 6))))
        limit = rnd.choice([None, 30, 80, 1000])
        line_limit = rnd.choice([16, 24, 64, 1 << 20])
        mine = await _run(read_data, stream, cuts, limit, line_limit)
        theirs = await _run(aiosmtpd_data, stream, cuts, limit, line_limit)
        assert mine == theirs, (stream, cuts, limit, line_limit)


@pytest.mark.parametrize("stream, content", [
    (b".\r\n", b""),
    (b"\r\n.\r\n", b"\r\n"),
    (b"a\r\n.\r\n", b"a\r\n"),
    (b"..\r\n.\r\n", b".\r\n"),
    (b"\r\r\n.\r\n", b"\r\r\n"),
    (b"a\r\n\r\n..b\r\n.\r\n", b"a\r\n\r\n.b\r\n"),
    (b"a\n.\r\nb\r\n.\r\n", b"a\n.\r\nb\r\n"),
])
async def test_data_end_and_dot_stuffing(stream: bytes, content: bytes) -> None:
    result, rest = await _run(read_data, stream + b"QUIT\r\n", [], None, 1 << 20)
    assert result == DataResult(DataState.NOMINAL, content)
    assert rest == b"QUIT\r\n"


async def test_large_message_over_the_reader_limit() -> None:
    body = b"".join(b"line %d ..........\r\n" % i for i in range(20000))
    stream = body + b".\r\n"
    result, _ = await _run(read_data, stream, [4096 * k for k in range(1, 60)], None, 4096)
    assert result == DataResult(DataState.NOMINAL, body)
    result, _ = await _run(read_data, stream, [], 100_000, 4096)
    assert result.state is DataState.TOO_MUCH


@pytest.mark.parametrize("line", [b"x" * 5000, b"." + b"x" * 5000, b"x" * 4095 + b"\r", b"\r" * 9000])
async def test_lines_over_the_reader_limit_are_taken_whole(line: bytes) -> None:
    """Postfix's smtpd takes lines of any length, and so does filterd: a refusal would
    make Postfix bounce a message it has already accepted. Only the size is limited."""
    stream = b"a\r\n" + line + b"\r\n.\r\n"
    for cuts in ([], [1, 4096, 4097, 5000]):
        result, rest = await _run(read_data, stream + b"QUIT\r\n", cuts, None, 4096)
        unstuffed = line[1:] if line.startswith(b".") else line
        assert result == DataResult(DataState.NOMINAL, b"a\r\n" + unstuffed + b"\r\n")
        assert rest == b"QUIT\r\n"
    result, rest = await _run(read_data, stream + b"QUIT\r\n", [], 4000, 4096)
    assert result.state is DataState.TOO_MUCH and rest == b"QUIT\r\n"


async def test_a_client_cut_off_inside_data_releases_its_message_at_once() -> None:
    """The frame of a cancelled read stays referenced (the task's exception traceback, in
    a cycle with the connection) until a full garbage collection: what the client sent
    must not stay with it, or every stalled client cut off keeps megabytes."""
    import gc
    import tracemalloc

    reader = asyncio.StreamReader(limit=1 << 16)
    gc.disable()
    tracemalloc.start()
    try:
        task = asyncio.ensure_future(read_data(reader, None))
        for _ in range(64):
            reader.feed_data(b"x" * 65534 + b"\r\n")
            await asyncio.sleep(0)
        held = tracemalloc.get_traced_memory()[0]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        gc.enable()
    assert held > 4_000_000 and after < 1_000_000, (held, after)
