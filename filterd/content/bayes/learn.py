"""``filterd learn --spam PATH... --ham PATH...``: sa-learn for filterd's Bayes model.

Each PATH may be a message file, an mbox file (recognised by its leading ``From `` line),
a Maildir (only ``cur/`` and ``new/`` are read) or a directory of any of these, walked
recursively. Like sa-learn, files named ``cmds`` (the SpamAssassin corpus's index files)
and hidden files are skipped, and a message learned before as the same class is not
counted again, so the command can be re-run on a growing corpus.

Also runnable as ``python -m filterd.content.bayes.learn [-c filterd.cf] --spam ... --ham ...``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import IO

from filterd.config import Config
from filterd.content.bayes.check import BayesClassifier
from filterd.content.bayes.model import BayesModelError
from filterd.content.message import Message

#: Messages parsed and vectorized together (bounds memory on huge mbox files).
CHUNK = 500
_SKIPPED_NAMES = frozenset(("cmds",))


def iter_messages(path: str) -> Iterator[bytes]:
    """Raw messages found at ``path`` (file, mbox, Maildir or directory tree), in name order."""
    if not os.path.isdir(path):
        yield from _read_file(path)
        return
    for root, dirs, files in os.walk(path):
        if {"cur", "new", "tmp"} <= set(dirs):
            dirs[:] = ["cur", "new"]  # a Maildir: tmp/ holds deliveries in progress
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name in _SKIPPED_NAMES or name.startswith("."):
                continue
            yield from _read_file(os.path.join(root, name))


def _read_file(path: str) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        if fh.read(5) == b"From ":
            fh.seek(0)
            yield from split_mbox(fh)
            return
        fh.seek(0)
        yield fh.read()


def split_mbox(lines: Iterable[bytes]) -> Iterator[bytes]:
    """Messages of an mbox: split at ``From `` lines, ``>From`` quoting undone (mboxrd)."""
    current: list[bytes] | None = None
    previous_blank = True
    for line in lines:
        if line.startswith(b"From ") and previous_blank:
            if current:
                yield _strip_last_newline(b"".join(current))
            current = []
        elif current is not None:
            if line.startswith(b">") and line.lstrip(b">").startswith(b"From "):
                line = line[1:]
            current.append(line)
        previous_blank = line in (b"\n", b"\r\n")
    if current:
        yield _strip_last_newline(b"".join(current))


def _strip_last_newline(data: bytes) -> bytes:
    """The blank line before the next ``From `` belongs to the mbox format, not the message."""
    if data.endswith(b"\r\n\r\n"):
        return data[:-2]
    if data.endswith(b"\n\n"):
        return data[:-1]
    return data


def _chunks(items: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    while chunk := list(islice(items, size)):
        yield chunk


def learn_command(cfg: Config, spam: list[str], ham: list[str],
                  out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Learn the messages under ``spam`` and ``ham`` paths; returns the exit status.

    Reports go to ``out`` and ``err`` (standard output and error by default).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    if not spam and not ham:
        print("filterd learn: nothing to learn: give --spam PATH... and/or --ham PATH...", file=err)
        return 2
    missing = [p for p in (*spam, *ham) if not os.path.exists(p)]
    if missing:
        for p in missing:
            print(f"filterd learn: {p}: no such file or directory", file=err)
        return 2
    classifier = BayesClassifier(cfg)
    learned = examined = 0
    try:
        for paths, is_spam in ((spam, True), (ham, False)):
            for path in paths:
                for chunk in _chunks(iter_messages(path), CHUNK):
                    n, m = classifier.learn((Message(raw) for raw in chunk), is_spam)
                    learned += n
                    examined += m
        classifier.save()
    except (BayesModelError, OSError) as exc:
        print(f"filterd learn: {exc}", file=err)
        return 1
    print(f"Learned tokens from {learned} message(s) ({examined} message(s) examined)", file=out)
    print(classifier.describe(), file=out)
    return 0
