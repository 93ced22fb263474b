"""Gateway MTA delivery out of a full queue: the queue manager and the smtp agent into smtp-sink.

    python bench/delivery_bench.py                   # 1,000 x 4 KB, cache on and off
    python bench/delivery_bench.py --messages 5000 --size 65536 --rcpts 2 --dir /dev/shm

For each mode (``smtp_connection_cache_on_demand`` yes, then no), a fresh queue under
--dir is filled with --messages committed messages (fsync'd, as smtpd leaves them in
``incoming``), then one in-process QueueManager (from_config, network_agents(), relayhost
= ``[127.0.0.1]:<sink>``, the default concurrency 5..20) delivers them to Postfix's
smtp-sink, which counts them (``-c``; no dumps, so the sink's disk does not slow it).
The time runs from the queue manager's start until the last ``removed``: msgs/s, and the
process's CPU per message (the queue manager, the agent and the file work together:
smtp-sink's CPU is not counted). Every recipient must have been logged ``status=sent``
and every file removed, or the run fails. Note that each delivered recipient costs an
fsync (its done mark), so the disk under --dir matters.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import filterd.registry  # noqa: E402,F401  (installs the parameter table)
from filterd.config import Config  # noqa: E402
from filterd.mta import qmgr as qmgr_module  # noqa: E402
from filterd.mta.qmgr import QueueManager  # noqa: E402
from filterd.mta.queue import ACTIVE, DEFERRED, INCOMING, Queue  # noqa: E402
from filterd.mta.queuefile import Recipient  # noqa: E402
from filterd.mta.smtp_agent import SmtpAgent, network_agents  # noqa: E402


def body(size: int) -> bytes:
    head = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: bench\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    return (head + line * ((size - len(head)) // len(line) + 1))[:size]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sink(port: int) -> subprocess.Popen[bytes]:
    args = ["/usr/sbin/smtp-sink", "-4", "-c", f"127.0.0.1:{port}", "256"]
    if os.geteuid() == 0:
        args[1:1] = ["-u", "nobody"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("smtp-sink did not start")


def fill(queue: Queue, count: int, content: bytes, rcpts: int) -> None:
    for n in range(count):
        with queue.create() as msg:
            msg.writer.envelope(time.time(), "sender@example.com",
                                [Recipient(f"r{n}.{i}@example.net") for i in range(rcpts)])
            msg.writer.content(content)
            msg.commit()


async def deliver(cfg: Config, count: int, rcpts: int) -> tuple[float, int, int]:
    removed = sent = 0
    done = asyncio.Event()

    def count_lines(part: str, text: str) -> None:
        nonlocal removed, sent
        if text.endswith(": removed"):
            removed += 1
            if removed >= count:
                done.set()
        elif part == "smtp" and "status=sent" in text:
            sent += 1

    qmgr_module.event = count_lines  # the bench counts log lines instead of writing them
    agents = network_agents(cfg)
    qm = QueueManager.from_config(cfg, agents)
    started = time.perf_counter()
    task = asyncio.create_task(qm.run(grace=5))
    await asyncio.wait_for(done.wait(), 600)
    elapsed = time.perf_counter() - started
    qm.stop()
    await task
    for agent in agents.values():
        if isinstance(agent, SmtpAgent):
            await agent.close()
    return elapsed, removed, sent


def run(base: str, count: int, size: int, rcpts: int, cache: bool) -> dict[str, float]:
    d = tempfile.mkdtemp(dir=base, prefix="delivery-bench-")
    port = free_port()
    sink = start_sink(port)
    try:
        cfg = Config.from_text(
            f"queue_directory = {d}/queue\nmyhostname = gw.example.test\ninet_protocols = ipv4\n"
            f"relayhost = [127.0.0.1]:{port}\nsmtp_connection_cache_on_demand = {'yes' if cache else 'no'}\n")
        queue = Queue(cfg.get("queue_directory"))
        queue.setup()
        fill(queue, count, body(size), rcpts)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        elapsed, removed, sent = asyncio.run(deliver(cfg, count, rcpts))
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        left = sum(1 for n in (INCOMING, ACTIVE, DEFERRED) for _ in queue.scan(n))
        if left or removed != count or sent != count * rcpts:
            raise RuntimeError(f"{left} messages left in the queue, {removed} removed of {count}, "
                               f"{sent} recipients sent of {count * rcpts}")
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        return {"seconds": elapsed, "msgs_per_s": count / elapsed, "cpu_ms_per_msg": 1000 * cpu / count}
    finally:
        sink.terminate()
        sink.wait()
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--rcpts", type=int, default=1)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    print(f"{args.messages} messages x {args.size} bytes x {args.rcpts} recipient(s), queue under {args.dir}")
    print(f"{'connection cache':18} {'run':>3} {'seconds':>8} {'msgs/s':>8} {'CPU ms/msg':>10}")
    for cache in (True, False):
        for n in range(args.runs):
            r = run(args.dir, args.messages, args.size, args.rcpts, cache)
            print(f"{'on' if cache else 'off':18} {n + 1:>3} {r['seconds']:8.2f} {r['msgs_per_s']:8.1f} "
                  f"{r['cpu_ms_per_msg']:10.2f}")


if __name__ == "__main__":
    main()
