"""Verdicts that need the real clamd: ClamAV in the embedded default (clamd there or not),
a message both infected and banned, and quarantined mail found by the mail_id of its log
line, behind a real Postfix that must not bounce (backscatter) what filterd blocks."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from filterd.config import Config
from filterd.registry import PARAMS
from filterd.content.message import Message
from filterd.restrict.transaction import Transaction
from filterd.content.pipeline import ContentPipeline, Preloaded
from filterd.filter.server import ContentFilterServer
from tests.fixtures.clamd import SIGNATURE_PREFIX, STREAM_MAX_LENGTH, ClamdServer, clean_message, eicar, eicar_mime_message
from tests.fixtures.postfix import PostfixFactory, amavis_master_cf, free_port

pytestmark = pytest.mark.integration

EICAR_COM = eicar_mime_message().replace(b"invoice.com", b"eicar.com")
"""The issue's case: EICAR attached as ``eicar.com``, a virus with a banned name."""
UNSCANNED_EICAR = (b"From: a@example.org\r\nTo: b@example.com\r\nSubject: quoted\r\n\r\n"
                   + eicar() + b"\r\n")


def message(raw: bytes) -> Message:
    return Message(raw, Transaction(sender="a@example.org", recipients=["b@example.com"]))


def config(tmp_path: Path, extra: str = "") -> Config:
    return Config.from_text(f"data_directory = {tmp_path}\ncontent_checks = postfix_checks banned clamav\n"
                            f"clamav_timeout = 20s\n{extra}")


@pytest.fixture
def default_socket(monkeypatch: pytest.MonkeyPatch, clamd_server: ClamdServer) -> Iterator[ClamdServer]:
    """clamav_socket's default pointed at the fixture's clamd, as Debian's clamd.ctl is on a
    machine with clamav-daemon: the configuration does not set clamav_socket."""
    param = PARAMS["clamav_socket"]
    monkeypatch.setitem(PARAMS, "clamav_socket", dataclasses.replace(param, default=clamd_server.spec_unix))
    yield clamd_server
    clamd_server.start()  # a test that stopped it leaves it running for the next


def clamav_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "viruses are NOT scanned" in r.getMessage()]


async def test_default_socket_with_clamd_running_scans(tmp_path: Path, default_socket: ClamdServer,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    pipeline = ContentPipeline.from_config(config(tmp_path))
    try:
        assert "clamav" in pipeline.stages
        verdict = await pipeline.scan(message(UNSCANNED_EICAR), "1-1")
    finally:
        pipeline.close()
    assert (verdict.category, verdict.action) == ("INFECTED", "quarantine")
    assert clamav_warnings(caplog) == []


async def test_no_clamd_and_nothing_configured_passes_mail_with_one_warning(
        tmp_path: Path, default_socket: ClamdServer, caplog: pytest.LogCaptureFixture) -> None:
    """The embedded default on a machine without clamd: one warning per start (the master
    loads the pipeline once for all workers), then mail is scored and passed as usual."""
    default_socket.stop()
    cfg = config(tmp_path)
    preloaded = Preloaded.from_config(cfg)  # what filterd serve does once, before the workers
    workers = [ContentPipeline.from_config(cfg, preloaded) for _ in range(2)]
    try:
        verdicts = [await w.scan(message(raw), "2-2") for w in workers
                    for raw in (clean_message(), UNSCANNED_EICAR, clean_message(8192))]
    finally:
        for w in workers:
            w.close()
    assert [(v.action, v.category) for v in verdicts] == [("pass", "CLEAN")] * 6
    assert all("clamav" not in w.stages for w in workers)
    [warning] = clamav_warnings(caplog)
    assert f"no clamd socket exists at {default_socket.unix_socket}" in warning


async def test_an_explicit_socket_defers_when_clamd_is_down(tmp_path: Path, clamd_server: ClamdServer,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    clamd_server.stop()
    try:
        pipeline = ContentPipeline.from_config(config(tmp_path, f"clamav_socket = {clamd_server.spec_unix}\n"))
        try:
            verdict = await pipeline.scan(message(clean_message()), "3-3")
        finally:
            pipeline.close()
    finally:
        clamd_server.start()
    assert verdict.action == "tempfail" and verdict.reason.startswith("virus_scan FAILED: clamd at unix:")
    assert clamav_warnings(caplog) == []


async def test_a_default_socket_that_existed_at_start_defers_when_clamd_fails(
        tmp_path: Path, default_socket: ClamdServer) -> None:
    pipeline = ContentPipeline.from_config(config(tmp_path))
    try:
        assert "clamav" in pipeline.stages
        default_socket.stop()
        verdict = await pipeline.scan(message(clean_message()), "4-4")
    finally:
        pipeline.close()
    assert verdict.action == "tempfail" and "virus_scan FAILED" in verdict.reason


async def test_infected_and_banned_is_infected(tmp_path: Path, clamd_server: ClamdServer) -> None:
    cfg = config(tmp_path, f"clamav_socket = {clamd_server.spec_unix}\nbanned_action = reject\n")
    pipeline = ContentPipeline.from_config(cfg)
    msg = message(EICAR_COM)
    try:
        verdict = await pipeline.scan(msg, "5-5")
    finally:
        pipeline.close()
    assert (verdict.category, verdict.action, verdict.quarantine_kind) == ("INFECTED", "quarantine", "virus")
    [virus] = verdict.virus_names
    assert virus.startswith(SIGNATURE_PREFIX)
    assert str(verdict.reply) == f"250 2.7.0 Ok, discarded, id=5-5 - INFECTED: {virus}"
    out = verdict.edits.apply(msg).replace(b"\r\n\t", b" ")
    assert f"X-Filterd-Alert: INFECTED, message contains virus: {virus}".encode() in out
    assert b"X-Filterd-Alert: BANNED, message contains " in out and b"eicar.com" in out


# -- behind Postfix -------------------------------------------------------------------------------

@pytest.fixture
async def content_filter(tmp_path: Path, clamd_server: ClamdServer) -> AsyncIterator[tuple[ContentFilterServer, int]]:
    """filterd's content filter with the default actions, banned checks and the fixture's clamd."""
    cfg = Config.from_text(
        f"data_directory = {tmp_path / 'filterd'}\nmyhostname = filter.example\n"
        f"content_checks = postfix_checks banned clamav\nclamav_socket = {clamd_server.spec_unix}\n"
        f"clamav_timeout = 20s\nfilter_forward = smtp:[127.0.0.1]:{free_port()}\n")
    server = ContentFilterServer.from_config(cfg)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    await server.start(sock)
    yield server, sock.getsockname()[1]
    await server.stop(5)


async def wait_for_log(postfix: Any, *texts: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in await asyncio.to_thread(postfix.log_lines):
            if all(t in line for t in texts):
                return str(line)
        await asyncio.sleep(0.2)
    raise TimeoutError(f"no Postfix log line with {texts}")


async def test_blocked_mail_is_quarantined_under_its_mail_id_and_never_bounced(
        postfix_factory: PostfixFactory, content_filter: tuple[ContentFilterServer, int],
        caplog: pytest.LogCaptureFixture) -> None:
    """EICAR as eicar.com is INFECTED (it was BANNED and rejected, so Postfix bounced it to
    a sender that viruses forge); a banned .exe is quarantined too, not rejected. Each is
    found in the quarantine by the mail_id of filterd's log line."""
    caplog.set_level(logging.INFO, logger="filterd.content")
    server, filter_port = content_filter
    reinject = free_port()
    postfix = await asyncio.to_thread(postfix_factory, {"content_filter": f"smtp-amavis:[127.0.0.1]:{filter_port}"},
                                      amavis_master_cf(reinject))
    exe = EICAR_COM.replace(b"eicar.com", b"setup.exe").replace(
        b"Content-Transfer-Encoding: base64\r\n", b"Content-Transfer-Encoding: 7bit\r\n", 1)
    exe = exe.split(b"Content-Disposition: attachment; filename=\"setup.exe\"\r\n\r\n")[0] + (
        b"Content-Disposition: attachment; filename=\"setup.exe\"\r\n\r\nnot really a program\r\n--=-=-=--\r\n")
    for raw, kind, category in ((EICAR_COM, "virus", "INFECTED"), (exe, "banned", "BANNED")):
        reply = await postfix.send_async("forged@example.net", ["rcpt@example.com"], raw)
        assert reply.ok, reply
        await wait_for_log(postfix, reply.queue_id, "status=sent", "250 2.7.0 Ok, discarded")
        [entry] = await server.quarantine.list(kind=kind)
        [line] = [r.getMessage() for r in caplog.records if f"Queue-ID: {reply.queue_id}" in r.getMessage()]
        assert f"Blocked {category}" in line
        mail_id = re.search(r"mail_id: (\w+)", line).group(1)  # type: ignore[union-attr]
        assert entry.id == f"{kind}-{mail_id}" and f"quarantine: {entry.id}" in line
    log = "\n".join(await asyncio.to_thread(postfix.log_lines))
    assert "status=bounced" not in log and "sender non-delivery notification" not in log
    assert postfix.sink.messages() == []


async def test_a_message_larger_than_clamd_scans_is_unchecked_not_deferred(
        tmp_path: Path, clamd_server: ClamdServer) -> None:
    """clamd refuses it the same way on every retry: a 451 would loop until it expired."""
    pipeline = ContentPipeline.from_config(config(tmp_path, f"clamav_socket = {clamd_server.spec_unix}\n"))
    try:
        verdict = await pipeline.scan(message(clean_message(STREAM_MAX_LENGTH + 1024 * 1024)), "6-6")
    finally:
        pipeline.close()
    assert (verdict.action, verdict.category) == ("pass", "UNCHECKED")
    assert verdict.reason == "UNCHECKED: larger than clamd scans (StreamMaxLength)"
    assert [s.name for s in verdict.symbols if s.name.startswith("CLAMAV")] == ["CLAMAV_LIMIT"]
