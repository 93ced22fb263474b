"""``filterd queue``: Postfix's postqueue, postsuper and postcat for filterd's queue.

=====================================  ====================================
filterd queue list                     postqueue -p (mailq)
filterd queue list --json              postqueue -j
filterd queue flush                    postqueue -f
filterd queue flush-site DOMAIN        postqueue -s DOMAIN
filterd queue hold ID...|ALL [QUEUE]   postsuper -h
filterd queue release ID...|ALL        postsuper -H
filterd queue delete ID...|ALL [QUEUE] postsuper -d
filterd queue requeue ID...|ALL [QUEUE] postsuper -r
filterd queue cat ID                   postcat -q
=====================================  ====================================

The output keeps Postfix's shapes, so scripts written for mailq and postqueue -j keep
working. The tools work on the files directly and one message at a time: a queue of
any length is listed in constant memory, and a message the queue manager moves or
delivers meanwhile is skipped, not an error. Flushing moves deferred mail to
``incoming`` with its retry time set to now; the queue manager takes it from there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import IO, Iterable, Iterator, TextIO

from filterd.config import Config
from filterd.mta import maillog
from filterd.mta.queue import ACTIVE, DEFERRED, FLUSHED_MTIME, HOLD, INCOMING, QUEUE_NAMES, Queue, QueueEntry, QueueError
from filterd.mta.queuefile import Envelope, QueueFileError, iter_content, read_envelope
from filterd.mta.trigger import Waker
from filterd.text import printable_ascii

LISTED = (INCOMING, ACTIVE, DEFERRED, HOLD)
"""Queues that postqueue -p shows, in its order."""
STATUS_CHAR = {ACTIVE: "*", HOLD: "!"}
EMPTY_SENDER = "MAILER-DAEMON"
"""How postqueue shows the null sender (Postfix's empty_address_recipient)."""

# postsuper's default queues per operation (its manual page).
HOLD_FROM = (INCOMING, ACTIVE, DEFERRED)
RELEASE_FROM = (HOLD,)
DELETE_FROM = (HOLD, INCOMING, ACTIVE, DEFERRED)
REQUEUE_FROM = (INCOMING, HOLD, ACTIVE, DEFERRED)
"""incoming first: what the others move there is not seen twice."""


def _asctime(when: float) -> str:
    """``Sun Dec  6 06:57:58``: asctime() without the year, as postqueue prints it."""
    return time.strftime("%a %b %e %H:%M:%S", time.localtime(when))


def _messages(queue: Queue, names: Iterable[str], warn: TextIO) -> Iterator[tuple[QueueEntry, Envelope]]:
    """Each complete, readable message of the named queues, one at a time."""
    for name in names:
        for entry in queue.scan(name):
            if not entry.complete:
                continue
            try:
                envelope = queue.read_envelope(name, entry.qid)
            except QueueError:
                continue  # moved or removed meanwhile
            except QueueFileError as exc:
                warn.write(f"filterd: warning: {name}/{entry.qid}: unreadable queue file: {exc}\n")
                continue
            yield entry, envelope


def list_queue(queue: Queue, out: TextIO, warn: TextIO = sys.stderr) -> int:
    """postqueue -p: one block per message; delay reasons in parentheses, right-aligned."""
    count = 0
    total = 0
    for entry, env in _messages(queue, LISTED, warn):
        out.write("-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------\n"
                  if count == 0 else "\n")
        count += 1
        total += entry.size
        sender = printable_ascii(env.sender) or EMPTY_SENDER
        out.write(f"{entry.qid:<10}{STATUS_CHAR.get(entry.queue, ' ')}{env.content_size:>8} "
                  f"{_asctime(env.arrival):<20} {sender}\n")
        reasons = queue.read_defer_log(entry.qid)
        shown: str | None = None
        for r in env.pending:
            reason = reasons.get(r.address)
            if reason is not None and reason != shown:
                shown = reason
                out.write(f"{'':>{max(0, 76 - len(reason))}}({printable_ascii(reason)})\n")
            out.write(f"{'':41}{printable_ascii(r.address)}\n")
    if count == 0:
        out.write("Mail queue is empty\n")
    else:
        out.write(f"\n-- {total // 1024} Kbytes in {count} Request{'' if count == 1 else 's'}.\n")
    return 0


def list_json(queue: Queue, out: TextIO, warn: TextIO = sys.stderr) -> int:
    """postqueue -j: one JSON object per message and line."""
    for entry, env in _messages(queue, LISTED, warn):
        reasons = queue.read_defer_log(entry.qid)
        recipients = []
        for r in env.pending:
            item = {"address": r.address}
            if r.address in reasons:
                item["delay_reason"] = reasons[r.address]
            recipients.append(item)
        out.write(json.dumps({
            "queue_name": entry.queue, "queue_id": entry.qid, "arrival_time": int(env.arrival),
            "message_size": env.content_size, "forced_expire": False, "sender": env.sender,
            "recipients": recipients,
        }, ensure_ascii=True) + "\n")
    return 0


def flush(queue: Queue, site: str | None = None) -> int:
    """postqueue -f / -s: deferred mail (for ``site`` only, when given) becomes due now
    and moves to ``incoming``, marked as flushed. Returns how many messages moved."""
    moved = 0
    site = site.lower().rstrip(".") if site else None
    for entry in queue.scan(DEFERRED):
        if site is not None:
            try:
                env = queue.read_envelope(DEFERRED, entry.qid)
            except (QueueError, QueueFileError):
                continue
            if not any(r.address.rpartition("@")[2].lower().rstrip(".") == site for r in env.pending):
                continue
        try:
            queue.move(entry.qid, DEFERRED, INCOMING, retry_at=FLUSHED_MTIME)
        except QueueError:
            continue
        moved += 1
    return moved


def _targets(queue: Queue, targets: list[str], default_queues: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """(queue, id) pairs named by postsuper-style arguments: ``ID...`` or ``ALL``,
    optionally ending with a queue name that narrows the search."""
    names = default_queues
    if targets and targets[-1] in QUEUE_NAMES:
        names = (targets[-1],)
        targets = targets[:-1]
    if not targets:
        raise QueueError("name a queue id or ALL")
    if targets == ["ALL"]:
        for name in names:
            for entry in queue.scan(name):
                yield name, entry.qid
        return
    for qid in targets:
        found = queue.find(qid)
        if found is None or found not in names:
            raise QueueError(f"{qid}: no such message in the {', '.join(names)} queue"
                             f"{'' if len(names) == 1 else 's'}")
        yield found, qid


def _apply(queue: Queue, targets: list[str], default_queues: tuple[str, ...], action: str,
           log_line: str, warn: TextIO) -> int:
    from filterd.log import event

    now = time.time()
    done = 0
    for name, qid in _targets(queue, targets, default_queues):
        try:
            if action == "delete":
                queue.remove(name, qid)
            elif action == "hold":
                if name == HOLD:
                    continue
                queue.move(qid, name, HOLD)
            elif action == "release":
                queue.move(qid, name, DEFERRED, retry_at=now)
            else:  # requeue
                if name == INCOMING:
                    os.utime(queue.path(INCOMING, qid), (now, now))
                else:
                    queue.move(qid, name, INCOMING, retry_at=now)
        except QueueError:
            continue  # delivered or moved meanwhile
        except OSError as exc:
            warn.write(f"filterd: warning: {name}/{qid}: {exc}\n")
            continue
        event("postsuper", maillog.postsuper(qid, log_line))
        done += 1
    return done


def hold(queue: Queue, targets: list[str], warn: TextIO = sys.stderr) -> int:
    return _apply(queue, targets, HOLD_FROM, "hold", "placed on hold", warn)


def release(queue: Queue, targets: list[str], warn: TextIO = sys.stderr) -> int:
    return _apply(queue, targets, RELEASE_FROM, "release", "released from hold", warn)


def delete(queue: Queue, targets: list[str], warn: TextIO = sys.stderr) -> int:
    return _apply(queue, targets, DELETE_FROM, "delete", "removed", warn)


def requeue(queue: Queue, targets: list[str], warn: TextIO = sys.stderr) -> int:
    return _apply(queue, targets, REQUEUE_FROM, "requeue", "requeued", warn)


def cat(queue: Queue, qid: str, out: IO[bytes]) -> int:
    """postcat -q: the envelope records, then the message as stored."""
    name = queue.find(qid)
    if name is None:
        raise QueueError(f"{qid}: no such message in the queue")
    fd = queue.open(name, qid)
    try:
        try:
            env = read_envelope(fd)
        except QueueFileError as exc:
            raise QueueError(f"{name}/{qid}: unreadable queue file: {exc}") from None
        where = f"{name}/{qid}"
        lines = [f"*** ENVELOPE RECORDS {where} ***",
                 f"message_size: {env.content_size:>16}",
                 f"message_arrival_time: {time.ctime(env.arrival)}",
                 f"sender: {env.sender}"]
        lines += [f"named_attribute: {k}={v}" for k, v in env.attributes.items()]
        for r in env.recipients:
            if r.orcpt:
                lines.append(f"original_recipient: {r.orcpt}")
            if r.notify:
                lines.append(f"dsn_notify: {r.notify}")
            lines.append(f"{'done_recipient' if r.done else 'recipient'}: {r.address}")
        lines.append(f"delay_warning: {'sent' if env.warned else 'pending'}")
        lines.append(f"*** MESSAGE CONTENTS {where} ***")
        out.write(("\n".join(printable_ascii(line) for line in lines) + "\n").encode())
        last = b"\n"
        for chunk in iter_content(fd, env):
            out.write(chunk)
            last = chunk[-1:] or last
        if last != b"\n":
            out.write(b"\n")
        out.write(f"*** HEADER EXTRACTED {where} ***\n*** MESSAGE FILE END {where} ***\n".encode())
    finally:
        os.close(fd)
    return 0


def _wake(queue: Queue) -> None:
    """Tell a running queue manager that ``incoming`` changed (postqueue -f triggers
    qmgr the same way); without one, the mail waits for its start."""
    waker = Waker(queue.directory)
    waker.wake()
    waker.close()


def queue_command(cfg: Config, args: argparse.Namespace) -> int:
    """Run one ``filterd queue`` action (``args.queue_command``, parsed by filterd.cli)
    with the configuration the daemon would use."""
    from filterd.log import flush as flush_log
    from filterd.log import setup_logging

    queue = Queue(cfg.get("queue_directory"))
    if not os.path.isdir(queue.dir(INCOMING)):
        print(f"filterd: fatal: no queue at {queue.directory}", file=sys.stderr)
        return 1
    action = args.queue_command
    try:
        if action == "list":
            return (list_json if args.json else list_queue)(queue, sys.stdout)
        if action == "cat":
            sys.stdout.flush()
            return cat(queue, args.id, sys.stdout.buffer)
        if action in ("flush", "flush-site"):
            moved = flush(queue, args.site if action == "flush-site" else None)
            _wake(queue)
            print(f"filterd: flushed {moved} message{'' if moved == 1 else 's'}", file=sys.stderr)
            return 0
        setup_logging(cfg)
        run = {"hold": hold, "release": release, "delete": delete, "requeue": requeue}[action]
        count = run(queue, args.targets)
        if action == "requeue":
            _wake(queue)
        flush_log()
        verb = {"hold": "Placed on hold", "release": "Released from hold", "delete": "Deleted",
                "requeue": "Requeued"}[action]
        print(f"filterd: {verb}: {count} message{'' if count == 1 else 's'}", file=sys.stderr)
        return 0
    except QueueError as exc:
        print(f"filterd: fatal: {exc}", file=sys.stderr)
        return 1
