"""The README's commands on a fresh Debian machine: ``./scripts/serve`` and the virtual
environment ``scripts/ensure-venv`` makes with Debian's own Python (which refuses pip
installs outside one, PEP 668), run with nothing on PATH but Debian's directories."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.programs import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
#: Debian's own directories only: no pyenv shims, no /usr/local.
DEBIAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _debian_env(home: Path) -> dict[str, str]:
    """Debian's PATH and nothing else from this environment but HOME (pip's download
    cache is there), or ``home`` where there is none."""
    return {"HOME": os.environ.get("HOME") or str(home), "PATH": DEBIAN_PATH, "LANG": "C.UTF-8"}


def _ask(proc: subprocess.Popen[bytes], port: int, deadline: float) -> str:
    """One policy request, once the port answers (fail if ``proc`` ends first, or at the deadline)."""
    while True:
        try:
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"exited with status {proc.returncode} before answering:\n"
                            f"{proc.communicate()[0].decode(errors='replace')}")
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    with conn:
        conn.sendall(b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.7\n"
                     b"client_name=mx.example\nsender=a@example.org\nrecipient=b@example.com\n\n")
        answer = b""
        while not answer.endswith(b"\n\n"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.decode()


def test_venv_is_git_ignored() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    proc = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", ".venv/bin/python"])
    assert proc.returncode == 0, ".venv is not git-ignored"


def test_serve_script_runs_from_the_venv_with_debian_path_and_stops_on_sigterm(tmp_path: Path) -> None:
    """./scripts/serve -o ... answers a policy request and exits 0 on SIGTERM, run from
    the checkout's venv (made by ./scripts/test beforehand; re-used, not remade)."""
    if not (REPO / ".venv" / "bin" / "filterd").exists():
        pytest.skip("no .venv in the checkout yet: ./scripts/test (or scripts/ensure-venv --test) makes it")
    port = free_port()
    proc = subprocess.Popen(
        [str(REPO / "scripts" / "serve"), "-o", f"policy_listen=inet:127.0.0.1:{port}",
         "-o", "filter_listen=", "-o", f"data_directory={tmp_path / 'data'}", "-o", "worker_processes=1"],
        env=_debian_env(tmp_path), cwd=tmp_path, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        answer = _ask(proc, port, time.monotonic() + 120)  # a stale venv is brought up to date first
        assert answer.startswith("action=DEFER_IF_PERMIT 4.2.0 Greylisted"), answer
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1] == str(REPO / ".venv" / "bin" / "filterd").encode(), cmdline
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, out
    assert "daemon started" in out and "terminating on signal" in out


def _copy_checkout(dest: Path) -> None:
    """What `pip install -e` of filterd needs, as a checkout of its own."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "filterd", dest / "filterd", ignore=ignore)
    shutil.copytree(REPO / "scripts", dest / "scripts", ignore=ignore)


@pytest.mark.slow
def test_ensure_venv_mends_a_half_made_venv_then_reuses_it(tmp_path: Path) -> None:
    """A venv left without pip (a run stopped half way, or made without python3-venv)
    is made anew; a whole, up-to-date one is re-used; a changed pyproject.toml is
    installed again. Downloads filterd's dependencies (tens of seconds)."""
    python = Path("/usr/bin/python3")
    if not python.exists():
        pytest.skip("not Debian: no /usr/bin/python3")
    if subprocess.run([str(python), "-c", "import ensurepip"], capture_output=True).returncode:
        pytest.skip("/usr/bin/python3 has no venv module (python3-venv; ./scripts/test installs it)")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    _copy_checkout(checkout)
    subprocess.run([str(python), "-m", "venv", "--without-pip", str(checkout / ".venv")], check=True)
    env = _debian_env(tmp_path)

    def ensure() -> str:
        proc = subprocess.run([str(checkout / "scripts" / "ensure-venv")], env=env, cwd=tmp_path,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    first = ensure()
    assert "making the virtual environment" in first and "installing filterd" in first
    version = subprocess.run([str(checkout / ".venv" / "bin" / "filterd"), "--version"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("filterd "), version
    assert ensure() == ""  # whole and up to date: nothing done
    with open(checkout / "pyproject.toml", "a") as fh:
        fh.write("# changed\n")
    again = ensure()
    assert "installing filterd" in again and "making" not in again
