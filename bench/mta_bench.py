#!/usr/bin/env python3
"""The gateway MTA against Postfix, in one run: accepting mail, and delivering a full queue.

Every MTA relays to its own Postfix ``smtp-sink`` (which keeps nothing), is fed by
Postfix's ``smtp-source``, and its deliveries are counted in its own log
(``status=sent`` lines with the sink as relay):

  postfix          a private Postfix 3.7 instance (tests/fixtures/postfix.py): smtpd,
                   cleanup, qmgr, smtp; queue on disk with Postfix's own fsync
  filterd          ``filterd serve`` with only ``smtpd_listen`` on: smtpd writes and
                   fsyncs each message (file and directory) before its 250, the queue
                   manager in worker 0 relays it; no content checks
  filterd-content  the same with the content pipeline before the queue (the embedded
                   default rules, SpamAssassin's among them when installed; no clamd)

Accepting: ``smtp-source -s SESSIONS -m MESSAGES -l SIZE`` into each MTA for every size
(``--size``, default 4096 and 65536) and session count (``--sessions``, default 1 and
10). Reported: messages accepted per second (smtp-source's wall time, which ends with the
last 250), the MTA's CPU per message (its whole process tree), the seconds until the
log showed them all delivered, and the ratio to Postfix.

Delivering a full queue (``--queue N``, default 1000; 0 skips it): each MTA with
``defer_transports = smtp`` takes N 4 KB messages and keeps them; then its flush
(``postqueue -f`` / ``filterd queue flush``) sends them, and the time until all N are
delivered gives messages delivered per second.

Every MTA is started first and the cells are measured in turns (``--rounds``, default 3:
each cell runs once per MTA per round, the MTAs one after the other): on a machine
shared with other work the load changes from minute to minute, and the ratio to Postfix
is then taken per round, between measurements seconds apart, and its median reported
with the median msgs/s and CPU.

Usage: python bench/mta_bench.py [--messages M] [--size B ...] [--sessions S ...]
       [--queue N] [--only postfix|filterd|filterd-content ...] [--workers W] [--rounds R]
       [--json]
       (as root: Postfix instances need it)
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from content_bench import (  # noqa: E402 - after the path set-up
    Daemon, LogCounter, PostfixProcesses, Stack, port_open, program, wait_until,
)
from policy_bench import descendants, exit_on_sigterm, free_port  # noqa: E402

SENDER = "sender@bench-sender.example"
RECIPIENT = "rcpt@bench-dest.example"
SYSTEMS = ("postfix", "filterd", "filterd-content")
DRAIN_TIMEOUT = 600.0


class Sink(Daemon):
    """``smtp-sink``: answers 250 to everything and keeps nothing (its ``-c`` counter is
    written through a buffer, so deliveries are counted in the MTA's log instead)."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.port = free_port()
        argv = [program("smtp-sink")] + (["-u", "nobody"] if os.geteuid() == 0 else [])
        super().__init__(name, argv + ["-4", f"127.0.0.1:{self.port}", "256"], workdir)

    def start(self) -> Sink:
        super().start()
        wait_until(lambda: port_open(self.port), self, "listening")
        return self


SENT = re.compile(r"\]: [0-9A-F]+: to=<[^>]*>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*status=sent ")


def process_tree_rss(root_pid: int) -> dict[int, int]:
    """Resident memory in KB of a process and each of its descendants, by pid."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(b")", 1)[1].split()[1])
            except OSError:
                continue
    rss = {}
    for pid in descendants(root_pid, parents):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        if m:
            rss[pid] = int(m.group(1))
    return rss


class Mta(ABC):
    """One MTA under test: where it listens, its processes, how to flush its queue."""

    name: str
    port: int
    server: Daemon
    sent: LogCounter
    """Counts the MTA's ``status=sent`` lines for the sink."""

    def delivered(self) -> int:
        return self.sent.poll()["sent"]

    @abstractmethod
    def pid(self) -> int:
        """The root of the MTA's process tree."""

    @abstractmethod
    def flush(self) -> None:
        """Deliver the deferred queue now (defer_transports yield to it)."""

    @abstractmethod
    def queued(self) -> int:
        """Messages in the queue, not yet delivered."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the MTA."""


def _count_files(queue_dir: Path, names: tuple[str, ...]) -> int:
    total = 0
    for name in names:
        for _, _, files in os.walk(queue_dir / name):
            total += sum(1 for f in files if not f.startswith("."))
    return total


class PostfixMta(Mta):
    def __init__(self, workdir: Path, sink: Sink, defer: bool) -> None:
        from tests.fixtures.postfix import PostfixInstance

        self.name = "postfix"
        root = workdir / f"postfix{'-defer' if defer else ''}"
        root.mkdir()
        extra = {"default_process_limit": "100", "smtpd_client_connection_count_limit": "0"}
        if defer:
            extra["defer_transports"] = "smtp"
        self.instance = PostfixInstance(root, extra, "")
        # The instance's own sink dumps every message to a file: the quiet one replaces it.
        self.instance.sink.port = sink.port
        self.instance.main_cf["relayhost"] = f"[127.0.0.1]:{sink.port}"
        self.instance.sink.start = lambda: None  # type: ignore[method-assign]
        self.instance.sink.stop = lambda: None  # type: ignore[method-assign]
        self.instance.start()
        self.port = self.instance.smtp_port
        self.server = PostfixProcesses(self.instance)
        self.sent = LogCounter(self.instance.maillog, {"sent": SENT})

    def pid(self) -> int:
        return self.server.pid

    def flush(self) -> None:
        subprocess.run([self.instance.postqueue, "-c", str(self.instance.config_dir), "-f"], check=True)

    def queued(self) -> int:
        return _count_files(self.instance.queue_dir, ("incoming", "active", "deferred"))

    def stop(self) -> None:
        self.instance.stop()


class FilterdMta(Mta):
    def __init__(self, workdir: Path, sink: Sink, content: bool, defer: bool, workers: int) -> None:
        self.name = "filterd-content" if content else "filterd"
        home = workdir / f"{self.name}{'-defer' if defer else ''}"
        home.mkdir()
        self.port = free_port()
        self.queue_dir = home / "data" / "queue"
        self.config = home / "filterd.cf"
        lines = [
            f"data_directory = {home / 'data'}",
            f"maillog_file = {home / 'maillog'}",
            "policy_listen =", "filter_listen =", "milter_listen =",
            f"smtpd_listen = inet:127.0.0.1:{self.port}",
            f"worker_processes = {workers}",
            f"relayhost = [127.0.0.1]:{sink.port}",
            "mynetworks = 127.0.0.0/8",
            "inet_protocols = ipv4",
            "myhostname = filterd-bench.example",
            "smtpd_client_connection_count_limit = 0",
            "clamav_socket =",
        ]
        if not content:
            lines.append(CONTENT_OFF)
        if defer:
            lines.append("defer_transports = smtp")
        self.config.write_text("\n".join(lines) + "\n")
        self.sent = LogCounter(home / "maillog", {"sent": SENT})
        self.server = Daemon(self.name, [sys.executable, "-m", "filterd", "serve", "--config", str(self.config)],
                             home).start()
        wait_until(lambda: port_open(self.port), self.server, "listening", timeout=300.0)

    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    def flush(self) -> None:
        subprocess.run([sys.executable, "-m", "filterd", "queue", "flush", "--config", str(self.config)],
                       check=True, capture_output=True)

    def queued(self) -> int:
        return _count_files(self.queue_dir, ("incoming", "active", "deferred"))

    def stop(self) -> None:
        self.server.stop()


CONTENT_OFF = "smtpd_content_filter = no"
"""The line that turns the content pipeline off in front of the queue."""


@dataclass
class Accepting:
    system: str
    size: int
    sessions: int
    messages: int
    accepted_per_s: float
    cpu_ms_per_msg: float
    all_delivered_s: float
    ratio_to_postfix: float | None = None
    rounds: int = 1


def combine(runs: list[Accepting]) -> Accepting:
    """One cell's rounds as one row: the median of each figure."""
    first = runs[0]
    return Accepting(first.system, first.size, first.sessions, first.messages,
                     statistics.median(r.accepted_per_s for r in runs),
                     statistics.median(r.cpu_ms_per_msg for r in runs),
                     statistics.median(r.all_delivered_s for r in runs), None, len(runs))


def ratios(runs: dict[str, list[Accepting]]) -> dict[str, float]:
    """Each system's median ratio to Postfix, taken round by round (the two measured
    seconds apart, under the same load)."""
    base = runs.get("postfix")
    if not base:
        return {}
    return {system: statistics.median(r.accepted_per_s / b.accepted_per_s for r, b in zip(rows, base))
            for system, rows in runs.items()}


@dataclass
class Delivering:
    system: str
    messages: int
    delivered_per_s: float
    rss_total_mb: float
    """Resident memory of the MTA's whole process tree with the queue full."""
    rss_largest_mb: float
    """Of its largest process."""
    rss_processes_mb: list[float]
    """Of each of its processes, largest first (filterd: the master, the workers and the
    queue manager's process; Postfix: master, qmgr, smtpd, cleanup, smtp...)."""
    ratio_to_postfix: float | None = None


def smtp_source(port: int, messages: int, size: int, sessions: int) -> float:
    """Send with smtp-source; the wall time, which ends with the last reply."""
    started = time.monotonic()
    subprocess.run([program("smtp-source"), "-s", str(sessions), "-m", str(messages), "-l", str(size),
                    "-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{port}"],
                   check=True, stdout=subprocess.DEVNULL, timeout=DRAIN_TIMEOUT)
    return time.monotonic() - started


def wait_count(target: int, mta: Mta) -> float:
    started = time.monotonic()
    while mta.delivered() < target:
        if not mta.server.alive():
            raise RuntimeError(f"{mta.name} exited: {mta.server.tail()}")
        if time.monotonic() - started > DRAIN_TIMEOUT:
            raise RuntimeError(f"{mta.name}: {mta.delivered()} of {target} delivered")
        time.sleep(0.02)
    return time.monotonic() - started


def accepting(mta: Mta, size: int, sessions: int, messages: int) -> Accepting:
    warm = max(10, messages // 20)
    before = mta.delivered()
    smtp_source(mta.port, warm, size, sessions)
    wait_count(before + warm, mta)
    before, cpu = mta.delivered(), mta.server.cpu()
    started = time.monotonic()
    wall = smtp_source(mta.port, messages, size, sessions)
    wait_count(before + messages, mta)
    done = time.monotonic() - started
    return Accepting(mta.name, size, sessions, messages, messages / wall,
                     (mta.server.cpu() - cpu) * 1000 / messages, done)


def delivering(mta: Mta, messages: int) -> Delivering:
    smtp_source(mta.port, messages, 4096, 10)
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while mta.queued() < messages:  # every message received and kept back
        if time.monotonic() > deadline:
            raise RuntimeError(f"{mta.name}: {mta.queued()} of {messages} queued")
        time.sleep(0.1)
    time.sleep(1.0)
    rss = process_tree_rss(mta.pid())
    before = mta.delivered()
    started = time.monotonic()
    mta.flush()
    wait_count(before + messages, mta)
    return Delivering(mta.name, messages, messages / (time.monotonic() - started),
                      sum(rss.values()) / 1024, max(rss.values(), default=0) / 1024,
                      sorted((round(kb / 1024, 1) for kb in rss.values()), reverse=True))


def report(acc: list[Accepting], dlv: list[Delivering]) -> str:
    out = [f"{'system':16} {'size':>6} {'sess':>4} {'msgs/s':>8} {'CPU ms/msg':>10} {'all sent s':>13} "
           f"{'x postfix':>9}"]
    for r in acc:
        ratio = f"{r.ratio_to_postfix:.2f}" if r.ratio_to_postfix is not None else "-"
        out.append(f"{r.system:16} {r.size:>6} {r.sessions:>4} {r.accepted_per_s:>8.1f} "
                   f"{r.cpu_ms_per_msg:>10.2f} {r.all_delivered_s:>13.1f} {ratio:>9}")
    if dlv:
        out.append("")
        out.append(f"{'delivering a full queue':24} {'msgs':>6} {'msgs/s':>8} {'x postfix':>9} "
                   f"{'RSS MB all/largest, queue full':>31}")
        for d in dlv:
            ratio = f"{d.ratio_to_postfix:.2f}" if d.ratio_to_postfix is not None else "-"
            out.append(f"{d.system:24} {d.messages:>6} {d.delivered_per_s:>8.1f} {ratio:>9} "
                       f"{d.rss_total_mb:>22.1f} / {d.rss_largest_mb:.1f}")
            out.append(f"{'':24} each process, MB: {' '.join(f'{mb:g}' for mb in d.rss_processes_mb)}")
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=500, help="messages per measurement")
    parser.add_argument("--size", type=int, action="append", help="message size (repeatable)")
    parser.add_argument("--sessions", type=int, action="append", help="parallel sessions (repeatable)")
    parser.add_argument("--queue", type=int, default=1000, help="messages for the full-queue delivery; 0 = skip")
    parser.add_argument("--only", action="append", choices=SYSTEMS, help="systems to measure (repeatable)")
    parser.add_argument("--workers", type=int, default=2, help="filterd worker_processes")
    parser.add_argument("--rounds", type=int, default=3, help="turns per cell (medians are reported)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.size = args.size or [4096, 65536]
    args.sessions = args.sessions or [1, 10]
    args.only = args.only or list(SYSTEMS)
    return args


def start(name: str, workdir: Path, sink: Sink, defer: bool, workers: int) -> Mta:
    if name == "postfix":
        return PostfixMta(workdir, sink, defer)
    return FilterdMta(workdir, sink, name == "filterd-content", defer, workers)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    workroot = Path(tempfile.mkdtemp(prefix="mta-bench-"))
    workroot.chmod(0o755)
    stack = Stack()
    stack.push(lambda: shutil.rmtree(workroot, ignore_errors=True))
    acc: list[Accepting] = []
    dlv: list[Delivering] = []
    try:
        sinks: dict[str, Sink] = {}
        mtas: list[Mta] = []
        for name in args.only:
            sinks[name] = sink = Sink(workroot, f"sink-{name}")
            stack.daemon(sink)  # starts it
            print(f"{name}: starting...", file=sys.stderr, flush=True)
            mta = start(name, workroot, sink, False, args.workers)
            stack.push(mta.stop)
            mtas.append(mta)
        for mta in mtas:  # each ready (filterd-content builds its rules at start) before any is measured
            accepting(mta, 4096, 1, 10)
        for size in args.size:
            for sessions in args.sessions:
                runs: dict[str, list[Accepting]] = {mta.name: [] for mta in mtas}
                for turn in range(args.rounds):
                    for mta in mtas:
                        print(f"{mta.name}: {size} bytes x{sessions} sessions, round {turn + 1}...",
                              file=sys.stderr, flush=True)
                        runs[mta.name].append(accepting(mta, size, sessions, args.messages))
                cell_ratios = ratios(runs)
                for name, rows in runs.items():
                    row = combine(rows)
                    row.ratio_to_postfix = cell_ratios.get(name)
                    acc.append(row)
        for mta in mtas:
            mta.stop()
        if args.queue:
            for name in args.only:
                print(f"{name}: delivering a full queue of {args.queue}...", file=sys.stderr, flush=True)
                mta = start(name, workroot, sinks[name], True, args.workers)
                stack.push(mta.stop)
                dlv.append(delivering(mta, args.queue))
                mta.stop()
        pf = [d.delivered_per_s for d in dlv if d.system == "postfix"]
        for d in dlv:
            if pf:
                d.ratio_to_postfix = d.delivered_per_s / pf[0]
        print(report(acc, dlv))
        if args.json:
            print(json.dumps({"accepting": [asdict(r) for r in acc], "delivering": [asdict(d) for d in dlv]},
                             indent=1))
    finally:
        stack.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
