"""The content pipeline: stage order, short-circuits and failure paths."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from filterd.config import Config
from filterd.content.message import Message
from filterd.restrict.transaction import Transaction
from filterd.content.pipeline import ContentPipeline
from filterd.content.symbols import Symbol
from filterd.maps import MapTempError

CLEAN = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nhello\r\n"
BANNED = (
    b"From: a@example.org\r\nSubject: invoice\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n'
    b"--b\r\nContent-Type: application/octet-stream\r\n"
    b'Content-Disposition: attachment; filename="setup.exe"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
    b"TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAgAAAAA==\r\n--b--\r\n"
)
BROKEN_MIME = (
    b"From: a@example.org\r\nthis is not a header\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="never-closed"\r\n\r\n--never-closed\r\n'
    b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!\r\n"
)


@pytest.fixture
def header_checks(tmp_path: Path) -> str:
    path = tmp_path / "header_checks"
    path.write_text("/^Subject: reject me/ REJECT 5.7.1 go away\n/^Subject: discard me/ DISCARD\n")
    return f"regexp:{path}"


def config(tmp_path: Path, text: str) -> Config:
    missing = tmp_path / "no-clamd.sock"
    return Config.from_text(f"data_directory = {tmp_path}\nclamav_socket = unix:{missing}\n"
                            f"clamav_timeout = 5s\n{text}")


def message(raw: bytes) -> Message:
    return Message(raw, Transaction(sender="a@example.org", recipients=["b@example.com"]))


class Rules:
    """A stand-in rule set: what the scoring stage receives from the real one."""

    def __init__(self, symbols: list[Symbol] | Exception):
        self.result = symbols
        self.threads: list[str] = []

    def evaluate(self, msg: Message) -> list[Symbol]:
        self.threads.append(threading.current_thread().name)
        if isinstance(self.result, Exception):
            raise self.result
        return list(self.result)


async def test_postfix_reject_stops_before_clamav(tmp_path: Path, header_checks: str) -> None:
    cfg = config(tmp_path, f"header_checks = {header_checks}\ncontent_checks = postfix_checks clamav")
    pipeline = ContentPipeline.from_config(cfg)
    verdict = await pipeline.scan(message(b"Subject: reject me\r\n\r\nx\r\n"), "1-1")
    pipeline.close()
    assert verdict.action == "reject"  # clamd (unreachable) would have made it tempfail
    assert str(verdict.reply) == "550 5.7.1 go away"
    assert [s.name for s in verdict.symbols] == ["POSTFIX_HEADER_CHECKS"]


async def test_banned_is_quarantined_by_default(tmp_path: Path) -> None:
    pipeline = ContentPipeline.from_config(config(tmp_path, "content_checks = banned"))
    verdict = await pipeline.scan(message(BANNED), "2-2")
    pipeline.close()
    assert (verdict.category, verdict.action, verdict.quarantine_kind) == ("BANNED", "quarantine", "banned")
    assert str(verdict.reply).startswith("250 2.7.0 Ok, discarded, id=2-2 - BANNED: ")
    assert any(s.name == "BANNED_FILENAME" for s in verdict.symbols)


async def test_banned_message_is_still_virus_scanned(tmp_path: Path) -> None:
    """INFECTED outranks BANNED, and only clamd can tell: a clamd that cannot scan defers
    a banned message too (the old pipeline stopped at the banned name and rejected it)."""
    pipeline = ContentPipeline.from_config(config(tmp_path, "content_checks = banned clamav\nbanned_action = reject"))
    verdict = await pipeline.scan(message(BANNED), "2-3")
    pipeline.close()
    assert verdict.action == "tempfail" and "virus_scan FAILED" in verdict.reason
    assert {"BANNED_FILENAME", "CLAMAV_FAILURE"} <= {s.name for s in verdict.symbols}


async def test_clamav_failure_defers(tmp_path: Path) -> None:
    pipeline = ContentPipeline.from_config(config(tmp_path, "content_checks = clamav"))
    verdict = await pipeline.scan(message(CLEAN), "3-3")
    pipeline.close()
    assert verdict.action == "tempfail"
    assert str(verdict.reply).startswith("451 4.5.0 Error in processing, id=3-3, virus_scan FAILED: clamd at unix:")
    assert [s.name for s in verdict.symbols] == ["CLAMAV_FAILURE"]


async def test_clamav_failure_pass_adds_unchecked_header(tmp_path: Path) -> None:
    cfg = config(tmp_path, "content_checks = clamav\nclamav_failure_action = pass\nspam_tag_level = -999")
    pipeline = ContentPipeline.from_config(cfg)
    msg = message(CLEAN)
    verdict = await pipeline.scan(msg, "4-4")
    pipeline.close()
    assert (verdict.action, verdict.category) == ("pass", "UNCHECKED")
    out = verdict.edits.apply(msg)
    assert out.startswith(b"X-Virus-Scanned: not scanned (clamd unavailable) by filterd at ")
    assert b"X-Spam-Status: No, score=0 " in out


async def test_clamav_disabled_by_empty_socket(tmp_path: Path) -> None:
    cfg = Config.from_text(f"data_directory = {tmp_path}\nclamav_socket =\nrules_extra_directories =\n")
    pipeline = ContentPipeline.from_config(cfg)
    pipeline.close()
    assert "clamav" not in pipeline.stages


async def test_broken_mime_becomes_a_symbol(tmp_path: Path) -> None:
    cfg = config(tmp_path, "content_checks = postfix_checks banned")
    pipeline = ContentPipeline.from_config(cfg)
    verdict = await pipeline.scan(message(BROKEN_MIME), "5-5")
    pipeline.close()
    assert verdict.action == "pass"
    [defects] = [s for s in verdict.symbols if s.name == "MIME_DEFECTS"]
    assert defects.score == 0.5 and "malformed header line" in defects.evidence


async def test_rules_run_in_worker_thread_and_score(tmp_path: Path) -> None:
    rules = Rules([Symbol("GTUBE", 1000.0, "Generic Test for Unsolicited Bulk Email")])
    base = ContentPipeline.from_config(config(tmp_path, "content_checks ="))
    pipeline = ContentPipeline(base.policy, ruleset=rules)
    msg = message(CLEAN)
    verdict = await pipeline.scan(msg, "6-6")
    pipeline.close()
    base.close()
    assert rules.threads and rules.threads[0].startswith("filterd-content")
    assert (verdict.category, verdict.score, verdict.action) == ("SPAM", 1000.0, "pass")
    assert b"X-Spam-Flag: YES" in verdict.edits.apply(msg)


async def test_rules_failure_is_a_symbol_not_a_failure(tmp_path: Path) -> None:
    base = ContentPipeline.from_config(config(tmp_path, "content_checks ="))
    pipeline = ContentPipeline(base.policy, ruleset=Rules(RuntimeError("bug")))
    verdict = await pipeline.scan(message(CLEAN), "7-7")
    pipeline.close()
    base.close()
    assert verdict.action == "pass"
    assert [s.name for s in verdict.symbols] == ["RULES_FAILURE"]


async def test_postfix_discard(tmp_path: Path, header_checks: str) -> None:
    cfg = config(tmp_path, f"header_checks = {header_checks}\ncontent_checks = postfix_checks")
    pipeline = ContentPipeline.from_config(cfg)
    verdict = await pipeline.scan(message(b"Subject: discard me\r\n\r\nx\r\n"), "8-8")
    pipeline.close()
    assert verdict.action == "discard"


def test_unknown_content_check_is_a_config_error(tmp_path: Path) -> None:
    from filterd.config import ConfigError

    with pytest.raises(ConfigError, match="unknown content check 'spamassassin'"):
        config(tmp_path, "content_checks = clamav spamassassin")


class _Failing:
    """A check object whose every use raises (an unreadable table, a bug)."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def __getattr__(self, name: str) -> object:
        raise self.exc


@pytest.mark.parametrize("stage, reason", [
    ("postfix_checks", "header/body checks FAILED: table down"),
    ("banned", "banned check FAILED: table down"),
])
async def test_a_table_that_cannot_answer_tempfails(tmp_path: Path, stage: str, reason: str) -> None:
    pipeline = ContentPipeline.from_config(config(tmp_path, "content_checks = postfix_checks, banned"))
    setattr(pipeline, stage, _Failing(MapTempError("table down")))
    try:
        verdict = await pipeline.scan(message(CLEAN), "1-1")
    finally:
        pipeline.close()
    assert verdict.action == "tempfail"
    assert verdict.reason == reason


@pytest.mark.parametrize("stage, symbol", [
    ("postfix_checks", "HEADER_BODY_CHECKS_FAILED"),
    ("banned", "BANNED_CHECK_FAILED"),
])
async def test_a_check_failing_on_the_content_is_final(tmp_path: Path, stage: str, symbol: str) -> None:
    """The same message would fail the same way on every retry: a 451 would loop until the
    message expires. It is UNCHECKED instead (tagged and delivered by default)."""
    pipeline = ContentPipeline.from_config(config(tmp_path, "content_checks = postfix_checks, banned"))
    setattr(pipeline, stage, _Failing(RuntimeError("boom")))
    msg = message(CLEAN)
    try:
        verdict = await pipeline.scan(msg, "1-1")
    finally:
        pipeline.close()
    assert (verdict.action, verdict.category) == ("pass", "UNCHECKED")
    assert [(s.name, s.evidence) for s in verdict.symbols if s.name.endswith("_FAILED")] == [(symbol, "RuntimeError")]
    out = verdict.edits.apply(msg)
    assert b"Subject: ***UNCHECKED*** hi\r\n" in out
    assert b"X-Filterd-Alert: UNCHECKED, not fully checked: " in out


async def test_unchecked_action_applies(tmp_path: Path) -> None:
    pipeline = ContentPipeline.from_config(config(tmp_path, "content_checks = banned\nunchecked_action = hold"))
    pipeline.banned = _Failing(RuntimeError("boom"))  # type: ignore[assignment]
    verdict = await pipeline.scan(message(CLEAN), "9-9")
    pipeline.close()
    assert (verdict.action, verdict.category, verdict.quarantine_kind) == ("hold", "UNCHECKED", "unchecked")
    assert str(verdict.reply) == "250 2.7.0 Ok, held, id=9-9 - UNCHECKED: banned check failed (RuntimeError)"
