"""Gateway MTA queue: commit latency per message, and a long queue's scan speed and memory.

    python bench/queue_bench.py                      # 4 KB and 64 KB commits, 10,000 deferred files
    python bench/queue_bench.py --dir /dev/shm --messages 500 --queue-length 20000

What it measures, each in a fresh temporary queue under --dir:

- commit: create + write + fsync file + mode 0700 + fsync + fsync directory, i.e. what
  stands between the end of DATA and the 250 reply; median, p90, p99 per size.
- scan: ``filterd queue list`` over --queue-length deferred messages (directory scan,
  every envelope read and checked), and the queue manager's deferred scan (stat only),
  in files per second; the peak RSS of a process doing the list, against a process
  that only started up (the difference is what the queue length costs); and a queue
  manager running 5 s over that queue (none due yet): its peak RSS and CPU.
- active set: memory per message held by the scheduler (qmgr_message_active_limit).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from filterd.mta.delivery import Route  # noqa: E402
from filterd.mta.queue import DEFERRED, INCOMING, Queue  # noqa: E402
from filterd.mta.queuefile import Recipient  # noqa: E402
from filterd.mta.scheduler import ActiveMessage, Scheduler, Settings  # noqa: E402


def body(size: int) -> bytes:
    head = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: bench\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    return head + line * ((size - len(head)) // len(line) + 1)


def commit(queue: Queue, content: bytes, rcpts: int = 1) -> str:
    with queue.create() as msg:
        msg.writer.envelope(time.time(), "sender@example.com",
                            [Recipient(f"r{i}@example.net") for i in range(rcpts)],
                            {"client_address": "192.0.2.7", "helo": "client.example"})
        msg.writer.content(content)
        msg.commit()
    return msg.qid


def commit_latency(base: str, size: int, count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=base) as d:
        queue = Queue(os.path.join(d, "queue"))
        queue.setup()
        content = body(size)
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            commit(queue, content)
            times.append(time.perf_counter() - t0)
    times.sort()
    return {"size": size, "count": count, "median_ms": statistics.median(times) * 1e3,
            "p90_ms": times[int(count * 0.9)] * 1e3, "p99_ms": times[min(count - 1, int(count * 0.99))] * 1e3,
            "per_s": count / sum(times)}


LIST_CHILD = """
import io, resource, sys, time
sys.path.insert(0, {root!r})
from filterd.mta.queue import Queue
from filterd.mta import tools
queue = Queue({path!r})
if {do_list}:
    class Null(io.TextIOBase):
        def write(self, s): return len(s)
    t0 = time.perf_counter()
    tools.list_queue(queue, Null())
    elapsed = time.perf_counter() - t0
else:
    elapsed = 0.0
print(elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


QMGR_CHILD = """
import asyncio, resource, sys, time
sys.path.insert(0, {root!r})
from filterd.mta.bounce import NoticeSettings
from filterd.mta.delivery import Route
from filterd.mta.qmgr import QueueManager
from filterd.mta.queue import Queue
from filterd.mta.scheduler import Scheduler, Settings

async def main():
    qm = QueueManager(Queue({path!r}), Scheduler(Settings()), {{}}, lambda a: Route("discard", ""),
                      NoticeSettings("bench.test", frozenset()))
    task = asyncio.create_task(qm.run())
    t0 = time.perf_counter()
    await asyncio.sleep({seconds})
    qm.stop()
    await task
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    print(cpu.ru_maxrss, cpu.ru_utime + cpu.ru_stime)

asyncio.run(main())
"""


def qmgr_child(path: str, seconds: float) -> tuple[int, float]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", QMGR_CHILD.format(root=root, path=path, seconds=seconds)],
                         capture_output=True, text=True, check=True).stdout
    rss, cpu = out.split()
    return int(rss), float(cpu)


def child(path: str, do_list: bool) -> tuple[float, int]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = LIST_CHILD.format(root=root, path=path, do_list=do_list)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    elapsed, rss = out.split()
    return float(elapsed), int(rss)


def long_queue(base: str, length: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=base) as d:
        queue = Queue(os.path.join(d, "queue"))
        queue.setup()
        content = body(4096)
        t0 = time.perf_counter()
        future = time.time() + 3600
        for _ in range(length):
            qid = commit(queue, content, rcpts=2)
            queue.move(qid, INCOMING, DEFERRED, retry_at=future)
        fill = time.perf_counter() - t0
        t0 = time.perf_counter()
        due = sum(1 for e in queue.scan(DEFERRED) if e.mtime <= time.time())
        stat_scan = time.perf_counter() - t0
        list_s, list_rss = child(queue.directory, True)
        _, idle_rss = child(queue.directory, False)
        qmgr_rss, qmgr_cpu = qmgr_child(queue.directory, 5.0)
        left = sum(1 for _ in queue.scan(DEFERRED))
    return {"length": length, "fill_s": fill, "deferred_scan_per_s": length / stat_scan, "due": due,
            "list_per_s": length / list_s, "list_peak_rss_kb": list_rss, "idle_rss_kb": idle_rss,
            "qmgr_rss_kb": qmgr_rss, "qmgr_cpu_s_in_5s": qmgr_cpu, "still_deferred": left}


def active_set(count: int) -> dict[str, float]:
    s = Scheduler(Settings())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    now = time.time()
    for i in range(count):
        s.add(ActiveMessage(f"{i:010X}", now, "sender@example.com",
                            [(Recipient(f"r{j}@d{i % 50}.example"), Route("smtp", f"d{i % 50}.example"))
                             for j in range(2)]), now)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"messages": count, "rss_growth_kb": after - before, "bytes_per_message": (after - before) * 1024 / count}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="file system to measure (default: $TMPDIR)")
    ap.add_argument("--messages", type=int, default=300, help="commits per size")
    ap.add_argument("--queue-length", type=int, default=10000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = {
        "dir": args.dir,
        "commit": [commit_latency(args.dir, size, args.messages) for size in (4096, 65536)],
        "long_queue": long_queue(args.dir, args.queue_length),
        "active_set": active_set(args.queue_length),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"queue on {args.dir}")
    for c in result["commit"]:
        print(f"commit {c['size'] // 1024:>3} KB: median {c['median_ms']:.2f} ms, p90 {c['p90_ms']:.2f} ms, "
              f"p99 {c['p99_ms']:.2f} ms ({c['per_s']:.0f}/s in one thread, {c['count']} messages)")
    q = result["long_queue"]
    print(f"{q['length']} deferred files (4 KB, 2 recipients): filled in {q['fill_s']:.1f} s; "
          f"qmgr deferred scan {q['deferred_scan_per_s']:.0f} files/s; queue list {q['list_per_s']:.0f} msgs/s; "
          f"peak RSS listing {q['list_peak_rss_kb'] / 1024:.1f} MB vs {q['idle_rss_kb'] / 1024:.1f} MB idle")
    print(f"queue manager over them for 5 s (none due): peak RSS {q['qmgr_rss_kb'] / 1024:.1f} MB, "
          f"CPU {q['qmgr_cpu_s_in_5s']:.2f} s including start-up, {q['still_deferred']} still deferred")
    a = result["active_set"]
    print(f"active set: {a['messages']} messages held by the scheduler: +{a['rss_growth_kb'] / 1024:.1f} MB, "
          f"{a['bytes_per_message']:.0f} bytes/message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
