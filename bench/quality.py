#!/usr/bin/env python3
"""Classification quality on the mail corpus: filterd Bayes, filterd's pipeline, SpamAssassin.

k-fold cross-validation (stratified by folder: ham, hard_ham, spam; fixed seed), the
same splits for every system: each system learns the k-1 training folds and scores the
held-out fold. Reported per fold and over all folds (scores pooled), with ham and
hard_ham counted as ham:

  recall        spam scored at or above the system's own threshold
  FP rate       ham scored at or above it
  R@FP<=0.1%    spam recall at the best threshold letting through at most 0.1 % of ham
  R@FP<=1%      the same at 1 % (thresholds swept over the scores; ties count as caught ham)

Systems:
  bayes          filterd's Bayes alone (threshold: probability 0.5, BAYES_50 and up)
  defaults       what a user who installs filterd and keeps the defaults gets: filterd's
                 whole content pipeline through ``quality_scorer(cfg)`` (its real ``scan()``)
                 with the embedded defaults, ClamAV off: filterd's own rules plus
                 SpamAssassin's rules where installed (``rules_extra_directories``'
                 default), ``filterd learn`` on the training part (Bayes and the learned
                 score scale, itself cross-validated inside the training part). Threshold:
                 the configured spam_tag2_level (6.31), or --pipeline-threshold
  defaults-nosa  the same with ``rules_extra_directories =`` (SpamAssassin's rules off)
  spamassassin   SpamAssassin 4 from Debian, network tests off, Bayes on: sa-learn into a
                 fresh database per fold, then spamd on 127.0.0.1 scored with 8 concurrent
                 ``spamc -x -c`` (threshold: required_score 5.0). Slow (about 20 msg/s here),
                 so only the first --sa-folds folds are run.

Usage: python bench/quality.py [--systems bayes,defaults,defaults-nosa,spamassassin] [--folds 5]
       [--sa-folds 2] [--sample N] [--seed 1] [--pipeline-threshold S] [--scores FILE.tsv]
The corpus is $FILTERD_CORPUS/spamassassin (default ../shared/corpus next to the repo).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import filterd.registry  # noqa: F401,E402 - the parameter table Config reads
from filterd.content.bayes.model import (
    BayesModel,
    LearnBatch,
    make_vectorizer,
    message_key,
)
from filterd.content.message import Message

CATEGORIES = ("ham", "hard_ham", "spam")
SA_CLIENTS = 8
SA_REQUIRED_SCORE = 5.0
BAYES_THRESHOLD = 0.5


@dataclass
class Corpus:
    paths: list[Path]
    category: np.ndarray  # index into CATEGORIES
    raw: list[bytes]

    @property
    def is_spam(self) -> np.ndarray:
        return self.category == CATEGORIES.index("spam")


def load_corpus(root: Path) -> Corpus:
    paths: list[Path] = []
    cats: list[int] = []
    for i, name in enumerate(CATEGORIES):
        folder = root / "spamassassin" / name
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != "cmds")
        paths += files
        cats += [i] * len(files)
    return Corpus(paths, np.array(cats), [p.read_bytes() for p in paths])


def make_folds(corpus: Corpus, k: int, seed: int, sample: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (train, test) index pairs; with ``sample``, each test part is cut to that size."""
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    rng = np.random.default_rng(seed)
    folds = []
    for train, test in skf.split(np.zeros(len(corpus.category)), corpus.category):
        if sample is not None and sample < len(test):
            # keep the folder proportions of the fold
            keep: list[np.ndarray] = []
            for c in range(len(CATEGORIES)):
                idx = test[corpus.category[test] == c]
                n = max(1, round(sample * len(idx) / len(test)))
                keep.append(rng.choice(idx, size=min(n, len(idx)), replace=False))
            test = np.sort(np.concatenate(keep))
        folds.append((train, test))
    return folds


# -- metrics ----------------------------------------------------------------------------
@dataclass
class Row:
    label: str
    n_spam: int
    n_ham: int
    recall: float
    fp_rate: float
    r_fp_01: float
    r_fp_1: float
    seconds: float


def recall_at_fp(spam: np.ndarray, ham: np.ndarray, max_fp: float) -> float:
    """Best spam recall with a threshold that lets at most ``max_fp`` of ham be caught."""
    allowed = int(np.floor(max_fp * len(ham)))
    if allowed >= len(ham):
        return 1.0
    threshold = np.sort(ham)[::-1][allowed]  # highest ham score that must stay below
    return float(np.mean(spam > threshold))


def evaluate(label: str, scores: np.ndarray, is_spam: np.ndarray, threshold: float, seconds: float) -> Row:
    spam, ham = scores[is_spam], scores[~is_spam]
    return Row(label, len(spam), len(ham), float(np.mean(spam >= threshold)),
               float(np.mean(ham >= threshold)), recall_at_fp(spam, ham, 0.001),
               recall_at_fp(spam, ham, 0.01), seconds)


def print_table(title: str, rows: list[Row]) -> None:
    print(f"\n{title}")
    print(f"{'fold':<6}{'spam':>6}{'ham':>6}{'recall':>9}{'FP rate':>9}{'R@FP<=0.1%':>12}{'R@FP<=1%':>10}{'seconds':>9}")
    for r in rows:
        print(f"{r.label:<6}{r.n_spam:>6}{r.n_ham:>6}{r.recall:>9.2%}{r.fp_rate:>9.2%}"
              f"{r.r_fp_01:>12.2%}{r.r_fp_1:>10.2%}{r.seconds:>9.1f}")


# -- systems ----------------------------------------------------------------------------
Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (train idx, test idx) -> scores


def bayes_system(corpus: Corpus) -> Scorer:
    """filterd Bayes: messages vectorized once, one fresh model learned per fold."""
    vectorizer = make_vectorizer()
    msgs = [Message(raw) for raw in corpus.raw]
    X = vectorizer.transform(msgs).tocsr()
    keys = [message_key(m) for m in msgs]
    spam = corpus.is_spam

    def score(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        model = BayesModel()
        for is_spam in (True, False):
            idx = train[spam[train] == is_spam]
            model.learn_batch(LearnBatch([keys[i] for i in idx], X[idx], is_spam))
        return np.array([model.probability_of_indices(X[i].indices) for i in test])

    return score


#: The configurations measured: the embedded defaults (SpamAssassin's rules loaded where
#: installed) and the same without SpamAssassin's rules; ClamAV off in both (clamd is not
#: part of this measurement).
PIPELINE_CFS = {
    "defaults": "clamav_socket =\n",
    "defaults-nosa": "clamav_socket =\nrules_extra_directories =\n",
}


def pipeline_system(corpus: Corpus, run_dir: Path, extra_cf: str) -> Scorer | str:
    """filterd's whole pipeline with ``extra_cf`` over the defaults, or why it cannot run.

    ``data_directory`` is ``run_dir``, kept for the whole run, so the compiled Hyperscan
    databases (``rules-cache``) are built once; each fold learns its own
    ``bayes_directory`` (Bayes and the score scale) with ``filterd learn``.
    """
    try:
        pipeline = importlib.import_module("filterd.content.pipeline")
    except ImportError as exc:
        return f"filterd.content.pipeline not importable ({exc})"
    make_scorer = getattr(pipeline, "quality_scorer", None)
    if make_scorer is None:
        return "filterd.content.pipeline has no quality_scorer(cfg) hook"
    from filterd.config import Config
    from filterd.content.bayes.learn import learn_command

    def score(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="filterd-quality-") as tmp:
            cfg = Config.from_text(f"data_directory = {run_dir}\nbayes_directory = {tmp}/bayes\n" + extra_cf)
            spam_dir, ham_dir = _link_files(corpus, train, Path(tmp) / "train")
            with open(os.devnull, "w") as devnull:
                if learn_command(cfg, [str(spam_dir)], [str(ham_dir)], out=devnull) != 0:
                    raise RuntimeError("filterd learn failed on the training folds")
            with make_scorer(cfg) as scorer:  # its event loop and threads end with the fold
                return np.array([scorer(Message(corpus.raw[i])) for i in test], dtype=float)

    return score


def _link_files(corpus: Corpus, idx: np.ndarray, base: Path) -> tuple[Path, Path]:
    spam_dir, ham_dir = base / "spam", base / "ham"
    spam_dir.mkdir(parents=True)
    ham_dir.mkdir(parents=True)
    for i in idx:
        target = spam_dir if corpus.is_spam[i] else ham_dir
        (target / f"{i:05d}.eml").symlink_to(corpus.paths[i])
    return spam_dir, ham_dir


SA_LOCAL_CF = """\
use_bayes 1
use_bayes_rules 1
bayes_auto_learn 0
bayes_path {bayes}/bayes
bayes_file_mode 0777
dns_available no
skip_rbl_checks 1
use_razor2 0
use_pyzor 0
use_dcc 0
required_score {required}
"""


def spamassassin_system(corpus: Corpus) -> Scorer | str:
    """SpamAssassin 4: sa-learn + spamd/spamc per fold, in a temp dir, network tests off."""
    missing = [p for p in ("sa-learn", "spamd", "spamc") if shutil.which(p) is None]
    if missing:
        return f"not installed: {', '.join(missing)}"

    def score(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="sa-quality-") as tmp_name:
            tmp = Path(tmp_name)
            site, bayes = tmp / "site", tmp / "bayes"
            site.mkdir()
            bayes.mkdir()
            (site / "local.cf").write_text(SA_LOCAL_CF.format(bayes=bayes, required=SA_REQUIRED_SCORE))
            # sa-learn reads the modules' .pre files from the site dir
            for pre in Path("/etc/spamassassin").glob("*.pre"):
                shutil.copy(pre, site / pre.name)
            spam_dir, ham_dir = _link_files(corpus, train, tmp / "train")
            env = {**os.environ, "HOME": str(tmp)}
            for flag, folder in (("--spam", spam_dir), ("--ham", ham_dir)):
                subprocess.run(["sa-learn", "-L", "--siteconfigpath", str(site), "--dbpath", str(bayes),
                                "--no-sync", flag, str(folder)], check=True, env=env,
                               stdout=subprocess.DEVNULL)
            subprocess.run(["sa-learn", "--siteconfigpath", str(site), "--dbpath", str(bayes), "--sync"],
                           check=True, env=env, stdout=subprocess.DEVNULL)
            if os.geteuid() == 0:  # spamd drops to nobody, which must read/write the db
                nobody = pwd.getpwnam("nobody")
                for p in (tmp, bayes, *bayes.iterdir()):
                    os.chown(p, nobody.pw_uid, nobody.pw_gid)
            with _spamd(tmp, site, env) as port:
                return _spamc_scores(corpus, test, port)

    return score


class _spamd:
    """spamd on a free 127.0.0.1 port for one fold; stopped (by its pid) on exit."""

    def __init__(self, tmp: Path, site: Path, env: dict[str, str]):
        self.tmp, self.site, self.env = tmp, site, env
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]

    def __enter__(self) -> int:
        cmd = ["spamd", "-L", "-x", "--siteconfigpath", str(self.site), "-i", f"127.0.0.1:{self.port}",
               "-A", "127.0.0.1", "-m", "4", "--min-children", "2", "-s", "stderr",
               "-r", str(self.tmp / "spamd.pid")]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody", "-H", str(self.tmp)]
        self.log = open(self.tmp / "spamd.log", "wb")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"spamd exited: {(self.tmp / 'spamd.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self.port
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError("spamd did not start listening within 120 s")

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _spamc_scores(corpus: Corpus, test: np.ndarray, port: int) -> np.ndarray:
    def one(i: int) -> float:
        res = subprocess.run(["spamc", "-x", "-c", "-d", "127.0.0.1", "-p", str(port), "-s", "20000000"],
                             input=corpus.raw[i], capture_output=True, timeout=300, check=False)
        if res.returncode not in (0, 1):
            raise RuntimeError(f"spamc failed on {corpus.paths[i]} (exit {res.returncode}): {res.stderr!r}")
        return float(res.stdout.decode().strip().split("/")[0])

    with ThreadPoolExecutor(SA_CLIENTS) as pool:
        return np.array(list(pool.map(one, test.tolist())))


# -- driver -----------------------------------------------------------------------------
def run_system(name: str, scorer: Scorer, corpus: Corpus, folds: list[tuple[np.ndarray, np.ndarray]],
               threshold: float, scores_out: list[str] | None = None) -> list[Row]:
    """Score each fold; with ``scores_out``, append one TSV line per scored message to it."""
    rows: list[Row] = []
    all_scores: list[np.ndarray] = []
    all_idx: list[np.ndarray] = []
    total = 0.0
    for n, (train, test) in enumerate(folds, 1):
        start = time.monotonic()
        scores = scorer(train, test)
        seconds = time.monotonic() - start
        total += seconds
        rows.append(evaluate(str(n), scores, corpus.is_spam[test], threshold, seconds))
        all_scores.append(scores)
        all_idx.append(test)
        if scores_out is not None:
            scores_out += [f"{name}\t{n}\t{CATEGORIES[corpus.category[i]]}\t{corpus.paths[i].name}\t{s:.4f}"
                           for i, s in zip(test.tolist(), scores.tolist())]
        print(f"  {name}: fold {n}/{len(folds)} done in {seconds:.0f} s", file=sys.stderr, flush=True)
    idx = np.concatenate(all_idx)
    rows.append(evaluate("all", np.concatenate(all_scores), corpus.is_spam[idx], threshold, total))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default="bayes,defaults,defaults-nosa,spamassassin",
                        help="comma-separated: bayes, defaults, defaults-nosa, spamassassin")
    parser.add_argument("--folds", type=int, default=5, help="k for k-fold cross-validation")
    parser.add_argument("--sa-folds", type=int, default=2, help="how many of the folds SpamAssassin runs")
    parser.add_argument("--sample", type=int, default=None,
                        help="score at most N messages of each test fold (all systems, same messages)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pipeline-threshold", type=float, default=None,
                        help="filterd score counted as spam (default: the configuration's "
                             "spam_tag2_level, where filterd marks mail as spam)")
    parser.add_argument("--scores", type=Path, default=None,
                        help="write every score to this TSV file (system, fold, folder, file, score)")
    parser.add_argument("--corpus", type=Path,
                        default=Path(os.environ.get("FILTERD_CORPUS", REPO.parent / "shared" / "corpus")))
    args = parser.parse_args(argv)
    if not (args.corpus / "spamassassin").is_dir():
        print(f"corpus not found: {args.corpus / 'spamassassin'} (set FILTERD_CORPUS)", file=sys.stderr)
        return 2
    corpus = load_corpus(args.corpus)
    folds = make_folds(corpus, args.folds, args.seed, args.sample)
    counts = {c: int(np.sum(corpus.category == i)) for i, c in enumerate(CATEGORIES)}
    print(f"corpus {args.corpus / 'spamassassin'}: {counts}; {args.folds} stratified folds, seed {args.seed}"
          + (f", test parts sampled to {args.sample} messages" if args.sample else ""))
    from filterd.config import Config

    makers: dict[str, tuple[Callable[[], Scorer | str], float, int, str]] = {
        "bayes": (lambda: bayes_system(corpus), BAYES_THRESHOLD, len(folds), "filterd Bayes alone (spam if p >= 0.5)"),
        "spamassassin": (lambda: spamassassin_system(corpus), SA_REQUIRED_SCORE, min(args.sa_folds, len(folds)),
                         "SpamAssassin 4, -L, Bayes on, spamd + 8 x spamc (spam if score >= 5.0)"),
    }
    run_dir = Path(tempfile.mkdtemp(prefix="filterd-quality-run-"))
    for name, extra_cf in PIPELINE_CFS.items():
        cfg = Config.from_text(extra_cf)
        level = args.pipeline_threshold if args.pipeline_threshold is not None else float(cfg.get("spam_tag2_level"))
        rules = ", ".join([cfg.get("rules_directory"), *cfg.get("rules_extra_directories")])
        settings = "; ".join(line for line in extra_cf.splitlines() if line)
        makers[name] = ((lambda cf=extra_cf: pipeline_system(corpus, run_dir, cf)), level, len(folds),
                        f"filterd {name} ({settings}; rules from {rules}; filterd learn on the training "
                        f"folds; spam if score >= {level:g})")
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [n for n in names if n not in makers]
    if unknown:
        print(f"unknown system {unknown[0]!r}; choose from {', '.join(makers)}", file=sys.stderr)
        return 2
    scores_out: list[str] | None = [] if args.scores else None
    try:
        for name in names:
            make, threshold, n_folds, title = makers[name]
            scorer = make()
            if isinstance(scorer, str):
                print(f"\n{title}: skipped: {scorer}")
                continue
            rows = run_system(name, scorer, corpus, folds[:n_folds], threshold, scores_out)
            print_table(f"{title}: folds 1-{n_folds} of {len(folds)}, trained on the other folds", rows)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    if args.scores and scores_out is not None:
        args.scores.write_text("".join(line + "\n" for line in scores_out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
