"""``filterd serve``: bind the listeners, fork workers that share them, stop cleanly.

The master binds every configured listening socket once, then forks
``worker_processes`` workers (one per core by default). Each worker runs its own event
loop with its own greylist connection and accepts from the shared sockets, so the kernel
spreads connections over the cores. SIGTERM (or SIGINT) in the master is passed to the
workers, which stop accepting, answer what is in flight and exit; a worker that dies
unexpectedly is replaced (on its slot's sockets, which the master holds).

SIGHUP reads filterd.cf again, as ``postfix reload`` reads main.cf: a file with errors is
reported and changes nothing; a changed one replaces the workers (new ones start with
it, the old ones finish what is in flight); an unchanged one makes every worker re-read
the greylist whitelists (postgrey's SIGHUP). Listen addresses, the number of workers and
where state and the log go are read at start only: a reload that changes them says that
they need a restart.

The greylist store is opened by the master before any worker starts (verify_store): a
damaged file is moved aside and made anew, one that cannot be opened stops the daemon
with one message naming it, so that the port is never open with no worker able to
answer. A worker whose store turns out damaged or deleted while it serves stops with
STORE_DAMAGED, and the master repairs the store before starting its replacement.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import filterd.registry  # noqa: F401  (installs the parameter table config reads)
from filterd.config import EMBEDDED, Config, ConfigError
from filterd.config.types import Endpoint
from filterd.eventloop import WorkerLoop
from filterd.log import flush as flush_log

if TYPE_CHECKING:  # imported where used: a worker without a content filter never loads it
    from filterd.filter.server import ContentFilterServer

log = logging.getLogger("filterd.master")


def bind(endpoint: Endpoint, reuseport: bool = False) -> socket.socket:
    """A listening socket for ``endpoint`` (stale unix sockets are replaced)."""
    if endpoint.kind == "unix":
        path = endpoint.path
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        os.chmod(path, 0o660)
    else:
        family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
        # proto given explicitly: asyncio sets TCP_NODELAY only on IPPROTO_TCP sockets, and
        # without it pipelined SMTP replies wait 40 ms for the client's delayed ACK (Nagle)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((endpoint.host, endpoint.port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def bind_slots(endpoint: Endpoint, slots: int) -> list[socket.socket]:
    """One listening socket per worker slot, all on ``endpoint``.

    With one socket shared by every worker, whichever worker wakes first accepts every
    connection waiting, and Postfix's long-lived connections (smtpd's policy client,
    the smtp-amavis transport) pile up on one core. One SO_REUSEPORT socket per slot lets
    the kernel spread connections across workers. The master keeps every socket open, so
    connections queued for a worker that died wait for its replacement instead of being
    refused. A plain bind is tried first: SO_REUSEPORT would otherwise silently share
    the port with another process of this user that already holds it. Unix sockets
    cannot do this and are shared.
    """
    if endpoint.kind == "unix" or slots == 1:
        return [bind(endpoint)] * slots
    bind(endpoint).close()  # raises EADDRINUSE if anyone else listens there
    return [bind(endpoint, reuseport=True) for _ in range(slots)]


#: A worker's exit status when its greylist store turned out damaged or deleted while it
#: served: the master repairs the store (GreylistStore.verify) and starts a new worker.
STORE_DAMAGED = 3
#: worker_main's status when, with no master, it stopped to serve a configuration read
#: again on SIGHUP.
RELOAD = 4

#: Parameters only the master reads, when the daemon starts (the sockets, the workers,
#: where state and the log are): a reload keeps their values, and says that a change of
#: them needs a restart -- as Postfix needs one for inet_interfaces.
RESTART_ONLY = ("policy_listen", "filter_listen", "worker_processes", "data_directory",
                "maillog_file", "syslog_name", "log_level", "greylist_store")


def reread_config(cfg: Config) -> Config | None:
    """filterd.cf read again for SIGHUP (with the same ``-o`` overrides) and checked as at
    start; None when it has errors, which are logged: the daemon goes on serving with
    the configuration it has, as ``postfix reload`` leaves a broken main.cf unused.

    The parameters of RESTART_ONLY keep the values in use (a warning names each one the
    file changed). When the file changed, a whitelist file listed that cannot be read is
    an error: workers started with the new configuration would exempt nobody it lists.
    """
    if cfg.source == EMBEDDED:
        return cfg  # nothing to read again
    overrides = [f"{name}={s.value}" for name, s in cfg.settings.items()
                 if s.file.startswith("-o option")]
    try:
        new = Config.load(cfg.source, overrides)
        settings = dict(new.settings)
        changed = []
        for name in RESTART_ONLY:
            if new.expand(name) != cfg.expand(name):
                changed.append((name, cfg.expand(name), new.expand(name)))
            if name in cfg.settings:
                settings[name] = cfg.settings[name]
            else:
                settings.pop(name, None)
        if changed:
            new = Config(settings, new.source)
            new.validate()
        check_config(new)
        for param in ("greylist_whitelist_clients", "greylist_whitelist_recipients"):
            if same_settings(new, cfg):
                break  # the workers stay, and keep lists whose files have gone
            for path in new.get(param):
                if not path.endswith(".local") and not os.access(path, os.R_OK):
                    raise ConfigError(f"{param}: cannot read {path}")
    except (ConfigError, OSError, ValueError) as exc:
        log.error("reload: %s; still serving with the configuration read before", exc)
        return None
    except Exception:  # noqa: BLE001 - runs in the master's signal handler: never let it die
        log.exception("reload: reading the configuration failed; still serving with the "
                      "configuration read before")
        return None
    for name, old, value in changed:
        log.warning("reload: %s changed from %r to %r: this takes effect at the next restart; "
                    "still using %r", name, old, value, old)
    for warning in getattr(new, "warnings", []):
        log.warning("%s", warning)
    return new


def same_settings(a: Config, b: Config) -> bool:
    """The two configurations set the same values (where each was written aside)."""
    return ({n: s.value for n, s in a.settings.items()}
            == {n: s.value for n, s in b.settings.items()})


async def _open_services(cfg: Config, damaged: Callable[[str], None] | None = None):
    """Per-worker state: each worker opens its own greylist database connection;
    ``damaged`` is called if the store finds itself damaged while serving."""
    from filterd.greylist import Greylister, open_store
    from filterd.restrict.services import Services

    store = open_store(cfg)
    store.on_damaged = damaged
    greylister = Greylister(cfg, store, cfg.get("myhostname"))
    await greylister.start()
    return Services(cfg, greylister=greylister)


def verify_store(cfg: Config) -> bool:
    """Open the greylist store in the master, before any worker, and repair it if it is
    damaged; False (with one fatal line naming the database) when it cannot be used.

    Why: workers that cannot open it die at once and are replaced, while the master
    keeps the port open -- Postfix then waits out its policy timeout on every message.
    Refusing to start closes the port: Postfix answers 451 4.3.5 at once and retries.
    """
    from filterd.greylist import open_store
    from filterd.greylist.store import StoreUnavailable

    try:
        note = open_store(cfg).verify()
    except StoreUnavailable as exc:
        log.error("fatal: %s", exc)
        return False
    if note:
        log.error("%s", note)
    return True


def check_config(cfg: Config) -> None:
    """Everything that can be checked without opening state: fails before any fork."""
    from filterd.policy.service import PolicyService
    from filterd.restrict.registry import build_engine
    from filterd.restrict.services import Services

    PolicyService(build_engine(cfg, Services(cfg))).check_config()


async def worker_main(cfg: Config, listeners: dict[str, socket.socket], master_pipe: int | None = None,
                      preloaded: object | None = None, reloaded: list[Config] | None = None) -> int:
    """One worker: open state, serve until SIGTERM, finish requests in flight, exit.

    ``master_pipe`` is the read end of a pipe whose write end only the master holds:
    when the master dies, even by SIGKILL, the pipe reads EOF and the worker stops
    instead of serving on as an orphan. ``preloaded`` holds the content pipeline's
    compiled rules and Bayes model, built once by the master before the fork.
    """
    from filterd.policy.server import PolicyServer
    from filterd.policy.service import PolicyService
    from filterd.restrict.registry import build_engine

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    status = 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def store_damaged(what: str) -> None:
        nonlocal status
        log.error("greylist store unusable (%s); this worker stops so that it is repaired", what)
        status = STORE_DAMAGED
        stop.set()
    if master_pipe is not None:
        def master_gone() -> None:
            log.warning("master process has gone away; stopping")
            loop.remove_reader(master_pipe)
            stop.set()

        loop.add_reader(master_pipe, master_gone)
    services = await _open_services(cfg, store_damaged)

    def reload() -> None:
        """SIGHUP, as postgrey: re-read the greylist whitelist files (tables reload
        by themselves when their files change). With no master (one worker), read
        filterd.cf again first: when it changed, stop, and ``serve`` starts this worker
        again with it (in ``reloaded``)."""
        nonlocal status
        if master_pipe is None and reloaded is not None:
            new = reread_config(cfg)
            if new is None:
                return
            if not same_settings(new, cfg):
                log.info("reload: configuration %s read again; restarting the service", new.source)
                reloaded.append(new)
                status = RELOAD
                stop.set()
                return

        async def run() -> None:
            try:
                await asyncio.to_thread(services.greylister.reload_whitelists)
                log.info("reloaded greylist whitelists on SIGHUP")
            except Exception:  # noqa: BLE001 - keep the old lists, say why
                log.exception("reloading greylist whitelists failed; keeping the old ones")
        loop.create_task(run())

    loop.add_signal_handler(signal.SIGHUP, reload)
    # A SIGHUP sent while this worker started waited, blocked (so that it neither
    # killed the worker nor was lost): delivered now, it reloads what was just read.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    servers: list[PolicyServer | ContentFilterServer] = []
    if "policy" in listeners:
        server = PolicyServer.from_config(cfg, PolicyService(build_engine(cfg, services)))
        await server.start(listeners["policy"])
        servers.append(server)
    if "filter" in listeners:
        from filterd.content.pipeline import ContentPipeline
        from filterd.filter.server import ContentFilterServer

        pipeline = ContentPipeline.from_config(cfg, preloaded)  # type: ignore[arg-type]
        content_filter = ContentFilterServer.from_config(cfg, pipeline)
        await content_filter.start(listeners["filter"])
        servers.append(content_filter)
    await stop.wait()
    grace = cfg.get("policy_shutdown_grace")
    await asyncio.gather(*(s.stop(grace) for s in servers))
    await services.close()
    return status


def _run_worker(cfg: Config, listeners: dict[str, socket.socket], master_pipe: int | None = None,
                preloaded: object | None = None, reloaded: list[Config] | None = None) -> int:
    try:
        with asyncio.Runner(loop_factory=WorkerLoop) as runner:
            return runner.run(worker_main(cfg, listeners, master_pipe, preloaded, reloaded))
    except Exception:  # noqa: BLE001 - logged; the master restarts the worker
        log.exception("worker failed")
        return 1
    finally:
        flush_log()  # the worker ends with os._exit, which skips logging's own shutdown


def serve(cfg: Config) -> int:
    """Run the configured services until SIGTERM; returns the exit status."""
    # A reload asked for while starting (loading the content rules takes seconds) waits
    # until there is something to reload, instead of killing the daemon: SIGHUP stays
    # blocked until the master (_supervise) or the single worker (worker_main) handles it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    check_config(cfg)
    for warning in getattr(cfg, "warnings", []):
        log.warning("%s", warning)
    os.makedirs(cfg.get("data_directory"), exist_ok=True)
    preloaded = _preload(cfg, None)
    workers = cfg.get("worker_processes") or os.cpu_count() or 1
    slots: list[dict[str, socket.socket]] = [{} for _ in range(workers)]
    for name in ("policy", "filter"):
        endpoint = cfg.get(f"{name}_listen")
        if endpoint is None:
            continue
        try:
            socks = bind_slots(endpoint, workers)
        except OSError as exc:
            log.error("fatal: %s_listen: cannot listen on %s: %s", name, endpoint, exc.strerror or exc)
            return 1
        for slot, sock in zip(slots, socks):
            slot[name] = sock
    if not slots[0]:
        log.error("nothing to serve: policy_listen and filter_listen are empty")
        return 1
    if not verify_store(cfg):
        return 1  # the sockets close with the process: nobody is left waiting on them
    # Everything loaded so far (configuration, tables, compiled rules, the Bayes model)
    # lives as long as the process. Frozen, it is no longer traversed by the cyclic
    # collector (measured: 17 µs less per policy request with the content rules loaded),
    # and forked workers keep sharing its pages: a collection writes into every object
    # it traverses, which makes the kernel copy the page.
    gc.freeze()
    where = ", ".join(f"{name} on {cfg.expand(name + '_listen')}" for name in slots[0])
    log.info("daemon started -- version %s, configuration %s, %d worker(s), %s",
             _version(), cfg.source, workers, where)
    if workers == 1:
        # Each run is given duplicates of the sockets: stopping closes what it was given,
        # and the next run (after a reload or a repaired store) must find them open.
        reloaded: list[Config] = []
        status = _run_worker(cfg, _dups(slots[0]), None, preloaded, reloaded)
        while status in (STORE_DAMAGED, RELOAD):
            if status == RELOAD:
                cfg = reloaded.pop()
                preloaded = _preload(cfg, preloaded)
            elif not verify_store(cfg):
                return 1
            status = _run_worker(cfg, _dups(slots[0]), None, preloaded, reloaded)
        log.info("terminating on signal")
        return status
    return _supervise(cfg, slots, preloaded)


def _dups(listeners: dict[str, socket.socket]) -> dict[str, socket.socket]:
    """New descriptors of the same listening sockets (connections waiting stay queued)."""
    dups = {}
    for name, sock in listeners.items():
        dup = sock.dup()
        dup.setblocking(False)
        dups[name] = dup
    return dups


def _preload(cfg: Config, previous: object | None) -> object | None:
    """The content pipeline's compiled rules and model for ``cfg``, built in the master
    so that the workers share them; on a reload that cannot build them, the previous."""
    if cfg.get("filter_listen") is None:
        return None
    from filterd.content.pipeline import Preloaded

    started = time.monotonic()
    if previous is None:
        preloaded = Preloaded.from_config(cfg)
    else:
        try:
            preloaded = Preloaded.from_config(cfg)
        except Exception:  # noqa: BLE001 - a reload must not stop the daemon
            log.exception("reload: loading the content pipeline failed; keeping the one loaded before")
            return previous
    log.info("content pipeline loaded in %.1fs (shared by all workers)", time.monotonic() - started)
    return preloaded


def _supervise(cfg: Config, slots: list[dict[str, socket.socket]], preloaded: object | None) -> int:
    """Fork a worker per slot, replace those that die, pass SIGTERM on, wait for all."""
    stopping = False
    fatal = False  # stopping because the greylist store cannot be used
    children: dict[int, tuple[int, float]] = {}  # pid -> (slot, started)
    retiring: set[int] = set()  # workers told to stop after a reload, already replaced
    reloading = False
    reload_again = False
    alive_r, alive_w = os.pipe()  # workers watch alive_r: EOF means the master died
    forwarded = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}

    def spawn(slot: int) -> None:
        """Fork a worker, unless stopping. The forwarded signals are blocked across the
        fork: a SIGTERM handled between the fork and ``children`` learning the new pid
        would not reach the new worker, and one reaching the child before it resets its
        handlers would run the master's handler there and be lost."""
        if stopping:
            return
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, forwarded)
        try:
            pid = os.fork()
            if pid == 0:
                os.close(alive_w)
                for sig in forwarded:
                    signal.signal(sig, signal.SIG_DFL)
                # SIGHUP stays blocked until the worker's loop handles it (worker_main).
                signal.pthread_sigmask(signal.SIG_SETMASK, mask | {signal.SIGHUP})
                os._exit(_run_worker(cfg, slots[slot], alive_r, preloaded))
            children[pid] = (slot, time.monotonic())
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def on_hup(signum: int, frame: object) -> None:
        """Read filterd.cf again. Errors: logged, nothing changes. Unchanged: the
        workers re-read their whitelist files (postgrey's SIGHUP). Changed: a new
        worker per slot with the new configuration, and the old ones stop once their
        requests in flight are answered (Postfix's smtpd reconnects on its next
        request), as ``postfix reload`` does with its daemons."""
        nonlocal cfg, preloaded, reloading, reload_again
        if reloading:  # a SIGHUP while reloading: once more when this one is done
            reload_again = True
            return
        reloading = True
        try:
            while True:
                reload_again = False
                new = reread_config(cfg)
                if new is not None and not same_settings(new, cfg):
                    preloaded = _preload(new, preloaded)
                    cfg = new
                    log.info("reload: configuration %s read again; replacing the workers", cfg.source)
                    for pid, (slot, _) in list(children.items()):
                        if pid in retiring:
                            continue
                        retiring.add(pid)
                        try:
                            os.kill(pid, signal.SIGTERM)
                        except ProcessLookupError:
                            pass
                        spawn(slot)
                elif new is not None:
                    for pid in list(children):
                        if pid not in retiring:
                            try:
                                os.kill(pid, signal.SIGHUP)
                            except ProcessLookupError:
                                pass
                if not reload_again:
                    break
        finally:
            reloading = False

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    for slot in range(len(slots)):
        spawn(slot)
    # Only now: a SIGHUP that came while starting (held blocked since serve() began) is
    # passed to workers that exist, instead of to none.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    status = 0
    while children:
        try:
            pid, wstatus = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        child = children.pop(pid, None)
        if child is None:
            continue
        if pid in retiring:  # replaced after a reload: its slot has a new worker
            retiring.discard(pid)
            continue
        slot, started = child
        code = os.waitstatus_to_exitcode(wstatus)
        if stopping:
            continue
        quick = time.monotonic() - started < 1.0
        if code == STORE_DAMAGED or quick:
            # Repair the store, or refuse to go on: a worker that cannot open it would
            # die again and again while the port stays open and nobody answers.
            if not verify_store(cfg):
                fatal = True
                on_signal(signal.SIGTERM, None)
                continue
        if code == STORE_DAMAGED:
            log.warning("worker %d stopped for its greylist store; starting a new one", pid)
            spawn(slot)
            continue
        log.warning("worker %d exited with status %d; starting a new one", pid, code)
        status = 1
        if quick:
            time.sleep(1.0)  # a worker that dies at once must not make the master spin
        spawn(slot)
    if fatal:
        log.error("fatal: stopped, the greylist store cannot be used")
        return 1
    log.info("terminating on signal")
    return 0 if stopping else status


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("filterd")
    except PackageNotFoundError:
        return "unknown"
