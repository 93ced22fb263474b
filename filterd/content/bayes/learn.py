"""``filterd learn --spam PATH... --ham PATH...``: sa-learn for filterd's Bayes model.

Each PATH may be a message file, an mbox file (recognised by its leading ``From `` line),
a Maildir (only ``cur/`` and ``new/`` are read) or a directory of any of these, walked
recursively. Like sa-learn, files named ``cmds`` (the SpamAssassin corpus's index files)
and hidden files are skipped, and a message learned before as the same class is not
counted again, so the command can be re-run on a growing corpus.

After the Bayes model, the same messages fit the score scale (``scale.py``): the score
rules run on every message, a Bayes model learned on k-1 folds gives the other fold its
probability (in bins finer than the BAYES_xx bands), and the points of every symbol are fitted so that ``spam_tag2_level`` is
the cross-validated decision. ``--report`` prints the cross-validated figures (without
PATHs: those of the scale learned last). The messages of one run are held in memory for
this, at most :data:`SCALE_MAX_MESSAGES` of them (a random sample of a larger run).

Also runnable as ``python -m filterd.content.bayes.learn [-c filterd.cf] --spam ... --ham ...``.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import IO

import numpy as np

from filterd.config import Config
from filterd.content.bayes.check import BayesClassifier
from filterd.content.bayes.model import BayesModel, BayesModelError, LearnBatch, make_vectorizer
from filterd.content.bayes.scale import (
    MIN_PER_CLASS, SCALE_FILE, Scale, ScaleError, bayes_features, fit_scale, report_lines, stratified_folds,
)
from filterd.content.message import Message

#: Messages parsed and vectorized together (bounds memory on huge mbox files).
CHUNK = 500
#: Most messages one run keeps in memory to fit the score scale on (a random sample beyond).
SCALE_MAX_MESSAGES = 20_000
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
                  out: IO[str] | None = None, err: IO[str] | None = None, report: bool = False) -> int:
    """Learn the messages under ``spam`` and ``ham`` paths, then fit the score scale;
    returns the exit status. ``report`` prints the scale's cross-validated figures.

    Reports go to ``out`` and ``err`` (standard output and error by default).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    scale_path = os.path.join(cfg.get("bayes_directory"), SCALE_FILE)
    if not spam and not ham:
        if report:
            return _print_stored_report(scale_path, out, err)
        print("filterd learn: nothing to learn: give --spam PATH... and/or --ham PATH...", file=err)
        return 2
    missing = [p for p in (*spam, *ham) if not os.path.exists(p)]
    if missing:
        for p in missing:
            print(f"filterd learn: {p}: no such file or directory", file=err)
        return 2
    classifier = BayesClassifier(cfg)
    learned = examined = 0
    kept = _Reservoir(SCALE_MAX_MESSAGES)
    try:
        for paths, is_spam in ((spam, True), (ham, False)):
            for path in paths:
                for chunk in _chunks(iter_messages(path), CHUNK):
                    n, m = classifier.learn((Message(raw) for raw in chunk), is_spam)
                    learned += n
                    examined += m
                    for raw in chunk:
                        kept.offer(raw, is_spam)
        classifier.save()
    except (BayesModelError, OSError) as exc:
        print(f"filterd learn: {exc}", file=err)
        return 1
    print(f"Learned tokens from {learned} message(s) ({examined} message(s) examined)", file=out)
    print(classifier.describe(), file=out)
    try:
        scale = learn_scale(cfg, kept.raws, kept.labels)
        scale.save(scale_path)
    except ScaleError as exc:
        print(f"filterd learn: no score scale learned: {exc}", file=out)
        return 0
    except OSError as exc:
        print(f"filterd learn: {exc}", file=err)
        return 1
    lines = report_lines(scale)
    print(f"Score scale learned into {scale_path}", file=out)
    for line in lines if report else lines[-1:]:
        print(line, file=out)
    return 0


class _Reservoir:
    """At most ``size`` of the messages offered, each equally likely to be kept (a fixed
    seed, so a run is repeatable): the score scale is fitted on all of a run's messages
    when they fit, on a fair sample of a huge mailbox otherwise, and memory stays bounded."""

    def __init__(self, size: int):
        self.size = size
        self.raws: list[bytes] = []
        self.labels: list[bool] = []
        self._seen = 0
        self._rng = random.Random(0)

    def offer(self, raw: bytes, spam: bool) -> None:
        self._seen += 1
        if len(self.raws) < self.size:
            self.raws.append(raw)
            self.labels.append(spam)
            return
        j = self._rng.randrange(self._seen)
        if j < self.size:
            self.raws[j], self.labels[j] = raw, spam


def _print_stored_report(path: str, out: IO[str], err: IO[str]) -> int:
    try:
        scale = Scale.load(path)
    except FileNotFoundError:
        print(f"filterd learn: no score scale learned yet ({path} does not exist)", file=err)
        return 1
    except ScaleError as exc:
        print(f"filterd learn: {exc}", file=err)
        return 1
    print(f"Score scale {path}, learned with rules from {', '.join(scale.rule_paths) or 'nowhere'}", file=out)
    for line in report_lines(scale):
        print(line, file=out)
    return 0


def learn_scale(cfg: Config, raws: list[bytes], labels: list[bool]) -> Scale:
    """Fit the score scale on these messages (see ``scale.py``); CPU-bound, blocking."""
    from filterd.content.rules import rule_paths

    nspam = sum(labels)
    if min(nspam, len(labels) - nspam) < MIN_PER_CLASS:  # say so before loading any rules
        raise ScaleError(f"a score scale needs at least {MIN_PER_CLASS} spam and {MIN_PER_CLASS} ham "
                         f"(got {nspam} spam, {len(labels) - nspam} ham): static scores stay")
    folds = stratified_folds(labels)
    features = scale_features(cfg, raws, labels, folds)
    paths = rule_paths(cfg) if "rules" in cfg.get("content_checks") else []
    return fit_scale(features, labels, folds, cfg.get("spam_tag2_level"), paths)


def scale_features(cfg: Config, raws: list[bytes], labels: list[bool], folds: np.ndarray) -> list[dict[str, float]]:
    """Per message, the symbols the pipeline would give it (name -> static score), and the
    bins of its probability and log-odds under a Bayes model that learned the other folds
    only."""
    from filterd.content.pipeline import MIME_DEFECTS_SCORE
    from filterd.content.rules import ruleset_from_config

    checks = cfg.get("content_checks")
    ruleset = ruleset_from_config(cfg) if "rules" in checks else None
    features: list[dict[str, float]] = []
    for raw in raws:
        msg = Message(raw)
        found: dict[str, float] = {}
        if msg.defects:
            found["MIME_DEFECTS"] = MIME_DEFECTS_SCORE
        if ruleset is not None:
            found.update((s.name, s.score) for s in ruleset.evaluate(msg))
        features.append(found)
    if "bayes" in checks and cfg.get("use_bayes"):
        for i, verdict in enumerate(out_of_fold_evidence(raws, labels, folds, cfg.get("bayes_min_spam_num"),
                                                         cfg.get("bayes_min_ham_num"))):
            if verdict is not None:
                features[i].update(bayes_features(*verdict))
    return features


def out_of_fold_evidence(raws: list[bytes], labels: list[bool], folds: np.ndarray,
                         min_spam: int, min_ham: int) -> list[tuple[float, float] | None]:
    """Each message's Bayes probability and log-odds from a fresh model learned on the
    other folds (None where that model learned too little to speak, as in the pipeline)."""
    rows = make_vectorizer().transform(Message(raw) for raw in raws).tocsr()
    y = np.asarray(labels, dtype=bool)
    probs: list[tuple[float, float] | None] = [None] * len(raws)
    for f in np.unique(folds):
        model = BayesModel()
        for cls in (True, False):
            idx = np.flatnonzero((folds != f) & (y == cls))
            model.learn_batch(LearnBatch([int(i) for i in idx], rows[idx], cls))
        if model.nspam < min_spam or model.nham < min_ham:
            continue
        for i in np.flatnonzero(folds == f):
            probs[i] = model.evidence_of_indices(rows[i].indices)
    return probs
