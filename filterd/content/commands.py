"""``filterd check`` (``spamassassin -t`` / ``rspamc`` for filterd) and ``filterd quarantine``.

``check`` runs the very pipeline the content filter runs, offline, and shows each
message's verdict with every symbol, so an administrator sees why mail was scored as it
was: every stage runs even where the server stops early (a failed virus scan, a blocked
virus), so the score and every rule that fired are always shown, while the action shown
is what the server would do. Its exit status, like clamdscan's and ``spamassassin -e``'s,
lets a script act on the result (:data:`EXIT_CLEAN` ... :data:`EXIT_TEMPFAIL`; the
``--help`` text in :mod:`filterd.cli` says the same). ``quarantine`` lists, shows,
releases (reinjects to the original recipients through ``filter_forward``) and deletes
quarantined messages.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any, TextIO

from filterd.config import ConfigError
from filterd.content.message import Message
from filterd.content.pipeline import ContentPipeline
from filterd.content.quarantine import Quarantine, QuarantineEntry, QuarantineError
from filterd.content.verdict import Verdict, format_score
from filterd.smtp.client import Forwarder
from filterd.text import printable

#: ``filterd check`` exit status: the highest that applies to any of the messages.
EXIT_CLEAN = 0  # every message CLEAN: the content filter passes it, nothing found
EXIT_FOUND = 1  # spam (spam_tag2_level), virus, banned, UNCHECKED, or a header/body checks decision
EXIT_ERROR = 2  # a file or the configuration could not be read (argparse also exits 2)
EXIT_TEMPFAIL = 3  # a check could not run now: the content filter would answer 451


def exit_status(verdict: Verdict) -> int:
    """What one verdict means for ``filterd check``'s exit status."""
    if verdict.action == "tempfail":
        return EXIT_TEMPFAIL
    return EXIT_CLEAN if verdict.category == "CLEAN" else EXIT_FOUND


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return f.read()


def verdict_json(name: str, verdict: Verdict) -> dict[str, Any]:
    return {
        "file": name,
        "action": verdict.action,
        "category": verdict.category,
        "reason": verdict.reason,
        "score": verdict.score,
        "reply": str(verdict.reply) if verdict.reply else None,
        "symbols": [{"name": s.name, "score": s.score, "description": s.description,
                     "evidence": s.evidence} for s in verdict.symbols],
    }


def print_report(name: str, verdict: Verdict, pipeline: ContentPipeline, out: TextIO) -> None:
    """A ``spamassassin -t``-style report: verdict, score, then one line per symbol."""
    p = pipeline.policy
    out.write(f"{name}: {verdict.action} ({verdict.category}), score {format_score(verdict.score)} "
              f"(tag {format_score(p.tag_level)}, tag2 {format_score(p.tag2_level)}, "
              f"kill {format_score(p.kill_level)})\n")
    if verdict.reply is not None:
        out.write(f"  reply: {verdict.reply}\n")
    elif verdict.category != "CLEAN":
        out.write(f"  reason: {verdict.reason}\n")
    if not verdict.symbols:
        out.write("  no symbols\n")
        return
    out.write("   pts rule name               description\n")
    out.write("------ ----------------------- ------------------------------------------------\n")
    for s in sorted(verdict.symbols, key=lambda s: (-s.score, s.name)):
        out.write(f"{format_score(s.score):>6} {s.name:<23} {s.description}\n")
        if s.evidence:
            out.write(f"{'':>6} {'':<23} [{s.evidence}]\n")


def check_command(cfg: Any, files: list[str], json_out: bool) -> int:
    """Scan each file (``-`` is standard input); the exit status is the highest of
    :func:`exit_status` over the messages, :data:`EXIT_ERROR` for a file not read."""
    return asyncio.run(_check(cfg, files, json_out, sys.stdout))


async def _check(cfg: Any, files: list[str], json_out: bool, out: TextIO) -> int:
    try:
        pipeline = ContentPipeline.from_config(cfg)
    except (ConfigError, ValueError, OSError) as exc:  # a table or rule file that cannot be used
        print(f"filterd: fatal: {exc}", file=sys.stderr)
        return EXIT_ERROR
    status = EXIT_CLEAN
    try:
        if not json_out:
            off = f" (no virus scanning: {pipeline.clamav_off})" if pipeline.clamav_off else ""
            out.write(f"content checks: {', '.join(pipeline.stages) or 'none'}{off}\n")
        for name in files:
            try:
                raw = _read(name)
            except OSError as exc:
                print(f"filterd: {name}: {exc.strerror or exc}", file=sys.stderr)
                status = max(status, EXIT_ERROR)
                continue
            verdict = await pipeline.scan(Message(raw), full=True)
            status = max(status, exit_status(verdict))
            if json_out:
                out.write(json.dumps(verdict_json(name, verdict)) + "\n")
            else:
                print_report(name, verdict, pipeline, out)
    finally:
        pipeline.close()
    return status


def quarantine_command(cfg: Any, action: str, ids: list[str], *, kind: str | None = None,
                       limit: int = 100, json_out: bool = False) -> int:
    """``list`` (newest first), ``show ID``, ``release ID...``, ``delete ID...``."""
    return asyncio.run(_quarantine(cfg, action, ids, kind, limit, sys.stdout, json_out))


def entry_json(entry: QuarantineEntry) -> dict[str, Any]:
    """One index entry for ``quarantine list --json`` (one object per line, as ``postqueue -j``)."""
    return {
        "id": entry.id, "time": entry.time, "kind": entry.kind, "sender": entry.sender,
        "recipients": entry.recipients, "reason": entry.reason, "score": entry.score,
        "size": entry.size, "client_address": entry.client_address, "subject": entry.subject,
        "released_at": entry.released_at, "released_how": entry.released_how,
    }


async def _quarantine(cfg: Any, action: str, ids: list[str], kind: str | None, limit: int,
                      out: TextIO, json_out: bool = False) -> int:
    quarantine = Quarantine(cfg)
    await quarantine.open()
    status = 0
    try:
        if action == "list":
            entries = await quarantine.list(kind, limit)
            if json_out:
                out.writelines(json.dumps(entry_json(e)) + "\n" for e in entries)
                return 0
            if not entries:
                out.write(f"the quarantine holds no {kind} messages\n" if kind else "the quarantine is empty\n")
            for e in entries:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time))
                released = " released" if e.released_at else ""
                score = format_score(e.score) if e.score is not None else "-"
                out.write(printable(f"{e.id}  {when}  <{e.sender}> -> {','.join(f'<{r}>' for r in e.recipients)}  "
                                     f"score={score}  {e.reason}{released}") + "\n")
            return 0
        for qid in ids:
            try:
                status |= await _one(cfg, quarantine, action, qid, out)
            except KeyError as exc:
                print(f"filterd: {exc.args[0]}", file=sys.stderr)
                status = 1
            except QuarantineError as exc:
                print(f"filterd: {exc}", file=sys.stderr)
                status = 1
    finally:
        await quarantine.close()
    return status


async def _one(cfg: Any, quarantine: Quarantine, action: str, qid: str, out: TextIO) -> int:
    if action == "delete":
        await quarantine.delete(qid)
        out.write(f"{qid}: deleted\n")
        return 0
    entry, raw = await quarantine.get(qid)
    if action == "show":
        out.write(f"Quarantine-ID: {entry.id}\nKind: {entry.kind}\nReason: {printable(entry.reason)}\n"
                  f"Sender: <{printable(entry.sender)}>\n"
                  f"Recipients: {printable(', '.join(f'<{r}>' for r in entry.recipients))}\n"
                  f"Client: [{entry.client_address}]\n\n")
        if out is sys.stdout:
            out.flush()
            sys.stdout.buffer.write(raw)  # the stored bytes, exactly
        else:
            out.write(raw.decode("utf-8", "replace"))
        return 0
    forwarder = Forwarder(cfg.get("filter_forward"), cfg.get("filter_timeout"), cfg.get("myhostname"))
    try:
        result = await forwarder.send(entry.sender, entry.recipients, raw)
    finally:
        await forwarder.close()
    summary = result.summary()
    if not summary.ok:
        print(f"filterd: {qid}: release failed: {summary}", file=sys.stderr)
        return 1
    await quarantine.mark_released(qid, str(summary))
    out.write(f"{qid}: released to {', '.join(f'<{r}>' for r in entry.recipients)}: {summary}\n")
    return 0
