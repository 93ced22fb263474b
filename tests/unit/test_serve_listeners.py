"""serve's worker starts every front end through one interface (filterd.listener), and a
front end with slow start-up work does not hold the others back."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest

from filterd import serve
from filterd.config import Config
from filterd.listener import WorkerContext
from filterd.policy.listener import PolicyListener


class SlowListener:
    """A front end whose preload waits until the test lets it go (compiling rules)."""

    name: ClassVar[str] = "slow"
    uses_greylist: ClassVar[bool] = False
    release = threading.Event()
    started = threading.Event()

    def __init__(self, preloaded: Any):
        self.preloaded = preloaded

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        pass

    @classmethod
    def preloads(cls, cfg: Config) -> str | None:
        return "slow"

    @classmethod
    def preload(cls, cfg: Config) -> str:
        assert cls.release.wait(30), "the test never let the preload finish"
        return "built"

    @classmethod
    async def from_config(cls, cfg: Config, context: WorkerContext) -> SlowListener:
        return cls(context.preloaded)

    async def start(self, sock: socket.socket) -> None:
        assert self.preloaded == "built"
        type(self).started.set()

    def reload(self) -> None:
        pass

    async def stop(self) -> None:
        pass


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    return sock


async def test_the_policy_service_answers_while_another_front_end_still_loads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the content pipeline was built before anything listened, so with
    SpamAssassin's rules the policy service was unreachable for a minute at first start."""
    monkeypatch.setattr(serve, "_BY_NAME", {"policy": PolicyListener, "slow": SlowListener})
    SlowListener.release.clear()
    SlowListener.started.clear()
    cfg = Config.from_text(f"data_directory = {tmp_path}\npolicy_restrictions = permit\n")
    policy, slow = _listening(), _listening()
    port = policy.getsockname()[1]
    worker = asyncio.ensure_future(serve.worker_main(cfg, {"policy": [policy], "slow": [slow]}))
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        writer.write(b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
                     b"client_address=192.0.2.1\nclient_name=client.example\nhelo_name=client.example\n"
                     b"sender=a@example.org\nrecipient=b@example.com\ninstance=1.2.3\n\n")
        answer = await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
        assert answer == b"action=OK\n\n"
        assert not SlowListener.started.is_set()  # still loading: the policy did not wait
        SlowListener.release.set()
        for _ in range(1000):  # a guard, not a timing
            if SlowListener.started.is_set():
                break
            await asyncio.sleep(0.01)
        assert SlowListener.started.is_set()
        writer.close()
        await writer.wait_closed()
    finally:
        SlowListener.release.set()
        os.kill(os.getpid(), signal.SIGTERM)  # worker_main's own handler: stop
        assert await asyncio.wait_for(worker, 30) == 0
