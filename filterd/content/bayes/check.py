"""The Bayes check of the content pipeline: the BAYES_xx symbols and auto-learning.

One :class:`BayesClassifier` per model file and process (:meth:`BayesClassifier.load`),
shared by every thread. The model file is loaded once and re-read only when another
process (``filterd learn``, another worker's auto-learning) has replaced it, checked at
most every ``bayes_reload_interval``. A model that does not exist yet, or has learned
fewer than ``bayes_min_spam_num`` spam / ``bayes_min_ham_num`` ham messages, makes the
Bayes check silent rather than wrong, as in SpamAssassin.

The learned score scale (``scale.npz``, written by ``filterd learn`` beside the model) is
reloaded the same way; :meth:`BayesClassifier.rescale` gives the rules' and Bayes'
symbols its points. A scale learned with other rule directories than the configured ones
is not used (its weights would misjudge), and static scores apply.

Writers serialise on an ``flock`` of ``model.lock``: whatever this process learned since
it last saved is replayed onto the newest file under the lock, so learners in several
processes never lose each other's updates. All methods block (file I/O, NumPy work): the
asyncio pipeline calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import ClassVar

from filterd.config import Config
from filterd.content.bayes.bands import BANDS
from filterd.content.bayes.model import BayesModel, BayesModelError, LearnBatch
from filterd.content.bayes.scale import SCALE_FILE, Scale, ScaleError, same_rules
from filterd.content.message import Message
from filterd.content.symbols import Symbol

log = logging.getLogger(__name__)

MODEL_FILE = "model.npz"
LOCK_FILE = "model.lock"
#: Auto-learned messages kept in memory at most before the model is saved.
AUTOLEARN_MAX_PENDING = 100

_FileId = tuple[int, int, int]  # (st_ino, st_size, st_mtime_ns)


def _file_id(path: str) -> _FileId | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class BayesClassifier:
    """Classify with, and learn into, the model in ``bayes_directory``."""

    _instances: ClassVar[dict[str, BayesClassifier]] = {}
    _instances_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, cfg: Config):
        self.directory: str = cfg.get("bayes_directory")
        self.path = os.path.join(self.directory, MODEL_FILE)
        self._configure(cfg)
        self._lock = threading.RLock()
        self._model: BayesModel | None = None
        self._file_id: _FileId | None = None
        self._checked = float("-inf")
        self._pending: list[LearnBatch] = []
        self._last_save = time.monotonic()
        self.error: str | None = None  # why the model file could not be used
        self.scale_path = os.path.join(self.directory, SCALE_FILE)
        self._scale: Scale | None = None
        self._scale_id: _FileId | None = None
        self.scale_error: str | None = None  # why the scale file is not used

    def _configure(self, cfg: Config) -> None:
        """Take the settings from ``cfg`` (again, when the configuration was reloaded)."""
        from filterd.content.rules import rule_paths

        self._cfg = cfg
        self.rule_paths: list[str] = rule_paths(cfg) if "rules" in cfg.get("content_checks") else []
        self._scale_id = None  # judge the scale again against the new rule paths
        self.enabled: bool = cfg.get("use_bayes")
        self.min_spam: int = cfg.get("bayes_min_spam_num")
        self.min_ham: int = cfg.get("bayes_min_ham_num")
        self.scores: dict[str, float] = cfg.get("bayes_scores")
        self.reload_interval: float = cfg.get("bayes_reload_interval")
        self.auto_learn: bool = cfg.get("bayes_auto_learn")
        self.auto_spam: float = cfg.get("bayes_auto_learn_threshold_spam")
        self.auto_ham: float = cfg.get("bayes_auto_learn_threshold_nonspam")
        self.save_interval: float = cfg.get("bayes_auto_learn_save_interval")

    @classmethod
    def load(cls, cfg: Config) -> BayesClassifier:
        """The process-wide classifier for ``cfg``'s model file (created on first use).

        A reloaded configuration updates the settings of the existing instance; the
        loaded model and any unsaved learning are kept.
        """
        path = os.path.join(cfg.get("bayes_directory"), MODEL_FILE)
        with cls._instances_lock:
            inst = cls._instances.get(path)
            if inst is None:
                inst = cls._instances[path] = cls(cfg)
            elif inst._cfg is not cfg:
                inst._configure(cfg)
            return inst

    # -- the model file ----------------------------------------------------------------
    def model(self) -> BayesModel | None:
        """The current model, re-read if the file changed (checked at most every interval)."""
        now = time.monotonic()
        if now - self._checked < self.reload_interval:
            return self._model
        with self._lock:
            if now - self._checked >= self.reload_interval:
                self._checked = now
                self._reload_if_changed()
                self._reload_scale_if_changed()
            return self._model

    def _reload_scale_if_changed(self) -> None:
        current = _file_id(self.scale_path)
        if current == self._scale_id:
            return
        self._scale_id = current
        self._scale, self.scale_error = None, None
        if current is None:
            return
        try:
            scale = Scale.load(self.scale_path)
        except (ScaleError, OSError) as exc:
            self.scale_error = str(exc)
            log.error("score scale not loaded: %s", exc)
            return
        if not same_rules(scale.rule_paths, self.rule_paths):
            self.scale_error = (f"{self.scale_path} was learned with rules from "
                                f"{', '.join(scale.rule_paths) or 'nowhere'}, the rules configured are "
                                f"{', '.join(self.rule_paths) or 'none'}: run filterd learn again")
            log.warning("score scale not used: %s", self.scale_error)
            return
        self._scale = scale

    def scale(self) -> Scale | None:
        """The learned score scale in use, or None (static scores)."""
        self.model()
        return self._scale if self.enabled else None

    def rescale(self, symbols: list[Symbol]) -> list[Symbol]:
        """``symbols`` with the learned points of the symbols the scale knows (unchanged
        without a usable scale)."""
        scale = self.scale()
        return symbols if scale is None else scale.apply(symbols)

    def _reload_if_changed(self) -> None:
        current = _file_id(self.path)
        if current == self._file_id:
            return
        if self._pending:
            return  # our unsaved learning stays in memory; save() merges with the file
        if current is None:
            self._model, self._file_id, self.error = None, None, None
            return
        try:
            self._model = BayesModel.load(self.path)
            self.error = None
        except (BayesModelError, OSError) as exc:
            # keep classifying with what we had; say why the new file was refused
            self.error = str(exc)
            log.error("Bayes model not loaded: %s", exc)
        self._file_id = current

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(os.path.join(self.directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def describe(self) -> str:
        """One line for ``filterd check``/``filterd status``: is Bayes usable, and why not."""
        model = self.model()
        if not self.enabled:
            return "Bayes disabled (use_bayes = no)"
        if model is None:
            return f"no Bayes model ({self.error or self.path + ' does not exist'})"
        text = f"Bayes model {self.path}: {model.nspam} spam, {model.nham} ham learned"
        if model.nspam < self.min_spam or model.nham < self.min_ham:
            text += f" (inactive until {self.min_spam} spam and {self.min_ham} ham)"
        if self._scale is not None:
            text += f"; learned score scale {self.scale_path} ({len(self._scale.points)} weights)"
        else:
            text += f"; static scores ({self.scale_error or 'no learned score scale'})"
        return text

    # -- classifying -------------------------------------------------------------------
    def probability(self, msg: Message) -> float | None:
        """Spam probability, or None when Bayes is off or the model has learned too little."""
        verdict = self.evidence(msg)
        return None if verdict is None else verdict[0]

    def evidence(self, msg: Message) -> tuple[float, float] | None:
        """Spam probability and log-odds (see ``BayesModel.evidence_of_indices``), or None
        as for :meth:`probability`."""
        model = self.model()
        if (not self.enabled or model is None
                or model.nspam < self.min_spam or model.nham < self.min_ham):
            return None
        return model.evidence(msg)

    def symbols(self, msg: Message) -> list[Symbol]:
        """The BAYES_xx symbols for ``msg``: with static scores BAYES_999 fires together with
        BAYES_99; with a learned scale one symbol carries the points of the probability's
        and the log-odds' bins."""
        verdict = self.evidence(msg)
        if verdict is None:
            return []
        p, log_odds = verdict
        scale = self.scale()
        if scale is not None:  # one symbol, the narrowest band's name, the learned bins' points
            band = [b for b in BANDS if b.matches(p)][-1]
            points, bin_text = scale.bayes(p, log_odds)
            return [Symbol(band.name, points, band.description,
                           f"probability={p:.4f}, log-odds={log_odds:.1f}, learned bins {bin_text}")]
        return [
            Symbol(band.name, self.scores[band.name], band.description, f"probability={p:.4f}")
            for band in BANDS if band.matches(p)
        ]

    # -- learning ----------------------------------------------------------------------
    def learn(self, msgs: Iterable[Message], spam: bool) -> tuple[int, int]:
        """Learn into memory; returns (learned, examined). :meth:`save` writes the file."""
        with self._lock:
            if self._model is None:
                self._checked = float("-inf")
                self.model()
                if self._model is None:
                    if self.error:
                        raise BayesModelError(self.error)
                    self._model = BayesModel()
            learned, examined, batch = self._model.learn(msgs, spam)
            if learned:
                self._pending.append(batch)
            return learned, examined

    def save(self) -> None:
        """Write what was learned, merged with any newer file another process wrote."""
        with self._lock, self._write_lock():
            if not self._pending:
                return
            on_disk = _file_id(self.path)
            if on_disk is not None and on_disk != self._file_id:
                fresh = BayesModel.load(self.path)
                for batch in self._pending:
                    fresh.learn_batch(batch)
                self._model = fresh
            assert self._model is not None
            self._model.save(self.path)
            self._file_id = _file_id(self.path)
            self._pending.clear()
            self._last_save = time.monotonic()

    def maybe_autolearn(self, msg: Message, score: float, symbols: Iterable[Symbol]) -> bool | None:
        """Learn ``msg`` when its score without Bayes is clearly spam or ham (SpamAssassin's rule).

        Returns True/False when it was learned as spam/ham, None when not learned. The
        model is saved when the last save is ``bayes_auto_learn_save_interval`` old or
        many messages are waiting.
        """
        if not (self.enabled and self.auto_learn):
            return None
        bayes_part = sum(s.score for s in symbols if s.name in self.scores)
        learning_score = score - bayes_part
        if learning_score >= self.auto_spam:
            spam = True
        elif learning_score < self.auto_ham:
            spam = False
        else:
            return None
        try:
            learned, _ = self.learn([msg], spam)
            if (self._pending and (len(self._pending) >= AUTOLEARN_MAX_PENDING
                                   or time.monotonic() - self._last_save >= self.save_interval)):
                self.save()
        except (BayesModelError, OSError) as exc:
            log.error("Bayes auto-learn failed: %s", exc)
            return None
        return spam if learned else None
