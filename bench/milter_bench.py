#!/usr/bin/env python3
"""Milter throughput through one Postfix: filterd's milter against a milter that does
nothing and against rspamd 3.4's milter proxy, in one run.

One private Postfix instance (tests/fixtures/postfix.py) relays to a quiet ``smtp-sink``
and has three smtpd listeners, each with its own ``smtpd_milters`` (``milter_protocol =
6``, ``milter_default_action = tempfail``):

  noop     a do-nothing milter written below (Python asyncio, one process): it takes the
           headers and body without answering them (SMFIP_NR_HDR/NR_BODY, as filterd
           asks) and continues at the end of the message; Postfix's own ceiling for the
           milter path with the message shipped to a milter
  filterd  ``filterd serve`` with only the milter on (``worker_processes`` workers),
           no restriction list (nothing to greylist), the content pipeline at the end of
           each message: Postfix header/body checks, banned files and filterd's shipped
           score rules (no clamd and no Bayes, which rspamd here has not either)
  rspamd   rspamd 3.4's proxy worker in milter mode scanning itself (``self_scan``), the
           network modules off as in bench/content_bench.py, no Bayes (no Redis)

The same corpus messages (``$FILTERD_CORPUS/spamassassin``, fixed shuffle) go to each
listener over SMTP, ``--concurrency`` sessions each sending messages one after another
for ``--seconds``. Reported: messages answered at the end of DATA per second (250, or
the milter's 4xx/5xx), the milter's CPU per message (its whole process tree, from /proc)
and Postfix's, and msgs/s relative to the noop milter.

Usage: python bench/milter_bench.py [--seconds S] [--concurrency C ...] [--workers N]
       [--json]   (as root: Postfix instances need it)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from content_bench import (  # noqa: E402 - after the path set-up
    RSPAMD_OFF, Daemon, PostfixProcesses, Sample, Stack, chown_tree, load_corpus, port_open, program,
    quiet_sink, wait_idle, wait_until,
)
from policy_bench import exit_on_sigterm, free_port  # noqa: E402

SENDER = "sender@bench-sender.example"
RECIPIENT = "rcpt@bench-dest.example"
WARMUP_MESSAGES = 24
IO_TIMEOUT = 120.0


# -- the do-nothing milter ----------------------------------------------------------------

async def noop_milter(port: int) -> None:
    """A milter that asks for headers and body without replies and answers only the end
    of the message (continue). Written from the protocol, not with filterd's codec; it
    acknowledges every read at once, as filterd does, so that it is a ceiling."""
    # SMFIP_NOCONNECT NOHELO NOMAIL NORCPT NOEOH NOUNKNOWN NODATA NR_HDR NR_BODY
    wanted = 0x1 | 0x2 | 0x4 | 0x8 | 0x40 | 0x100 | 0x200 | 0x80 | 0x80000

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            while True:
                (length,) = struct.unpack(">I", await reader.readexactly(4))
                packet = await reader.readexactly(length)
                # Acknowledge at once: Postfix sends headers and body chunks without
                # waiting for replies, and with Nagle on its side the next packet waits
                # for this ACK, which a delayed ACK holds back 40 ms (22 msgs/s per
                # session measured without this line, 400 with it).
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                cmd = packet[:1]
                if cmd == b"O":
                    _, _, offered = struct.unpack(">III", packet[1:13])
                    writer.write(struct.pack(">IcIII", 13, b"O", 6, 0, wanted & offered))
                elif cmd == b"Q":
                    break
                elif cmd in b"ECHMRTNU":  # end of message, or a step the MTA sent anyway
                    writer.write(b"\0\0\0\x01c")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


# -- load ---------------------------------------------------------------------------------

@dataclass
class Load:
    messages: int = 0
    elapsed: float = 0.0
    replies: Counter[str] = field(default_factory=Counter)


async def smtp_sessions(port: int, samples: list[Sample], start: int, concurrency: int,
                        seconds: float | None, count: int | None) -> Load:
    """``concurrency`` SMTP sessions, each sending messages one after another, until the
    time or the count is reached; a message counts when its end of DATA is answered."""
    load = Load()
    index = [start]
    began = time.perf_counter()
    deadline = began + seconds if seconds else None

    async def reply(reader: asyncio.StreamReader) -> str:
        while True:
            line = await asyncio.wait_for(reader.readline(), IO_TIMEOUT)
            if not line:
                raise ConnectionError("connection closed")
            if line[3:4] != b"-":
                return line.decode("ascii", "replace").strip()

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await reply(reader)
            writer.write(b"EHLO client.bench.example\r\n")
            await reply(reader)
            while True:
                if deadline is not None and time.perf_counter() >= deadline:
                    break
                if count is not None and index[0] - start >= count:
                    break
                sample = samples[index[0] % len(samples)]
                index[0] += 1
                writer.write(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode())
                mail, rcpt, data = await reply(reader), await reply(reader), await reply(reader)
                if not data.startswith("354"):
                    load.replies[f"refused before DATA: {(rcpt if mail[:1] == '2' else mail)[:3]}"] += 1
                    writer.write(b"RSET\r\n")
                    await reply(reader)
                    continue
                writer.write(sample.smtp_data)
                final = await reply(reader)
                load.replies[final[:3]] += 1
                load.messages += 1
            writer.write(b"QUIT\r\n")
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(concurrency)))
    load.elapsed = time.perf_counter() - began
    return load


# -- the peers ----------------------------------------------------------------------------

def start_noop(stack: Stack, workdir: Path, port: int) -> Daemon:
    daemon = stack.daemon(Daemon("noop-milter", [sys.executable, __file__, "--noop-milter", str(port)],
                                 workdir))
    wait_until(lambda: port_open(port), daemon, "listening")
    return daemon


def start_filterd(stack: Stack, workdir: Path, port: int, workers: int) -> Daemon:
    config = workdir / "filterd.cf"
    config.write_text("\n".join([
        f"milter_listen = inet:127.0.0.1:{port}", "policy_listen =", "filter_listen =",
        "milter_rcpt_restrictions =", "content_checks = postfix_checks banned rules",
        "rules_extra_directories =",  # filterd's shipped rules only, as measured in bench/README.md
        f"worker_processes = {workers}", f"data_directory = {workdir / 'filterd-data'}",
        f"maillog_file = {workdir / 'filterd.log'}", "myhostname = filterd-bench.test", ""]))
    daemon = stack.daemon(Daemon("filterd", [sys.executable, "-m", "filterd", "serve", "--config",
                                             str(config)], workdir))
    wait_until(lambda: port_open(port), daemon, "listening", timeout=300)
    return daemon


def start_rspamd(stack: Stack, workdir: Path, port: int, workers: int) -> Daemon:
    """rspamd's proxy in milter mode, scanning itself; local checks only (PEERS.md)."""
    etc = workdir / "rspamd-etc"
    local, override = etc / "local.d", etc / "override.d"
    run, db, logs = workdir / "rspamd-run", workdir / "rspamd-db", workdir / "rspamd-log"
    for d in (local, override, run, db, logs):
        d.mkdir(parents=True)
    files = {
        override / "worker-proxy.inc": (f'bind_socket = "127.0.0.1:{port}";\nmilter = yes;\n'
                                        f"timeout = 120s;\ncount = {workers};\n"
                                        'upstream "local" {\n  default = yes;\n  self_scan = yes;\n}\n'),
        override / "worker-normal.inc": f'bind_socket = "127.0.0.1:{free_port()}";\ncount = 1;\n',
        override / "worker-controller.inc": f'bind_socket = "127.0.0.1:{free_port()}";\ncount = 1;\n',
        override / "logging.inc": f'type = "file";\nfilename = "{logs / "rspamd.log"}";\nlevel = "notice";\n',
        local / "options.inc": 'dns { nameserver = ["127.0.0.1:9"]; timeout = 0.2s; retransmits = 1; }\n',
        local / "phishing.conf": "phishtank_enabled = false;\nopenphish_enabled = false;\n",
        local / "hfilter.conf": "helo_enabled = false;\nhostname_enabled = false;\nfrom_enabled = false;\n",
        local / "headers_group.conf": 'symbols { "DATE_IN_PAST" { weight = 0.0; } }\n',
    }
    for module in RSPAMD_OFF:
        files[local / f"{module}.conf"] = "enabled = false;\n"
    for path, text in files.items():
        path.write_text(text)
    argv = [program("rspamd"), "-f", "-c", "/etc/rspamd/rspamd.conf", f"--var=LOCAL_CONFDIR={etc}",
            f"--var=RUNDIR={run}", f"--var=DBDIR={db}", f"--var=LOGDIR={logs}"]
    if os.geteuid() == 0:
        for d in (etc, run, db, logs):
            chown_tree(d, "_rspamd")
        argv += ["-u", "_rspamd", "-g", "_rspamd"]
    daemon = stack.daemon(Daemon("rspamd", argv, workdir))
    wait_until(lambda: port_open(port), daemon, "listening", timeout=300)
    return daemon


def master_cf(listeners: dict[str, tuple[int, int]]) -> str:
    """One smtpd per milter: ``127.0.0.1:SMTPPORT inet ... smtpd -o smtpd_milters=...``."""
    return "".join(f"127.0.0.1:{smtp} inet n - n - - smtpd\n"
                   f"  -o smtpd_milters=inet:127.0.0.1:{milter}\n"
                   for smtp, milter in listeners.values())


# -- measurement --------------------------------------------------------------------------

@dataclass
class Result:
    system: str
    concurrency: int
    messages: int
    messages_per_s: float
    milter_cpu_ms: float
    postfix_cpu_ms: float
    total_cpu_ms: float
    relative_to_noop: float = 0.0
    replies: dict[str, int] = field(default_factory=dict)


def measure(system: str, milter: Daemon, postfix: PostfixProcesses, port: int, samples: list[Sample],
            start: int, concurrency: int, seconds: float) -> Result:
    asyncio.run(smtp_sessions(port, samples, start, concurrency, None, WARMUP_MESSAGES))
    wait_idle([milter])
    milter_before, postfix_before = milter.cpu(), postfix.cpu()
    load = asyncio.run(smtp_sessions(port, samples, start, concurrency, seconds, None))
    milter.check_alive()
    n = max(load.messages, 1)
    milter_ms = (milter.cpu() - milter_before) * 1000 / n
    postfix_ms = (postfix.cpu() - postfix_before) * 1000 / n
    return Result(system, concurrency, load.messages, load.messages / load.elapsed, milter_ms,
                  postfix_ms, milter_ms + postfix_ms, replies=dict(load.replies))


def report(results: list[Result]) -> str:
    head = (f"{'system':<8} {'conc':>4} {'msgs':>6} {'msgs/s':>7} {'x noop':>6} "
            f"{'milter CPU ms/msg':>17} {'postfix ms/msg':>14} {'total ms/msg':>12}  replies")
    lines = [head]
    for r in results:
        lines.append(f"{r.system:<8} {r.concurrency:>4} {r.messages:>6} {r.messages_per_s:>7.1f} "
                     f"{r.relative_to_noop:>6.2f} {r.milter_cpu_ms:>17.2f} {r.postfix_cpu_ms:>14.2f} "
                     f"{r.total_cpu_ms:>12.2f}  {r.replies}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per system and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="SMTP sessions")
    parser.add_argument("--workers", type=int, default=2, help="filterd workers and rspamd proxies")
    parser.add_argument("--only", nargs="+", choices=("noop", "filterd", "rspamd"),
                        default=["noop", "filterd", "rspamd"])
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--noop-milter", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    if args.noop_milter is not None:
        asyncio.run(noop_milter(args.noop_milter))
        return 0
    from tests.fixtures.postfix import PostfixInstance, postfix_unavailable_reason

    reason = postfix_unavailable_reason()
    if reason is not None:
        print(f"milter_bench: {reason}", file=sys.stderr)
        return 1
    corpus = Path(os.environ.get("FILTERD_CORPUS", REPO.parent / "shared" / "corpus")) / "spamassassin"
    samples = load_corpus(corpus)
    workroot = Path(tempfile.mkdtemp(prefix="milter-bench-"))
    workroot.chmod(0o755)
    stack = Stack()
    stack.push(lambda: shutil.rmtree(workroot, ignore_errors=True))
    results: list[Result] = []
    try:
        listeners = {name: (free_port(), free_port()) for name in args.only}
        starters = {"noop": lambda port: start_noop(stack, workroot, port),
                    "filterd": lambda port: start_filterd(stack, workroot, port, args.workers),
                    "rspamd": lambda port: start_rspamd(stack, workroot, port, args.workers)}
        milters = {name: starters[name](listeners[name][1]) for name in args.only}
        root = workroot / "postfix"
        root.mkdir()
        instance = PostfixInstance(root, {"milter_protocol": "6", "milter_default_action": "tempfail",
                                          "default_process_limit": "100"}, master_cf(listeners))
        instance.sink = quiet_sink(instance.sink)
        stack.push(instance.stop)
        instance.start()
        postfix = PostfixProcesses(instance)
        start = 0
        for concurrency in args.concurrency:
            for name in args.only:
                print(f"{name} x{concurrency}...", file=sys.stderr, flush=True)
                results.append(measure(name, milters[name], postfix, listeners[name][0], samples,
                                       start, concurrency, args.seconds))
            start += 10_000  # the next concurrency starts elsewhere in the corpus, same for all
        noop = {r.concurrency: r.messages_per_s for r in results if r.system == "noop"}
        for r in results:
            if noop.get(r.concurrency):
                r.relative_to_noop = r.messages_per_s / noop[r.concurrency]
        print(report(results))
        if args.json:
            print(json.dumps([asdict(r) for r in results], indent=1))
        filterd_log = workroot / "filterd.log"
        if filterd_log.exists():
            verdicts = Counter(m.group(1) for m in re.finditer(r"\) (Passed|Blocked|Tempfailed) ",
                                                                 filterd_log.read_text(errors="replace")))
            print(f"filterd verdicts: {dict(verdicts)}")
    finally:
        stack.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
