#!/usr/bin/env python3
"""Content-filter throughput benchmark: filterd's 10024 filter against spamd and rspamd.

The same corpus messages (``$FILTERD_CORPUS/spamassassin/{ham,hard_ham,spam}``, shuffled
with a fixed seed so every prefix is a representative mix) are pushed through:

  filterd   ``filterd serve`` with only the content filter (SMTP on a free port), clamd,
            score rules (when this build has them) and Bayes on, reinjecting into
            Postfix's ``smtp-sink``; the load generator speaks SMTP as Postfix's
            ``smtp-amavis`` transport does (XFORWARD, pipelined MAIL/RCPT/DATA, the
            connection reused)
  filterd-sarules  the same with SpamAssassin's rules added (``rules_extra_directories =
            /usr/share/spamassassin``): the like-for-like against spamd
  spamd     SpamAssassin 4 ``spamd -L`` (local tests only, Bayes trained with ``sa-learn``
            on the same corpus into a fresh database), spamc protocol spoken directly
  rspamd    rspamd 3.4 with its network modules off and Bayes in a private redis-server,
            HTTP ``/checkv2`` spoken directly
  postfix   end to end: a private Postfix with ``content_filter`` to filterd, filterd
            reinjecting into Postfix's 10025-style smtpd, delivery to ``smtp-sink``;
            delivered messages per second read from Postfix's log
  amavisd   the same Postfix with amavisd-new 2.13 as the content filter instead
            (SpamAssassin inside with spamd's rules and Bayes, ClamAV via clamd): the
            issue's end-to-end reference peer

at concurrency 1 and 8, each for a fixed time (or number of messages). Reported per
system: messages/s, latency, and the CPU time per message of the server processes and of
their helpers (clamd for filterd, redis for rspamd, Postfix in the end-to-end mode), read
from /proc, plus the load generator's own CPU so a saturated client is visible.

Usage: python bench/content_bench.py [--seconds S | --messages N] [--only NAME]
       [--concurrency C] [--workers N] [--json]        (run as root; see bench/README.md)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pwd
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from policy_bench import exit_on_sigterm, free_port, process_tree_cpu

if TYPE_CHECKING:
    from tests.fixtures.postfix import PostfixInstance, SmtpSink

SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
CATEGORIES = ("ham", "hard_ham", "spam")
SHUFFLE_SEED = 1
SENDER = "sender@bench-sender.example"
RECIPIENT = "rcpt@bench-dest.example"
CLIENT_NAME, CLIENT_ADDR = "mail.bench-sender.example", "192.0.2.10"
START_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
WARMUP_MESSAGES = 24
PHASE_GRACE = 120.0  # a measurement that overruns its budget by this much means a hung server
IO_TIMEOUT = 120.0
RSPAMD_OFF = ("rbl", "surbl", "spf", "dkim", "dmarc", "arc", "asn", "fuzzy_check", "dcc",
              "mx_check", "once_received", "emails")
SA_REQUIRED_SCORE = 5.0
RSPAMD_SPAM_ACTIONS = ("add header", "rewrite subject", "reject")
SA_RULES = "/usr/share/spamassassin"


def program(name: str) -> str:
    path = shutil.which(name, path=SBIN_PATH)
    if path is None:
        raise RuntimeError(f"{name} is not installed")
    return path


# -- corpus -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    """One corpus message, pre-encoded for every protocol so the client only writes bytes."""

    category: str
    raw: bytes
    smtp_data: bytes  # CRLF, dot-stuffed, with the terminating ".\r\n"


def smtp_encode(raw: bytes) -> bytes:
    """RFC 5321 DATA encoding: CRLF line ends, leading dots doubled, final dot line."""
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    body = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
    return body + b"\r\n.\r\n"


def load_corpus(root: Path) -> list[Sample]:
    """All messages of the three folders, in a fixed pseudo-random order."""
    samples = []
    for category in CATEGORIES:
        folder = root / category
        if not folder.is_dir():
            raise RuntimeError(f"corpus folder {folder} is missing")
        for path in sorted(folder.iterdir()):
            if path.is_file():
                raw = path.read_bytes()
                samples.append(Sample(category, raw, smtp_encode(raw)))
    if not samples:
        raise RuntimeError(f"no messages under {root}")
    random.Random(SHUFFLE_SEED).shuffle(samples)
    return samples


# -- protocol clients -------------------------------------------------------------------

@dataclass
class Outcome:
    """What one request produced; ``spam``/``bayes`` are None when the reply does not say."""

    ok: bool
    detail: str = ""
    spam: bool | None = None
    bayes: bool | None = None


class Client:
    """One concurrent session of the load generator (one connection at a time)."""

    async def check(self, sample: Sample) -> Outcome:
        raise NotImplementedError

    async def close(self) -> None:
        """Release the connection, if the protocol keeps one."""


class SmtpClient(Client):
    """SMTP as Postfix's smtp client speaks it to a content filter or an smtpd.

    The connection is kept across messages (Postfix's connection cache does that under
    load); XFORWARD is sent when offered (``smtp_send_xforward_command = yes``), commands
    are pipelined when PIPELINING is offered. Any failure closes the connection; the next
    message opens a new one.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.extensions: set[str] = set()

    async def _reply(self) -> tuple[int, str]:
        assert self.reader is not None
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), IO_TIMEOUT)
            if not line:
                raise ConnectionError("connection closed by server")
            lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            if len(line) < 4 or line[3:4] != b"-":
                break
        try:
            code = int(lines[-1][:3])
        except ValueError:
            raise ConnectionError(f"malformed reply {lines[-1]!r}") from None
        return code, " ".join(text[4:] for text in lines)

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        code, text = await self._reply()
        if code != 220:
            raise ConnectionError(f"greeting {code} {text}")
        self.writer.write(f"EHLO {CLIENT_NAME}\r\n".encode())
        code, text = await self._reply()
        if code != 250:
            raise ConnectionError(f"EHLO {code} {text}")
        self.extensions = {word.split("=")[0].upper() for word in text.split()}

    async def check(self, sample: Sample) -> Outcome:
        try:
            if self.writer is None:
                await self._open()
            assert self.writer is not None
            if "XFORWARD" in self.extensions:
                self.writer.write(f"XFORWARD NAME={CLIENT_NAME} ADDR={CLIENT_ADDR} PORT=41000 "
                                  f"PROTO=ESMTP HELO={CLIENT_NAME} SOURCE=REMOTE\r\n".encode())
                code, text = await self._reply()
                if code != 250:
                    return await self._fail(f"XFORWARD {code} {text}")
            commands = [f"MAIL FROM:<{SENDER}> SIZE={len(sample.smtp_data)}\r\n".encode(),
                        f"RCPT TO:<{RECIPIENT}>\r\n".encode(), b"DATA\r\n"]
            expected = (250, 250, 354)
            if "PIPELINING" in self.extensions:
                self.writer.write(b"".join(commands))
                replies = [await self._reply() for _ in commands]
            else:
                replies = []
                for command in commands:
                    self.writer.write(command)
                    replies.append(await self._reply())
                    if replies[-1][0] >= 400:
                        break
            for (code, text), want in zip(replies, expected):
                if code != want:
                    return await self._fail(f"{code} {text}")
            self.writer.write(sample.smtp_data)
            code, text = await self._reply()
            if code != 250:
                return await self._fail(f"{code} {text}")
            return Outcome(True)
        except (OSError, ConnectionError, TimeoutError) as error:
            return await self._fail(f"{type(error).__name__}: {error}")

    async def _fail(self, detail: str) -> Outcome:
        """A refused or broken transaction: drop the connection so the next one is clean."""
        await self.close()
        return Outcome(False, detail)

    async def close(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(OSError, ConnectionError):
                self.writer.write(b"QUIT\r\n")
                self.writer.close()
                await asyncio.wait_for(self.writer.wait_closed(), 5)
        self.reader = self.writer = None


async def _exchange(port: int, request: bytes, half_close: bool) -> bytes:
    """One request on a fresh connection, reply read to EOF (spamd and HTTP/1.0 close).

    spamc shuts its sending side down after the message; rspamd's HTTP server takes a
    half-close for an aborted request, so only spamd gets one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        if half_close and writer.can_write_eof():
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), IO_TIMEOUT)
    finally:
        writer.close()


class SpamdClient(Client):
    """The spamc protocol (SPAMC/1.5 ``SYMBOLS``), one connection per message like spamc.

    Spoken directly rather than by forking ``spamc`` per message, which would cost the
    client more CPU than some servers spend; errors are reported, never read as ham (the
    trap of ``spamc`` without ``-x``).
    """

    def __init__(self, port: int) -> None:
        self.port = port

    async def check(self, sample: Sample) -> Outcome:
        head = b"SYMBOLS SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(sample.raw)
        try:
            reply = await _exchange(self.port, head + sample.raw, half_close=True)
        except (OSError, TimeoutError) as error:
            return Outcome(False, f"{type(error).__name__}: {error}")
        return parse_spamd_reply(reply)


def parse_spamd_reply(reply: bytes) -> Outcome:
    """``SPAMD/1.1 0 EX_OK`` + ``Spam: True ; 7.1 / 5.0`` + the symbol list as body."""
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    status = lines[0].split(None, 2) if lines else []
    if len(status) < 2 or not status[0].startswith("SPAMD/") or status[1] != "0":
        return Outcome(False, f"spamd: {lines[0] if lines and lines[0] else 'no reply'}")
    spam = next((line for line in lines if line.lower().startswith("spam:")), None)
    if spam is None:
        return Outcome(False, "spamd: no Spam: header")
    symbols = body.decode("utf-8", "replace")
    return Outcome(True, spam=spam.split(":", 1)[1].strip().lower().startswith("true"),
                   bayes="BAYES_" in symbols)


class RspamdClient(Client):
    """HTTP POST of the whole message to rspamd (``/checkv2``), envelope in headers as the
    milter proxy passes it; one connection per message, JSON reply parsed."""

    def __init__(self, port: int, path: str = "/checkv2", extra: dict[str, str] | None = None) -> None:
        self.port = port
        self.path = path
        self.headers = {"From": SENDER, "Rcpt": RECIPIENT, "IP": CLIENT_ADDR,
                        "Helo": CLIENT_NAME, "Hostname": CLIENT_NAME, **(extra or {})}

    async def post(self, sample: Sample) -> tuple[int, bytes]:
        head = (f"POST {self.path} HTTP/1.0\r\nContent-Length: {len(sample.raw)}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in self.headers.items()) + "\r\n").encode()
        reply = await _exchange(self.port, head + sample.raw, half_close=False)
        status_line, _, rest = reply.partition(b"\r\n")
        parts = status_line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            raise ConnectionError(f"bad HTTP reply {status_line[:80]!r}")
        return int(parts[1]), rest.partition(b"\r\n\r\n")[2]

    async def check(self, sample: Sample) -> Outcome:
        try:
            status, body = await self.post(sample)
            if status != 200:
                return Outcome(False, f"HTTP {status} {body[:120]!r}")
            result = json.loads(body)
        except (OSError, TimeoutError, ConnectionError, ValueError) as error:
            return Outcome(False, f"{type(error).__name__}: {error}")
        symbols = result.get("symbols") or {}
        return Outcome(True, spam=result.get("action") in RSPAMD_SPAM_ACTIONS,
                       bayes="BAYES_SPAM" in symbols or "BAYES_HAM" in symbols)


# -- load generator ---------------------------------------------------------------------

@dataclass
class LoadResult:
    messages: int = 0
    elapsed: float = 0.0
    client_cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    spam: int = 0
    bayes: int = 0
    judged: int = 0  # replies that said whether the message is spam


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _drive(make_client: Callable[[], Client], samples: list[Sample], start: int,
                 concurrency: int, seconds: float | None, count: int | None,
                 result: LoadResult, gate: Callable[[], Awaitable[None]] | None) -> None:
    """``concurrency`` sessions taking the next message until the time or count is up."""
    next_index = start
    deadline = time.monotonic() + seconds if seconds is not None else None
    stop_at = start + count if count is not None else None

    async def session() -> None:
        nonlocal next_index
        client = make_client()
        try:
            while True:
                if deadline is not None and time.monotonic() >= deadline:
                    return
                if stop_at is not None and next_index >= stop_at:
                    return
                if gate is not None:
                    await gate()
                sample = samples[next_index % len(samples)]
                next_index += 1
                began = time.perf_counter()
                outcome = await client.check(sample)
                result.latencies.append(time.perf_counter() - began)
                if not outcome.ok:
                    result.failures[outcome.detail[:160]] += 1
                    continue
                result.messages += 1
                if outcome.spam is not None:
                    result.judged += 1
                    result.spam += outcome.spam
                    result.bayes += bool(outcome.bayes)
        finally:
            await client.close()

    budget = (seconds or 0.0) + PHASE_GRACE if seconds is not None else None
    tasks = [asyncio.ensure_future(session()) for _ in range(concurrency)]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=budget)
    except TimeoutError:
        result.failures[f"run did not end within {budget:.0f}s: server hung"] += 1


def run_load(make_client: Callable[[], Client], samples: list[Sample], start: int,
             concurrency: int, seconds: float | None, count: int | None,
             gate: Callable[[], Awaitable[None]] | None = None) -> LoadResult:
    result = LoadResult()
    cpu_before, began = _self_cpu(), time.perf_counter()
    asyncio.run(_drive(make_client, samples, start, concurrency, seconds, count, result, gate))
    result.elapsed = time.perf_counter() - began
    result.client_cpu = _self_cpu() - cpu_before
    return result


# -- processes we start -----------------------------------------------------------------

class Daemon:
    """A server process in its own session (so Ctrl-C reaches only us), stopped by its
    process group; CPU is that of its whole process tree."""

    def __init__(self, name: str, argv: list[str], workdir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = workdir / f"{name}.out"
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=out, start_new_session=True, env=self.env)
        return self

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise RuntimeError(f"{self.name} exited ({code}): {self.tail()}")

    def tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return " | ".join(text)[-1500:]

    def cpu(self) -> float:
        return process_tree_cpu(self.process.pid) if self.process is not None else 0.0

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            # the leader first: spamd, rspamd and filterd stop and reap their own children
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # children that outlived their parent (a pre-forked worker) share its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


def wait_until(check: Callable[[], bool], daemon: Daemon, what: str,
               timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        daemon.check_alive()
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{daemon.name}: {what} not within {timeout:.0f}s: {daemon.tail()}")
        time.sleep(0.1)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def chown_tree(path: Path, user: str) -> None:
    """Hand a directory to the user a daemon drops to (only when we run as root)."""
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


class Stack:
    """Everything started, stopped in reverse order however the run ends."""

    def __init__(self) -> None:
        self._stops: list[Callable[[], None]] = []

    def push(self, stop: Callable[[], None]) -> None:
        self._stops.append(stop)

    def daemon(self, daemon: Daemon) -> Daemon:
        self.push(daemon.stop)
        return daemon.start()

    def close(self) -> None:
        while self._stops:
            stop = self._stops.pop()
            try:
                stop()
            except Exception as error:  # noqa: BLE001 - keep stopping the others
                print(f"cleanup: {error}", file=sys.stderr)


# -- helpers shared by the filterd systems ------------------------------------------------

def start_clamd(stack: Stack, workdir: Path) -> tuple[Daemon, str]:
    """clamd with the test suite's tiny EICAR database (tests/fixtures/clamd.py)."""
    from tests.fixtures.clamd import STREAM_MAX_LENGTH, make_database

    root = workdir / "clamd"
    root.mkdir()
    make_database(root / "db", program("sigtool"))
    sock = root / "clamd.sock"
    config = root / "clamd.conf"
    config.write_text(
        "Foreground yes\n"
        f"LocalSocket {sock}\nFixStaleSocket yes\n"
        f"DatabaseDirectory {root / 'db'}\n"
        f"LogFile {root / 'clamd.log'}\nTemporaryDirectory {root}\n"
        f"StreamMaxLength {STREAM_MAX_LENGTH}\nMaxThreads 8\nSelfCheck 0\n")
    daemon = stack.daemon(Daemon("clamd", [program("clamd"), "-c", str(config)], workdir))

    def pong() -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as conn:
                conn.settimeout(2)
                conn.connect(str(sock))
                conn.sendall(b"nPING\n")
                return conn.recv(16).strip() == b"PONG"
        except OSError:
            return False

    wait_until(pong, daemon, "PONG")
    return daemon, f"unix:{sock}"


def start_sink(stack: Stack, workdir: Path) -> tuple[Daemon, int]:
    """Postfix's smtp-sink: answers everything with 250 and keeps nothing (C, cheap)."""
    port = free_port()
    argv = [program("smtp-sink")]
    if os.geteuid() == 0:
        argv += ["-u", "nobody"]
    daemon = stack.daemon(Daemon("smtp-sink", argv + ["-4", f"127.0.0.1:{port}", "256"], workdir))
    wait_until(lambda: port_open(port), daemon, "listening")
    return daemon, port


def prepare_filterd_data(workdir: Path, corpus_root: Path) -> Path:
    """A data_directory with a Bayes model learned on the whole corpus (``filterd learn``)."""
    data = workdir / "filterd-data"
    data.mkdir()
    subprocess.run([sys.executable, "-m", "filterd", "learn", "-o", f"data_directory={data}",
                    "--spam", str(corpus_root / "spam"),
                    "--ham", str(corpus_root / "ham"), str(corpus_root / "hard_ham")],
                   check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    return data


def filterd_config(workdir: Path, listen: int, forward: int, data: Path, clamav: str,
                   args: argparse.Namespace, extra_rules: str | None = None) -> Path:
    config = workdir / f"filterd-{listen}.cf"
    lines = [
        f"filter_listen = inet:127.0.0.1:{listen}",
        f"filter_forward = smtp:[127.0.0.1]:{forward}",
        "filter_protocol = smtp",
        "policy_listen =",
        "milter_listen =",
        f"worker_processes = {args.workers}",
        f"data_directory = {data}",
        f"clamav_socket = {clamav}",
        f"maillog_file = {workdir / f'filterd-{listen}.log'}",
        "myhostname = filterd-bench.test",
    ]
    if args.rules_directory:
        lines.append(f"rules_directory = {args.rules_directory}")
    if extra_rules is not None:
        lines.append(f"rules_extra_directories = {extra_rules}".rstrip())
    config.write_text("\n".join(lines) + "\n")
    return config


def filterd_stages(config: Path) -> tuple[list[str], str]:
    """The content stages ``config`` makes filterd run, decided as ContentPipeline does
    (score rules once filterd.content.rules has a RuleSet and its parameters are declared)
    without compiling anything here."""
    import filterd.registry  # noqa: F401  (installs the parameter table config reads)
    from filterd.config import Config
    from filterd.content.params import CONTENT_CHECKS

    cfg = Config.load(str(config))
    checks = cfg.get("content_checks")
    stages = [name for name in CONTENT_CHECKS if name in checks]
    try:
        from filterd.content.rules import RuleSet  # noqa: F401
    except ImportError:
        return [n for n in stages if n != "rules"], "score rules OFF: no RuleSet in this build"
    if not (cfg.known("rules_directory") and cfg.known("rules_extra_directories")):
        return [n for n in stages if n != "rules"], "score rules OFF: parameters not declared"
    paths = [cfg.expand("rules_directory"), *cfg.get("rules_extra_directories")]
    return stages, "score rules on: " + ", ".join(p for p in paths if p)


def wait_idle(daemons: list[Daemon], timeout: float = 240.0, busy: float = 0.05) -> float:
    """Wait until the servers use less than ``busy`` of a core over half a second, so
    start-up work (rule compilation in every worker, hyperscan, spare children) is not
    measured. Returns the seconds waited."""
    began = time.monotonic()
    before = sum(d.cpu() for d in daemons)
    while time.monotonic() - began < timeout:
        time.sleep(0.5)
        now = sum(d.cpu() for d in daemons)
        if now - before < busy * 0.5:
            break
        before = now
    return time.monotonic() - began


def start_filterd(stack: Stack, workdir: Path, config: Path, port: int) -> Daemon:
    daemon = stack.daemon(Daemon(f"filterd-{port}", [sys.executable, "-m", "filterd", "serve",
                                                     "--config", str(config)], workdir))
    wait_until(lambda: port_open(port), daemon, "listening")
    return daemon


def add_filterd_verdicts(m: Measurement, log_path: Path, offset: int) -> None:
    """spam%/bayes% and the verdict counts from filterd's log lines of this measurement."""
    time.sleep(0.3)  # the last verdict lines are flushed at the end of a loop turn
    judged, spam, bayes, statuses, _ = filterd_log_verdicts(log_path, offset)
    if judged:
        m.spam_percent, m.bayes_percent = 100 * spam / judged, 100 * bayes / judged
    m.notes.append(f"filterd verdicts {dict(statuses)}")


FILTERD_LOG_RE = re.compile(r"\) (Passed|Blocked|Tempfailed) ([A-Z-]+).*?Tests: \[([^\]]*)\]")


def filterd_log_verdicts(log_path: Path, offset: int) -> tuple[int, int, int, Counter[str], int]:
    """Verdict lines since ``offset``: (judged, spam, bayes fired, statuses, new offset)."""
    try:
        with open(log_path, "rb") as log:
            log.seek(offset)
            text = log.read()
    except OSError:
        return 0, 0, 0, Counter(), offset
    judged = spam = bayes = 0
    statuses: Counter[str] = Counter()
    for match in FILTERD_LOG_RE.finditer(text.decode("utf-8", "replace")):
        statuses[f"{match.group(1)} {match.group(2)}"] += 1
        judged += 1
        spam += match.group(2) in ("SPAM", "SPAMMY")
        bayes += "BAYES_" in match.group(3)
    return judged, spam, bayes, statuses, offset + len(text)


# -- amavisd-new ------------------------------------------------------------------------

AMAVIS_USER = "amavis"  # created by the amavisd-new package
AMAVISD_START_TIMEOUT = 300.0  # the parent compiles SpamAssassin's rules before it listens


def content_filter_master_cf(maxproc: int, reinject_port: int) -> str:
    """master.cf lines of the amavis-style wiring the ``postfix`` system uses (PEERS.md plus
    amavisd-new's README.postfix): the ``smtp-amavis`` transport with ``maxproc``
    connections and XFORWARD, and the 10025-style reinjection smtpd, which skips header/body
    checks, milters, unknown-recipient checks, header rewriting and per-client limits."""
    return (
        f"smtp-amavis unix - - n - {maxproc} smtp\n"
        "  -o smtp_data_done_timeout=1200\n  -o smtp_send_xforward_command=yes\n"
        f"127.0.0.1:{reinject_port} inet n - n - - smtpd\n"
        "  -o content_filter=\n"
        "  -o receive_override_options=no_header_body_checks,no_unknown_recipient_checks,no_milters\n"
        "  -o smtpd_milters=\n  -o mynetworks=127.0.0.0/8\n"
        "  -o smtpd_recipient_restrictions=permit_mynetworks,reject\n"
        "  -o smtpd_relay_restrictions=permit_mynetworks,reject\n"
        "  -o smtpd_authorized_xforward_hosts=127.0.0.0/8\n"
        "  -o local_header_rewrite_clients=\n  -o smtpd_error_sleep_time=0\n"
        "  -o smtpd_client_connection_count_limit=0\n  -o smtpd_client_connection_rate_limit=0\n")


def perl_string(value: str) -> str:
    """A Perl single-quoted literal (only ``\\`` and ``'`` are special in one)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def amavisd_config(home: Path, port: int, reinject_port: int, clamd_socket: str, site: Path,
                   servers: int) -> str:
    """A complete amavisd.conf (read instead of Debian's conf.d): Debian's package defaults
    (20-debian_defaults: tag levels 2.0 / 6.31 / 6.31, spam passed, viruses and banned names
    discarded, the banned-name list, BerkeleyDB cache on) and 01-debian's decoder programs,
    with everything that would leave the machine or the temp dir turned off: local tests
    only, no DKIM, no notifications, no syslog (the log goes to stderr), quarantine into
    ``home``. Recipients in bench-dest.example are local, so they get the X-Spam-* headers."""
    q = perl_string
    return f"""use strict;
$ENV{{PATH}} = $path = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin:/usr/bin:/bin';
$myhostname = 'amavisd-bench.test';
$mydomain = 'amavisd-bench.test';
$daemon_user = {q(AMAVIS_USER)};
$daemon_group = {q(AMAVIS_USER)};
$MYHOME = {q(str(home))};
$TEMPBASE = "$MYHOME/tmp";
$ENV{{TMPDIR}} = $TEMPBASE;
$db_home = "$MYHOME/db";
$helpers_home = "$MYHOME/var";
$pid_file = "$MYHOME/amavisd.pid";
$lock_file = "$MYHOME/amavisd.lock";
$QUARANTINEDIR = "$MYHOME/quarantine";
# spam is quarantined gzipped by default, through a module Debian's 2.13 never loads
require Amavis::IO::Zlib;
$DO_SYSLOG = 0;
$LOGFILE = '';
$log_level = 0;
$log_templ = $log_verbose_templ;  # one line per message, with the SpamAssassin tests
$log_recip_templ = undef;
$enable_db = 1;
$enable_global_cache = 1;
$max_servers = {servers};
$inet_socket_bind = '127.0.0.1';
$inet_socket_port = {port};
@inet_acl = qw(127.0.0.1);
$unix_socketname = undef;
$forward_method = 'smtp:[127.0.0.1]:{reinject_port}';
$notify_method = $forward_method;
@mynetworks = qw(127.0.0.0/8);
@local_domains_maps = ( ['.bench-dest.example'] );
@bypass_virus_checks_maps = (0);
@bypass_spam_checks_maps = (0);
$sa_local_tests_only = 1;
$sa_siteconfigpath = {q(str(site))};
$sa_tag_level_deflt = 2.0;
$sa_tag2_level_deflt = 6.31;
$sa_kill_level_deflt = 6.31;
$sa_dsn_cutoff_level = 10;
$sa_mail_body_size_limit = 200*1024;
$sa_spam_subject_tag = '***SPAM*** ';
$final_virus_destiny = D_DISCARD;
$final_banned_destiny = D_DISCARD;
$final_spam_destiny = D_PASS;
$final_bad_header_destiny = D_PASS;
$virus_admin = undef;
$spam_admin = undef;
$enable_dkim_verification = 0;
$enable_dkim_signing = 0;
$MAXLEVELS = 14;
$MAXFILES = 1500;
$MIN_EXPANSION_QUOTA = 100*1024;
$MAX_EXPANSION_QUOTA = 300*1024*1024;
$file = 'file'; $gzip = 'gzip'; $bzip2 = 'bzip2'; $lzop = 'lzop';
$rpm2cpio = ['rpm2cpio.pl', 'rpm2cpio']; $cabextract = 'cabextract';
$uncompress = ['uncompress', 'gzip -d', 'zcat']; $unfreeze = undef;
$arc = ['nomarch', 'arc']; $unarj = ['arj', 'unarj']; $unrar = ['unrar-free'];
$zoo = 'zoo'; $lha = undef; $pax = 'pax'; $cpio = 'cpio'; $ar = 'ar'; $ripole = 'ripole';
$dspam = undef;
@av_scanners = (
  ['ClamAV-clamd', \\&ask_daemon, ["CONTSCAN {{}}\\n", {q(clamd_socket)}],
   qr/\\bOK$/m, qr/\\bFOUND$/m, qr/^.*?: (?!Infected Archive)(.*) FOUND$/m ],
);
@av_scanners_backup = ();
$banned_filename_re = new_RE(
  qr'\\.[^./]*\\.(exe|vbs|pif|scr|bat|cmd|com|cpl|dll)\\.?$'i,
  qr'\\{{[0-9a-f]{{8}}(-[0-9a-f]{{4}}){{3}}-[0-9a-f]{{12}}\\}}?$'i,
  qr'^application/x-msdownload$'i,
  qr'^application/x-msdos-program$'i,
  qr'^application/hta$'i,
  qr'.\\.(exe|vbs|pif|scr|bat|cmd|com|cpl)$'i,
  qr'^\\.(exe-ms)$',
);
1;
"""


def start_amavisd(stack: Stack, workdir: Path, name: str, port: int, reinject_port: int,
                  clamav: str, site: Path, servers: int) -> Daemon:
    """``amavisd -c FILE foreground`` (only FILE is read, not Debian's conf.d) as root,
    dropping to user amavis, who owns its home under ``workdir``; its log is the Daemon's
    output file. The config must be root's and not writable by amavis, or amavisd refuses."""
    home = workdir / f"amavis-{name}"
    for sub in ("tmp", "db", "var", "quarantine"):
        (home / sub).mkdir(parents=True)
    chown_tree(home, AMAVIS_USER)
    config = workdir / f"amavisd-{name}.conf"
    config.write_text(amavisd_config(home, port, reinject_port, clamav.removeprefix("unix:"),
                                     site, servers))
    config.chmod(0o644)
    daemon = stack.daemon(Daemon(f"amavisd-{name}", [program("amavisd"), "-c", str(config),
                                                     "foreground"], workdir))
    wait_until(lambda: port_open(port), daemon, "listening", timeout=AMAVISD_START_TIMEOUT)
    return daemon


# -- measurements -----------------------------------------------------------------------

@dataclass
class Measurement:
    system: str
    concurrency: int
    messages: int
    seconds: float
    messages_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms: float  # per message, the system's own processes
    helper: str  # clamd / redis / postfix / -
    helper_cpu_ms: float
    total_cpu_ms: float
    server_cpu_percent: float
    client_cpu_ms: float
    client_cpu_percent: float
    spam_percent: float
    bayes_percent: float
    failures: dict[str, int]
    notes: list[str] = field(default_factory=list)


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def measure(system: str, concurrency: int, server: list[Daemon], helper: tuple[str, list[Daemon]],
            run: Callable[[], LoadResult], others: Sequence[Daemon] = ()) -> Measurement:
    """CPU of the server's and the helpers' process trees around one load run; ``others``
    (the sink, Postfix) are reported in a note, outside the system's figures."""
    def cpu(daemons: list[Daemon]) -> float:
        return sum(d.cpu() for d in daemons)

    server_before, helper_before = cpu(server), cpu(helper[1])
    others_before = [d.cpu() for d in others]
    result = run()
    server_cpu, helper_cpu = cpu(server) - server_before, cpu(helper[1]) - helper_before
    others_cpu = [d.cpu() - before for d, before in zip(others, others_before)]
    for daemon in server + helper[1]:
        if not daemon.alive():
            result.failures[f"{daemon.name} died during the run"] += 1
    n = max(result.messages, 1)
    elapsed = result.elapsed or float("nan")
    return Measurement(
        system=system, concurrency=concurrency, messages=result.messages,
        seconds=round(result.elapsed, 2), messages_per_s=result.messages / elapsed,
        p50_ms=_percentile(result.latencies, 0.5), p99_ms=_percentile(result.latencies, 0.99),
        server_cpu_ms=server_cpu / n * 1000, helper=helper[0] if helper[1] else "-",
        helper_cpu_ms=helper_cpu / n * 1000, total_cpu_ms=(server_cpu + helper_cpu) / n * 1000,
        server_cpu_percent=100 * server_cpu / elapsed,
        client_cpu_ms=result.client_cpu / n * 1000,
        client_cpu_percent=100 * result.client_cpu / elapsed,
        spam_percent=100 * result.spam / result.judged if result.judged else float("nan"),
        bayes_percent=100 * result.bayes / result.judged if result.judged else float("nan"),
        failures=dict(result.failures),
        notes=[", ".join(f"{d.name} {c / n * 1000:.2f} ms/msg ({100 * c / elapsed:.0f}% CPU)"
                         for d, c in zip(others, others_cpu))] if others else [])


class Bench:
    """Holds the corpus, options and the workspace; one method per system."""

    def __init__(self, args: argparse.Namespace, corpus_root: Path, samples: list[Sample],
                 workroot: Path, stack: Stack) -> None:
        self.args = args
        self.corpus_root = corpus_root
        self.samples = samples
        self.workroot = workroot
        self.stack = stack
        self.info: dict[str, object] = {}
        self._filterd_data: Path | None = None
        self._sa_bayes: Path | None = None

    def workdir(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workroot))
        path.chmod(0o755)
        return path

    def say(self, text: str) -> None:
        if self.args.verbose:
            print(text, file=sys.stderr, flush=True)

    def warm_up(self, make_client: Callable[[], Client]) -> None:
        """A few messages from the end of the order, so lazy loading is not measured."""
        run_load(make_client, self.samples, len(self.samples) - WARMUP_MESSAGES,
                 min(4, max(self.args.concurrency)), None, WARMUP_MESSAGES)

    def load(self, make_client: Callable[[], Client], concurrency: int,
             gate: Callable[[], Awaitable[None]] | None = None) -> LoadResult:
        return run_load(make_client, self.samples, 0, concurrency, self.args.seconds,
                        self.args.messages, gate)

    def filterd_data(self) -> Path:
        if self._filterd_data is None:
            self.say("filterd: learning Bayes on the corpus...")
            self._filterd_data = prepare_filterd_data(self.workdir("filterd-bayes"),
                                                      self.corpus_root)
        return self._filterd_data

    # -- filterd alone --------------------------------------------------------------

    def filterd(self) -> list[Measurement]:
        return self._filterd("filterd", self.args.rules_extra_directories)

    def filterd_sarules(self) -> list[Measurement]:
        """filterd with SpamAssassin's own rules added: the like-for-like against spamd."""
        return self._filterd("filterd-sarules", SA_RULES)

    def _filterd(self, system: str, extra_rules: str | None) -> list[Measurement]:
        workdir = self.workdir(system)
        data = self.filterd_data()
        clamd, clamav = start_clamd(self.stack, workdir)
        sink, sink_port = start_sink(self.stack, workdir)
        port = free_port()
        config = filterd_config(workdir, port, sink_port, data, clamav, self.args, extra_rules)
        stages, rules_note = filterd_stages(config)
        self.info[f"{system}_stages"] = stages
        self.info[f"{system}_rules"] = rules_note
        self.say(f"{system}: stages {stages}; {rules_note}")
        server = start_filterd(self.stack, workdir, config, port)
        log_path = workdir / f"filterd-{port}.log"
        client = lambda: SmtpClient(port)
        self.warm_up(client)
        self.info[f"{system}_settle_seconds"] = round(wait_idle([server]), 1)
        out = []
        for concurrency in self.args.concurrency:
            self.say(f"{system} x{concurrency}...")
            offset = log_path.stat().st_size if log_path.exists() else 0
            m = measure(system, concurrency, [server], ("clamd", [clamd]),
                        lambda c=concurrency: self.load(client, c), others=[sink])
            add_filterd_verdicts(m, log_path, offset)
            out.append(m)
        return out

    # -- SpamAssassin -----------------------------------------------------------------

    def sa_site(self, workdir: Path) -> tuple[Path, Path, dict[str, str]]:
        """SpamAssassin's site configuration (``site``: local tests only, Bayes on unless
        --no-sa-bayes, auto-learn off) and Bayes database (``bayes``) under ``workdir``, plus
        the environment to run SpamAssassin tools with. spamd and SpamAssassin inside
        amavisd-new both use it, so both score with the same rules and the same Bayes."""
        site, bayes = workdir / "site", workdir / "bayes"
        site.mkdir()
        use_bayes = not self.args.no_sa_bayes
        (site / "local.cf").write_text(
            f"use_bayes {int(use_bayes)}\nuse_bayes_rules {int(use_bayes)}\nbayes_auto_learn 0\n"
            f"bayes_path {bayes}/bayes\nbayes_file_mode 0777\n"
            "dns_available no\nskip_rbl_checks 1\nuse_razor2 0\nuse_pyzor 0\nuse_dcc 0\n"
            f"required_score {SA_REQUIRED_SCORE}\n")
        for pre in Path("/etc/spamassassin").glob("*.pre"):
            shutil.copy(pre, site / pre.name)
        env = {**os.environ, "HOME": str(workdir)}
        if use_bayes:
            shutil.copytree(self.sa_learned(site, env), bayes)
        else:
            bayes.mkdir()
        return site, bayes, env

    def sa_learned(self, site: Path, env: dict[str, str]) -> Path:
        """A Bayes database ``sa-learn`` trained on the whole corpus (about a minute), made
        once per bench run; each system copies it, so each daemon user owns its own copy."""
        if self._sa_bayes is None:
            self.say("sa-learn on the corpus (about a minute)...")
            bayes = self.workdir("sa-bayes")
            began = time.monotonic()
            for flag, folders in (("--spam", ["spam"]), ("--ham", ["ham", "hard_ham"])):
                subprocess.run([program("sa-learn"), "-L", "--siteconfigpath", str(site),
                                "--dbpath", str(bayes), "--no-sync", flag,
                                *(str(self.corpus_root / f) for f in folders)],
                               check=True, env=env, stdout=subprocess.DEVNULL)
            subprocess.run([program("sa-learn"), "--siteconfigpath", str(site), "--dbpath",
                            str(bayes), "--sync"], check=True, env=env, stdout=subprocess.DEVNULL)
            self.info["sa_learn_seconds"] = round(time.monotonic() - began, 1)
            self._sa_bayes = bayes
        return self._sa_bayes

    def spamd(self) -> list[Measurement]:
        workdir = self.workdir("spamd")
        site, bayes, env = self.sa_site(workdir)
        use_bayes = not self.args.no_sa_bayes
        self.info["spamd_bayes"] = "on (sa-learn on the whole corpus)" if use_bayes else "OFF (--no-sa-bayes)"
        children = max(self.args.concurrency)
        port = free_port()
        argv = [program("spamd"), "-L", "-x", "--siteconfigpath", str(site),
                "-i", f"127.0.0.1:{port}", "-A", "127.0.0.1", "-m", str(children),
                "--min-children", str(min(children, 2)), "-s", "stderr",
                "-r", str(workdir / "spamd.pid")]
        if os.geteuid() == 0:  # spamd as root drops to nobody, who must own the Bayes db
            argv += ["-u", "nobody", "-H", str(workdir)]
            chown_tree(bayes, "nobody")
        server = self.stack.daemon(Daemon("spamd", argv, workdir, env))
        wait_until(lambda: port_open(port), server, "listening")
        client = lambda: SpamdClient(port)
        self.warm_up(client)
        self.info["spamd_settle_seconds"] = round(wait_idle([server]), 1)
        out = []
        for concurrency in self.args.concurrency:
            self.say(f"spamd x{concurrency}...")
            out.append(measure("spamd", concurrency, [server], ("-", []),
                               lambda c=concurrency: self.load(client, c)))
        out[-1].notes.append(f"spamd max children {children}; Bayes {self.info['spamd_bayes']}")
        return out

    # -- rspamd -----------------------------------------------------------------------

    def rspamd(self) -> list[Measurement]:
        workdir = self.workdir("rspamd")
        redis_port = free_port()
        redis = self.stack.daemon(Daemon("redis", [
            program("redis-server"), "--port", str(redis_port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(workdir)], workdir))
        wait_until(lambda: port_open(redis_port), redis, "listening")
        normal, controller, proxy = free_port(), free_port(), free_port()
        etc = workdir / "etc"
        local, override = etc / "local.d", etc / "override.d"
        for d in (local, override, workdir / "run", workdir / "db", workdir / "log"):
            d.mkdir(parents=True)
        log_file = workdir / "log" / "rspamd.log"
        files = {
            override / "worker-normal.inc": f'bind_socket = "127.0.0.1:{normal}";\n'
                                            f"count = {self.args.workers};\n",
            override / "worker-controller.inc": f'bind_socket = "127.0.0.1:{controller}";\ncount = 1;\n',
            override / "worker-proxy.inc": f'bind_socket = "127.0.0.1:{proxy}";\ncount = -1;\n',
            override / "logging.inc": f'type = "file";\nfilename = "{log_file}";\nlevel = "info";\n',
            # DNS to a closed local port: nothing leaves the machine, failures are immediate
            local / "options.inc": 'dns { nameserver = ["127.0.0.1:9"]; timeout = 0.2s; retransmits = 1; }\n',
            local / "phishing.conf": "phishtank_enabled = false;\nopenphish_enabled = false;\n",
            local / "hfilter.conf": "helo_enabled = false;\nhostname_enabled = false;\nfrom_enabled = false;\n",
            # old corpus mail: every message is "in the past"
            local / "headers_group.conf": 'symbols { "DATE_IN_PAST" { weight = 0.0; } }\n',
            local / "classifier-bayes.conf": f'servers = "127.0.0.1:{redis_port}";\n'
                                             'backend = "redis";\nmin_learns = 200;\n',
        }
        for module in RSPAMD_OFF:
            files[local / f"{module}.conf"] = "enabled = false;\n"
        for path, text in files.items():
            path.write_text(text)
        chown_tree(workdir, "_rspamd")
        argv = [program("rspamd"), "-f", "-c", "/etc/rspamd/rspamd.conf",
                f"--var=LOCAL_CONFDIR={etc}", f"--var=RUNDIR={workdir / 'run'}",
                f"--var=DBDIR={workdir / 'db'}", f"--var=LOGDIR={workdir / 'log'}"]
        if os.geteuid() == 0:
            argv += ["-u", "_rspamd", "-g", "_rspamd"]
        server = self.stack.daemon(Daemon("rspamd", argv, workdir))
        wait_until(lambda: port_open(normal) and port_open(controller), server, "listening")

        def hyperscan_loaded() -> bool:
            try:
                text = log_file.read_text(errors="replace")
            except OSError:
                return False
            loaded = [line for line in text.splitlines()
                      if "(normal)" in line and "full hyperscan database" in line]
            return len(loaded) >= self.args.workers

        try:
            wait_until(hyperscan_loaded, server, "hyperscan database loaded", timeout=180)
            self.info["rspamd_hyperscan"] = "loaded"
        except RuntimeError as error:
            self.info["rspamd_hyperscan"] = f"not confirmed: {error}"[:300]
        self.say("rspamd: learning Bayes on the corpus...")
        learned = self.rspamd_learn(controller)
        self.info["rspamd_bayes"] = f"learned {learned}"
        client = lambda: RspamdClient(normal)
        self.warm_up(client)
        self.info["rspamd_settle_seconds"] = round(wait_idle([server, redis]), 1)
        out = []
        for concurrency in self.args.concurrency:
            self.say(f"rspamd x{concurrency}...")
            out.append(measure("rspamd", concurrency, [server], ("redis", [redis]),
                               lambda c=concurrency: self.load(client, c)))
        out[-1].notes.append(f"rspamd normal workers {self.args.workers}; Bayes {self.info['rspamd_bayes']}")
        return out

    def rspamd_learn(self, controller: int) -> dict[str, int]:
        """Every corpus message through the controller's /learnspam or /learnham, with
        ``Learn-Type: bulk`` so messages rspamd already rates as certain are learned too."""
        outcomes: Counter[str] = Counter()

        async def learn_all() -> None:
            queue = list(self.samples)

            async def one_session() -> None:
                while queue:
                    sample = queue.pop()
                    kind = "spam" if sample.category == "spam" else "ham"
                    client = RspamdClient(controller, f"/learn{kind}", {"Learn-Type": "bulk"})
                    try:
                        status, _ = await client.post(sample)
                        outcomes[f"{kind} {'ok' if status == 200 else status}"] += 1
                    except (OSError, TimeoutError, ConnectionError) as error:
                        outcomes[f"{kind} {type(error).__name__}"] += 1

            await asyncio.gather(*(one_session() for _ in range(4)))

        asyncio.run(learn_all())
        return dict(outcomes)

    # -- end to end through Postfix ----------------------------------------------------

    def postfix(self) -> list[Measurement]:
        from tests.fixtures.postfix import PostfixInstance, postfix_unavailable_reason

        reason = postfix_unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        workdir = self.workdir("postfix-e2e")
        data = self.filterd_data()
        clamd, clamav = start_clamd(self.stack, workdir)
        out = []
        for concurrency in self.args.concurrency:
            self.say(f"postfix -> filterd x{concurrency}...")
            out.append(self._postfix_run(PostfixInstance, workdir, data, clamd, clamav, concurrency))
        return out

    def _postfix_run(self, instance_class: type[PostfixInstance], workdir: Path, data: Path, clamd: Daemon,
                     clamav: str, concurrency: int) -> Measurement:
        filter_port, reinject_port = free_port(), free_port()
        root = Path(tempfile.mkdtemp(prefix=f"pf-{concurrency}-", dir=self.workroot))
        # amavisd-new's README.postfix wiring: address mappings are applied once, by the
        # reinjection pass
        master_extra = content_filter_master_cf(concurrency, reinject_port)
        instance = instance_class(root, {
            "content_filter": f"smtp-amavis:[127.0.0.1]:{filter_port}",
            "receive_override_options": "no_address_mappings",
        }, master_extra)
        instance.sink = quiet_sink(instance.sink)
        self.stack.push(lambda: shutil.rmtree(root, ignore_errors=True))
        self.stack.push(instance.stop)
        config = filterd_config(workdir, filter_port, reinject_port, data, clamav, self.args)
        server = start_filterd(self.stack, workdir, config, filter_port)
        instance.start()
        postfix = PostfixProcesses(instance)
        sink_re = re.compile(rf"relay=[^ ]*:{instance.sink.port}, .*status=sent")
        filter_re = re.compile(rf"relay=[^ ]*:{filter_port}, .*status=(\w+)")
        counter = LogCounter(instance.maillog, {"delivered": sink_re, "filter": filter_re})
        backlog = 4 * concurrency + 8

        async def gate() -> None:
            """Keep a bounded backlog so filterd always has work but the queue stays small."""
            while submitted_counter[0] - counter.poll()["delivered"] >= backlog:
                await asyncio.sleep(0.02)
            submitted_counter[0] += 1

        submitted_counter = [counter.poll()["delivered"]]
        client = lambda: SmtpClient(instance.smtp_port)
        self.warm_up(client)
        wait_for(lambda: counter.poll()["delivered"] >= WARMUP_MESSAGES, 120)
        submitted_counter[0] = counter.poll()["delivered"]
        delivered_before = counter.poll()["delivered"]
        began = time.perf_counter()
        state: dict[str, float] = {}

        def run() -> LoadResult:
            result = self.load(client, concurrency, gate)
            # count deliveries over the same wall time as submissions ran
            state["delivered"] = counter.poll()["delivered"] - delivered_before
            state["elapsed"] = time.perf_counter() - began
            result.messages, result.elapsed = int(state["delivered"]), state["elapsed"]
            result.latencies = []
            return result

        log_path = workdir / f"filterd-{filter_port}.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        m = measure("postfix+filterd", concurrency, [server], ("clamd", [clamd]), run,
                    others=[postfix])
        # drain what is still queued, so nothing is silently lost
        wait_for(lambda: counter.poll()["delivered"] >= submitted_counter[0], 120)
        counts = counter.poll()
        add_filterd_verdicts(m, log_path, offset)
        m.notes.append(f"submitted {submitted_counter[0]} (warm-up included), delivered "
                       f"{counts['delivered']}; Postfix -> filterd deliveries "
                       f"{dict(counter.statuses)}; smtp-amavis maxproc {concurrency}")
        instance.stop()
        server.stop()
        return m

    # -- amavisd-new end to end through Postfix ----------------------------------------

    def amavisd(self) -> list[Measurement]:
        """The issue's reference peer, measured exactly like the ``postfix`` system: the same
        private Postfix, with amavisd-new as its content filter (SpamAssassin with the
        spamd system's site configuration and Bayes, ClamAV through the bench's clamd)."""
        from tests.fixtures.postfix import PostfixInstance, postfix_unavailable_reason

        reason = postfix_unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        if shutil.which("amavisd", path=SBIN_PATH) is None:
            raise RuntimeError("amavisd is not installed (Debian package amavisd-new)")
        try:
            pwd.getpwnam(AMAVIS_USER)
        except KeyError:
            raise RuntimeError(f"user {AMAVIS_USER} is missing (amavisd-new creates it)") from None
        workdir = self.workdir("amavisd-e2e")
        site, bayes, _ = self.sa_site(workdir)
        chown_tree(bayes, AMAVIS_USER)
        clamd, clamav = start_clamd(self.stack, workdir)
        # amavisd's children (user amavis) must be able to connect to root's clamd socket
        Path(clamav.removeprefix("unix:")).chmod(0o666)
        self.info["amavisd_bayes"] = ("on (sa-learn on the whole corpus)" if not self.args.no_sa_bayes
                                      else "OFF (--no-sa-bayes)")
        out = []
        for concurrency in self.args.concurrency:
            self.say(f"postfix -> amavisd x{concurrency}...")
            out.append(self._amavisd_run(PostfixInstance, workdir, site, clamd, clamav, concurrency))
        return out

    def _amavisd_run(self, instance_class: type[PostfixInstance], workdir: Path, site: Path,
                     clamd: Daemon, clamav: str, concurrency: int) -> Measurement:
        """One measurement with a fresh Postfix and a fresh amavisd (whose result cache must
        not carry messages over from the previous concurrency). amavisd runs $max_servers
        = --workers children and the smtp-amavis transport never opens more connections
        than that (README.postfix: maxproc should not exceed amavisd's children)."""
        filter_port, reinject_port = free_port(), free_port()
        maxproc = min(concurrency, self.args.workers)
        root = Path(tempfile.mkdtemp(prefix=f"pf-amavisd-{concurrency}-", dir=self.workroot))
        instance = instance_class(root, {
            "content_filter": f"smtp-amavis:[127.0.0.1]:{filter_port}",
            "receive_override_options": "no_address_mappings",
        }, content_filter_master_cf(maxproc, reinject_port))
        instance.sink = quiet_sink(instance.sink)
        self.stack.push(lambda: shutil.rmtree(root, ignore_errors=True))
        self.stack.push(instance.stop)
        server = start_amavisd(self.stack, workdir, f"{concurrency}", filter_port, reinject_port,
                               clamav, site, self.args.workers)
        instance.start()
        postfix = PostfixProcesses(instance)
        counter = LogCounter(instance.maillog, {
            "delivered": re.compile(rf"relay=[^ ]*:{instance.sink.port}, .*status=sent"),
            "filter": re.compile(rf"relay=[^ ]*:{filter_port}, .*status=(\w+)")})
        # amavisd discards blocked mail (viruses, banned names): those never reach the sink
        blocked = LogCounter(server.log_path, {"blocked": re.compile(r"\) Blocked ")})
        backlog = 4 * concurrency + 8

        def done() -> int:
            return counter.poll()["delivered"] + blocked.poll()["blocked"]

        async def gate() -> None:
            """Keep a bounded backlog so amavisd always has work but the queue stays small."""
            while submitted[0] - done() >= backlog:
                await asyncio.sleep(0.02)
            submitted[0] += 1

        client = lambda: SmtpClient(instance.smtp_port)
        self.warm_up(client)
        wait_for(lambda: done() >= WARMUP_MESSAGES, 300)
        submitted = [done()]
        delivered_before = counter.poll()["delivered"]
        offset = server.log_path.stat().st_size
        began = time.perf_counter()

        def run() -> LoadResult:
            result = self.load(client, concurrency, gate)
            # count deliveries over the same wall time as submissions ran
            result.messages = counter.poll()["delivered"] - delivered_before
            result.elapsed = time.perf_counter() - began
            result.latencies = []
            return result

        m = measure("postfix+amavisd", concurrency, [server], ("clamd", [clamd]), run,
                    others=[postfix])
        # drain what is still queued, so nothing is silently lost
        wait_for(lambda: done() >= submitted[0], 300)
        judged, spam, bayes, statuses, _ = filterd_log_verdicts(server.log_path, offset)
        if judged:
            m.spam_percent, m.bayes_percent = 100 * spam / judged, 100 * bayes / judged
        m.notes.append(f"amavisd verdicts {dict(statuses)}")
        m.notes.append(f"submitted {submitted[0]} (warm-up included), delivered "
                       f"{counter.poll()['delivered']}, blocked by amavisd "
                       f"{blocked.poll()['blocked']}; Postfix -> amavisd deliveries "
                       f"{dict(counter.statuses)}; amavisd $max_servers {self.args.workers}, "
                       f"smtp-amavis maxproc {maxproc}")
        instance.stop()
        server.stop()
        return m


def quiet_sink(sink: SmtpSink) -> SmtpSink:
    """The fixture's smtp-sink on the same port, without per-message dump files (their disk
    writes would be measured as Postfix's cost) and in its own session (Ctrl-C)."""
    from tests.fixtures.postfix import START_TIMEOUT as SINK_TIMEOUT
    from tests.fixtures.postfix import SmtpSink, wait_for_port

    class QuietSink(SmtpSink):
        def start(self) -> None:
            argv = [self.binary] + (["-u", "nobody"] if os.geteuid() == 0 else [])
            self._process = subprocess.Popen(
                argv + ["-4", f"127.0.0.1:{self.port}", "256"], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            if not wait_for_port(self.port, SINK_TIMEOUT):
                self.stop()
                raise RuntimeError(f"smtp-sink did not start on 127.0.0.1:{self.port}")

    return QuietSink(sink.binary, sink.dump_dir, sink.port)


class PostfixProcesses(Daemon):
    """A Postfix instance seen as one server: its master's process tree (running daemons,
    and exited ones through the master's cutime/cstime). Started and stopped by
    PostfixInstance, not by this object."""

    def __init__(self, instance: PostfixInstance) -> None:
        super().__init__("postfix", [], instance.root)
        pid = instance._master_pid()
        if pid is None:
            raise RuntimeError("postfix master pid not found")
        self.pid = pid

    def cpu(self) -> float:
        return process_tree_cpu(self.pid)

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> None:
        """PostfixInstance.stop() stops the instance."""


class LogCounter:
    """Counts matching lines of a growing log file, reading only what was appended."""

    def __init__(self, path: Path, patterns: dict[str, re.Pattern[str]]) -> None:
        self.path = path
        self.patterns = patterns
        self.counts = {name: 0 for name in patterns}
        self.statuses: Counter[str] = Counter()
        self.offset = 0
        self.partial = b""

    def poll(self) -> dict[str, int]:
        try:
            with open(self.path, "rb") as log:
                log.seek(self.offset)
                chunk = log.read()
        except OSError:
            return self.counts
        self.offset += len(chunk)
        data = self.partial + chunk
        lines = data.split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            text = line.decode("utf-8", "replace")
            for name, pattern in self.patterns.items():
                match = pattern.search(text)
                if match:
                    self.counts[name] += 1
                    if match.groups():
                        self.statuses[match.group(1)] += 1
        return self.counts


def wait_for(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


# -- report -----------------------------------------------------------------------------

COLUMNS = (("system", "system", "{:<15}"), ("concurrency", "conc", "{:>4}"),
           ("messages", "msgs", "{:>6}"), ("messages_per_s", "msgs/s", "{:>7.1f}"),
           ("p50_ms", "p50 ms", "{:>7.1f}"), ("p99_ms", "p99 ms", "{:>7.1f}"),
           ("server_cpu_ms", "srv CPU ms/msg", "{:>14.2f}"), ("helper", "helper", "{:>13}"),
           ("helper_cpu_ms", "hlp ms/msg", "{:>10.2f}"), ("total_cpu_ms", "total ms/msg", "{:>12.2f}"),
           ("server_cpu_percent", "srv CPU%", "{:>8.0f}"),
           ("client_cpu_ms", "cli ms/msg", "{:>10.2f}"), ("client_cpu_percent", "cli CPU%", "{:>8.0f}"),
           ("spam_percent", "spam%", "{:>6.1f}"), ("bayes_percent", "bayes%", "{:>6.1f}"))


def _pad(title: str, fmt: str) -> str:
    spec = fmt[fmt.index(":") + 1:-1]
    width = int(spec[1:].split(".")[0].rstrip("fd"))
    return f"{title:<{width}}" if spec[0] == "<" else f"{title:>{width}}"


def format_table(measurements: list[Measurement]) -> str:
    header = "  ".join(_pad(title, fmt) for _, title, fmt in COLUMNS)
    lines = [header, "-" * len(header)]
    for m in measurements:
        lines.append("  ".join(fmt.format(getattr(m, key)) for key, _, fmt in COLUMNS))
        for detail, count in m.failures.items():
            lines.append(f"    ! {count} x {detail}")
        for note in m.notes:
            lines.append(f"    . {note}")
    return "\n".join(lines)


def ratios(measurements: list[Measurement]) -> list[dict[str, object]]:
    """filterd against each peer at each concurrency: msgs/s (>1: filterd faster) and CPU
    per message (<1: filterd cheaper), filterd alone and filterd with clamd."""
    by_key = {(m.system, m.concurrency): m for m in measurements}
    rows = []
    for (system, concurrency), ours in by_key.items():
        if system == "postfix+filterd":
            peers: tuple[str, ...] = ("postfix+amavisd",)  # both end to end through Postfix
        elif system.startswith("filterd"):
            peers = ("spamd", "rspamd")
        else:
            continue
        for peer in peers:
            theirs = by_key.get((peer, concurrency))
            if theirs is None:
                continue
            rows.append({
                "system": system, "peer": peer, "concurrency": concurrency,
                "messages_per_s": _ratio(ours.messages_per_s, theirs.messages_per_s),
                "cpu_filterd_only": _ratio(ours.server_cpu_ms, theirs.total_cpu_ms),
                "cpu_filterd_with_clamd": _ratio(ours.total_cpu_ms, theirs.total_cpu_ms),
            })
    return rows


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def format_ratios(rows: list[dict[str, object]]) -> str:
    if not rows:
        return "ratios: need filterd and a peer measured at the same concurrency"
    lines = [("ratio                     conc   msgs/s (>1 better)   CPU/msg filterd only   "
              "CPU/msg filterd+clamd (<1 better)")]
    for row in rows:
        name = f"{row['system']}/{row['peer']}"
        lines.append(f"{name:<25} {row['concurrency']:>4}   {row['messages_per_s']:>18}   "
                     f"{row['cpu_filterd_only']:>20}   {row['cpu_filterd_with_clamd']:>20}")
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------

SYSTEMS = ("filterd", "filterd-sarules", "spamd", "rspamd", "postfix", "amavisd")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="duration of each measurement (default 20)")
    parser.add_argument("--messages", type=int, default=None,
                        help="fixed number of messages per measurement instead of --seconds")
    parser.add_argument("--only", action="append", choices=SYSTEMS,
                        help="system(s) to measure; repeatable (default: all)")
    parser.add_argument("--concurrency", type=int, action="append",
                        help="concurrent sessions; repeatable (default: 1 and 8)")
    parser.add_argument("--workers", type=int, default=2,
                        help="filterd worker_processes, rspamd normal workers and amavisd "
                             "$max_servers (default 2)")
    parser.add_argument("--corpus", type=Path,
                        default=Path(os.environ.get("FILTERD_CORPUS", REPO.parent / "shared" / "corpus")),
                        help="corpus root holding spamassassin/{ham,hard_ham,spam} "
                             "(default $FILTERD_CORPUS or ../shared/corpus)")
    parser.add_argument("--rules-directory", default=None,
                        help="filterd rules_directory (default: filterd's own default)")
    parser.add_argument("--rules-extra-directories", default=None, metavar="DIRS",
                        help="filterd rules_extra_directories for the filterd system (default: "
                             "filterd's own default, SpamAssassin's rules where installed; "
                             "'' measures filterd without them)")
    parser.add_argument("--no-sa-bayes", action="store_true",
                        help="skip sa-learn (about a minute) and run SpamAssassin without Bayes")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    args = parser.parse_args(argv)
    if args.messages is not None:
        args.seconds = None
    args.concurrency = args.concurrency or [1, 8]
    if min(args.concurrency) < 1 or (args.messages is not None and args.messages < 1):
        parser.error("--concurrency and --messages must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    corpus_root = (args.corpus / "spamassassin").resolve()
    try:
        samples = load_corpus(corpus_root)
    except (OSError, RuntimeError) as error:
        print(f"cannot read the corpus: {error}", file=sys.stderr)
        return 2
    systems = args.only or list(SYSTEMS)
    measurements: list[Measurement] = []
    failures: dict[str, str] = {}
    load_before = os.getloadavg()
    workroot = Path(tempfile.mkdtemp(prefix="content-bench-"))
    workroot.chmod(0o755)
    stack = Stack()
    bench = Bench(args, corpus_root, samples, workroot, stack)
    try:
        for name in systems:
            try:
                measurements += getattr(bench, name.replace("-", "_"))()
            except (RuntimeError, OSError, subprocess.CalledProcessError) as error:
                failures[name] = str(error)
            finally:
                stack.close()
    finally:
        stack.close()
        shutil.rmtree(workroot, ignore_errors=True)
    rows = ratios(measurements)
    settings = {"seconds": args.seconds, "messages": args.messages, "workers": args.workers,
                "concurrency": args.concurrency, "corpus": str(corpus_root),
                "corpus_messages": len(samples),
                "corpus_mix": dict(Counter(s.category for s in samples)),
                "cpus": os.cpu_count(), "loadavg_before": load_before,
                "loadavg_after": os.getloadavg(), **bench.info}
    if args.json:
        print(json.dumps({"measurements": [asdict(m) for m in measurements], "ratios": rows,
                          "failures": failures, "settings": settings}, indent=2, default=str))
    else:
        print(format_table(measurements))
        for name, error in failures.items():
            print(f"{name}: not measured: {error.strip()}")
        print()
        print(format_ratios(rows))
        print()
        for key, value in settings.items():
            print(f"{key}: {value}")
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # servers are already stopped by main's finally blocks
        print("interrupted", file=sys.stderr)
        sys.exit(130)
