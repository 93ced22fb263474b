"""Gateway MTA smtpd: accepted messages per second, measured with Postfix's smtp-source.

    python bench/mta_bench.py                       # content off and on, 1 and 10 sessions, 4 and 64 KB
    python bench/mta_bench.py --messages 2000 --content off --sizes 4096

For each case a fresh ``filterd serve`` runs with only ``smtpd_listen`` (a fresh queue
under a temporary directory, fsync as always), and ``smtp-source -s SESSIONS -m MESSAGES
-l SIZE`` sends to it; the rate is messages over the wall time of smtp-source, which
stops at the first refusal (so a run that finishes got a 250 for every message: each of
them is on disk). "content on" is the content pipeline with filterd's own rules
(``rules_extra_directories =``: SpamAssassin's set takes a minute to compile);
"content off" is ``smtpd_content_filter = no``, the MTA path alone. No queue manager
runs: what is measured is receiving.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(100).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"smtpd on port {port} did not answer within {timeout} s")


def run_case(content: bool, sessions: int, size: int, messages: int, workers: int) -> float:
    with tempfile.TemporaryDirectory(prefix="filterd-mta-bench-") as tmp:
        port = free_port()
        cfg = os.path.join(tmp, "filterd.cf")
        with open(cfg, "w") as f:
            f.write(f"data_directory = {tmp}/data\npolicy_listen =\nfilter_listen =\nmilter_listen =\n"
                    f"smtpd_listen = inet:127.0.0.1:{port}\nworker_processes = {workers}\n"
                    f"maillog_file = {tmp}/log\nrelay_domains = relay.example\n"
                    f"smtpd_content_filter = {'yes' if content else 'no'}\nrules_extra_directories =\n"
                    "smtpd_peername_lookup = no\nmessage_size_limit = 50000000\n")
        proc = subprocess.Popen([sys.executable, "-m", "filterd", "serve", "--config", cfg], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port, 180)
            source = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
            started = time.monotonic()
            subprocess.run([source, "-s", str(sessions), "-m", str(messages), "-l", str(size),
                            "-f", "a@sender.example", "-t", "b@relay.example", f"127.0.0.1:{port}"],
                           check=True, timeout=1800)
            elapsed = time.monotonic() - started
            queued = len(os.listdir(os.path.join(tmp, "data", "queue", "incoming")))
            if queued < messages:
                raise RuntimeError(f"only {queued} of {messages} messages are in the queue")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    return messages / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 65536])
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--content", choices=("off", "on", "both"), default="both")
    ap.add_argument("--workers", type=int, default=0, help="worker_processes (0: one per core)")
    args = ap.parse_args()
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.content]
    results = []
    for content in modes:
        for size in args.sizes:
            for sessions in args.sessions:
                rate = run_case(content, sessions, size, args.messages, args.workers)
                row = {"content": "on" if content else "off", "size": size, "sessions": sessions,
                       "messages": args.messages, "msgs_per_s": round(rate, 1)}
                results.append(row)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
