#!/usr/bin/env python3
"""The floor of a greylisting policy server in CPython: a reference for the benchmark.

Not filterd and not for use: one flat function per request does the least any
greylister must do -- split the attributes, build postgrey's triplet key (client /24,
sender, recipient, lower-cased), read the triplet with one SQLite SELECT, apply the
delay, queue the sighting (written every 0.1 s in one transaction, WAL,
synchronous=NORMAL, as filterd does), answer, and buffer one log line. There are no
whitelists, no auto-whitelist, no sender normalisation, no restriction engine, no
validation of the request and no evidence: what separates this figure from filterd's
is the price of those, and what separates it from the trivial server is the price of
the greylisting itself. One process.

Usage: python bench/bare_greylist.py PORT DIRECTORY  (policy_bench.py --only bare)
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time

DELAY = 1  # seconds, as policy_bench.GREYLIST_DELAY
FLUSH = 0.1  # seconds between writes of queued sightings and log lines
TEXT = "DEFER_IF_PERMIT 4.2.0 Greylisted, see http://postgrey.schweikert.ch/help/{}.html"


class BareGreylister:
    """Triplet state in SQLite, sightings written behind the answers."""

    def __init__(self, directory: str) -> None:
        self.db = sqlite3.connect(os.path.join(directory, "bare.db"), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS triplet "
                        "(key TEXT PRIMARY KEY, first INTEGER, last INTEGER) WITHOUT ROWID")
        self.queued: dict[str, tuple[int, int]] = {}
        self.lines: list[str] = []

    def answer(self, block: bytes) -> bytes:
        attrs = dict(line.split("=", 1) for line in block.decode("utf-8", "replace").split("\n"))
        address, sender, recipient = attrs["client_address"], attrs["sender"], attrs["recipient"]
        key = f"{address[:address.rfind('.')]}/{sender}/{recipient}".lower()
        now = int(time.time())
        seen = self.queued.get(key)
        if seen is None:
            row = self.db.execute("SELECT first FROM triplet WHERE key = ?", (key,)).fetchone()
            first = row[0] if row else now
        else:
            first = seen[0]
        self.queued[key] = (first, now)
        action = TEXT.format(recipient.rpartition("@")[2]) if now - first < DELAY else "DUNNO"
        self.lines.append(f"RCPT from {attrs['client_name']}[{address}]: "
                          f"from=<{sender}> to=<{recipient}> action={action}\n")
        return f"action={action}\n\n".encode()

    def flush(self) -> None:
        if self.queued:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO triplet VALUES (?1, ?2, ?3) ON CONFLICT (key) DO UPDATE SET last = ?3",
                [(key, first, last) for key, (first, last) in self.queued.items()])
            self.db.execute("COMMIT")
            self.queued.clear()
        if self.lines:
            os.write(2, "".join(self.lines).encode())
            self.lines.clear()


class BareConnection(asyncio.BufferedProtocol):
    def __init__(self, greylister: BareGreylister) -> None:
        self.greylister = greylister
        self.buffer = memoryview(bytearray(16384))
        self.held = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        *blocks, self.held = (self.held + self.buffer[:nbytes].tobytes()).split(b"\n\n")
        for block in blocks:
            self.transport.write(self.greylister.answer(block))


async def serve(port: int, directory: str) -> None:
    loop = asyncio.get_running_loop()
    greylister = BareGreylister(directory)

    def flush() -> None:
        greylister.flush()
        loop.call_later(FLUSH, flush)

    loop.call_later(FLUSH, flush)
    server = await loop.create_server(lambda: BareConnection(greylister), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2]))
