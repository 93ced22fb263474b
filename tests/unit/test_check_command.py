"""``filterd check``: the full report even when a scanner failed, and exit codes for scripts."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from filterd import cli
from filterd.config import Config
from filterd.content.commands import EXIT_CLEAN, EXIT_ERROR, EXIT_FOUND, EXIT_TEMPFAIL, _check

GTUBE_RULE = r"""
body     GTUBE  /XJS\*C4JDBQADN1\.NSBN3\*2IDNEN\*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL\*C\.34X/
describe GTUBE  Generic Test for Unsolicited Bulk Email
score    GTUBE  1000
"""
CLEAN = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nhello\r\n"
GTUBE = (b"From: a@example.org\r\nTo: b@example.com\r\nSubject: buy\r\n\r\n"
         b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n")


@pytest.fixture
def cfg_text(tmp_path: Path) -> str:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "gtube.cf").write_text(GTUBE_RULE)
    return (f"data_directory = {tmp_path}\nrules_directory = {rules}\n"
            "content_checks = postfix_checks banned rules\n")


def write(tmp_path: Path, name: str, raw: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(raw)
    return str(path)


async def run(text: str, files: list[str]) -> tuple[int, list[dict]]:
    out = io.StringIO()
    status = await _check(Config.from_text(text), files, True, out)
    return status, [json.loads(line) for line in out.getvalue().splitlines()]


async def test_exit_status_clean_found_error(tmp_path: Path, cfg_text: str) -> None:
    clean, spam = write(tmp_path, "clean.eml", CLEAN), write(tmp_path, "spam.eml", GTUBE)
    assert (await run(cfg_text, [clean]))[0] == EXIT_CLEAN
    status, reports = await run(cfg_text, [clean, spam])
    assert status == EXIT_FOUND and [r["category"] for r in reports] == ["CLEAN", "SPAM"]
    assert (await run(cfg_text, [spam, str(tmp_path / "missing.eml")]))[0] == EXIT_ERROR


async def test_a_failed_scanner_still_shows_the_score_and_every_rule(tmp_path: Path, cfg_text: str) -> None:
    """clamd is set explicitly and not there: the server answers 451, and check says so
    (exit 3), but still scores the message and lists what fired."""
    text = cfg_text.replace("banned rules", "banned clamav rules") + f"clamav_socket = unix:{tmp_path / 'none.sock'}\n"
    status, [report] = await run(text, [write(tmp_path, "spam.eml", GTUBE)])
    assert status == EXIT_TEMPFAIL
    assert report["action"] == "tempfail" and report["reply"].startswith("451 4.5.0 ")
    assert report["score"] == 1000.0
    assert {s["name"] for s in report["symbols"]} >= {"GTUBE", "CLAMAV_FAILURE"}


async def test_the_action_is_what_the_server_does(tmp_path: Path, cfg_text: str) -> None:
    """A header check's REJECT settles the message before clamd (the server never asks it);
    check runs clamd and the rules anyway, but shows the REJECT."""
    checks = tmp_path / "header_checks"
    checks.write_text("/^Subject: buy/ REJECT 5.7.1 go away\n")
    text = (cfg_text.replace("banned rules", "banned clamav rules") + f"header_checks = regexp:{checks}\n"
            f"clamav_socket = unix:{tmp_path / 'none.sock'}\n")
    status, [report] = await run(text, [write(tmp_path, "spam.eml", GTUBE)])
    assert (status, report["action"], report["reply"]) == (EXIT_FOUND, "reject", "550 5.7.1 go away")
    assert {s["name"] for s in report["symbols"]} >= {"POSTFIX_HEADER_CHECKS", "GTUBE", "CLAMAV_FAILURE"}


def test_deep_nesting_without_banned_checks_is_a_verdict_not_a_traceback(
        tmp_path: Path, cfg_text: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's poison message: 1,000 levels of message/rfc822 with banned checks left out."""
    raw = (b"From: a@example.org\r\nSubject: deep\r\n"
           + b"Content-Type: message/rfc822\r\n\r\nSubject: level\r\n" * 1000 + b"\r\nleaf\r\n")
    config = tmp_path / "filterd.cf"
    config.write_text(cfg_text.replace("postfix_checks banned rules", "rules"))
    status = cli.main(["check", "--config", str(config), "--json", write(tmp_path, "deep.eml", raw)])
    report = json.loads(capsys.readouterr().out)
    assert status == EXIT_FOUND
    assert (report["action"], report["category"]) == ("pass", "UNCHECKED")
    assert "MIME nesting" in report["reason"]


def test_a_bad_configuration_is_an_error_not_a_finding(tmp_path: Path) -> None:
    config = tmp_path / "filterd.cf"
    config.write_text("spam_action = maybe\n")
    assert cli.main(["check", "--config", str(config), write(tmp_path, "m.eml", CLEAN)]) == EXIT_ERROR


def test_exit_codes_are_documented_in_the_help() -> None:
    check = cli.build_parser()._subparsers._group_actions[0].choices["check"]  # type: ignore[union-attr]
    help_text = check.format_help()
    for code in (EXIT_CLEAN, EXIT_FOUND, EXIT_ERROR, EXIT_TEMPFAIL):
        assert f"\n  {code}  " in help_text


def test_the_embedded_default_checks_mail_on_a_machine_without_clamd(tmp_path: Path) -> None:
    """`filterd check` with no configuration at all: one warning that viruses are not
    scanned, and the message is scored and passed (it was a 451 "virus_scan FAILED")."""
    import os
    import subprocess
    import sys

    from filterd.config import SYSTEM_CONFIG

    socket_path = Config.from_text("").get("clamav_socket").path
    if os.path.exists(socket_path) or os.path.exists(SYSTEM_CONFIG):
        pytest.skip(f"this machine has {socket_path} or {SYSTEM_CONFIG}: not the unconfigured case")
    env = {k: v for k, v in os.environ.items() if k != "FILTERD_CONFIG"}
    done = subprocess.run([sys.executable, "-m", "filterd", "check", "-o", f"data_directory={tmp_path}",
                           write(tmp_path, "clean.eml", CLEAN)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == EXIT_CLEAN, done.stderr
    assert ": pass (CLEAN), score " in done.stdout
    [warning] = done.stderr.splitlines()
    assert warning.startswith(f"warning: clamav_socket is not set and no clamd socket exists at {socket_path}")
