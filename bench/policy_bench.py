#!/usr/bin/env python3
"""Policy-service benchmark: filterd against postgrey (and a do-nothing server).

Speaks the Postfix policy delegation protocol exactly as Postfix 3.7 does at RCPT (the
request template is read from the captured fixture), one request at a time per connection
as smtpd does, over N concurrent connections, and reports per server and scenario:
requests/s, p50/p99 latency, and the server's CPU time per request (user+system of the
server process and all its descendants, from /proc). On a 2-core machine the load
generator and the server compete for CPU, so CPU per request is the figure that compares
servers fairly; throughput and latency are reported too because they are what an
administrator feels.

Scenarios:
  new     every request is a triplet never seen before (client /24, sender, recipient vary)
  repeat  a fixed set of triplets that already passed the greylist (warm-up pass, sleep past
          the delay, a pass that lets them through, then the measurement, new instance per
          request as for a new message from a known sender)

State placement matters: postgrey syncs its Berkeley DB on every request, so its CPU per
request depends on the filesystem under its database (on this machine's ext4 about 1.5
times what it is on tmpfs), while filterd never syncs per request. ``--state-dir`` is
repeatable: every scenario is then measured in each directory and ratios are given per
filesystem, so both comparisons come from the same run.

Usage: python bench/policy_bench.py [--seconds S] [--workers N] [--runs N]
                                   [--only filterd|postgrey|trivial|bare]
                                   [--state-dir DIR ...]
See bench/README.md.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import multiprocessing
import os
import pwd
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEMPLATE = REPO.parent / "shared" / "fixtures" / "postfix-3.7-policy-requests.txt"
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
GREYLIST_DELAY = 1  # seconds, for both servers, so "repeat" triplets pass quickly
REPEAT_TRIPLETS = 1000
NEW_BASE = 10_000_000  # index range of "new" triplets, disjoint from the repeat set
PHASE_GRACE = 30.0  # a phase that overruns its budget by this much means a hung server
VARIED = ("client_address", "client_name", "reverse_client_name", "client_port",
          "helo_name", "sender", "recipient", "instance")


# -- requests -------------------------------------------------------------------------

class RequestFactory:
    """Builds RCPT-stage policy requests shaped exactly like the captured Postfix ones.

    The attribute order and every constant attribute come from the fixture; only the
    attributes that identify a client, a triplet and a message vary. Formatting is one
    bytes ``%`` per request, cheap enough that the generator is not what is measured.
    """

    def __init__(self, template_text: str, salt: int) -> None:
        block = next((b for b in template_text.split("\n----\n")
                      if "protocol_state=RCPT" in b), None)
        if block is None:
            raise ValueError("template has no protocol_state=RCPT request")
        lines: list[str] = []
        for line in block.strip("\n").splitlines():
            name, sep, value = line.partition("=")
            if not sep:
                raise ValueError(f"template line without '=': {line!r}")
            lines.append(f"{name}=%s" if name in VARIED else f"{name}={value.replace('%', '%%')}")
        missing = set(VARIED) - {line.partition("=")[0] for line in lines}
        if missing:
            raise ValueError(f"template lacks attributes {sorted(missing)}")
        self._order = [line.partition("=")[0] for line in lines if line.endswith("=%s")]
        self._format = ("\n".join(lines) + "\n\n").encode()
        self._salt = salt

    def request(self, n: int, seq: int) -> bytes:
        """Request for triplet ``n`` (each n its own client /24), message number ``seq``."""
        net = n % 65536
        address = f"10.{net >> 8}.{net & 255}.{1 + (n // 65536) % 254}"
        name = f"mta{n}.net{net}.example"
        values = {
            "client_address": address,
            "client_name": name,
            "reverse_client_name": name,
            "client_port": str(1024 + seq % 60000),
            "helo_name": name,
            # postgrey folds digit runs of the sender's local part: vary it with letters.
            "sender": f"bulk{_letters(n)}@sender{n % 997}.example",
            "recipient": f"user{n}@remote{n % 13}.example",
            "instance": f"{self._salt:x}.{n:x}.{seq:x}.0",
        }
        return self._format % tuple(values[key].encode() for key in self._order)


def _letters(n: int) -> str:
    out = []
    while True:
        n, digit = divmod(n, 26)
        out.append(chr(97 + digit))
        if n == 0:
            return "".join(out)


# -- load generator -------------------------------------------------------------------

@dataclass
class LoadSpec:
    """What one phase sends: which triplet indexes, how many, for how long."""

    port: int
    connections: int
    seconds: float | None  # stop at this duration...
    limit: int | None  # ...or after this many request indexes
    base: int  # triplet index offset
    modulo: int | None  # cycle over this many triplets (repeat) or not (new)
    salt: int


@dataclass
class LoadResult:
    requests: int = 0
    elapsed: float = 0.0
    client_cpu: float = 0.0
    latencies_ns: array.array = field(default_factory=lambda: array.array("q"))
    actions: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


class PolicyClient(asyncio.Protocol):
    """One policy connection that sends the next request from inside data_received.

    Postfix never pipelines policy requests, so neither does this: one outstanding request
    per connection, latency from write to the reply's terminating empty line.
    """

    def __init__(self, spec: LoadSpec, factory: RequestFactory, conn_index: int,
                 deadline_ns: int | None, result: LoadResult, done: asyncio.Future[None]) -> None:
        self.spec = spec
        self.factory = factory
        self.conn_index = conn_index
        self.deadline_ns = deadline_ns
        self.result = result
        self.done = done
        self.k = 0
        self.buffer = b""
        self.sent_at = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send_next()

    def _send_next(self) -> None:
        spec = self.spec
        index = self.conn_index + self.k * spec.connections
        if spec.limit is not None and index >= spec.limit:
            self._finish()
            return
        n = spec.base + (index % spec.modulo if spec.modulo else index)
        self.k += 1
        request = self.factory.request(n, index)
        assert self.transport is not None
        self.sent_at = time.perf_counter_ns()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\n\n")
        if end < 0:
            return
        now = time.perf_counter_ns()
        reply, self.buffer = self.buffer[:end], self.buffer[end + 2:]
        self.result.latencies_ns.append(now - self.sent_at)
        self.result.requests += 1
        self.result.actions[_action_kind(reply)] += 1
        if self.deadline_ns is not None and now >= self.deadline_ns:
            self._finish()
        else:
            self._send_next()

    def _finish(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.result.errors.append(f"connection {self.conn_index} lost: {exc or 'EOF'}")
            self.done.set_result(None)


def _action_kind(reply: bytes) -> str:
    """``action=DEFER_IF_PERMIT 4.2.0 Greylisted...`` -> ``DEFER_IF_PERMIT``."""
    for line in reply.split(b"\n"):
        if line.startswith(b"action="):
            word = line[7:].split(b" ", 1)[0].decode("ascii", "replace").upper()
            return "4NN" if word[:1] == "4" else "5NN" if word[:1] == "5" else word
    return "NO_ACTION"


async def _run_connections(spec: LoadSpec, conn_indexes: list[int], start_at: float,
                           factory: RequestFactory) -> LoadResult:
    loop = asyncio.get_running_loop()
    result = LoadResult()
    await asyncio.sleep(max(0.0, start_at - time.time()))
    started = time.perf_counter()
    deadline_ns = (time.perf_counter_ns() + int(spec.seconds * 1e9)
                   if spec.seconds is not None else None)
    futures = []
    for conn_index in conn_indexes:
        done: asyncio.Future[None] = loop.create_future()
        futures.append(done)
        await loop.create_connection(
            lambda c=conn_index, d=done: PolicyClient(spec, factory, c, deadline_ns, result, d),
            "127.0.0.1", spec.port)
    budget = (spec.seconds or 0.0) + PHASE_GRACE
    try:
        await asyncio.wait_for(asyncio.gather(*futures), timeout=budget)
    except TimeoutError:
        result.errors.append(f"no reply within {budget:.0f}s: server hung")
    result.elapsed = time.perf_counter() - started
    return result


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _load_process(spec: LoadSpec, conn_indexes: list[int], start_at: float,
                  template: str, queue: multiprocessing.Queue[tuple[object, ...]]) -> None:
    """Body of one generator process; results go back as plain data (no pickled objects
    of ours cross the boundary except through multiprocessing's own queue)."""
    cpu_before = _client_cpu()
    result = asyncio.run(_run_connections(spec, conn_indexes, start_at,
                                          RequestFactory(template, spec.salt)))
    queue.put((result.requests, result.elapsed, _client_cpu() - cpu_before,
               result.latencies_ns.tobytes(), dict(result.actions), result.errors))


def run_load(spec: LoadSpec, template: str, processes: int) -> LoadResult:
    """Run one phase with the connections spread over ``processes`` generator processes."""
    processes = max(1, min(processes, spec.connections))
    start_at = time.time() + 0.2
    if processes == 1:
        cpu_before = _client_cpu()
        result = asyncio.run(_run_connections(spec, list(range(spec.connections)), start_at,
                                              RequestFactory(template, spec.salt)))
        result.client_cpu = _client_cpu() - cpu_before
        return result
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_load_process,
                               args=(spec, list(range(p, spec.connections, processes)),
                                     start_at, template, queue))
               for p in range(processes)]
    for worker in workers:
        worker.start()
    total = LoadResult()
    for _ in workers:
        requests, elapsed, cpu, latencies, actions, errors = queue.get()
        total.requests += requests
        total.elapsed = max(total.elapsed, elapsed)
        total.client_cpu += cpu
        total.latencies_ns.frombytes(latencies)
        total.actions.update(actions)
        total.errors.extend(errors)
    for worker in workers:
        worker.join()
    return total


# -- the trivial server ---------------------------------------------------------------

class TrivialPolicy(asyncio.Protocol):
    """Answers every request with DUNNO at once: the ceiling of what the generator drives."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        replies = self.buffer.count(b"\n\n")
        if replies:
            self.buffer = self.buffer[self.buffer.rfind(b"\n\n") + 2:]
            self.transport.write(b"action=DUNNO\n\n" * replies)


async def serve_trivial(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(TrivialPolicy, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


# -- servers under test ---------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_tree_cpu(root_pid: int) -> float:
    """CPU seconds (user+system) of a process and all its descendants, living or reaped.

    utime+stime of every live process in the tree, plus cutime+cstime, which hold the
    time of children that already exited and were waited for (pre-forked workers that
    recycle themselves would otherwise vanish from the account).
    """
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        parents[pid] = int(fields[1])
        times[pid] = sum(int(value) for value in fields[11:15])
    return sum(times.get(pid, 0) for pid in descendants(root_pid, parents)) / CLOCK_TICK


def descendants(root_pid: int, parents: dict[int, int]) -> set[int]:
    """``root_pid`` and every process below it, from a pid -> parent pid table."""
    tree = {root_pid}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


class Server:
    """A policy server process we start, measure and stop (by its own process group)."""

    name = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.stderr_path = workdir / f"{self.name}.stderr"

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Create whatever the server needs on disk before it starts."""

    def start(self, timeout: float = 30.0) -> None:
        self.prepare()
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                            stdout=stderr, stderr=stderr,
                                            start_new_session=True, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: "
                                   f"{self._stderr_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not listen on {self.port}: {self._stderr_tail()}")

    def probe(self, request: bytes, timeout: float = 10.0) -> str:
        """Send one request and return its action kind: a server that listens but never
        answers (workers failing to start) is caught here, not after a whole phase."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
                sock.sendall(request)
                reply = b""
                while b"\n\n" not in reply:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
        except OSError as error:
            raise RuntimeError(f"{self.name} did not answer a probe request: {error}; "
                               f"{self._stderr_tail()}") from error
        if b"\n\n" not in reply:
            raise RuntimeError(f"{self.name} closed the connection without a reply: "
                               f"{self._stderr_tail()}")
        return _action_kind(reply)

    def _stderr_tail(self) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-3:])[-1500:]
        except OSError:
            return ""

    def cpu(self) -> float:
        assert self.process is not None
        return process_tree_cpu(self.process.pid)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None


class TrivialServer(Server):
    name = "trivial"

    def command(self) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--serve-trivial", str(self.port)]


class BareServer(Server):
    """bench/bare_greylist.py: the least a CPython greylister does per request (a floor)."""

    name = "bare"

    def command(self) -> list[str]:
        data = self.workdir / "bare-data"
        data.mkdir(exist_ok=True)
        return [sys.executable, str(Path(__file__).resolve().with_name("bare_greylist.py")),
                str(self.port), str(data)]


class PostgreyServer(Server):
    """Debian's postgrey run by hand; as root it drops to user postgrey, who owns dbdir."""

    name = "postgrey"

    def prepare(self) -> None:
        self.dbdir = self.workdir / "postgrey-db"
        self.dbdir.mkdir()
        user = pwd.getpwnam("postgrey")
        os.chown(self.dbdir, user.pw_uid, user.pw_gid)

    def command(self) -> list[str]:
        binary = shutil.which("postgrey", path=os.environ.get("PATH", "") + ":/usr/sbin")
        if binary is None:
            raise RuntimeError("postgrey is not installed (Debian package postgrey)")
        command = [binary, f"--inet=127.0.0.1:{self.port}", f"--dbdir={self.dbdir}",
                   f"--delay={GREYLIST_DELAY}"]
        if os.geteuid() != 0:
            own = pwd.getpwuid(os.geteuid()).pw_name
            command += [f"--user={own}", f"--group={own}"]
        return command


class FilterdServer(Server):
    """filterd's policy service through its CLI, with N worker processes."""

    name = "filterd"

    def __init__(self, workdir: Path, workers: int, command_template: str) -> None:
        super().__init__(workdir)
        self.workers = workers
        self.command_template = command_template
        self.config = workdir / "filterd.cf"

    def prepare(self) -> None:
        data = self.workdir / "filterd-data"
        data.mkdir()
        self.config.write_text(
            f"policy_listen = inet:127.0.0.1:{self.port}\n"
            f"data_directory = {data}\n"
            f"worker_processes = {self.workers}\n"
            f"greylist_delay = {GREYLIST_DELAY}s\n"
            "policy_restrictions = check_greylist\n"
            "filter_listen =\n"  # the policy service alone: no content filter on 10024
            "milter_listen =\n"  # nor a milter on 10026
        )

    def command(self) -> list[str]:
        return [part.replace("{config}", str(self.config))
                for part in shlex.split(self.command_template)]


# -- scenarios ------------------------------------------------------------------------

@dataclass
class Measurement:
    server: str
    scenario: str
    connections: int
    requests: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_us_per_request: float
    client_cpu_us_per_request: float
    server_cpu_percent: float
    client_cpu_percent: float
    passed_percent: float
    actions: dict[str, int]
    errors: list[str]
    run: int = 1  # which round of --runs
    state: str = ""  # filesystem type under the servers' state (ext4, tmpfs...)


def _percentile(sorted_values: list[int], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))] / 1e6


def measure(server: Server, scenario: str, spec: LoadSpec, template: str,
            processes: int) -> Measurement:
    cpu_before = server.cpu()
    result = run_load(spec, template, processes)
    server_cpu = server.cpu() - cpu_before
    latencies = sorted(result.latencies_ns)
    requests = max(result.requests, 1)
    passed = sum(count for kind, count in result.actions.items()
                 if not kind.startswith("DEFER") and kind not in ("4NN", "5NN", "REJECT"))
    if not server.alive():
        result.errors.append(f"{server.name} died during the run")
    return Measurement(
        server=server.name, scenario=scenario, connections=spec.connections,
        requests=result.requests, seconds=round(result.elapsed, 3),
        requests_per_s=result.requests / result.elapsed if result.elapsed else 0.0,
        p50_ms=_percentile(latencies, 0.50), p99_ms=_percentile(latencies, 0.99),
        server_cpu_us_per_request=server_cpu / requests * 1e6,
        client_cpu_us_per_request=result.client_cpu / requests * 1e6,
        server_cpu_percent=100 * server_cpu / result.elapsed if result.elapsed else 0.0,
        client_cpu_percent=100 * result.client_cpu / result.elapsed if result.elapsed else 0.0,
        passed_percent=100 * passed / requests,
        actions=dict(result.actions), errors=result.errors,
    )


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path``: its longest mount point in /proc/mounts."""
    resolved = str(path.resolve())
    best, fstype = "", "unknown"
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            mount = fields[1].replace("\\040", " ")
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, fstype = mount, fields[2]
    return fstype


def run_scenario(make_server: Callable[[Path], Server], scenario: str, connections: int,
                 args: argparse.Namespace, template: str, workroot: Path) -> Measurement:
    """Fresh server per measurement, so no run inherits another's database."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{scenario}-{connections}-", dir=workroot))
    workdir.chmod(0o755)
    server: Server = make_server(workdir)
    salt = int.from_bytes(os.urandom(4), "big")
    try:
        server.start()
        server.probe(RequestFactory(template, salt).request(NEW_BASE - 1, 0))
        if scenario == "new":
            spec = LoadSpec(server.port, connections, args.seconds, args.requests,
                            NEW_BASE, None, salt)
            return measure(server, scenario, spec, template, args.client_procs)
        seed = LoadSpec(server.port, 8, None, REPEAT_TRIPLETS, 0, REPEAT_TRIPLETS, salt)
        greylisted = run_load(seed, template, 1)
        time.sleep(GREYLIST_DELAY + 1.2)
        passing = run_load(LoadSpec(**{**asdict(seed), "salt": salt + 1}), template, 1)
        spec = LoadSpec(server.port, connections, args.seconds, args.requests,
                        0, REPEAT_TRIPLETS, salt + 2)
        measurement = measure(server, scenario, spec, template, args.client_procs)
        measurement.errors = greylisted.errors + passing.errors + measurement.errors
        if args.verbose:
            print(f"  {server.name} repeat warm-up {dict(greylisted.actions)}, "
                  f"retry {dict(passing.actions)}", file=sys.stderr)
        return measurement
    finally:
        server.stop()


# -- report ---------------------------------------------------------------------------

COLUMNS = (("run", "run", "{:>3}"), ("state", "state", "{:<6}"),
           ("server", "server", "{:<9}"), ("scenario", "scen", "{:<7}"),
           ("connections", "conns", "{:>5}"), ("requests", "requests", "{:>9}"),
           ("requests_per_s", "req/s", "{:>9.0f}"), ("p50_ms", "p50 ms", "{:>7.2f}"),
           ("p99_ms", "p99 ms", "{:>7.2f}"),
           ("server_cpu_us_per_request", "srv CPU us/req", "{:>14.1f}"),
           ("server_cpu_percent", "srv CPU%", "{:>8.0f}"),
           ("client_cpu_us_per_request", "cli CPU us/req", "{:>14.1f}"),
           ("client_cpu_percent", "cli CPU%", "{:>8.0f}"), ("passed_percent", "pass%", "{:>6.1f}"))


def format_table(measurements: list[Measurement]) -> str:
    header = "  ".join(_pad(title, fmt) for _, title, fmt in COLUMNS)
    lines = [header, "-" * len(header)]
    order = {name: i for i, name in enumerate(dict.fromkeys(m.server for m in measurements))}
    for m in sorted(measurements,
                    key=lambda m: (m.state, order[m.server], m.scenario, m.connections, m.run)):
        lines.append("  ".join(fmt.format(getattr(m, key)) for key, _, fmt in COLUMNS))
        for error in m.errors:
            lines.append(f"    ! {error}")
    return "\n".join(lines)


def _pad(title: str, fmt: str) -> str:
    """Align a column title like the column's format ("{:>9.0f}" -> right, width 9)."""
    spec = fmt[fmt.index(":") + 1:-1]
    width = int(spec[1:].split(".")[0].rstrip("fd"))
    return f"{title:<{width}}" if spec[0] == "<" else f"{title:>{width}}"


def ratios(measurements: list[Measurement]) -> list[dict[str, object]]:
    """filterd/postgrey for each state filesystem, scenario and concurrency measured on both.

    Ratios are taken within a round (the two servers measured back to back, state on the
    same filesystem), then the median over the rounds is reported: this machine's speed
    drifts over minutes, and a ratio of two measurements taken minutes apart would carry
    that drift.
    """
    by_key = {(m.run, m.state, m.server, m.scenario, m.connections): m for m in measurements}
    per_cell: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    for (run, state, server, scenario, connections), ours in by_key.items():
        theirs = by_key.get((run, state, "postgrey", scenario, connections))
        if server != "filterd" or theirs is None:
            continue
        per_cell.setdefault((state, scenario, connections), []).append({
            "requests_per_s": _ratio(ours.requests_per_s, theirs.requests_per_s),
            "p50_ms": _ratio(ours.p50_ms, theirs.p50_ms),
            "p99_ms": _ratio(ours.p99_ms, theirs.p99_ms),
            "server_cpu_us_per_request": _ratio(ours.server_cpu_us_per_request,
                                                theirs.server_cpu_us_per_request),
        })
    out: list[dict[str, object]] = []
    for (state, scenario, connections), rounds in per_cell.items():
        row: dict[str, object] = {"state": state, "scenario": scenario,
                                  "connections": connections, "runs": len(rounds)}
        for field_name in rounds[0]:
            row[field_name] = round(statistics.median(r[field_name] for r in rounds), 3)
        out.append(row)
    return out


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def format_ratios(rows: list[dict[str, object]]) -> str:
    if not rows:
        return "filterd/postgrey ratios: need both servers measured"
    lines = ["filterd/postgrey          req/s (>1 better)  p50  p99  srv CPU/req (<1 better)"
             + ("  (median of the runs' ratios)" if any(r["runs"] != 1 for r in rows) else "")]
    for row in rows:
        lines.append(f"{row['state']:<6} {row['scenario']:<7} conns={row['connections']:<3}   "
                     f"{row['requests_per_s']:>8}  {row['p50_ms']:>8}  {row['p99_ms']:>8}  "
                     f"{row['server_cpu_us_per_request']:>8}")
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------

@contextmanager
def workspace(state_dir: Path) -> Iterator[Path]:
    """Temp directory under ``state_dir`` the server users (postgrey, filterd's workers)
    can traverse."""
    root = Path(tempfile.mkdtemp(prefix="policy-bench-", dir=state_dir))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1,
                        help="rounds over every scenario; ratios are the median of the "
                             "rounds' ratios (default 1)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="duration of each measurement (default 5)")
    parser.add_argument("--requests", type=int, default=None,
                        help="fixed number of requests per measurement instead of --seconds")
    parser.add_argument("--workers", type=int, default=2,
                        help="filterd worker_processes (default 2)")
    parser.add_argument("--only", action="append", choices=("filterd", "postgrey", "trivial", "bare"),
                        help="server(s) to measure; repeatable (default: trivial, postgrey, "
                             "filterd; bare, the floor of a CPython greylister, when asked)")
    parser.add_argument("--scenario", action="append", choices=("new", "repeat"),
                        help="scenario(s); repeatable (default: both)")
    parser.add_argument("--connections", type=int, action="append",
                        help="concurrent connections; repeatable (default: 1 and 8)")
    parser.add_argument("--client-procs", type=int, default=1,
                        help="load generator processes (default 1)")
    parser.add_argument("--filterd-command",
                        default=f"{shlex.quote(sys.executable)} -m filterd serve "
                                "--config {config}",
                        help="how to start filterd; {config} is replaced by the config path")
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE,
                        help="captured Postfix policy requests (the RCPT one is the template)")
    parser.add_argument("--state-dir", type=Path, action="append",
                        help="directory for the servers' state (postgrey's database, "
                             "filterd's data_directory); repeatable, one per filesystem, "
                             "e.g. /tmp and /dev/shm: every scenario is measured in each "
                             "(default: the temp directory, $TMPDIR or /tmp)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--serve-trivial", type=int, metavar="PORT",
                        help="internal: run the built-in DUNNO server on PORT")
    args = parser.parse_args(argv)
    if args.requests is not None:
        args.seconds = None
    directories = args.state_dir or [Path(tempfile.gettempdir())]
    for directory in directories:
        if not directory.is_dir():
            parser.error(f"--state-dir {directory}: not a directory")
    types = [filesystem_type(directory) for directory in directories]
    if len(set(types)) != len(types):
        parser.error(f"--state-dir: give one directory per filesystem type (got {types})")
    args.states = dict(zip(directories, types))  # directory -> filesystem type
    return args


def exit_on_sigterm(signum: int, frame: object) -> None:
    """Turn SIGTERM (e.g. from timeout(1)) into SystemExit so servers are still stopped."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    if args.serve_trivial is not None:
        asyncio.run(serve_trivial(args.serve_trivial))
        return 0
    try:
        template = args.template.read_text()
        RequestFactory(template, 0)
    except (OSError, ValueError) as error:
        print(f"cannot use request template {args.template}: {error}", file=sys.stderr)
        return 2
    servers = args.only or ["trivial", "postgrey", "filterd"]
    scenarios = args.scenario or ["new", "repeat"]
    connection_counts = args.connections or [1, 8]
    factories = {
        "trivial": TrivialServer,
        "bare": BareServer,
        "postgrey": PostgreyServer,
        "filterd": lambda workdir: FilterdServer(workdir, args.workers, args.filterd_command),
    }
    measurements: list[Measurement] = []
    failures: dict[str, str] = {}
    states: dict[Path, str] = args.states
    with contextlib.ExitStack() as stack:
        roots = {directory: stack.enter_context(workspace(directory)) for directory in states}
        # Servers take turns on each scenario, so the two measurements behind a ratio are
        # taken back to back, not minutes apart.
        for run in range(1, args.runs + 1):
            for scenario in scenarios:
                for connections in connection_counts:
                    for directory, state in states.items():
                        for name in servers:
                            if name in failures:
                                continue
                            if args.verbose:
                                print(f"run {run}: {name} {scenario} x{connections} "
                                      f"state on {state}...", file=sys.stderr)
                            try:
                                m = run_scenario(factories[name], scenario, connections,
                                                 args, template, roots[directory])
                            except (RuntimeError, OSError) as error:
                                failures[name] = str(error)
                                continue
                            m.run, m.state = run, state
                            measurements.append(m)
    rows = ratios(measurements)
    if args.json:
        print(json.dumps({"measurements": [asdict(m) for m in measurements],
                          "ratios": rows, "failures": failures,
                          "settings": {"seconds": args.seconds, "requests": args.requests,
                                       "runs": args.runs,
                                       "filterd_workers": args.workers,
                                       "client_procs": args.client_procs,
                                       "greylist_delay": GREYLIST_DELAY,
                                       "repeat_triplets": REPEAT_TRIPLETS,
                                       "state_directories": {str(d): t for d, t in
                                                             states.items()},
                                       "cpus": os.cpu_count()}}, indent=2))
    else:
        print(format_table(measurements))
        for name, error in failures.items():
            print(f"{name}: not measured: {error.strip()}")
        print()
        print(format_ratios(rows))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
