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
import threading
import time

import filterd.registry  # noqa: F401  (installs the parameter table config reads)
from filterd.config import EMBEDDED, Config, ConfigError
from filterd.config.types import Endpoint
from filterd.eventloop import WorkerLoop
from filterd.filter.listener import FilterListener
from filterd.listener import Listener, WorkerContext, enabled, listen_endpoints
from filterd.log import flush as flush_log
from filterd.milter.listener import MilterListener
from filterd.mta.qmgr import QueueManager
from filterd.mta.smtp_agent import network_agents
from filterd.mta.listener import SmtpdListener
from filterd.policy.listener import PolicyListener

log = logging.getLogger("filterd.master")

#: Every front end ``serve`` can start, each on its ``<name>_listen``.
FRONT_ENDS: tuple[type[Listener], ...] = (PolicyListener, FilterListener, MilterListener, SmtpdListener)
_BY_NAME: dict[str, type[Listener]] = {fe.name: fe for fe in FRONT_ENDS}


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
        if family == socket.AF_INET6:
            # IPv6 only, as Postfix binds: [::]:25 beside 0.0.0.0:25 must not collide
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
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


#: Seconds the queue manager's deliveries in flight get to finish when its worker stops;
#: those still running stay in ``active`` and are delivered again at the next start.
QMGR_GRACE = 10.0
#: The supervisor's slot number for the queue manager's own process (worker slots are
#: 0, 1, ...); it has no listening socket.
QMGR_SLOT = -1

#: A worker's exit status when its greylist store turned out damaged or deleted while it
#: served: the master repairs the store (GreylistStore.verify) and starts a new worker.
STORE_DAMAGED = 3
#: worker_main's status when, with no master, it stopped to serve a configuration read
#: again on SIGHUP.
RELOAD = 4

#: Parameters only the master reads, when the daemon starts (the sockets, the workers,
#: where state and the log are): a reload keeps their values, and says that a change of
#: them needs a restart -- as Postfix needs one for inet_interfaces.
RESTART_ONLY = ("policy_listen", "filter_listen", "milter_listen", "smtpd_listen", "worker_processes", "data_directory",
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
    """Everything that can be checked without opening state, for every front end the
    configuration enables: fails before any fork."""
    for front_end in enabled(FRONT_ENDS, cfg):
        front_end.check_config(cfg)


def runs_queue_manager(cfg: Config) -> bool:
    """Whether ``cfg`` makes filterd an MTA with a queue (smtpd on): then one process of
    its own runs the queue manager and its deliveries (with one worker, the worker runs
    it), as Postfix's master always runs one qmgr beside its smtpd processes, so that
    receiving and delivering use different cores. When that process is replaced, its
    successor's queue manager waits for the lock until the old one has finished its
    deliveries in flight."""
    return bool(cfg.get("smtpd_listen"))


def uses_greylist(cfg: Config) -> bool:
    """Whether a front end ``cfg`` enables keeps greylist state (checked by the master)."""
    return any(fe.uses_greylist for fe in enabled(FRONT_ENDS, cfg))


async def worker_main(cfg: Config, listeners: dict[str, list[socket.socket]], master_pipe: int | None = None,
                      preloaded: dict[str, object] | None = None, reloaded: list[Config] | None = None,
                      queue_manager: bool = False) -> int:
    """One worker: start its front ends, serve until SIGTERM, finish requests in flight, exit.

    ``listeners`` maps front-end names to their sockets (one per endpoint). ``master_pipe`` is the read end
    of a pipe whose write end only the master holds: when the master dies, even by
    SIGKILL, the pipe reads EOF and the worker stops instead of serving on as an orphan.
    ``preloaded`` holds, by :meth:`Listener.preloads` name, what front ends built once in
    the master before the fork (the content pipeline's compiled rules and Bayes model);
    what is missing is built here, once, off the event loop, and the front ends that need
    none of it start without waiting (the entry is added, so that a worker run again in
    this process reuses it).

    ``queue_manager``: this worker also runs the queue manager (one per queue directory,
    in worker slot 0; see :func:`runs_queue_manager`).
    """
    preloaded = {} if preloaded is None else preloaded
    building: dict[str, asyncio.Task[object]] = {}
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
    running: list[Listener] = []

    async def start(name: str, socks: list[socket.socket]) -> None:
        """Build and start one front end; a failure stops the worker (the master replaces
        it), as it would if the front end had failed to start at the worker's start."""
        nonlocal status
        front_end = _BY_NAME[name]
        key = front_end.preloads(cfg)
        try:
            if key is not None and key not in preloaded:
                if key not in building:
                    building[key] = loop.create_task(asyncio.to_thread(front_end.preload, cfg))
                preloaded[key] = await building[key]
            context = WorkerContext(None if key is None else preloaded[key], store_damaged)
            listener = await front_end.from_config(cfg, context)
            running.append(listener)
            for sock in socks:
                await listener.start(sock)
        except Exception:  # noqa: BLE001 - logged; the worker stops and is replaced
            log.exception("worker failed: %s_listen could not be served", name)
            status = 1
            stop.set()

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

        for listener in running:
            listener.reload()

    # The front ends that are ready start now, in turn; one that must first build what
    # it preloads (one worker, no master to build it) does so meanwhile, off the loop.
    def ready(name: str) -> bool:
        key = _BY_NAME[name].preloads(cfg)
        return key is None or key in preloaded
    waiting = {name: socks for name, socks in listeners.items() if not ready(name)}
    for name, socks in listeners.items():
        if name not in waiting:
            await start(name, socks)
    starting = [loop.create_task(start(name, socks)) for name, socks in waiting.items()]
    loop.add_signal_handler(signal.SIGHUP, reload)
    # A SIGHUP sent while this worker started waited, blocked (so that it neither
    # killed the worker nor was lost): delivered now, it reloads what was just read.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    if master_pipe is None and _take_held_hup():  # one worker, no master: it reloads
        reload()
    qmgr: QueueManager | None = None
    qmgr_task: asyncio.Task[None] | None = None
    agents = network_agents(cfg) if queue_manager else {}
    if queue_manager:
        qmgr = QueueManager.from_config(cfg, agents)

        def qmgr_ended(task: asyncio.Task[None]) -> None:
            nonlocal status
            if not task.cancelled() and task.exception() is not None and not stop.is_set():
                log.error("queue manager failed: %r; this worker stops so that it is replaced",
                          task.exception())
                status = 1
                stop.set()
        qmgr_task = loop.create_task(qmgr.run(QMGR_GRACE))
        qmgr_task.add_done_callback(qmgr_ended)
    await stop.wait()
    if qmgr is not None and qmgr_task is not None:
        qmgr.stop()
        await asyncio.gather(qmgr_task, return_exceptions=True)
        await asyncio.gather(*(agent.close() for agent in agents.values()), return_exceptions=True)
    for task in starting:
        task.cancel()
    await asyncio.gather(*starting, *building.values(), return_exceptions=True)
    await asyncio.gather(*(listener.stop() for listener in running))
    return status


def _run_worker(cfg: Config, listeners: dict[str, list[socket.socket]], master_pipe: int | None = None,
                preloaded: dict[str, object] | None = None, reloaded: list[Config] | None = None,
                queue_manager: bool = False) -> int:
    try:
        with asyncio.Runner(loop_factory=WorkerLoop) as runner:
            return runner.run(worker_main(cfg, listeners, master_pipe, preloaded, reloaded, queue_manager))
    except Exception:  # noqa: BLE001 - logged; the master restarts the worker
        log.exception("worker failed")
        return 1
    finally:
        flush_log()  # the worker ends with os._exit, which skips logging's own shutdown


#: A SIGHUP came while starting, before anything could reload (see serve()); several
#: are one reload, as in Postfix.
_hup_held = False


def _hold_hup(signum: int, frame: object) -> None:
    global _hup_held
    _hup_held = True


def _take_held_hup() -> bool:
    """Whether a SIGHUP was held while starting; it is handed out once."""
    global _hup_held
    held, _hup_held = _hup_held, False
    return held


def serve(cfg: Config) -> int:
    """Run the configured services until SIGTERM; returns the exit status."""
    # A reload asked for while starting (loading the content rules takes seconds) waits
    # until there is something to reload, instead of killing the daemon: SIGHUP stays
    # blocked until the master (_supervise) or the single worker (worker_main) handles it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    # The mask holds only this thread: threads that imports started (OpenBLAS's pool) do
    # not block SIGHUP, and one of them taking it would kill the daemon. A handler runs
    # whichever thread takes the signal, and notes it for later.
    signal.signal(signal.SIGHUP, _hold_hup)
    check_config(cfg)
    for warning in getattr(cfg, "warnings", []):
        log.warning("%s", warning)
    os.makedirs(cfg.get("data_directory"), exist_ok=True)
    workers = cfg.get("worker_processes") or os.cpu_count() or 1
    slots: list[dict[str, list[socket.socket]]] = [{} for _ in range(workers)]
    for front_end in enabled(FRONT_ENDS, cfg):
        name = front_end.name
        for endpoint in listen_endpoints(cfg, name):
            try:
                socks = bind_slots(endpoint, workers)
            except OSError as exc:
                log.error("fatal: %s_listen: cannot listen on %s: %s", name, endpoint, exc.strerror or exc)
                return 1
            for slot, sock in zip(slots, socks):
                slot.setdefault(name, []).append(sock)
    if not slots[0]:
        log.error("nothing to serve: %s are empty", ", ".join(f"{fe.name}_listen" for fe in FRONT_ENDS))
        return 1
    if uses_greylist(cfg) and not verify_store(cfg):
        return 1  # the sockets close with the process: nobody is left waiting on them
    where = ", ".join(f"{name} on {cfg.expand(name + '_listen')}" for name in slots[0])
    log.info("daemon started -- version %s, configuration %s, %d worker(s), %s",
             _version(), cfg.source, workers, where)
    if workers == 1:
        # One process: the worker builds what front ends preload itself, off its event
        # loop, so the others serve meanwhile. Each run is given duplicates of the
        # sockets: stopping closes what it was given, and the next run (after a reload or
        # a repaired store) must find them open.
        reloaded: list[Config] = []
        preloaded: dict[str, object] = {}
        status = _run_worker(cfg, _dups(slots[0]), None, preloaded, reloaded, runs_queue_manager(cfg))
        while status in (STORE_DAMAGED, RELOAD):
            if status == RELOAD:
                cfg = reloaded.pop()
                preloaded = _preload(cfg, preloaded)
            elif uses_greylist(cfg) and not verify_store(cfg):
                return 1
            status = _run_worker(cfg, _dups(slots[0]), None, preloaded, reloaded, runs_queue_manager(cfg))
        log.info("terminating on signal")
        return status
    _freeze()
    return _supervise(cfg, slots)


def _freeze() -> None:
    """Everything loaded so far (configuration, tables, compiled rules, the Bayes model)
    lives as long as the process. Frozen, it is no longer traversed by the cyclic
    collector (measured: 17 µs less per policy request with the content rules loaded),
    and forked workers keep sharing its pages: a collection writes into every object it
    traverses, which makes the kernel copy the page."""
    gc.freeze()


def _dups(listeners: dict[str, list[socket.socket]]) -> dict[str, list[socket.socket]]:
    """New descriptors of the same listening sockets (connections waiting stay queued)."""
    dups: dict[str, list[socket.socket]] = {}
    for name, socks in listeners.items():
        for sock in socks:
            dup = sock.dup()
            dup.setblocking(False)
            dups.setdefault(name, []).append(dup)
    return dups


def _preload(cfg: Config, previous: dict[str, object] | None) -> dict[str, object]:
    """What the front ends ``cfg`` enables build once in the master (the content
    pipeline's compiled rules and model), by :meth:`Listener.preloads` name, so that the
    workers share them; on a reload, work that cannot be built again keeps what was built
    before."""
    preloaded: dict[str, object] = {}
    for front_end in enabled(FRONT_ENDS, cfg):
        key = front_end.preloads(cfg)
        if key is None or key in preloaded:
            continue
        started = time.monotonic()
        try:
            preloaded[key] = front_end.preload(cfg)
        except Exception:  # noqa: BLE001 - a reload must not stop the daemon
            if previous is None or key not in previous:
                raise
            log.exception("reload: loading the %s pipeline failed; keeping the one loaded before", key)
            preloaded[key] = previous[key]
            continue
        log.info("%s pipeline loaded in %.1fs (shared by all workers)", key, time.monotonic() - started)
    return preloaded


def _supervise(cfg: Config, slots: list[dict[str, list[socket.socket]]]) -> int:
    """Fork a worker per slot, replace those that die, pass SIGTERM on, wait for all.

    Front ends with nothing to preload start at once, in a first set of workers; once the
    master has built what the others preload (compiled content rules: up to a minute on
    a fresh data_directory), a full set of workers replaces the first, as a reload does.
    Meanwhile Postfix's connections to those front ends wait in their sockets' queues."""
    preloaded: dict[str, object] = {}
    deferred = {fe.name for fe in enabled(FRONT_ENDS, cfg) if fe.preloads(cfg) is not None}
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
                if slot == QMGR_SLOT:
                    os._exit(_run_worker(cfg, {}, alive_r, preloaded, queue_manager=True))
                listeners = {name: socks for name, socks in slots[slot].items() if name not in deferred}
                os._exit(_run_worker(cfg, listeners, alive_r, preloaded))
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
                    replace_workers()
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

    def replace_workers(keep_qmgr: bool = False) -> None:
        """A new worker per slot; the old ones stop once what is in flight is answered.
        ``keep_qmgr``: the queue manager's process stays (nothing it uses changed)."""
        for pid, (slot, _) in list(children.items()):
            if pid in retiring or (keep_qmgr and slot == QMGR_SLOT):
                continue
            retiring.add(pid)
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            spawn(slot)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # SIGHUP stays with _hold_hup until every worker is started: Python runs a signal's
    # handler in the main thread even when another thread (the preload builder, a
    # library's pool) took it, so a reload run from here while the workers are being
    # forked would reach only those forked so far.
    if runs_queue_manager(cfg):
        spawn(QMGR_SLOT)  # it needs nothing the master preloads
    if deferred and len(deferred) < len(slots[0]):
        for slot in range(len(slots)):  # the front ends that are ready now
            spawn(slot)
    # Built in a thread, so that SIGTERM meanwhile is handled at once (the main thread
    # only waits) and the daemon stops without waiting for the rules to compile.
    outcome: list[dict[str, object] | BaseException] = []

    def build() -> None:
        try:
            outcome.append(_preload(cfg, None))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            outcome.append(exc)
    builder = threading.Thread(target=build, name="filterd-preload", daemon=True)
    builder.start()
    while builder.is_alive() and not stopping:
        builder.join(0.1)
    fatal_preload = False
    if stopping:
        pass
    elif isinstance(outcome[0], BaseException):
        log.error("fatal: loading the front ends failed", exc_info=outcome[0])
        on_signal(signal.SIGTERM, None)
        fatal_preload = True
    else:
        preloaded = outcome[0]
    deferred = set()
    _freeze()
    if any(slot != QMGR_SLOT for slot, _ in children.values()):
        replace_workers(keep_qmgr=True)
    else:
        for slot in range(len(slots)):
            spawn(slot)
    # Only now: a SIGHUP that came while starting (held blocked since serve() began) is
    # passed to workers that exist, instead of to none.
    signal.signal(signal.SIGHUP, on_hup)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    if _take_held_hup():
        on_hup(signal.SIGHUP, None)
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
    if fatal_preload:
        return 1
    log.info("terminating on signal")
    return 0 if stopping else status


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("filterd")
    except PackageNotFoundError:
        return "unknown"
