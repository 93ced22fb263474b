"""The milter driven by ``miltertest`` (OpenDKIM's MTA simulator, Debian ``miltertest``),
for the protocol paths Postfix does not take in the Postfix tests: a unix socket with
its mode, what the negotiation asks for, an unknown address family, ABORT and a second
message, macros of several stages, header changes and Postfix's hold queue as
miltertest's EOM checks see them.

Each test writes a Lua script, runs ``miltertest -s`` against ``filterd serve`` and
expects exit status 0 (a failed check in the script raises ``error``).
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.filterd import Daemon

pytestmark = pytest.mark.integration

GTUBE_RULE = r"""
body  GTUBE  /XJS\*C4JDBQADN1\.NSBN3\*2IDNEN\*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL\*C\.34X/
score GTUBE  1000
"""
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

PRELUDE = """
local function check(ok, what)
    if not ok then error("check failed: " .. what) end
end
local conn = mt.connect("{spec}", 40, 0.25)
check(conn ~= nil, "connect")
check(mt.negotiate(conn, nil, nil, nil) == nil, "negotiate")
"""


@pytest.fixture
def miltertest() -> str:
    path = shutil.which("miltertest")
    if path is None:
        pytest.skip("miltertest is not installed (Debian package miltertest)")
    return path


@pytest.fixture
def daemon(tmp_path: Path):
    started: list[Daemon] = []

    def start(extra: str = "") -> tuple[Daemon, Path]:
        rules = tmp_path / "rules"
        rules.mkdir(exist_ok=True)
        (rules / "gtube.cf").write_text(GTUBE_RULE)
        sock = tmp_path / "milter.sock"
        d = Daemon(tmp_path, f"milter_listen = unix:{sock}\nmilter_socket_mode = 0620\n"
                             f"content_checks = postfix_checks rules\nrules_directory = {rules}\nrules_extra_directories =\n"
                             "spam_tag_level = -999\nmilter_rcpt_restrictions = permit\n" + extra,
                   workers=1)
        started.append(d.start())
        return d, sock

    yield start
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()


def run(miltertest: str, tmp_path: Path, sock: Path, body: str) -> str:
    script = tmp_path / "test.lua"
    script.write_text(PRELUDE.replace("{spec}", f"unix:{sock}") + body)
    result = subprocess.run([miltertest, "-v", "-v", "-s", str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_unix_socket_mode_and_negotiated_options(miltertest: str, daemon, tmp_path: Path) -> None:
    _, sock = daemon()
    run(miltertest, tmp_path, sock, """
check(mt.test_action(conn, SMFIF_ADDHDRS), "ADDHDRS asked for")
check(mt.test_action(conn, SMFIF_CHGHDRS), "CHGHDRS asked for")
check(mt.test_action(conn, SMFIF_QUARANTINE), "QUARANTINE asked for")
check(not mt.test_action(conn, SMFIF_CHGBODY), "no CHGBODY")
check(mt.test_option(conn, SMFIP_NOUNKNOWN), "unknown commands not wanted")
check(mt.test_option(conn, SMFIP_NODATA), "DATA not wanted")
check(mt.test_option(conn, SMFIP_NR_HDR), "headers not answered")
check(mt.test_option(conn, SMFIP_NR_BODY), "body chunks not answered")
check(mt.test_option(conn, SMFIP_NR_CONN), "connect not answered")
check(not mt.test_option(conn, SMFIP_NR_RCPT), "RCPT answered")
check(not mt.test_option(conn, SMFIP_NOHDRS), "headers wanted")
mt.disconnect(conn)
""")
    assert stat.S_IMODE(sock.stat().st_mode) == 0o620  # set by the worker serving it


def test_abort_then_second_message_with_header_changes(miltertest: str, daemon, tmp_path: Path) -> None:
    _, sock = daemon()
    run(miltertest, tmp_path, sock, f"""
mt.macro(conn, SMFIC_CONNECT, "j", "mx.example", "{{daemon_name}}", "smtpd")
check(mt.conninfo(conn, "client.example", "192.0.2.7") == nil, "conninfo")
check(mt.helo(conn, "client.example") == nil, "helo")
mt.macro(conn, SMFIC_MAIL, "{{mail_addr}}", "first@example.org")
check(mt.mailfrom(conn, "<first@example.org>") == nil, "mail 1")
check(mt.rcptto(conn, "<rcpt@example.com>") == nil, "rcpt 1")
check(mt.getreply(conn) == SMFIR_CONTINUE, "rcpt 1 continues")
check(mt.header(conn, "Subject", "first") == nil, "header 1")
check(mt.abort(conn) == nil, "abort")
mt.macro(conn, SMFIC_MAIL, "{{mail_addr}}", "second@example.org")
check(mt.mailfrom(conn, "<second@example.org>", "SIZE=200") == nil, "mail 2")
mt.macro(conn, SMFIC_RCPT, "i", "4XYZ12345")
check(mt.rcptto(conn, "<rcpt@example.com>") == nil, "rcpt 2")
check(mt.header(conn, "From", "second@example.org") == nil, "from")
check(mt.header(conn, "Subject", "buy now") == nil, "subject")
check(mt.header(conn, "X-Spam-Flag", "NO") == nil, "forged flag")
check(mt.bodystring(conn, "{GTUBE}\\r\\n") == nil, "body")
check(mt.eom(conn) == nil, "eom")
check(mt.getreply(conn) == SMFIR_CONTINUE, "spam passed, tagged")
check(mt.eom_check(conn, MT_HDRCHANGE, "X-Spam-Flag"), "outside X-Spam-Flag replaced")
check(not mt.eom_check(conn, MT_HDRADD, "X-Spam-Flag"), "no second X-Spam-Flag")
check(mt.eom_check(conn, MT_HDRCHANGE, "Subject"), "subject tagged")
check(mt.eom_check(conn, MT_HDRADD, "X-Spam-Status"), "X-Spam-Status added")
check(mt.eom_check(conn, MT_HDRADD, "X-Spam-Score", " 1000"), "X-Spam-Score added")
mt.disconnect(conn)
""")


def test_unknown_family_and_hold_queue(miltertest: str, daemon, tmp_path: Path) -> None:
    d, sock = daemon("spam_action = hold\n")
    run(miltertest, tmp_path, sock, f"""
check(mt.conninfo(conn, "somewhere", "unspec") == nil, "conninfo unspec")
check(mt.mailfrom(conn, "<a@example.org>") == nil, "mail")
check(mt.rcptto(conn, "<b@example.com>") == nil, "rcpt")
check(mt.header(conn, "Subject", "x") == nil, "header")
check(mt.bodystring(conn, "{GTUBE}\\r\\n") == nil, "body")
check(mt.eom(conn) == nil, "eom")
check(mt.eom_check(conn, MT_QUARANTINE, "spam"), "held in Postfix's hold queue")
mt.disconnect(conn)
""")
    assert "Blocked SPAM {Held}" in _wait(d, "{Held}")


def test_greylisting_reply_at_rcpt(miltertest: str, daemon, tmp_path: Path) -> None:
    _, sock = daemon("milter_rcpt_restrictions = check_greylist\n")
    out = run(miltertest, tmp_path, sock, """
check(mt.conninfo(conn, "client.example", "192.0.2.99") == nil, "conninfo")
check(mt.mailfrom(conn, "<grey@example.org>") == nil, "mail")
check(mt.rcptto(conn, "<b@example.com>") == nil, "rcpt")
check(mt.getreply(conn) == SMFIR_REPLYCODE, "greylisted with a reply code")
mt.echo("greylisted")
mt.disconnect(conn)
""")
    assert "greylisted" in out


def _wait(d: Daemon, text: str) -> str:
    """The daemon's log once it holds ``text`` (lines are written in batches)."""
    deadline = time.monotonic() + 20
    while text not in d.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    return d.log.read_text()
